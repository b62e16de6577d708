"""Benchmark of the core, reported as ratios measured side by side in one run.

    python tests/bench/bench_core.py                 # wall clock, best of 5 runs each
    python tests/bench/bench_core.py --instructions  # the pipelines' ratios in instructions (valgrind)

Both accumulators are measured (livepplx.core.accumulator: the C one, and its Python twin that
runs where the extension is not built): sections 1 and 4 run again in a child process
with ``LIVEPPLX_PURE_PYTHON=1``, each against its own floor measured beside it.

1. Per-token update cost at 10^2, 10^4 and 10^6 tokens (flat means O(1)).
2. The naive baseline, recomputing ``np.exp(-np.mean(prefix))`` at each token, against
   livepplx's running PPL and every statistic, at 10^4 tokens.
3. Decoder against decoder, on the same bytes: livepplx's ``StreamDecoder`` (typed, and
   without its typed decoder) against the openai SDK's ``SSEDecoder`` + ``json.loads``.
4. Whole pipelines, per format (chat, completions, Responses events, llama.cpp native;
   10^4 chunks of one token with 5 alternatives): livepplx's raw reader with every
   statistic against the standard-library floor (split the lines, ``json.loads`` each
   payload, add up the sampled logprob), and against the openai SDK's own parse.

Wall clock on a shared machine wanders; ``--instructions`` counts what section 4 does
(valgrind's callgrind, 500 and 3,000 chunks, the difference per chunk), repeatable to
the instruction.
"""

from __future__ import annotations

import json
import math
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

import numpy as np

from livepplx.core.accumulator import IMPLEMENTATION
from livepplx.recordings import recording_path
from livepplx.core.state import StreamState
from livepplx.core.stats import ChoiceStats, Mean
from livepplx.core.tokens import make_token

REPEATS = 5
CHUNKS = 10_000
PIECE = 65536  # bytes a read: what an HTTP client hands over


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


def naive_baseline(n: int = 10_000) -> tuple[float, float, float]:
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


# -- the four formats' bytes, from one recording's values ----------------------------------


def _chat_chunks() -> list[dict[str, Any]]:
    """The real chat recording's one-token chunks (5 alternatives each), as dicts."""
    return [json.loads(line[6:]) for line in recording_path("llamacpp-python-chat").read_text().splitlines()
            if line.startswith("data: {") and '"logprobs": {' in line]


def _entries(chunk: dict[str, Any]) -> list[dict[str, Any]]:
    return chunk["choices"][0]["logprobs"]["content"]


def _as_completions(i: int, chunk: dict[str, Any]) -> str:
    e = _entries(chunk)[0]
    return "data: " + json.dumps({
        "id": "cmpl-235564e0-ea7a-4fcb-8a56-7ce710096659", "object": "text_completion", "created": 1795444059,
        "model": "gemma-3-270m",
        "choices": [{"text": e["token"], "index": 0, "logprobs": {
            "tokens": [e["token"]], "text_offset": [30 + i], "token_logprobs": [e["logprob"]],
            "top_logprobs": [{a["token"]: a["logprob"] for a in e["top_logprobs"]}]}, "finish_reason": None}]})


def _as_responses(i: int, chunk: dict[str, Any]) -> str:
    e = _entries(chunk)[0]

    def entry(a: dict[str, Any]) -> dict[str, Any]:
        return {"token": a["token"], "logprob": a["logprob"], "bytes": list(a["token"].encode())}

    data = {"type": "response.output_text.delta", "sequence_number": 4 + i, "item_id": "msg_67ccd3a9da748190",
            "output_index": 1, "content_index": 0, "delta": e["token"],
            "logprobs": [{**entry(e), "top_logprobs": [entry(a) for a in e["top_logprobs"]]}], "obfuscation": "xQ"}
    return "event: response.output_text.delta\ndata: " + json.dumps(data)


