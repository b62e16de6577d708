"""Wrap a stream, pass every chunk through unchanged, and keep the live statistics.

:func:`monitor` wraps an openai ``Stream`` (chat, completions, responses), an
``httpx.Response``, or any iterable of chunks, dicts or raw SSE lines/bytes;
:func:`amonitor` does the same for ``AsyncStream`` and async iterables. All the
logic is in :class:`~livepplx.core.state.StreamState`; the two wrappers only move
chunks, close the source and run what the state made due, so sync and async cannot
drift apart.

>>> from livepplx.recordings import recording_path
>>> with monitor(open(recording_path("llamacpp-python-chat"), "rb"), stop_above=8.0) as m:
...     for line in m:
...         pass
>>> m.stopped, round(m.ppl, 2)
(Stop(reason='ppl above 8', choice=0, at_token=11), 8.35)

Close first, then act: when a trigger stops the stream, the wrapper closes the source
(the HTTP response, so the server stops generating) before any callback runs, then runs
every ``call`` of that chunk, then every ``escalate``, then hands on the chunk that
crossed and ends. A trigger that does not stop has its ``call`` run after its chunk was
counted, before that chunk is handed on. Under :func:`amonitor` an ``async def`` callback
is awaited.

Timeouts: the HTTP client's own timeout bounds each socket read (the openai SDK's
default is 600 s, retried twice); ``idle_timeout`` bounds the time between two chunks
of the stream, whatever the client, and stops the stream with the reason
``"idle timeout"`` and :attr:`~livepplx.core.state.StreamState.error` set.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import math
import queue
import threading
import time
from collections import deque
from typing import (
    TYPE_CHECKING,
    Any,
    AsyncGenerator,
    AsyncIterable,
    AsyncIterator,
    Callable,
    Generator,
    Generic,
    Iterable,
    Iterator,
    TypeVar,
    cast,
)

from .core.errors import CallbackError, LivepplxError, NotAStreamError, ServerStreamError, StreamFormatError
from .core.state import Due, MonitorOptions, Stop, StreamState
from .core.stats import ChoiceStats
from .core.triggers import TriggerEvent

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from .core.state import MonitorKeywords

__all__ = ["monitor", "amonitor", "MonitoredStream", "AsyncMonitoredStream"]

T = TypeVar("T")


def _is_response(stream: Any) -> bool:
    """An httpx (or httpx2) response: read its bytes, close the response itself."""
    return hasattr(stream, "iter_bytes") and hasattr(stream, "status_code") and not hasattr(stream, "__iter__")


def _check_is_stream(stream: Any) -> None:
    """A whole response is not a stream: iterating a dict or a pydantic model gives its keys."""
    whole = isinstance(stream, dict) or (
        hasattr(stream, "model_dump") and any(hasattr(stream, name) for name in ("choices", "output", "candidates"))
        and not hasattr(stream, "__next__") and not hasattr(stream, "__anext__"))
    if whole:
        kind = stream.get("object") if isinstance(stream, dict) else getattr(stream, "object", None)
        raise NotAStreamError(
            f"monitor() reads a stream, and this is a whole {kind or type(stream).__name__} response: "
            "score it with livepplx.score(response), or ask for stream=True"
        )


def _check_idle_timeout(seconds: float | None) -> None:
    if seconds is not None and (isinstance(seconds, bool) or not isinstance(seconds, (int, float))
                                or not 0 < seconds < math.inf):
        raise ValueError(f"idle_timeout must be a positive number of seconds, or None; got {seconds!r}")


class _IdleTimeout(Exception):
    """No chunk came within the idle timeout."""


def _idle_limited(source: Iterable[Any], seconds: float, progress: Callable[[], int]) -> Iterator[Any]:
    """Iterate ``source`` on a helper thread, one item at a time (never ahead of the
    consumer), raising :class:`_IdleTimeout` when ``progress()`` (the events the state has
    read) has not grown for ``seconds``: bytes that complete no event (keep-alive comments,
    a trickle) do not count as life.

    A blocking read cannot be interrupted from its own thread; closing the source from
    this one (the wrapper does) makes the helper's read fail, and the thread ends.
    """
    wanted = threading.Semaphore(0)
    results: queue.SimpleQueue[tuple[int, Any]] = queue.SimpleQueue()
    it = iter(source)
    finished = threading.Event()

    def pump() -> None:
        while True:
            wanted.acquire()
            if finished.is_set():
                # The consumer left while this thread held the source: a generator can only
                # be closed by the thread not running it, so its cleanup (an embedded model's
                # generation frees the model there) runs here.
                close = getattr(it, "close", None)
                if close is not None:
                    with contextlib.suppress(Exception):
                        close()
                return
            try:
                results.put((0, next(it)))
            except StopIteration:
                results.put((1, None))
                return
            except BaseException as e:  # handed over to the consumer's thread
                results.put((2, e))
                return

    threading.Thread(target=pump, daemon=True, name="livepplx-idle-reader").start()
    seen, deadline = progress(), time.monotonic() + seconds
    try:
        while True:
            now = progress()
            if now != seen:
                seen, deadline = now, time.monotonic() + seconds
            wanted.release()
            try:
                kind, item = results.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise _IdleTimeout from None
            if kind == 1:
                return
            if kind == 2:
                raise item
            yield item
    finally:
        finished.set()
        wanted.release()


async def _aidle_limited(source: AsyncIterable[Any], seconds: float, progress: Callable[[], int]) -> AsyncIterator[Any]:
    """:func:`_idle_limited` for an async source: no thread, ``asyncio.wait_for``."""
    it = source.__aiter__()
    seen, deadline = progress(), time.monotonic() + seconds
    while True:
        now = progress()
        if now != seen:
            seen, deadline = now, time.monotonic() + seconds
        try:
            item = await asyncio.wait_for(it.__anext__(), max(0.0, deadline - time.monotonic()))
        except StopAsyncIteration:
            return
        except asyncio.TimeoutError:
            raise _IdleTimeout from None
        yield item


def _named(error: BaseException) -> LivepplxError | None:
    """The named error for what a client's own decoding raised mid-stream, or None to
    let it through (transport errors, Ctrl-C: the caller's client already names them)."""
    kind = type(error)
    if kind.__name__ == "APIError" and kind.__module__.startswith("openai"):
        # The openai SDK raises its base APIError for an error event in the stream.
        return ServerStreamError(f"the server sent an error mid-stream: {error}")
    if isinstance(error, (ValueError, RecursionError)) and not isinstance(error, LivepplxError):
        # JSONDecodeError, UnicodeDecodeError, a number too long to read, nesting too deep
        return StreamFormatError(f"not a stream livepplx can read: the client could not decode it "
                                 f"({kind.__name__}: {str(error)[:200]})")
    return None


class _Monitored:
    """What the sync and async wrappers share: the state, and the rules around each chunk."""

    def __init__(self, stream: Any, state: StreamState, idle_timeout: float | None) -> None:
        _check_is_stream(stream)
        _check_idle_timeout(idle_timeout)
        #: the wrapped stream, as given
        self.stream = stream
        #: the live statistics and trigger state (I/O-free)
        self.state = state
        self.idle_timeout = idle_timeout
        self._closed = False
        self._head: deque[Any] = deque()  # chunks read ahead by prefetch(), served first

    def _events(self) -> int:
        """What counts as life for the idle timeout: the events (chunks) the state has read."""
        return self.state.chunks

    def _check_server_error(self) -> None:
        if self.state.server_error is not None:
            raise ServerStreamError(f"the server sent an error mid-stream: {self.state.server_error}")

    def _ended(self) -> None:
        """The source ran out: judge the whole stream; raise what the caller must see."""
        self.state.finish()
        self._check_server_error()
        if self.state.unreadable:
            raise StreamFormatError(self.state.error)
        # A truncated stream is recorded (error, truncated), not raised: the transport
        # already ended the iteration, as the SDKs do, and the statistics stand.

    def _idle(self) -> None:
        seconds = self.idle_timeout
        self.state.stop("idle timeout")
        self.state.fail(f"no chunk came for {seconds:g} s (idle_timeout); the statistics cover what was read")

    def _failed(self, error: BaseException) -> None:
        # Keep the statistics and say what ended the stream; the error still reaches the caller.
        # Ctrl-C and generator cleanup are not errors of the stream.
        if isinstance(error, LivepplxError):
            self.state.fail(str(error))
        elif isinstance(error, Exception):  # a transport's or the SDK's error: say which, and when
            self.state.fail(f"the stream failed after {self.state.total_tokens} tokens: "
                            f"{type(error).__name__}: {error}".rstrip(": "))

    def _callback_error(self, due: Due, error: BaseException) -> CallbackError:
        message = f"the {due.kind} of trigger {due.trigger.name!r} raised {type(error).__name__}: {error}"
        self.state.fail(message)
        return CallbackError(message)

    def _not_awaited(self, due: Due, result: Any) -> CallbackError:
        close = getattr(result, "close", None)
        if close is not None:
            close()  # a coroutine never awaited would warn at garbage collection
        message = (f"the {due.kind} of trigger {due.trigger.name!r} is async: use amonitor() or astream(), "
                   "which await it, or give a plain function")
        self.state.fail(message)
        return CallbackError(message)

    def stop(self, reason: str = "stopped by the caller", choice: int = 0) -> None:
        """Stop at the next chunk: the source is closed and iteration ends without an error."""
        self.state.stop(reason, choice)

    # -- the live statistics ------------------------------------------------------------

    @property
    def ppl(self) -> float:
        """Choice 0's running perplexity (NaN before its first token)."""
        return self.state.ppl

    @property
    def tokens(self) -> int:
        """Choice 0's token count."""
        return self.state.tokens

    @property
    def stopped(self) -> Stop | None:
        """``None``, or why and where the stream was stopped."""
        return self.state.stopped

    @property
    def choices(self) -> dict[int, ChoiceStats]:
        """Statistics by choice index."""
        return self.state.choices

    @property
    def events(self) -> list[TriggerEvent]:
        """The latest trigger events, newest last."""
        return list(self.state.events)

    @property
    def error(self) -> str | None:
        return self.state.error

    def choice(self, index: int = 0) -> ChoiceStats:
        return self.state.choice(index)

    def text(self, index: int = 0) -> str:
        return self.state.text(index)

    def summary(self) -> dict[str, Any]:
        """The same JSON-ready report as ``livepplx replay --json``."""
        return self.state.summary()


class MonitoredStream(_Monitored, Generic[T]):
    """A monitored synchronous stream; iterate it as you would the original.

    A context manager: leaving the ``with`` block (also after a ``break``) closes the
    source, which closes the HTTP response so the server stops generating.
    """

    def __init__(self, stream: Iterable[T], state: StreamState, idle_timeout: float | None = None) -> None:
        super().__init__(stream, state, idle_timeout)
        source: Iterable[Any] = cast(Any, stream).iter_bytes() if _is_response(stream) else stream
        if isinstance(source, (bytes, bytearray, str)):
            source = cast(Iterable[Any], (source,))  # a whole capture: one chunk, not its characters one by one
        self._source = _idle_limited(source, idle_timeout, self._events) if idle_timeout is not None else source
        self._chunks: Generator[T, None, None] = self._iterate()

    def _iterate(self) -> Generator[T, None, None]:
        state = self.state
        try:
            try:
                for chunk in self._source:
                    state.handle(chunk)
                    if state.stopped is not None:
                        self.close()  # close first: the server stops before any callback runs
                        self._run(state.take_due())
                        yield chunk
                        return
                    if state.due:
                        self._run(state.take_due())
                    if state.server_error is not None:  # _check_server_error, inline: once a chunk
                        self._check_server_error()
                    yield chunk
                    if state.stopped is not None:  # stop() was called while the caller held the chunk
                        return
            except _IdleTimeout:
                self._idle()
                return
            self._ended()
        except BaseException as e:
            named = _named(e)
            self._failed(named or e)
            if named is not None:
                raise named from e
            raise
        finally:
            self.close()

    def _run(self, due: list[Due]) -> None:
        for d in due:
            try:
                result = d.function(d.argument)
            except Exception as e:
                raise self._callback_error(d, e) from e
            if inspect.isawaitable(result):
                raise self._not_awaited(d, result)

    def __iter__(self) -> Iterator[T]:
        return self

    def __next__(self) -> T:
        if self._head:
            return self._head.popleft()
        return next(self._chunks)

    def prefetch(self, until: Callable[[_Monitored], bool]) -> None:
        """Read ahead (keeping the chunks for iteration) until ``until(self)`` or the end."""
        while not until(self):
            try:
                self._head.append(next(self._chunks))
            except StopIteration:
                return

    def close(self) -> None:
        """Close the source (the HTTP response); idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            close = getattr(self.stream, "close", None)
            if close is not None:
                try:
                    close()
                except ValueError:
                    # A generator still running on the idle reader's thread cannot be
                    # closed from here; that thread ends when the generator next yields.
                    if self.idle_timeout is None:
                        raise
        finally:
            self.state.end()

    def __enter__(self) -> MonitoredStream[T]:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._chunks.close()  # runs the generator's cleanup if it is suspended
        self.close()


class AsyncMonitoredStream(_Monitored, Generic[T]):
    """A monitored asynchronous stream; ``async for`` it as you would the original.

    An async context manager: leaving ``async with`` (also after a ``break``) awaits
    the source's close, so the server stops generating.
    """

    def __init__(self, stream: AsyncIterable[T], state: StreamState, idle_timeout: float | None = None) -> None:
        if not _is_response(stream) and not hasattr(stream, "__aiter__"):
            raise NotAStreamError(f"amonitor() reads an async iterable (an AsyncStream, an async generator), not "
                                  f"{type(stream).__name__}: use monitor() for a plain iterable")
        super().__init__(stream, state, idle_timeout)
        source: AsyncIterable[Any] = cast(Any, stream).aiter_bytes() if _is_response(stream) else stream
        self._source = _aidle_limited(source, idle_timeout, self._events) if idle_timeout is not None else source
        self._chunks: AsyncGenerator[T, None] = self._iterate()

    async def _iterate(self) -> AsyncGenerator[T, None]:
        state = self.state
        try:
            try:
                async for chunk in self._source:
                    state.handle(chunk)
                    if state.stopped is not None:
                        await self.close()  # close first: the server stops before any callback runs
                        await self._run(state.take_due())
                        yield chunk
                        return
                    if state.due:
                        await self._run(state.take_due())
                    self._check_server_error()
                    yield chunk
                    if state.stopped is not None:
                        return
            except _IdleTimeout:
                self._idle()
                return
            self._ended()
        except BaseException as e:
            named = _named(e)
            self._failed(named or e)
            if named is not None:
                raise named from e
            raise
        finally:
            await self.close()

    async def _run(self, due: list[Due]) -> None:
        for d in due:
            try:
                result = d.function(d.argument)
                if inspect.isawaitable(result):
                    await result
            except Exception as e:
                raise self._callback_error(d, e) from e

    def __aiter__(self) -> AsyncIterator[T]:
        return self

    async def __anext__(self) -> T:
        if self._head:
            return self._head.popleft()
        return await self._chunks.__anext__()

    async def prefetch(self, until: Callable[[_Monitored], bool]) -> None:
        """Read ahead (keeping the chunks for iteration) until ``until(self)`` or the end."""
        while not until(self):
            try:
                self._head.append(await self._chunks.__anext__())
            except StopAsyncIteration:
                return

    async def close(self) -> None:
        """Close the source (``AsyncStream.close()``, ``aclose()``); idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            close = getattr(self.stream, "aclose", None) or getattr(self.stream, "close", None)
            if close is not None:
                result = close()
                if inspect.isawaitable(result):
                    await result
        finally:
            self.state.end()

    async def __aenter__(self) -> AsyncMonitoredStream[T]:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._chunks.aclose()
        await self.close()


def monitor(
    stream: Iterable[T], options: MonitorOptions | None = None, *, idle_timeout: float | None = None,
    request: dict[str, Any] | None = None, **keywords: Unpack[MonitorKeywords],
) -> MonitoredStream[T]:
    """Wrap a stream and watch its perplexity live; the chunks pass through unchanged.

    Args:
        stream: an openai ``Stream``, an ``httpx.Response``, or any iterable of chunks
            (SDK objects, dicts), raw SSE/NDJSON ``bytes``, or text lines.
        options: a :class:`~livepplx.core.state.MonitorOptions`; or give its fields as keywords:
            ``window``, ``ema_alpha``, ``group_window``, ``vocab_size``, ``text_limit``,
            ``triggers``, ``stop_above``, ``min_tokens`` (default 8),
            ``on_missing_logprobs`` (default ``"raise"``), ``missing_after``,
            ``max_choices``, ``listeners``.
        idle_timeout: seconds to wait for the next chunk before stopping the stream
            (default None: the HTTP client's own read timeout is the only bound).
        request: the request the stream was opened with, handed to escalations.

    Stopping (by ``stop_above``, a trigger with ``stop=True`` or ``escalate``, or
    :meth:`MonitoredStream.stop`) closes the source and ends iteration without an
    error; the statistics stay readable. In an ``n > 1`` stream a stop stops every
    choice: they share one HTTP response.

    Raises (named, with the statistics so far kept): :class:`~livepplx.core.errors.NoLogprobsError`,
    :class:`~livepplx.core.errors.ServerStreamError`, :class:`~livepplx.core.errors.StreamFormatError`
    (not a stream livepplx can read), :class:`~livepplx.core.errors.CallbackError`,
    :class:`~livepplx.core.errors.NotAStreamError` (a whole response: use :func:`livepplx.score`).
    A stream that ends without its end is not raised: ``m.state.truncated`` and ``m.error`` say so.
    """
    return MonitoredStream(stream, StreamState(options, request=request, **keywords), idle_timeout)


def amonitor(
    stream: AsyncIterable[T], options: MonitorOptions | None = None, *, idle_timeout: float | None = None,
    request: dict[str, Any] | None = None, **keywords: Unpack[MonitorKeywords],
) -> AsyncMonitoredStream[T]:
    """:func:`monitor` for an ``AsyncStream``, an ``httpx.Response`` read asynchronously,
    or any async iterable; ``async def`` callbacks and escalations are awaited."""
    return AsyncMonitoredStream(stream, StreamState(options, request=request, **keywords), idle_timeout)
