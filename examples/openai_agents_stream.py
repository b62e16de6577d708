"""OpenAI Agents SDK: watch a streamed run's perplexity live, stop it, guard and escalate.

    python examples/openai_agents_stream.py --base-url http://127.0.0.1:8080/v1 --model gemma \\
        --prompt "Name three fruits." --max-tokens 200 --temperature 0 --stop-above 12 --json

A chat-completions model with ``ModelSettings(top_logprobs=5)`` streams each token's logprobs
in the SDK's ``response.output_text.delta`` events; ``RunMonitor.watch`` reads them and, when
the running perplexity crosses ``--stop-above``, cancels the run (the server stops). The agent
use: ``--max-ppl X`` adds an output guardrail that trips when the final answer's perplexity is
above X; a stopped or tripped answer is asked again of ``--escalate-to MODEL``. With ``--json``
the last line is the summary of the last model response (as ``livepplx replay --json``) and
the text the SDK delivered. Tracing is disabled (the SDK sends traces to OpenAI otherwise).
Needs ``pip install 'livepplx[agents]'``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from typing import Any, Sequence

from agents import Agent, ModelSettings, OpenAIChatCompletionsModel, Runner, set_tracing_disabled
from agents.exceptions import OutputGuardrailTripwireTriggered
from openai import AsyncOpenAI

from livepplx.integrations.openai_agents import RunMonitor

from _agent_step import parse, report  # the examples' shared command line (beside this file)


def agent(args: argparse.Namespace, client: AsyncOpenAI, model: str, monitor: RunMonitor | None = None) -> Agent[Any]:
    guardrails = [monitor.guardrail(max_ppl=args.max_ppl)] if monitor is not None and args.max_ppl else []
    return Agent(
        name="assistant", instructions=None, output_guardrails=guardrails,
        model=OpenAIChatCompletionsModel(model=model, openai_client=client),
        model_settings=ModelSettings(max_tokens=args.max_tokens, temperature=args.temperature,
                                     top_logprobs=5, extra_body=args.extra_body),  # top_logprobs asks for logprobs
    )


async def run(args: argparse.Namespace, client: AsyncOpenAI) -> dict[str, Any]:
    monitor = RunMonitor(stop_above=args.stop_above)
    result = Runner.run_streamed(agent(args, client, args.model, monitor), args.prompt, hooks=monitor)
    text, escalate = "", ""
    try:
        async for event in monitor.watch(result):
            delta = getattr(event, "data", None)
            if getattr(delta, "type", None) == "response.output_text.delta":
                text += delta.delta
                if not args.json:
                    print(delta.delta, end="", flush=True)
    except OutputGuardrailTripwireTriggered as tripped:
        escalate = f"guardrail: ppl {tripped.guardrail_result.output.output_info['ppl']:.3f} above {args.max_ppl:g}"
    if monitor.stopped is not None:
        escalate = f"stopped at token {monitor.stopped.at_token}: {monitor.stopped.reason}"
    summary = {**monitor.summary(), "text": text}
    if escalate:
        # The agent's step: a lost or doubtful answer is not passed on; a stronger model is asked.
        print(f"\n[{escalate}]", file=sys.stderr)
        if args.escalate_to:
            again = await Runner.run(agent(args, client, args.escalate_to), args.prompt)
            summary["escalated"] = {"model": args.escalate_to, "text": again.final_output}
    return summary


def main(argv: Sequence[str] | None = None, client: AsyncOpenAI | None = None) -> dict[str, Any]:
    args = parse(__doc__, argv, max_ppl="an output guardrail: trip above this perplexity")
    set_tracing_disabled(True)
    if client is None:
        client = AsyncOpenAI(base_url=args.base_url, api_key=os.environ.get("OPENAI_API_KEY", "sk-no-key"), max_retries=0)
    summary = asyncio.run(run(args, client))
    return report(args, summary)



if __name__ == "__main__":
    main()
