"""Benchmark of the core, reported as ratios measured side by side in one run.

    python tests/bench/bench_core.py

1. Per-token update cost at 10^6 tokens against 10^2 tokens (flat means O(1)).
2. Speed-up over recomputing ``np.exp(-np.mean(logprobs))`` at each token, at 10^4 tokens.
3. The raw-SSE reader's chunks/s against the openai SDK parsing the same bytes.
"""

from __future__ import annotations

import math
import sys
import time
from typing import Callable

import numpy as np

from livepplx.recordings import recording_path
from livepplx.state import StreamState
from livepplx.stats import ChoiceStats, Mean
from livepplx.tokens import make_token

REPEATS = 5


def best_of(fn: Callable[[], object], repeats: int = REPEATS) -> float:
    """The fastest of several runs: the least disturbed by a shared, noisy machine."""
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def tokens_with_alternatives(n: int, k: int = 5, seed: int = 0) -> list:
    rng = np.random.default_rng(seed)
    lp = -rng.gamma(0.6, 2.5, size=n)
    alts = lp[:, None] - np.arange(k) * 0.7
    return [make_token(0, "", float(a), row.tolist()) for a, row in zip(lp, alts)]


def per_token_cost() -> tuple[float, float, float]:
    """Seconds per update, fed 10^2, 10^4 and 10^6 tokens (fresh statistics each time)."""
    # The same 10^3 token objects cycled: every run reads its input from cache, so only the
    # length of the stream behind the statistics differs.
    distinct = tokens_with_alternatives(1_000)

    def per_update(tokens: list, runs: int) -> float:
        best = float("inf")
        for _ in range(runs):
            stats = ChoiceStats()  # built outside the timed part
            update = stats.update
            t = time.perf_counter()
            for token in tokens:
                update(token)
            best = min(best, (time.perf_counter() - t) / len(tokens))
        return best

    return per_update(distinct[:100], 2000), per_update(distinct * 10, 30), per_update(distinct * 1_000, 3)


def speedup_over_recompute(n: int = 10_000) -> tuple[float, float, float]:
    rng = np.random.default_rng(1)
    values = (-rng.gamma(0.6, 2.5, size=n)).tolist()
    tokens = [make_token(0, "", v) for v in values]

    def ours() -> None:
        s = ChoiceStats()
        for t in tokens:
            s.update(t)
            _ = s.ppl  # read it, as a live view would

    def ours_ppl_only() -> None:
        m = Mean()
        for v in values:
            m.update(v)
            math.exp(-m.get())

    def recompute() -> None:
        seen = np.empty(n)
        for i, v in enumerate(values):
            seen[i] = v
            np.exp(-np.mean(seen[: i + 1]))

    return best_of(ours), best_of(ours_ppl_only), best_of(recompute)


def sse_bytes(chunks: int) -> bytes:
    lines = [line for line in recording_path("llamacpp-python-chat").read_text().splitlines()
             if line.startswith("data: {") and '"logprobs": {' in line]
    body = "".join(lines[i % len(lines)] + "\n\n" for i in range(chunks))
    return (body + "data: [DONE]\n\n").encode()


def reader_vs_sdk(chunks: int = 10_000) -> tuple[float, float]:
    import httpx
    import openai

    data = sse_bytes(chunks)
    pieces = [data[i : i + 65536] for i in range(0, len(data), 65536)]

    def ours() -> None:
        state = StreamState()
        for piece in pieces:
            state.handle(piece)
        state.finish()
        assert state.tokens == chunks

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=iter(pieces), headers={"content-type": "text/event-stream"})

    client = openai.OpenAI(api_key="sk-bench", base_url="http://bench.invalid/v1",
                           http_client=httpx.Client(transport=httpx.MockTransport(handler)))

    def sdk() -> None:
        stream = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}], stream=True)
        count = sum(1 for _ in stream)
        assert count == chunks

    return best_of(ours), best_of(sdk)


def main() -> int:
    print(f"python {sys.version.split()[0]}, numpy {np.__version__}; best of {REPEATS} runs unless said\n")
    small, mid, big = per_token_cost()
    print("1. per-token update (5 alternatives, every statistic)")
    print(f"   at 10^2 tokens: {small * 1e6:.2f} us   10^4: {mid * 1e6:.2f} us   10^6: {big * 1e6:.2f} us   "
          f"ratio 10^6/10^2: {big / small:.2f}   10^6/10^4: {big / mid:.2f}")
    print("   (the windows fill at 64 and 2,048 tokens; from then on an update also takes a value out)")
    ours, ppl_only, recompute = speedup_over_recompute()
    print("2. running PPL at every token, 10^4 tokens")
    print(f"   np.exp(-np.mean(prefix)) each token: {recompute * 1e3:.1f} ms   livepplx running PPL: "
          f"{ppl_only * 1e3:.1f} ms ({recompute / ppl_only:.0f}x faster)   every statistic: {ours * 1e3:.1f} ms "
          f"({recompute / ours:.1f}x faster)")
    ours, sdk = reader_vs_sdk()
    print("3. reading 10^4 SSE chunks (llama-cpp-python chat, 5 alternatives each)")
    print(f"   livepplx raw reader + statistics: {1e4 / ours:,.0f} chunks/s   openai SDK parse only: "
          f"{1e4 / sdk:,.0f} chunks/s   ratio: {sdk / ours:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
