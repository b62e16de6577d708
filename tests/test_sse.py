"""The raw-stream reader: SSE and NDJSON as servers and proxies really write them."""

from __future__ import annotations

import json
from typing import Iterable, Iterator

import pytest

from conftest import replay, sse
from livepplx.core.errors import StreamFormatError
from livepplx.core.sse import Event, StreamDecoder

CHUNK = {"choices": [{"index": 0, "delta": {"content": "é"}, "logprobs": {"content": [{"token": "é", "logprob": -0.5}]}}]}


def decode_all(data: bytes, piece: int) -> tuple[list[Event], bool]:
    decoder = StreamDecoder()
    events: list[Event] = []
    for i in range(0, len(data), piece):
        events += decoder.feed(data[i : i + piece])
    events += decoder.close()
    return events, decoder.done


@pytest.mark.parametrize("sep", ["\n", "\r\n"])
@pytest.mark.parametrize("space", [True, False])
@pytest.mark.parametrize("done", [True, False])
def test_sse_variants_split_at_every_byte(sep: str, space: bool, done: bool) -> None:
    data = b": keep-alive" + sep.encode() * 2 + sse(CHUNK, CHUNK, done=done, sep=sep, space=space)
    for piece in (1, 2, 3, 5, len(data)):  # 1: splits inside the two-byte "é" and inside CRLF
        events, saw_done = decode_all(data, piece)
        assert [e.data for e in events] == [CHUNK, CHUNK]
        assert saw_done is done


def test_event_names_and_multi_line_data() -> None:
    events, _ = decode_all(b'event: message\ndata: {"a":\ndata: 1}\n\nid: 7\nretry: 10\ndata: {"b": 2}\n\n', 4)
    assert events == [Event("message", {"a": 1}), Event(None, {"b": 2})]


def test_event_error_with_bare_error_object() -> None:
    events, _ = decode_all(b'event: error\ndata: {"message": "overloaded"}\n\n', 100)
    assert events == [Event("error", {"error": {"message": "overloaded"}})]


def test_proxy_that_drops_blank_lines_between_events() -> None:
    events, _ = decode_all(b'data: {"a": 1}\ndata: {"b": 2}\n\n', 100)
    assert [e.data for e in events] == [{"a": 1}, {"b": 2}]


def test_ndjson_with_blank_lines_and_a_pretty_printed_document() -> None:
    data = b'{"a": 1}\n\n{"b": 2}\n' + json.dumps({"error": {"message": "bad"}}, indent=2).encode() + b"\n"
    events, _ = decode_all(data, 3)
    assert [e.data for e in events] == [{"a": 1}, {"b": 2}, {"error": {"message": "bad"}}]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe", "not a text stream"),
        (b"<html><body>502 Bad Gateway</body></html>\n", "not an SSE or NDJSON stream"),
        (b"hello world\n", "not an SSE or NDJSON stream"),
        (b"data: {not json}\n\n", "data is not JSON"),
    ],
)
def test_input_that_is_not_a_stream_says_so(data: bytes, message: str) -> None:
    with pytest.raises(StreamFormatError, match=message):
        decode_all(data, 1024)


@pytest.mark.parametrize("cut", [5, 40, -3])
def test_truncated_stream_keeps_what_was_read(cut: int) -> None:
    data = sse(CHUNK, CHUNK, done=False)
    cut_at = len(data) // 2 + cut if cut > 0 else len(data) + cut
    state = replay(data[:cut_at])
    assert state.error is not None and "truncated" in state.error
    assert state.tokens == 1  # the first event was complete and is counted


def test_garbage_mid_stream_keeps_what_was_read() -> None:
    from livepplx.core.state import StreamState

    state = StreamState()
    state.handle(sse(CHUNK, done=False))
    with pytest.raises(StreamFormatError):
        state.handle(b"\xff\xfe\x00garbage\n\n")
    assert state.tokens == 1 and "UTF-8" in (state.error or "")


# -- bounded, linear, nothing lost (issue 11, section 3) ---------------------------------

PIECE = 64 << 10


def feed_all(decoder: StreamDecoder, pieces: Iterable[bytes]) -> list[Event]:
    """Feed every piece; the buffer held between calls never passes twice the bound."""
    events: list[Event] = []
    for piece in pieces:
        events += decoder.feed(piece)
        assert decoder.buffered <= 2 * decoder.max_event_bytes
    return events + decoder.close()


