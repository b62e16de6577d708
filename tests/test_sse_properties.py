"""Properties of the raw-stream reader over generated streams and arbitrary bytes.

The reference for a valid stream is the list of values it was written from; for arbitrary
input it is the same input fed whole, since where the reads split must never matter.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from livepplx.core.errors import StreamFormatError
from livepplx.core.sse import Event, StreamDecoder

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=12,
)
CONTAINER = st.lists(JSON, max_size=4) | st.dictionaries(st.text(max_size=6), JSON, max_size=4)
SEPS = ("\n", "\r\n", "\r")


def dumps(value: Any, draw: Any) -> list[str]:
    """The value as a server may write it: compact or pretty-printed, ASCII or not."""
    indent = draw(st.sampled_from([None, None, 0, 1, 2]))
    return json.dumps(value, indent=indent, ensure_ascii=draw(st.booleans())).split("\n")


def join_lines(lines: list[str], draw: Any) -> str:
    """Lines with line ends drawn per line; a CR followed by an empty line ended by LF
    would read as one CRLF, so that blank line ends with CR LF instead."""
    one = draw(st.sampled_from((None, *SEPS)))
    out, prev = [], ""
    for line in lines:
        sep = one or draw(st.sampled_from(SEPS))
        if prev == "\r" and not line and sep == "\n":
            sep = "\r\n"
        out.append(line + sep)
        prev = sep
    return "".join(out)


@st.composite
def sse_streams(draw: Any) -> tuple[bytes, list[Event], bool]:
    events = draw(st.lists(st.tuples(st.sampled_from([None, "message", "delta"]), JSON), min_size=1, max_size=6))
    done = draw(st.booleans())
    lines: list[str] = []
    if draw(st.booleans()):
        lines += [": keep-alive", ""]
    for name, value in events:
        if draw(st.booleans()):
            lines.append(f"id: {draw(st.integers(0, 99))}")
        if name is not None:
            lines.append(f"event: {name}")
        prefix = draw(st.sampled_from(["data: ", "data:"]))
        lines += [prefix + part for part in dumps(value, draw)]
        lines.append("")
    if done:
        lines += ["data: [DONE]", ""]
    return join_lines(lines, draw).encode(), [Event(n, v) for n, v in events], done


@st.composite
def ndjson_streams(draw: Any) -> tuple[bytes, list[Event], bool]:
    first = draw(CONTAINER)  # the first line tells the framing: it opens an object or array
    values = [first, *draw(st.lists(JSON, max_size=6))]
    lines: list[str] = []
    for value in values:
        lines += dumps(value, draw)
        if draw(st.booleans()):
            lines.append("")
    return join_lines(lines, draw).encode(), [Event(None, v) for v in values], False


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({min(c, len(data)) for c in cuts})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)])]


def read(pieces: list[bytes], limit: int = 8 << 20) -> tuple[list[Event], bool, int]:
    """Events read before any error, whether one was raised, malformed events skipped."""
    decoder = StreamDecoder(max_event_bytes=limit)
    events: list[Event] = []
    try:
        for piece in pieces:
            events += decoder.feed(piece)
            assert decoder.buffered <= 2 * limit
        events += decoder.close()
    except StreamFormatError as e:
        assert str(e).isprintable()  # one line, no raw control character
        with pytest.raises(StreamFormatError):  # once failed, it stays failed
            decoder.close()
        return events, True, decoder.skipped
    return events, False, decoder.skipped


@settings(max_examples=300, deadline=None)
@given(st.one_of(sse_streams(), ndjson_streams()), st.lists(st.integers(0, 4000), max_size=12))
def test_any_split_of_a_valid_stream_reads_the_values_it_was_written_from(
    stream: tuple[bytes, list[Event], bool], cuts: list[int]
) -> None:
    data, expected, done = stream
    decoder = StreamDecoder()
    events = [e for piece in split(data, cuts) for e in decoder.feed(piece)]
    assert events + decoder.close() == expected
    assert decoder.done is done and decoder.skipped == 0


PIECES = st.sampled_from(
    [b"data:", b"data: ", b"event: error\n", b"id: 1\n", b": c\n", b"{", b"}", b"[", b"]", b'"', b"\\", b"\n",
     b"\r", b"\r\n", b" ", b"1", b",", b":", b"[DONE]", b'{"a": 1}', b"tru", b"\xff", b"\xc3", b"\xa9", b"\x00",
     b"\xef\xbb\xbf", b"x" * 40, b"[" * 1200]
)
ARBITRARY = st.one_of(st.binary(max_size=300), st.lists(PIECES, max_size=40).map(b"".join))
PREFIXES = st.sampled_from([b"", b"data: {}\n\n", b"{}\n", b'{"a":\n'])


@settings(max_examples=400, deadline=None)
@given(PREFIXES, ARBITRARY, st.lists(st.integers(0, 2000), max_size=10), st.sampled_from([8, 64, 8 << 20]))
def test_arbitrary_bytes_raise_only_stream_format_errors_and_the_split_never_matters(
    prefix: bytes, data: bytes, cuts: list[int], limit: int
) -> None:
    data = prefix + data
    assert read(split(data, cuts), limit) == read([data], limit)


@settings(max_examples=300, deadline=None)
@given(st.one_of(sse_streams(), ndjson_streams()), ARBITRARY, st.lists(st.integers(0, 4000), max_size=10))
def test_garbage_after_a_valid_stream_never_takes_back_what_was_read(
    stream: tuple[bytes, list[Event], bool], garbage: bytes, cuts: list[int]
) -> None:
    data, expected, _ = stream
    events, _, _ = read(split(data + garbage, cuts))
    assert events[: len(expected)] == expected
