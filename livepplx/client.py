"""Open a monitored stream with the request that makes servers send logprobs.

:func:`stream` (and :func:`astream` for ``AsyncOpenAI``) adds ``stream=True``, the
logprob parameters of the endpoint (``top_logprobs`` defaults to 5: llama-cpp-python
returns nothing without it) and ``include_usage``; then it reads up to the first
token. Connection errors, 429 (honouring ``Retry-After``) and 5xx are retried with
tenacity up to that point, never after: a half-read answer is not silently restarted.

    with livepplx.stream(client, model="gpt-4o-mini", messages=msgs, stop_above=20) as s:
        for chunk in s:
            ...
    print(s.ppl, s.stopped)
"""

from __future__ import annotations

import datetime
import email.utils
import math
import time
from typing import Any, Literal

import openai
import tenacity

from .monitor import AsyncMonitoredStream, MonitoredStream, _Monitored
from .core.state import OPTION_NAMES, MonitorOptions, StreamState, make_options

__all__ = ["stream", "astream", "build_request", "retryable", "wait_retry_after", "Endpoint"]

Endpoint = Literal["chat", "completions", "responses"]

#: Never wait longer than this for a server's Retry-After.
MAX_RETRY_AFTER = 60.0


def build_request(
    endpoint: Endpoint, request: dict[str, Any], top_logprobs: int = 5, include_usage: bool = True
) -> dict[str, Any]:
    """The request with streaming and logprobs switched on; what the caller set wins.

    >>> build_request("chat", {"model": "m", "messages": []})["top_logprobs"]
    5
    >>> build_request("completions", {"model": "m", "prompt": "x"}, top_logprobs=3)["logprobs"]
    3
    >>> build_request("responses", {"model": "m", "input": "x"})["include"]
    ['message.output_text.logprobs']
    """
    req = dict(request, stream=True)
    if endpoint == "chat":
        req.setdefault("logprobs", True)
        req.setdefault("top_logprobs", top_logprobs)
    elif endpoint == "completions":
        req.setdefault("logprobs", top_logprobs)  # legacy Completions takes the count here
    elif endpoint == "responses":
        req.setdefault("top_logprobs", top_logprobs)
        include = list(req.get("include") or [])
        if "message.output_text.logprobs" not in include:
            include.append("message.output_text.logprobs")
        req["include"] = include
        return req  # the Responses API always reports usage
    else:
        raise ValueError(f"endpoint must be 'chat', 'completions' or 'responses', got {endpoint!r}")
    if include_usage:
        req.setdefault("stream_options", {"include_usage": True})
    return req


def retryable(error: BaseException) -> bool:
    """Connection errors, 429 and 5xx: worth another try before the first token."""
    if isinstance(error, openai.APIConnectionError):
        return True
    if isinstance(error, openai.APIStatusError):
        return error.status_code == 429 or error.status_code >= 500
    return False


def _seconds(text: str) -> float | None:
    """A count of seconds, or None: "soon", "nan", "-3" and "inf" are no hint."""
    try:
        value = float(text)
    except ValueError:
        return None
    return value if 0.0 <= value < math.inf else None


def _retry_after(error: BaseException | None) -> float | None:
    """The server's hint, in seconds: ``retry-after-ms``, or ``Retry-After`` as seconds or an
    HTTP date; anything else (a word, NaN, a negative number, a malformed date) is no hint."""
    response = getattr(error, "response", None)
    headers = getattr(response, "headers", None)
    if not headers:
        return None
    ms = headers.get("retry-after-ms")
    if ms is not None:
        value = _seconds(ms)
        if value is not None:
            return value / 1000
    text = headers.get("retry-after")
    if not text:
        return None
    value = _seconds(text)
    if value is not None:
        return value
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:  # RFC 9110 dates are GMT; a date without a zone is read as such
        when = when.replace(tzinfo=datetime.timezone.utc)
    return max(0.0, when.timestamp() - time.time())


class wait_retry_after(tenacity.wait.wait_base):
    """Wait what the server's ``Retry-After`` says (capped at 60 s), else ``fallback``."""

    def __init__(self, fallback: tenacity.wait.wait_base | None = None) -> None:
        self.fallback = fallback or tenacity.wait_exponential(multiplier=0.5, max=8) + tenacity.wait_random(0, 0.5)

    def __call__(self, retry_state: tenacity.RetryCallState) -> float:
        error = retry_state.outcome.exception() if retry_state.outcome else None
        delay = _retry_after(error)
        if delay is not None:
            return min(max(delay, 0.0), MAX_RETRY_AFTER)
        return self.fallback(retry_state)


