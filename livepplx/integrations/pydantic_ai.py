"""pydantic-ai: the live perplexity of an agent's answers, from the tap under its OpenAI provider.

pydantic-ai's own streaming path does not hand logprobs over live: its chat-completions
stream gathers them and sets ``ModelResponse.provider_details["logprobs"]`` once, when the
stream is over (pydantic-ai-slim 2.68; older versions kept only the last chunk's, its issue
#8642), and nothing in ``agent.run_stream(...)`` sees a token's logprob as it comes. So
livepplx watches underneath, in the HTTP client the provider sends through
(:mod:`livepplx.integrations.tap`)::

    from pydantic_ai import Agent
    from pydantic_ai.models.openai import OpenAIChatModel
    from livepplx.integrations.tap import Tap
    from livepplx.integrations.pydantic_ai import tapped_provider, retry_above

    tap = Tap(stop_above=20)                       # asks for logprobs, gives them back out
    agent = Agent(OpenAIChatModel("gemma", provider=tapped_provider(tap, base_url=URL)))
    agent.output_validator(retry_above(tap, max_ppl=15))   # a doubtful answer: ModelRetry
    async with agent.run_stream("Name three fruits.") as result:
        async for text in result.stream_text(delta=True):
            ...
    tap.last.summary()

:func:`tapped_provider` is ``OpenAIProvider(openai_client=AsyncOpenAI(http_client=...))``
with the tap's transport in that client. A stop closes the upstream response (the server
stops) and ends the stream as a normal end (``finish_reason: "length"``), so pydantic-ai
finishes the run with the text up to the stop; :func:`retry_above` is the agent's step that
acts on it: an output validator that raises ``ModelRetry`` when the answer was stopped or its
perplexity is above ``max_ppl``, so pydantic-ai asks again (and raises
``UnexpectedModelBehavior`` when its retries are spent: escalate there).

The statistics are those of the tap: ``tap.last`` (the latest answer) and ``tap.states``
(per answer, by its id). One tap per agent keeps ``tap.last`` that agent's latest answer.
"""

from __future__ import annotations

import math
from typing import Any, Callable

from ..core.errors import LivepplxError
from .tap import Tap

__all__ = ["tapped_provider", "retry_above"]


def _pydantic_ai() -> tuple[Any, Any]:
    try:
        from pydantic_ai import ModelRetry
        from pydantic_ai.providers.openai import OpenAIProvider
    except ImportError as e:  # pragma: no cover - the extra is missing
        raise ImportError(f"livepplx.integrations.pydantic_ai needs pydantic-ai: pip install 'livepplx[pydantic-ai]' "
                          f"({e})") from e
    return OpenAIProvider, ModelRetry


def _async_client(tap: Tap, inner: Any) -> Any:
    """An async HTTP client with the tap's transport, of the library the transport under it
    comes from, else of the one the openai SDK sends with (httpx2 for openai >= 3)."""
    import importlib

    if inner is not None:
        library = importlib.import_module(type(inner).__module__.split(".")[0])
    else:
        try:
            library = importlib.import_module("httpx2")
        except ImportError:
            library = importlib.import_module("httpx")
    return library.AsyncClient(transport=tap.async_transport(inner), timeout=600)


def tapped_provider(tap: Tap, *, base_url: str | None = None, api_key: str | None = None, inner: Any = None,
                    **client: Any) -> Any:
    """An ``OpenAIProvider`` whose HTTP goes through ``tap``.

    Args:
        tap: the :class:`~livepplx.integrations.tap.Tap` whose options (``stop_above``,
            ``triggers``, ...) watch every answer and whose ``last`` / ``states`` hold them.
        base_url, api_key: the server (the openai SDK's defaults: ``OPENAI_BASE_URL``,
            ``OPENAI_API_KEY``; a placeholder key when a base URL is given without one).
        inner: the async transport under the tap (default: the real one of the library the
            openai SDK sends with; an ``httpx`` or ``httpx2`` transport picks its library).
        client: more ``openai.AsyncOpenAI`` arguments (``max_retries``, ``timeout``, ...).
    """
    provider_class, _ = _pydantic_ai()
    import openai

    if not isinstance(tap, Tap):
        raise TypeError(f"tap must be a livepplx.integrations.tap.Tap, got {tap!r}")
    if api_key is None and base_url is not None:
        api_key = "sk-no-key"  # local servers need none, the SDK needs one
    openai_client = openai.AsyncOpenAI(base_url=base_url, api_key=api_key, http_client=_async_client(tap, inner), **client)
    return provider_class(openai_client=openai_client)


def retry_above(tap: Tap, max_ppl: float = math.inf) -> Callable[[Any, Any], Any]:
    """An output validator (``agent.output_validator(retry_above(tap, 15))``) that raises
    ``ModelRetry`` when the latest answer through ``tap`` was stopped or has a running
    perplexity above ``max_ppl`` (default: only a stop). Partial outputs of a stream pass.
    """
    _, retry_class = _pydantic_ai()
    if isinstance(max_ppl, bool) or not isinstance(max_ppl, (int, float)) or not max_ppl > 0:
        raise ValueError(f"max_ppl must be a positive number, got {max_ppl!r}")

    def perplexity_check(ctx: Any, output: Any) -> Any:
        if getattr(ctx, "partial_output", False):
            return output  # judged once, when the answer is whole
        state = tap.last
        if state is None:
            raise LivepplxError("retry_above: no answer went through the tap: give the agent tapped_provider(tap)")
        if state.stopped is not None:
            raise retry_class(f"The answer was cut at token {state.stopped.at_token} ({state.stopped.reason}): "
                              "answer again, plainly and briefly.")
        if not state.has_logprobs and max_ppl < math.inf:
            raise LivepplxError(f"retry_above cannot judge an answer without logprobs: {state.error}")
        if state.has_logprobs and not state.ppl <= max_ppl:
            raise retry_class(f"The answer's perplexity was {state.ppl:.3g}, above {max_ppl:g}: answer again, "
                              "plainly and briefly.")
        return output

    return perplexity_check
