"""The monitor's overhead counted in instructions (valgrind's callgrind), not seconds.

    python tests/bench/bench_instructions.py        # needs valgrind; about 3 minutes
    LIVEPPLX_PURE_PYTHON=1 python tests/bench/bench_instructions.py   # on the Python accumulator

CPU time on a shared machine wanders by tens of percent from run to run; instruction
counts do not. Each layer runs over 1 and over 1,000 one-token chunks of the same
replayed SSE through the openai SDK; the difference, divided by 999, is what one chunk
costs, so start-up and imports cancel out.
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

CHUNKS = 1000
LAYERS = {
    "raw": "the raw openai stream",
    "parse": "+ reading the fields (parse)",
    "stats": "+ every statistic",
    "handle": "+ StreamState.handle",
    "monitor": "monitor(stream): the whole wrapper",
}

# One run of one layer: python bench_instructions.py --run LAYER N
RUNNER = '''
import gc
import sys
sys.path.insert(0, {bench!r})
import bench_monitor as b
from livepplx import monitor
from livepplx.core.formats import parse_openai_chat
from livepplx.core.state import StreamState
from livepplx.core.stats import ChoiceStats

layer, n = sys.argv[1], int(sys.argv[2])
client = b.client_for(b.replayed_sse(n))
stats, state = ChoiceStats(), StreamState()
# What the imports made is not the streams' garbage: a full collection of it, which one run
# meets and another does not, would add ~30k "instructions a chunk" at random.
gc.collect()
gc.freeze()

def parse_and_stats(chunk):
    for token in parse_openai_chat(chunk).tokens:
        stats.update(token)

if layer == "monitor":
    with monitor(b.open_stream(client)) as m:
        for _ in m:
            pass
else:
    fn = {{"raw": lambda chunk: None, "parse": parse_openai_chat, "stats": parse_and_stats,
          "handle": state.handle}}[layer]
    for chunk in b.open_stream(client):
        fn(chunk)
'''


def instructions(layer: str, n: int) -> int:
    code = RUNNER.format(bench=str(Path(__file__).parent))
    # numpy's OpenBLAS threads spin for a while after import: one thread makes the counts
    # repeatable to the instruction; so do a fixed hash seed and no address randomisation.
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}
    prefix = ["setarch", platform.machine(), "-R"] if shutil.which("setarch") else []
    result = subprocess.run(
        [*prefix, "valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable, "-c", code,
         layer, str(n)], capture_output=True, text=True, check=True, env=env)
    match = re.search(r"Collected : (\d+)", result.stderr)
    assert match, result.stderr[-500:]
    return int(match.group(1))


def main() -> int:
    if shutil.which("valgrind") is None:
        print("valgrind is not installed (apt-get install valgrind)")
        return 1
    runs = [(layer, n) for layer in LAYERS for n in (1, CHUNKS)]
    with ThreadPoolExecutor(max_workers=2) as pool:
        counts = dict(zip(runs, pool.map(lambda run: instructions(*run), runs)))
    per_chunk = {layer: (counts[layer, CHUNKS] - counts[layer, 1]) / (CHUNKS - 1) for layer in LAYERS}
    raw = per_chunk["raw"]
    from livepplx.core.accumulator import IMPLEMENTATION  # the children see the same LIVEPPLX_PURE_PYTHON

    print(f"instructions a chunk (one token, 5 alternatives), from {CHUNKS:,} chunks minus 1; "
          f"the {IMPLEMENTATION} accumulator:")
    for layer, label in LAYERS.items():
        extra = per_chunk[layer] - raw
        print(f"  {label:36s} {per_chunk[layer] / 1e3:8.1f} k   " + (f"+{extra / 1e3:.1f} k ({extra / raw:+.1%})" if layer != "raw" else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
