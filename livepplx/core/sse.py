"""Raw streams in, decoded JSON events out: SSE or NDJSON, read incrementally.

Feed it whatever arrives (bytes or text, split anywhere, even inside a character or
a line); it finds the framing by itself from the first line and returns the events
completed so far.

>>> d = StreamDecoder()
>>> d.feed(b'data:{"a": 1}\\r\\n\\r\\n: keep-alive\\r\\revent: x\\ndata: {"b"')
[Event(name=None, data={'a': 1})]
>>> d.feed(': 2}\\n\\ndata: [DONE]\\n\\n'), d.done
([Event(name='x', data={'b': 2})], True)

Every character is looked at a bounded number of times and at most about twice
``max_event_bytes`` characters are held, whatever arrives. A malformed event is skipped
and counted once the stream has produced one; before that it is an error:

>>> d = StreamDecoder()
>>> d.feed(b'{"a": 1}\\n{"a": tru\\n{"a": 2}\\n'), d.skipped, d.first_skip
([Event(name=None, data={'a': 1}), Event(name=None, data={'a': 2})], 1, 'line 2: not JSON: \\'{"a": tru\\'')
"""

from __future__ import annotations

import codecs
import json
import re
from typing import Any, Callable, NamedTuple

from .errors import StreamFormatError

__all__ = ["Event", "StreamDecoder", "MAX_EVENT_BYTES"]

#: Default bound on one line, on the data of one SSE event, and on one multi-line NDJSON
#: document: 8 MiB, far above any streamed chunk (a merged vLLM chunk is some kilobytes).
MAX_EVENT_BYTES = 8 << 20

_SSE_FIELDS = ("data:", "event:", "id:", "retry:", ":")
# json.loads without its per-call checks; the same errors.
_decode = json.JSONDecoder().decode
# A complete JSON string; what a line holds outside them is structure and literals.
_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"')
# Where a named event's data starts: its blank line, its one ``event:`` line, ``data: ``.
_NAMED = re.compile(r"\n\nevent: [^\n]*\ndata: ")


class Event(NamedTuple):
    """One decoded event: the SSE ``event:`` name (or None) and the parsed JSON."""

    name: str | None
    data: Any


_event = tuple.__new__


def _snippet(text: str, limit: int = 60) -> str:
    """The start of ``text`` as a one-line repr: never a raw control character."""
    return repr(text if len(text) <= limit else text[:limit] + "...")


def _why(error: Exception) -> str:
    return "JSON nested too deep" if isinstance(error, RecursionError) else "not JSON"


def _incomplete(text: str, error: Exception) -> bool:
    """True when ``text`` failed only because it ended: more lines could complete it.

    Tokens never span a line end, so an error anywhere before the end cannot be mended.
    """
    return isinstance(error, json.JSONDecodeError) and (error.pos >= len(text) or text[error.pos :].isspace())


def _depth(line: str) -> int | None:
    """How many brackets the line opens minus how many it closes, strings aside;
    None if a string is left open (a JSON string never spans lines).

    >>> _depth('{"a": "}}", "b": ['), _depth('  ]'), _depth('"ab\\\\"c')
    (2, -1, None)
    """
    if '"' in line:
        line = _STRING.sub("", line)
        if '"' in line:
            return None
    return line.count("{") + line.count("[") - line.count("}") - line.count("]")


