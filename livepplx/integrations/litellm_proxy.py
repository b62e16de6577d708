"""At the gateway: a LiteLLM proxy callback that watches, scores and stops every stream.

Register it in the proxy's ``config.yaml`` (``pip install 'livepplx[gateway]'``)::

    model_list:
      - model_name: local
        litellm_params: {model: openai/local, api_base: os.environ/UPSTREAM_BASE_URL, api_key: none}
        model_info:
          livepplx: {stop_above: 20, min_tokens: 8}     # this model's policy
    litellm_settings:
      callbacks: livepplx_gateway.callback             # a module beside config.yaml

with ``livepplx_gateway.py`` holding ``callback = LivepplxCallback()`` (``examples/litellm_proxy/``).

**What it does to a request.** Every streamed request on the three generating routes is
sent upstream asking for logprobs, unless it asked itself, and the client gets its chunks
without them again, so it sees the shapes it asked for:

* chat (``/v1/chat/completions``): ``logprobs: true, top_logprobs: 5``;
* legacy completions (``/v1/completions``): ``logprobs: 5``. LiteLLM drops a text completion's
  logprobs before any callback sees a chunk, so the callback reads the upstream's own chunks
  through a tap on LiteLLM's chunk handler (:func:`_install_text_completion_tap`); the client's
  chunks carry none either way (a client that asked gets none from LiteLLM: its own limit);
* Responses (``/v1/responses``): ``include: ["message.output_text.logprobs"]`` (OpenAI puts
  them on each ``response.output_text.delta``; llama-server's Responses route sends none, so
  its answers are counted ``unscored``).

Requests that are not streamed, and other routes (embeddings, ...), pass through untouched.

**Policy.** Per model, in the config (``model_info.livepplx``, or ``LivepplxCallback(models=...)``),
laid over ``LivepplxCallback(default=...)``; then per request, each later one winning:

* a header per key: ``x-livepplx-stop-above: 20``;
* flat in ``metadata`` (OpenAI's SDK and the Agents SDK type metadata values as strings):
  ``"metadata": {"livepplx_stop_above": "20"}``;
* nested in ``metadata``: ``"metadata": {"livepplx": {"stop_above": 20, "min_tokens": 4}}``.

The keys: ``stop_above`` (running PPL), ``window_ppl_above`` (PPL of the last ``window`` tokens),
``group_confidence_below`` (DeepConf's group confidence over ``group_window`` tokens), each
after ``min_tokens`` tokens (the warm-up, default 8); ``window`` (64), ``group_window`` (2048),
and ``enabled`` (false: not watched). ``null`` or ``"off"`` clears a threshold. A value of the
wrong type, out of range, or an unknown ``livepplx`` key is answered ``400`` with a message that
names it (LiteLLM's own error body), before anything is sent upstream.

**A stop.** When a threshold is crossed the callback ends the stream: it closes the upstream
first (the server stops generating), hands the client the chunk that crossed, then one more chunk
whose choices have ``finish_reason: "length"`` (the answer was cut short, as by ``max_tokens``;
``LivepplxCallback(finish_reason=...)`` sets another) and a top-level ``"livepplx"`` object with
the reason, the token count and the PPL; then the proxy's ``[DONE]``. OpenAI's SDKs read that as
a normal end. A Responses stream ends as OpenAI ends one cut by ``max_output_tokens``: a
``response.incomplete`` event (``incomplete_details: {"reason": "max_output_tokens"}``, the
response's own id) with the same ``"livepplx"`` object.

**Bad upstreams and failures.** An upstream that ignores ``logprobs`` is passed through untouched,
counted as ``unscored`` (``livepplx_unscored_total``), and logged once per model. An exception
inside the callback is logged (once per kind) and the rest of the stream passes through
unwatched: the client's stream never breaks because of livepplx.

**Metrics.** Every stream is counted by :class:`~livepplx.integrations.prometheus.PrometheusListener`
on the process's default registry (LiteLLM's own ``/metrics`` serves it when its ``prometheus``
callback is on), and served on ``http://127.0.0.1:$LIVEPPLX_METRICS_PORT/metrics`` when that
variable is set. Other listeners (e.g. :class:`~livepplx.integrations.otel.OtelRecorder`) go in
``LivepplxCallback(listeners=[...])``. Each stream's state lives in the replica that serves it:
nothing is shared between replicas.

LiteLLM facts this relies on (checked in litellm 1.110.2): the proxy runs a callback's
``async_post_call_streaming_iterator_hook`` only when the registered class itself defines it (a
subclass of this class must define it again); ``async_pre_call_hook`` sees the client's
``metadata``, which is not sent upstream, so the callback keeps its note there; the proxy
serialises chunks with ``exclude_none``, so ``logprobs = None`` takes the key out.
"""

