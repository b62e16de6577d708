"""The tap's overhead over a plain transport on the same bytes: 10^4 chat chunks (real
llama-server events, with logprobs) through httpx.MockTransport, read raw and through the
openai SDK; wall-clock medians of interleaved runs.

    python tests/bench/bench_tap.py [--chunks 10000] [--runs 9]
"""
from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import time

import httpx
import openai

from livepplx.integrations.tap import Tap
from livepplx.recordings import recording_path


if __name__ == "__main__":  # a script: nothing runs when pytest imports it for doctests
    parser = argparse.ArgumentParser()
    parser.add_argument("--chunks", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=9)
    args = parser.parse_args()

    data = recording_path("llamacpp-server-chat").read_bytes()
    events = re.findall(rb".+?\n\n", data, re.S)
    tokens = [e for e in events if b'"logprobs"' in e]
    body = [tokens[i % len(tokens)] for i in range(args.chunks)] + [events[-3], events[-1]]  # finish chunk, [DONE]
    size = sum(map(len, body))


    class Body(httpx.SyncByteStream):
        def __iter__(self):
            yield from body


    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"content-type": "text/event-stream"}, stream=Body())


    def raw(transport: httpx.BaseTransport, logprobs: bool = True) -> float:
        request = {"stream": True, "logprobs": True, "top_logprobs": 3} if logprobs else {"stream": True}
        with httpx.Client(transport=transport) as http:
            t = time.perf_counter()
            with http.stream("POST", "http://x/v1/chat/completions", json=request) as r:
                for _ in r.iter_bytes():
                    pass
            return time.perf_counter() - t


    def through_sdk(transport: httpx.BaseTransport, logprobs: bool) -> float:
        client = openai.OpenAI(api_key="k", base_url="http://x/v1", http_client=httpx.Client(transport=transport))
        extra = {"logprobs": True, "top_logprobs": 3} if logprobs else {}
        t = time.perf_counter()
        for _ in client.chat.completions.create(model="m", messages=[], stream=True, **extra):
            pass
        return time.perf_counter() - t


    cases = {
        "raw plain": lambda: raw(httpx.MockTransport(handler)),
        "raw tap": lambda: raw(Tap().transport(httpx.MockTransport(handler))),
        "raw tap (tap asked, strips)": lambda: raw(Tap().transport(httpx.MockTransport(handler)), False),
        "sdk plain": lambda: through_sdk(httpx.MockTransport(handler), True),
        "sdk tap (caller asked logprobs)": lambda: through_sdk(Tap().transport(httpx.MockTransport(handler)), True),
        "sdk tap (tap asked, strips)": lambda: through_sdk(Tap().transport(httpx.MockTransport(handler)), False),
    }
    times: dict[str, list[float]] = {k: [] for k in cases}
    for _ in range(args.runs):
        for name, case in cases.items():  # interleaved: drift hits every case alike
            times[name].append(case())
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"{args.chunks:,} chunks, {size / 1e6:.1f} MB, median of {args.runs} interleaved runs (python {sys.version.split()[0]})")
    for name, m in med.items():
        print(f"  {name:34s} {m * 1e3:8.1f} ms  {m / args.chunks * 1e6:6.1f} us/chunk")
    print(f"  tap overhead, raw:                 {(med['raw tap'] - med['raw plain']) / args.chunks * 1e6:6.1f} us/chunk")
    print(f"  tap overhead, under the SDK:       {(med['sdk tap (caller asked logprobs)'] - med['sdk plain']) / args.chunks * 1e6:6.1f} us/chunk "
          f"({med['sdk tap (caller asked logprobs)'] / med['sdk plain'] - 1:+.0%})")
    print(f"  re-serialising (strip), raw:       {(med['raw tap (tap asked, strips)'] - med['raw tap']) / args.chunks * 1e6:6.1f} us/chunk")
    print(f"  strip, net under the SDK:          {(med['sdk tap (tap asked, strips)'] - med['sdk tap (caller asked logprobs)']) / args.chunks * 1e6:6.1f} us/chunk (the SDK builds no logprob objects)")
    print(json.dumps({k: round(v * 1e3, 2) for k, v in med.items()}))

    # The floor: the same events fed to a StreamState alone (what any monitor pays).
    from livepplx import StreamState  # noqa: E402

    alone = []
    for _ in range(args.runs):
        state = StreamState()
        t = time.perf_counter()
        for event in body:
            state.handle(event)
        state.finish()
        alone.append(time.perf_counter() - t)
    m = statistics.median(alone)
    print(f"  StreamState alone, event by event  {m * 1e3:8.1f} ms  {m / args.chunks * 1e6:6.1f} us/chunk "
          f"(the tap's own share: {(med['raw tap'] - med['raw plain'] - m) / args.chunks * 1e6:.1f} us/chunk)")
