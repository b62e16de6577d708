"""Calibration against direct formulas: Gaussians, Bayes rule, AUROC by pair counting, and the
fast fits against livepplx 0.1's brute-force loops (copied here as the reference)."""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from livepplx.decide.calibrate import CalibrationError, CarCalibration, auroc, deepconf_threshold, fit_threshold
from livepplx.cli import main as cli
from livepplx.core.errors import LivepplxError

RNG = np.random.default_rng(5)


def labelled(n: int = 200) -> tuple[np.ndarray, np.ndarray]:
    correct = RNG.random(n) < 0.6
    ppl = np.where(correct, RNG.normal(1.6, 0.3, n), RNG.normal(3.0, 0.8, n))
    return ppl, correct


def pdf(x: float, mu: float, sigma: float) -> float:
    return math.exp(-0.5 * ((x - mu) / sigma) ** 2) / (sigma * math.sqrt(2 * math.pi))


def test_fit_is_the_class_means_deviations_and_frequencies() -> None:
    ppl, correct = labelled()
    cal = CarCalibration.fit(ppl.tolist(), correct.tolist())
    assert math.isclose(cal.mu_correct, ppl[correct].mean()) and math.isclose(cal.sigma_correct, ppl[correct].std(ddof=1))
    assert math.isclose(cal.mu_incorrect, ppl[~correct].mean()) and math.isclose(cal.sigma_incorrect, ppl[~correct].std(ddof=1))
    assert math.isclose(cal.prior_correct, correct.mean()) and math.isclose(cal.prior_correct + cal.prior_incorrect, 1.0)


def test_escalate_is_the_bayes_rule_as_the_paper_states_it() -> None:
    ppl, correct = labelled()
    cal = CarCalibration.fit(ppl, correct)
    for x in np.linspace(0.5, 6.0, 500):
        keep = cal.prior_correct * pdf(x, cal.mu_correct, cal.sigma_correct)
        esc = cal.prior_incorrect * pdf(x, cal.mu_incorrect, cal.sigma_incorrect)
        assert cal.escalate(float(x)) == (keep < esc)
        assert math.isclose(cal.p_correct(float(x)), keep / (keep + esc), rel_tol=1e-9, abs_tol=1e-300)
    t = cal.threshold
    assert t is not None and cal.mu_correct < t < cal.mu_incorrect
    assert not cal.escalate(t - 1e-6) and cal.escalate(t + 1e-6)
    assert cal.escalate(float("nan"))


def test_threshold_is_none_when_the_densities_do_not_cross_between_the_means() -> None:
    # A rare, wide incorrect class under a frequent correct one: the correct class wins everywhere between.
    cal = CarCalibration(1.0, 1.0, 1.5, 5.0, 0.99, 0.01)
    assert cal.threshold is None


def test_save_and_load(tmp_path: Path) -> None:
    cal = CarCalibration.fit(*labelled())
    cal.save(tmp_path / "car.json")
    assert CarCalibration.load(tmp_path / "car.json") == cal
    with pytest.raises(CalibrationError, match="not a CAR calibration"):
        CarCalibration.from_json('{"mu": 1}')


@pytest.mark.parametrize(
    ("ppls", "correct", "message"),
    [
        ([1.0, 1.2, 3.0], [True, True, False], "1 incorrect answers"),
        ([1.0, 1.0, 3.0, 4.0], [True, True, False, False], "zero variance"),
        ([1.0], [True, False], "one label per answer"),
    ],
)
def test_clear_errors_for_data_that_cannot_be_fitted(ppls: list[float], correct: list[bool], message: str) -> None:
    with pytest.raises(CalibrationError, match=message):
        CarCalibration.fit(ppls, correct)


def test_auroc_counts_pairs() -> None:
    scores = RNG.integers(0, 10, 60).astype(float)  # many ties
    positive = RNG.random(60) < 0.4
    pairs = [(1.0 if a > b else 0.5 if a == b else 0.0)
             for a, b in itertools.product(scores[positive], scores[~positive])]
    assert math.isclose(auroc(scores, positive), sum(pairs) / len(pairs))