from __future__ import annotations

import logging
import math
import os
from collections import deque
from collections.abc import AsyncGenerator, Mapping
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # never fetch the cost map at import

from ..core.errors import LivepplxError  # noqa: E402
from ..core.state import Listener, MonitorOptions, StreamState  # noqa: E402
from ..core.triggers import Trigger, group_confidence_below, min_tokens, ppl_above, window_ppl_above  # noqa: E402

try:
    from litellm.integrations.custom_logger import CustomLogger
except ImportError as e:  # pragma: no cover - the extra is missing
    raise ImportError(f"livepplx.integrations.litellm_proxy needs the LiteLLM proxy: pip install 'livepplx[gateway]' ({e})") from e

__all__ = ["LivepplxCallback", "Policy", "PolicyError", "STOP_FINISH_REASON"]

log = logging.getLogger("livepplx.gateway")

#: The ``finish_reason`` of the chunk that ends a stopped stream (the answer was cut short).
STOP_FINISH_REASON = "length"
#: Where the callback keeps its note of a request, in the request's metadata.
NOTE = "livepplx_request"
#: Where it leaves the result, for LiteLLM's logging callbacks.
RESULT = "livepplx_result"
_KINDS = {"acompletion": "chat", "completion": "chat", "atext_completion": "completions",
          "text_completion": "completions", "aresponses": "responses", "responses": "responses"}
#: What the Responses API's ``include`` takes to put logprobs on each ``response.output_text.delta``.
RESPONSES_LOGPROBS = "message.output_text.logprobs"
#: Where the text-completion tap leaves the upstream's own chunks, on the request's logging object.
_RAW = "_livepplx_raw_chunks"
_OFF = ("off", "none", "null")


class PolicyError(LivepplxError, ValueError):
    """A policy value of the wrong type or out of range, or an unknown policy key."""


def _number(name: str, raw: Any, where: str, positive: bool) -> float | None:
    if raw is None or (isinstance(raw, str) and raw.strip().lower() in _OFF):
        return None
    value = math.nan
    if isinstance(raw, (int, float)) and not isinstance(raw, bool):
        value = float(raw)
    elif isinstance(raw, str):
        try:
            value = float(raw.strip())
        except ValueError:
            pass
    if not math.isfinite(value) or (positive and value <= 0):
        need = "a number > 0" if positive else "a finite number"
        raise PolicyError(f"{where}{name} must be {need} (or null/\"off\" to clear it), got {raw!r}")
    return value


def _whole(name: str, raw: Any, where: str, low: int, high: int) -> int:
    value: int | None = None
    if isinstance(raw, int) and not isinstance(raw, bool):
        value = raw
    elif isinstance(raw, str) and raw.strip().isdigit():
        value = int(raw.strip())
    if value is None or not low <= value <= high:
        raise PolicyError(f"{where}{name} must be a whole number from {low} to {high:,}, got {raw!r}")
    return value


def _flag(name: str, raw: Any, where: str) -> bool:
    if isinstance(raw, bool):
        return raw
    if isinstance(raw, str) and raw.strip().lower() in ("true", "1", "yes", "on", "false", "0", "no", "off"):
        return raw.strip().lower() in ("true", "1", "yes", "on")
    raise PolicyError(f"{where}{name} must be true or false, got {raw!r}")


