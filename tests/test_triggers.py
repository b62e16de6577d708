"""Conditions, their combinations, and the fire-once-per-crossing rule."""

from __future__ import annotations

import math

import pytest

from livepplx import (
    StreamState,
    Trigger,
    entropy_above,
    group_confidence_below,
    min_tokens,
    moving_ppl_above,
    ppl_above,
    prob_below,
    sustained,
    window_ppl_above,
)
from livepplx.stats import ChoiceStats
from livepplx.tokens import make_token


def fed(logprobs: list[float], alternatives: list[list[float]] | None = None, **options: object) -> ChoiceStats:
    stats = ChoiceStats(**options)  # type: ignore[arg-type]
    for i, lp in enumerate(logprobs):
        stats.update(make_token(0, "", lp, alternatives[i] if alternatives else ()))
    return stats


def fires(condition: object, logprobs: list[float], **state_options: object) -> list[int]:
    """Token counts at which a trigger on `condition` fired over the stream."""
    at: list[int] = []
    state = StreamState(triggers=[Trigger(condition, call=lambda e: at.append(e.at_token))], **state_options)  # type: ignore[arg-type]
    for lp in logprobs:
        state.handle({"choices": [{"index": 0, "delta": {"content": "x"},
                                   "logprobs": {"content": [{"token": "x", "logprob": lp}]}}]})
    return at


def test_thresholds_read_the_statistic_they_name() -> None:
    s = fed([-0.1, -3.0, -3.0], window=2)
    assert ppl_above(7)(s) and not ppl_above(8)(s)  # exp(6.1/3) = 7.6
    assert window_ppl_above(20)(s) and not window_ppl_above(21)(s)  # exp(3) = 20.1
    assert moving_ppl_above(5)(s)
    assert prob_below(0.06)(s) and not prob_below(0.04)(s)  # exp(-3) = 0.0498
    assert min_tokens(3)(s) and not min_tokens(4)(s)


def test_entropy_and_deepconf_conditions() -> None:
    flat = [math.log(0.25)] * 4  # a uniform top-4: entropy ln 4, confidence ln 4
    s = fed([math.log(0.25)] * 3, [flat] * 3, group_window=2)
    assert entropy_above(1.3)(s) and not entropy_above(1.4)(s)
    assert group_confidence_below(1.4)(s) and not group_confidence_below(1.3)(s)
    short = fed([math.log(0.25)], [flat], group_window=2)
    assert not group_confidence_below(10)(short)  # the window is not full yet
    assert group_confidence_below(10, full_window=False)(short)


def test_nan_never_holds() -> None:
    empty = ChoiceStats()
    assert not ppl_above(0)(empty) and not prob_below(1.0)(empty) and not entropy_above(-1)(empty)


def test_combinators_and_plain_functions() -> None:
    s = fed([-2.0, -2.0])
    assert (ppl_above(100) | min_tokens(2))(s)
    assert not (ppl_above(100) & min_tokens(2))(s)
    assert (ppl_above(5) & (lambda st: st.tokens == 2))(s)
    assert ((lambda st: False) | ppl_above(5))(s)
    assert (~ppl_above(100))(s)
    assert repr(ppl_above(5) & (min_tokens(8) | window_ppl_above(9))) == "ppl_above(5) & (min_tokens(8) | window_ppl_above(9))"


def test_fire_once_per_crossing_then_rearm() -> None:
    # Newest-token probability below 0.5: low at tokens 2-3, high at 4, low at 5.
    assert fires(prob_below(0.5), [-0.1, -2.0, -2.0, -0.1, -2.0]) == [2, 5]


def test_sustained_counts_consecutive_tokens_and_binds_per_stream() -> None:
    rule = sustained(prob_below(0.5), 3)
    lps = [-2.0, -2.0, -0.1, -2.0, -2.0, -2.0, -2.0]
    assert fires(rule, lps) == [6]
    # The same rule object on a second stream starts from zero: no state leaks across streams.
    assert fires(rule, lps) == [6]
    assert fires(rule, lps[3:]) == [3]


def test_warmup_with_stop_above() -> None:
    state = StreamState(stop_above=5.0, min_tokens=3)
    for lp in [-4.0, -4.0, -0.1, -0.1]:
        state.handle({"choices": [{"index": 0, "delta": {"content": "x"},
                                   "logprobs": {"content": [{"token": "x", "logprob": lp}]}}]})
        if state.stopped:
            break
    # ppl after 3 tokens: exp(8.1/3) = 14.9 > 5; before that the warm-up holds it back.
    assert state.stopped is not None and state.stopped.at_token == 3


def test_several_tokens_in_one_chunk_stop_at_the_crossing_token() -> None:
    state = StreamState(stop_above=2.0, min_tokens=1)
    state.handle({"choices": [{"index": 0, "delta": {"content": "abc"}, "logprobs": {"content": [
        {"token": "a", "logprob": -0.1}, {"token": "b", "logprob": -3.0}, {"token": "c", "logprob": -0.1}]}}]})
    assert state.stopped is not None and state.stopped.at_token == 2 and state.tokens == 2


@pytest.mark.parametrize("bad", [lambda: ppl_above(float("nan")), lambda: min_tokens(-1), lambda: sustained(ppl_above(1), 0),
                                 lambda: Trigger(42)])  # type: ignore[arg-type]
def test_bad_arguments_name_the_problem(bad: object) -> None:
    with pytest.raises((ValueError, TypeError)):
        bad()  # type: ignore[operator]
