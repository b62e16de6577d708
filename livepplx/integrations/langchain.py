"""LangChain and LangGraph: the live perplexity of every chat model run, from a callback handler.

LangChain's ``ChatOpenAI(logprobs=True, top_logprobs=k)`` hands each streamed token's
logprobs to its callbacks (``chunk.generation_info["logprobs"]``, the same
``{"content": [...]}`` the server sent, choice 0 only). :class:`LivepplxCallbackHandler`
reads them into one :class:`~livepplx.core.state.StreamState` per run (per chat model call:
a LangGraph agent makes one per step), so the statistics are those of the server's
stream, token by token::

    from langchain_openai import ChatOpenAI
    from livepplx.integrations.langchain import LivepplxCallbackHandler, StreamStopped

    llm = ChatOpenAI(model="gemma", base_url=URL, logprobs=True, top_logprobs=5, streaming=True)
    handler = LivepplxCallbackHandler(stop_above=20)
    try:
        for chunk in llm.stream("Name three fruits.", config={"callbacks": [handler]}):
            print(chunk.content, end="")
    except StreamStopped as stop:          # the run crossed: escalate, retry, flag
        print(stop.stop, stop.state.ppl)
    handler.latest.summary()               # or handler.states[run_id]

**Stopping.** LangChain swallows a callback's exception unless the handler says
``raise_error = True``; this one does, and raises :class:`StreamStopped` when a trigger
stops the run: LangChain's read loop ends, and with it ``ChatOpenAI``'s HTTP response, so the
server stops generating; the chunk that crossed is counted but never handed on. The
triggers' callbacks run from ``on_llm_error``. When exactly the response closes is
langchain-core's (1.x) to say: it calls the token callbacks from a loop over the model's
stream, so with ``invoke()`` the response is closed as the exception leaves that loop, before
``on_llm_error`` (close first, then act); with ``stream()`` and the async methods the loop is
closed just after ``on_llm_error`` (an async generator is closed by the event loop). Code that
must run after the server stopped (a follow-up request to the same server) belongs where
:class:`StreamStopped` is caught, or in ``llm.with_fallbacks([bigger],
exceptions_to_handle=(StreamStopped,))``; or put the tap under ``ChatOpenAI(http_client=...)``
(:mod:`livepplx.integrations.tap`), which closes first on every path and ends the stream as a
normal end (``finish_reason: "length"``).

**Without streaming.** ``llm.invoke()`` without ``streaming=True`` calls no token callback;
the whole answer's logprobs come in ``on_llm_end`` and are scored there, once.

**What is read.** A ``ChatGenerationChunk`` is read as an OpenAI chat chunk (its text, its
``logprobs``, its ``finish_reason``), a ``GenerationChunk`` of a completion model as a
completions chunk. Text without logprobs (a model that does not send them, or
``logprobs=True`` forgotten) is :class:`~livepplx.core.errors.NoLogprobsError`; a chunk of any
other kind is not a stream livepplx can read (:class:`~livepplx.core.errors.StreamFormatError`
when the run ends), never "0 tokens". The LangChain Responses path
(``use_responses_api=True``) streams no logprobs.

Triggers' callbacks run synchronously (LangChain calls this handler inline, also from
``ainvoke``/``astream``): an ``async def`` callback is a :class:`~livepplx.core.errors.CallbackError`.
"""

from __future__ import annotations

import inspect
import threading
from collections import OrderedDict
from typing import TYPE_CHECKING, Any, Sequence
from uuid import UUID

from ..core.errors import CallbackError, LivepplxError, ServerStreamError, StreamFormatError
from ..core.state import Due, MonitorOptions, Stop, StreamState, make_options

try:
    from langchain_core.callbacks import BaseCallbackHandler
    from langchain_core.outputs import ChatGenerationChunk, GenerationChunk, LLMResult

    _MISSING: ImportError | None = None
except ImportError as e:  # pragma: no cover - the module imports without the extra; using it says what to install
    _MISSING = ImportError(f"livepplx.integrations.langchain needs langchain-core: pip install 'livepplx[langchain]' ({e})")
    if not TYPE_CHECKING:
        BaseCallbackHandler = ChatGenerationChunk = GenerationChunk = LLMResult = type("Missing", (), {})

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from ..core.state import MonitorKeywords