@dataclass(frozen=True)
class Policy:
    """When to stop one model's streams. Every threshold is off unless set.

    >>> p = Policy.parse({"stop_above": "20", "min_tokens": 4})
    >>> p.stop_above, p.min_tokens, [t.name for t in p.triggers()]
    (20.0, 4, ['stop_above'])
    >>> Policy.parse({"stop_above": "twenty"}, "metadata.livepplx.")
    Traceback (most recent call last):
    ...
    livepplx.integrations.litellm_proxy.PolicyError: metadata.livepplx.stop_above must be a number > 0 (or null/"off" to clear it), got 'twenty'
    """

    #: stop once the running perplexity exceeds this
    stop_above: float | None = None
    #: stop once the perplexity of the last ``window`` tokens exceeds this
    window_ppl_above: float | None = None
    #: stop once DeepConf's group confidence (over ``group_window`` tokens) falls below this
    group_confidence_below: float | None = None
    #: the warm-up: no threshold counts before this many tokens
    min_tokens: int = 8
    window: int = 64
    group_window: int = 2048
    #: False: the stream is passed through unwatched
    enabled: bool = True

    @classmethod
    def keys(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))

    @classmethod
    def parse(cls, values: Mapping[str, Any], where: str = "", base: Policy | None = None,
              shown: Mapping[str, str] | None = None) -> Policy:
        """``base`` (default: all off) with ``values`` laid over it; ``where`` prefixes the
        key in error messages (e.g. ``"metadata.livepplx."``), ``shown`` names a key as the
        client wrote it (a header's name)."""
        if not isinstance(values, Mapping):
            raise PolicyError(f"{where.rstrip('.') or 'the livepplx policy'} must be an object of "
                              f"{', '.join(cls.keys())}, got {values!r}")
        changes: dict[str, Any] = {}
        for key, raw in values.items():
            name = shown.get(key, key) if shown else key
            if key in ("stop_above", "window_ppl_above"):
                changes[key] = _number(name, raw, where, positive=True)
            elif key == "group_confidence_below":
                changes[key] = _number(name, raw, where, positive=False)
            elif key == "min_tokens":
                changes[key] = _whole(name, raw, where, 0, 1 << 20)
            elif key == "window":
                changes[key] = _whole(name, raw, where, 1, 1 << 16)
            elif key == "group_window":
                changes[key] = _whole(name, raw, where, 1, 1 << 20)
            elif key == "enabled":
                changes[key] = _flag(name, raw, where)
            else:
                raise PolicyError(f"unknown livepplx policy key {where}{name}; the keys are {', '.join(cls.keys())}")
        return replace(base if base is not None else cls(), **changes)

    def triggers(self) -> list[Trigger]:
        """The stopping triggers, named by their key (the ``trigger`` label of the metrics)."""
        warmup = min_tokens(self.min_tokens)
        out = []
        if self.stop_above is not None:
            out.append(Trigger(ppl_above(self.stop_above) & warmup, stop=True, name="stop_above"))
        if self.window_ppl_above is not None:
            out.append(Trigger(window_ppl_above(self.window_ppl_above) & warmup, stop=True, name="window_ppl_above"))
        if self.group_confidence_below is not None:
            out.append(Trigger(group_confidence_below(self.group_confidence_below) & warmup, stop=True,
                               name="group_confidence_below"))
        return out

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _metadata(data: Mapping[str, Any]) -> dict[str, Any] | None:
    """The request's metadata dict (``metadata``, or ``litellm_metadata`` on some routes)."""
    for key in ("metadata", "litellm_metadata"):
        value = data.get(key)
        if isinstance(value, dict):
            return value
    return None


def _headers(data: Mapping[str, Any]) -> Mapping[str, Any]:
    request = data.get("proxy_server_request")
    headers = request.get("headers") if isinstance(request, Mapping) else None
    if not isinstance(headers, Mapping):
        meta = _metadata(data)
        headers = meta.get("headers") if meta is not None else None
    return headers if isinstance(headers, Mapping) else {}


