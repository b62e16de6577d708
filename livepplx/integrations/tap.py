"""The tap: an httpx transport that watches every completion passing under any client.

Agent frameworks drop or mangle logprobs on their own streaming paths, but nearly all of them
accept an HTTP client. The tap sits in that client, under the framework: every streamed answer's
raw bytes are fed to a :class:`~livepplx.core.state.StreamState` as they pass, and every whole answer
is scored (:func:`livepplx.score`)::

    import httpx2, openai
    from livepplx.integrations.tap import Tap

    tap = Tap(stop_above=20.0, on_end=lambda state, request: print(state.summary()))
    client = openai.OpenAI(http_client=httpx2.Client(transport=tap.transport()))
    aclient = openai.AsyncOpenAI(http_client=httpx2.AsyncClient(transport=tap.async_transport()))
    # ... any framework over these clients ...
    tap.last.ppl                       # the latest answer's statistics, live while it streams
    tap.states[chunk.id].summary()     # per answer, by its id (or the X-Livepplx-Id you sent)

``MonitorTransport(inner=None, options=None, **settings)`` and ``AsyncMonitorTransport(...)``
are the same thing as one class each: they make their own :class:`Tap` (``transport.tap``,
``transport.last``, ``transport.states``). One :class:`Tap` can serve a sync and an async
transport at once (``ChatOpenAI(http_client=..., http_async_client=...)``).

>>> import httpx
>>> from livepplx.recordings import recording_path
>>> body = recording_path("llamacpp-server-chat").read_bytes()
>>> server = httpx.MockTransport(lambda request: httpx.Response(
...     200, content=body, headers={"content-type": "text/event-stream"}))
>>> tap = Tap(ask_logprobs=False)
>>> with httpx.Client(transport=tap.transport(server)) as http:
...     with http.stream("POST", "http://x/v1/chat/completions",
...                      json={"model": "m", "messages": [], "stream": True}) as r:
...         same = b"".join(r.iter_bytes()) == body
>>> same, tap.last.tokens, round(tap.last.ppl, 4), list(tap.states)
(True, 30, 1.2943, ['chatcmpl-7jrSn8CXZwJikBqoEisMsSNfdj6a0rf4'])

**httpx and httpx2.** openai >= 3 sends through ``httpx2``; LangChain, LiteLLM and older SDKs
through ``httpx``. A transport's requests and responses must come from the library of the
client it is in (mixing them gives ``TypeError: Invalid type for url``). The tap's classes are
instances of both libraries' base classes and build what they hand back from the library of
each request, so one transport goes into either client. Without ``inner`` the real transport is
made on first use from the request's library (``HTTPTransport()`` / ``AsyncHTTPTransport()``);
an ``inner`` of the other library than the client is a :class:`TypeError` that says so.

**What is watched.** A ``POST`` with a JSON body to a path that ends with one of ``endpoints``
(default ``/chat/completions``, ``/completions``, ``/responses``; other paths given there are
watched and never asked for anything), answered 2xx with ``text/event-stream``, NDJSON, or JSON.
Everything else (a ``GET``, an upload, an HTML error page, a 4xx, a body in an encoding the tap
cannot read) passes through untouched and records nothing. A watched request is sent with
``Accept-Encoding: identity`` so the bytes at the transport are the text (gzip and deflate are
decoded when a server compresses anyway: the client then gets them decoded, without the
``Content-Encoding`` header). A watched stream loses its ``Content-Length`` header, if it had one
(the tap may change the length).

**Bytes unchanged.** The client gets exactly the bytes the server sent (re-cut at event
boundaries: a partial event is held until its end arrives, at most ``max_event_bytes``), except
where these settings say otherwise:

* ``ask_logprobs=True`` (the default): a request that did not ask for logprobs is sent asking
  (chat: ``logprobs: true, top_logprobs: k``; legacy completions: ``logprobs: k``; Responses:
  ``include: ["message.output_text.logprobs"], top_logprobs: k``; ``k = top_logprobs``,
  default 5), and what comes back is given back without them, so the caller's objects are those
  it would have got: chat choices lose their ``logprobs`` key (as llama-server sends a chat
  answer that did not ask), completions choices get ``"logprobs": null`` (as llama-server and
  OpenAI send them), Responses' ``logprobs`` lists become ``[]`` (and the echoed
  ``top_logprobs`` null). A chat request that set ``logprobs`` without ``top_logprobs`` is sent
  with ``top_logprobs`` too (llama-cpp-python sends no logprobs without it) and each entry's
  ``top_logprobs`` comes back ``[]``, as OpenAI sends it. Only events that carry logprobs are
  re-serialised (compact JSON, the same values). A request that set ``logprobs`` itself is sent
  as it is. A server that answers a request the tap changed with 400 or 422 gets the caller's
  own request again (once), and is not asked again (per host, path and model): the caller
  always gets what it would have got without the tap.
* ``ask_usage=False`` (the default): ``stream_options.include_usage`` is not added. With
  ``ask_usage=True`` it is, for chat streams that did not set ``stream_options``, and the usage
  chunk (empty ``choices``) and the null ``usage`` keys are taken out again; llama-server then
  also moves its ``timings`` from the finish chunk to the usage chunk, which is not put back.
* A stop ends the stream early (below).

**Stop.** Triggers, listeners, ``stop_above`` and escalations work as in :func:`~livepplx.monitor`
(a :class:`~livepplx.core.state.MonitorOptions` or its fields as keywords). When a trigger stops a
stream, or :meth:`Tap.stop` was called (it takes effect at the next chunk), the tap closes the
upstream response FIRST (the server stops generating), then runs the callbacks that became due
(``call`` then ``escalate``; awaited in the async transport), then ``on_end``, then hands the
caller the events up to the one that crossed and a normal end: for chat and completions one
chunk per unfinished choice with an empty delta and ``finish_reason: "length"``
(``stop_finish_reason``), then ``data: [DONE]``; for Responses a ``response.incomplete`` event
(reason ``max_output_tokens``) carrying the response the stream opened with; for Ollama's NDJSON
(``endpoints=("/api/chat",)``) a last line ``"done": true, "done_reason": "length"``; other
formats just end. Why ``"length"``: the answer was cut by a limit, not finished by the model;
``"length"`` is what every client already handles as "truncated by a budget" (LiteLLM raises
``MidStreamFallbackError`` on a stream that ends without any ``finish_reason``, the OpenAI SDK
takes any string, and ``"stop"`` would tell an agent the answer was complete). A stop does not
send the usage chunk. :meth:`Tap.stop` may be called from any thread.

**Statistics.** ``tap.last``: the state of the latest watched answer (live while it streams).
``tap.states``: the latest ``keep`` (default 256) answers' states, oldest first, keyed by the
request's ``X-Livepplx-Id`` header if the caller sent one (it is removed before the request
goes on: ``extra_headers={"X-Livepplx-Id": "step-3"}``), else the answer's own ``id`` (chat
and completions chunks' ``id``, the Responses ``response.id``), else ``"request-<n>"``.
``on_end(state, request)`` is called once per answer when it is over (read to its end, stopped,
failed, or closed by the caller), after the upstream was closed; ``request`` is the httpx
request sent, ``state.request`` the caller's JSON body. Each kept state holds that body and at
most ``text_limit`` characters of each choice's text.

**Errors.** The tap never breaks a request by itself. What goes wrong inside it (an answer
livepplx cannot read, missing logprobs, a callback that raises, a bug) is recorded on that
answer's state (``state.error``), logged once per kind on the ``livepplx.tap`` logger, and the
bytes pass on unchanged. Two errors reach the caller's read because they were asked for:
:class:`~livepplx.core.errors.NoLogprobsError` with ``on_missing_logprobs="raise"`` (the tap's
default is ``"warn"``: record and log; ``"ignore"``: nothing), and a callback's exception, as
:class:`~livepplx.core.errors.CallbackError` after the upstream was closed, with
``callback_errors="raise"`` (default ``"record"``). Whole answers never raise: the SDKs retry
and wrap what a transport raises. The transport's own errors (a dropped connection) reach the
caller as they would have, and are recorded.
"""

