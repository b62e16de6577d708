"""Wrap a stream, pass every chunk through unchanged, and keep the live statistics.

:func:`monitor` wraps an openai ``Stream`` (chat, completions, responses), an
``httpx.Response``, or any iterable of chunks, dicts or raw SSE lines/bytes;
:func:`amonitor` does the same for ``AsyncStream`` and async iterables. All the
logic is in :class:`~livepplx.state.StreamState`; the two wrappers only move
chunks and close the source, so sync and async cannot drift apart.

>>> from livepplx.recordings import recording_path
>>> with monitor(open(recording_path("llamacpp-python-chat"), "rb"), stop_above=8.0) as m:
...     for line in m:
...         pass
>>> m.stopped, round(m.ppl, 2)
(Stop(reason='ppl above 8', choice=0, at_token=11), 8.35)
"""

from __future__ import annotations

import inspect
from collections import deque
from typing import (
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

from .errors import StreamErrorEvent
from .state import Stop, StreamState
from .stats import ChoiceStats
from .triggers import TriggerEvent

__all__ = ["monitor", "amonitor", "MonitoredStream", "AsyncMonitoredStream"]

T = TypeVar("T")


def _is_response(stream: Any) -> bool:
    """An httpx (or httpx2) response: read its bytes, close the response itself."""
    return hasattr(stream, "iter_bytes") and hasattr(stream, "status_code") and not hasattr(stream, "__iter__")


class _Monitored:
    """What the sync and async wrappers share: the state, and the rules after each chunk."""

    def __init__(self, stream: Any, state: StreamState) -> None:
        #: the wrapped stream, as given
        self.stream = stream
        #: the live statistics and trigger state (I/O-free)
        self.state = state
        self._closed = False
        self._head: deque[Any] = deque()  # chunks read ahead by prefetch(), served first

    def _after_chunk(self) -> bool:
        """True when iteration should end now; raises on a server's error event."""
        if self.state.stopped is not None:
            return True
        if self.state.error is not None:
            raise StreamErrorEvent(f"the server sent an error mid-stream: {self.state.error}")
        return False

    def _failed(self, error: BaseException) -> None:
        # Keep the statistics and say what ended the stream; the error still reaches the caller.
        # Ctrl-C and generator cleanup are not errors of the stream.
        if self.state.error is None and isinstance(error, Exception):
            self.state.error = str(error) or type(error).__name__

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

    def __init__(self, stream: Iterable[T], state: StreamState) -> None:
        super().__init__(stream, state)
        self._source: Iterable[Any] = cast(Any, stream).iter_bytes() if _is_response(stream) else stream
        self._chunks: Generator[T, None, None] = self._iterate()

    def _iterate(self) -> Generator[T, None, None]:
        try:
            for chunk in self._source:
                self.state.handle(chunk)
                yield chunk
                if self._after_chunk():
                    return
            self.state.finish()
            self._after_chunk()
        except BaseException as e:
            self._failed(e)
            raise
        finally:
            self.close()

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
                close()
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

    def __init__(self, stream: AsyncIterable[T], state: StreamState) -> None:
        super().__init__(stream, state)
        self._source: AsyncIterable[Any] = cast(Any, stream).aiter_bytes() if _is_response(stream) else stream
        self._chunks: AsyncGenerator[T, None] = self._iterate()

    async def _iterate(self) -> AsyncGenerator[T, None]:
        try:
            async for chunk in self._source:
                self.state.handle(chunk)
                yield chunk
                if self._after_chunk():
                    return
            self.state.finish()
            self._after_chunk()
        except BaseException as e:
            self._failed(e)
            raise
        finally:
            await self.close()

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


def monitor(stream: Iterable[T], **options: Any) -> MonitoredStream[T]:
    """Wrap a stream and watch its perplexity live; the chunks pass through unchanged.

    Args:
        stream: an openai ``Stream``, an ``httpx.Response``, or any iterable of chunks
            (SDK objects, dicts), raw SSE/NDJSON ``bytes``, or text lines.
        **options: those of :class:`~livepplx.state.StreamState`: ``window``,
            ``ema_alpha``, ``group_window``, ``vocab_size``, ``text_limit``,
            ``triggers``, ``stop_above``, ``min_tokens`` (default 8),
            ``on_missing_logprobs`` (default ``"raise"``), ``missing_after``, ``request``.

    Stopping (by ``stop_above``, a trigger with ``stop=True`` or ``escalate``, or
    :meth:`MonitoredStream.stop`) closes the source and ends iteration without an
    error; the statistics stay readable. In an ``n > 1`` stream a stop stops every
    choice: they share one HTTP response.
    """
    return MonitoredStream(stream, StreamState(**options))


def amonitor(stream: AsyncIterable[T], **options: Any) -> AsyncMonitoredStream[T]:
    """:func:`monitor` for an ``AsyncStream``, an ``httpx.Response`` read asynchronously,
    or any async iterable."""
    return AsyncMonitoredStream(stream, StreamState(**options))
