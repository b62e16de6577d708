"""Text from the model or the server never reaches a terminal raw: not in the gauge, not in
the answer echoed by `chat`, not in an error line; markup in names is shown as typed; lone
surrogates and narrow encodings do not crash the output."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import threading
import unicodedata
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rich.console import Console

from conftest import sse, token_event
from livepplx import Trigger, prob_below
from livepplx.cli import main
from livepplx.views.gauge import Gauge
from livepplx.core.state import StreamState
from livepplx.views.textsafe import safe_line, safe_text

#: What a hostile answer or error message can hold.
NASTY = "\x1b]0;pwned\x07" + "\x1b[2J" + "over\rwrite\x08" + "\x9b31m" + "\u202eevil" + "\ud800" + "\x00\x7f"
#: The bidirectional formatting characters the rule names (an independent list: Unicode's Bidi_Control).
BIDI = {0x061C, 0x200E, 0x200F, *range(0x202A, 0x202F), *range(0x2066, 0x206A)}


def unsafe(ch: str, keep: str = "") -> bool:
    """The reference: a character that must not reach a terminal as it is."""
    code = ord(ch)
    return ch not in keep and (unicodedata.category(ch) in ("Cc", "Cs") or code in BIDI)


def only_colour_codes(output: str) -> str:
    """The output with Rich's own colour codes (SGR: ESC [ ... m) taken out: what is left must hold no ESC."""
    return re.sub("\x1b\\[[0-9;]*m", "", output)


# -- the rule ---------------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.characters(codec=None, categories=None), max_size=60))
def test_safe_text_leaves_nothing_a_terminal_would_obey(text: str) -> None:
    shown = safe_text(text)
    assert not any(unsafe(ch, keep="\n\t") for ch in shown)
    shown.encode("utf-8")  # no lone surrogate left
    if not any(unsafe(ch, keep="\n\t") for ch in text):
        assert shown == text  # safe text is shown as it is
    line = safe_line(text)
    assert not any(unsafe(ch) for ch in line) and "\n" not in line
    assert safe_line(text, 10) == line or len(safe_line(text, 10)) == 10


def test_the_rule_shows_each_control_visibly() -> None:
    assert safe_text("a\x1b[2Jb\r\x08\x07\x00\x7f") == "a␛[2Jb␍␈␇␀␡"
    assert safe_text("\x9b \u202e \u2066 \ud800") == "\\x9b \\u202e \\u2066 \\ud800"
    assert safe_text("é 漢字 👨\u200d👩\u200d👧 \xa0") == "é 漢字 👨\u200d👩\u200d👧 \xa0"  # ZWJ emoji kept
    assert safe_text("two\nlines\tand a tab") == "two\nlines\tand a tab"
    assert safe_line("Traceback:\n  line\r\n\x1b[31mred") == "Traceback: line ␛[31mred"


# -- the gauge ---------------------------------------------------------------------------------


def test_the_gauge_shows_hostile_text_as_data() -> None:
    state = StreamState(triggers=[Trigger(prob_below(0.9), name="[bold]low\x1b[2J[/]")])
    gauge = Gauge(state, show_text=True, title="[/]model\x1b]0;x\x07")
    state.handle(token_event("fine ", -0.01) + token_event(NASTY, -2.0))
    state.handle(sse({"error": {"message": "boom\x1b[2J\n\x1b]0;pwned\x07"}}, done=False))
    state.stop("asked\x1b[2J")
    out = io.StringIO()
    Console(file=out, width=120, force_terminal=True, color_system="truecolor").print(gauge)
    output = out.getvalue()
    rest = only_colour_codes(output)
    assert "\x1b" not in rest and "\x07" not in rest and "\r" not in rest and "\x08" not in rest
    assert "\x9b" not in rest and "\u202e" not in rest
    assert "␛]0;pwned␇" in rest and "␛[2J" in rest  # shown, visibly
    assert "[/]model␛]0;x␇" in rest  # markup in the title shown as typed (a str title would raise MarkupError)
    assert "⚡ [bold]low␛[2J[/] at token 2" in rest and "✖ boom␛[2J ␛]0;pwned␇" in rest
    assert "stopped at token 2: asked␛[2J" in rest