from __future__ import annotations

import importlib
import inspect
import itertools
import json
import logging
import re
import threading
import zlib
from collections import OrderedDict
from dataclasses import dataclass, replace
from types import ModuleType
from typing import TYPE_CHECKING, Any, AsyncIterator, Awaitable, Callable, Iterator, Literal, Union

from ..core.errors import HOW_TO_ASK_WHOLE, CallbackError, LivepplxError, NoLogprobsError, StreamFormatError
from ..score import score
from ..core.state import Due, MissingPolicy, MonitorOptions, StreamState, make_options

if TYPE_CHECKING:
    import httpx
    from typing_extensions import Unpack

    from ..core.state import MonitorKeywords

__all__ = ["Tap", "MonitorTransport", "AsyncMonitorTransport", "DEFAULT_ENDPOINTS", "ID_HEADER", "EndCallback"]

logger = logging.getLogger("livepplx.tap")

#: The paths watched by default (matched at the end of the URL path).
DEFAULT_ENDPOINTS = ("/chat/completions", "/completions", "/responses")
#: A request header the caller may set to name its answer in :attr:`Tap.states`; removed before sending.
ID_HEADER = "x-livepplx-id"

#: ``on_end(state, request)``: told once per answer when it is over; may be async in the async transport.
EndCallback = Callable[[StreamState, Any], Union[None, Awaitable[None]]]

_STREAM_TYPES = frozenset({"text/event-stream", "application/x-ndjson", "application/ndjson", "application/jsonl",
                           "application/x-jsonlines", "application/stream+json"})
_SSE_END = re.compile(rb"\r?\n\r?\n|\r\r")  # a blank line: the end of an SSE event
_WHITE = b" \t\r\n\xef\xbb\xbf"
_MAX_REFUSALS = 1024


def _import_libraries() -> tuple[ModuleType, ...]:
    libraries = []
    for name in ("httpx", "httpx2"):
        try:
            libraries.append(importlib.import_module(name))
        except ImportError:
            pass
    if not libraries:
        raise ImportError("livepplx.integrations.tap needs httpx or httpx2 (openai >= 3 installs httpx2): "
                          "pip install httpx2")
    return tuple(libraries)


_LIBRARIES = _import_libraries()


def _combined(name: str) -> type:
    """One base class that is each installed library's ``name``: the clients' isinstance checks pass in both."""
    bases = tuple(getattr(library, name) for library in _LIBRARIES)
    return bases[0] if len(bases) == 1 else type(f"_{name}", bases, {})


if TYPE_CHECKING:
    _TransportBase = httpx.BaseTransport
    _AsyncTransportBase = httpx.AsyncBaseTransport
    _StreamBase = httpx.SyncByteStream
    _AsyncStreamBase = httpx.AsyncByteStream
else:
    _TransportBase = _combined("BaseTransport")
    _AsyncTransportBase = _combined("AsyncBaseTransport")
    _StreamBase = _combined("SyncByteStream")
    _AsyncStreamBase = _combined("AsyncByteStream")


def _library_of(obj: Any) -> ModuleType:
    """The library (httpx or httpx2) a request or response object belongs to."""
    name = type(obj).__module__.partition(".")[0]
    for library in _LIBRARIES:
        if library.__name__ == name:
            return library
    raise TypeError(f"the tap reads httpx and httpx2 requests, not {type(obj).__module__}.{type(obj).__name__}")


def _check_same_library(inner: Any, request: Any, base: str) -> None:
    """A transport of the other library than the client fails deep inside it: say why, here."""
    theirs = [lib.__name__ for lib in _LIBRARIES if isinstance(inner, getattr(lib, base))]
    ours = _library_of(request).__name__
    if theirs and ours not in theirs:
        raise TypeError(
            f"the inner transport is a {theirs[0]} transport ({type(inner).__name__}) and the client is a {ours} "
            f"client: a transport must come from the same library as the client it goes into "
            f"({ours}.Client(transport=Tap().transport({ours}.HTTPTransport())), or no inner transport at all)"
        )


# -- content encodings ------------------------------------------------------------------


class _Inflate:
    """gzip or deflate, decoded as it arrives (zlib; deflate with or without its zlib header)."""

    def __init__(self, encoding: str) -> None:
        self.encoding = encoding
        self._z = zlib.decompressobj(zlib.MAX_WBITS | 16 if encoding == "gzip" else zlib.MAX_WBITS)
        self._first = True

    def decode(self, data: bytes) -> bytes:
        if self._first and data and self.encoding == "deflate":
            self._first = False
            try:
                return self._z.decompress(data)
            except zlib.error:  # raw deflate, without the zlib header (some servers send it)
                self._z = zlib.decompressobj(-zlib.MAX_WBITS)
        self._first = False
        return self._z.decompress(data)

    def flush(self) -> bytes:
        return self._z.flush()


def _content_decoder(headers: Any) -> tuple[bool, _Inflate | None]:
    """(readable, decoder): identity needs none; gzip and deflate are decoded; anything else is unreadable."""
    encoding = (headers.get("content-encoding") or "identity").strip().lower()
    if encoding in ("identity", ""):
        return True, None
    if encoding in ("gzip", "x-gzip", "deflate"):
        return True, _Inflate("deflate" if encoding == "deflate" else "gzip")
    return False, None


# -- requests ---------------------------------------------------------------------------


