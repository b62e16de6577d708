"""Conditions, their combinations, and the fire-once-per-crossing rule."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from livepplx import (
    Condition,
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
from livepplx.core.stats import ChoiceStats
from livepplx.core.tokens import make_token


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
        for due in state.take_due():  # the state records; its driver runs the callbacks
            due.function(due.argument)
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


# -- every part of an expression sees every token ------------------------------------------------

def _reference_fires(expr: str, lows: list[bool]) -> list[int]:
    """Evaluate each part per token on its own, combine, then apply the firing rule.

    Parts: L = prob_below(0.5) at this token; S = sustained(L, 2); T = sustained(~L, 3).
    """
    at, armed, run_s, run_t = [], True, 0, 0
    for i, low in enumerate(lows, 1):
        run_s = run_s + 1 if low else 0
        run_t = run_t + 1 if not low else 0
        value = eval(expr, {}, {"L": low, "S": run_s >= 2, "T": run_t >= 3})  # noqa: S307
        if value and armed:
            at.append(i)
        armed = not value
    return at


_CONDITIONS = {"L": lambda: prob_below(0.5), "S": lambda: sustained(prob_below(0.5), 2),
               "T": lambda: sustained(~prob_below(0.5), 3)}
_EXPRESSIONS = [
    ("L and S", lambda c: c["L"] & c["S"]), ("S and L", lambda c: c["S"] & c["L"]),
    ("L or S", lambda c: c["L"] | c["S"]), ("S or L", lambda c: c["S"] | c["L"]),
    ("not S", lambda c: ~c["S"]), ("not (L and S)", lambda c: ~(c["L"] & c["S"])),
    ("S and T", lambda c: c["S"] & c["T"]), ("S or T", lambda c: c["S"] | c["T"]),
    ("(not L) and S", lambda c: ~c["L"] & c["S"]), ("T or (L and S)", lambda c: c["T"] | (c["L"] & c["S"])),
]


@pytest.mark.parametrize("expr,build", _EXPRESSIONS, ids=[e for e, _ in _EXPRESSIONS])
@settings(max_examples=40, deadline=None)
@given(lows=st.lists(st.booleans(), max_size=30))
def test_every_operator_with_a_stateful_operand_matches_a_per_part_reference(expr: str, build: object, lows: list[bool]) -> None:
    condition = build({k: make() for k, make in _CONDITIONS.items()})  # type: ignore[operator]
    assert fires(condition, [-2.0 if low else -0.1 for low in lows]) == _reference_fires(expr, lows)


def test_and_with_a_stateful_right_operand_does_not_fire_on_lows_that_are_not_consecutive() -> None:
    # The 0.1 bug: & stopped at a false left operand, so sustained() missed the high tokens between lows.
    lows = [-2.0, -0.1, -2.0, -0.1, -2.0]
    assert fires(prob_below(0.5) & sustained(prob_below(0.5), 3), lows) == []
    assert fires(~prob_below(0.5) | sustained(prob_below(0.5), 2), [-0.1, -2.0, -2.0]) == [1, 3]


def test_a_plain_function_is_called_exactly_once_per_counted_token() -> None:
    calls: list[int] = []

    def counting(stats: ChoiceStats) -> bool:
        calls.append(stats.tokens)
        return False

    fires(ppl_above(1000) & counting, [-0.1] * 4)
    assert calls == [1, 2, 3, 4]


def test_a_condition_written_for_0_1_still_combines_and_is_called_once_per_token() -> None:
    calls: list[int] = []

    class LowProb(Condition):  # the 0.1 protocol: answer in __call__
        def __call__(self, stats: ChoiceStats) -> bool:
            calls.append(stats.tokens)
            return stats.last_logprob < -1.0

    lows = [-2.0, -0.1, -2.0, -2.0]
    assert fires(LowProb() & min_tokens(1), lows) == [1, 3]
    assert fires(~LowProb(), lows) == [2]
    assert fires(sustained(LowProb(), 2), lows) == [4]
    calls.clear()
    fires(ppl_above(1000) & LowProb(), lows)  # the left side is false on every token
    assert calls == [1, 2, 3, 4]