def test_fit_threshold_youden_and_precision_by_brute_force() -> None:
    ppl, correct = labelled(120)
    bad = ~correct
    fit = fit_threshold(ppl, correct)
    js = [((ppl > c) & bad).sum() / bad.sum() - ((ppl > c) & ~bad).sum() / (~bad).sum() for c in ppl]
    assert math.isclose(fit.true_positive_rate - fit.false_positive_rate, max(js))
    assert fit.flags(fit.threshold + 1e-9) and not fit.flags(fit.threshold)
    precise = fit_threshold(ppl, correct, rule="precision", target_precision=0.95)
    reachable = [((ppl > c) & bad).sum() / bad.sum() for c in ppl
                 if (ppl > c).any() and ((ppl > c) & bad).sum() / (ppl > c).sum() >= 0.95]
    assert precise.precision >= 0.95 and math.isclose(precise.true_positive_rate, max(reachable))
    # Confidence: higher is better, so the threshold flags low values.
    conf = fit_threshold(-ppl, correct, higher_is_worse=False)
    assert math.isclose(conf.threshold, -fit.threshold) and conf.flags(conf.threshold - 1e-9)
    assert math.isclose(conf.auroc, fit.auroc)


def test_deepconf_threshold_is_the_percentile() -> None:
    warmups = RNG.normal(10, 2, 16)
    assert deepconf_threshold(warmups, eta=10) == pytest.approx(np.percentile(warmups, 90))
    assert deepconf_threshold(warmups, eta=90) == pytest.approx(np.percentile(warmups, 10))
    with pytest.raises(CalibrationError):
        deepconf_threshold([float("nan")])


def test_calibrate_command_line(tmp_path: Path) -> None:
    ppl, correct = labelled(80)
    data = tmp_path / "labelled.jsonl"
    data.write_text("".join(json.dumps({"ppl": float(p), "correct": bool(c), "q": i}) + "\n"
                            for i, (p, c) in enumerate(zip(ppl, correct))))
    out = tmp_path / "car.json"
    result = subprocess.run([sys.executable, "-m", "livepplx.cli", "calibrate", str(data), "--out", str(out)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert CarCalibration.load(out) == CarCalibration.fit(ppl, correct)
    assert f"AUROC {auroc(ppl, ~correct):.3f}" in result.stdout
    summary = subprocess.run([sys.executable, "-m", "livepplx.cli", "calibrate", str(data), "--json"],
                             capture_output=True, text=True, timeout=60)
    report = json.loads(summary.stdout)
    assert math.isclose(report["auroc"], auroc(ppl, ~correct)) and report["calibration"]["kind"] == "car"
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"ppl": 1.0, "correct": true}\nnot json\n')
    failed = subprocess.run([sys.executable, "-m", "livepplx.cli", "calibrate", str(bad)], capture_output=True, text=True)
    assert failed.returncode == 1 and "line 2" in failed.stderr and "Traceback" not in failed.stderr


# -- the fast fits equal the brute-force ones ------------------------------------------------


def reference_auroc(s: np.ndarray, p: np.ndarray) -> float:
    """livepplx 0.1's auroc: mid-ranks by a Python loop over the sorted scores."""
    n_pos, n_neg = int(p.sum()), int((~p).sum())
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s))
    sorted_s = s[order]
    i = 0
    while i < len(s):
        j = i
        while j + 1 < len(s) and sorted_s[j + 1] == sorted_s[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    u = ranks[p].sum() - n_pos * (n_pos + 1) / 2
    return float(u / (n_pos * n_neg))


def reference_fit(scores: list[float], correct: list[bool], rule: str, target_precision: float,
                  higher_is_worse: bool) -> tuple[float, float, float, float, float] | None:
    """livepplx 0.1's fit_threshold: every distinct cut tried with O(n) work (O(n^2) in all)."""
    s = np.asarray(scores, dtype=float)
    bad = ~np.asarray(correct, dtype=bool)
    keep = np.isfinite(s)
    s, bad = s[keep], bad[keep]
    oriented = s if higher_is_worse else -s
    best: Any = None
    for cut in np.unique(oriented):
        flagged = oriented > cut
        tpr = float((flagged & bad).sum() / bad.sum())
        fpr = float((flagged & ~bad).sum() / (~bad).sum())
        precision = float((flagged & bad).sum() / flagged.sum()) if flagged.any() else 1.0
        if rule == "youden":
            key: tuple[float, ...] = (tpr - fpr,)
        else:
            if precision < target_precision or not flagged.any():
                continue
            key = (tpr, precision)
        if best is None or key > best[0]:
            best = (key, float(cut), tpr, fpr, precision)
    if best is None:
        return None
    _, cut, tpr, fpr, precision = best
    return (cut if higher_is_worse else -cut), reference_auroc(oriented, bad), tpr, fpr, precision


# Few distinct values, so ties are common; NaN and infinities mixed in.
SCORE = st.one_of(st.sampled_from([0.5, 1.0, 1.25, 1.5, 2.0, 3.0, 7.0]), st.floats(0.1, 10.0),
                  st.sampled_from([math.nan, math.inf, -math.inf]))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(SCORE, st.booleans()), min_size=2, max_size=60),
       st.sampled_from(["youden", "precision"]), st.sampled_from([0.5, 0.8, 1.0]), st.booleans())
