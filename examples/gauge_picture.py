"""Draw the gauge over a shipped recording and save it as SVG (the picture in the README).

    python examples/gauge_picture.py examples/gauge.svg
"""

from __future__ import annotations

import io
import itertools
import sys

from rich.console import Console

from livepplx.views.gauge import Gauge
from livepplx.recordings import recording_path
from livepplx.core.state import StreamState


def main(path: str = "examples/gauge.svg") -> None:
    state = StreamState(stop_above=12.0)
    ticks = itertools.count(0.0, 1 / 40)  # as replayed by `livepplx demo`: 40 tokens/s
    gauge = Gauge(state, show_text=True, title="llamacpp-python-chat", clock=lambda: next(ticks))
    state.handle(recording_path("llamacpp-python-chat").read_bytes())
    state.finish()
    console = Console(record=True, width=100, file=io.StringIO(), force_terminal=True, color_system="truecolor")
    console.print(gauge)
    console.save_svg(path, title="livepplx demo llamacpp-python-chat --stop-above 12")


if __name__ == "__main__":
    main(*sys.argv[1:])