def request_policy(data: Mapping[str, Any], base: Policy) -> Policy:
    """``base`` with the request's own policy laid over it: headers, then flat metadata, then
    nested metadata (each later one wins). Raises :class:`PolicyError`.

    >>> request_policy({"metadata": {"livepplx_stop_above": "30", "livepplx": {"min_tokens": 2}},
    ...                 "proxy_server_request": {"headers": {"x-livepplx-stop-above": "10"}}}, Policy())
    Policy(stop_above=30.0, window_ppl_above=None, group_confidence_below=None, min_tokens=2, window=64, group_window=2048, enabled=True)
    """
    policy = base
    from_headers, shown = {}, {}
    for name, value in _headers(data).items():
        lower = str(name).lower()
        if lower.startswith("x-livepplx-"):
            key = lower[len("x-livepplx-"):].replace("-", "_")
            from_headers[key], shown[key] = value, lower
    if from_headers:
        policy = Policy.parse(from_headers, "header ", policy, shown)
    meta = _metadata(data)
    if meta:
        flat = {k[len("livepplx_"):]: v for k, v in meta.items()
                if isinstance(k, str) and k.startswith("livepplx_") and k not in (NOTE, RESULT)}
        if flat:
            policy = Policy.parse(flat, "metadata.livepplx_", policy)
        nested = meta.get("livepplx")
        if nested is not None:
            policy = Policy.parse(nested, "metadata.livepplx.", policy)
    return policy


def _ask(kind: str, data: dict[str, Any], top_logprobs: int) -> bool:
    """Ask the upstream for logprobs unless the request did; True when the callback asked.

    Chat: ``logprobs: true, top_logprobs: N``. Legacy completions: ``logprobs: N`` (an integer
    there; at least 1). Responses: ``include: ["message.output_text.logprobs"]`` only, because
    ``top_logprobs`` is refused by llama-server's ``/v1/responses`` without a ``logprobs``
    flag that OpenAI's Responses API does not define.
    """
    if kind == "chat":
        if data.get("logprobs") is True:
            return False
        data["logprobs"] = True
        data["top_logprobs"] = top_logprobs
        return True
    if kind == "completions":
        asked = data.get("logprobs")
        if isinstance(asked, int) and not isinstance(asked, bool) and asked > 0:
            return False
        data["logprobs"] = max(1, top_logprobs)
        return True
    if kind == "responses":
        include = data.get("include")
        if include is not None and not isinstance(include, list):
            return False  # the client's own mistake: the upstream answers it, not a rewrite of ours
        if include and RESPONSES_LOGPROBS in include:
            return False
        data["include"] = [*(include or ()), RESPONSES_LOGPROBS]
        return True
    return False


class _Tap(deque):  # type: ignore[type-arg]
    """The upstream's own text-completion chunks not read yet, and the LiteLLM stream that reads
    them (:func:`_install_text_completion_tap`): a stop closes that stream, which closes the
    connection to the upstream (the wrappers LiteLLM puts around it for the proxy have no
    ``aclose`` that reaches it)."""

    __slots__ = ("source",)

    def __init__(self) -> None:
        super().__init__()
        self.source: Any = None