def test_fit_threshold_equals_the_brute_force_reference(rows: list[tuple[float, bool]], rule: str, target: float,
                                                        higher_is_worse: bool) -> None:
    scores, correct = [r[0] for r in rows], [r[1] for r in rows]
    finite = [c for s, c in rows if math.isfinite(s)]
    assume(any(finite) and not all(finite))
    expected = reference_fit(scores, correct, rule, target, higher_is_worse)
    if expected is None:
        with pytest.raises(CalibrationError, match="no threshold reaches precision"):
            fit_threshold(scores, correct, rule=rule, target_precision=target,  # type: ignore[arg-type]
                          higher_is_worse=higher_is_worse)
        return
    fit = fit_threshold(scores, correct, rule=rule, target_precision=target,  # type: ignore[arg-type]
                        higher_is_worse=higher_is_worse)
    assert (fit.threshold, fit.auroc, fit.true_positive_rate, fit.false_positive_rate, fit.precision) == expected
    assert fit.dropped == len(rows) - len(finite)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(SCORE, st.booleans()), min_size=2, max_size=80))
def test_auroc_equals_the_loop_and_drops_what_the_fits_drop(rows: list[tuple[float, bool]]) -> None:
    kept = [(s, p) for s, p in rows if math.isfinite(s)]
    assume(any(p for _, p in kept) and not all(p for _, p in kept))
    s, p = np.array([r[0] for r in kept]), np.array([r[1] for r in kept])
    assert auroc([r[0] for r in rows], [r[1] for r in rows]) == reference_auroc(s, p)


def test_nan_and_infinite_rows_are_dropped_alike_and_counted() -> None:
    ppl, correct = labelled(100)
    noisy = np.concatenate([ppl, [math.nan, math.inf, -math.inf]])
    labels = np.concatenate([correct, [False, False, True]])
    assert CarCalibration.fit(noisy, labels) == CarCalibration.fit(ppl, correct)
    assert auroc(noisy, ~labels) == auroc(ppl, ~correct)  # 0.1 ranked the NaN and the infinities
    fit = fit_threshold(noisy, labels)
    assert fit.dropped == 3 and dataclasses.replace(fit, dropped=0) == fit_threshold(ppl, correct)


def test_the_fits_are_n_log_n() -> None:
    # 100,000 distinct scores took 22 s with a pass over the data per cut; one sort takes a blink.
    rng = np.random.default_rng(1)
    correct = rng.random(100_000) < 0.6
    ppl = np.where(correct, rng.normal(1.6, 0.3, correct.size), rng.normal(3.0, 0.8, correct.size))
    start = time.perf_counter()
    fit_threshold(ppl, correct)
    fit_threshold(ppl, correct, rule="precision")
    auroc(ppl, ~correct)
    assert time.perf_counter() - start < 3.0


