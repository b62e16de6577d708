"""Why a threshold is where it is: the two classes' perplexities, CAR's Gaussians, the ROC.

:func:`figure` (extra ``[plot]``: matplotlib) draws, from labelled answers and their
:class:`~livepplx.decide.calibrate.CarCalibration`, two panels: the histograms of the correct and
incorrect answers' scores with the two fitted Gaussians (each weighted by its prior), the
Bayes rule's escalation region shaded (both sides when it is two-sided) and its crossings
marked; and the ROC curve of the score for telling incorrect answers from correct, with its
AUROC and the operating points of the chosen rules. :func:`text_histogram` is the same
first panel for a terminal (``livepplx calibrate`` prints it), with numpy only.

>>> from livepplx.decide.calibrate import CarCalibration
>>> ppl = [1.2, 1.5, 1.3, 1.4, 3.0, 4.0, 3.5]
>>> ok = [True, True, True, True, False, False, False]
>>> print(text_histogram(ppl, ok, CarCalibration.fit(ppl, ok), bins=4, width=8))
ppl          correct (#)    incorrect (=)  escalates
1.200-1.900  ######## 4
1.900-2.600                                yes
2.600-3.300                 ==       1     yes
3.300-4.000                 ====     2     yes
"""

from __future__ import annotations

import io
import math
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from ..decide.calibrate import CarCalibration, Labels, Values, _rows, auroc, fit_threshold
from ..core.errors import CalibrationError

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["figure", "plot_bytes", "text_histogram", "roc_curve"]

#: Past this many times the spread of the middle half beyond the quartiles, a score is an
#: outlier: the panels' x range stops there and says how many lie beyond (a single PPL of
#: 1e6 would squeeze every other bar into one).
OUTLIER_IQRS = 6.0


def _classes(scores: Values, correct: Labels) -> tuple[np.ndarray, np.ndarray]:
    x, good, _ = _rows(scores, correct)
    if not good.any() or good.all():
        kind = "correct" if good.any() else "incorrect"
        raise CalibrationError(f"every answer with a finite score is {kind}: a picture of two classes "
                               "needs answers of both kinds")
    return x, good


def _span(x: np.ndarray) -> tuple[float, float]:
    """The x range the panels show: every score, unless a few outliers would hide the rest."""
    lo, hi = float(x.min()), float(x.max())
    q1, q3 = np.percentile(x, [25, 75])
    spread = max(float(q3 - q1), 1e-12)
    return max(lo, float(q1) - OUTLIER_IQRS * spread), min(hi, float(q3) + OUTLIER_IQRS * spread)


def text_histogram(scores: Values, correct: Labels, calibration: CarCalibration | None = None, *,
                   bins: int = 12, width: int = 24, score: str = "ppl") -> str:
    """Both classes' scores as bars of ``#`` (correct) and ``=`` (incorrect), one line a
    bin, scaled to the fullest bin of both; with a calibration, a last column says whether
    its rule escalates at the bin's middle."""
    x, good = _classes(scores, correct)
    lo, hi = _span(x)
    if hi <= lo:
        hi = lo + max(abs(lo) * 1e-3, 1e-9)
    edges = np.linspace(lo, hi, bins + 1)
    inside = (x >= lo) & (x <= hi)
    counts_good = np.histogram(x[good & inside], edges)[0]
    counts_bad = np.histogram(x[~good & inside], edges)[0]
    top = max(int(counts_good.max()), int(counts_bad.max()), 1)
    names = _edge_names(edges)
    label_width = max(len(f"{a}-{b}") for a, b in zip(names, names[1:]))

    count_width = len(str(top))
    column = max(width + count_width + 3, len("incorrect (=)") + 2)

    def bar(n: int, mark: str) -> str:
        shown = mark * max(1, round(n / top * width)) if n else ""
        return f"{shown.ljust(width)} {str(n) if n else ''}".ljust(column)

    head = (f"{score[:label_width].ljust(label_width)}  {'correct (#)'.ljust(column)}{'incorrect (=)'.ljust(column)}"
            + ("escalates" if calibration is not None else ""))
    lines = [head.rstrip()]
    for i, (a, b) in enumerate(zip(edges, edges[1:])):
        row = f"{f'{names[i]}-{names[i + 1]}'.ljust(label_width)}  {bar(int(counts_good[i]), '#')}{bar(int(counts_bad[i]), '=')}"
        if calibration is not None:
            row += "yes" if calibration.escalate((a + b) / 2) else ""
        lines.append(row.rstrip())
    beyond = int(np.count_nonzero(~inside))
    if beyond:
        lines.append(f"({beyond} answer{'s' if beyond != 1 else ''} outside {lo:.3f}-{hi:.3f} not shown)")
    return "\n".join(lines)