def _kind(path: str, endpoints: tuple[str, ...]) -> str | None:
    """The endpoint's kind ("chat", "completions", "responses", or "other"), None when not watched."""
    path = path.rstrip("/")
    for suffix in endpoints:
        if path.endswith(suffix.rstrip("/")):
            if path.endswith("/chat/completions"):
                return "chat"
            if path.endswith("/completions"):
                return "completions"
            if path.endswith("/responses"):
                return "responses"
            return "other"
    return None


def _ask(kind: str, body: dict[str, Any], top_logprobs: int, usage: bool) -> tuple[dict[str, Any], frozenset[str]]:
    """The body asking for logprobs (and usage), and what was added: what to take out again."""
    sent = dict(body)
    added: set[str] = set()
    streaming = body.get("stream") is True
    if kind == "chat":
        if body.get("logprobs") in (None, False):
            if body.get("top_logprobs") is None:
                sent["logprobs"], sent["top_logprobs"] = True, top_logprobs
                added.add("logprobs")
        elif body.get("logprobs") is True and body.get("top_logprobs") is None and top_logprobs > 0:
            sent["top_logprobs"] = top_logprobs
            added.add("top_logprobs")
        if usage and streaming and body.get("stream_options") is None:
            sent["stream_options"] = {"include_usage": True}
            added.add("usage")
    elif kind == "completions":
        if body.get("logprobs") is None:
            sent["logprobs"] = top_logprobs
            added.add("logprobs")
    elif kind == "responses":
        include = body.get("include")
        if include is None or (isinstance(include, list) and "message.output_text.logprobs" not in include):
            sent["include"] = [*(include or []), "message.output_text.logprobs"]
            added.add("logprobs")
            if body.get("top_logprobs") is None:
                sent["top_logprobs"] = top_logprobs
                added.add("top_logprobs")
    return sent, frozenset(added)


@dataclass
class _Plan:
    """What the tap does with one request."""

    #: "chat", "completions", "responses" or "other"
    kind: str
    #: the caller's JSON body
    body: dict[str, Any]
    #: the body said ``"stream": true``
    stream: bool
    #: what the tap added to the body, so to take out of the answer
    added: frozenset[str]
    #: the request sent first
    sent: Any
    #: the caller's own request (without what was added), for a server that refuses it; None when nothing was added
    plain: Any
    #: the caller's X-Livepplx-Id
    key: str | None
    #: (host, port, path, model): remembered when the server refuses what was added
    route: tuple[Any, ...]
    #: why the caller's own request was sent again, when it was
    refused: str | None = None


def _rebuild(request: Any, content: bytes) -> Any:
    """The request with another body, identity encoding asked, and without our id header."""
    headers = request.headers.copy()
    for name in ("content-length", ID_HEADER):
        if name in headers:
            del headers[name]
    headers["accept-encoding"] = "identity"
    return type(request)(request.method, request.url, headers=headers, content=content, extensions=request.extensions)


# -- answers ----------------------------------------------------------------------------


def _dumps(obj: Any) -> bytes:
    try:
        return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate from a \\ud800 escape: keep the escape
        return json.dumps(obj, separators=(",", ":")).encode("utf-8")


def _empty_logprobs(value: Any) -> None:
    """Every ``logprobs`` in a Responses object set to ``[]``, as an answer that did not ask has them."""
    if isinstance(value, dict):
        for key, item in value.items():
            if key == "logprobs":
                value[key] = []
            else:
                _empty_logprobs(item)
    elif isinstance(value, list):
        for item in value:
            _empty_logprobs(item)


def _strip(kind: str, obj: Any, added: frozenset[str]) -> bool | None:
    """Take out of one chunk (or whole answer) what the tap asked for. True if it changed, None to drop it."""
    if not isinstance(obj, dict):
        return False
    changed = False
    if kind == "responses":
        if "logprobs" in added:
            _empty_logprobs(obj)
            changed = True
        if "top_logprobs" in added:
            inner = obj.get("response")
            response: dict[str, Any] = inner if isinstance(inner, dict) else obj
            if response.get("top_logprobs") is not None:
                response["top_logprobs"] = None  # the request's echo
                changed = True
        return changed
    choices = obj.get("choices")
    if "usage" in added and "usage" in obj:
        if obj["usage"] is not None and choices == []:
            return None  # the usage chunk the caller did not ask for
        if obj["usage"] is None:
            del obj["usage"]
            changed = True
    if not isinstance(choices, list):
        return changed
    for choice in choices:
        if not isinstance(choice, dict) or "logprobs" not in choice:
            continue
        if "logprobs" in added:
            if kind == "chat":
                del choice["logprobs"]
            else:
                choice["logprobs"] = None
            changed = True
        elif "top_logprobs" in added:
            logprobs = choice["logprobs"]
            entries = logprobs.get("content") if isinstance(logprobs, dict) else None
            for entry in entries if isinstance(entries, list) else ():
                if isinstance(entry, dict) and "top_logprobs" in entry:
                    entry["top_logprobs"] = []
                    changed = True
    return changed


def _event_json(unit: bytes, sse: bool) -> tuple[Any, list[bytes], int] | None:
    """One event's JSON, its lines, and where its data line is; None when it is not one JSON value."""
    lines = unit.splitlines(keepends=True)
    if not sse:
        text = unit.strip()
        if not text:
            return None
        try:
            return json.loads(text), lines, 0
        except (ValueError, RecursionError):
            return None
    at = -1
    data: list[bytes] = []
    for i, line in enumerate(lines):
        if line.startswith(b"data:"):
            value = line[5:].rstrip(b"\r\n")
            data.append(value[1:] if value[:1] == b" " else value)
            if at < 0:
                at = i
    if at < 0:
        return None
    try:
        return json.loads(b"\n".join(data)), lines, at
    except (ValueError, RecursionError):
        return None


def _rewrite(unit: bytes, sse: bool, parsed: tuple[Any, list[bytes], int], obj: Any) -> bytes:
    """The event with its data line(s) replaced by ``obj``; its other lines and line ends kept."""
    _, lines, at = parsed
    if not sse:
        line = lines[0]
        end = line[len(line.rstrip(b"\r\n")):]
        return _dumps(obj) + end + b"".join(lines[1:])
    end = lines[at][len(lines[at].rstrip(b"\r\n")):] or b"\n"
    out = []
    for i, line in enumerate(lines):
        if i == at:
            out.append(b"data: " + _dumps(obj) + end)  # several data lines become one
        elif not line.startswith(b"data:"):
            out.append(line)
    return b"".join(out)


def _answer_id(obj: Any) -> str | None:
    if not isinstance(obj, dict):
        return None
    response = obj.get("response")
    value = response.get("id") if isinstance(response, dict) else obj.get("id")
    return value if isinstance(value, str) and value else None