@pytest.mark.parametrize(("labels", "message"), [
    (["yes", "no", "yes", "no"], "labels must be true or false"),
    ([2, 0, 1, 0], "labels must be true or false"),
    ([None, True, False, True], "labels must be true or false"),
])
def test_labels_must_be_booleans(labels: list[Any], message: str) -> None:
    with pytest.raises(CalibrationError, match=message):
        fit_threshold([1.0, 2.0, 3.0, 4.0], labels)
    with pytest.raises(CalibrationError, match="must be numbers"):
        auroc(["1.0", "x"], [True, False])


# -- a calibration read from a file is checked -------------------------------------------------

GOOD = {"kind": "car", "mu_correct": 1.7, "sigma_correct": 0.36, "mu_incorrect": 2.0, "sigma_incorrect": 0.62,
        "prior_correct": 0.48, "prior_incorrect": 0.52}


def _with(**changes: Any) -> str:
    return json.dumps({**GOOD, **changes})


@pytest.mark.parametrize(("text", "message"), [
    (_with(sigma_correct=0), "sigma_correct must be > 0"),
    (_with(sigma_incorrect=-1.0), "sigma_incorrect must be > 0"),
    (_with(prior_correct=0, prior_incorrect=1), "prior_correct must be in \\(0, 1\\)"),
    (_with(prior_correct=0.5, prior_incorrect=0.6), "priors must add up to 1"),
    (_with(mu_correct=float("nan")), "mu_correct must be a finite number"),
    (_with(mu_incorrect=float("inf")), "mu_incorrect must be a finite number"),
    (json.dumps(GOOD).replace("1.7", "1e999"), "mu_correct must be a finite number"),
    (json.dumps(GOOD).replace("1.7", "1" + "0" * 400), "mu_correct is too large for a float"),
    (json.dumps(GOOD).replace("1.7", "1" + "0" * 5000), "not JSON"),
    (_with(mu_correct=1e60), "mu_correct 1e\\+60 is out of range"),
    (_with(sigma_correct=1e-60), "sigma_correct 1e-60 is out of range"),
    (_with(mu_correct="1.7"), "mu_correct must be a number, got '1.7'"),
    (_with(mu_correct=True), "mu_correct must be a number, got True"),
    (_with(mu_correct=[1.7]), "mu_correct must be a number"),
    (_with(mu_correct=None), "mu_correct must be a number, got None"),
    (_with(extra=1), "unknown 'extra'"),
    (json.dumps({k: v for k, v in GOOD.items() if k != "prior_incorrect"}), "missing prior_incorrect"),
    ('{"mu": 1}', "missing mu_correct, sigma_correct"),
    (_with(kind="deepconf"), "kind is 'deepconf'"),
    (_with(rule="lower"), "rule must be 'bayes' or 'upper'"),
    (_with(rule=["bayes"]), "rule must be 'bayes' or 'upper'"),
    ("[1, 2]", "expected a JSON object, got list"),
    ("not json", "not JSON"),
    (b"\xff\xfe{", "not JSON"),
    ("[" * 100_000, "nests too deep"),
    ('{"a": ' * 100_000, "nests too deep"),
])
def test_from_json_rejects_what_is_not_a_calibration(text: str | bytes, message: str) -> None:
    with pytest.raises(CalibrationError, match=message) as caught:
        CarCalibration.from_json(text)
    error = caught.value
    assert isinstance(error, LivepplxError) and isinstance(error, ValueError)
    assert "\n" not in str(error) and len(str(error)) < 300 and str(error).startswith("not a CAR calibration: ")


