"""OpenTelemetry export, checked with the SDK's in-memory span exporter and metric reader."""

from __future__ import annotations

import gc
import logging
import subprocess
import sys
import textwrap
import time
import tracemalloc
import weakref
from typing import Any

import pytest

pytest.importorskip("opentelemetry.sdk", reason="pip install -e '.[otel]' for the telemetry tests")

from opentelemetry.sdk.metrics import MeterProvider  # noqa: E402
from opentelemetry.sdk.metrics.export import InMemoryMetricReader  # noqa: E402
from opentelemetry.sdk.trace import TracerProvider  # noqa: E402
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanProcessor  # noqa: E402
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter  # noqa: E402

import livepplx  # noqa: E402
from conftest import CountingBody, openai_clients, sse, sse_response, token_event  # noqa: E402
from livepplx import Trigger, min_tokens, monitor, prob_below  # noqa: E402
from livepplx.integrations.otel import OtelRecorder  # noqa: E402
from livepplx.recordings import recording_path  # noqa: E402


@pytest.fixture
def otel() -> tuple[OtelRecorder, InMemorySpanExporter, InMemoryMetricReader, dict[str, Any]]:
    spans = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    reader = InMemoryMetricReader()
    providers = {"tracer_provider": tracer_provider, "meter_provider": MeterProvider(metric_readers=[reader])}
    return OtelRecorder(**providers), spans, reader, providers


def metric_points(reader: InMemoryMetricReader) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {}
    data = reader.get_metrics_data()
    for rm in data.resource_metrics if data else []:
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                out[metric.name] = list(metric.data.data_points)
    return out


def climbing(n: int = 200) -> list[bytes]:
    return [token_event(f"t{i}", -0.1 if i < 10 else -6.0) for i in range(n)] + [b"data: [DONE]\n\n"]


def test_a_stopped_generation_is_a_span_with_events_and_metrics(otel: Any) -> None:
    recorder, spans, reader, _ = otel
    sync, _ = openai_clients(lambda request: sse_response(CountingBody(climbing())))
    escalated: list[Any] = []
    triggers = [Trigger(prob_below(0.01) & min_tokens(12), escalate=escalated.append, name="lost")]
    with livepplx.stream(sync, model="gemma", messages=[{"role": "user", "content": "hi"}], max_tokens=500,
                         temperature=0.2, triggers=triggers, listeners=[recorder]) as s:
        for _ in s:
            pass
    (span,) = spans.get_finished_spans()
    assert span.name == "livepplx.generation"
    a = span.attributes
    assert a["gen_ai.operation.name"] == "chat" and a["gen_ai.request.model"] == "gemma"
    assert a["gen_ai.request.max_tokens"] == 500 and a["gen_ai.request.temperature"] == 0.2
    assert a["livepplx.tokens"] == s.tokens == 12 and a["livepplx.ppl"] == pytest.approx(s.ppl)
    assert a["livepplx.stopped"] is True and a["livepplx.stop.reason"] == "lost" and a["livepplx.stop.at_token"] == 12
    assert a["livepplx.format"] == "openai-chat" and a["livepplx.censored"] == 0
    assert [e.name for e in span.events] == ["livepplx.trigger", "livepplx.escalate", "livepplx.stop",
                                             "gen_ai.evaluation.result"]
    assert span.events[0].attributes["livepplx.at_token"] == 12
    evaluation = span.events[-1].attributes
    assert evaluation["gen_ai.evaluation.name"] == "livepplx.perplexity"
    assert evaluation["gen_ai.evaluation.score.value"] == pytest.approx(s.ppl)
    assert evaluation["gen_ai.evaluation.explanation"] == "running perplexity over 12 tokens (stopped early)"
    points = metric_points(reader)
    (ppl,) = points["livepplx.generation.ppl"]
    assert ppl.count == 1 and ppl.sum == pytest.approx(s.ppl) and ppl.attributes == {"gen_ai.request.model": "gemma"}
    (saved,) = points["livepplx.generation.tokens_saved"]
    assert saved.sum == 500 - 12 and saved.attributes["livepplx.trigger"] == "lost"
    assert points["livepplx.stops"][0].value == 1 and points["livepplx.escalations"][0].value == 1
    assert len(escalated) == 1


def test_enriching_the_current_span(otel: Any) -> None:
    _, spans, _, providers = otel
    recorder = OtelRecorder(**providers, span="current", model="local-gemma")
    tracer = providers["tracer_provider"].get_tracer("app")
    with tracer.start_as_current_span("agent step"):
        with monitor(open(recording_path("llamacpp-server-chat"), "rb"), listeners=[recorder]) as m:
            for _ in m:
                pass
    (span,) = spans.get_finished_spans()
    assert span.name == "agent step" and span.attributes["livepplx.tokens"] == 30
    assert span.attributes["gen_ai.request.model"] == "local-gemma" and "livepplx.stopped" not in span.attributes


def test_one_span_per_stream_with_many_streams_at_once(otel: Any) -> None:
    recorder, spans, reader, _ = otel
    streams = [monitor(open(recording_path(name), "rb"), listeners=[recorder], stop_above=8.0)
               for name in ("llamacpp-python-chat", "llamacpp-server-chat", "llamacpp-server-native")]
    for _ in zip(*streams):  # interleaved, as concurrent agents would be
        pass
    for m in streams:
        m.close()
    finished = spans.get_finished_spans()
    assert len(finished) == 3
    assert sorted(s.attributes["livepplx.tokens"] for s in finished) == sorted(m.tokens for m in streams)
    assert metric_points(reader)["livepplx.generation.ppl"][0].count == 3


