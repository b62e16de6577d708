"""Thresholds from data: CAR's Gaussians, thresholds for any live score, DeepConf's percentile rule.

>>> cal = CarCalibration.fit([1.2, 1.5, 1.3, 1.4, 3.0, 4.0, 3.5], [True, True, True, True, False, False, False])
>>> round(cal.p_correct(1.4), 3), cal.escalate(1.4), cal.escalate(3.2)
(1.0, False, True)
>>> round(cal.threshold, 3)     # where the weighted densities cross, between the means
1.839
>>> [round(t, 3) for t in cal.thresholds]   # the incorrect class is wider: it also wins far below
[0.554, 1.839]
>>> cal.describe()
'escalate when ppl < 0.554 or ppl > 1.839'
>>> CarCalibration.fit([1.2, 1.5, 1.3, 1.4, 3.0, 4.0, 3.5], [True] * 4 + [False] * 3, rule="upper").describe()
'escalate when ppl > 1.839'
>>> deepconf_threshold([10.0, 12.0, 14.0, 16.0, 18.0], eta=10)   # keep the top 10%
17.2

Rows whose score is NaN or infinite are dropped, by the same rule, in :meth:`CarCalibration.fit`,
:func:`auroc` and :func:`fit_threshold` (which reports how many in :attr:`ThresholdFit.dropped`).
Every fit is one sort and cumulative sums: n log n in the number of rows.
"""

from __future__ import annotations

import json
import math
import numbers
from dataclasses import asdict, dataclass, fields
from functools import cached_property
from pathlib import Path
from typing import Any, Literal, Sequence, Union

import numpy as np

from ..core.errors import CalibrationError

__all__ = ["CarCalibration", "CalibrationError", "ThresholdFit", "fit_threshold", "auroc", "deepconf_threshold"]

#: Scores or labels: any sequence, or a numpy array (taken as it is, without a copy to a list).
Values = Union[Sequence[float], "np.ndarray[Any, Any]"]
Labels = Union[Sequence[bool], "np.ndarray[Any, Any]"]
#: CAR's decision rules: the paper's Bayes rule, or one threshold above which to escalate.
CarRule = Literal["bayes", "upper"]
_RULES = ("bayes", "upper")
#: Largest |mean| and standard deviation a CAR calibration takes (and smallest deviation): inside
#: these bounds every step of the rule and its crossing points stays a finite float.
MAX_MAGNITUDE = 1e50
MIN_SIGMA = 1e-50


