"""OpenAI Agents SDK: the live perplexity of every model response of a streamed run.

With ``ModelSettings(top_logprobs=k)`` a chat-completions model
(``OpenAIChatCompletionsModel``) streams each token's logprobs in the SDK's Responses-shaped
``response.output_text.delta`` events (``RawResponsesStreamEvent.data.logprobs``), which
livepplx reads as they are. (llama-server's own ``/v1/responses`` streams no logprobs: use
the chat-completions model against it.) :class:`RunMonitor` reads a run's events into one
:class:`~livepplx.core.state.StreamState` per model response, and passes every event on::

    from agents import Agent, ModelSettings, OpenAIChatCompletionsModel, Runner, set_tracing_disabled
    from livepplx.integrations.openai_agents import RunMonitor

    set_tracing_disabled(True)                 # the SDK exports traces to OpenAI otherwise
    monitor = RunMonitor(stop_above=20)
    agent = Agent(name="a", model=OpenAIChatCompletionsModel(model="gemma", openai_client=client),
                  model_settings=ModelSettings(top_logprobs=5),
                  output_guardrails=[monitor.guardrail(max_ppl=15)])
    result = Runner.run_streamed(agent, "Name three fruits.", hooks=monitor)
    async for event in monitor.watch(result):
        ...
    monitor.last.summary(), monitor.stopped

**Stopping.** When a trigger stops a response, :meth:`RunMonitor.watch` cancels the run
(``result.cancel("immediate")``: the run task is cancelled and the model's HTTP response
closed, so the server stops), reads the run's event stream to its end (which waits for the
run task to be done), then runs the triggers' callbacks (awaited when async), then hands on
the event that crossed and ends. ``result.final_output`` is then None: the run was cut. The
SDK's run task reads the model's stream ahead of the consumer, into an unbounded queue: with a
network between, at most an event ahead; a server that sends everything at once is read whole
before the stop can land.

**The guardrail.** :meth:`RunMonitor.guardrail` is an output guardrail that trips when the
response that gave the final output has a running perplexity above ``max_ppl``: the SDK
raises ``OutputGuardrailTripwireTriggered`` and the caller escalates (a stronger model, a
retry). It reads the statistics :class:`RunMonitor` takes, as a ``RunHooks``, of every model
response when the SDK hands it over (``on_llm_end``, in the run's own task, before any
guardrail runs): pass ``hooks=monitor`` to the run. They are the same numbers as the live
ones (the same logprobs, kept by the SDK in the response's ``output_text`` parts), and they
are there for ``Runner.run`` too.

**What is read.** The raw events, by the type rule of :mod:`livepplx.core.formats` (the SDK's
events are all Responses-shaped). Text without logprobs (``ModelSettings(top_logprobs=...)``
forgotten, or a model whose path drops them) is :class:`~livepplx.core.errors.NoLogprobsError`
from :meth:`~RunMonitor.watch`, and the run is cancelled: never "0 tokens". A response with
no text (a tool call) has 0 tokens and no error.
"""

from __future__ import annotations

import inspect
from collections import deque
from typing import TYPE_CHECKING, Any, AsyncIterator, Literal, Sequence

from ..core.errors import CallbackError, LivepplxError, ServerStreamError, StreamFormatError
from ..score import score
from ..core.state import Due, MonitorOptions, Stop, StreamState, make_options

try:
    from agents import Agent, GuardrailFunctionOutput, ModelResponse, OutputGuardrail, RunContextWrapper, RunHooks
    from agents.stream_events import RawResponsesStreamEvent

    _MISSING: ImportError | None = None
except ImportError as e:  # pragma: no cover - the module imports without the extra; using it says what to install
    _MISSING = ImportError(f"livepplx.integrations.openai_agents needs the OpenAI Agents SDK: "
                           f"pip install 'livepplx[agents]' ({e})")
    if not TYPE_CHECKING:
        from typing import Generic, TypeVar

        class RunHooks(Generic[TypeVar("T")]):
            pass

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from ..core.state import MonitorKeywords

__all__ = ["RunMonitor", "score_response"]

#: The raw event types that end one model response.
_ENDS = ("response.completed", "response.incomplete", "response.failed")


def score_response(response: ModelResponse, options: MonitorOptions | None = None) -> StreamState:
    """The statistics of one whole model response (its ``output_text`` parts' logprobs).

    The output items are read as a Responses object would be (:func:`livepplx.score`).
    """
    output = [item.model_dump() if hasattr(item, "model_dump") else item for item in response.output]
    return score({"object": "response", "status": "completed", "output": output}, options)


