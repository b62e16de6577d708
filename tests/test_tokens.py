"""The value policy of shared/guide/wire-formats.md, case by case."""

from __future__ import annotations

import math

import pytest

from livepplx.core.tokens import UNLISTED_FLOOR, Status, make_token


@pytest.mark.parametrize(
    "raw",
    [None, math.nan, "-1.5", True, [], {}, 0.5, 1e-7, math.inf],
    ids=["null", "nan", "string", "bool", "list", "dict", "positive", "tiny-positive", "inf"],
)
def test_values_that_are_not_logprobs_are_skipped(raw: object) -> None:
    token = make_token(0, "x", raw, [-0.1])
    assert token.status is Status.SKIPPED and math.isnan(token.logprob)


@pytest.mark.parametrize("raw", [-9999.0, -9999, -1e30, -3.4028234663852886e38, -math.inf])
def test_censored_values_take_the_lowest_listed_alternative(raw: object) -> None:
    token = make_token(0, "x", raw, [-0.2, -4.5, -9999.0, None, -1.0])
    assert token.status is Status.CENSORED
    assert token.logprob == -4.5  # not -9999: a censored alternative bounds nothing


def test_censored_value_without_alternatives_is_one_in_a_million() -> None:
    token = make_token(0, "x", -9999.0)
    assert token.status is Status.CENSORED and token.logprob == UNLISTED_FLOOR == math.log(1e-6)


def test_ordinary_values_pass_unchanged_and_ints_are_accepted() -> None:
    assert make_token(0, "x", -2.25).logprob == -2.25
    assert make_token(0, "x", 0).logprob == 0.0  # p = 1 is a valid logprob
    assert make_token(0, "x", -3).status is Status.OK


@pytest.mark.parametrize(
    ("prob", "status", "logprob"),
    [
        (0.5, Status.OK, math.log(0.5)),
        (1.0, Status.OK, 0.0),
        (0.0, Status.CENSORED, math.log(0.25)),
        (1.5, Status.SKIPPED, math.nan),
        (-0.1, Status.SKIPPED, math.nan),
        (math.nan, Status.SKIPPED, math.nan),
    ],
)
def test_probability_mode_takes_logs_and_censors_zero(prob: float, status: Status, logprob: float) -> None:
    token = make_token(0, "x", prob, [0.5, 0.25, 0.0], prob_mode=True)
    assert token.status is status
    assert token.alternatives == (math.log(0.5), math.log(0.25))
    assert (math.isnan(token.logprob) and math.isnan(logprob)) or token.logprob == logprob


def test_alternatives_keep_only_ordinary_logprobs() -> None:
    token = make_token(0, "x", -0.1, [-0.1, math.nan, None, "x", 0.5, -2.0, -9999.0])
    assert token.alternatives == (-0.1, -2.0)


# -- values past the ordinary ranges (issue 11) -----------------------------------------------


@pytest.mark.parametrize(
    ("raw", "status", "logprob"),
    [
        (-(10**400), Status.CENSORED, -2.5),  # past the float range: -inf, censored
        (10**400, Status.SKIPPED, math.nan),  # +inf: a positive "logprob"
        (-800, Status.OK, -800.0),  # finite: a value, however small
        (-800.0, Status.OK, -800.0),
        (-9998.5, Status.OK, -9998.5),  # just above the censor line
    ],
    ids=["-1e400-int", "1e400-int", "-800-int", "-800", "-9998.5"],
)
def test_huge_and_tiny_values_never_raise(raw: object, status: Status, logprob: float) -> None:
    token = make_token(0, "x", raw, [-2.5, -1.0])
    assert token.status is status
    assert (math.isnan(token.logprob) and math.isnan(logprob)) or token.logprob == logprob


@pytest.mark.parametrize("raw", [10**400, -(10**400)], ids=["1e400-int", "-1e400-int"])
def test_huge_ints_in_probability_mode_are_not_probabilities(raw: int) -> None:
    token = make_token(0, "x", raw, [raw, 0.5], prob_mode=True)
    assert token.status is Status.SKIPPED and token.alternatives == (math.log(0.5),)


@pytest.mark.parametrize(
    ("alternatives", "kept"),
    [
        ([-1.0, -800.0, -1000.0], (-1.0, -800.0, -1000.0)),  # below exp's underflow: still values
        ([False, -1.0], (-1.0,)),  # False == 0 passes min/max, but a bool is never a logprob
        ([True, -1.0], (-1.0,)),
        ([-0.5, False, 0.0], (-0.5, 0.0)),
        ([[-1.0], -2.0], (-2.0,)),  # a nested list
        ([{"logprob": -1.0}, -2.0], (-2.0,)),
        ([10**400, -1.0], (-1.0,)),
        ([-(10**400), -1.0], (-1.0,)),  # -inf: censored, bounds nothing
        ([0, -19.75], (0.0, -19.75)),  # Gemini writes a sure token's 0 as an int
    ],
    ids=["below-745", "false", "true", "false-beside-0", "nested-list", "dict", "1e400-int", "-1e400-int", "int-0"],
)
def test_alternatives_are_cleaned_whatever_they_hold(alternatives: list[object], kept: tuple[float, ...]) -> None:
    token = make_token(0, "x", -1.0, alternatives)
    assert token.alternatives == kept
    assert all(type(a) in (float, int) for a in token.alternatives)  # never a bool
