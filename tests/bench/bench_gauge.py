"""Benchmark of the gauge: a replay at 2,000 tokens/s with the live gauge against without.

    python tests/bench/bench_gauge.py

Both replays are paced, so wall time is the same; what the gauge costs is CPU time
(this process, all threads: Rich's Live redraws on its own). Rounds alternate.
"""

from __future__ import annotations

import io
import statistics
import sys
import time

from rich.console import Console
from rich.live import Live

from livepplx.views.gauge import REFRESH_PER_SECOND, Gauge
from livepplx.monitor import MonitoredStream
from livepplx.recordings import recording_path
from livepplx.core.state import StreamState

PACE = 2000.0  # tokens per second
TOKENS = 8000
ROUNDS = 7


def lines() -> list[bytes]:
    events = [line + b"\n\n" for line in recording_path("llamacpp-python-chat").read_bytes().split(b"\n\n")
              if b'"logprobs": {' in line]
    return [events[i % len(events)] for i in range(TOKENS)]


def paced(events: list[bytes], state: StreamState):  # type: ignore[no-untyped-def]
    start = time.monotonic()
    for event in events:
        yield event
        delay = start + state.tokens / PACE - time.monotonic()
        if delay > 0:
            time.sleep(delay)


def replay(events: list[bytes], with_gauge: bool) -> tuple[float, float]:
    """CPU seconds and wall seconds of one paced replay."""
    state = StreamState()
    m = MonitoredStream(paced(events, state), state)
    cpu, wall = time.process_time(), time.monotonic()
    if with_gauge:
        console = Console(file=io.StringIO(), force_terminal=True, width=100)
        with Live(Gauge(state, show_text=True), console=console, refresh_per_second=REFRESH_PER_SECOND):
            for _ in m:
                pass
    else:
        for _ in m:
            pass
    assert state.tokens == TOKENS
    return time.process_time() - cpu, time.monotonic() - wall


def main() -> int:
    events = lines()
    ratios, plain_cpu, gauge_cpu, walls = [], [], [], []
    for i in range(ROUNDS):
        order = (False, True) if i % 2 == 0 else (True, False)
        result = {g: replay(events, g) for g in order}
        plain_cpu.append(result[False][0])
        gauge_cpu.append(result[True][0])
        walls.append(result[True][1])
        ratios.append(result[True][0] / result[False][0])
    print(f"{TOKENS:,} tokens replayed at {PACE:,.0f} tokens/s ({statistics.median(walls):.2f} s wall), {ROUNDS} rounds")
    print(f"CPU without gauge: {statistics.median(plain_cpu):.3f} s   with the live gauge: "
          f"{statistics.median(gauge_cpu):.3f} s   extra: median {(statistics.median(ratios) - 1) * 100:+.1f}% "
          f"(range {(min(ratios) - 1) * 100:+.1f}% .. {(max(ratios) - 1) * 100:+.1f}%)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