__all__ = ["LivepplxCallbackHandler", "StreamStopped", "as_openai_chunk"]


class StreamStopped(LivepplxError):
    """A trigger stopped a LangChain run; raised from the callback so the stream ends.

    The HTTP response is closed by the time the caller sees it; the statistics stay readable.
    """

    def __init__(self, run_id: UUID, state: StreamState) -> None:
        stop = state.stopped
        assert stop is not None  # raised only for a stopped state
        super().__init__(f"stopped at token {stop.at_token}: {stop.reason} (ppl {state.ppl:.4g})")
        #: the LangChain run (one chat model call)
        self.run_id = run_id
        #: the run's statistics
        self.state = state
        #: why and where it stopped
        self.stop: Stop = stop


def _field(obj: Any, name: str) -> Any:
    return obj.get(name) if isinstance(obj, dict) else None


def as_openai_chunk(chunk: Any, token: Any = "") -> Any:
    """The OpenAI-shaped chunk a LangChain generation chunk stands for, as livepplx reads it.

    A ``ChatGenerationChunk`` becomes a chat chunk and a ``GenerationChunk`` (a completion
    model's) a completions chunk, each with its text, ``logprobs`` and ``finish_reason``,
    taken as they are; anything else is returned unchanged (livepplx cannot read it and
    says so).
    """
    if isinstance(chunk, ChatGenerationChunk):
        info = chunk.generation_info or {}
        meta = getattr(chunk.message, "response_metadata", None) or {}
        logprobs = info.get("logprobs", _field(meta, "logprobs"))
        finish = info.get("finish_reason", _field(meta, "finish_reason"))
        content = chunk.message.content
        text = content if isinstance(content, str) else chunk.text
        return {"object": "chat.completion.chunk",
                "choices": [{"index": 0, "delta": {"content": text}, "logprobs": logprobs, "finish_reason": finish}]}
    if isinstance(chunk, GenerationChunk):
        info = chunk.generation_info or {}
        return {"object": "text_completion",
                "choices": [{"index": 0, "text": chunk.text, "logprobs": info.get("logprobs"),
                             "finish_reason": info.get("finish_reason")}]}
    return chunk if chunk is not None else {"langchain_token": token}


def _whole_answer(response: LLMResult) -> Any:
    """The first generation of a whole (non-streamed) answer, OpenAI-shaped, or None."""
    if not response.generations or not response.generations[0]:
        return None
    generation = response.generations[0][0]
    info = generation.generation_info or {}
    message = getattr(generation, "message", None)
    if message is not None:
        content = message.content
        return {"object": "chat.completion",
                "choices": [{"index": 0, "message": {"content": content if isinstance(content, str) else generation.text},
                             "logprobs": info.get("logprobs"), "finish_reason": info.get("finish_reason")}]}
    return {"object": "text_completion",
            "choices": [{"index": 0, "text": generation.text, "logprobs": info.get("logprobs"),
                         "finish_reason": info.get("finish_reason")}]}