class _LogOnce:
    """Log each kind of trouble once per tap at WARNING, then at DEBUG."""

    def __init__(self) -> None:
        self.seen: set[str] = set()

    def __call__(self, kind: str, message: str, error: BaseException | None = None) -> None:
        if kind in self.seen:
            logger.debug("%s", message)
            return
        self.seen.add(kind)
        logger.warning("%s (said once per tap; later ones at DEBUG)", message, exc_info=error)


# -- one watched stream -----------------------------------------------------------------


class _Watch:
    """One watched streamed answer, without I/O: raw bytes in, the bytes to hand on out.

    The bytes are cut at event boundaries (a blank line for SSE, a line end for NDJSON) and fed
    to the state one event at a time, so a stop lands right after the event that crossed.
    """

    def __init__(self, tap: Tap, plan: _Plan, request: Any, state: StreamState, decoder: _Inflate | None) -> None:
        self.tap = tap
        self.plan = plan
        self.request = request
        self.state = state
        self.decoder = decoder
        self.key = ""
        self.sse: bool | None = None
        self._pending = b""
        self._limit = state.options.max_event_bytes
        self._reading = True  # False once the state cannot read more (an unreadable stream)
        self._broken = False  # a failure inside the tap: pass everything on as it comes
        self._keyed = plan.key is not None
        self._looked = 0  # events looked at for the answer's id and opening
        # Only events that carry what the tap asked for are parsed again (and re-serialised).
        self._needles = (b'logprobs"',) * bool(plan.added) + (b'"usage"',) * ("usage" in plan.added)
        self._first: Any = None  # the first event's JSON (the answer's id, model, ...)
        self._last_unit = b""
        self._end_bytes = b"\n\n"  # how the bytes handed on so far end
        self._done = False
        self.flushed = False
        self.finished = False

    # bytes in, bytes out

    def feed(self, raw: bytes) -> bytes:
        data = bytes(raw)
        if self.decoder is not None:
            data = self.decoder.decode(data)
        return self._feed(data)

    def flush(self) -> bytes:
        """The upstream ended: what is left, then the state's judgement of the whole stream. Once."""
        if self.flushed:
            return b""
        self.flushed = True
        rest = self.decoder.flush() if self.decoder is not None else b""
        out = self._feed(rest) if rest else b""
        tail, self._pending = self._pending, b""
        if tail and self.state.stopped is None:
            out += self._guarded(tail)
        if self._reading and not self._broken:
            self._judge(self.state.finish)
        return out

    def _feed(self, data: bytes) -> bytes:
        if self._broken:
            return data
        buf = self._pending + data if self._pending else data
        if self.sse is None:
            head = buf.lstrip(_WHITE)
            if not head:
                self._pending = buf
                return self._overflow()
            self.sse = head[:1] not in (b"{", b"[")
        start = max(0, len(self._pending) - 3)  # a boundary may straddle the held bytes and the new
        out: list[bytes] = []
        pos = 0
        cr = self.sse and b"\r" in buf  # memchr: the regex only for CR line ends, 10x slower than find
        try:
            while True:
                if cr:
                    match = _SSE_END.search(buf, start)
                    end = match.end() if match is not None else -1
                elif self.sse:
                    blank = buf.find(b"\n\n", start)
                    end = blank + 2 if blank >= 0 else -1
                else:
                    newline = buf.find(b"\n", start)
                    end = newline + 1 if newline >= 0 else -1
                if end < 0:
                    break
                out.append(self._unit(buf[pos:end]))
                pos = start = end
                if self.state.stopped is not None:
                    self._pending = b""  # what came after the crossing event is not handed on
                    return b"".join(out)
        except NoLogprobsError:
            raise  # asked for: on_missing_logprobs="raise"
        except Exception as e:
            self.fail(e)
            self._pending = b""
            return b"".join(out) + buf[pos:]
        self._pending = buf[pos:]
        return b"".join(out) + self._overflow()

    def _overflow(self) -> bytes:
        """Never hold more than ``max_event_bytes``: a longer event passes on as it is."""
        if len(self._pending) <= self._limit:
            return b""
        held, self._pending = self._pending, b""
        return self._guarded(held, whole=False)

    def _guarded(self, unit: bytes, whole: bool = True) -> bytes:
        try:
            return self._unit(unit, whole=whole)
        except NoLogprobsError:
            raise
        except Exception as e:
            self.fail(e)
            return unit

    def _unit(self, unit: bytes, whole: bool = True) -> bytes:
        """Feed one event to the state; return it as the caller gets it."""
        if self._reading:
            try:
                self.state.handle(unit)
            except NoLogprobsError as e:
                self.tap._missing(self.state, e)
            except StreamFormatError as e:  # not a stream livepplx can read: the state says so
                self._reading = False
                self.tap._log("unreadable", f"livepplx tap: an answer it cannot read passes on unread: {e}")
        parsed: tuple[Any, list[bytes], int] | None = None
        if self._looked < 4 and whole:
            parsed = _event_json(unit, bool(self.sse))
            self._look(parsed)
        if self._needles and whole and any(needle in unit for needle in self._needles):
            if parsed is None:
                parsed = _event_json(unit, bool(self.sse))
            if parsed is not None:
                obj = parsed[0]
                changed = _strip(self.plan.kind, obj, self.plan.added)
                if changed is None:
                    return b""
                if changed:
                    unit = _rewrite(unit, bool(self.sse), parsed, obj)
        if whole and unit.strip(_WHITE):
            self._last_unit = unit
        if unit:
            self._end_bytes = unit[-4:]
            if b"[DONE]" in unit and any(line.strip() in (b"data: [DONE]", b"data:[DONE]")
                                         for line in unit.splitlines()):
                self._done = True  # the stream's own end was handed on: a stop adds nothing
        return unit

    def _look(self, parsed: tuple[Any, list[bytes], int] | None) -> None:
        """The first events: what the answer opened with (for the end after a stop), and its id."""
        if parsed is None:
            return
        self._looked += 1
        if self._first is None and isinstance(parsed[0], dict):
            self._first = dict(parsed[0])  # a copy: stripping changes the parsed one
        if not self._keyed:
            answer_id = _answer_id(parsed[0])
            if answer_id is not None:
                self._keyed = True
                self.key = self.tap._rekey(self.key, answer_id, self.state)

    def _judge(self, check: Callable[[], None]) -> None:
        try:
            check()
        except NoLogprobsError as e:
            self.tap._missing(self.state, e)
        except Exception as e:
            self.fail(e)

    def fail(self, error: BaseException) -> None:
        """A failure inside the tap: recorded, logged once, and the rest passes on as it comes."""
        self._broken = True
        self.state.fail(f"the tap failed and let the rest of the answer pass unread: {type(error).__name__}: {error}")
        self.tap._log(f"bug:{type(error).__name__}", f"livepplx tap: failed inside ({type(error).__name__}: {error}); "
                      "the answer passes on unchanged", error)

    def failed(self, error: BaseException) -> None:
        """The upstream failed (a dropped connection): say what ended the stream, and when."""
        if isinstance(error, Exception) and not isinstance(error, LivepplxError):
            self.state.fail(f"the stream failed after {self.state.total_tokens} tokens: "
                            f"{type(error).__name__}: {error}".rstrip(": "))

    # the end the caller gets after a stop

    def tail(self) -> bytes:
        """A normal end after a stop: a finish chunk per unfinished choice and [DONE], or
        ``response.incomplete``; nothing for other formats or when the stream had ended."""
        try:
            return self._tail()
        except Exception as e:
            self.fail(e)
            return b""

    def _tail(self) -> bytes:
        state = self.state
        if self._done:
            return b""
        fmt = state.format or {"chat": "openai-chat", "completions": "openai-completions",
                               "responses": "openai-responses"}.get(self.plan.kind)
        last = _event_json(self._last_unit, bool(self.sse)) if self._last_unit else None
        seen: dict[str, Any] = {}
        for obj in (self._first, last[0] if last else None):
            if isinstance(obj, dict):
                seen.update({k: v for k, v in obj.items() if v is not None})
        reason = self.tap.stop_finish_reason
        end = self._end_bytes
        if fmt == "ollama" and not self.sse:
            if 0 in state.ended:
                return b""
            done: dict[str, Any] = {"model": seen.get("model", ""), "created_at": seen.get("created_at", "")}
            if "response" in seen and "message" not in seen:  # /api/generate
                done["response"] = ""
            else:
                done["message"] = {"role": "assistant", "content": ""}
            done.update({"done": True, "done_reason": reason})
            return (b"" if end[-1:] == b"\n" else b"\n") + _dumps(done) + b"\n"
        if not self.sse:
            return b""
        # The last event handed on may lack its blank line (held till the end): end it first.
        lead = b"" if end.endswith((b"\n\n", b"\n\r\n", b"\r\r")) else b"\n" if end[-1:] in (b"\n", b"\r") else b"\n\n"
        if fmt in ("openai-chat", "openai-completions"):
            chat = fmt == "openai-chat"
            head = {"id": seen.get("id", "livepplx-stopped"),
                    "object": "chat.completion.chunk" if chat else "text_completion",
                    "created": seen.get("created", 0), "model": seen.get("model", "")}
            if "system_fingerprint" in seen:
                head["system_fingerprint"] = seen["system_fingerprint"]
            out = []
            for index in sorted((set(state.choices) | {0}) - state.ended):
                choice: dict[str, Any] = ({"index": index, "delta": {}, "finish_reason": reason} if chat else
                                          {"index": index, "text": "", "logprobs": None, "finish_reason": reason})
                out.append(b"data: " + _dumps({**head, "choices": [choice]}) + b"\n\n")
            return lead + b"".join(out) + b"data: [DONE]\n\n"
        if fmt == "openai-responses":
            if state.ended:
                return b""
            opened = self._first.get("response") if isinstance(self._first, dict) else None
            response = dict(opened) if isinstance(opened, dict) else {"id": seen.get("id", "livepplx-stopped"),
                                                                      "object": "response"}
            response["status"] = "incomplete"
            response["incomplete_details"] = {"reason": "max_output_tokens"}
            event: dict[str, Any] = {"type": "response.incomplete", "response": response}
            sequence = seen.get("sequence_number")
            if isinstance(sequence, int) and not isinstance(sequence, bool):
                event["sequence_number"] = sequence + 1
            return lead + b"event: response.incomplete\ndata: " + _dumps(event) + b"\n\n"
        return b""

    def finish(self) -> bool:
        """Mark the answer over; False if it already was.

        A caller that closes after the stream's end was read (the openai SDK stops reading at
        ``[DONE]``) still gets the whole stream judged (:meth:`StreamState.finish`), never raising
        from a close; one that closes earlier leaves the statistics as read, as :func:`monitor` does.
        """
        if self.finished:
            return False
        self.finished = True
        if not self.flushed and self.state.stopped is None and self.state.complete:
            try:
                self.flush()
            except NoLogprobsError:
                pass  # recorded on the state; a close does not raise
        return True