def test_from_json_takes_what_to_json_writes_and_a_0_1_file() -> None:
    cal = CarCalibration.from_json(json.dumps(GOOD))  # livepplx 0.1 wrote no "rule": the paper's
    assert cal.rule == "bayes" and CarCalibration.from_json(cal.to_json()) == cal
    one_sided = dataclasses.replace(cal, rule="upper")
    assert CarCalibration.from_json(one_sided.to_json()) == one_sided != cal
    assert CarCalibration.from_json(_with(mu_correct=2)).mu_correct == 2.0


def test_a_calibration_is_checked_however_it_is_made() -> None:
    with pytest.raises(CalibrationError, match="sigma_correct must be > 0"):
        CarCalibration(1.0, 0.0, 2.0, 1.0, 0.5, 0.5)
    with pytest.raises(CalibrationError, match="out of range"):
        CarCalibration.fit([1e60, 2e60, 1.0, 1.5], [False, False, True, True])


# -- the rule, both crossings, the one-sided rule ------------------------------------------------


def direct_escalates(x: np.ndarray, cal: CarCalibration) -> np.ndarray:
    """pi0 N(x; mu0, s0) > pi1 N(x; mu1, s1), each weighted density written out (in logs, so the
    tails do not underflow)."""
    def log_weighted(mu: float, sigma: float, prior: float) -> np.ndarray:
        return math.log(prior) - 0.5 * ((x - mu) / sigma) ** 2 - math.log(sigma * math.sqrt(2 * math.pi))

    return log_weighted(cal.mu_incorrect, cal.sigma_incorrect, cal.prior_incorrect) > log_weighted(
        cal.mu_correct, cal.sigma_correct, cal.prior_correct)


# On a lattice: means 0.01 apart at least, widths 0.05, priors 0.01. Values a rounding error apart
# put the crossing at 1e16, where the reference's own rounding decides (it cannot be the judge there).
MEAN, WIDTH, PRIOR = (st.integers(lo, hi).map(lambda k, d=d: k / d) for lo, hi, d in
                      ((50, 2000, 100), (1, 100, 20), (2, 98, 100)))


@settings(max_examples=150, deadline=None)
@given(MEAN, WIDTH, MEAN, WIDTH, PRIOR)
def test_crossings_and_the_one_sided_rule_against_the_densities_on_a_grid(
        mu1: float, s1: float, mu0: float, s0: float, prior: float) -> None:
    cal = CarCalibration(mu1, s1, mu0, s0, prior, 1 - prior)
    upper = dataclasses.replace(cal, rule="upper")
    ts = cal.thresholds
    assert list(ts) == sorted(ts) and len(ts) <= 2
    lo = min(mu1 - 12 * s1, mu0 - 12 * s0, *ts) - 1
    hi = max(mu1 + 12 * s1, mu0 + 12 * s0, *ts) + 1
    grid = np.linspace(lo, hi, 4001)
    step = grid[1] - grid[0]
    assume(all(b - a > 3 * step for a, b in zip(ts, ts[1:])))  # two crossings in one cell: not resolvable
    tol = 1e-7 * (hi - lo)
    far = np.all(np.abs(grid[:, None] - np.array(ts)[None, :]) > tol, axis=1) if ts else np.ones(grid.size, bool)
    direct = direct_escalates(grid, cal)
    # The Bayes rule, point by point, and it switches in exactly the cells that hold a crossing.
    assert all(cal.escalate(float(x)) == d for x, d, f in zip(grid, direct, far) if f)
    switches = np.flatnonzero(direct[1:] != direct[:-1])
    assert len(switches) == len(ts)
    for i, t in zip(switches, ts):
        assert grid[i] - tol <= t <= grid[i + 1] + tol
    # Between the means, where livepplx 0.1's single threshold lived.
    between = [t for t in ts if min(mu1, mu0) <= t <= max(mu1, mu0)]
    assert cal.threshold == (between[0] if between else None)
    # One-sided: keep below the highest switch from keeping to escalating, escalate above it.
    ups = [i for i in switches if not direct[i] and direct[i + 1]]
    if ups:
        i = ups[-1]
        assert upper.upper_threshold is not None and grid[i] - tol <= upper.upper_threshold <= grid[i + 1] + tol
        expected = grid > upper.upper_threshold
    else:
        assert upper.upper_threshold is None
        expected = np.full(grid.shape, bool(direct.all()))
    assert all(upper.escalate(float(x)) == e for x, e, f in zip(grid, expected, far) if f)
    assert upper.escalate(math.nan) and cal.escalate(math.nan)


