"""LangChain: watch a ChatOpenAI stream's perplexity live, stop it, escalate the step.

    python examples/langchain_stream.py --base-url http://127.0.0.1:8080/v1 --model gemma \\
        --prompt "Name three fruits." --max-tokens 200 --temperature 0 --stop-above 12 --json

``ChatOpenAI(logprobs=True, top_logprobs=5)`` hands each token's logprobs to its callbacks;
``LivepplxCallbackHandler`` reads them per run and raises ``StreamStopped`` when the running
perplexity crosses ``--stop-above`` (the HTTP response is closed: the server stops). The agent
step: with ``--escalate-to MODEL`` a stopped answer is asked again of that model. With
``--json`` the last line is the watched run's summary (as ``livepplx replay --json``) and the
text LangChain delivered. Needs ``pip install 'livepplx[langchain]'``.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Sequence

from langchain_openai import ChatOpenAI

from livepplx.integrations.langchain import LivepplxCallbackHandler, StreamStopped

from _agent_step import parse, report  # the examples' shared command line (beside this file)


def chat_model(args: argparse.Namespace, model: str | None = None, http_client: Any = None) -> ChatOpenAI:
    return ChatOpenAI(
        base_url=args.base_url, api_key=os.environ.get("OPENAI_API_KEY", "sk-no-key"), model=model or args.model,
        max_tokens=args.max_tokens, temperature=args.temperature, streaming=True,
        logprobs=True, top_logprobs=5,  # llama-cpp-python sends no logprobs without top_logprobs
        extra_body=args.extra_body, http_client=http_client, max_retries=0,
    )


def main(argv: Sequence[str] | None = None, http_client: Any = None) -> dict[str, Any]:
    args = parse(__doc__, argv)
    handler = LivepplxCallbackHandler(stop_above=args.stop_above)
    llm = chat_model(args, http_client=http_client)
    text, escalated = "", None
    try:
        for chunk in llm.stream(args.prompt, config={"callbacks": [handler]}):
            text += chunk.content if isinstance(chunk.content, str) else ""
            if not args.json:
                print(chunk.content, end="", flush=True)
    except StreamStopped as stop:
        # The agent's step: a lost answer is not passed on; it is asked again of a stronger model.
        print(f"\n[stopped at token {stop.stop.at_token}: {stop.stop.reason}]", file=sys.stderr)
        if args.escalate_to:
            answer = chat_model(args, model=args.escalate_to, http_client=http_client).invoke(args.prompt)
            escalated = {"model": args.escalate_to, "text": answer.text}
    state = next(iter(handler.states.values()))  # the watched run (an escalation is a run of its own)
    summary = {**state.summary(), "text": text}
    if escalated is not None:
        summary["escalated"] = escalated
    return report(args, summary)



if __name__ == "__main__":
    main()
