"""Thresholds from data: CAR's Gaussians, thresholds for any live score, DeepConf's percentile rule.

>>> cal = CarCalibration.fit([1.2, 1.5, 1.3, 1.4, 3.0, 4.0, 3.5], [True, True, True, True, False, False, False])
>>> round(cal.p_correct(1.4), 3), cal.escalate(1.4), cal.escalate(3.2)
(1.0, False, True)
>>> round(cal.threshold, 3)     # where the weighted densities cross, between the means
1.839
>>> deepconf_threshold([10.0, 12.0, 14.0, 16.0, 18.0], eta=10)   # keep the top 10%
17.2
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal, Sequence

import numpy as np

__all__ = ["CarCalibration", "CalibrationError", "ThresholdFit", "fit_threshold", "auroc", "deepconf_threshold"]


class CalibrationError(ValueError):
    """The labelled data cannot support the fit asked for."""


def _normal_logpdf(x: float, mu: float, sigma: float) -> float:
    z = (x - mu) / sigma
    return -0.5 * z * z - math.log(sigma) - 0.5 * math.log(2 * math.pi)


@dataclass(frozen=True)
class CarCalibration:
    """CAR's decision rule (arXiv 2505.15154): Gaussians over the short answers' perplexity.

    Correct short answers ~ N(mu_correct, sigma_correct^2), incorrect ~ N(mu_incorrect,
    sigma_incorrect^2), priors from the class frequencies. Escalate to long reasoning when
    ``prior_correct * N(ppl; correct) < prior_incorrect * N(ppl; incorrect)``.
    """

    mu_correct: float
    sigma_correct: float
    mu_incorrect: float
    sigma_incorrect: float
    prior_correct: float
    prior_incorrect: float

    @classmethod
    def fit(cls, ppls: Sequence[float], correct: Sequence[bool]) -> CarCalibration:
        """Fit from labelled short answers: their perplexities and whether each was correct.

        Raises :class:`CalibrationError` with fewer than 2 finite values in a class, or a
        class whose perplexities are all equal (a Gaussian of zero width decides nothing).
        """
        x = np.asarray(list(ppls), dtype=float)
        y = np.asarray(list(correct), dtype=bool)
        if x.shape != y.shape:
            raise CalibrationError(f"{len(x)} perplexities but {len(y)} labels: give one label per answer")
        keep = np.isfinite(x)
        x, y = x[keep], y[keep]
        params = []
        for name, cls_x in (("correct", x[y]), ("incorrect", x[~y])):
            if cls_x.size < 2:
                raise CalibrationError(
                    f"{cls_x.size} {name} answers with a finite perplexity: CAR needs at least 2 of each class "
                    "(label more answers)"
                )
            sigma = float(np.std(cls_x, ddof=1))
            if not sigma > 0:
                raise CalibrationError(
                    f"every {name} answer has perplexity {cls_x[0]:g}: a class with zero variance cannot be "
                    "modelled; label more varied answers"
                )
            params.append((float(np.mean(cls_x)), sigma))
        n = x.size
        (mu1, s1), (mu0, s0) = params
        return cls(mu1, s1, mu0, s0, float(y.sum()) / n, float((~y).sum()) / n)

    def _log_weighted(self, ppl: float) -> tuple[float, float]:
        return (
            math.log(self.prior_correct) + _normal_logpdf(ppl, self.mu_correct, self.sigma_correct),
            math.log(self.prior_incorrect) + _normal_logpdf(ppl, self.mu_incorrect, self.sigma_incorrect),
        )

    def p_correct(self, ppl: float) -> float:
        """The posterior probability that a short answer with this perplexity is correct."""
        a, b = self._log_weighted(ppl)
        return 1.0 / (1.0 + math.exp(min(700.0, b - a)))

    def escalate(self, ppl: float) -> bool:
        """CAR's rule: escalate when ``pi1 N(ppl; mu1, s1) < pi0 N(ppl; mu0, s0)``. NaN escalates."""
        if not math.isfinite(ppl):
            return True
        a, b = self._log_weighted(ppl)
        return a < b

    @property
    def threshold(self) -> float | None:
        """The perplexity between the two means where the weighted densities cross, or None."""
        lo, hi = sorted((self.mu_correct, self.mu_incorrect))
        # log-weighted difference as a quadratic a x^2 + b x + c = 0
        s1, s0 = self.sigma_correct, self.sigma_incorrect
        a = 1 / (2 * s0 * s0) - 1 / (2 * s1 * s1)
        b = self.mu_correct / (s1 * s1) - self.mu_incorrect / (s0 * s0)
        c = (self.mu_incorrect**2 / (2 * s0 * s0) - self.mu_correct**2 / (2 * s1 * s1)
             + math.log(self.prior_correct / s1) - math.log(self.prior_incorrect / s0))
        if abs(a) < 1e-15:
            roots = [-c / b] if b else []
        else:
            disc = b * b - 4 * a * c
            if disc < 0:
                return None
            roots = [(-b + sign * math.sqrt(disc)) / (2 * a) for sign in (1, -1)]
        between = [r for r in roots if lo <= r <= hi]
        return float(between[0]) if between else None

    def to_json(self) -> str:
        return json.dumps({"kind": "car", **asdict(self)}, indent=2)

    @classmethod
    def from_json(cls, text: str) -> CarCalibration:
        data = json.loads(text)
        data.pop("kind", None)
        try:
            return cls(**{k: float(v) for k, v in data.items()})
        except TypeError as e:
            raise CalibrationError(f"not a CAR calibration: {e}") from None

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_json() + "\n")

    @classmethod
    def load(cls, path: str | Path) -> CarCalibration:
        return cls.from_json(Path(path).read_text())


