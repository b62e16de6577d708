"""LiteLLM: watch a litellm.completion stream's perplexity live, stop it, escalate the step.

    python examples/litellm_stream.py --base-url http://127.0.0.1:8080/v1 --model gemma \\
        --prompt "Name three fruits." --max-tokens 200 --temperature 0 --stop-above 12 --json

LiteLLM's chunks are OpenAI chat chunks with the server's logprobs, so ``livepplx.monitor``
reads them as they are; ``livepplx.integrations.litellm.completion`` adds ``stream=True``,
``logprobs=True`` and ``top_logprobs=5`` to the request. A stop closes LiteLLM's stream (the
server stops). The agent step: with ``--escalate-to MODEL`` a stopped answer is asked again
of that model (a LiteLLM model name, on the same server). With ``--json`` the last line is the summary (as
``livepplx replay --json``) and the text LiteLLM delivered. Needs ``pip install 'livepplx[litellm]'``.
"""

from __future__ import annotations

import os
import sys
from typing import Any, Sequence

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # or LiteLLM fetches its cost map at import

from livepplx.integrations import litellm as lx  # noqa: E402

from _agent_step import parse, report  # noqa: E402  (the examples' shared command line, beside this file)


def main(argv: Sequence[str] | None = None, client: Any = None) -> dict[str, Any]:
    args = parse(__doc__, argv, model_help="the server's model name (sent as openai/NAME)")
    request: dict[str, Any] = {
        "model": f"openai/{args.model}", "api_base": args.base_url, "client": client,
        "api_key": os.environ.get("OPENAI_API_KEY", "sk-no-key"), "messages": [{"role": "user", "content": args.prompt}],
        "max_tokens": args.max_tokens, "temperature": args.temperature, "extra_body": args.extra_body,
        "num_retries": 0,
    }
    text, escalated = "", None
    with lx.completion(**request, stop_above=args.stop_above) as m:
        for chunk in m:
            piece = (chunk.choices[0].delta.content or "") if chunk.choices else ""
            text += piece
            if not args.json:
                print(piece, end="", flush=True)
    if m.stopped is not None:
        # The agent's step: a lost answer is not passed on; it is asked again of a stronger model.
        print(f"\n[stopped at token {m.stopped.at_token}: {m.stopped.reason}]", file=sys.stderr)
        if args.escalate_to:
            import litellm

            answer = litellm.completion(**{**request, "model": args.escalate_to})
            escalated = {"model": args.escalate_to, "text": answer.choices[0].message.content}
    summary = {**m.summary(), "text": text}
    if escalated is not None:
        summary["escalated"] = escalated
    return report(args, summary)



if __name__ == "__main__":
    main()