def _as_native(i: int, chunk: dict[str, Any]) -> str:
    e = _entries(chunk)[0]

    def entry(j: int, a: dict[str, Any]) -> dict[str, Any]:
        return {"id": 500 + j, "token": a["token"], "bytes": list(a["token"].encode()), "logprob": a["logprob"]}

    data = {"index": 0, "content": e["token"], "tokens": [529], "stop": False, "id_slot": -1, "tokens_predicted": 3 + i,
            "tokens_evaluated": 5, "completion_probabilities": [
                {**entry(0, e), "top_logprobs": [entry(j, a) for j, a in enumerate(e["top_logprobs"])]}]}
    return "data: " + json.dumps(data, separators=(",", ":"))


def format_bytes(fmt: str, chunks: int = CHUNKS) -> bytes:
    """``chunks`` one-token events of format ``fmt`` with 5 alternatives each, as a server sends them."""
    source = _chat_chunks()
    if fmt == "openai-chat":
        events = ["data: " + json.dumps(c) for c in source]
    else:
        make = {"openai-completions": _as_completions, "openai-responses": _as_responses,
                "llamacpp-native": _as_native}[fmt]
        events = [make(i, c) for i, c in enumerate(source)]
    body = "".join(events[i % len(events)] + "\n\n" for i in range(chunks))
    if fmt == "llamacpp-native":  # llama-server's last event (its settings and timings left out)
        end = 'data: {"index":0,"content":"","tokens":[],"id_slot":3,"stop":true,"tokens_predicted":%d}\n\n' % chunks
    elif fmt == "openai-responses":
        end = ('event: response.completed\ndata: {"type": "response.completed", "sequence_number": %d, '
               '"response": {"id": "resp_67ccd3a9", "object": "response", "status": "completed"}}\n\n' % (chunks + 4))
    else:
        end = "data: [DONE]\n\n"
    return (body + end).encode()


def pieces_of(data: bytes) -> list[bytes]:
    return [data[i : i + PIECE] for i in range(0, len(data), PIECE)]


#: Where the sampled token's logprob is, for the floor.
SAMPLED: dict[str, Callable[[Any], float]] = {
    "openai-chat": lambda d: d["choices"][0]["logprobs"]["content"][0]["logprob"],
    "openai-completions": lambda d: d["choices"][0]["logprobs"]["token_logprobs"][0],
    "openai-responses": lambda d: d["logprobs"][0]["logprob"] if d["type"] == "response.output_text.delta" else 0.0,
    "llamacpp-native": lambda d: 0.0 if d["stop"] else d["completion_probabilities"][0]["logprob"],
}


def floor(fmt: str, pieces: list[bytes]) -> float:
    """The standard-library floor: split the lines, json.loads each payload, add up the sampled logprob."""
    sampled = SAMPLED[fmt]
    total, rest = 0.0, ""
    for piece in pieces:
        lines = (rest + piece.decode()).split("\n")
        rest = lines.pop()
        for line in lines:
            if line.startswith("data: {"):
                total += sampled(json.loads(line[6:]))
    return total


def livepplx_reader(pieces: list[bytes]) -> StreamState:
    """livepplx's raw reader and every statistic: what the CLI, the gateway and the tap run."""
    state = StreamState()
    for piece in pieces:
        state.handle(piece)
    state.finish()
    return state


def sdk_client(pieces: list[bytes]) -> Any:
    import httpx
    import openai

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=iter(pieces), headers={"content-type": "text/event-stream"})

    return openai.OpenAI(api_key="sk-bench", base_url="http://bench.invalid/v1",
                         http_client=httpx.Client(transport=httpx.MockTransport(handler)))


