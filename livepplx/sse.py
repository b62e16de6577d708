"""Raw streams in, decoded JSON events out: SSE or NDJSON, read incrementally.

Feed it whatever arrives (bytes or text, split anywhere, even inside a character or
a line); it finds the framing by itself from the first line and returns the events
completed so far.

>>> d = StreamDecoder()
>>> d.feed(b'data:{"a": 1}\\r\\n\\r\\n: keep-alive\\n\\nevent: x\\ndata: {"b"')
[Event(name=None, data={'a': 1})]
>>> d.feed(': 2}\\n\\ndata: [DONE]\\n\\n'), d.done
([Event(name='x', data={'b': 2})], True)
"""

from __future__ import annotations

import codecs
import json
from typing import Any, NamedTuple

from .errors import StreamFormatError

__all__ = ["Event", "StreamDecoder"]

_SSE_FIELDS = ("data:", "event:", "id:", "retry:", ":")
# A JSON document split over lines (a pretty-printed error page) is held at most this long.
_MAX_PENDING = 8 << 20


class Event(NamedTuple):
    """One decoded event: the SSE ``event:`` name (or None) and the parsed JSON."""

    name: str | None
    data: Any


def _snippet(text: str, limit: int = 60) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "...")


class StreamDecoder:
    """Incremental SSE / NDJSON decoder.

    SSE: ``data:`` with or without the space, CRLF, ``:`` comments, ``event:`` names,
    ``[DONE]`` or not. NDJSON: one JSON value a line (Ollama); a JSON document spread
    over several lines is read whole, so a server's pretty-printed error page decodes too.

    Raises :class:`StreamFormatError` for input that is neither, for data that is not
    JSON, and (from :meth:`close`) for a stream cut off in the middle of an event.
    """

    def __init__(self) -> None:
        #: "sse" or "ndjson" once the first line has told
        self.framing: str | None = None
        #: True once ``data: [DONE]`` was read
        self.done = False
        self._text = codecs.getincrementaldecoder("utf-8")("strict")
        self._bytes_read = 0
        self._partial = ""  # an incomplete last line
        self._data: list[str] = []  # SSE data lines of the event being read
        self._name: str | None = None
        self._pending = ""  # NDJSON lines of an unfinished multi-line document
        self._events = 0

    def feed(self, chunk: bytes | bytearray | memoryview | str) -> list[Event]:
        """Decode what arrived; return the events it completed."""
        if isinstance(chunk, (bytes, bytearray, memoryview)):
            try:
                text = self._text.decode(chunk)
            except UnicodeDecodeError as e:
                raise StreamFormatError(
                    f"not a text stream: invalid UTF-8 at byte {self._bytes_read + e.start}; "
                    "expected server-sent events (data: {...}) or NDJSON"
                ) from None
            self._bytes_read += len(chunk)
        else:
            text = chunk
        if not text:
            return []
        lines = (self._partial + text).split("\n")
        self._partial = lines.pop()
        out: list[Event] = []
        for line in lines:
            self._line(line[:-1] if line.endswith("\r") else line, out)
        return out

    def close(self) -> list[Event]:
        """End of input: flush the last event; raise if the stream was cut mid-event."""
        out: list[Event] = []
        try:
            self._text.decode(b"", final=True)
        except UnicodeDecodeError:
            raise StreamFormatError("the stream ended inside a UTF-8 character (truncated)") from None
        if self._partial:
            line, self._partial = self._partial, ""
            self._line(line.rstrip("\r"), out)
        if self._data:
            try:
                self._dispatch(out)
            except StreamFormatError:
                raise StreamFormatError("the stream ended in the middle of an event (truncated)") from None
        if self._pending:
            raise StreamFormatError(
                f"the stream ended in the middle of a JSON value (truncated): {_snippet(self._pending)}"
            )
        return out

    # -- lines ------------------------------------------------------------------------

    def _line(self, line: str, out: list[Event]) -> None:
        if self.framing is None:
            stripped = line.lstrip("\ufeff \t")
            if not stripped:
                return
            if stripped.startswith(_SSE_FIELDS):
                self.framing = "sse"
            elif stripped[0] in "{[":
                self.framing = "ndjson"
            else:
                raise StreamFormatError(
                    f"not an SSE or NDJSON stream: it starts with {_snippet(stripped)}; "
                    "expected 'data: {...}' events or one JSON object a line"
                )
            line = stripped
        if self.framing == "sse":
            self._sse_line(line, out)
        else:
            self._ndjson_line(line, out)

    def _sse_line(self, line: str, out: list[Event]) -> None:
        if not line:
            if self._data:
                self._dispatch(out)
            return
        if line[0] == ":":
            return  # a comment: keep-alive
        field, _, value = line.partition(":")
        if value[:1] == " ":
            value = value[1:]
        if field == "data":
            self._data.append(value)
        elif field == "event":
            self._name = value
        # id: and retry: matter to reconnecting browsers, not to us.

    def _dispatch(self, out: list[Event]) -> None:
        data, name = self._data, self._name
        self._data, self._name = [], None
        joined = "\n".join(data)
        if joined.strip() == "[DONE]":
            self.done = True
            return
        try:
            value = json.loads(joined)
        except ValueError:
            # Some proxies drop the blank line between events: try each data line alone.
            try:
                values = [json.loads(d) for d in data] if len(data) > 1 else None
            except ValueError:
                values = None
            if values is None:
                raise StreamFormatError(
                    f"event {self._events + 1}: data is not JSON: {_snippet(joined)}"
                ) from None
            for v in values:
                self._emit(name, v, out)
            return
        self._emit(name, value, out)

    def _emit(self, name: str | None, value: Any, out: list[Event]) -> None:
        if name == "error" and isinstance(value, dict) and "error" not in value and "type" not in value:
            value = {"error": value}  # `event: error` with the error object as data
        self._events += 1
        out.append(Event(name, value))

    def _ndjson_line(self, line: str, out: list[Event]) -> None:
        if not self._pending and not line.strip():
            return
        text = self._pending + line if self._pending else line
        try:
            value = json.loads(text)
        except ValueError:
            if len(text) > _MAX_PENDING:
                raise StreamFormatError(f"line {self._events + 1} is not JSON: {_snippet(text)}") from None
            self._pending = text + "\n"
            return
        self._pending = ""
        self._emit(None, value, out)