# -- the tap ----------------------------------------------------------------------------


class Tap:
    """The settings and the statistics shared by the transports made from it.

    Args:
        options: a :class:`~livepplx.core.state.MonitorOptions` for every answer; or give its fields
            as keywords (``stop_above=20``, ``triggers=[...]``, ``listeners=[...]``, ``window``, ...).
            ``on_missing_logprobs`` defaults to ``"warn"`` here (record and log; ``"raise"`` raises
            :class:`~livepplx.core.errors.NoLogprobsError` into the caller's read of a stream).
        ask_logprobs: ask for logprobs when the caller did not, and take them out of what comes
            back (default True).
        top_logprobs: the alternatives asked for (default 5; 0 to 20).
        ask_usage: add ``stream_options.include_usage`` to chat streams that did not set it,
            and take the usage chunk out again (default False).
        stop_finish_reason: the ``finish_reason`` of the chunk that ends a stopped chat or
            completions stream (default ``"length"``).
        on_end: ``on_end(state, request)``, told once per answer when it is over (async in the
            async transport is awaited).
        keep: how many answers' states :attr:`states` keeps (default 256; the oldest go first).
        endpoints: path endings to watch (default :data:`DEFAULT_ENDPOINTS`); others pass untouched.
        callback_errors: ``"record"`` (default) or ``"raise"``: a trigger's callback or ``on_end``
            that raises is recorded and logged, or raised into the caller's read as
            :class:`~livepplx.core.errors.CallbackError` (triggers' callbacks only).
    """

    def __init__(
        self, options: MonitorOptions | None = None, *, ask_logprobs: bool = True, top_logprobs: int = 5,
        ask_usage: bool = False, stop_finish_reason: str = "length", on_end: EndCallback | None = None,
        keep: int = 256, endpoints: tuple[str, ...] = DEFAULT_ENDPOINTS,
        callback_errors: Literal["record", "raise"] = "record", **keywords: Unpack[MonitorKeywords],
    ) -> None:
        given: dict[str, Any] = dict(keywords)
        policy: MissingPolicy
        if "on_missing_logprobs" in given:
            policy = given["on_missing_logprobs"]
        elif options is not None:
            policy = options.on_missing_logprobs
        else:
            policy = "warn"
        opts = make_options(options, given)  # checks every option
        if isinstance(top_logprobs, bool) or not isinstance(top_logprobs, int) or not 0 <= top_logprobs <= 20:
            raise ValueError(f"top_logprobs must be a whole number from 0 to 20, got {top_logprobs!r}")
        if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
            raise ValueError(f"keep must be a whole number >= 1, got {keep!r}")
        if callback_errors not in ("record", "raise"):
            raise ValueError(f"callback_errors must be 'record' or 'raise', got {callback_errors!r}")
        if not isinstance(stop_finish_reason, str) or not stop_finish_reason:
            raise ValueError(f"stop_finish_reason must be a non-empty string, got {stop_finish_reason!r}")
        if isinstance(endpoints, str) or not all(isinstance(e, str) and e for e in endpoints):
            raise ValueError(f"endpoints must be a tuple of path endings such as '/chat/completions', "
                             f"got {endpoints!r}")
        if on_end is not None and not callable(on_end):
            raise TypeError(f"on_end must be a function of (state, request), got {on_end!r}")
        #: the options of every answer's state (``on_missing_logprobs`` as the tap applies it)
        self.options = replace(opts, on_missing_logprobs=policy)
        # The state raises, and the tap decides: record, log, or hand it to the caller.
        self._state_options = replace(opts, on_missing_logprobs="ignore" if policy == "ignore" else "raise")
        self.on_missing_logprobs = policy
        self.ask_logprobs = ask_logprobs
        self.top_logprobs = top_logprobs
        self.ask_usage = ask_usage
        self.stop_finish_reason = stop_finish_reason
        self.on_end = on_end
        self.keep = keep
        self.endpoints = tuple(endpoints)
        self.callback_errors = callback_errors
        #: exceptions caught inside the tap (each recorded on its answer's state)
        self.failures = 0
        self._states: OrderedDict[str, StreamState] = OrderedDict()
        self._last: StreamState | None = None
        self._lock = threading.Lock()
        self._count = itertools.count(1)
        self._refusals: set[tuple[Any, ...]] = set()
        self._log_once = _LogOnce()

    # -- what users read ----------------------------------------------------------------

    @property
    def last(self) -> StreamState | None:
        """The state of the latest watched answer (live while it streams), None before the first."""
        return self._last

    @property
    def states(self) -> dict[str, StreamState]:
        """The latest ``keep`` answers' states, oldest first (a copy): by X-Livepplx-Id, else the answer's id."""
        with self._lock:
            return dict(self._states)

    def stop(self, key: str | None = None, reason: str = "stopped by the caller") -> StreamState | None:
        """Stop an answer at its next chunk (the latest when ``key`` is None); return its state, if any."""
        state = self._last if key is None else self.states.get(key)
        if state is not None:
            state.stop(reason)
        return state

    def transport(self, inner: Any = None) -> MonitorTransport:
        """A sync transport over ``inner`` (default: the request's library's ``HTTPTransport()``)."""
        return MonitorTransport(inner, tap=self)

    def async_transport(self, inner: Any = None) -> AsyncMonitorTransport:
        """An async transport over ``inner`` (default: the request's library's ``AsyncHTTPTransport()``)."""
        return AsyncMonitorTransport(inner, tap=self)

    # -- requests ---------------------------------------------------------------------

    def _plan(self, request: Any, body: bytes) -> _Plan | None:
        """What to do with a request whose JSON body is ``body``; None to let it pass untouched."""
        kind = _kind(request.url.path, self.endpoints)
        if kind is None:
            return None
        try:
            value = json.loads(body)
        except (ValueError, RecursionError):
            return None
        if not isinstance(value, dict):
            return None
        key = request.headers.get(ID_HEADER) or None
        route = (request.url.host, request.url.port, request.url.path, str(value.get("model")))
        sent_body: dict[str, Any] = value
        added: frozenset[str] = frozenset()
        if self.ask_logprobs and route not in self._refusals:
            sent_body, added = _ask(kind, value, self.top_logprobs, self.ask_usage)
        sent = _rebuild(request, _dumps(sent_body) if added else body)
        plain = _rebuild(request, body) if added else None
        return _Plan(kind, value, value.get("stream") is True, added, sent, plain, key, route)

    def _refused(self, plan: _Plan, status: int, body: bytes) -> _Plan:
        """The server refused what the tap added: send the caller's own request, and remember."""
        with self._lock:
            if len(self._refusals) >= _MAX_REFUSALS:
                self._refusals.clear()
            self._refusals.add(plan.route)
        text = body[:300].decode("utf-8", "replace").strip()
        message = (f"the server answered {status} to the request with {' and '.join(sorted(plan.added))} added "
                   f"({text!r}); the caller's own request was sent instead, and will be from now on")
        self._log("refused", f"livepplx tap: {message}")
        return replace(plan, sent=plan.plain, plain=None, added=frozenset(), refused=message)

    # -- answers ----------------------------------------------------------------------

    def _new_state(self, plan: _Plan) -> StreamState:
        state = StreamState(self._state_options, request=plan.body)
        if plan.refused:
            state.fail(plan.refused)
        return state

    def _register(self, state: StreamState, key: str | None) -> str:
        with self._lock:
            if key is None:
                key = f"request-{next(self._count)}"
            self._states.pop(key, None)
            self._states[key] = state
            while len(self._states) > self.keep:
                self._states.popitem(last=False)
            self._last = state
        return key

    def _rekey(self, old: str, new: str, state: StreamState) -> str:
        with self._lock:
            if self._states.get(old) is state:
                del self._states[old]
            self._states.pop(new, None)
            self._states[new] = state
            while len(self._states) > self.keep:
                self._states.popitem(last=False)
        return new

    def _open(self, plan: _Plan, request: Any, response: Any) -> _Watch | None:
        """A watch over a streamed answer, or None when it is not one to read."""
        readable, decoder = _content_decoder(response.headers)
        if not readable:
            self._log("encoding", f"livepplx tap: an answer in content-encoding "
                      f"{response.headers.get('content-encoding')!r} passes on unread (it asks for identity)")
            return None
        state = self._new_state(plan)
        if response.is_stream_consumed:
            decoder = None  # read by the transport already: decoded
        if decoder is not None:
            del response.headers["content-encoding"]
        if "content-length" in response.headers:
            del response.headers["content-length"]
        watch = _Watch(self, plan, request, state, decoder)
        watch.key = self._register(state, plan.key)
        return watch

    def _whole(self, plan: _Plan, data: bytes) -> tuple[StreamState, bytes]:
        """Score a whole answer; return its state and the bytes the caller gets."""
        try:
            value = json.loads(data)
        except (ValueError, RecursionError):
            value = data  # score() says what it is
        try:
            state = score(value, replace(self._state_options, on_missing_logprobs="ignore"))
            state.request = dict(plan.body)
            if plan.refused:  # said first: it is why the answer has no logprobs
                previous, state.error = state.error, None
                state.fail(plan.refused if previous is None else f"{plan.refused}; then: {previous}")
        except LivepplxError as e:
            state = self._new_state(plan)
            state.fail(str(e))
            self._log("unreadable", f"livepplx tap: a whole answer it cannot read: {e}")
        if state.format is not None and not state.has_logprobs and self.on_missing_logprobs != "ignore":
            self._missing(state, NoLogprobsError("the answer carried no logprobs", hint=HOW_TO_ASK_WHOLE), whole=True)
        self._register(state, plan.key or _answer_id(value))
        if plan.added and state.format is not None:
            try:
                if _strip(plan.kind, value, plan.added):
                    data = _dumps(value)
            except Exception as e:
                state.fail(f"the tap failed and let the answer pass as it came: {type(e).__name__}: {e}")
                self._log(f"bug:{type(e).__name__}", f"livepplx tap: failed inside ({e})", e)
        return state, data

    def _missing(self, state: StreamState, error: NoLogprobsError, whole: bool = False) -> None:
        """No logprobs: recorded (the state's error), logged once; raised only when asked, never for whole answers."""
        state.fail(str(error))
        if self.on_missing_logprobs == "raise" and not whole:
            raise error
        self._log("no logprobs", f"livepplx tap: {error}")

    def _log(self, kind: str, message: str, error: BaseException | None = None) -> None:
        if kind.startswith("bug:"):
            self.failures += 1
        self._log_once(kind, message, error)

    def _callback_failed(self, state: StreamState, due: Due | None, error: BaseException | None,
                         async_in_sync: bool = False) -> CallbackError:
        what = f"the {due.kind} of trigger {due.trigger.name!r}" if due is not None else "on_end"
        if async_in_sync:
            message = f"{what} is async: use the async transport (AsyncMonitorTransport), which awaits it"
        else:
            message = f"{what} raised {type(error).__name__}: {error}"
        state.fail(message)
        self._log(f"callback:{what}", f"livepplx tap: {message}", error)
        return CallbackError(message)