def _split(
    endpoint: Endpoint, request: dict[str, Any] | None, options: MonitorOptions | None, kwargs: dict[str, Any],
    top_logprobs: int, include_usage: bool,
) -> tuple[dict[str, Any], MonitorOptions]:
    """The request to send and the monitor's options, kept apart.

    Keyword names that are monitor options (:class:`MonitorOptions`' fields) go to the
    monitor; every other keyword is the request's, sent as it is. A request given whole as
    ``request={...}`` is never searched for options.
    """
    monitor_kw = {k: kwargs.pop(k) for k in list(kwargs) if k in OPTION_NAMES}
    if request is not None and kwargs:
        raise TypeError(f"give the request either as request={{...}} or as keywords, not both (got {', '.join(kwargs)})")
    body = dict(request if request is not None else kwargs)
    return build_request(endpoint, body, top_logprobs, include_usage), make_options(options, monitor_kw)


def _create(client: Any, endpoint: Endpoint, attempts: int) -> Any:
    # tenacity does the retrying (it covers failures before the first token, too):
    # the SDK's own retries would multiply with ours.
    if attempts > 1:
        client = client.with_options(max_retries=0)
    return {
        "chat": lambda: client.chat.completions.create,
        "completions": lambda: client.completions.create,
        "responses": lambda: client.responses.create,
    }[endpoint]()


def _retrying_kwargs(attempts: int, wait: tenacity.wait.wait_base | None) -> dict[str, Any]:
    return dict(
        retry=tenacity.retry_if_exception(retryable),
        stop=tenacity.stop_after_attempt(attempts),
        wait=wait_retry_after(wait),
        reraise=True,
    )


def _first_text(monitored: _Monitored) -> bool:
    # The first token, or text without logprobs (whose policy then applies): either way,
    # the answer has started and a retry would restart it.
    return bool(monitored.state.choices or monitored.state.unscored)


def stream(
    client: Any,
    *,
    endpoint: Endpoint = "chat",
    top_logprobs: int = 5,
    include_usage: bool = True,
    attempts: int = 4,
    wait: tenacity.wait.wait_base | None = None,
    idle_timeout: float | None = None,
    options: MonitorOptions | None = None,
    request: dict[str, Any] | None = None,
    **kwargs: Any,
) -> MonitoredStream[Any]:
    """Open a monitored stream on an ``OpenAI`` client (or any OpenAI-compatible server).

    Args:
        client: an ``openai.OpenAI`` client (its ``base_url`` may be vLLM, llama.cpp, ...).
        endpoint: ``"chat"`` (default), ``"completions"`` or ``"responses"``.
        top_logprobs: alternatives per token (default 5; 0 disables entropy and confidence).
        include_usage: ask for the usage chunk where the endpoint takes it (default True).
        attempts: tries in all before the first token (default 4; 1 disables retrying).
        wait: tenacity wait between tries when the server gives no ``Retry-After``
            (default exponential from 0.5 s to 8 s, plus up to 0.5 s of jitter).
        idle_timeout: seconds without a chunk before the stream is stopped (see
            :func:`livepplx.monitor`); the client's own ``timeout`` still bounds each read.
        options: the monitor's :class:`~livepplx.core.state.MonitorOptions`.
        request: the request as one dict (``{"model": ..., "messages": ...}``), kept apart
            from the monitor's keywords.
        **kwargs: or the request as keywords (``model``, ``messages``, ...); a keyword that
            names a monitor option (``stop_above``, ``triggers``, ``window``, ``listeners``,
            ...: the fields of :class:`~livepplx.core.state.MonitorOptions`) goes to the monitor.
    """
    body, opts = _split(endpoint, request, options, kwargs, top_logprobs, include_usage)
    create = _create(client, endpoint, attempts)
    for attempt in tenacity.Retrying(**_retrying_kwargs(attempts, wait)):
        with attempt:
            monitored = MonitoredStream(create(**body), StreamState(opts, request=body), idle_timeout)
            try:
                monitored.prefetch(_first_text)
            except BaseException:
                monitored.close()
                raise
    return monitored


async def astream(
    client: Any,
    *,
    endpoint: Endpoint = "chat",
    top_logprobs: int = 5,
    include_usage: bool = True,
    attempts: int = 4,
    wait: tenacity.wait.wait_base | None = None,
    idle_timeout: float | None = None,
    options: MonitorOptions | None = None,
    request: dict[str, Any] | None = None,
    **kwargs: Any,
) -> AsyncMonitoredStream[Any]:
    """:func:`stream` for an ``AsyncOpenAI`` client: ``s = await livepplx.astream(client, ...)``;
    ``async def`` callbacks and escalations are awaited."""
    body, opts = _split(endpoint, request, options, kwargs, top_logprobs, include_usage)
    create = _create(client, endpoint, attempts)
    async for attempt in tenacity.AsyncRetrying(**_retrying_kwargs(attempts, wait)):
        with attempt:
            monitored = AsyncMonitoredStream(await create(**body), StreamState(opts, request=body), idle_timeout)
            try:
                await monitored.prefetch(_first_text)
            except BaseException:
                await monitored.close()
                raise
    return monitored
