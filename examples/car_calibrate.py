"""Fit CAR's escalation rule from a labelled file, and see how well perplexity separates.

    python examples/car_calibrate.py examples/car_eval_result.json car.json

The input is car_eval.py's report (its rows: each short answer's perplexity and whether it
was correct). The same fit from JSON lines on the command line:
`livepplx calibrate labelled.jsonl --out car.json` (``--one-sided`` for the one-sided rule).
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

from livepplx.decide.calibrate import CarCalibration, auroc, fit_threshold


def main(report_path: str, out: str | None = None) -> CarCalibration:
    rows = json.loads(Path(report_path).read_text())["rows"]
    ppls = [r["ppl"] for r in rows]
    correct = [r["short_correct"] for r in rows]
    cal = CarCalibration.fit(ppls, correct)
    youden = fit_threshold(ppls, correct)
    print(f"{len(rows)} labelled short answers, {sum(correct)} correct")
    print(f"AUROC of the short answer's perplexity: {auroc(ppls, [not c for c in correct]):.3f} (0.5 is chance)")
    print(f"correct ~ N({cal.mu_correct:.3f}, {cal.sigma_correct:.3f}^2)  incorrect ~ N({cal.mu_incorrect:.3f}, "
          f"{cal.sigma_incorrect:.3f}^2)  priors {cal.prior_correct:.2f}/{cal.prior_incorrect:.2f}")
    # With unequal widths the paper's rule switches twice: it may escalate on both sides.
    print(f"the paper's Bayes rule: {cal.describe()}")
    print(f"one-sided (rule='upper'): {dataclasses.replace(cal, rule='upper').describe()}")
    print(f"Youden's J: escalate when ppl > {youden.threshold:.3f} (catches {youden.true_positive_rate:.0%} of "
          f"wrong answers, flags {youden.false_positive_rate:.0%} of right ones)")
    if out:
        cal.save(out)
        print(f"saved {out}")
    return cal


if __name__ == "__main__":
    main(*sys.argv[1:3])
