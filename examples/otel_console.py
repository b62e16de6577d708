"""Export live perplexity to OpenTelemetry: spans, events and metrics, printed to the console.

    pip install 'livepplx[otel]'
    python examples/otel_console.py --base-url http://127.0.0.1:8080/v1

To send them to a collector instead, install opentelemetry-exporter-otlp and swap the console
exporters for OTLPSpanExporter / OTLPMetricExporter (endpoint from OTEL_EXPORTER_OTLP_ENDPOINT,
e.g. http://localhost:4317); or run the app under `opentelemetry-instrument` and create
OtelRecorder() with no arguments: it then uses the global providers that set up.
"""

from __future__ import annotations

import argparse
import os
import sys

import openai
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import ConsoleMetricExporter, PeriodicExportingMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor

import livepplx
from livepplx.integrations.otel import OtelRecorder


def main(client: openai.OpenAI, model: str, prompts: list[str], stop_above: float = 12.0) -> None:
    tracer_provider = TracerProvider()
    # out= given at call time: the exporters' default is whatever sys.stdout was at import.
    tracer_provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter(out=sys.stdout)))
    reader = PeriodicExportingMetricReader(ConsoleMetricExporter(out=sys.stdout), export_interval_millis=60_000)
    meter_provider = MeterProvider(metric_readers=[reader])
    telemetry = OtelRecorder(tracer_provider=tracer_provider, meter_provider=meter_provider)
    for prompt in prompts:
        with livepplx.stream(client, model=model, messages=[{"role": "user", "content": prompt}], max_tokens=64,
                             stop_above=stop_above, listeners=[telemetry]) as s:
            for _ in s:
                pass
    meter_provider.shutdown()  # flushes the metrics to the console


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base-url", default=os.environ.get("OPENAI_BASE_URL", "http://127.0.0.1:8080/v1"))
    parser.add_argument("--model", default="gemma-3-270m")
    args = parser.parse_args()
    client = openai.OpenAI(base_url=args.base_url, api_key=os.environ.get("OPENAI_API_KEY", "sk-no-key"))
    main(client, args.model, ["Name the colors of the rainbow.", "Write a poem about entropy."])