def _shown(value: Any, limit: int = 40) -> str:
    """A value in an error message: on one line, short."""
    text = " ".join(repr(value).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _rows(scores: Values, labels: Labels, what: str = "scores") -> tuple[np.ndarray, np.ndarray, int]:
    """The rows whose score is finite (as floats and bools), and how many were dropped."""
    try:
        x = np.asarray(scores if isinstance(scores, np.ndarray) else list(scores), dtype=float)
        y = np.asarray(labels if isinstance(labels, np.ndarray) else list(labels))
    except (TypeError, ValueError, OverflowError) as e:
        raise CalibrationError(f"{what} must be numbers and labels true/false: {e}") from None
    if x.ndim != 1 or y.ndim != 1:
        raise CalibrationError(f"give {what} and labels as flat sequences, one of each per answer")
    if x.shape != y.shape:
        raise CalibrationError(f"{len(x)} {what} but {len(y)} labels: give one label per answer")
    if y.dtype != bool:
        if y.dtype.kind not in "iuf" or not np.isin(y, (0, 1)).all():
            raise CalibrationError("labels must be true or false (or 1 and 0)")
        y = y.astype(bool)
    keep = np.isfinite(x)
    dropped = int(x.size - np.count_nonzero(keep))
    return (x[keep], y[keep], dropped) if dropped else (x, y, 0)


def _number(x: float) -> str:
    """A threshold in words: three decimals, or four digits when it is huge or tiny."""
    return f"{x:.3f}" if 1e-3 <= abs(x) < 1e6 or x == 0 else f"{x:.4g}"


def _normal_logpdf(x: float, mu: float, sigma: float) -> float:
    z = (x - mu) / sigma
    return -0.5 * z * z - math.log(sigma) - 0.5 * math.log(2 * math.pi)


@dataclass(frozen=True)
class CarCalibration:
    """CAR's decision rule (arXiv 2505.15154): Gaussians over the short answers' perplexity.

    Correct short answers ~ N(mu_correct, sigma_correct^2), incorrect ~ N(mu_incorrect,
    sigma_incorrect^2), priors from the class frequencies.

    ``rule="bayes"`` (the default) is the paper's rule: escalate to long reasoning when
    ``prior_correct * N(ppl; correct) < prior_incorrect * N(ppl; incorrect)``. When the two
    deviations differ, the wider class wins in both tails, so this rule can escalate on
    *both* sides of the correct class: a very low perplexity escalates too when the
    incorrect answers are the wider class, and a very high one is kept when the correct
    answers are. :attr:`thresholds` lists where the rule switches, :meth:`describe` says it
    in words.

    ``rule="upper"`` is one-sided: escalate when ``ppl > upper_threshold``, the highest
    perplexity at which the Bayes rule switches from keeping to escalating; below it nothing
    escalates, above it everything does. Where the Bayes rule never switches that way, it
    escalates everywhere if the Bayes rule does, else nowhere.

    Every value is checked when the calibration is made: means within +-1e50, deviations
    in [1e-50, 1e50], priors in (0, 1) adding up to 1; else :class:`CalibrationError`.
    """

    mu_correct: float
    sigma_correct: float
    mu_incorrect: float
    sigma_incorrect: float
    prior_correct: float
    prior_incorrect: float
    rule: CarRule = "bayes"

    def __post_init__(self) -> None:
        for f in fields(self)[:6]:
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, numbers.Real):
                raise CalibrationError(f"{f.name} must be a number, got {_shown(value)}")
            try:
                x = float(value)
            except OverflowError:
                raise CalibrationError(f"{f.name} is too large for a float") from None
            if not math.isfinite(x):
                raise CalibrationError(f"{f.name} must be a finite number, got {x}")
            if abs(x) > MAX_MAGNITUDE:
                raise CalibrationError(f"{f.name} {x:g} is out of range: CAR's values must lie within +-{MAX_MAGNITUDE:g}")
            object.__setattr__(self, f.name, x)
        for name in ("sigma_correct", "sigma_incorrect"):
            sigma = getattr(self, name)
            if not sigma > 0:
                raise CalibrationError(f"{name} must be > 0, got {sigma:g}: a Gaussian of zero width decides nothing")
            if sigma < MIN_SIGMA:
                raise CalibrationError(f"{name} {sigma:g} is out of range: a deviation must be at least {MIN_SIGMA:g}")
        for name in ("prior_correct", "prior_incorrect"):
            prior = getattr(self, name)
            if not 0 < prior < 1:
                raise CalibrationError(f"{name} must be in (0, 1), got {prior:g}: each class needs answers")
        if abs(self.prior_correct + self.prior_incorrect - 1) > 1e-6:
            raise CalibrationError(f"the priors must add up to 1, got {self.prior_correct:g} + {self.prior_incorrect:g}")
        if not isinstance(self.rule, str) or self.rule not in _RULES:
            raise CalibrationError(f"rule must be 'bayes' or 'upper', got {_shown(self.rule)}")

    @classmethod
    def fit(cls, ppls: Values, correct: Labels, *, rule: CarRule = "bayes") -> CarCalibration:
        """Fit from labelled short answers: their perplexities and whether each was correct.

        Rows whose perplexity is NaN or infinite are dropped. Raises :class:`CalibrationError`
        with fewer than 2 finite values in a class, or a class whose perplexities are all
        equal (a Gaussian of zero width decides nothing).
        """
        x, y, _ = _rows(ppls, correct, "perplexities")
        params = []
        for name, cls_x in (("correct", x[y]), ("incorrect", x[~y])):
            if cls_x.size < 2:
                raise CalibrationError(
                    f"{cls_x.size} {name} answers with a finite perplexity: CAR needs at least 2 of each class "
                    "(label more answers)"
                )
            with np.errstate(over="ignore", invalid="ignore"):  # said below, not warned on stderr
                mu, sigma = float(np.mean(cls_x)), float(np.std(cls_x, ddof=1))
            if not (math.isfinite(mu) and math.isfinite(sigma)):
                raise CalibrationError(f"the {name} answers' perplexities are too large to fit: their mean or "
                                       "deviation overflows a float")
            if not sigma > 0:
                raise CalibrationError(
                    f"every {name} answer has perplexity {cls_x[0]:g}: a class with zero variance cannot be "
                    "modelled; label more varied answers"
                )
            params.append((mu, sigma))
        n = x.size
        (mu1, s1), (mu0, s0) = params
        n_correct = int(np.count_nonzero(y))
        return cls(mu1, s1, mu0, s0, n_correct / n, (n - n_correct) / n, rule)

    # -- the rule ------------------------------------------------------------------------

    def _log_weighted(self, ppl: float) -> tuple[float, float]:
        return (
            math.log(self.prior_correct) + _normal_logpdf(ppl, self.mu_correct, self.sigma_correct),
            math.log(self.prior_incorrect) + _normal_logpdf(ppl, self.mu_incorrect, self.sigma_incorrect),
        )

    def _bayes(self, ppl: float) -> bool:
        """The paper's comparison at a finite perplexity."""
        keep, esc = self._log_weighted(ppl)
        if keep == esc == -math.inf:
            # So far out that both densities underflow: the wider class wins there (with equal
            # widths, the class whose mean is on this side).
            s1, s0 = self.sigma_correct, self.sigma_incorrect
            if s0 != s1:
                return s0 > s1
            return (ppl - self.mu_correct) * (self.mu_incorrect - self.mu_correct) > 0
        return keep < esc

    def p_correct(self, ppl: float) -> float:
        """The posterior probability that a short answer with this perplexity is correct
        (NaN for a NaN or infinite perplexity)."""
        if not math.isfinite(ppl):
            return math.nan
        a, b = self._log_weighted(ppl)
        if a == b == -math.inf:
            return 0.0 if self._bayes(ppl) else 1.0
        return 1.0 / (1.0 + math.exp(min(700.0, b - a)))

    def escalate(self, ppl: float) -> bool:
        """Whether to escalate at this perplexity, by :attr:`rule`. NaN and infinity escalate.

        ``"bayes"``: ``pi1 N(ppl; mu1, s1) < pi0 N(ppl; mu0, s0)``, as the paper states it;
        ``"upper"``: ``ppl > upper_threshold`` (see the class).
        """
        if not math.isfinite(ppl):
            return True
        if self.rule == "upper":
            return ppl > self._upper_cut
        return self._bayes(ppl)

    @cached_property
    def thresholds(self) -> tuple[float, ...]:
        """Every perplexity where the Bayes rule switches between keeping and escalating,
        sorted: none, one or two (the weighted log densities differ by a quadratic).

        >>> CarCalibration(1.0, 0.5, 3.0, 0.5, 0.5, 0.5).thresholds    # equal widths: one crossing
        (2.0,)
        """
        # The escalation margin, log(pi0 N0) - log(pi1 N1), is A y^2 + B y + C in y = ppl - mu_correct
        # (shifted so that no mean is squared: fewer digits cancel).
        s1, s0 = self.sigma_correct, self.sigma_incorrect
        delta = self.mu_incorrect - self.mu_correct
        a = (s0 - s1) * (s0 + s1) / (2 * s0 * s0 * s1 * s1)
        b = delta / (s0 * s0)
        c = (-delta * delta / (2 * s0 * s0) + math.log(self.prior_incorrect) - math.log(self.prior_correct)
             + math.log(s1) - math.log(s0))
        if a == 0:
            roots = [-c / b] if b else []
        else:
            disc = b * b - 4 * a * c
            if not disc > 0:  # no real root, or a double one where the rule touches without switching
                return ()
            q = -0.5 * (b + math.copysign(math.sqrt(disc), b))  # the root formula that does not cancel
            roots = [q / a, c / q]
        return tuple(sorted(self.mu_correct + y for y in roots if math.isfinite(self.mu_correct + y)))

    @property
    def threshold(self) -> float | None:
        """The crossing point between the two means (the lowest, if two are), or None.

        With equal deviations it is the only one; otherwise see :attr:`thresholds`: the
        Bayes rule also switches at a crossing outside the means.
        """
        lo, hi = sorted((self.mu_correct, self.mu_incorrect))
        between = [t for t in self.thresholds if lo <= t <= hi]
        return between[0] if between else None

    def _pieces(self) -> list[tuple[float, float, bool]]:
        """The real line cut at the crossing points: ``(low, high, escalates)`` for each piece."""
        edges = [-math.inf, *self.thresholds, math.inf]
        pieces: list[tuple[float, float, bool]] = []
        for lo, hi in zip(edges, edges[1:]):
            if math.isinf(lo) and math.isinf(hi):
                probe = self.mu_correct
            elif math.isinf(lo):
                probe = hi - max(1.0, abs(hi))
            elif math.isinf(hi):
                probe = lo + max(1.0, abs(lo))
            else:
                probe = lo + (hi - lo) / 2
            escalates = self._bayes(probe)
            if pieces and pieces[-1][2] == escalates:  # not a switch after all (rounding): merge
                pieces[-1] = (pieces[-1][0], hi, escalates)
            else:
                pieces.append((lo, hi, escalates))
        return pieces

    @cached_property
    def _upper_cut(self) -> float:
        pieces = self._pieces()
        for below, above in reversed(list(zip(pieces, pieces[1:]))):
            if not below[2] and above[2]:
                return above[0]
        # No switch up: the Bayes rule escalates everywhere (one piece), or only low down, or nowhere.
        return -math.inf if len(pieces) == 1 and pieces[0][2] else math.inf

    @property
    def upper_threshold(self) -> float | None:
        """The one-sided rule's threshold: the highest perplexity where the Bayes rule switches
        from keeping to escalating (None when it never does)."""
        cut = self._upper_cut
        return cut if math.isfinite(cut) else None

    def describe(self, score: str = "ppl") -> str:
        """The rule in words, e.g. ``"escalate when ppl < 0.710 or ppl > 2.340"``."""
        if self.rule == "upper":
            cut = self._upper_cut
            if math.isinf(cut):
                return "always escalate" if cut < 0 else "never escalate"
            return f"escalate when {score} > {_number(cut)}"
        parts = []
        for lo, hi, escalates in self._pieces():
            if not escalates:
                continue
            if math.isinf(lo) and math.isinf(hi):
                return "always escalate"
            parts.append(f"{score} > {_number(lo)}" if math.isinf(hi) else f"{score} < {_number(hi)}"
                         if math.isinf(lo) else f"{_number(lo)} < {score} < {_number(hi)}")
        return "escalate when " + " or ".join(parts) if parts else "never escalate"

    # -- files ---------------------------------------------------------------------------

    def to_json(self) -> str:
        return json.dumps({"kind": "car", **asdict(self)}, indent=2)

    @classmethod
    def from_json(cls, text: str | bytes) -> CarCalibration:
        """Read :meth:`to_json`'s output. Anything else is a :class:`CalibrationError` on one line:
        text that is not JSON (or nests too deep), missing or unknown keys, values that are not
        numbers, not finite, out of range, a deviation <= 0, a prior outside (0, 1).
        A file without ``"rule"`` (livepplx 0.1) is the Bayes rule."""
        try:
            data = json.loads(text)
        except RecursionError:
            raise CalibrationError("not a CAR calibration: the JSON nests too deep") from None
        except (ValueError, TypeError) as e:  # JSONDecodeError, bad UTF-8, an integer of 4300+ digits
            raise CalibrationError(f"not a CAR calibration: not JSON ({' '.join(str(e).split())[:200]})") from None
        if not isinstance(data, dict):
            raise CalibrationError(f"not a CAR calibration: expected a JSON object, got {type(data).__name__}")
        data = dict(data)
        kind = data.pop("kind", "car")
        if kind != "car":
            raise CalibrationError(f"not a CAR calibration: kind is {_shown(kind)}, not 'car'")
        names = [f.name for f in fields(cls)]
        missing = [n for n in names[:6] if n not in data]
        unknown = [k for k in data if k not in names]
        if missing or unknown:
            said = ([f"missing {', '.join(missing)}"] if missing else []) + (
                [f"unknown {', '.join(_shown(k, 30) for k in unknown[:5])}{' ...' if len(unknown) > 5 else ''}"]
                if unknown else [])
            raise CalibrationError(f"not a CAR calibration: {'; '.join(said)}")
        try:
            return cls(**data)
        except CalibrationError as e:
            raise CalibrationError(f"not a CAR calibration: {e}") from None

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_json() + "\n")

    @classmethod
    def load(cls, path: str | Path) -> CarCalibration:
        return cls.from_json(Path(path).read_bytes())


