"""OpenTelemetry export: live perplexity for fleets of agents (``pip install 'livepplx[otel]'``).

For each monitored generation, :class:`OtelRecorder` records a span (or enriches the
current one) with the final statistics as ``livepplx.*`` attributes beside the standard
``gen_ai.*`` request attributes, adds a span event each time a trigger fires or the stream
is stopped or escalated, ends it with the GenAI semantic conventions' ``gen_ai.evaluation.result``
event (``gen_ai.evaluation.name`` ``livepplx.perplexity``, ``gen_ai.evaluation.score.value`` the
final perplexity), and feeds metrics: histograms of the final perplexity and of the
tokens saved by early stops, counters of stops and escalations, labelled by model and
trigger.

    from livepplx.integrations.otel import OtelRecorder
    telemetry = OtelRecorder()                     # the global tracer and meter providers
    with livepplx.stream(client, model="gpt-4o-mini", messages=msgs, stop_above=20,
                         listeners=[telemetry]) as s:
        ...

It is a :class:`~livepplx.core.state.Listener`: nothing happens per token, and nothing is
recorded unless you pass one. It never raises into the stream: a failure of the
telemetry is logged once and the stream goes on.

The span is started only when there is something to write into it (a trigger, a stop,
the end), with the time the stream was opened as its start and the context current then
as its parent: a monitor made and dropped without being read leaves no span behind, and
the recorder holds nothing for it (it knows its streams through weak references).
"""

from __future__ import annotations

import math
import time
import weakref
from dataclasses import dataclass
from typing import Any

from ..core.state import Stop, StreamState
from ..core.triggers import Trigger, TriggerEvent
from ._guarded import GuardedListener

try:
    from opentelemetry import context, metrics, trace
except ImportError as e:  # pragma: no cover - exercised only without the extra
    raise ImportError("livepplx.integrations.otel needs OpenTelemetry: pip install 'livepplx[otel]'") from e

__all__ = ["OtelRecorder"]


_NAME = "livepplx"
#: The final statistics written as span attributes (livepplx.<name>).
_STATS = ("tokens", "ppl", "mean_logprob", "min_logprob", "min_prob", "max_surprisal", "surprisal_var", "window_ppl",
          "moving_ppl", "entropy_mean", "lowest_group_confidence", "censored", "skipped")
#: gen_ai.request.* attributes, from the request livepplx.stream() opened: only those the GenAI
#: semantic conventions define (they have none for top_logprobs, so it is not sent).
_REQUEST = {"model": "gen_ai.request.model", "max_tokens": "gen_ai.request.max_tokens",
            "temperature": "gen_ai.request.temperature", "top_p": "gen_ai.request.top_p",
            "seed": "gen_ai.request.seed"}
#: The GenAI conventions' evaluation event, whose score is the final running perplexity.
EVALUATION_EVENT = "gen_ai.evaluation.result"
EVALUATION_NAME = "livepplx.perplexity"


@dataclass
class _Generation:
    """What the recorder keeps of one stream until its span is needed."""

    start_time: int  # ns since the epoch, when the stream was opened
    parent: Any  # the OpenTelemetry context current then
    span: Any = None  # started lazily (mode "new"), or the current span (mode "current")
    ours: bool = False