def _awaitable_closed(result: Any) -> bool:
    if inspect.isawaitable(result):
        close = getattr(result, "close", None)
        if close is not None:
            close()  # a coroutine never awaited would warn at garbage collection
        return True
    return False


def _request_kind(request: Any) -> bool:
    """A POST with a JSON body, not compressed: the only requests the tap reads."""
    if request.method != "POST":
        return False
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    return (ctype == "application/json" or ctype.endswith("+json")) and "content-encoding" not in request.headers


def _response_kind(plan: _Plan, response: Any) -> str | None:
    """"stream", "whole", or None (pass untouched): 2xx only, by its content type."""
    if not 200 <= response.status_code < 300:
        return None
    ctype = response.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype in _STREAM_TYPES:
        return "stream"
    if ctype == "application/json" or (ctype == "" and plan.stream):
        return "stream" if plan.stream else "whole"
    return None


def _refusal(plan: _Plan, response: Any) -> bool:
    return plan.plain is not None and response.status_code in (400, 422)


def _fresh(response: Any, data: bytes | None = None, stream: Any = None) -> Any:
    """A response like ``response`` with ``data`` (or ``stream``) as its decoded body."""
    headers = response.headers.copy()
    for name in ("content-encoding", "content-length", "transfer-encoding"):
        if name in headers:
            del headers[name]
    return type(response)(response.status_code, headers=headers, content=data, stream=stream,
                          extensions=response.extensions)


