"""The calibration pictures (livepplx.views.calibration_plot, `calibrate --plot`): the histograms,
the Gaussians, the escalation region (both sides when the rule is two-sided), the ROC and
its operating points; the text histogram `calibrate` prints; bad input."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from livepplx.decide.calibrate import CalibrationError, CarCalibration, auroc
from livepplx.views.calibration_plot import figure, plot_bytes, roc_curve, text_histogram
from livepplx.cli import main

#: The pictures need the extra; the text histogram and the ROC's numbers do not.
needs_matplotlib = pytest.mark.skipif(importlib.util.find_spec("matplotlib") is None,
                                      reason="matplotlib is not installed: pip install 'livepplx[plot]'")
ROOT = Path(__file__).resolve().parent.parent
ROWS = json.loads((ROOT / "examples" / "car_eval_result.json").read_text())["rows"]
PPL = [r["ppl"] for r in ROWS]
OK = [r["short_correct"] for r in ROWS]


def rows_file(tmp_path: Path, scores: list[float], labels: list[bool]) -> Path:
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps({"ppl": s, "correct": c}) + "\n" for s, c in zip(scores, labels)))
    return path


def livepplx(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "livepplx.cli", *args], capture_output=True, text=True, timeout=120)


def test_text_histogram_counts_every_answer_and_marks_where_the_rule_escalates() -> None:
    cal = CarCalibration.fit(PPL, OK)
    lines = text_histogram(PPL, OK, cal, bins=10).splitlines()
    assert lines[0].split() == ["ppl", "correct", "(#)", "incorrect", "(=)", "escalates"] and len(lines) == 11
    rows = [re.match(r"^(\S+)\s+(?:#+\s+(\d+))?\s*(?:=+\s+(\d+))?\s*(yes)?$", line) for line in lines[1:]]
    assert all(rows), lines
    assert sum(int(m[2] or 0) for m in rows if m) == sum(OK)
    assert sum(int(m[3] or 0) for m in rows if m) == len(OK) - sum(OK)
    for line in lines[1:]:
        low, high = map(float, line.split()[0].split("-"))
        assert line.endswith("yes") == cal.escalate((low + high) / 2)


def test_text_histogram_says_how_many_outliers_it_left_out() -> None:
    scores = [1.1, 1.2, 1.3, 1.25, 1.5, 1.6, 1.7, 1.65, 5e6]
    text = text_histogram(scores, [True] * 4 + [False] * 5)
    # The quartiles are 1.25 and 1.65: six times their spread beyond them ends the axis at 4.05.
    assert text.splitlines()[-1] == "(1 answer outside 1.100-4.050 not shown)"
    assert "5e6" not in text and len(text.splitlines()) == 1 + 12 + 1


@needs_matplotlib
def test_one_class_only_is_a_named_error() -> None:
    for labels in ([True] * 5, [False] * 5):
        with pytest.raises(CalibrationError, match="both kinds"):
            text_histogram([1.0, 1.2, 1.4, 1.6, 1.8], labels)
        with pytest.raises(CalibrationError, match="both kinds"):
            plot_bytes([1.0, 1.2, 1.4, 1.6, 1.8], labels)


def test_roc_curve_ends_at_the_corners_and_its_area_is_the_auroc() -> None:
    fpr, tpr = roc_curve(PPL, OK)
    assert (fpr[0], tpr[0], fpr[-1], tpr[-1]) == (0.0, 0.0, 1.0, 1.0)
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0)
    assert np.trapezoid(tpr, fpr) == pytest.approx(auroc(PPL, ~np.asarray(OK)), abs=1e-12)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 6).map(float), st.booleans()), min_size=2, max_size=30)
       .filter(lambda rows: len({c for _, c in rows}) == 2))
def test_roc_area_is_the_auroc_with_ties(rows: list[tuple[float, bool]]) -> None:
    scores, labels = [s for s, _ in rows], [c for _, c in rows]
    fpr, tpr = roc_curve(scores, labels)
    assert np.trapezoid(tpr, fpr) == pytest.approx(auroc(scores, [not c for c in labels]), abs=1e-12)


@needs_matplotlib
def test_the_figure_shades_both_sides_of_a_two_sided_rule_and_marks_the_points() -> None:
    cal = CarCalibration.fit(PPL, OK)
    assert len(cal.thresholds) == 2
    fig = figure(PPL, OK, cal)
    hist_ax, roc_ax = fig.axes
    spans = [p for p in hist_ax.patches if p.get_label() == "Bayes rule escalates" or
             (p.get_facecolor()[:3] == pytest.approx((0.96, 0.62, 0.04), abs=0.01))]
    assert len(spans) == 2  # below the lower crossing and above the upper one
    left, right = hist_ax.get_xlim()
    assert left < cal.thresholds[0] and right > cal.thresholds[1]  # both crossings in view
    assert [t.get_text() for t in hist_ax.texts] == [f"{t:.3g}" for t in cal.thresholds]
    labels = [line.get_label() for line in roc_ax.get_lines()]
    assert labels[0] == f"ppl: AUROC {auroc(PPL, ~np.asarray(OK)):.3f}"
    assert any(label.startswith("escalate when ppl < 0.771 or ppl > 2.117") for label in labels)
    assert any(label.startswith("one-sided: ppl > 2.12") for label in labels)
    assert any(label.startswith("Youden's J: ppl > 1.68") for label in labels)


@needs_matplotlib
def test_a_one_sided_rule_shades_one_side() -> None:
    cal = CarCalibration.fit(PPL, OK, rule="upper")
    hist_ax = figure(PPL, OK, cal).axes[0]
    spans = [p for p in hist_ax.patches if p.get_facecolor()[:3] == pytest.approx((0.96, 0.62, 0.04), abs=0.01)]
    assert len(spans) == 1 and spans[0].get_x() == pytest.approx(cal.upper_threshold, abs=0.01)


@needs_matplotlib
def test_png_and_svg_bytes() -> None:
    png = plot_bytes(PPL, OK, fmt="png")
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 20_000
    svg = plot_bytes(PPL, OK, fmt="svg")
    assert svg.startswith(b"<?xml") and b"</svg>" in svg and b"AUROC 0.580" in svg
    assert plot_bytes(PPL, OK, fmt="svg") == svg  # no date in it: the same data, the same file
    with pytest.raises(ValueError, match="png"):
        plot_bytes(PPL, OK, fmt="pdf")  # type: ignore[arg-type]


# -- the command line ----------------------------------------------------------------------------------


@needs_matplotlib
def test_calibrate_prints_the_text_histogram_and_saves_the_plot(tmp_path: Path) -> None:
    out = tmp_path / "cal.png"
    result = livepplx("calibrate", str(rows_file(tmp_path, PPL, OK)), "--plot", str(out))
    assert result.returncode == 0 and result.stderr == "", result.stderr
    assert "correct (#)" in result.stdout and result.stdout.count("yes") >= 3
    assert result.stdout.rstrip().endswith(f"saved {out}")
    assert out.read_bytes().startswith(b"\x89PNG") and sorted(os.listdir(tmp_path)) == ["cal.png", "rows.jsonl"]
    svg = tmp_path / "cal.SVG"
    assert livepplx("calibrate", str(rows_file(tmp_path, PPL, OK)), "--plot", str(svg), "--json").returncode == 0
    assert svg.read_bytes().startswith(b"<?xml")


@needs_matplotlib
def test_calibrate_plot_with_one_class_writes_nothing(tmp_path: Path) -> None:
    out = tmp_path / "cal.png"
    result = livepplx("calibrate", str(rows_file(tmp_path, PPL[:10], [True] * 10)), "--plot", str(out))
    assert result.returncode == 1 and len(result.stderr.splitlines()) == 1 and "Traceback" not in result.stderr
    assert "livepplx: error:" in result.stderr and os.listdir(tmp_path) == ["rows.jsonl"]


@needs_matplotlib
def test_calibrate_plot_that_cannot_be_written_is_one_line(tmp_path: Path) -> None:
    rows = rows_file(tmp_path, PPL, OK)
    folder = tmp_path / "a folder.png"
    folder.mkdir()
    for where, why in ((tmp_path / "missing" / "c.png", "No such file or directory"), (folder, "Is a directory")):
        result = livepplx("calibrate", str(rows), "--plot", str(where))
        assert result.returncode == 1 and result.stderr == f"livepplx: error: cannot write {where}: {why}\n"
    assert sorted(os.listdir(tmp_path)) == ["a folder.png", "rows.jsonl"] and os.listdir(folder) == []


def test_calibrate_plot_needs_png_or_svg(tmp_path: Path) -> None:
    result = livepplx("calibrate", str(rows_file(tmp_path, PPL, OK)), "--plot", str(tmp_path / "c.pdf"))
    assert result.returncode == 2 and "must end in .png or .svg" in result.stderr


def test_calibrate_plot_without_matplotlib_says_what_to_install(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib raises ImportError
    out = tmp_path / "c.png"
    assert main(["calibrate", str(rows_file(tmp_path, PPL, OK)), "--plot", str(out)]) == 1
    assert capsys.readouterr().err == "livepplx: error: --plot needs matplotlib: pip install 'livepplx[plot]'\n"
    assert not out.exists()


@pytest.mark.parametrize("scale", [1e-9, 1.0, 1e7, 1e40])
def test_text_histogram_labels_tell_every_bin_apart_at_any_scale(scale: float) -> None:
    # Scores 1 apart in 1e-9 (near 1) or in the 1e40s: each bin's label is its own, and short.
    base = 1.0 if scale < 1 else 0.0
    scores = [base + scale * v for v in (1.0, 1.2, 1.3, 1.5, 2.6, 3.0, 3.3, 3.9)]
    labels = [True] * 4 + [False] * 4
    rows = text_histogram(scores, labels, bins=6).splitlines()[1:]
    names = [row.split()[0] for row in rows]
    assert len(set(names)) == 6 and all(len(name) <= 25 for name in names), names
