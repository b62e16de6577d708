"""pydantic-ai: watch an agent's streamed answer from the tap under its provider, stop it, escalate.

    python examples/pydantic_ai_stream.py --base-url http://127.0.0.1:8080/v1 --model gemma \\
        --prompt "Name three fruits." --max-tokens 200 --temperature 0 --stop-above 12 --json

pydantic-ai hands no logprob over while it streams, so the tap watches in its HTTP client:
it asks the server for logprobs (and takes them out of what pydantic-ai gets), and a stop
closes the response and ends the stream as a normal end, so ``run_stream`` finishes with the
text up to the stop. The agent use: ``--max-ppl X`` adds an output validator that refuses an
answer above X (``ModelRetry``; in ``run_stream`` pydantic-ai then raises
``UnexpectedModelBehavior``), and a stopped or refused answer is asked again of
``--escalate-to MODEL``. With ``--json`` the last line is the summary of the watched answer
(as ``livepplx replay --json``) and the text pydantic-ai delivered. Needs
``pip install 'livepplx[pydantic-ai]'``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from typing import Any, Sequence

from pydantic_ai import Agent
from pydantic_ai.exceptions import UnexpectedModelBehavior
from pydantic_ai.models.openai import OpenAIChatModel

from livepplx.integrations.pydantic_ai import retry_above, tapped_provider
from livepplx.integrations.tap import Tap

from _agent_step import parse, report  # the examples' shared command line (beside this file)


async def run(args: argparse.Namespace, inner: Any) -> dict[str, Any]:
    tap = Tap(stop_above=args.stop_above)
    provider = tapped_provider(tap, base_url=args.base_url, api_key=os.environ.get("OPENAI_API_KEY"), inner=inner,
                               max_retries=0)
    agent = Agent(OpenAIChatModel(args.model, provider=provider))
    if args.max_ppl:
        agent.output_validator(retry_above(tap, args.max_ppl))
    settings: dict[str, Any] = {"max_tokens": args.max_tokens, "temperature": args.temperature}
    if args.extra_body:
        settings["extra_body"] = args.extra_body
    text, doubt = "", ""
    try:
        async with agent.run_stream(args.prompt, model_settings=settings) as result:  # type: ignore[arg-type]
            async for delta in result.stream_text(delta=True):
                text += delta
                if not args.json:
                    print(delta, end="", flush=True)
    except UnexpectedModelBehavior as refused:
        doubt = f"refused: {refused}"
    state = next(iter(tap.states.values()))  # the watched answer (an escalation is an answer of its own)
    summary = {**state.summary(), "text": text}
    if state.stopped is not None:
        doubt = f"stopped at token {state.stopped.at_token}: {state.stopped.reason}"
    if doubt:
        # The agent's step: a lost or doubtful answer is not passed on; a stronger model is asked.
        print(f"\n[{doubt}]", file=sys.stderr)
        if args.escalate_to:
            again = await Agent(OpenAIChatModel(args.escalate_to, provider=provider)).run(
                args.prompt, model_settings=settings)  # type: ignore[arg-type]
            summary["escalated"] = {"model": args.escalate_to, "text": again.output}
    return summary


def main(argv: Sequence[str] | None = None, inner: Any = None) -> dict[str, Any]:
    """``inner``: the async transport under the tap (tests give a mocked one)."""
    args = parse(__doc__, argv, max_ppl="refuse a whole answer above this perplexity")
    summary = asyncio.run(run(args, inner))
    return report(args, summary)



if __name__ == "__main__":
    main()