def _attribute(value: Any) -> Any:
    """A value OpenTelemetry accepts, or None (NaN, inf and None are left out)."""
    if isinstance(value, bool) or isinstance(value, (int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    return None


class OtelRecorder(GuardedListener):
    """Records monitored generations as OpenTelemetry spans, events and metrics.

    Args:
        tracer_provider, meter_provider: where to record (default: the global ones, set up
            by your application or by ``opentelemetry-instrument``).
        span: ``"new"`` (default) starts a ``livepplx.generation`` span per stream, a child of
            the current span; ``"current"`` writes into the current span instead (the one
            your tracer or GenAI instrumentation already opened for the request).
        model: the model label when the request does not say it.
    """

    _what = "OpenTelemetry recording"

    def __init__(self, *, tracer_provider: Any = None, meter_provider: Any = None, span: str = "new",
                 model: str | None = None) -> None:
        if span not in ("new", "current"):
            raise ValueError(f"span must be 'new' or 'current', got {span!r}")
        self.tracer = trace.get_tracer(_NAME, tracer_provider=tracer_provider)
        meter = metrics.get_meter(_NAME, meter_provider=meter_provider)
        self.ppl_histogram = meter.create_histogram(
            "livepplx.generation.ppl", unit="1", description="Final running perplexity of each monitored generation")
        self.saved_histogram = meter.create_histogram(
            "livepplx.generation.tokens_saved", unit="{token}",
            description="Tokens not generated because a trigger stopped the stream (max_tokens - tokens)")
        self.stops = meter.create_counter("livepplx.stops", unit="{stop}", description="Streams stopped early")
        self.escalations = meter.create_counter(
            "livepplx.escalations", unit="{escalation}", description="Triggers that escalated to a follow-up request")
        self.mode = span
        self.model = model
        # Weak keys: a stream dropped unread takes its entry with it (nothing was started for it).
        self._generations: weakref.WeakKeyDictionary[StreamState, _Generation] = weakref.WeakKeyDictionary()

    # -- the listener ------------------------------------------------------------------------

    def on_start(self, state: StreamState) -> None:
        self._safely(self._start, state)

    def on_trigger(self, state: StreamState, event: TriggerEvent, trigger: Trigger) -> None:
        self._safely(self._trigger, state, event, trigger)

    def on_stop(self, state: StreamState, stop: Stop) -> None:
        self._safely(self._stop, state, stop)

    def on_end(self, state: StreamState) -> None:
        self._safely(self._end, state)

    # -- what is recorded --------------------------------------------------------------------

    def _labels(self, state: StreamState, trigger: str | None = None) -> dict[str, str]:
        labels = {"gen_ai.request.model": str(state.request.get("model") or self.model or "unknown")}
        if trigger is not None:
            labels["livepplx.trigger"] = trigger
        return labels

    def _start(self, state: StreamState) -> None:
        # Only the moment and the context: the span itself waits for something to record.
        self._generations[state] = _Generation(time.time_ns(), context.get_current())

    def _generation(self, state: StreamState) -> _Generation:
        """The stream's generation, its span started now if it was not yet."""
        generation = self._generations.get(state)
        if generation is None:  # told of a stream it did not see start
            generation = self._generations[state] = _Generation(time.time_ns(), context.get_current())
        if generation.span is None:
            if self.mode == "current":
                generation.span = trace.get_current_span(generation.parent)
            else:
                generation.span = self.tracer.start_span("livepplx.generation", context=generation.parent,
                                                         start_time=generation.start_time)
                generation.ours = True
            self._describe(generation.span, state)
        return generation

    def _describe(self, span: Any, state: StreamState) -> None:
        operation = "text_completion" if "prompt" in state.request else "chat"
        span.set_attribute("gen_ai.operation.name", operation)
        for key, name in _REQUEST.items():
            value = _attribute(state.request.get(key))
            if value is not None:
                span.set_attribute(name, value)
        if self.model and "model" not in state.request:
            span.set_attribute("gen_ai.request.model", self.model)

    def _span(self, state: StreamState) -> Any:
        return self._generation(state).span

    def _trigger(self, state: StreamState, event: TriggerEvent, trigger: Trigger) -> None:
        attributes = {"livepplx.trigger": event.trigger, "livepplx.choice": event.choice,
                      "livepplx.at_token": event.at_token}
        ppl = _attribute(event.stats.get("ppl"))
        if ppl is not None:
            attributes["livepplx.ppl"] = ppl
        self._span(state).add_event("livepplx.trigger", attributes)
        if trigger.escalate is not None:
            self._span(state).add_event("livepplx.escalate", attributes)
            self.escalations.add(1, self._labels(state, event.trigger))

    def _stop(self, state: StreamState, stop: Stop) -> None:
        self._span(state).add_event("livepplx.stop", {"livepplx.stop.reason": stop.reason,
                                                      "livepplx.choice": stop.choice,
                                                      "livepplx.at_token": stop.at_token})
        self.stops.add(1, self._labels(state, stop.reason))

    def _end(self, state: StreamState) -> None:
        generation = self._generation(state)
        del self._generations[state]
        span, ours = generation.span, generation.ours
        # The numbers from the statistics themselves: the summary writes inf as the string "inf".
        first = state.choices[min(state.choices)] if state.choices else None
        attributes: dict[str, Any] = {"livepplx.format": state.format or "unknown",
                                      "livepplx.choices": len(state.choices)}
        for name in _STATS:
            value = _attribute(getattr(first, name, None))
            if value is not None:
                attributes[f"livepplx.{name}"] = value
        if state.stopped is not None:
            attributes.update({"livepplx.stopped": True, "livepplx.stop.reason": state.stopped.reason,
                               "livepplx.stop.at_token": state.stopped.at_token})
        if state.error:
            attributes["livepplx.error"] = state.error
        span.set_attributes(attributes)
        ppl = _attribute(getattr(first, "ppl", None))
        if ppl is not None:
            # The conventions have no attribute for perplexity: their evaluation event carries it,
            # beside the livepplx.* attributes, so GenAI-aware backends show it as a score.
            span.add_event(EVALUATION_EVENT, {"gen_ai.evaluation.name": EVALUATION_NAME,
                                              "gen_ai.evaluation.score.value": ppl,
                                              "gen_ai.evaluation.explanation":
                                                  f"running perplexity over {first.tokens if first else 0} tokens"
                                                  + (" (stopped early)" if state.stopped is not None else "")})
        if state.error and ours:
            span.set_status(trace.Status(trace.StatusCode.ERROR, state.error))
        if ours:
            span.end()
        labels = self._labels(state)
        if ppl is not None:
            self.ppl_histogram.record(ppl, labels)
        max_tokens = state.request.get("max_tokens") or state.request.get("max_completion_tokens")
        if state.stopped is not None and isinstance(max_tokens, int):
            saved = max(0, max_tokens - state.stopped.at_token)
            self.saved_histogram.record(saved, self._labels(state, state.stopped.reason))
