"""The gauge drawn on a recording Console at several widths, and watch()."""

from __future__ import annotations

import math
import io
import itertools
import re

import pytest
from rich.console import Console

from conftest import replay, sse
from livepplx import Trigger, ppl_above, prob_below
from livepplx.views.gauge import Gauge, big_number, ppl_levels, watch
from livepplx.recordings import recording_path
from livepplx.core.state import StreamState


def draw(gauge: Gauge, width: int) -> str:
    console = Console(record=True, width=width, file=io.StringIO(), color_system="truecolor")
    console.print(gauge)
    return console.export_text()


def fed_gauge(name: str = "llamacpp-python-chat", **options: object) -> Gauge:
    state = StreamState(**options)  # type: ignore[arg-type]
    ticks = itertools.count(0.0, 0.05)  # a token every 50 ms: 20 tokens/s
    gauge = Gauge(state, show_text=True, title=name, clock=lambda: next(ticks))
    state.handle(recording_path(name).read_bytes())
    state.finish()
    return gauge


@pytest.mark.parametrize("width", [40, 80, 160])
def test_gauge_fits_every_width_and_shows_the_numbers(width: int) -> None:
    text = draw(fed_gauge(stop_above=12.0), width)
    lines = text.splitlines()
    assert all(len(line) <= width for line in lines)
    assert "tokens 14" in text and "20.0 tok/s" in text and "min p 0.003" in text
    assert "stopped at token 14: ppl above 12" in text
    assert "Name the colors" in text  # the answer itself
    if width >= 80:
        assert big_number("12.94")[0] in text  # the big number
    else:
        assert "PPL 12.94" in text


def test_bar_marks_the_trigger_levels_and_colours_by_threshold() -> None:
    assert ppl_levels([Trigger(ppl_above(5) & prob_below(0.1)), Trigger(ppl_above(30) | ppl_above(5))]) == [5.0, 30.0]
    calm = fed_gauge("llamacpp-server-chat", stop_above=50.0)  # ppl 1.29: green, one level mark
    console = Console(record=True, width=80, file=io.StringIO(), color_system="truecolor")
    console.print(calm)
    (bar,) = [line.split("ppl    ", 1)[1] for line in console.export_text(clear=False).splitlines() if "ppl    " in line]
    assert bar.count("┃") == 1 and bar.strip("│ ").startswith("█")  # one level marked (50), 1.29 lit at the left
    assert "#008000" in console.export_html(inline_styles=True)  # green


def test_a_row_per_choice_and_entropy_only_with_alternatives() -> None:
    chunks = [{"choices": [{"index": i, "delta": {"content": "x"},
                            "logprobs": {"content": [{"token": "x", "logprob": -0.5 * (i + 1)}]}}]} for i in (0, 1, 0, 1)]
    state = StreamState()
    gauge = Gauge(state)
    state.handle(sse(*chunks))
    text = draw(gauge, 100)
    assert "choice 0" in text and "choice 1" in text
    assert "H " not in text  # no alternatives were listed: no entropy shown


def test_gauge_of_an_empty_stream_draws() -> None:
    assert "tokens 0" in draw(Gauge(StreamState()), 60)


def test_watch_returns_the_statistics_and_draws_once_off_terminal() -> None:
    out = io.StringIO()
    m = watch(open(recording_path("llamacpp-python-chat"), "rb"), console=Console(file=out, width=80), stop_above=12.0)
    assert m.tokens == 14 and m.stopped is not None
    assert out.getvalue().count("choice 0") == 1


def test_watch_on_a_terminal_redraws_with_live() -> None:
    out = io.StringIO()
    console = Console(file=out, width=80, force_terminal=True)
    m = watch(iter(open(recording_path("llamacpp-server-chat"), "rb")), console=console)
    assert m.tokens == replay(recording_path("llamacpp-server-chat").read_bytes()).tokens == 30
    output = out.getvalue()
    # Live draws when it starts (nothing read yet) and draws again over it, the cursor taken
    # back up and the lines erased; a single print at the end would show one frame only.
    frames = re.findall(r"tokens (\d+)", output)
    assert frames[0] == "0" and frames[-1] == "30", frames
    assert "\x1b[1A" in output and "\x1b[2K" in output


def test_an_infinite_perplexity_fills_the_bar_instead_of_crashing() -> None:
    import io

    from rich.console import Console

    import livepplx
    from livepplx import Trigger, ppl_above

    chunk = {"choices": [{"index": 0, "delta": {"content": "x"}, "finish_reason": "stop",
                          "logprobs": {"content": [{"token": "x", "logprob": -800.0}]}}]}
    out = io.StringIO()
    m = livepplx.watch([chunk], console=Console(file=out, width=80), triggers=[Trigger(ppl_above(math.inf))])
    assert m.ppl == math.inf and "tokens 1" in out.getvalue()  # drawn to the end, no OverflowError
