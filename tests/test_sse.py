"""The raw-stream reader: SSE and NDJSON as servers and proxies really write them."""

from __future__ import annotations

import json

import pytest

from conftest import replay, sse
from livepplx.errors import StreamFormatError
from livepplx.sse import Event, StreamDecoder

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
    from livepplx.state import StreamState

    state = StreamState()
    state.handle(sse(CHUNK, done=False))
    with pytest.raises(StreamFormatError):
        state.handle(b"\xff\xfe\x00garbage\n\n")
    assert state.tokens == 1 and "UTF-8" in (state.error or "")