def test_the_gauge_writes_a_lone_surrogate_to_a_utf8_terminal() -> None:
    state = StreamState()
    gauge = Gauge(state, show_text=True, title="model \udcff")  # a non-UTF-8 byte of argv, surrogate-escaped
    state.handle(token_event("half a pair: \ud83d", -0.5))
    raw = io.BytesIO()
    terminal = io.TextIOWrapper(raw, encoding="utf-8", write_through=True)  # strict, like a real UTF-8 stdout
    Console(file=terminal, width=100, force_terminal=True).print(gauge)
    text = raw.getvalue().decode("utf-8")
    assert "half a pair: \\ud83d" in text and "model \\udcff" in text


# -- the command line ---------------------------------------------------------------------------


def test_an_error_line_shows_the_servers_message_as_data(capsys: pytest.CaptureFixture[str],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    body = token_event("ok", -0.1) + sse({"error": {"message": f"upstream\n{NASTY} died"}}, done=False)
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(body)))
    assert main(["replay", "-"]) == 1
    err = capsys.readouterr().err
    (line,) = err.splitlines()
    # One line: newlines and CRs folded to spaces, every other control shown.
    assert line.startswith("livepplx: error: upstream ␛]0;pwned␇␛[2Jover write␈\\x9b31m\\u202eevil\\ud800␀␡ died")
    assert not any(unsafe(ch) for ch in line)


def test_usage_errors_quote_what_was_typed_safely(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit:
        main(["replay", "x.sse", "\x1b]0;pwned\x07", "\x1b[2J"])
    assert exit.value.code == 2
    err = capsys.readouterr().err
    assert "unrecognized arguments: ␛]0;pwned␇ ␛[2J" in err
    assert not any(unsafe(ch, keep="\n") for ch in err)


class _Serve:
    """A real HTTP server on 127.0.0.1 that answers every POST with the same SSE body."""

    def __init__(self, body: bytes) -> None:
        self.models: list[str] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                outer.models.append(json.loads(self.rfile.read(int(self.headers["content-length"])))["model"])
                self.send_response(200)
                self.send_header("content-type", "text/event-stream")
                self.end_headers()
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def hostile() -> Iterator[_Serve]:
    body = (token_event("Hello ", -0.1) + token_event(NASTY, -1.0) + token_event("\nsecond line\tend", -0.2)
            + b"data: [DONE]\n\n")
    server = _Serve(body)
    yield server
    server.close()


def test_chat_echoes_the_answer_as_data(hostile: _Serve, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["chat", "hi", "--base-url", hostile.url, "--model", "m", "--api-key", "k"]) == 0
    out = capsys.readouterr().out
    answer = out.split("\nformat:")[0]
    assert answer == "Hello ␛]0;pwned␇␛[2Jover␍write␈\\x9b31m\\u202eevil\\ud800␀␡\nsecond line\tend"
    assert not any(unsafe(ch, keep="\n\t") for ch in out)


def test_chat_on_a_terminal_shows_markup_in_the_model_name_as_typed(
        hostile: _Serve, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TTY_COMPATIBLE", "1")  # Rich (14+) draws the live gauge on the captured stdout
    monkeypatch.setenv("FORCE_COLOR", "1")  # as Rich 13 is told the same (livepplx takes rich>=13)
    monkeypatch.setenv("COLUMNS", "120")
    model = "[/][bold red]gemma\x1b]0;x\x07"
    assert main(["chat", "hi", "--base-url", hostile.url, "--model", model, "--api-key", "k"]) == 0
    out = capsys.readouterr().out
    assert hostile.models == [model]  # the server got the name as typed
    rest = only_colour_codes(out)
    assert "[/][bold red]gemma␛]0;x␇" in rest  # the title, literally
    assert "␛[2J" in rest and "\x1b]" not in rest and "\x1b[2J" not in rest and "\x07" not in rest


def test_an_ascii_stdout_gets_escapes_not_a_traceback(hostile: _Serve) -> None:
    # stderr always escapes what its encoding lacks; stdout is strict unless told otherwise.
    result = subprocess.run([sys.executable, "-m", "livepplx.cli", "chat", "hi", "--base-url", hostile.url,
                             "--model", "m", "--api-key", "k"], capture_output=True, timeout=60,
                            env={**os.environ, "PYTHONIOENCODING": "ascii"})
    assert result.returncode == 0 and b"Traceback" not in result.stderr, result.stderr
    assert result.stdout.startswith(b"Hello \\u241b]0;pwned\\u2407\\u241b[2J")