class _Bytes:
    """A body read already, as a stream of one chunk (sync and async)."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def __iter__(self) -> Iterator[bytes]:
        if self.data:
            yield self.data

    async def __aiter__(self) -> AsyncIterator[bytes]:
        if self.data:
            yield self.data

    def close(self) -> None:
        pass

    async def aclose(self) -> None:
        pass


# -- the transports ---------------------------------------------------------------------


class _Transport:
    """What both transports share: their tap, and the statistics read through it."""

    def __init__(self, inner: Any, options: MonitorOptions | None, tap: Tap | None, settings: dict[str, Any]) -> None:
        if tap is None:
            tap = Tap(options, **settings)
        elif options is not None or settings:
            raise TypeError("give the options and settings to the Tap, not to a transport made with tap=")
        #: the settings and statistics (shared with other transports made from it)
        self.tap = tap
        #: the real transport, as given (None: made per library on first use)
        self.inner = inner
        self._defaults: dict[str, Any] = {}

    @property
    def last(self) -> StreamState | None:
        """The state of the latest watched answer (see :attr:`Tap.last`)."""
        return self.tap.last

    @property
    def states(self) -> dict[str, StreamState]:
        """The latest answers' states by id (see :attr:`Tap.states`)."""
        return self.tap.states

    def stop(self, key: str | None = None, reason: str = "stopped by the caller") -> StreamState | None:
        """See :meth:`Tap.stop`."""
        return self.tap.stop(key, reason)

    def _inner_for(self, request: Any, base: str, default: str) -> Any:
        if self.inner is not None:
            _check_same_library(self.inner, request, base)
            return self.inner
        library = _library_of(request)
        inner = self._defaults.get(library.__name__)
        if inner is None:
            inner = self._defaults[library.__name__] = getattr(library, default)()
        return inner


class MonitorTransport(_Transport, _TransportBase):
    """A sync httpx / httpx2 transport that watches the answers passing through it (see the module).

    ``MonitorTransport(inner=None, options=None, *, tap=None, **settings)``: ``settings`` are
    :class:`Tap`'s (``ask_logprobs``, ``on_end``, ``stop_above``, ...), or give a ``tap`` to share.
    """

    def __init__(self, inner: Any = None, options: MonitorOptions | None = None, *, tap: Tap | None = None,
                 **settings: Any) -> None:
        _Transport.__init__(self, inner, options, tap, settings)

    def handle_request(self, request: Any) -> Any:
        inner = self._inner_for(request, "BaseTransport", "HTTPTransport")
        if not _request_kind(request):
            return inner.handle_request(request)
        plan = self.tap._plan(request, request.read())
        if plan is None:
            return inner.handle_request(request)
        response = inner.handle_request(plan.sent)
        if _refusal(plan, response):
            try:
                body = response.read()
            finally:
                response.close()
            plan = self.tap._refused(plan, response.status_code, body)
            response = inner.handle_request(plan.sent)
        kind = _response_kind(plan, response)
        if kind == "stream":
            watch = self.tap._open(plan, plan.sent, response)
            if watch is not None:
                if response.is_stream_consumed:  # read already (MockTransport with content=): its bytes as one chunk
                    return _fresh(response, stream=_TapStream(_Bytes(response.content), watch))
                response.stream = _TapStream(response.stream, watch)
        elif kind == "whole":
            try:
                data = response.read()
            finally:
                response.close()
            state, data = self.tap._whole(plan, data)
            _run_sync(self.tap, state, state.take_due(), raising=False)
            state.end()
            _end_sync(self.tap, state, plan.sent)
            return _fresh(response, data)
        return response

    def close(self) -> None:
        for inner in [self.inner, *self._defaults.values()]:
            if inner is not None:
                inner.close()


