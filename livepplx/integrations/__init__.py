"""Where agents' streams flow: livepplx under the HTTP clients and frameworks agents are built on.

Each module here imports its own framework (or HTTP library) itself, and only when it is
imported; nothing in this package is imported by ``import livepplx`` or by the core
(:mod:`livepplx.core`), and this file imports nothing.

* :mod:`livepplx.integrations.tap`: an httpx / httpx2 transport that watches every streamed
  (and whole) completion passing through any client built on httpx: ``OpenAI(http_client=...)``,
  LangChain, pydantic-ai, smolagents, the OpenAI Agents SDK, LiteLLM's client sessions.
* :mod:`livepplx.integrations.otel`: OpenTelemetry export (spans, events, metrics), as a
  listener on any monitored stream.
"""