def test_the_paper_rule_escalates_on_both_sides_in_the_measured_calibrations() -> None:
    # Both 2-fold calibrations of livepplx 0.1's examples/car_eval_result.json (Gemma 3 270M, 42 questions).
    for values in [(1.7705355014058797, 0.3587386687912654, 1.9879056180604984, 0.6227567541919055,
                    0.47619047619047616, 0.5238095238095238),
                   (1.8858798754843173, 0.5285130832048117, 2.0080213816266594, 0.4560035810709968,
                    0.5238095238095238, 0.47619047619047616)]:
        cal = CarCalibration(*values)
        one_sided = dataclasses.replace(cal, rule="upper")
        low, high = cal.thresholds
        assert one_sided.upper_threshold is not None
        assert one_sided.describe() == f"escalate when ppl > {one_sided.upper_threshold:.3f}"
        assert not one_sided.escalate(1.0) and one_sided.escalate(4.0)
        if cal.sigma_incorrect > cal.sigma_correct:
            # The wider incorrect class wins in both tails: a perplexity of 1.0 (the model sure of
            # every token) escalates.
            assert cal.escalate(1.0) and cal.escalate(4.0)
            assert cal.describe() == f"escalate when ppl < {low:.3f} or ppl > {high:.3f}"
        else:
            # The wider correct class wins in both tails: a perplexity of 4.0 is kept.
            assert not cal.escalate(1.0) and not cal.escalate(4.0)
            assert cal.describe() == f"escalate when {low:.3f} < ppl < {high:.3f}"


def test_describe_says_the_rule() -> None:
    both = CarCalibration(1.6, 0.3, 3.0, 0.8, 0.6, 0.4)
    low, high = both.thresholds
    assert both.describe("ppl") == f"escalate when ppl < {low:.3f} or ppl > {high:.3f}"
    assert dataclasses.replace(both, rule="upper").describe("window_ppl") == f"escalate when window_ppl > {high:.3f}"
    narrow_wrong = CarCalibration(1.6, 0.8, 3.0, 0.3, 0.5, 0.5)  # the incorrect class is narrower
    a, b = narrow_wrong.thresholds
    assert narrow_wrong.describe() == f"escalate when {a:.3f} < ppl < {b:.3f}"
    assert dataclasses.replace(narrow_wrong, rule="upper").describe() == f"escalate when ppl > {a:.3f}"
    assert CarCalibration(1.0, 1.0, 1.0, 1.0, 0.7, 0.3).describe() == "never escalate"
    assert CarCalibration(1.0, 1.0, 1.0, 1.0, 0.3, 0.7).describe() == "always escalate"
    assert dataclasses.replace(CarCalibration(1.0, 1.0, 1.0, 1.0, 0.3, 0.7), rule="upper").escalate(0.0)


# -- the command line ------------------------------------------------------------------------------


