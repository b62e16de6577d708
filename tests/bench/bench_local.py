"""Benchmark of the embedded model: tokens/s with livepplx's logprobs against none at all.

    python tests/bench/bench_local.py [--tokens 64] [--rounds 5] [--old]

One process, one loaded model (the same llama.cpp context), the same prompt, greedy; the
runs alternate so every kind sees the same machine:

- ``llama-cpp-python, no logprobs``: ``Llama.create_completion(stream=True)``, llama-cpp-python's
  own generation without logprobs: the model's speed in-process, the reference.
- ``livepplx.local, no logprobs``: the embedded client's own loop, nothing computed per token.
- ``livepplx.local, logprobs + 5 alternatives``: what ``livepplx chat --local`` asks for.
- ``livepplx.local, sampled``: the same at temperature 0.8, top_p 0.95, with a seed.
- with ``--old``: llama-cpp-python's own logprobs path (``logits_all=True``; 0.1's ``--local``),
  fewer tokens: it makes 2-3 tokens/s.

Rates count generation only: (tokens - 1) / (time of the last token - time of the first), so
the prompt's evaluation is left out of every kind alike. Medians of the rounds; wall time and
this process's CPU time (which other processes on a shared machine disturb less).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from typing import Any, Callable, Iterable

from livepplx.local import LocalClient, LocalModel, _quiet_stderr

PROMPT = ("Q: What is the capital of Sweden?\nA: Let's think step by step. Sweden is a country in northern "
          "Europe. Its capital city is Stockholm. The answer is Stockholm.\nQ: Why is the sky blue?\nA: Let's "
          "think step by step.")


def rate(chunks: Iterable[Any], counts: Callable[[Any], int]) -> tuple[int, float, float]:
    """Tokens, and tokens/s of wall and CPU time, from the first token to the last."""
    n = 0
    first = last = (0.0, 0.0)
    for chunk in chunks:
        k = counts(chunk)
        if not k:
            continue
        now = (time.perf_counter(), time.process_time())
        if n == 0:
            first = now
        n += k
        last = now
    span_wall, span_cpu = last[0] - first[0], last[1] - first[1]
    return n, (n - 1) / span_wall if span_wall > 0 else float("nan"), (n - 1) / span_cpu if span_cpu > 0 else float("nan")


def one_token(chunk: Any) -> int:
    return 1 if chunk["choices"] and chunk["choices"][0].get("text") is not None and (
        chunk["choices"][0]["logprobs"] is not None or chunk["choices"][0]["text"]) else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--old", action="store_true", help="also llama-cpp-python's own logprobs path (slow)")
    args = parser.parse_args()

    model = LocalModel()
    client = LocalClient(model)
    llm = model._llm
    n = args.tokens
    common = dict(model="gemma", prompt=PROMPT, max_tokens=n, temperature=0, stream=True)

    kinds: dict[str, Callable[[], tuple[int, float, float]]] = {
        "llama-cpp-python, no logprobs": lambda: rate(
            llm.create_completion(PROMPT, max_tokens=n, temperature=0, stream=True),
            lambda c: 1 if c["choices"][0]["text"] or c["choices"][0]["finish_reason"] is None else 0),
        "livepplx.local, no logprobs": lambda: rate(client.completions.create(**common), one_token),
        "livepplx.local, logprobs + 5 alternatives": lambda: rate(
            client.completions.create(**common, logprobs=5), one_token),
        "livepplx.local, sampled (T 0.8, top_p 0.95) + 5": lambda: rate(
            client.completions.create(**dict(common, temperature=0.8), top_p=0.95, seed=1, logprobs=5), one_token),
    }
    results: dict[str, list[tuple[int, float, float]]] = {name: [] for name in kinds}
    for _ in range(args.rounds):
        for name, run in kinds.items():
            results[name].append(run())

    print(f"python tests/bench/bench_local.py --tokens {n} --rounds {args.rounds}")
    print(f"Gemma 3 270M Q4_K_M, {llm.n_threads} thread(s), {n} tokens a run, medians of {args.rounds} "
          "alternating rounds (generation only)")
    base_wall = statistics.median(r[1] for r in results["llama-cpp-python, no logprobs"])
    base_cpu = statistics.median(r[2] for r in results["llama-cpp-python, no logprobs"])
    for name, runs in results.items():
        wall, cpu = statistics.median(r[1] for r in runs), statistics.median(r[2] for r in runs)
        tokens = statistics.median(r[0] for r in runs)
        print(f"  {name:<48} {wall:6.1f} tokens/s ({wall / base_wall:4.2f}x)   CPU time: {cpu:6.1f} tokens/s "
              f"({cpu / base_cpu:4.2f}x)   {tokens:.0f} tokens")
    if args.old:
        from llama_cpp import Llama

        with _quiet_stderr():
            old = Llama(model_path=str(model.path), logits_all=True, n_ctx=model.n_ctx, verbose=False)
        m = min(n, 16)
        got, wall, cpu = rate(old.create_completion(PROMPT, max_tokens=m, temperature=0, stream=True, logprobs=5),
                              lambda c: 1 if c["choices"][0]["logprobs"] else 0)
        print(f"  {'llama-cpp-python logprobs=5 (0.1 --local)':<48} {wall:6.1f} tokens/s ({wall / base_wall:4.2f}x)"
              f"   CPU time: {cpu:6.1f} tokens/s ({cpu / base_cpu:4.2f}x)   {got} tokens")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
