"""Benchmark of monitor(): its overhead on a real openai stream, and its memory.

    python tests/bench/bench_monitor.py [--rounds N]    # N: 15 unless given

1. The monitored stream against the raw openai stream over the same replayed SSE
   (1 token per chunk, 5 alternatives, 10^4 chunks), as a ratio in one run; runs
   alternate so both see the same machine.
2. Memory held by one monitored stream after 10^6 tokens against after 10^3 (tracemalloc).
"""

from __future__ import annotations

import gc
import statistics
import sys
import time
import tracemalloc
from typing import Any

import httpx
import openai

from livepplx import monitor
from livepplx.recordings import recording_path

CHUNKS = 10_000
ROUNDS = 15
# CPU time of this process: other processes on a shared machine disturb it less than wall time.
clock = time.process_time


def replayed_sse(chunks: int) -> list[bytes]:
    """The recording's one-token chunks repeated to `chunks`, served as 64 KiB reads."""
    lines = [line for line in recording_path("llamacpp-python-chat").read_text().splitlines()
             if line.startswith("data: {") and '"logprobs": {' in line]
    body = ("".join(lines[i % len(lines)] + "\n\n" for i in range(chunks)) + "data: [DONE]\n\n").encode()
    return [body[i : i + 65536] for i in range(0, len(body), 65536)]


def client_for(pieces: list[bytes]) -> openai.OpenAI:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=iter(pieces), headers={"content-type": "text/event-stream"})

    return openai.OpenAI(api_key="sk-bench", base_url="http://bench.invalid/v1",
                         http_client=httpx.Client(transport=httpx.MockTransport(handler)))


def open_stream(client: openai.OpenAI) -> Any:
    return client.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}], stream=True,
                                          logprobs=True, top_logprobs=5)


def time_raw(client: openai.OpenAI) -> float:
    t = clock()
    for _ in open_stream(client):
        pass
    return clock() - t


def time_monitored(client: openai.OpenAI) -> float:
    t = clock()
    with monitor(open_stream(client)) as m:
        for _ in m:
            pass
    elapsed = clock() - t
    assert m.tokens == CHUNKS
    return elapsed


def overhead(rounds: int = ROUNDS) -> tuple[float, float, list[float]]:
    """Best raw and monitored times, and the ratio of each round (raw and monitored back to back)."""
    client = client_for(replayed_sse(CHUNKS))
    time_raw(client), time_monitored(client)  # warm up
    raw, mon, ratios = [], [], []
    for i in range(rounds):
        # Alternate which goes first, so neither always runs on a warmer machine.
        if i % 2:
            m, r = time_monitored(client), time_raw(client)
        else:
            r, m = time_raw(client), time_monitored(client)
        raw.append(r)
        mon.append(m)
        ratios.append(m / r)
    return min(raw), min(mon), ratios


def breakdown(rounds: int = 8) -> dict[str, float]:
    """Microseconds a chunk that each layer adds to the raw SDK stream: the best of each over
    rounds that run the layers in a new random order each time (a fixed order measured the
    later layers on a warmer, slower machine: +4.9% for the whole wrapper, against +2.0% shuffled)."""
    import random

    from livepplx.core.formats import parse_openai_chat
    from livepplx.core.state import StreamState
    from livepplx.core.stats import ChoiceStats

    client = client_for(replayed_sse(CHUNKS))

    def through(fn: Any) -> float:
        t = clock()
        for chunk in open_stream(client):
            fn(chunk)
        return clock() - t

    def parse_and_stats() -> Any:
        stats = ChoiceStats()

        def fn(chunk: Any) -> None:
            for token in parse_openai_chat(chunk).tokens:
                stats.update(token)
        return fn

    layers = {
        "nothing (the raw stream)": lambda: through(lambda chunk: None),
        "reading the fields (parse)": lambda: through(parse_openai_chat),
        "parse + every statistic": lambda: through(parse_and_stats()),
        "StreamState.handle": lambda: through(StreamState().handle),
        "monitor(stream)": lambda: time_monitored(client),
    }
    best = {name: float("inf") for name in layers}
    order = list(layers)
    shuffle = random.Random(0).shuffle
    for _ in range(rounds):
        shuffle(order)
        for name in order:
            best[name] = min(best[name], layers[name]())
    base = best["nothing (the raw stream)"]
    return {name: (t - base) / CHUNKS * 1e6 for name, t in best.items()}


def held_after(tokens: int) -> int:
    """Bytes held by one monitored stream after `tokens` one-token chunks (text kept: 500 chars)."""
    # Seven prebuilt chunks, cycled: tracemalloc slows every allocation, so the source
    # allocates nothing and only the monitor's own memory is traced.
    variants = [{"choices": [{"index": 0, "delta": {"content": "x"}, "logprobs": {"content": [
        {"token": "x", "logprob": -0.5 - k * 0.1,
         "top_logprobs": [{"token": "x", "logprob": -0.5}, {"token": "y", "logprob": -1.5}]}]}}]}
        for k in range(7)]

    def chunks():  # type: ignore[no-untyped-def]
        for i in range(tokens):
            yield variants[i % 7]

    gc.collect()
    tracemalloc.start()
    m = monitor(chunks(), text_limit=500)
    for _ in m:
        pass
    gc.collect()
    held = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    assert m.tokens == tokens
    return held


def main() -> int:
    from livepplx.core.accumulator import IMPLEMENTATION

    rounds = int(sys.argv[sys.argv.index("--rounds") + 1]) if "--rounds" in sys.argv else ROUNDS
    print(f"python {sys.version.split()[0]}, openai {openai.__version__}, the {IMPLEMENTATION} accumulator\n")
    raw, mon, ratios = overhead(rounds)
    q1, median, q3 = statistics.quantiles(ratios, n=4)
    print(f"1. {CHUNKS:,} one-token chunks (5 alternatives) through the openai SDK, {rounds} rounds, CPU time")
    print(f"   raw stream: {raw * 1e3:.1f} ms   monitored: {mon * 1e3:.1f} ms (best of each)")
    print(f"   overhead per round: median {(median - 1) * 100:+.1f}%  (quartiles {(q1 - 1) * 100:+.1f}% .. "
          f"{(q3 - 1) * 100:+.1f}%)   per chunk: {(mon - raw) / CHUNKS * 1e6:.1f} us")
    layer_rounds = max(8, rounds // 2)
    print(f"   where it goes (us a chunk over the raw stream, best of {layer_rounds} rounds in random order):")
    layers = breakdown(layer_rounds)
    per_raw = raw / CHUNKS * 1e6
    for name, us in layers.items():
        print(f"     {name:28s} {us:6.2f}  ({us / per_raw:+.1%})")
    small, big = held_after(1_000), held_after(1_000_000)
    print("2. memory held by one monitored stream (tracemalloc)")
    print(f"   after 10^3 tokens: {small:,} B   after 10^6 tokens: {big:,} B   difference: {big - small:+,} B")
    return 0


if __name__ == "__main__":
    sys.exit(main())