def calibrate(tmp_path: Path, lines: list[str] | str, *args: str,
              capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    data = tmp_path / "rows.jsonl"
    data.write_text(lines if isinstance(lines, str) else "".join(line + "\n" for line in lines))
    code = cli(["calibrate", str(data), *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_calibrate_reports_dropped_rows_and_the_rule_in_words(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ppl, correct = labelled(80)
    lines = [json.dumps({"ppl": float(p), "correct": bool(c)}) for p, c in zip(ppl, correct)]
    lines += ['{"ppl": null, "correct": true}', '{"ppl": NaN, "correct": false}', '{"ppl": Infinity, "correct": 1}']
    code, out, err = calibrate(tmp_path, lines, "--json", capsys=capsys)
    assert code == 0, err
    report = json.loads(out)
    expected = CarCalibration.fit(ppl, correct)
    assert report["dropped"] == 3 and report["answers"] == 80 and report["correct"] == int(correct.sum())
    assert report["thresholds"] == list(expected.thresholds) and report["rule"] == "bayes"
    assert report["escalate_when"] == expected.describe() and " or " in report["escalate_when"]
    assert report["auroc"] == auroc(ppl, ~correct)
    code, out, err = calibrate(tmp_path, lines, "--one-sided", "--out", str(tmp_path / "car.json"), capsys=capsys)
    assert code == 0, err
    assert "80 answers" in out and "3 dropped" in out
    saved = CarCalibration.load(tmp_path / "car.json")
    assert saved == dataclasses.replace(expected, rule="upper")
    assert f"CAR rule (one-sided): escalate when ppl > {saved.upper_threshold:.3f}" in out
    assert f"the paper's Bayes rule would {expected.describe()}" in out


GOOD_LINES = ['{"ppl": 1.0, "correct": true}', '{"ppl": 1.2, "correct": true}',
              '{"ppl": 3.0, "correct": false}', '{"ppl": 2.5, "correct": false}']


@pytest.mark.parametrize(("bad", "message"), [
    ("not json", "line 3 is not JSON"),
    ('{"ppl": 1e999, "correct": true}', "line 3: 'ppl' is a number too large for a float"),
    ('{"ppl": ' + "1" * 400 + ', "correct": true}', "line 3: 'ppl' is a number too large for a float"),
    ('{"ppl": ' + "1" * 5000 + ', "correct": true}', "line 3: 'ppl' is a number too large for a float"),
    ('{"ppl": "1.5", "correct": true}', "line 3: 'ppl' must be a number \\(or null\\), got a string"),
    ('{"ppl": true, "correct": true}', "line 3: 'ppl' must be a number \\(or null\\), got a boolean"),
    ('{"ppl": [1.5], "correct": true}', "got an array"),
    ('{"ppl": 1.5, "correct": "yes"}', "line 3: 'correct' must be true or false \\(or 1 or 0\\), got a string"),
    ('{"ppl": 1.5, "correct": 2}', "got a number 2"),
    ('{"ppl": 1.5, "correct": null}', "got null"),
    ('{"ppl": 1.5}', "line 3 has no 'ppl' and 'correct'"),
    ("[1.5, true]", "line 3 is an array, not a JSON object"),
    ("3", "line 3 is a number, not a JSON object"),
    ("[" * 100_000, "line 3 nests too deep"),
    ('{"ppl": 1.5, "correct": true, "x": ' + "[" * 100_000 + "]" * 100_000 + "}", "line 3 nests too deep"),
])
def test_calibrate_rejects_bad_lines_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                 bad: str, message: str) -> None:
    code, out, err = calibrate(tmp_path, GOOD_LINES[:2] + [bad] + GOOD_LINES[2:], capsys=capsys)
    assert code == 1 and out == ""
    assert err.count("\n") == 1 and err.startswith("livepplx: error: ")
    import re
    assert re.search(message, err), err


def test_calibrate_says_when_dropped_rows_leave_too_few(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lines = GOOD_LINES + ['{"ppl": null, "correct": false}', '{"ppl": NaN, "correct": false}']
    code, _, err = calibrate(tmp_path, GOOD_LINES[:3] + lines[4:], capsys=capsys)
    assert code == 1 and "1 incorrect answers" in err and "2 of 5 rows dropped" in err and err.count("\n") == 1


def test_calibrate_says_when_the_values_overflow(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import warnings

    lines = ['{"ppl": 1e300, "correct": true}', '{"ppl": -1e300, "correct": true}',
             '{"ppl": 1e308, "correct": false}', '{"ppl": 1.7e308, "correct": false}']
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        code, out, err = calibrate(tmp_path, lines, capsys=capsys)
    assert code == 1 and err.count("\n") == 1 and not caught  # no numpy RuntimeWarning on stderr
    assert "the correct answers' perplexities are too large to fit" in err
