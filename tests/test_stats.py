"""Every statistic, at every step, against a numpy batch reference."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from livepplx.core.stats import ChoiceStats, EWMean, Mean, RollingMean, Variance, topk_entropy
from livepplx.core.tokens import make_token

RNG_SEED = 20261123


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a - b) / np.abs(b)))


def _exact_cumsum(x: np.ndarray) -> np.ndarray:
    """Prefix sums in extended precision: an independent reference for the compensated sums."""
    return np.cumsum(x.astype(np.longdouble))


def _run(stats: ChoiceStats, logprobs: np.ndarray, names: tuple[str, ...]) -> dict[str, np.ndarray]:
    out = {name: np.empty(len(logprobs)) for name in names}
    for i, lp in enumerate(logprobs.tolist()):
        stats.update(make_token(0, "", lp))
        for name in names:
            out[name][i] = getattr(stats, name)
    return out


def _stream(n: int, rng: np.random.Generator) -> np.ndarray:
    """Logprobs shaped like real ones: mostly near 0, a heavy tail of surprises."""
    return -rng.gamma(0.6, 2.5, size=n)


@pytest.mark.slow
def test_running_stats_match_numpy_at_every_step_of_a_million_tokens() -> None:
    rng = np.random.default_rng(RNG_SEED)
    x = _stream(1_000_000, rng)
    window = 64
    got = _run(ChoiceStats(window=window), x, ("ppl", "mean_logprob", "min_logprob", "window_ppl", "surprisal_var"))
    n = np.arange(1, len(x) + 1)
    c = _exact_cumsum(x)
    mean = (c / n).astype(np.float64)
    assert _rel(got["ppl"], np.exp(-mean)) <= 1e-12
    assert _rel(got["mean_logprob"], mean) <= 1e-12
    assert np.array_equal(got["min_logprob"], np.minimum.accumulate(x))
    # Windowed: sum of the last min(n, W) values.
    win = c.copy()
    win[window:] = c[window:] - c[:-window]
    counts = np.minimum(n, window)
    assert _rel(got["window_ppl"], np.exp(-(win / counts).astype(np.float64))) <= 1e-12
    # Welford's variance against E[x^2] - E[x]^2 in extended precision (well conditioned here).
    c2 = _exact_cumsum(x * x)
    var = (c2 / n - (c / n) ** 2).astype(np.float64)
    assert np.allclose(got["surprisal_var"][1:], var[1:], rtol=1e-9, atol=1e-12)


def test_ill_conditioned_stream_defeats_a_plain_sum_but_not_ours() -> None:
    """Large, nearly equal logprobs: a float64 running sum loses the digits the mean needs."""
    rng = np.random.default_rng(RNG_SEED)
    x = -(3000.0 + rng.random(200_000) * 1e-3)
    got = _run(ChoiceStats(), x, ("mean_logprob", "surprisal_var"))
    n = np.arange(1, len(x) + 1)
    exact_mean = (_exact_cumsum(x) / n).astype(np.float64)
    naive_mean = np.cumsum(x) / n
    assert _rel(naive_mean, exact_mean) > 1e-14  # the trap is real...
    assert _rel(got["mean_logprob"], exact_mean) <= 1e-15  # ...and compensated summation avoids it
    # Variance of values 3000 + U(0, 1e-3): sum-of-squares cancels catastrophically, Welford does not.
    for i in (10, 1_000, 100_000, len(x) - 1):
        assert math.isclose(got["surprisal_var"][i], float(np.var(-x[: i + 1])), rel_tol=1e-6)
    naive_var = float(np.mean(x * x) - np.mean(x) ** 2)
    assert not math.isclose(naive_var, float(np.var(x)), rel_tol=1e-2)


@pytest.mark.slow
def test_window_does_not_drift_after_ten_million_updates() -> None:
    rng = np.random.default_rng(RNG_SEED)
    n, window = 10_000_000, 64
    # Rare huge surprises among tiny ones: every big value that enters and leaves the
    # window would leave rounding error behind in an uncompensated running sum.
    x = -rng.random(n) * 1e-3
    x[rng.random(n) < 0.01] = -5000.0
    r = RollingMean(window)
    update = r.update
    for v in x.tolist():
        update(v)
    exact = math.fsum(x[-window:].tolist()) / window
    assert math.isclose(math.exp(-r.get()), math.exp(-exact), rel_tol=1e-9)
    assert abs(r.get() - exact) <= 1e-12 * max(1.0, abs(exact))


def test_moving_ppl_matches_closed_form_weights() -> None:
    rng = np.random.default_rng(RNG_SEED)
    x = _stream(5_000, rng)
    window = 32
    alpha = 2 / (window + 1)
    got = _run(ChoiceStats(window=window), x, ("moving_ppl",))["moving_ppl"]
    for t in (0, 1, 7, 100, 4_999):
        weights = alpha * (1 - alpha) ** np.arange(t, -1, -1, dtype=float)
        weights[0] = (1 - alpha) ** t  # the first value seeds the average
        assert math.isclose(got[t], math.exp(-float(np.dot(weights, x[: t + 1]))), rel_tol=1e-12)


def _topk_rows(n: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """n rows of k sorted logprobs of a random distribution over a 1000-token vocabulary."""
    logits = rng.normal(0, 3, size=(n, 1000))
    logp = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    return -np.sort(-logp, axis=1)[:, :k]


def test_topk_entropy_confidence_and_group_confidence_match_numpy() -> None:
    rng = np.random.default_rng(RNG_SEED)
    n, k, group, vocab = 3_000, 5, 256, 1000
    rows = _topk_rows(n, k, rng)
    sampled = rows[np.arange(n), rng.integers(0, k, size=n)]
    stats = ChoiceStats(group_window=group, vocab_size=vocab)
    names = ("entropy", "tail_mass", "entropy_lower", "entropy_upper", "confidence", "group_confidence",
             "lowest_group_confidence", "entropy_mean")
    got = {name: np.empty(n) for name in names}
    for i in range(n):
        stats.update(make_token(0, "", float(sampled[i]), rows[i].tolist()))
        for name in names:
            got[name][i] = getattr(stats, name)

    p = np.exp(rows)
    s = p.sum(axis=1)
    q = p / s[:, None]
    h_k = -(q * np.log(q)).sum(axis=1)
    r = 1 - s
    h_part = -(p * rows).sum(axis=1)
    lower = h_part + r * np.log(1 / np.minimum(p.min(axis=1), r))
    upper = h_part + r * np.log((vocab - k) / r)
    np.testing.assert_allclose(got["entropy"], h_k, rtol=1e-12)
    np.testing.assert_allclose(got["tail_mass"], r, rtol=1e-9)
    np.testing.assert_allclose(got["entropy_lower"], lower, rtol=1e-12)
    np.testing.assert_allclose(got["entropy_upper"], upper, rtol=1e-12)
    np.testing.assert_allclose(got["entropy_mean"], np.cumsum(h_k) / np.arange(1, n + 1), rtol=1e-12)

    conf = -rows.mean(axis=1)
    np.testing.assert_allclose(got["confidence"], conf, rtol=1e-12)
    windows = np.array([conf[max(0, i - group + 1): i + 1].mean() for i in range(n)])
    np.testing.assert_allclose(got["group_confidence"], windows, rtol=1e-12)
    # Lowest group confidence: the partial window until it fills, then the min over full windows.
    expected_lowest = windows.copy()
    expected_lowest[group - 1:] = np.minimum.accumulate(windows[group - 1:])
    np.testing.assert_allclose(got["lowest_group_confidence"], expected_lowest, rtol=1e-12)

    # The bounds hold the true entropy of the full distribution the rows came from.
    logits = rng.normal(0, 3, size=(200, vocab))
    logp = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    full_h = -(np.exp(logp) * logp).sum(axis=1)
    top = -np.sort(-logp, axis=1)[:, :k]
    for row, h in zip(top, full_h):
        _, _, lo, hi = topk_entropy(row.tolist(), vocab_size=vocab)
        assert lo - 1e-12 <= h <= hi + 1e-12


def test_small_statistics_agree_with_their_batch_formulas() -> None:
    rng = np.random.default_rng(RNG_SEED)
    x = rng.normal(5, 2, size=500)
    mean, var, ema, roll = Mean(), Variance(), EWMean(0.3), RollingMean(10)
    for i, v in enumerate(x.tolist()):
        for stat in (mean, var, ema, roll):
            stat.update(v)
        # pandas' adjust=False form, written as a weighted sum of every value so far
        weights = 0.3 * 0.7 ** np.arange(i, -1, -1, dtype=float)
        weights[0] = 0.7**i
        assert math.isclose(ema.get(), float(weights @ x[: i + 1]), rel_tol=1e-9)
        assert math.isclose(mean.get(), float(np.mean(x[: i + 1])), rel_tol=1e-12)
        assert math.isclose(var.get(), float(np.var(x[: i + 1])), rel_tol=1e-9, abs_tol=1e-12)
        assert math.isclose(roll.get(), float(np.mean(x[max(0, i - 9): i + 1])), rel_tol=1e-12)


def test_undefined_values_are_nan_and_none_in_the_summary() -> None:
    stats = ChoiceStats()
    assert math.isnan(stats.ppl) and math.isnan(stats.min_prob) and math.isnan(stats.entropy)
    summary = stats.as_dict()
    assert summary["tokens"] == 0 and summary["ppl"] is None and summary["min_logprob"] is None


def test_skipped_and_censored_tokens_are_counted_as_the_policy_says() -> None:
    stats = ChoiceStats()
    stats.update(make_token(0, "a", -1.0))
    stats.update(make_token(0, "b", None))
    stats.update(make_token(0, "c", -9999.0, [-0.5, -2.0]))
    assert (stats.tokens, stats.skipped, stats.censored) == (2, 1, 1)
    assert math.isclose(stats.ppl, math.exp(1.5))


@pytest.mark.parametrize("bad", [0, -3])
def test_bad_options_name_the_parameter(bad: int) -> None:
    with pytest.raises(ValueError, match="window"):
        ChoiceStats(window=bad)


def test_a_mean_logprob_past_exp_range_is_an_infinite_ppl_not_an_overflow() -> None:
    stats = ChoiceStats(window=2)
    for lp in (-800.0, -800.0):  # legal logprobs (above the -9999 censor line), exp(800) > 1.8e308
        stats.update(make_token(0, "x", lp))
    assert stats.ppl == math.inf and stats.window_ppl == math.inf and stats.moving_ppl == math.inf
    assert stats.min_prob == 0.0 and stats.max_surprisal == 800.0
    summary = stats.as_dict()
    assert summary["ppl"] == "inf" and summary["window_ppl"] == "inf" and summary["mean_logprob"] == -800.0
    json.loads(json.dumps(summary, allow_nan=False))  # valid JSON: no bare Infinity


def test_alternatives_whose_probability_underflows_keep_finite_entropy_bounds() -> None:
    # p = exp(-800) is 0.0 in a double: the bound must come from the logprob, not log(0).
    alts = [-0.01, -800.0, -1000.0]
    h, r, lower, upper = topk_entropy(alts, vocab_size=1000)
    p = np.exp(np.array(alts))
    r_ref = 1 - p.sum()
    plogp = float(np.sum(p * np.array(alts)))
    assert math.isclose(r, r_ref, rel_tol=1e-12)
    assert math.isclose(lower, -plogp + r_ref * 1000.0, rel_tol=1e-12)  # log(1/min(p_min, r)) = 1000
    assert math.isfinite(h) and upper >= lower
    stats = ChoiceStats()
    stats.update(make_token(0, "x", -0.01, alts))
    assert stats.entropy_lower == lower
    all_tiny = topk_entropy([-800.0, -900.0])
    assert all(math.isnan(v) for v in all_tiny)  # nothing left to renormalise: undefined, not an error


@pytest.mark.parametrize("bad", [0, -1, 10**10, 2.5, True, "64"])
def test_a_window_that_is_not_a_sane_count_is_a_value_error(bad: object) -> None:
    with pytest.raises(ValueError, match="window must be"):
        ChoiceStats(window=bad)  # type: ignore[arg-type]
