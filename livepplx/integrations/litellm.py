"""LiteLLM SDK: a monitored ``litellm.completion`` stream.

LiteLLM's streamed chunks (``ModelResponseStream``, from its ``CustomStreamWrapper``) are
OpenAI chat chunks with the provider's logprobs in ``choices[].logprobs``, so
:func:`livepplx.monitor` reads them as they are::

    import livepplx, litellm
    with livepplx.monitor(litellm.completion(model="openai/gemma", api_base=URL, messages=msgs,
                                             stream=True, logprobs=True, top_logprobs=5),
                          stop_above=20) as m:
        for chunk in m:
            ...

:func:`completion` and :func:`acompletion` are that, with the request made for it: ``stream=True``,
``logprobs=True`` and ``top_logprobs=5`` unless given, and the monitor options
(``stop_above``, ``triggers``, ...) taken apart from LiteLLM's arguments::

    from livepplx.integrations import litellm as lx
    with lx.completion(model="openai/gemma", api_base=URL, messages=msgs, stop_above=20) as m:
        for chunk in m:
            print(chunk.choices[0].delta.content or "", end="")
    m.summary()

A stop closes LiteLLM's stream wrapper, which closes the provider's HTTP response (the
server stops generating), then runs the triggers' callbacks, as :func:`~livepplx.monitor`
does. Set ``LITELLM_LOCAL_MODEL_COST_MAP=True`` before importing LiteLLM to keep it from
fetching its cost map at import.

What LiteLLM does to logprobs (checked with litellm 1.110): they pass through per chunk; a
``finish_reason`` that came with the last token is moved to a chunk of its own, and kept
(its issue #10686, a ``finish_reason`` lost with ``logprobs`` and ``stream``, does not occur);
a stream that ends without any ``finish_reason`` is raised by LiteLLM itself as
``MidStreamFallbackError``. ``drop_params=True`` may drop ``logprobs`` for a provider LiteLLM
believes does not take them: the text then comes without logprobs, which is
:class:`~livepplx.core.errors.NoLogprobsError`, never "0 tokens".
"""

from __future__ import annotations

from typing import Any

from ..monitor import AsyncMonitoredStream, MonitoredStream, amonitor, monitor
from ..core.state import OPTION_NAMES, MonitorOptions

__all__ = ["completion", "acompletion", "request"]


def _litellm() -> Any:
    try:
        import litellm
    except ImportError as e:  # pragma: no cover - the extra is missing
        raise ImportError(f"livepplx.integrations.litellm needs LiteLLM: pip install 'livepplx[litellm]' ({e})") from e
    return litellm


def request(kwargs: dict[str, Any], top_logprobs: int = 5) -> tuple[dict[str, Any], dict[str, Any]]:
    """LiteLLM's arguments with streaming and logprobs switched on (what the caller set wins),
    and the monitor options taken out of them.

    >>> call, options = request({"model": "openai/m", "messages": [], "stop_above": 9.0})
    >>> call["stream"], call["logprobs"], call["top_logprobs"], options
    (True, True, 5, {'stop_above': 9.0})
    """
    call = {k: v for k, v in kwargs.items() if k not in OPTION_NAMES}
    options = {k: v for k, v in kwargs.items() if k in OPTION_NAMES}
    call["stream"] = True
    call.setdefault("logprobs", True)
    call.setdefault("top_logprobs", top_logprobs)  # llama-cpp-python sends none without it
    return call, options


def completion(options: MonitorOptions | None = None, *, idle_timeout: float | None = None,
               **kwargs: Any) -> MonitoredStream[Any]:
    """``litellm.completion(**kwargs)``, streamed with logprobs and monitored.

    ``kwargs`` are LiteLLM's (``model``, ``messages``, ``api_base``, ...) and the monitor's
    (``stop_above``, ``triggers``, ``listeners``, ...: :class:`~livepplx.core.state.MonitorOptions`);
    the chunks are LiteLLM's, unchanged. Escalations get the LiteLLM request.
    """
    call, monitor_kw = request(kwargs)
    stream = _litellm().completion(**call)
    return monitor(stream, options, idle_timeout=idle_timeout, request=call, **monitor_kw)


async def acompletion(options: MonitorOptions | None = None, *, idle_timeout: float | None = None,
                      **kwargs: Any) -> AsyncMonitoredStream[Any]:
    """``await litellm.acompletion(**kwargs)``, streamed with logprobs and monitored
    (``async def`` callbacks are awaited)."""
    call, monitor_kw = request(kwargs)
    stream = await _litellm().acompletion(**call)
    return amonitor(stream, options, idle_timeout=idle_timeout, request=call, **monitor_kw)
