"""Load test of the gateway: one LiteLLM proxy process in front of a local upstream that streams
real-shaped chunks at a fixed pace, N concurrent streams without and then with the livepplx
callback, in one run. 127.0.0.1 only; bounded in count (N streams per phase) and time (each
phase is cut at --phase-timeout seconds); not part of the test suite.

    python tests/load/run.py --streams 1000 --tokens 20 --pace 4 --ramp 60 --logprobs-phase

Reports, per phase: the proxy's CPU seconds (user + system, from /proc) per token streamed,
p50/p99 time to first chunk and inter-chunk delay as the client saw them, the proxy's RSS
growth with every stream open (per stream), streams lost (error or non-200) and cut (no
[DONE] or fewer tokens than sent); then the ratios with/without. Exit status 1 if any stream
was lost or cut. Writes the figures as JSON with --json PATH.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from proxy import free_port, start_proxy, wait_ready  # noqa: E402

HERE = Path(__file__).resolve().parent
EXAMPLE = HERE.parents[1] / "examples" / "litellm_proxy"
CLOCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")

WITHOUT = """model_list:
  - model_name: local
    litellm_params: {model: openai/local, api_base: os.environ/UPSTREAM_BASE_URL, api_key: none}
"""


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK  # utime, stime


def rss_bytes(pid: int) -> int:
    return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]


async def one_stream(session: Any, url: str, key: str, tokens: int, record: dict[str, Any], ask: bool) -> None:
    body: dict[str, Any] = {"model": "local", "stream": True, "max_tokens": tokens,
                            "messages": [{"role": "user", "content": "hi"}]}
    if ask:
        body.update(logprobs=True, top_logprobs=5)
    start = time.monotonic()
    last = None
    record.update(tokens=0, done=False, gaps=[], ttft=None, status=None, error=None, logprobs_seen=False)
    try:
        async with session.post(url, json=body, headers={"Authorization": f"Bearer {key}"}) as r:
            record["status"] = r.status
            if r.status != 200:
                record["error"] = (await r.text())[:200]
                return
            buffer = b""
            async for part in r.content.iter_any():
                buffer += part
                while b"\n\n" in buffer:
                    event, buffer = buffer.split(b"\n\n", 1)
                    if not event.startswith(b"data: "):
                        continue
                    data = event[6:]
                    if data == b"[DONE]":
                        record["done"] = True
                        continue
                    chunk = json.loads(data)
                    choices = chunk.get("choices") or []
                    if choices and (choices[0].get("delta") or {}).get("content"):
                        now = time.monotonic()
                        if last is None:
                            record["ttft"] = now - start
                        else:
                            record["gaps"].append(now - last)
                        last = now
                        record["tokens"] += 1
                        record["logprobs_seen"] |= "logprobs" in choices[0]
    except Exception as e:  # a lost stream is counted, with its reason
        record["error"] = f"{type(e).__name__}: {e}"


async def phase(url: str, key: str, pid: int, streams: int, tokens: int, pace: float, ramp: float,
                timeout: float, ask: bool = False) -> dict[str, Any]:
    import aiohttp

    records: list[dict[str, Any]] = [{} for _ in range(streams)]
    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    timeout_cfg = aiohttp.ClientTimeout(total=timeout, sock_connect=30)
    rss_idle = rss_bytes(pid)
    cpu_before = cpu_seconds(pid)
    peak = {"rss": rss_idle, "open": 0}

    async def sample() -> None:
        # the proxy's memory while (nearly) every stream is open: sampled mid-stream
        while True:
            await asyncio.sleep(0.2)
            open_now = sum(1 for r in records if r and r.get("tokens", 0) > 0 and not r.get("done"))
            if open_now >= peak["open"]:
                peak["open"], peak["rss"] = open_now, rss_bytes(pid)

    async with aiohttp.ClientSession(connector=connector, timeout=timeout_cfg) as session:
        sampler = asyncio.create_task(sample())
        tasks = []
        for i in range(streams):
            tasks.append(asyncio.create_task(one_stream(session, url, key, tokens, records[i], ask)))
            if ramp:
                await asyncio.sleep(ramp / streams)
        started = time.monotonic()
        await asyncio.wait(tasks, timeout=timeout)
        wall = time.monotonic() - started
        sampler.cancel()
    cpu = cpu_seconds(pid) - cpu_before
    lost = [r for r in records if r.get("error") or r.get("status") != 200]
    cut = [r for r in records if r not in lost and (not r.get("done") or r.get("tokens") != tokens)]
    ttfts = [r["ttft"] for r in records if r.get("ttft") is not None]
    gaps = [g for r in records for g in r.get("gaps", [])]
    streamed = sum(r.get("tokens", 0) for r in records)
    return {
        "streams": streams, "tokens_streamed": streamed, "wall_seconds": round(wall, 2),
        "proxy_cpu_seconds": round(cpu, 2), "cpu_ms_per_token": round(1000 * cpu / max(streamed, 1), 4),
        "ttft_p50_ms": round(1000 * percentile(ttfts, 50), 1), "ttft_p99_ms": round(1000 * percentile(ttfts, 99), 1),
        "gap_p50_ms": round(1000 * percentile(gaps, 50), 1), "gap_p99_ms": round(1000 * percentile(gaps, 99), 1),
        "pace_ms": round(1000 * pace, 1),
        "rss_idle_mib": round(rss_idle / 2**20, 1), "rss_peak_mib": round(peak["rss"] / 2**20, 1),
        "open_at_peak": peak["open"],
        "rss_kib_per_open_stream": round((peak["rss"] - rss_idle) / 1024 / max(peak["open"], 1), 1),
        "lost": len(lost), "cut": len(cut), "client_chunks_with_logprobs": sum(r.get("logprobs_seen", 0) for r in records),
        "first_errors": sorted({str(r.get("error"))[:120] for r in lost})[:3],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--tokens", type=int, default=20)
    parser.add_argument("--pace", type=float, default=0.5, help="seconds between the upstream's token chunks")
    parser.add_argument("--ramp", type=float, default=5.0, help="seconds over which the streams are opened")
    parser.add_argument("--warmup", type=int, default=20, help="streams sent first, uncounted, to each proxy")
    parser.add_argument("--phase-timeout", type=float, default=180.0)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--logprobs-phase", action="store_true",
                        help="also a phase without the callback where the client asks for logprobs itself")
    args = parser.parse_args()
    if not 1 <= args.streams <= 5000 or not 1 <= args.tokens <= 1000:
        parser.error("--streams from 1 to 5,000 and --tokens from 1 to 1,000: the test stays bounded")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so the proxy and upstream are stopped too
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, 4 * args.streams + 256)), hard))

    results: dict[str, Any] = {"command": " ".join([Path(sys.executable).name, *sys.argv]), "cpus": os.cpu_count()}
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        up_port = free_port()
        up_log = open(tmp / "upstream.log", "wb")
        upstream = subprocess.Popen([sys.executable, str(HERE / "upstream.py"), "--port", str(up_port), "--tokens",
                                     str(args.tokens), "--pace", str(args.pace)], stdout=up_log, stderr=subprocess.STDOUT)
        try:
            wait_ready(f"http://127.0.0.1:{up_port}/v1/models", upstream, tmp / "upstream.log", 30)
            # LiteLLM opens at most 500 connections to one upstream host by default
            # (AIOHTTP_CONNECTOR_LIMIT_PER_HOST): past that, streams wait for a connection.
            limit = str(args.streams + 100)
            env = {"UPSTREAM_BASE_URL": f"http://127.0.0.1:{up_port}/v1", "AIOHTTP_CONNECTOR_LIMIT": limit,
                   "AIOHTTP_CONNECTOR_LIMIT_PER_HOST": limit}
            bare = tmp / "without"
            bare.mkdir()
            (bare / "config.yaml").write_text(WITHOUT)
            # "without": no callback, no logprobs; "without_logprobs_asked": no callback, the client asks
            # for the logprobs the callback would ask for (LiteLLM's own cost of carrying them);
            # "with": the callback, which asks for them upstream and takes them out again.
            plan = [("without", bare / "config.yaml", False), ("with", EXAMPLE / "config.yaml", False)]
            if args.logprobs_phase:
                plan.insert(1, ("without_logprobs_asked", bare / "config.yaml", True))
            for name, config, ask in plan:
                with start_proxy(config, tmp / f"proxy-{name}.log", env) as p:
                    url = p.base_url + "/chat/completions"
                    warm = args.tokens * args.pace + 30  # the warm-up streams run to their end
                    asyncio.run(phase(url, p.key, p.process.pid, args.warmup, args.tokens, args.pace, 0, warm, ask))
                    results[name] = asyncio.run(phase(url, p.key, p.process.pid, args.streams, args.tokens, args.pace,
                                                      args.ramp, args.phase_timeout, ask))
                    if name == "with":
                        with urllib.request.urlopen(p.metrics_url, timeout=10) as r:
                            text = r.read().decode()
                        counted = [line for line in text.splitlines()
                                   if line.startswith('livepplx_generation_tokens_total{model="local"}')]
                        results["with"]["metrics_tokens_total"] = float(counted[0].split()[-1]) if counted else 0.0
                print(json.dumps({name: results[name]}, indent=1), flush=True)
        finally:
            upstream.terminate()
            upstream.wait(timeout=20)
            up_log.close()
    w, wo = results["with"], results["without"]
    results["ratios_with_over_without"] = {
        key: round(w[key] / wo[key], 3) if wo[key] else None
        for key in ("ttft_p50_ms", "ttft_p99_ms", "gap_p50_ms", "gap_p99_ms", "cpu_ms_per_token")}
    results["added_cpu_ms_per_token"] = round(w["cpu_ms_per_token"] - wo["cpu_ms_per_token"], 4)
    results["added_kib_per_open_stream"] = round(w["rss_kib_per_open_stream"] - wo["rss_kib_per_open_stream"], 1)
    print(json.dumps({k: results[k] for k in ("ratios_with_over_without", "added_cpu_ms_per_token",
                                              "added_kib_per_open_stream")}, indent=1))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")
    if "without_logprobs_asked" in results:
        lp = results["without_logprobs_asked"]
        results["litellm_cpu_ms_per_token_for_logprobs"] = round(lp["cpu_ms_per_token"] - wo["cpu_ms_per_token"], 4)
        results["livepplx_cpu_ms_per_token_beyond_that"] = round(w["cpu_ms_per_token"] - lp["cpu_ms_per_token"], 4)
        print(json.dumps({k: results[k] for k in ("litellm_cpu_ms_per_token_for_logprobs",
                                                  "livepplx_cpu_ms_per_token_beyond_that")}, indent=1))
    bad = sum(results[name]["lost"] + results[name]["cut"] for name, _, _ in plan)
    if bad:
        print(f"{bad} streams lost or cut", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