def test_telemetry_never_raises_into_the_stream(otel: Any, caplog: pytest.LogCaptureFixture) -> None:
    recorder, _, _, _ = otel

    class Broken:
        def add(self, *args: Any) -> None:
            raise RuntimeError("exporter down")

    recorder.stops = Broken()  # type: ignore[assignment]
    with caplog.at_level(logging.WARNING, logger="livepplx.integrations.otel"):
        with monitor(open(recording_path("llamacpp-python-chat"), "rb"), listeners=[recorder], stop_above=5.0) as m:
            for _ in m:
                pass
    assert m.stopped is not None and "OpenTelemetry recording failed" in caplog.text


def test_no_listener_no_telemetry_even_with_a_global_provider() -> None:
    # In a fresh interpreter: the global tracer provider can be set once per process.
    code = textwrap.dedent("""
        import sys
        import livepplx
        from livepplx.recordings import recording_path
        print("opentelemetry imported:", "opentelemetry" in sys.modules)
        from opentelemetry import trace
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
        spans = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(spans))
        trace.set_tracer_provider(provider)

        def read(**options):
            with livepplx.monitor(open(recording_path("llamacpp-python-chat"), "rb"), stop_above=5.0, **options) as m:
                for _ in m:
                    pass

        read()
        print("spans without a recorder:", len(spans.get_finished_spans()))
        from livepplx.integrations.otel import OtelRecorder
        read(listeners=[OtelRecorder()])  # no providers given: the global ones
        print("spans with one:", [s.name for s in spans.get_finished_spans()])
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.stdout.splitlines() == ["opentelemetry imported: False", "spans without a recorder: 0",
                                          "spans with one: ['livepplx.generation']"], result.stderr


class CountingSpans(SpanProcessor):
    def __init__(self) -> None:
        self.started = 0

    def on_start(self, span: Any, parent_context: Any = None) -> None:
        self.started += 1


def test_a_monitor_never_read_starts_no_span_and_is_not_held(otel: Any) -> None:
    recorder, spans, _, providers = otel
    counting = CountingSpans()
    providers["tracer_provider"].add_span_processor(counting)
    m = monitor(iter([token_event("a", -1.0)]), listeners=[recorder])
    state = weakref.ref(m.state)
    del m
    gc.collect()
    assert state() is None  # the recorder does not keep the stream alive
    for _ in range(200):  # warm-up: first-use allocations out of the measure
        monitor(iter([]), listeners=[recorder])
    gc.collect()
    tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        for _ in range(2000):
            monitor(iter([]), listeners=[recorder])
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert counting.started == 0 and spans.get_finished_spans() == ()
    assert grown < 100_000, grown  # a span held per monitor was 2.7 kB: 5.4 MB for these


def test_a_span_started_late_keeps_the_streams_start_time_and_parent(otel: Any) -> None:
    recorder, spans, _, providers = otel
    tracer = providers["tracer_provider"].get_tracer("app")
    with tracer.start_as_current_span("agent step") as step:
        opened = time.time_ns()
        m = monitor(open(recording_path("llamacpp-server-chat"), "rb"), listeners=[recorder])
    time.sleep(0.05)
    with m:  # read outside the step's context, 50 ms later
        for _ in m:
            pass
    (generation,) = [s for s in spans.get_finished_spans() if s.name == "livepplx.generation"]
    assert opened <= generation.start_time <= opened + 20_000_000  # when it was opened, not when first written
    assert generation.end_time - generation.start_time >= 50_000_000
    assert generation.parent is not None and generation.parent.span_id == step.get_span_context().span_id


def test_an_infinite_perplexity_is_left_out_not_written_as_a_string(otel: Any, caplog: pytest.LogCaptureFixture) -> None:
    recorder, spans, reader, _ = otel
    body = sse({"choices": [{"index": 0, "delta": {"content": "a"}, "finish_reason": "stop",
                             "logprobs": {"content": [{"token": "a", "logprob": -1000.0}]}}]})
    with caplog.at_level(logging.WARNING, logger="livepplx.integrations.otel"):
        with monitor(iter([body]), listeners=[recorder]) as m:
            for _ in m:
                pass
    assert m.ppl == float("inf") and "OpenTelemetry recording failed" not in caplog.text
    (span,) = spans.get_finished_spans()
    assert "livepplx.ppl" not in span.attributes and span.attributes["livepplx.mean_logprob"] == -1000.0
    assert span.attributes["livepplx.tokens"] == 1 and "livepplx.generation.ppl" not in metric_points(reader)


def test_only_the_conventions_request_attributes_and_no_score_without_tokens(otel: Any) -> None:
    """gen_ai.request.top_logprobs is not in the GenAI conventions: it is not sent, though the
    request asked for them; a stream with no token has no evaluation event (no NaN score)."""
    recorder, spans, _, _ = otel
    sync, _ = openai_clients(lambda request: sse_response(CountingBody(climbing(20))))
    with livepplx.stream(sync, model="gemma", messages=[{"role": "user", "content": "hi"}], top_logprobs=3,
                         seed=7, listeners=[recorder]) as s:
        for _ in s:
            pass
    state = livepplx.StreamState(listeners=[recorder])
    state.end()
    first, empty = spans.get_finished_spans()
    assert first.attributes["gen_ai.request.seed"] == 7 and s.tokens == 20
    assert not [key for span in (first, empty) for key in span.attributes if "logprobs" in key]
    assert [e.name for e in first.events] == ["gen_ai.evaluation.result"]
    assert first.events[0].attributes["gen_ai.evaluation.explanation"] == "running perplexity over 20 tokens"
    assert [e.name for e in empty.events] == []