def _edge_names(edges: np.ndarray) -> list[str]:
    """The bins' edges as text, each told apart from the next: three decimals where they
    do (perplexities), more where the scores are close, significant digits when huge or tiny.

    >>> _edge_names(np.array([1.0, 1.5, 2.0])), _edge_names(np.array([1.0, 1.0000000005, 1.000000001]))
    (['1.000', '1.500', '2.000'], ['1.0000000000', '1.0000000005', '1.0000000010'])
    >>> _edge_names(np.array([1e40, 2e40]))
    ['1e+40', '2e+40']
    """
    values = [float(e) for e in edges]
    texts: list[str] = []
    if all(1e-3 <= abs(v) < 1e6 or v == 0 for v in values):
        for digits in range(3, 13):
            texts = [f"{v:.{digits}f}" for v in values]
            if len(set(texts)) == len(texts):
                return texts
    for digits in range(4, 18):
        texts = [f"{v:.{digits}g}" for v in values]
        if len(set(texts)) == len(texts):
            break
    return texts


def roc_curve(scores: Values, correct: Labels) -> tuple[np.ndarray, np.ndarray]:
    """False and true positive rates of flagging ``score > t`` as incorrect, for every cut
    t from above the highest score down to below the lowest (ties step together).

    >>> fpr, tpr = roc_curve([1.0, 2.0, 3.0, 4.0], [True, True, False, False])
    >>> fpr.tolist(), tpr.tolist()
    ([0.0, 0.0, 0.0, 0.5, 1.0], [0.0, 0.5, 1.0, 1.0, 1.0])
    """
    x, good = _classes(scores, correct)
    order = np.argsort(-x, kind="stable")
    xs, bad = x[order], ~good[order]
    last_of_tie = np.r_[xs[1:] != xs[:-1], True]
    tp = np.cumsum(bad)[last_of_tie]
    fp = np.cumsum(~bad)[last_of_tie]
    return np.r_[0.0, fp / max(1, int((~bad).sum()))], np.r_[0.0, tp / max(1, int(bad.sum()))]


def _rates(flagged: np.ndarray, good: np.ndarray) -> tuple[float, float]:
    return float(np.mean(flagged[good])), float(np.mean(flagged[~good]))


def _runs(mask: np.ndarray, grid: np.ndarray) -> list[tuple[float, float]]:
    """The stretches of ``grid`` where ``mask`` holds, as (start, end)."""
    out: list[tuple[float, float]] = []
    start: float | None = None
    for value, on in zip(grid, mask):
        if on and start is None:
            start = float(value)
        elif not on and start is not None:
            out.append((start, float(value)))
            start = None
    if start is not None:
        out.append((start, float(grid[-1])))
    return out