def _install_text_completion_tap() -> bool:
    """Let the callback read the upstream's own ``/v1/completions`` chunks. True when installed.

    LiteLLM (1.110.2) drops a text completion's logprobs twice before any callback sees a
    chunk: ``CustomStreamWrapper.handle_openai_text_completion_chunk``
    (litellm/litellm_core_utils/streaming_handler.py:930-952) keeps only the text, the
    ``finish_reason`` and the usage, and ``TextCompletionStreamWrapper.convert_to_text_completion_object``
    (litellm/text_completions/streaming_iterator.py:45-56) builds the client's choice from those.
    The upstream's chunk objects exist only inside the first of these, created after the hook
    starts (litellm/llms/openai/completion/handler.py:329-340). So the tap wraps that method:
    when the request's logging object carries the callback's queue (set by the hook, only for
    a watched stream), the upstream's chunk is appended to it, unchanged; LiteLLM's own work
    is untouched. Without the method (another LiteLLM), nothing is installed and these streams
    are counted ``unscored``.
    """
    try:
        from litellm.litellm_core_utils.streaming_handler import CustomStreamWrapper
    except ImportError:
        return False
    original = getattr(CustomStreamWrapper, "handle_openai_text_completion_chunk", None)
    if original is None:
        return False
    if getattr(original, "_livepplx_tap", False):
        return True

    def handle_openai_text_completion_chunk(self: Any, chunk: object) -> Any:
        queue = getattr(getattr(self, "logging_obj", None), _RAW, None)
        if queue is not None:
            queue.source = self
            queue.append(chunk)
        return original(self, chunk)

    handle_openai_text_completion_chunk._livepplx_tap = True  # type: ignore[attr-defined]
    CustomStreamWrapper.handle_openai_text_completion_chunk = handle_openai_text_completion_chunk  # type: ignore[method-assign]
    return True


def _max_tokens(data: Mapping[str, Any]) -> int | None:
    for key in ("max_tokens", "max_completion_tokens"):
        value = data.get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


class _LogOnce:
    """Logs each kind of thing once per key: a gateway serving thousands of requests a second
    must not write one line per request about the same model."""

    def __init__(self) -> None:
        self.seen: set[tuple[str, str]] = set()

    def __call__(self, kind: str, key: str, message: str, *args: Any, exc_info: bool = False) -> None:
        if (kind, key) in self.seen or len(self.seen) > 10_000:
            return
        self.seen.add((kind, key))
        log.warning(message, *args, exc_info=exc_info)