def decoders(chunks: int = CHUNKS) -> dict[str, float]:
    """Seconds to decode the chat bytes into JSON values, decoder against decoder."""
    from openai._streaming import SSEDecoder

    from livepplx.core.formats import TYPED_ARRAY_DECODERS, TYPED_DECODERS
    from livepplx.core.sse import StreamDecoder

    pieces = pieces_of(format_bytes("openai-chat", chunks))

    def ours(typed: bool) -> Callable[[], None]:
        def run() -> None:
            d = StreamDecoder()
            d.typed = TYPED_DECODERS["openai-chat"] if typed else None
            d.typed_many = TYPED_ARRAY_DECODERS["openai-chat"] if typed else None  # as StreamState sets them
            n = sum(len(d.feed(p)) for p in pieces)
            assert n == chunks
        return run

    def sdk() -> None:
        n = 0
        for sse in SSEDecoder().iter_bytes(iter(pieces)):
            if sse.data.startswith("{"):
                json.loads(sse.data)
                n += 1
        assert n == chunks

    return {"livepplx StreamDecoder, typed (msgspec structs, a read in one call)": best_of(ours(True)),
            "livepplx StreamDecoder, json.loads": best_of(ours(False)),
            "openai SDK SSEDecoder + json.loads": best_of(sdk)}


def pipelines(fmt: str, chunks: int = CHUNKS, repeats: int = 2 * REPEATS - 1) -> tuple[float, float]:
    """Seconds of the floor and of livepplx's reader with every statistic, on the same bytes:
    the best of each over rounds that run one after the other, so both meet the same machine."""
    pieces = pieces_of(format_bytes(fmt, chunks))

    def ours() -> None:
        state = livepplx_reader(pieces)
        assert state.tokens == chunks and state.format == fmt and state.error is None, state.summary()

    base = mine = float("inf")
    for _ in range(repeats):
        base = min(base, best_of(lambda: floor(fmt, pieces), repeats=1))
        mine = min(mine, best_of(ours, repeats=1))
    return base, mine


def sdk_pipeline(chunks: int = CHUNKS) -> float:
    """Seconds of the openai SDK parsing the chat bytes into its objects (nothing else)."""
    client = sdk_client(pieces_of(format_bytes("openai-chat", chunks)))

    def sdk() -> None:
        stream = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}], stream=True)
        assert sum(1 for _ in stream) == chunks

    return best_of(sdk)


FORMATS = ("openai-chat", "openai-completions", "openai-responses", "llamacpp-native")

# One run of one pipeline under valgrind: python bench_core.py --run FORMAT WHICH N
RUNNER = "floor", "livepplx", "livepplx-py"  # livepplx-py: on the Python accumulator


def _run(fmt: str, which: str, n: int) -> None:
    import gc

    pieces = pieces_of(format_bytes(fmt, n))
    gc.collect()
    gc.freeze()  # a full collection of the imports, met by one run and not another, is not the reader's cost
    if which == "floor":
        floor(fmt, pieces)
    elif which == "livepplx-py":
        assert IMPLEMENTATION == "python"
        assert livepplx_reader(pieces).tokens == n
    else:
        assert livepplx_reader(pieces).tokens == n


def instructions(fmt: str, which: str, n: int) -> int:
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "PYTHONHASHSEED": "0",
           "LIVEPPLX_PURE_PYTHON": "1" if which == "livepplx-py" else ""}
    prefix = ["setarch", platform.machine(), "-R"] if shutil.which("setarch") else []
    result = subprocess.run(
        [*prefix, "valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable, __file__,
         "--run", fmt, which, str(n)], capture_output=True, text=True, check=True, env=env)
    match = re.search(r"Collected : (\d+)", result.stderr)
    assert match, result.stderr[-500:]
    return int(match.group(1))