class LivepplxCallbackHandler(BaseCallbackHandler):
    """Watch every chat model run it is given to: live statistics per run id, triggers, a stop.

    Args:
        options: a :class:`~livepplx.core.state.MonitorOptions`, or its fields as keywords
            (``stop_above=20``, ``triggers=[...]``, ``on_missing_logprobs="warn"``, ...):
            the same for every run.
        keep: how many runs' statistics are kept, the newest (default 100).

    Give it where LangChain takes callbacks: ``config={"callbacks": [handler]}`` on a call
    or a LangGraph graph (every chat model inside is watched), or ``ChatOpenAI(callbacks=[handler])``.
    """

    #: a stop must reach LangChain's read loop: without this, its callback manager logs
    #: the exception and goes on reading
    raise_error = True
    #: called in the caller's thread and event loop, never on an executor
    run_inline = True

    def __init__(self, options: MonitorOptions | None = None, *, keep: int = 100,
                 **keywords: Unpack[MonitorKeywords]) -> None:
        if _MISSING is not None:
            raise _MISSING
        super().__init__()
        if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
            raise ValueError(f"keep must be a whole number >= 1, got {keep!r}")
        #: the options every run is watched with (checked now, not at the first run)
        self.options = make_options(options, dict(keywords))
        self.keep = keep
        #: each run's statistics by run id, oldest first (at most ``keep``)
        self.states: OrderedDict[UUID, StreamState] = OrderedDict()
        self._lock = threading.Lock()  # LangChain's batch() calls from several threads

    # -- reading ---------------------------------------------------------------------------

    @property
    def latest(self) -> StreamState | None:
        """The statistics of the run that started last (None before any)."""
        with self._lock:
            return next(reversed(self.states.values()), None)

    def state(self, run_id: UUID) -> StreamState:
        """The statistics of one run (KeyError: not a run this handler saw, or forgotten)."""
        return self.states[run_id]

    # -- LangChain's callbacks ---------------------------------------------------------------

    def _start(self, run_id: UUID, kwargs: dict[str, Any]) -> None:
        params = kwargs.get("invocation_params")
        state = StreamState(self.options, request=params if isinstance(params, dict) else None)
        with self._lock:
            self.states[run_id] = state
            while len(self.states) > self.keep:
                self.states.popitem(last=False)

    def on_chat_model_start(self, serialized: dict[str, Any], messages: list[list[Any]], *, run_id: UUID,
                            **kwargs: Any) -> None:
        self._start(run_id, kwargs)

    def on_llm_start(self, serialized: dict[str, Any], prompts: list[str], *, run_id: UUID, **kwargs: Any) -> None:
        self._start(run_id, kwargs)

    def on_llm_new_token(self, token: str | list[str | dict[str, Any]], *,
                         chunk: GenerationChunk | ChatGenerationChunk | None = None, run_id: UUID,
                         parent_run_id: UUID | None = None, tags: list[str] | None = None, **kwargs: Any) -> None:
        state = self.states.get(run_id)
        if state is None or state.stopped is not None:
            return  # a run started before this handler was attached, or one already stopped
        state.handle(as_openai_chunk(chunk, token))
        if state.stopped is not None:
            # LangChain's read loop ends on this exception and closes the response; the
            # callbacks run in on_llm_error, after that close.
            raise StreamStopped(run_id, state)
        if state.due:
            _run(state, state.take_due())
        if state.server_error is not None:
            raise ServerStreamError(f"the server sent an error mid-stream: {state.server_error}")

    def on_llm_end(self, response: LLMResult, *, run_id: UUID, **kwargs: Any) -> None:
        state = self.states.get(run_id)
        if state is None:
            return
        try:
            if state.chunks == 0:
                # Not streamed: the whole answer, scored once (a streamed run's merged
                # result would count every token twice).
                whole = _whole_answer(response)
                if whole is not None:
                    state.handle(whole)
                    if state.due:
                        _run(state, state.take_due())
            state.finish()
            if state.format is None and state.chunks:
                raise StreamFormatError(state.error)
        finally:
            state.end()

    def on_llm_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        state = self.states.get(run_id)
        if state is None:
            return
        try:
            if isinstance(error, StreamStopped) and error.state is state:
                _run(state, state.take_due())  # the response is closed by now: close first, then act
            elif isinstance(error, LivepplxError):
                state.fail(str(error))
            elif isinstance(error, Exception):
                state.fail(f"the stream failed after {state.total_tokens} tokens: {type(error).__name__}: {error}")
        finally:
            state.end()


def _run(state: StreamState, due: Sequence[Due]) -> None:
    """Run what the triggers made due, in order; a failure is a CallbackError (the original is its cause)."""
    for d in due:
        try:
            result = d.function(d.argument)
        except Exception as e:
            message = f"the {d.kind} of trigger {d.trigger.name!r} raised {type(e).__name__}: {e}"
            state.fail(message)
            raise CallbackError(message) from e
        if inspect.isawaitable(result):
            close = getattr(result, "close", None)
            if close is not None:
                close()  # never awaited: close it so it does not warn at garbage collection
            message = (f"the {d.kind} of trigger {d.trigger.name!r} is async: LangChain calls this handler "
                       "synchronously; give a plain function")
            state.fail(message)
            raise CallbackError(message)