class _Watch:
    """One stream's watcher: its state, whether the callback asked for logprobs, the stop."""

    __slots__ = ("callback", "state", "added", "kind", "model", "broken", "raw", "response_id")

    def __init__(self, callback: LivepplxCallback, note: Mapping[str, Any], request_data: dict[str, Any]) -> None:
        self.callback = callback
        self.model = str(request_data.get("model") or "unknown")
        self.added = bool(note.get("added"))
        self.kind = str(note.get("kind"))
        policy = Policy.parse(note.get("policy") or {})
        request = {"model": self.model}
        max_tokens = _max_tokens(request_data)
        if max_tokens is not None:
            request["max_tokens"] = max_tokens  # type: ignore[assignment]
        # Memory is per open stream, times thousands: the DeepConf window (2,048 slots, 33 kB) only
        # when its trigger is on, and only the text's tail (nothing reads more of it here): 5 kB a stream.
        group_window = policy.group_window if policy.group_confidence_below is not None else 1
        options = MonitorOptions(window=policy.window, group_window=group_window, triggers=tuple(policy.triggers()),
                                 text_limit=256, on_missing_logprobs="ignore", listeners=callback.listeners)
        self.state = StreamState(options, request=request)
        self.broken = False
        self.response_id: str | None = None
        # Completions: the upstream's own chunks, from the tap (the client's carry no logprobs).
        self.raw: Any = None
        if self.kind == "completions" and callback.text_completion_tap:
            logging_obj = request_data.get("litellm_logging_obj")
            if logging_obj is not None:
                self.raw = _Tap()
                setattr(logging_obj, _RAW, self.raw)

    def see(self, chunk: Any) -> bool:
        """Count the chunk, take out the logprobs the client did not ask for; True on a stop.
        Never raises: a failure is logged and the rest of the stream passes unwatched."""
        if self.broken and self.raw:
            self.raw.clear()  # unwatched from here: hold none of the upstream's chunks
        if not self.broken:
            try:
                if self.raw is not None:
                    while self.raw:  # the upstream's chunks read so far, with their logprobs
                        self.state.handle(self.raw.popleft())
                else:
                    self.state.handle(chunk)
                if self.kind == "responses" and self.response_id is None:
                    response = getattr(chunk, "response", None)
                    self.response_id = getattr(response, "id", None) or (
                        response.get("id") if isinstance(response, Mapping) else None)
            except Exception as e:
                self.broken = True
                self.state.fail(f"livepplx could not read a chunk: {type(e).__name__}: {e}")
                self.callback._log("chunk", type(e).__name__, "livepplx: a chunk of model %r could not be read (%s); "
                                   "the stream goes on unwatched", self.model, e, exc_info=True)
        if self.added:
            try:
                extra = getattr(chunk, "__pydantic_extra__", None) if self.kind == "responses" else None
                if extra and "logprobs" in extra:  # a Responses event: logprobs is an extra field
                    del extra["logprobs"]
                for choice in getattr(chunk, "choices", None) or ():
                    if getattr(choice, "logprobs", None) is not None:
                        choice.logprobs = None
            except Exception as e:
                self.callback._log("strip", type(e).__name__, "livepplx: could not take logprobs out of a chunk "
                                   "(%s)", e, exc_info=True)
        return not self.broken and self.state.stopped is not None

    def final(self, chunk: Any) -> Any:
        """The chunk that ends a stopped stream: every open choice with the stop's finish_reason."""
        state, stop = self.state, self.state.stopped
        assert stop is not None
        open_choices = sorted(set(state.choices) - state.ended) or [stop.choice]
        summary = {"stopped": stop.reason, "at_token": stop.at_token, "tokens": state.tokens,
                   "ppl": state.ppl if math.isfinite(state.ppl) else None}
        reason = self.callback.finish_reason
        if self.kind == "responses":
            return self._incomplete(summary)
        from litellm.types.utils import Delta, ModelResponseStream, StreamingChoices

        if isinstance(chunk, ModelResponseStream):
            return ModelResponseStream(id=chunk.id, created=chunk.created, model=chunk.model,
                                       choices=[StreamingChoices(index=i, delta=Delta(), finish_reason=reason)
                                                for i in open_choices], livepplx=summary)
        final = chunk.model_copy(deep=True)
        template = final.choices[0]
        choices = []
        for i in open_choices:
            choice = template.model_copy(deep=True)
            choice.index, choice.text, choice.finish_reason, choice.logprobs = i, "", reason, None
            choices.append(choice)
        final.choices = choices
        final.livepplx = summary
        return final

    def _incomplete(self, summary: dict[str, Any]) -> Any:
        """A stopped Responses stream ends as OpenAI ends one cut by ``max_output_tokens``:
        ``response.incomplete`` with that reason, and the statistics beside it."""
        import time

        from litellm.types.llms.openai import ResponseIncompleteEvent, ResponsesAPIResponse

        # (model_validate: LiteLLM types these fields with its own enum and TypedDicts)
        response = ResponsesAPIResponse.model_validate(
            {"id": self.response_id or "resp_livepplx", "created_at": int(time.time()), "object": "response",
             "model": self.model, "status": "incomplete", "output": [],
             "incomplete_details": {"reason": "max_output_tokens"}})
        return ResponseIncompleteEvent.model_validate({"type": "response.incomplete", "response": response,
                                                       "livepplx": summary})

    def end(self, request_data: dict[str, Any]) -> None:
        try:
            if self.raw is not None:  # the upstream's last chunks (its finish_reason) come before the client's
                while self.raw and self.state.stopped is None and not self.broken:
                    self.state.handle(self.raw.popleft())
                self.raw.clear()
                logging_obj = request_data.get("litellm_logging_obj")
                if logging_obj is not None and getattr(logging_obj, _RAW, None) is self.raw:
                    delattr(logging_obj, _RAW)
            state = self.state
            state.finish()
            if not state.total_tokens and state.unscored:
                why = ("LiteLLM's /v1/completions stream drops them and the tap is not installed"
                       if self.kind == "completions" and self.raw is None else
                       "the upstream ignored the request for them")
                self.callback._log(f"unscored {self.kind}", self.model, "livepplx: model %r streams %s answers "
                                   "without logprobs (%s); they pass through unscored, counted in "
                                   "livepplx_unscored_total (said once per model)", self.model, self.kind, why)
            meta = _metadata(request_data)
            if meta is not None:
                meta[RESULT] = {"tokens": state.tokens, "ppl": state.ppl if math.isfinite(state.ppl) else None,
                                "stopped": state.stopped.reason if state.stopped else None,
                                "unscored": state.unscored if not state.total_tokens else 0}
        except Exception as e:
            self.callback._log("end", type(e).__name__, "livepplx: ending a stream's watch failed (%s)", e,
                               exc_info=True)
        try:
            self.state.end()  # the listeners (metrics, telemetry): one that raises must not reach the client
        except Exception as e:
            self.callback._log("listener", type(e).__name__, "livepplx: a listener failed at a stream's end (%s)", e,
                               exc_info=True)