def figure(scores: Values, correct: Labels, calibration: CarCalibration | None = None, *,
           score: str = "ppl", title: str | None = None) -> Figure:
    """The two panels as a matplotlib :class:`~matplotlib.figure.Figure` (no pyplot, no
    global state). ``calibration`` defaults to ``CarCalibration.fit(scores, correct)``."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise ImportError("the calibration plot needs matplotlib: pip install 'livepplx[plot]'") from None
    x, good = _classes(scores, correct)
    cal = calibration if calibration is not None else CarCalibration.fit(x, good)
    lo, hi = _span(x)
    # Both crossings in view when the rule is two-sided, unless one is far out (a margin of
    # three times the data's span): then the shading reaches the edge.
    reach = 3 * (hi - lo)
    near = [t for t in cal.thresholds if lo - reach <= t <= hi + reach]
    view_lo, view_hi = min([lo, *near]), max([hi, *near])
    pad = (view_hi - view_lo) * 0.06 or max(abs(lo) * 0.1, 0.1)
    left, right = view_lo - pad, view_hi + pad
    fig = Figure(figsize=(11, 4.3), dpi=110, layout="constrained")
    hist_ax, roc_ax = fig.subplots(1, 2, width_ratios=[1.45, 1])
    edges = np.linspace(lo, hi, min(40, max(8, int(math.sqrt(x.size)) * 2)) + 1)
    width = edges[1] - edges[0]
    inside = (x >= lo) & (x <= hi)
    hist_ax.hist(x[good & inside], edges, color="#2563eb", alpha=0.55, label=f"correct ({int(good.sum())})")
    hist_ax.hist(x[~good & inside], edges, color="#dc2626", alpha=0.45, label=f"incorrect ({int((~good).sum())})")
    grid = np.linspace(left, right, 1200)
    for mu, sigma, n, colour, name in ((cal.mu_correct, cal.sigma_correct, good.sum(), "#1e40af", "correct"),
                                       (cal.mu_incorrect, cal.sigma_incorrect, (~good).sum(), "#991b1b", "incorrect")):
        density = np.exp(-0.5 * ((grid - mu) / sigma) ** 2) / (sigma * math.sqrt(2 * math.pi))
        hist_ax.plot(grid, density * n * width, color=colour, lw=2,
                     label=f"N({mu:.3g}, {sigma:.3g}²) {name}")
    escalating = np.array([cal.escalate(float(g)) for g in grid])
    for i, (a, b) in enumerate(_runs(escalating, grid)):
        hist_ax.axvspan(a, b, color="#f59e0b", alpha=0.16, lw=0, label="Bayes rule escalates" if i == 0 else None)
    for t in cal.thresholds:
        if left <= t <= right:
            hist_ax.axvline(t, color="#b45309", ls="--", lw=1.2)
            hist_ax.annotate(f"{t:.3g}", (t, 1), xycoords=("data", "axes fraction"), xytext=(3, -12),
                             textcoords="offset points", color="#b45309", fontsize=9)
    hist_ax.set_xlim(left, right)
    hist_ax.set_xlabel(score)
    hist_ax.set_ylabel("answers")
    beyond = int(np.count_nonzero(~inside))
    hist_ax.set_title(f"{score} of correct and incorrect answers" + (f" ({beyond} beyond the axis)" if beyond else ""),
                      fontsize=11)
    hist_ax.legend(fontsize=8, loc="upper right", frameon=False)

    fpr, tpr = roc_curve(x, good)
    area = auroc(x, ~good)
    roc_ax.plot(fpr, tpr, color="#111827", lw=2, drawstyle="steps-post", label=f"{score}: AUROC {area:.3f}")
    roc_ax.plot([0, 1], [0, 1], color="#9ca3af", ls=":", lw=1, label="chance")
    points: list[tuple[str, np.ndarray, str, str, int]] = [
        (cal.describe(score), np.array([cal.escalate(float(v)) for v in x]), "#f59e0b", "o", 13)]
    if cal.rule == "bayes" and cal.upper_threshold is not None and len(cal.thresholds) > 1:
        one_sided = x > cal.upper_threshold
        points.append((f"one-sided: {score} > {cal.upper_threshold:.3g}", one_sided, "#7c3aed", "s", 8))
    youden = fit_threshold(x, good)
    points.append((f"Youden's J: {score} > {youden.threshold:.3g}", x > youden.threshold, "#059669", "D", 8))
    for label, flagged, colour, marker, size in points:  # the largest first: a point on another stays seen
        good_rate, bad_rate = _rates(flagged, good)
        roc_ax.plot([good_rate], [bad_rate], marker=marker, ms=size, color=colour, mec="white", mew=1.5, ls="none",
                    label=f"{label} ({bad_rate:.0%} / {good_rate:.0%})")
    roc_ax.set_xlim(-0.02, 1.02)
    roc_ax.set_ylim(-0.02, 1.02)
    roc_ax.set_aspect("equal")
    roc_ax.set_xlabel("correct answers flagged (false positive rate)")
    roc_ax.set_ylabel("incorrect answers flagged (true positive rate)")
    roc_ax.set_title("ROC: telling incorrect answers from correct", fontsize=11)
    roc_ax.legend(fontsize=7.5, loc="lower right", frameon=False)
    if title:
        fig.suptitle(title, fontsize=12)
    return fig


def plot_bytes(scores: Values, correct: Labels, calibration: CarCalibration | None = None, *,
               fmt: Literal["png", "svg"] = "png", score: str = "ppl", title: str | None = None) -> bytes:
    """:func:`figure` as PNG or SVG bytes, whole: the caller writes them where it wants."""
    if fmt not in ("png", "svg"):
        raise ValueError(f"fmt must be 'png' or 'svg', got {fmt!r}")
    import matplotlib

    fig = figure(scores, correct, calibration, score=score, title=title)
    buffer = io.BytesIO()
    # The same data, the same file: no date, and the SVG's ids from a fixed salt, not a random one.
    metadata: dict[str, Any] = {"Date": None} if fmt == "svg" else {}
    with matplotlib.rc_context({"svg.hashsalt": "livepplx"}):
        fig.savefig(buffer, format=fmt, metadata=metadata)
    return buffer.getvalue()