class RunMonitor(RunHooks[Any]):
    """Watch the model responses of Agents SDK runs: live statistics, triggers, a stop, a guardrail.

    Args:
        options: a :class:`~livepplx.core.state.MonitorOptions`, or its fields as keywords
            (``stop_above=20``, ``triggers=[...]``, ...): the same for every response.
        cancel_mode: how a stop cancels the run: ``"immediate"`` (default: the model's
            stream is closed now) or ``"after_turn"`` (the SDK lets the turn finish: the
            server is not stopped).
        keep: how many responses' statistics are kept, the newest (default 100).
    """

    def __init__(self, options: MonitorOptions | None = None, *,
                 cancel_mode: Literal["immediate", "after_turn"] = "immediate", keep: int = 100,
                 **keywords: Unpack[MonitorKeywords]) -> None:
        if _MISSING is not None:
            raise _MISSING
        if cancel_mode not in ("immediate", "after_turn"):
            raise ValueError(f"cancel_mode must be 'immediate' or 'after_turn', got {cancel_mode!r}")
        if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
            raise ValueError(f"keep must be a whole number >= 1, got {keep!r}")
        self.options = make_options(options, dict(keywords))
        self.cancel_mode = cancel_mode
        #: the statistics of each model response read live by :meth:`watch`, oldest first
        self.states: deque[StreamState] = deque(maxlen=keep)
        #: the statistics of each whole model response the SDK handed to ``on_llm_end``, oldest first
        self.responses: deque[StreamState] = deque(maxlen=keep)
        self._current: StreamState | None = None

    # -- reading ---------------------------------------------------------------------------

    @property
    def last(self) -> StreamState | None:
        """The latest model response read live (None before any)."""
        return self.states[-1] if self.states else None

    @property
    def stopped(self) -> Stop | None:
        """Why the latest response was stopped, or None."""
        last = self.last
        return last.stopped if last is not None else None

    def summary(self) -> dict[str, Any]:
        """The latest response's summary (as ``livepplx replay --json``)."""
        last = self.last
        if last is None:
            raise LivepplxError("no model response was read yet: iterate monitor.watch(result)")
        return last.summary()

    # -- the live path ---------------------------------------------------------------------

    async def watch(self, result: Any) -> AsyncIterator[Any]:
        """Every event of ``result.stream_events()``, unchanged, read on the way.

        ``result`` is what ``Runner.run_streamed(...)`` returned. A stop cancels the run
        first, then runs the callbacks, then hands on the event that crossed and ends.
        """
        events = result.stream_events()
        try:
            async for event in events:
                if not isinstance(event, RawResponsesStreamEvent):
                    yield event
                    continue
                state = self._read(event.data)
                if state.stopped is not None:
                    result.cancel(mode=self.cancel_mode)  # close first: the model's stream ends
                    async for _ in events:  # to the end, which waits for the cancelled run task
                        pass
                    self._finish(state)
                    await _run(state, state.take_due())
                    yield event
                    return
                if state.due:
                    await _run(state, state.take_due())
                if state.server_error is not None:
                    raise ServerStreamError(f"the server sent an error mid-stream: {state.server_error}")
                yield event
                if self._current is None:
                    self._judge(state)
        except BaseException as e:
            if isinstance(e, LivepplxError):
                result.cancel(mode="immediate")  # the run is not left generating behind an error
            current = self._current
            if current is not None:
                if isinstance(e, Exception):
                    current.fail(f"the run failed after {current.total_tokens} tokens: {type(e).__name__}: {e}")
                self._finish(current)
            raise
        finally:
            close = getattr(events, "aclose", None)
            if close is not None:
                await close()
        current = self._current
        if current is not None:  # the run ended inside a response (cancelled, or a failed stream)
            self._finish(current)
            self._judge(current)

    def _read(self, data: Any) -> StreamState:
        kind = getattr(data, "type", None)
        state = self._current
        if state is None or kind == "response.created":
            if state is not None:
                self._finish(state)
            state = self._current = StreamState(self.options)
            self.states.append(state)
        state.handle(data)
        if kind in _ENDS:
            self._finish(state)
        return state

    def _finish(self, state: StreamState) -> None:
        state.finish()
        state.end()
        if state is self._current:
            self._current = None

    @staticmethod
    def _judge(state: StreamState) -> None:
        if state.format is None and state.chunks:
            raise StreamFormatError(state.error)

    # -- the hooks: each whole response, in the run's task ------------------------------------

    async def on_llm_end(self, context: RunContextWrapper[Any], agent: Agent[Any], response: ModelResponse) -> None:
        """Score each model response the SDK hands over (read by :meth:`guardrail`)."""
        options = self.options if self.options.on_missing_logprobs != "raise" else make_options(
            self.options, {"on_missing_logprobs": "ignore"})
        try:
            self.responses.append(score_response(response, options))
        except LivepplxError as e:
            failed = StreamState(options)
            failed.fail(str(e))
            self.responses.append(failed)

    def guardrail(self, max_ppl: float, *, name: str | None = None) -> OutputGuardrail[Any]:
        """An output guardrail that trips when the final response's perplexity is above
        ``max_ppl`` (or it had no logprobs to judge by). Needs ``hooks=monitor`` on the run.

        Its ``output_info`` is that response's summary.
        """
        if isinstance(max_ppl, bool) or not isinstance(max_ppl, (int, float)) or not max_ppl > 0:
            raise ValueError(f"max_ppl must be a positive number, got {max_ppl!r}")

        async def perplexity_guardrail(context: RunContextWrapper[Any], agent: Agent[Any],
                                       output: Any) -> GuardrailFunctionOutput:
            if not self.responses:
                raise LivepplxError("the perplexity guardrail saw no model response: give the run hooks=monitor "
                                    "(Runner.run_streamed(agent, input, hooks=monitor))")
            state = self.responses[-1]
            summary = state.summary()
            judged = state.error is None and state.has_logprobs
            return GuardrailFunctionOutput(output_info=summary,
                                           tripwire_triggered=not judged or not state.ppl <= max_ppl)

        return OutputGuardrail(guardrail_function=perplexity_guardrail, name=name or f"ppl above {max_ppl:g}")


async def _run(state: StreamState, due: Sequence[Due]) -> None:
    """Run what the triggers made due, in order, awaiting async ones; a failure is a CallbackError."""
    for d in due:
        try:
            result = d.function(d.argument)
            if inspect.isawaitable(result):
                await result
        except Exception as e:
            message = f"the {d.kind} of trigger {d.trigger.name!r} raised {type(e).__name__}: {e}"
            state.fail(message)
            raise CallbackError(message) from e