async def _close(response: Any) -> None:
    """Close the upstream now (before the client's last chunks), so the server stops generating."""
    try:
        closing = getattr(response, "aclose", None)
        if closing is not None:
            await closing()
    except Exception as e:  # the proxy closes it again when the stream ends; say why it could not now
        log.debug("livepplx: closing the upstream early failed (%s); the proxy closes it at the end", e)


class LivepplxCallback(CustomLogger):
    """The LiteLLM proxy callback (see the module's docstring).

    Args:
        default: the policy of every model (a dict of policy keys), under each model's own.
        models: policies by model name (the proxy's ``model_name``), under ``model_info.livepplx``.
        top_logprobs: alternatives asked per token when the client did not ask (default 5).
        finish_reason: of the chunk that ends a stopped stream (default ``"length"``).
        metrics: count into Prometheus (default True: the process's default registry), or a
            :class:`~livepplx.integrations.prometheus.PrometheusListener`, or False.
        metrics_port: serve the registry on ``127.0.0.1:PORT/metrics`` (default:
            ``$LIVEPPLX_METRICS_PORT``, if set).
        listeners: more :class:`~livepplx.core.state.Listener` objects told of each stream.
    """

    def __init__(self, default: Mapping[str, Any] | None = None, models: Mapping[str, Mapping[str, Any]] | None = None,
                 *, top_logprobs: int = 5, finish_reason: str = STOP_FINISH_REASON, metrics: Any = True,
                 metrics_port: int | None = None, listeners: tuple[Listener, ...] | list[Listener] = ()) -> None:
        super().__init__()
        self.default = Policy.parse(default or {}, "default.")
        self.models = {name: Policy.parse(values, f"models[{name!r}].", self.default)
                       for name, values in (models or {}).items()}
        if isinstance(top_logprobs, bool) or not isinstance(top_logprobs, int) or not 0 <= top_logprobs <= 20:
            raise ValueError(f"top_logprobs must be a whole number from 0 to 20, got {top_logprobs!r}")
        self.top_logprobs = top_logprobs
        self.finish_reason = finish_reason
        self.metrics: Any = None
        if metrics is True:
            from .prometheus import default_listener

            self.metrics = default_listener()
        elif metrics:
            self.metrics = metrics
        self.listeners: tuple[Listener, ...] = tuple(listeners) + ((self.metrics,) if self.metrics is not None else ())
        port = metrics_port
        if port is None and os.environ.get("LIVEPPLX_METRICS_PORT"):
            raw = os.environ["LIVEPPLX_METRICS_PORT"]
            if not raw.isdigit() or not 0 < int(raw) < 65536:
                raise ValueError(f"LIVEPPLX_METRICS_PORT must be a port number, got {raw!r}")
            port = int(raw)
        if port is not None and self.metrics is not None:
            from .prometheus import serve

            serve(port, self.metrics.registry)
        self._log = _LogOnce()
        #: whether ``/v1/completions`` streams can be scored (see :func:`_install_text_completion_tap`)
        self.text_completion_tap = _install_text_completion_tap()
        self._config: dict[str, Policy] = {}
        self._config_of: int | None = None

    # -- policy ------------------------------------------------------------------------------

    def model_policy(self, model: str) -> Policy:
        """The model's policy: ``model_info.livepplx`` of its deployment in the proxy's config,
        else ``models[model]``, else ``default``."""
        try:
            config = self._config_policies()
        except Exception as e:  # the router's layout is LiteLLM's: without it, the callback's own policies
            self._log("config", type(e).__name__, "livepplx: could not read the proxy's model_list (%s)", e)
            config = {}
        return config.get(model) or self.models.get(model) or self.default

    def _config_policies(self) -> dict[str, Policy]:
        from litellm.proxy import proxy_server

        router = getattr(proxy_server, "llm_router", None)
        model_list = getattr(router, "model_list", None) or []
        if id(model_list) == self._config_of:
            return self._config
        policies: dict[str, Policy] = {}
        for deployment in model_list:
            info = deployment.get("model_info") or {}
            name = deployment.get("model_name")
            values = info.get("livepplx") if isinstance(info, Mapping) else None
            if values is None or not isinstance(name, str) or name in policies:
                continue
            base = self.models.get(name, self.default)
            try:
                policies[name] = Policy.parse(values, f"model_info.livepplx of model {name!r}: ", base)
            except PolicyError as e:  # the operator's mistake: said loudly, and the model keeps the base policy
                log.error("livepplx: %s; the model is watched with the callback's own policy", e)
                policies[name] = base
        self._config, self._config_of = policies, id(model_list)
        return policies

    # -- the hooks ---------------------------------------------------------------------------

    async def async_pre_call_hook(self, user_api_key_dict: Any, cache: Any, data: dict[str, Any],
                                  call_type: Any) -> dict[str, Any]:
        """Read the policy, ask for logprobs, leave a note in the metadata. A bad policy is a 400."""
        try:
            kind = _KINDS.get(str(call_type))
            if kind is None or data.get("stream") is not True:
                return data
            model = data.get("model")
            policy = request_policy(data, self.model_policy(model if isinstance(model, str) else ""))
            if not policy.enabled:
                return data
            meta = _metadata(data)
            if meta is None:
                meta = data["metadata"] = {}
            added = _ask(kind, data, self.top_logprobs)
            meta[NOTE] = {"kind": kind, "added": added, "policy": policy.as_dict()}
        except PolicyError as e:
            from fastapi import HTTPException

            raise HTTPException(status_code=400, detail={"error": f"livepplx: {e}"}) from e
        except Exception as e:  # the request goes on unwatched rather than failing because of livepplx
            self._log("pre_call", type(e).__name__, "livepplx: preparing a request failed (%s); it goes unwatched",
                      e, exc_info=True)
        return data

    async def async_post_call_streaming_iterator_hook(self, user_api_key_dict: Any, response: Any,
                                                      request_data: dict[str, Any]) -> AsyncGenerator[Any, None]:
        """Watch every chunk; on a stop close the upstream, then end the client's stream cleanly."""
        watch: _Watch | None = None
        try:
            meta = _metadata(request_data)
            note = meta.get(NOTE) if meta is not None else None
            if isinstance(note, Mapping):
                watch = _Watch(self, note, request_data)
        except Exception as e:
            self._log("watch", type(e).__name__, "livepplx: could not start watching a stream (%s); it passes "
                      "through unwatched", e, exc_info=True)
        if watch is None:
            async for chunk in response:
                yield chunk
            return
        try:
            async for chunk in response:
                if watch.see(chunk):
                    await _close(response)  # close first: the upstream stops before the client hears of it
                    if watch.raw is not None and watch.raw.source is not None:
                        await _close(watch.raw.source)
                    yield chunk
                    try:
                        final = watch.final(chunk)
                    except Exception as e:
                        final = None
                        self._log("final", type(e).__name__, "livepplx: could not build the closing chunk (%s)", e,
                                  exc_info=True)
                    if final is not None:
                        yield final
                    return
                yield chunk
        finally:
            watch.end(request_data)
