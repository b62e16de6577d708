"""Calibration against direct formulas: Gaussians, Bayes rule, AUROC by pair counting."""

from __future__ import annotations

import itertools
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from livepplx.calibrate import CalibrationError, CarCalibration, auroc, deepconf_threshold, fit_threshold

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
