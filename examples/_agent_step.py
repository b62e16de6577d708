"""What the four framework examples share: their command line and their report.

Not part of livepplx: a file beside the examples, imported by them (``python examples/X.py``
puts this folder on ``sys.path``). Each example adds only what its framework has of its own
(``--max-ppl`` where the framework has a guardrail or a validator).
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any, Sequence


def parser(doc: str | None, *, model_help: str | None = None) -> argparse.ArgumentParser:
    """The options every framework example takes."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base-url", default=os.environ.get("OPENAI_BASE_URL", "http://127.0.0.1:8080/v1"))
    p.add_argument("--model", default="gemma-3-270m", help=model_help)
    p.add_argument("--prompt", default="Name three fruits.")
    p.add_argument("--max-tokens", type=int, default=200)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--stop-above", type=float, default=None, help="stop once the running perplexity exceeds this")
    p.add_argument("--escalate-to", default=None, metavar="MODEL", help="ask a stopped or refused answer again of MODEL")
    p.add_argument("--extra-body", type=json.loads, default=None, metavar="JSON",
                   help='more request fields, e.g. \'{"ignore_eos": true}\' for llama.cpp')
    p.add_argument("--json", action="store_true", help="print the summary as one JSON line")
    return p


def parse(doc: str | None, argv: Sequence[str] | None, *, max_ppl: str | None = None,
          model_help: str | None = None) -> argparse.Namespace:
    """Parse the shared options; ``max_ppl``: the help of ``--max-ppl`` where the example has one."""
    p = parser(doc, model_help=model_help)
    if max_ppl:
        p.add_argument("--max-ppl", type=float, default=None, help=max_ppl)
    return p.parse_args(argv)


def report(args: argparse.Namespace, summary: dict[str, Any]) -> dict[str, Any]:
    """Print the watched answer's summary (one JSON line with ``--json``), and return it."""
    if args.json:
        print(json.dumps(summary, allow_nan=False))
        return summary
    escalated = summary.get("escalated")
    if escalated is not None:
        print(f"\n[escalated to {escalated['model']}]\n{escalated['text']}")
    ppl = summary["ppl"]
    stopped = summary.get("stopped")
    print(f"\n\n{summary['tokens']} tokens, perplexity {ppl:.3f}" if isinstance(ppl, float) else
          f"\n\n{summary['tokens']} tokens, perplexity {ppl}", end="")
    print(f", stopped: {stopped['reason']}" if stopped else "")
    return summary