def main_instructions() -> int:
    if shutil.which("valgrind") is None:
        print("valgrind is not installed (apt-get install valgrind)")
        return 1
    small, big = 500, 3000
    runs = [(fmt, which, n) for fmt in FORMATS for which in RUNNER for n in (small, big)]
    with ThreadPoolExecutor(max_workers=2) as pool:
        counts = dict(zip(runs, pool.map(lambda run: instructions(*run), runs)))
    print(f"instructions a chunk (one token, 5 alternatives), from {big:,} chunks minus {small:,};")
    print(f"livepplx's raw reader and every statistic, on the {IMPLEMENTATION} accumulator and on the Python one:")
    print(f"  {'format':20s} {'stdlib floor':>13s} {'livepplx':>10s} {'floor / it':>11s} {'Python acc.':>12s} "
          f"{'floor / it':>11s}")
    for fmt in FORMATS:
        per = {which: (counts[fmt, which, big] - counts[fmt, which, small]) / (big - small) for which in RUNNER}
        print(f"  {fmt:20s} {per['floor'] / 1e3:11.1f} k {per['livepplx'] / 1e3:8.1f} k "
              f"{per['floor'] / per['livepplx']:10.2f}x {per['livepplx-py'] / 1e3:10.1f} k "
              f"{per['floor'] / per['livepplx-py']:10.2f}x")
    return 0


def main() -> int:
    if sys.argv[1:2] == ["--run"]:
        _run(sys.argv[2], sys.argv[3], int(sys.argv[4]))
        return 0
    if "--instructions" in sys.argv:
        return main_instructions()
    if "--python-accumulator" in sys.argv:  # the child of main(): sections 1 and 4 again
        print_per_token_cost()
        print_pipelines()
        return 0
    print(f"python {sys.version.split()[0]}, numpy {np.__version__}; best of {REPEATS} runs each; "
          f"the {IMPLEMENTATION} accumulator\n")
    print_per_token_cost()
    ours, ppl_only, recompute = naive_baseline()
    print("2. running PPL at every token, 10^4 tokens, against the naive baseline")
    print(f"   naive baseline, np.exp(-np.mean(prefix)) recomputed each token: {recompute * 1e3:.1f} ms")
    print(f"   livepplx running PPL: {ppl_only * 1e3:.1f} ms ({recompute / ppl_only:.0f}x faster)   "
          f"every statistic: {ours * 1e3:.1f} ms ({recompute / ours:.1f}x faster)")
    print(f"3. decoders: {CHUNKS:,} chat events (5 alternatives) from bytes to JSON values")
    for name, seconds in decoders().items():
        print(f"   {name:68s} {CHUNKS / seconds:10,.0f} events/s")
    print_pipelines()
    sdk = sdk_pipeline()
    print(f"   openai SDK parsing the chat bytes into its objects (nothing else): {CHUNKS / sdk:,.0f} /s")
    if IMPLEMENTATION == "c":
        print("\nThe same on the Python accumulator (LIVEPPLX_PURE_PYTHON=1, a child process):", flush=True)
        subprocess.run([sys.executable, __file__, "--python-accumulator"], check=True,
                       env={**os.environ, "LIVEPPLX_PURE_PYTHON": "1"})
    return 0


def print_per_token_cost() -> None:
    small, mid, big = per_token_cost()
    print(f"1. per-token update (5 alternatives, every statistic), the {IMPLEMENTATION} accumulator")
    print(f"   at 10^2 tokens: {small * 1e6:.2f} us   10^4: {mid * 1e6:.2f} us   10^6: {big * 1e6:.2f} us   "
          f"ratio 10^6/10^2: {big / small:.2f}   10^6/10^4: {big / mid:.2f}")


def print_pipelines() -> None:
    print(f"4. whole pipelines: {CHUNKS:,} chunks of one token with 5 alternatives, from bytes; "
          f"the {IMPLEMENTATION} accumulator; best of {2 * REPEATS - 1} alternating runs each")
    print(f"   {'format':20s} {'stdlib floor':>14s} {'livepplx + every statistic':>28s} {'ratio':>7s}")
    for fmt in FORMATS:
        base, ours = pipelines(fmt)
        print(f"   {fmt:20s} {CHUNKS / base:10,.0f} /s {CHUNKS / ours:24,.0f} /s {base / ours:6.2f}x", flush=True)


if __name__ == "__main__":
    sys.exit(main())
