"""DeepConf-style early stop, client-side: calibrate on warm-up traces, then cut weak traces.

    python examples/deepconf_stop.py --base-url http://127.0.0.1:8080/v1 --warmup 8 --traces 8

DeepConf (arXiv 2508.15260) samples several reasoning traces. The warm-up traces run
in full; the threshold s is the (100 - η)th percentile of their lowest group
confidence. Every later trace stops as soon as its group confidence (the mean token
confidence over a window) drops below s. The paper does this inside vLLM; here it is
done over plain HTTP, closing each stopped response so the server stops too.
"""

from __future__ import annotations

import argparse
import os

import openai

import livepplx
from livepplx import Trigger, group_confidence_below
from livepplx.decide.calibrate import deepconf_threshold

WINDOW = 32  # tokens per group (the paper's 2048 suits long reasoning traces, not short answers)


def trace(client: openai.OpenAI, model: str, prompt: str, max_tokens: int, **options: object) -> livepplx.MonitoredStream:
    with livepplx.stream(client, model=model, messages=[{"role": "user", "content": prompt}],
                         max_tokens=max_tokens, temperature=1.0, top_logprobs=5, group_window=WINDOW,
                         **options) as s:
        for _ in s:
            pass
    return s


def main(client: openai.OpenAI, model: str, prompt: str, warmup: int = 8, traces: int = 8,
         eta: float = 10.0, max_tokens: int = 120) -> dict:
    lowest = [trace(client, model, prompt, max_tokens).choice(0).lowest_group_confidence for _ in range(warmup)]
    s = deepconf_threshold(lowest, eta=eta)
    print(f"warm-up: lowest group confidences {[round(x, 2) for x in lowest]} -> threshold s = {s:.3f} (eta {eta:g})")
    spent, stopped = 0, 0
    for _ in range(traces):
        t = trace(client, model, prompt, max_tokens, triggers=[Trigger(group_confidence_below(s), stop=True)])
        spent += t.tokens
        stopped += t.stopped is not None
        print(f"  trace: {t.tokens:4d} tokens  {'stopped' if t.stopped else 'kept   '}  ppl {t.ppl:.2f}")
    print(f"{stopped}/{traces} traces stopped early; {spent} tokens against at most {traces * max_tokens}")
    return {"threshold": s, "stopped": stopped, "tokens": spent}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("prompt", nargs="?", default="What is 17 * 23? Think step by step.")
    parser.add_argument("--base-url", default=os.environ.get("OPENAI_BASE_URL", "http://127.0.0.1:8080/v1"))
    parser.add_argument("--model", default="gemma-3-270m")
    parser.add_argument("--warmup", type=int, default=8)
    parser.add_argument("--traces", type=int, default=8)
    parser.add_argument("--eta", type=float, default=10.0)
    args = parser.parse_args()
    client = openai.OpenAI(base_url=args.base_url, api_key=os.environ.get("OPENAI_API_KEY", "sk-no-key"))
    main(client, args.model, args.prompt, args.warmup, args.traces, args.eta)
