"""The heatmap page's size, CPU time and memory for answers of a given length: the README's numbers.

    python docs/page_size.py 50 10000 100000 1000000

Each answer is a chat stream (one token an event, two listed alternatives a token), made
here and read by ``livepplx.views.heatmap.replay_page``: once for the CPU time, once under
tracemalloc for the peak of Python's allocations (the stream's own bytes not counted).
"""

from __future__ import annotations

import json
import random
import sys
import time
import tracemalloc

from livepplx.views.heatmap import replay_page


def stream(n: int) -> bytes:
    rng = random.Random(1)
    events = []
    for i in range(n):
        lp, text = -rng.random() * 3, f" w{i}"
        entry = {"token": text, "logprob": lp, "top_logprobs": [{"token": text, "logprob": lp},
                                                                {"token": "x", "logprob": lp - 1}]}
        events.append("data: " + json.dumps({"choices": [{"index": 0, "delta": {"content": text},
                                                          "logprobs": {"content": [entry]}}]}) + "\n\n")
    return ("".join(events) + "data: [DONE]\n\n").encode()


def main() -> None:
    for n in [int(a) for a in sys.argv[1:]] or [50, 10_000]:
        data = stream(n)
        start = time.process_time()
        size = len(replay_page(data).encode())
        cpu = time.process_time() - start
        tracemalloc.start()
        replay_page(data)
        peak = tracemalloc.get_traced_memory()[1] / 2**20
        tracemalloc.stop()
        shown = f"{size / 2**20:6.2f} MiB" if size >= 2**20 else f"{size / 2**10:6.1f} KiB"
        print(f"{n:>9,} tokens: page {shown}, {cpu:6.3f} s CPU, peak memory {peak:5.0f} MiB")


if __name__ == "__main__":
    main()