class AsyncMonitorTransport(_Transport, _AsyncTransportBase):
    """The async twin of :class:`MonitorTransport`: callbacks and ``on_end`` may be ``async def``."""

    def __init__(self, inner: Any = None, options: MonitorOptions | None = None, *, tap: Tap | None = None,
                 **settings: Any) -> None:
        _Transport.__init__(self, inner, options, tap, settings)

    async def handle_async_request(self, request: Any) -> Any:
        inner = self._inner_for(request, "AsyncBaseTransport", "AsyncHTTPTransport")
        if not _request_kind(request):
            return await inner.handle_async_request(request)
        plan = self.tap._plan(request, await request.aread())
        if plan is None:
            return await inner.handle_async_request(request)
        response = await inner.handle_async_request(plan.sent)
        if _refusal(plan, response):
            try:
                body = await response.aread()
            finally:
                await response.aclose()
            plan = self.tap._refused(plan, response.status_code, body)
            response = await inner.handle_async_request(plan.sent)
        kind = _response_kind(plan, response)
        if kind == "stream":
            watch = self.tap._open(plan, plan.sent, response)
            if watch is not None:
                if response.is_stream_consumed:
                    return _fresh(response, stream=_AsyncTapStream(_Bytes(response.content), watch))
                response.stream = _AsyncTapStream(response.stream, watch)
        elif kind == "whole":
            try:
                data = await response.aread()
            finally:
                await response.aclose()
            state, data = self.tap._whole(plan, data)
            await _run_async(self.tap, state, state.take_due(), raising=False)
            state.end()
            await _end_async(self.tap, state, plan.sent)
            return _fresh(response, data)
        return response

    async def aclose(self) -> None:
        for inner in [self.inner, *self._defaults.values()]:
            if inner is not None:
                await inner.aclose()


# -- callbacks --------------------------------------------------------------------------


def _run_sync(tap: Tap, state: StreamState, due: list[Due], raising: bool) -> None:
    for d in due:
        try:
            result = d.function(d.argument)
        except Exception as e:
            error = tap._callback_failed(state, d, e)
            if raising and tap.callback_errors == "raise":
                raise error from e
            continue
        if _awaitable_closed(result):
            error = tap._callback_failed(state, d, None, async_in_sync=True)
            if raising and tap.callback_errors == "raise":
                raise error


async def _run_async(tap: Tap, state: StreamState, due: list[Due], raising: bool) -> None:
    for d in due:
        try:
            result = d.function(d.argument)
            if inspect.isawaitable(result):
                await result
        except Exception as e:
            error = tap._callback_failed(state, d, e)
            if raising and tap.callback_errors == "raise":
                raise error from e


def _end_sync(tap: Tap, state: StreamState, request: Any) -> None:
    if tap.on_end is None:
        return
    try:
        result = tap.on_end(state, request)
    except Exception as e:
        tap._callback_failed(state, None, e)
        return
    if _awaitable_closed(result):
        tap._callback_failed(state, None, None, async_in_sync=True)


async def _end_async(tap: Tap, state: StreamState, request: Any) -> None:
    if tap.on_end is None:
        return
    try:
        result = tap.on_end(state, request)
        if inspect.isawaitable(result):
            await result
    except Exception as e:
        tap._callback_failed(state, None, e)


# -- the byte streams handed to the client ----------------------------------------------


class _TapStream(_StreamBase):
    """The response body the client reads: the upstream's, watched."""

    def __init__(self, inner: Any, watch: _Watch) -> None:
        self.inner = inner
        self.watch = watch
        self._closed = False
        self._source: Iterator[bytes] | None = None

    def __iter__(self) -> Iterator[bytes]:
        # Iterated again (the openai SDK drains a response after [DONE]), it goes on from where
        # the upstream is, once: every byte is read and counted once.
        if self._closed or self.watch.finished:
            return
        if self._source is None:
            self._source = iter(self.inner)
        watch, state = self.watch, self.watch.state
        try:
            for raw in self._source:
                if state.stopped is None:
                    out = watch.feed(raw)
                else:
                    out = b""  # stopped from outside (Tap.stop) since the last chunk
                if state.stopped is not None:
                    yield self._stop(out)
                    return
                if state.due:
                    _run_sync(watch.tap, state, state.take_due(), raising=True)
                if out:
                    yield out
            rest = watch.flush()
            if state.stopped is not None:  # the last events, held till the end, crossed
                yield self._stop(rest)
                return
            self._end()
            if rest:
                yield rest
        except BaseException as e:
            watch.failed(e)
            raise
        finally:
            self.close()

    def _stop(self, out: bytes) -> bytes:
        """Close first, then act: the upstream, then the callbacks, then on_end; then the normal end."""
        watch, state = self.watch, self.watch.state
        self._close_inner()
        try:
            _run_sync(watch.tap, state, state.take_due(), raising=True)
        finally:
            tail = watch.tail()
            self._end()
        return out + tail

    def _close_inner(self) -> None:
        if not self._closed:
            self._closed = True
            self.inner.close()

    def _end(self) -> None:
        if self.watch.finish():
            self.watch.state.end()
            _end_sync(self.watch.tap, self.watch.state, self.watch.request)

    def close(self) -> None:
        try:
            self._close_inner()
        finally:
            self._end()


class _AsyncTapStream(_AsyncStreamBase):
    """The async response body the client reads: the upstream's, watched."""

    def __init__(self, inner: Any, watch: _Watch) -> None:
        self.inner = inner
        self.watch = watch
        self._closed = False
        self._source: AsyncIterator[bytes] | None = None

    async def __aiter__(self) -> AsyncIterator[bytes]:
        if self._closed or self.watch.finished:  # iterated again: see _TapStream
            return
        if self._source is None:
            self._source = self.inner.__aiter__()
        watch, state = self.watch, self.watch.state
        try:
            async for raw in self._source:
                if state.stopped is None:
                    out = watch.feed(raw)
                else:
                    out = b""
                if state.stopped is not None:
                    yield await self._stop(out)
                    return
                if state.due:
                    await _run_async(watch.tap, state, state.take_due(), raising=True)
                if out:
                    yield out
            rest = watch.flush()
            if state.stopped is not None:
                yield await self._stop(rest)
                return
            await self._end()
            if rest:
                yield rest
        except BaseException as e:
            watch.failed(e)
            raise

    async def _stop(self, out: bytes) -> bytes:
        watch, state = self.watch, self.watch.state
        await self._close_inner()
        try:
            await _run_async(watch.tap, state, state.take_due(), raising=True)
        finally:
            tail = watch.tail()
            await self._end()
        return out + tail

    async def _close_inner(self) -> None:
        if not self._closed:
            self._closed = True
            await self.inner.aclose()

    async def _end(self) -> None:
        if self.watch.finish():
            self.watch.state.end()
            await _end_async(self.watch.tap, self.watch.state, self.watch.request)

    async def aclose(self) -> None:
        try:
            await self._close_inner()
        finally:
            await self._end()