def auroc(scores: Sequence[float], positive: Sequence[bool]) -> float:
    """Area under the ROC curve: the chance a random positive scores above a random negative
    (ties count half). Mann-Whitney U with mid-ranks.

    >>> auroc([0.1, 0.4, 0.35, 0.8], [False, False, True, True])
    0.75
    """
    s = np.asarray(list(scores), dtype=float)
    p = np.asarray(list(positive), dtype=bool)
    n_pos, n_neg = int(p.sum()), int((~p).sum())
    if n_pos == 0 or n_neg == 0:
        raise CalibrationError("AUROC needs at least one answer of each label")
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s))
    sorted_s = s[order]
    i = 0
    while i < len(s):  # mid-ranks for ties
        j = i
        while j + 1 < len(s) and sorted_s[j + 1] == sorted_s[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    u = ranks[p].sum() - n_pos * (n_pos + 1) / 2
    return float(u / (n_pos * n_neg))


@dataclass(frozen=True)
class ThresholdFit:
    """A threshold on a live score, and how it separates the labelled data."""

    #: flag (escalate, stop, retrieve) when the score is above this (or below, if ``higher_is_worse`` is False)
    threshold: float
    #: the rule that chose it
    rule: str
    #: AUROC of the score for telling the bad answers (the flagged class) from the good
    auroc: float
    #: at the threshold: share of bad answers flagged, of good answers flagged, and of flagged that are bad
    true_positive_rate: float
    false_positive_rate: float
    precision: float
    higher_is_worse: bool = True

    def flags(self, score: float) -> bool:
        return score > self.threshold if self.higher_is_worse else score < self.threshold


def fit_threshold(
    scores: Sequence[float],
    correct: Sequence[bool],
    *,
    rule: Literal["youden", "precision"] = "youden",
    target_precision: float = 0.9,
    higher_is_worse: bool = True,
) -> ThresholdFit:
    """Choose a threshold for any live score (PPL, windowed PPL, entropy, confidence) from labelled answers.

    Args:
        scores: the score of each answer (e.g. its final or its running PPL).
        correct: whether each answer was correct; the incorrect ones are what the threshold should flag.
        rule: ``"youden"`` maximises TPR - FPR (Youden's J); ``"precision"`` takes the lowest
            flagging threshold whose precision reaches ``target_precision``.
        higher_is_worse: True for perplexity and entropy; False for confidence and probability.

    >>> fit = fit_threshold([1.1, 1.3, 1.2, 2.5, 3.0, 1.25], [True, True, True, False, False, False])
    >>> fit.threshold, round(fit.auroc, 3), fit.true_positive_rate, round(fit.false_positive_rate, 3)
    (1.2, 0.889, 1.0, 0.333)
    """
    s = np.asarray(list(scores), dtype=float)
    bad = ~np.asarray(list(correct), dtype=bool)
    keep = np.isfinite(s)
    s, bad = s[keep], bad[keep]
    if bad.sum() == 0 or (~bad).sum() == 0:
        raise CalibrationError("fitting a threshold needs labelled answers of both kinds, correct and incorrect")
    oriented = s if higher_is_worse else -s
    area = auroc(oriented, bad)
    best: tuple[tuple[float, ...], float, float, float, float] | None = None  # (key, cut, tpr, fpr, precision)
    for cut in np.unique(oriented):
        flagged = oriented > cut
        tpr = float((flagged & bad).sum() / bad.sum())
        fpr = float((flagged & ~bad).sum() / (~bad).sum())
        precision = float((flagged & bad).sum() / flagged.sum()) if flagged.any() else 1.0
        if rule == "youden":
            key: tuple[float, ...] = (tpr - fpr,)
        elif rule == "precision":
            if precision < target_precision or not flagged.any():
                continue
            key = (tpr, precision)  # the most bad answers caught at the precision asked for
        else:
            raise ValueError(f"rule must be 'youden' or 'precision', got {rule!r}")
        if best is None or key > best[0]:
            best = (key, float(cut), tpr, fpr, precision)
    if best is None:
        raise CalibrationError(f"no threshold reaches precision {target_precision:g} on this data")
    _, cut, tpr, fpr, precision = best
    return ThresholdFit(cut if higher_is_worse else -cut, rule, area, tpr, fpr, precision, higher_is_worse)


def deepconf_threshold(lowest_group_confidences: Sequence[float], eta: float = 10.0) -> float:
    """DeepConf's online stop threshold: ``s = percentile(warm-up lowest group confidences, 100 - eta)``.

    Args:
        lowest_group_confidences: one value per warm-up trace (the paper runs 16).
        eta: the percentage of warm-up traces kept: 10 is DeepConf-low (aggressive),
            90 DeepConf-high (conservative).

    A later trace stops once its (full-window) group confidence drops below ``s``:
    ``Trigger(group_confidence_below(s), stop=True)``.
    """
    values = np.asarray(list(lowest_group_confidences), dtype=float)
    values = values[np.isfinite(values)]
    if values.size == 0:
        raise CalibrationError("deepconf_threshold() needs at least one warm-up trace with a finite lowest group confidence")
    if not 0.0 < eta < 100.0:
        raise ValueError(f"eta must be a percentage in (0, 100), got {eta}")
    return float(np.percentile(values, 100.0 - eta))