def auroc(scores: Values, positive: Labels) -> float:
    """Area under the ROC curve: the chance a random positive scores above a random negative
    (ties count half). Mann-Whitney U with mid-ranks; rows with a NaN or infinite score dropped.

    >>> auroc([0.1, 0.4, 0.35, 0.8], [False, False, True, True])
    0.75
    """
    s, p, _ = _rows(scores, positive)
    n_pos = int(np.count_nonzero(p))
    n_neg = s.size - n_pos
    if n_pos == 0 or n_neg == 0:
        raise CalibrationError("AUROC needs at least one answer of each label with a finite score")
    # Mid-ranks from one sort: a run of k equal values starting at 0-based position i ranks i + (k + 1) / 2.
    _, inverse, counts = np.unique(s, return_inverse=True, return_counts=True)
    starts = np.cumsum(counts) - counts
    ranks = (starts + (counts + 1) / 2.0)[inverse.reshape(-1)]
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
    #: rows left out because their score was NaN or infinite
    dropped: int = 0

    def flags(self, score: float) -> bool:
        return score > self.threshold if self.higher_is_worse else score < self.threshold


def fit_threshold(
    scores: Values,
    correct: Labels,
    *,
    rule: Literal["youden", "precision"] = "youden",
    target_precision: float = 0.9,
    higher_is_worse: bool = True,
) -> ThresholdFit:
    """Choose a threshold for any live score (PPL, windowed PPL, entropy, confidence) from labelled answers.

    Args:
        scores: the score of each answer (e.g. its final or its running PPL); NaN and infinite
            ones are dropped (counted in :attr:`ThresholdFit.dropped`).
        correct: whether each answer was correct; the incorrect ones are what the threshold should flag.
        rule: ``"youden"`` maximises TPR - FPR (Youden's J); ``"precision"`` takes the lowest
            flagging threshold whose precision reaches ``target_precision``, catching the most.
        higher_is_worse: True for perplexity and entropy; False for confidence and probability.

    The candidate cuts are the distinct scores; a cut flags the scores strictly beyond it.
    The first best cut wins (the lowest, for ``higher_is_worse``).

    >>> fit = fit_threshold([1.1, 1.3, 1.2, 2.5, 3.0, 1.25], [True, True, True, False, False, False])
    >>> fit.threshold, round(fit.auroc, 3), fit.true_positive_rate, round(fit.false_positive_rate, 3)
    (1.2, 0.889, 1.0, 0.333)
    """
    if rule not in ("youden", "precision"):
        raise ValueError(f"rule must be 'youden' or 'precision', got {rule!r}")
    if not 0.0 <= target_precision <= 1.0:
        raise ValueError(f"target_precision must be in [0, 1], got {target_precision!r}")
    s, good, dropped = _rows(scores, correct)
    bad = ~good
    n = s.size
    n_bad = int(np.count_nonzero(bad))
    n_good = n - n_bad
    if n_bad == 0 or n_good == 0:
        raise CalibrationError("fitting a threshold needs labelled answers of both kinds, correct and incorrect, "
                               "with a finite score")
    oriented = s if higher_is_worse else -s
    area = auroc(oriented, bad)
    # One sort: for each distinct value (a candidate cut), how many scores and bad ones lie strictly above it.
    cuts, inverse = np.unique(oriented, return_inverse=True)
    inverse = inverse.reshape(-1)
    flagged = n - np.cumsum(np.bincount(inverse, minlength=cuts.size))
    bad_flagged = n_bad - np.cumsum(np.bincount(inverse[bad], minlength=cuts.size))
    tpr = bad_flagged / n_bad
    fpr = (flagged - bad_flagged) / n_good
    precision = np.ones(cuts.size)
    np.divide(bad_flagged, flagged, out=precision, where=flagged > 0)
    if rule == "youden":
        best = int(np.argmax(tpr - fpr))  # the first (lowest) cut of the highest J
    else:
        ok = (precision >= target_precision) & (flagged > 0)
        if not ok.any():
            raise CalibrationError(f"no threshold reaches precision {target_precision:g} on this data")
        # The most bad answers caught at the precision asked for; then the most precise; then the lowest cut.
        most = ok & (tpr == tpr[ok].max())
        best = int(np.flatnonzero(most & (precision == precision[most].max()))[0])
    cut = float(cuts[best])
    return ThresholdFit(cut if higher_is_worse else -cut, rule, area, float(tpr[best]), float(fpr[best]),
                        float(precision[best]), higher_is_worse, dropped)


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