def long_line(head: bytes, size: int, tail: bytes) -> Iterator[bytes]:
    """``head``, then ``size`` bytes of ``x`` in 64 KiB pieces, then ``tail``: never held whole."""
    yield head
    x = b"x" * PIECE
    for _ in range(size // PIECE):
        yield x
    yield tail


@pytest.mark.parametrize(
    ("head", "tail"),
    [(b'data: {"a": 1}\n\ndata: ', b'\n\ndata: {"b": 2}\n\n'), (b'{"a": 1}\n{"a": "', b'"}\n{"b": 2}\n')],
    ids=["sse", "ndjson"],
)
def test_a_50_mb_line_is_skipped_at_the_bound_not_kept(head: bytes, tail: bytes) -> None:
    decoder = StreamDecoder()
    events = feed_all(decoder, long_line(head, 50 << 20, tail))
    assert [e.data for e in events] == [{"a": 1}, {"b": 2}]
    assert decoder.skipped == 1 and "max_event_bytes=8,388,608" in (decoder.first_skip or "")


def test_a_50_mb_first_line_fails_at_the_bound_not_at_its_end() -> None:
    decoder = StreamDecoder(max_event_bytes=1 << 20)
    pieces = 0
    with pytest.raises(StreamFormatError, match=r"longer than max_event_bytes=1,048,576 .*pass a larger"):
        for piece in long_line(b"data: ", 50 << 20, b"\n\n"):
            pieces += 1
            decoder.feed(piece)
    assert pieces == 1 + (1 << 20) // PIECE  # the piece that crossed the bound
    with pytest.raises(StreamFormatError):  # and it stays failed
        decoder.close()


@pytest.mark.parametrize("bad", [b'{"bad\n', b'{"a": [1,\n', b"[\n"], ids=["broken", "cut", "opening"])
def test_ndjson_lines_after_a_bad_one_are_all_read(bad: bytes) -> None:
    lines = [{"i": i, "pad": "x" * 300} for i in range(20_000)]
    data = b'{"first": 0}\n' + bad + b"".join(json.dumps(line).encode() + b"\n" for line in lines)
    for piece in (4096, len(data)):
        decoder = StreamDecoder()
        events = [e for i in range(0, len(data), piece) for e in decoder.feed(data[i : i + piece])]
        assert [e.data for e in events + decoder.close()] == [{"first": 0}, *lines]
        assert decoder.skipped == 1 and "line 2" in (decoder.first_skip or "")


def test_a_pretty_printed_document_with_brackets_in_strings_and_empty_containers() -> None:
    doc = {"error": {"message": 'bad "}]" here \\', "list": [[], {}, [1, {"a": []}]], "empty": {}}}
    for indent in (0, 2):
        data = b'{"a": 1}\n' + json.dumps(doc, indent=indent).encode() + b'\n{"b": 2}\n'
        events, _ = decode_all(data, 7)
        assert [e.data for e in events] == [{"a": 1}, doc, {"b": 2}]


def test_endless_json_data_lines_without_blank_lines_are_read_as_they_come() -> None:
    # A proxy that drops every blank line: each data line is an event of its own, read as
    # soon as the next one starts, so nothing piles up.
    decoder = StreamDecoder()
    line = b'data: {"choices": [{"index": 0, "delta": {"content": "abc"}}]}\n'
    read = 0
    for n in range(1, 2001):
        read += len(decoder.feed(line))
        assert read == n - 1 and decoder.buffered < len(line)
    assert len(decoder.close()) == 1


def test_endless_data_lines_that_are_not_json_are_bounded() -> None:
    decoder = StreamDecoder(max_event_bytes=1 << 20)
    events = decoder.feed(b'data: {"a": 1}\n\n')
    line = b"data: " + b"x" * 1000 + b"\n"
    for _ in range(5000):  # 5 MB of one event's data
        events += decoder.feed(line)
        assert decoder.buffered <= decoder.max_event_bytes
    events += decoder.feed(b'\ndata: {"b": 2}\n\n')
    assert [e.data for e in events] == [{"a": 1}, {"b": 2}]
    assert decoder.skipped == 5 and "data longer than max_event_bytes" in (decoder.first_skip or "")


@pytest.mark.parametrize("sep", ["\r", "\r\n", "\n"])
def test_cr_alone_ends_lines_and_a_crlf_split_across_reads_ends_one(sep: str) -> None:
    data = b": hi" + sep.encode() * 2 + sse(CHUNK, {"a": [1, 2]}, done=True, sep=sep)
    for piece in (1, 2, 3, 5, len(data)):
        events, done = decode_all(data, piece)
        assert [e.data for e in events] == [CHUNK, {"a": [1, 2]}] and done
    # A CR ending one read and the LF opening the next are one line end, not a blank line
    # that would dispatch the event half read; the CR after them is the blank line.
    decoder = StreamDecoder()
    parts = [b'data: {"a":\r', b'\ndata: 1}\r', b"\n", b"\r", b"\n"]
    assert [decoder.feed(p) for p in parts] == [[], [], [], [Event(None, {"a": 1})], []]


def test_invalid_utf8_keeps_the_events_before_it_and_names_the_byte() -> None:
    good = sse(CHUNK, done=False)
    decoder = StreamDecoder()
    assert decoder.feed(good + b'data: {"x": "\xff"}\n\n') == [Event(None, CHUNK)]
    with pytest.raises(StreamFormatError, match=rf"invalid UTF-8 at byte {len(good) + 13} \(b'\\xff'\)"):
        decoder.feed(b"data: {}\n\n")
    with pytest.raises(StreamFormatError, match="invalid UTF-8"):
        decoder.close()
    # Inside a character held over from the previous read, the offset still counts bytes.
    decoder = StreamDecoder()
    assert decoder.feed(b'{"a": "\xc3') == []
    with pytest.raises(StreamFormatError, match="at byte 7 "):
        decoder.feed(b'A"}\n')


def test_invalid_utf8_after_a_whole_event_in_one_read_keeps_its_tokens() -> None:
    from livepplx.core.state import StreamState

    state = StreamState()
    state.handle(sse(CHUNK, done=False) + b"\xff\n\n")
    assert state.tokens == 1
    state.finish()
    assert "UTF-8" in (state.error or "")


@pytest.mark.parametrize("framing", ["sse", "ndjson"])
def test_nesting_deeper_than_json_reads_is_an_error_first_and_a_skip_later(framing: str) -> None:
    deep = "[" * 100_000 + "]" * 100_000
    first, later = ("data: {}\n\n", "data: {}\n\n") if framing == "sse" else ("{}\n", "{}\n")
    line = f"data: {deep}\n\n" if framing == "sse" else deep + "\n"
    with pytest.raises(StreamFormatError, match="nested too deep"):
        StreamDecoder().feed(line)
    decoder = StreamDecoder()
    assert [e.data for e in decoder.feed(first + line + later)] == [{}, {}]
    assert decoder.skipped == 1 and "nested too deep" in (decoder.first_skip or "")


def test_sse_data_that_is_not_json_fails_first_and_is_skipped_later() -> None:
    with pytest.raises(StreamFormatError, match="event 1: data is not JSON: 'hello'"):
        StreamDecoder().feed(b"data: hello\n\n")
    decoder = StreamDecoder()
    events = decoder.feed(b'data: {"a": 1}\n\ndata: hello\n\ndata:\n\ndata: {"b": 2}\n\n')
    assert [e.data for e in events] == [{"a": 1}, {"b": 2}]  # empty data: a keep-alive
    assert decoder.skipped == 1 and decoder.first_skip == "event 2: data is not JSON: 'hello'"


def test_an_error_event_in_plain_text_is_read_as_an_error() -> None:
    events, _ = decode_all(b'data: {"a": 1}\n\nevent: error\ndata: upstream timed out\n\n', 5)
    assert events[-1] == Event("error", {"error": {"message": "upstream timed out"}})


def test_event_name_does_not_outlive_an_event_without_data() -> None:
    events, _ = decode_all(b'event: ping\n\ndata: {"a": 1}\n\n', 100)
    assert events == [Event(None, {"a": 1})]


@pytest.mark.parametrize("data", [b"\x00" * 100_000, b"\x1b]0;pwned\x07" + b"A" * 1000, b"hello"])
def test_binary_garbage_fails_at_once_on_one_line_without_raw_control_characters(data: bytes) -> None:
    with pytest.raises(StreamFormatError, match="not an SSE or NDJSON stream: it starts with") as caught:
        StreamDecoder().feed(data)  # no line end needed: its start already tells
    message = str(caught.value)
    assert message.isprintable() and len(message) < 400


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b'data: {"a": 1}\n\ndata: {"b"', "ended in the middle of an event"),
        (b'{"a": 1}\n{\n  "b": [\n', "ended in the middle of a JSON document .*from line 2"),
        (b'{"a": 1}\n{"b": "cu', "ended in the middle of a line .*line 2"),
        (b'{"a": 1}\n{"b": "\xc3', "inside a UTF-8 character"),
    ],
)
def test_close_reports_a_cut_stream_after_returning_what_was_whole(data: bytes, message: str) -> None:
    decoder = StreamDecoder()
    assert [e.data for e in decoder.feed(data)] == [{"a": 1}]
    with pytest.raises(StreamFormatError, match=message):
        decoder.close()


@pytest.mark.parametrize("bad", [0, -1, True, 1.5, "8"])
def test_max_event_bytes_must_be_a_positive_integer(bad: object) -> None:
    with pytest.raises(ValueError, match="max_event_bytes must be a positive integer"):
        StreamDecoder(max_event_bytes=bad)  # type: ignore[arg-type]