class StreamDecoder:
    """Incremental SSE / NDJSON decoder.

    SSE: ``data:`` with or without the space, line ends ``\\n``, ``\\r\\n`` or ``\\r``, ``:``
    comments, ``event:`` names, ``[DONE]`` or not. Data that spans several ``data:`` lines is
    joined; when a proxy dropped the blank line between events, a ``data:`` line that is JSON
    on its own is read as its own event as soon as the next ``data:`` line comes. An ``event:
    error`` whose data is not JSON is read as ``{"error": {"message": data}}``; empty data
    is a keep-alive. NDJSON: one JSON value a line (Ollama); a document spread over several
    lines (a server's pretty-printed error page) is read whole: a line that is JSON cut short
    (``{`` alone, ``{"error": {``) opens one, its brackets are counted as lines come, and it is
    parsed once, when they balance. A line that is a non-empty JSON object or array on its
    own breaks off an open document (which is then malformed).

    Malformed: SSE data that is not JSON, an NDJSON line or document that is not JSON, JSON
    nested deeper than Python's reader goes (about 1,000 levels), a line, an event's data or
    a document longer than ``max_event_bytes`` characters. Until the first event was read a
    malformed one raises :class:`StreamFormatError` (a stream that starts unreadable is not
    one livepplx can read); after that it is skipped, counted in :attr:`skipped` and the first
    one described in :attr:`first_skip`, and reading goes on.

    Errors: input that is neither framing, invalid UTF-8 (naming the byte offset), and from
    :meth:`close` a stream cut inside a character, an event or a document. The events
    completed before an error are never lost: when a :meth:`feed` call completed events
    before bad bytes, it returns them and the next call raises. Once raised, an error is
    raised again by every later call.

    Args:
        max_event_bytes: bound, in characters (bytes for ASCII), on one line, on the data of
            one SSE event and on one multi-line NDJSON document; default :data:`MAX_EVENT_BYTES`
            (8 MiB). Past it, reading stops keeping what comes, so memory stays near twice
            the bound.
    """

    def __init__(self, max_event_bytes: int = MAX_EVENT_BYTES) -> None:
        if isinstance(max_event_bytes, bool) or not isinstance(max_event_bytes, int) or max_event_bytes < 1:
            raise ValueError(f"max_event_bytes must be a positive integer, not {max_event_bytes!r}")
        #: the bound on a line, an event's data, a document (characters)
        self.max_event_bytes = max_event_bytes
        #: "sse" or "ndjson" once the first line has told
        self.framing: str | None = None
        #: True once ``data: [DONE]`` was read
        self.done = False
        #: malformed events skipped after the first event (see the class docstring)
        self.skipped = 0
        #: the first skipped one, described on one line
        self.first_skip: str | None = None
        #: SSE data is decoded by this when set (a typed decoder of the stream's format,
        #: :data:`livepplx.core.formats.TYPED_DECODERS`); data it refuses (``ValueError``) is
        #: decoded as JSON, as without it
        self.typed: Callable[[str], Any] | None = None
        #: with :attr:`typed`: the same decoder over a JSON array of such events
        #: (:data:`livepplx.core.formats.TYPED_ARRAY_DECODERS`); a read's run of one-line ``data:``
        #: events is decoded by it in one call, and by the event when it refuses any of them
        self.typed_many: Callable[[str], list[Any]] | None = None
        self._bare = False  # feed_values(): the events' data alone
        self._utf8 = codecs.getincrementaldecoder("utf-8")("strict")
        self._bytes_read = 0
        self._error: str | None = None  # raised again by every later call
        self._events = 0
        self._closing = False
        # Lines
        self._cr = False  # the last text ended with "\r": a "\n" opening the next ends no line
        self._partial: list[str] = []  # pieces of the incomplete last line, joined once it ends
        self._partial_len = 0
        self._discard = False  # dropping the rest of an over-long line
        # SSE: the event being read
        self._data: list[str] = []
        self._data_len = 0
        self._name: str | None = None
        # NDJSON: line count and an open multi-line document
        self._line_no = 0
        self._doc: list[str] | None = None
        self._doc_len = 0
        self._doc_depth = 0
        self._doc_start = 0

    @property
    def buffered(self) -> int:
        """Characters held for what is not complete yet: at most twice ``max_event_bytes``."""
        return self._partial_len + self._data_len + self._doc_len

    def feed_values(self, chunk: bytes | bytearray | memoryview | str) -> list[Any]:
        """:meth:`feed`, giving each event's data without its name: for a reader of the
        data alone (an ``event: error``'s data is wrapped as :meth:`feed` wraps it), without
        an :class:`Event` made per event.

        >>> StreamDecoder().feed_values(b'event: x\\ndata: {"a": 1}\\n\\n')
        [{'a': 1}]
        """
        self._bare = True
        try:
            return self.feed(chunk)
        finally:
            self._bare = False

    def feed(self, chunk: bytes | bytearray | memoryview | str) -> list[Event]:
        """Decode what arrived; return the events it completed."""
        if self._error is not None:
            raise StreamFormatError(self._error)
        bad: str | None = None
        if isinstance(chunk, str):
            text = chunk
        else:
            size = chunk.nbytes if isinstance(chunk, memoryview) else len(chunk)
            try:
                text = self._utf8.decode(chunk)
            except UnicodeDecodeError as e:
                # e.object is the bytes held back from the last call followed by this chunk.
                where = self._bytes_read - (len(e.object) - size) + e.start
                text = e.object[: e.start].decode("utf-8")  # read what came before it
                bad = (
                    f"not a text stream: invalid UTF-8 at byte {where} ({bytes(e.object[e.start : e.end])!r}); "
                    "expected server-sent events (data: {...}) or NDJSON"
                )
            self._bytes_read += size
        out: list[Event] = []
        if text:
            self._text(text, out)
        if bad is not None:
            if not out:
                raise self._fail(bad)
            self._error = bad  # raised by the next call: these events are returned first
        return out

    def close(self) -> list[Event]:
        """End of input: flush the last event; raise if the stream was cut mid-event.

        The event being read when the input ended (no blank line after it) is read if its
        data is JSON; otherwise the stream was cut and that event is not read.
        """
        if self._error is not None:
            raise StreamFormatError(self._error)
        try:
            self._utf8.decode(b"", final=True)
        except UnicodeDecodeError:
            raise self._fail("the stream ended inside a UTF-8 character (truncated)") from None
        out: list[Event] = []
        line = "".join(self._partial)
        self._partial, self._partial_len, self._discard = [], 0, False
        self._closing = True  # the last line may be cut: it does not split an event
        if line:
            self._lines([line], out)
        if self._data:
            self._dispatch(out)
        if self._doc is not None:
            raise self._fail(
                f"the stream ended in the middle of a JSON document (truncated), "
                f"from line {self._doc_start}: {_snippet(self._doc[0])}"
            )
        return out

    # -- lines ------------------------------------------------------------------------

    def _text(self, text: str, out: list[Event]) -> None:
        if self.framing == "sse" and not self._cr and "\r" not in text:
            if self.typed_many is not None and not self.done and self._array(text, out):
                return
            blocks = text.split("\n\n")
            if len(blocks) > 2:
                self._blocks(blocks, out)
                return
        self._lines_of(text, out)

    def _array(self, text: str, out: list[Any]) -> bool:
        """SSE text without CR whose complete events are each one ``data: `` line (what most
        servers send): their data joined into one JSON array, decoded by :attr:`typed_many` in
        one call. False, having read nothing, when the text is not that (a comment, a name,
        an ``id:``, multi-line data, ``data:`` without its space) or the array decoder refuses
        any event in it (not the common shape, not JSON): :meth:`_blocks` reads it, event by
        event. What completes an event left open by the last read, a final ``[DONE]`` and
        the incomplete rest are read as :meth:`_blocks` reads them."""
        end = text.rfind("\n\n")
        if end < 0:
            return False
        start = 0
        if self._partial or self._data or self._name is not None or self._discard:
            start = text.find("\n\n") + 2
        stop = end  # where the run of events ends: offsets, not slices (each a copy of the text)
        done = text.endswith("data: [DONE]", start, end) and (end - start == 12 or text[end - 14 : end - 12] == "\n\n")
        if done:
            stop -= 14
        if stop <= start or stop - start > self.max_event_bytes:
            return False
        # A JSON string never holds a raw line end: "\n\ndata: " is only ever an event's start,
        # and a line end left after the joins is a line of another kind.
        if text.startswith("data: ", start):
            # split + join: one search of the text where replace() makes two (it counts first),
            # 40% less time on a read of chat events
            joined = ",".join(text[start + 6 : stop].split("\n\ndata: "))
        elif text.startswith("event: ", start) and text.find("event: error\n", start, stop) < 0:
            # Named events (OpenAI's Responses): the names go, as in feed_values(); an error
            # event's data may need wrapping (_emit), so a text with one is read event by event.
            cut = text.find("\ndata: ", start, stop)
            if cut < 0 or text.find("\n", start, cut) >= 0:
                return False
            joined = _NAMED.sub(",", text[cut + 7 : stop])
        else:
            return False
        if "\n" in joined:
            return False
        try:
            values = self.typed_many("[" + joined + "]")  # type: ignore[misc]
        except (ValueError, RecursionError):
            return False
        if start:
            self._lines_of(text[:start], out)  # completes what the last text left open
        self._events += len(values)
        if self._bare:
            out += values
        else:
            out += [Event(None, value) for value in values]
        if done:
            self._lines_of("data: [DONE]\n\n", out)
        if end + 2 < len(text):
            self._lines_of(text[end + 2 :], out)
        return True

    def _blocks(self, blocks: list[str], out: list[Any]) -> None:
        """SSE text without CR, split at its blank lines: the common events (one ``data:``
        line, or an ``event:`` line and one ``data:`` line) are decoded here; any other
        block goes line by line, as the text would, followed by its blank line."""
        tail = blocks.pop()  # after the last blank line: not complete yet
        limit = self.max_event_bytes
        decode = self.typed or _decode
        typed = self.typed is not None
        bare = self._bare
        events = out.append
        if self._partial or self._data or self._name is not None or self._discard:
            self._lines_of(blocks[0] + "\n\n", out)  # completes what the last text left open
            del blocks[0]
        done = self.done
        read = 0  # events read here and not yet in self._events (the slow paths read it)
        for block in blocks:
            name = None
            if block.startswith("data: ") and "\n" not in block and len(block) <= limit:
                data: str | None = block[6:]
            elif block.startswith("event:") and len(block) <= limit:
                cut = block.find("\ndata:")
                if cut < 0 or block.find("\n", cut + 1) >= 0:
                    data = None
                else:
                    name = block[6:cut]
                    if name[:1] == " ":
                        name = name[1:]
                    data = block[cut + 7 :] if block[cut + 6 : cut + 7] == " " else block[cut + 6 :]
            else:
                data = None
            if data is not None:
                try:
                    value = decode(data)
                except (ValueError, RecursionError):
                    try:
                        if not typed:
                            raise
                        value = _decode(data)
                    except (ValueError, RecursionError):
                        data = None  # [DONE], a keep-alive, or malformed: as ever, below
                if data is not None:
                    if name != "error" and not done:  # what _emit does with any other event
                        read += 1
                        events(value if bare else _event(Event, (name, value)))  # no Event.__new__ in Python
                        continue
                    self._events += read
                    read = 0
                    self._emit(name, value, out)
                    continue
            self._events += read
            read = 0
            self._lines_of(block + "\n\n", out)
            done = self.done
        self._events += read
        if tail:
            self._lines_of(tail, out)

    def _lines_of(self, text: str, out: list[Event]) -> None:
        if self._cr:
            self._cr = False
            if text[0] == "\n":
                text = text[1:]
        lines = text.split("\n")
        tail = lines.pop()
        if "\r" in text:
            # CR LF, as many servers write: strip each line's CR (cheaper than replacing in
            # the text). A CR anywhere else also ends a line (legal, and rare): split again.
            lines = [line[:-1] if line[-1:] == "\r" else line for line in lines]
            if "\r" in tail or any("\r" in line for line in lines):
                self._cr = text[-1] == "\r"
                lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
                tail = lines.pop()
        if lines:
            if self._discard:  # the end of an over-long line, already counted
                self._discard = False
                del lines[0]
            elif self._partial:
                if self._partial_len + len(lines[0]) > self.max_event_bytes:
                    del lines[0]
                    self._too_long()
                else:
                    lines[0] = "".join(self._partial) + lines[0]
            self._partial, self._partial_len = [], 0
            if lines:
                self._lines(lines, out)
        if tail and not self._discard:
            self._partial.append(tail)
            self._partial_len += len(tail)
            if self._partial_len > self.max_event_bytes:
                # Stop keeping the line now, not when it ends: it may never end.
                self._partial, self._partial_len, self._discard = [], 0, True
                self._too_long()
            elif self.framing is None:
                # Binary garbage may never send a line end: its start already tells.
                head = self._partial[0] if len(self._partial) == 1 else "".join(self._partial[:64])
                self._sniff(head[:64], complete=False)

    def _lines(self, lines: list[str], out: list[Event]) -> None:
        if self.framing is None:
            limit = self.max_event_bytes
            start = next((i for i, line in enumerate(lines) if len(line) > limit or line.lstrip("\ufeff \t")), None)
            if start is None:
                self._line_no += len(lines)
                return
            if len(lines[start]) > limit:
                self._too_long()  # raises: nothing was read yet
            stripped = lines[start].lstrip("\ufeff \t")
            self._sniff(stripped, complete=True)
            self.framing = "sse" if stripped.startswith(_SSE_FIELDS) else "ndjson"
            self._line_no += start
            lines = [stripped, *lines[start + 1 :]]
        if self.framing == "sse":
            self._sse_lines(lines, out)
        else:
            self._ndjson_lines(lines, out)

    def _sniff(self, head: str, complete: bool) -> None:
        """Raise unless ``head`` (the first line, or its start) can open SSE or NDJSON."""
        head = head.lstrip("\ufeff \t")
        if not head or head[0] in "{[" or head.startswith(_SSE_FIELDS):
            return
        if not complete and any(f.startswith(head) for f in _SSE_FIELDS):
            return  # "dat": wait for the rest of the line
        raise self._fail(
            f"not an SSE or NDJSON stream: it starts with {_snippet(head)}; "
            "expected 'data: {...}' events or one JSON object a line"
        )

    def _too_long(self) -> None:
        """The line being read (not yet counted) grew past the bound: the event or document
        it belongs to is malformed, and what was kept of it is dropped."""
        limit = f"longer than max_event_bytes={self.max_event_bytes:,} characters"
        if self.framing == "ndjson":
            self._line_no += 1
            if self._doc is not None:
                what = f"lines {self._doc_start}-{self._line_no}: a JSON document {limit}"
                self._doc, self._doc_len = None, 0
            else:
                what = f"line {self._line_no}: {limit}"
        elif self.framing == "sse":
            what = f"event {self._events + self.skipped + 1}: a line {limit}"
            self._data, self._data_len = [], 0
        else:
            what = f"the first line is {limit}"
        self._bad(f"{what}; pass a larger max_event_bytes if the server really sends events this long")

    def _bad(self, problem: str) -> None:
        """A malformed event: the stream's error if none was read yet, else skipped and counted."""
        if not self._events:
            raise self._fail(problem)
        self.skipped += 1
        if self.first_skip is None:
            self.first_skip = problem

    def _fail(self, message: str) -> StreamFormatError:
        self._error = message
        error = StreamFormatError(message)
        error.__suppress_context__ = True  # often raised while a JSON error is handled: not news
        return error

    def _emit(self, name: str | None, value: Any, out: list[Event]) -> None:
        if self.done:
            # [DONE] ended the stream: what follows (a second answer appended, a proxy's
            # junk) belongs to no answer, and is skipped and counted, never read into this one.
            self._bad(f"event {self._events + self.skipped + 1}: an event after [DONE]")
            return
        if name == "error" and isinstance(value, dict) and "error" not in value and "type" not in value:
            value = {"error": value}  # `event: error` with the error object as data
        self._events += 1
        out.append(value if self._bare else Event(name, value))

    # -- SSE --------------------------------------------------------------------------

    def _sse_lines(self, lines: list[str], out: list[Event]) -> None:
        limit = self.max_event_bytes
        for line in lines:
            if not line:
                if self._data:
                    self._dispatch(out)
                else:
                    self._name = None
                continue
            if len(line) > limit:
                self._too_long()
                continue
            if line[0] == ":":
                continue  # a comment: keep-alive
            if line.startswith("data:"):
                value = line[6:] if line.startswith("data: ") else line[5:]
            else:
                field, _, value = line.partition(":")
                if value[:1] == " ":
                    value = value[1:]
                if field == "event":
                    self._name = value
                if field != "data":
                    continue  # id: and retry: matter to reconnecting browsers, not to us
            if self._data:
                self._more_data(value, out)
            else:
                self._data.append(value)
                self._data_len = len(value)

    def _more_data(self, value: str, out: list[Event]) -> None:
        data = self._data
        if len(data) == 1 and not self._closing and value and not value.isspace():
            # JSON followed by more than blanks is never JSON: if the first line is JSON on
            # its own, a proxy dropped the blank line after it. Reading it now keeps a stream
            # that never sends blank lines live and its memory bounded.
            first = data[0]
            try:
                parsed = _decode(first)
            except (ValueError, RecursionError):
                if first.strip() == "[DONE]":
                    self.done = True
                    data.clear()
            else:
                self._emit(self._name, parsed, out)
                data.clear()
            if not data:
                data.append(value)
                self._data_len = len(value)
                return
        data.append(value)
        self._data_len += len(value) + 1
        if self._data_len > self.max_event_bytes:
            self._data, self._data_len = [], 0
            self._bad(
                f"event {self._events + self.skipped + 1}: data longer than max_event_bytes="
                f"{self.max_event_bytes:,} characters; pass a larger max_event_bytes if the server "
                "really sends events this long"
            )

    def _dispatch(self, out: list[Event]) -> None:
        data, name = self._data, self._name
        self._data, self._data_len, self._name = [], 0, None
        text = data[0] if len(data) == 1 else "\n".join(data)
        try:
            if self.typed is None:
                value = _decode(text)
            else:
                try:
                    value = self.typed(text)
                except (ValueError, RecursionError):
                    value = _decode(text)  # not the common shape: read as before
        except (ValueError, RecursionError) as e:
            self._not_json(name, data, text, e, out)
        else:
            self._emit(name, value, out)

    def _not_json(self, name: str | None, data: list[str], text: str, error: Exception, out: list[Event]) -> None:
        stripped = text.strip()
        if not stripped:
            return  # `data:` with nothing: a keep-alive
        if stripped == "[DONE]":
            self.done = True
            return
        if len(data) > 1:
            # Blank lines dropped between events, as read at close(): each line alone.
            values = []
            try:
                for line in data:
                    if line.strip() == "[DONE]":
                        self.done = True
                    elif line and not line.isspace():
                        values.append(_decode(line))
            except (ValueError, RecursionError):
                pass
            else:
                for value in values:
                    self._emit(name, value, out)
                return
        if name == "error" and not isinstance(error, RecursionError):
            self._emit(name, {"error": {"message": text}}, out)  # an error said in plain text
            return
        if self._closing:
            raise self._fail(f"the stream ended in the middle of an event (truncated): {_snippet(text)}")
        self._bad(f"event {self._events + self.skipped + 1}: data is {_why(error)}: {_snippet(text)}")

    # -- NDJSON -----------------------------------------------------------------------

    def _ndjson_lines(self, lines: list[str], out: list[Event]) -> None:
        limit = self.max_event_bytes
        for line in lines:
            if len(line) > limit:
                self._too_long()  # counts the line
                continue
            self._line_no += 1
            if self._doc is not None:
                self._doc_line(line, out)
                continue
            if not line or line.isspace():
                continue
            try:
                value = _decode(line)
            except (ValueError, RecursionError) as e:
                depth = _depth(line) if _incomplete(line, e) else None
                if depth is not None and depth > 0:
                    self._doc, self._doc_len, self._doc_depth, self._doc_start = [line], len(line), depth, self._line_no
                elif self._closing:  # the last line, without its line end: cut, most likely
                    raise self._fail(
                        f"the stream ended in the middle of a line (truncated), line {self._line_no}: {_snippet(line)}"
                    ) from None
                else:
                    self._bad(f"line {self._line_no}: {_why(e)}: {_snippet(line)}")
                continue
            self._events += 1
            out.append(value if self._bare else Event(None, value))

    def _doc_line(self, line: str, out: list[Event]) -> None:
        doc = self._doc
        assert doc is not None
        if line and line[0] in "{[":
            # A complete object or array at the start of a line is a new line of the stream,
            # not part of the document: that one was cut off.
            try:
                value = _decode(line)
            except (ValueError, RecursionError):
                pass
            else:
                if value:  # `[]` / `{}` alone on a line also occur inside an indent=0 document
                    self._doc, self._doc_len = None, 0
                    self._bad(f"line {self._doc_start}: a JSON document left unfinished: {_snippet(doc[0])}")
                    self._events += 1
                    out.append(value if self._bare else Event(None, value))
                    return
        self._doc_len += len(line) + 1
        if self._doc_len > self.max_event_bytes:
            self._line_no -= 1  # _too_long counts it
            self._too_long()
            return
        doc.append(line)
        depth = _depth(line)
        if depth is None:
            self._doc_depth = 0  # a string left open: no later line mends it; fail now
        else:
            self._doc_depth += depth
        if self._doc_depth > 0:
            return
        # The brackets balance: the document is complete, or it never will be. Parsed once.
        self._doc, self._doc_len = None, 0
        text = "\n".join(doc)
        try:
            value = _decode(text)
        except (ValueError, RecursionError) as e:
            self._bad(f"lines {self._doc_start}-{self._line_no}: {_why(e)}: {_snippet(text)}")
            return
        self._events += 1
        out.append(value if self._bare else Event(None, value))
