"""Make the README's pictures: docs/heatmap.png and docs/calibration.png.

    python docs/make_pictures.py     # needs chromium (Debian: apt-get install chromium) and livepplx[plot]

The heatmap is `livepplx replay` of a shipped recording with `--html`, shown in headless
Chromium with one token hovered; the calibration plot is `livepplx calibrate --plot` on the
answers of examples/car_eval_result.json.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from browser import Browser  # noqa: E402

RECORDING = ROOT / "livepplx" / "recordings" / "llamacpp-python-chat.sse"
HOVERED = 4  # the token whose alternatives the picture shows


def livepplx(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "livepplx.cli", *args], check=True, stdout=subprocess.DEVNULL)


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        page = Path(tmp, "heatmap.html")
        livepplx("replay", str(RECORDING), "--stop-above", "12", "--html", str(page))
        with Browser.start() as browser:
            tab = browser.open(page)
            assert tab.errors == [], tab.errors
            x, y = tab.evaluate(f"(function(){{var r=document.querySelectorAll('.answer .tok')[{HOVERED}]"
                                ".getBoundingClientRect();return [r.left+r.width/2, r.top+r.height/2];})()")
            tab.hover(x, y)
            height = tab.evaluate("document.querySelector('table.stats').getBoundingClientRect().top") - 8
            shot = tab.send("Page.captureScreenshot", format="png",
                            clip={"x": 0, "y": 0, "width": 1040, "height": height, "scale": 1})
        import base64

        (ROOT / "docs" / "heatmap.png").write_bytes(base64.b64decode(shot["data"]))
        rows = Path(tmp, "rows.jsonl")
        answers = json.loads((ROOT / "examples" / "car_eval_result.json").read_text())["rows"]
        rows.write_text("".join(json.dumps(r) + "\n" for r in answers))
        livepplx("calibrate", str(rows), "--label", "short_correct", "--plot", str(ROOT / "docs" / "calibration.png"))


if __name__ == "__main__":
    main()
