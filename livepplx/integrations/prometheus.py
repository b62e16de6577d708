"""Prometheus metrics of monitored generations (``pip install 'livepplx[gateway]'``).

:class:`PrometheusListener` is a :class:`~livepplx.core.state.Listener`: give it to any monitored
stream (``livepplx.stream(..., listeners=[metrics])``, the tap, the LiteLLM proxy callback) and
it counts, labelled by model (and trigger, for stops):

========================================  =========  ===========================================
``livepplx_generation_ppl``               histogram  final running perplexity of each scored answer
``livepplx_generation_tokens_total``      counter    tokens scored
``livepplx_generations_total``            counter    answers seen, by ``outcome``: ``complete``,
                                                     ``stopped``, ``unscored`` (no logprobs), ``error``
``livepplx_stops_total``                  counter    answers stopped early, by ``trigger``
``livepplx_tokens_saved_total``           counter    tokens not generated because of a stop
                                                     (the request's ``max_tokens`` minus the tokens
                                                     read; only for requests that set one)
``livepplx_unscored_total``               counter    answers whose text came without logprobs
========================================  =========  ===========================================

>>> from prometheus_client import CollectorRegistry, generate_latest
>>> from livepplx import StreamState
>>> metrics = PrometheusListener(registry=CollectorRegistry())
>>> state = StreamState(listeners=[metrics], request={"model": "local"})
>>> _ = state.handle({"choices": [{"index": 0, "delta": {"content": "Hi"}, "finish_reason": "stop",
...                                "logprobs": {"content": [{"token": "Hi", "logprob": -0.5}]}}]})
>>> state.finish(); state.end()
>>> text = generate_latest(metrics.registry).decode()
>>> 'livepplx_generation_tokens_total{model="local"} 1.0' in text
True
>>> 'livepplx_generation_ppl_sum{model="local"} 1.6487' in text
True

Labels stay few on purpose: the model (as the request named it) and the trigger's name (set
them from a fixed list, as the gateway's policy does), never anything per request. Nothing is
counted per token: the listener is told once when a stream stops and once when it ends.
:func:`serve` exposes a registry on ``http://127.0.0.1:PORT/metrics``.
"""

from __future__ import annotations

import logging
import math
import threading
from typing import Any

from ..core.state import Stop, StreamState
from ._guarded import GuardedListener

try:
    from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram, start_http_server
except ImportError as e:  # pragma: no cover - exercised only without the extra
    raise ImportError("livepplx.integrations.prometheus needs prometheus-client: pip install 'livepplx[gateway]'") from e

__all__ = ["PrometheusListener", "default_listener", "serve", "PPL_BUCKETS"]

log = logging.getLogger(__name__)

#: Histogram buckets for perplexity: fine near 1 (confident answers), coarse past 20.
PPL_BUCKETS = (1.0, 1.1, 1.25, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 7.5, 10.0, 15.0, 20.0, 30.0, 50.0, 100.0, math.inf)


def _model(state: StreamState) -> str:
    model = state.request.get("model")
    return model if isinstance(model, str) and model else "unknown"


def _max_tokens(request: dict[str, Any]) -> int | None:
    for key in ("max_tokens", "max_completion_tokens", "max_output_tokens"):
        value = request.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


class PrometheusListener(GuardedListener):
    """Counts monitored generations into a Prometheus registry (default: the process's global
    one, which LiteLLM's own ``/metrics`` also serves when its Prometheus callback is on).

    Args:
        registry: where the metrics live; a fresh ``CollectorRegistry()`` keeps tests apart.
        buckets: the perplexity histogram's buckets (default :data:`PPL_BUCKETS`).

    Making two listeners on one registry is an error of prometheus-client's ("Duplicated
    timeseries"): make one per process and share it, as the gateway callback does.
    """

    _what = "Prometheus recording"

    def __init__(self, registry: CollectorRegistry | None = None, buckets: tuple[float, ...] = PPL_BUCKETS) -> None:
        self.registry = registry if registry is not None else REGISTRY
        reg = self.registry
        self.ppl = Histogram("livepplx_generation_ppl", "Final running perplexity of each scored generation",
                             ["model"], buckets=buckets, registry=reg)
        self.tokens = Counter("livepplx_generation_tokens", "Tokens scored (with a usable logprob)",
                              ["model"], registry=reg)
        self.generations = Counter("livepplx_generations", "Generations seen, by outcome", ["model", "outcome"],
                                   registry=reg)
        self.stops = Counter("livepplx_stops", "Generations stopped early, by trigger", ["model", "trigger"],
                             registry=reg)
        self.saved = Counter("livepplx_tokens_saved", "Tokens not generated because a trigger stopped the stream "
                             "(the request's max_tokens minus the tokens read)", ["model", "trigger"], registry=reg)
        self.unscored = Counter("livepplx_unscored", "Generations whose text came without logprobs (not scored)",
                                ["model"], registry=reg)

    def on_stop(self, state: StreamState, stop: Stop) -> None:
        self._safely(self._stop, state, stop)

    def on_end(self, state: StreamState) -> None:
        self._safely(self._end, state)

    def _stop(self, state: StreamState, stop: Stop) -> None:
        model = _model(state)
        self.stops.labels(model, stop.reason).inc()
        max_tokens = _max_tokens(state.request)
        if max_tokens is not None:
            self.saved.labels(model, stop.reason).inc(max(0, max_tokens - stop.at_token))

    def _end(self, state: StreamState) -> None:
        model = _model(state)
        scored = state.total_tokens
        if scored:
            self.tokens.labels(model).inc(scored)
            ppl = state.ppl
            if math.isfinite(ppl):
                self.ppl.labels(model).observe(ppl)
        if state.stopped is not None:
            outcome = "stopped"
        elif not scored and state.unscored:
            outcome = "unscored"
            self.unscored.labels(model).inc()
        elif state.error is not None:
            outcome = "error"
        else:
            outcome = "complete"
        self.generations.labels(model, outcome).inc()


_default: PrometheusListener | None = None
_served: dict[tuple[str, int], Any] = {}
_serve_lock = threading.Lock()


def default_listener() -> PrometheusListener:
    """The process's one listener on the default registry (made on first use): every gateway
    callback of the process shares it, as prometheus-client allows one metric per name."""
    global _default
    with _serve_lock:
        if _default is None:
            _default = PrometheusListener()
        return _default


def serve(port: int, registry: CollectorRegistry | None = None, addr: str = "127.0.0.1") -> bool:
    """Serve ``registry`` (default: the global one) on ``http://addr:port/metrics``, once per
    address and port in this process. Returns False, with one warning, when the port is taken
    (e.g. a second worker process of the same proxy: give each its own port)."""
    with _serve_lock:
        if (addr, port) in _served:
            return True
        try:
            _served[(addr, port)] = start_http_server(port, addr=addr, registry=registry if registry is not None else REGISTRY)
        except OSError as e:
            log.warning("livepplx: cannot serve metrics on %s:%d (%s); the proxy goes on without them", addr, port, e)
            return False
        return True
