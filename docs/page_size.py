"""The heatmap page's size, CPU time and memory for answers of a given length: the README's numbers.

    python docs/page_size.py 50 10000 100000 1000000

Each answer is a chat stream (one token an event, two listed alternatives a token), made
here and read by ``livepplx.heatmap.replay_page``; CPU time is the process's, memory the
growth of its peak RSS (Linux), so run one length a process for the memory of that length.
"""

from __future__ import annotations

import json
import random
import resource
import sys
import time

from livepplx.heatmap import replay_page


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
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        start = time.process_time()
        page = replay_page(data)
        cpu = time.process_time() - start
        grew = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
        print(f"{n:>9,} tokens: page {len(page.encode()) / 2**20:7.2f} MiB, {cpu:6.2f} s CPU, peak RSS +{grew:,.0f} MiB")


if __name__ == "__main__":
    main()
