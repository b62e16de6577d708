"""Start a real LiteLLM proxy process on 127.0.0.1 with a config (the gateway's tests and load test).

The master key is a fresh random one (``LITELLM_MASTER_KEY``; the proxy refuses to start
without one), the cost map is never fetched (``LITELLM_LOCAL_MODEL_COST_MAP=True``), and
livepplx's metrics go to a free port (``LIVEPPLX_METRICS_PORT``).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator


@dataclass
class Proxy:
    base_url: str
    key: str
    metrics_url: str
    process: subprocess.Popen[bytes]
    log: Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def litellm_command() -> list[str] | None:
    script = Path(sys.executable).parent / "litellm"
    return [str(script)] if script.exists() else None


def wait_ready(url: str, process: subprocess.Popen[bytes], log: Path, timeout: float = 120.0) -> float:
    """Seconds until ``url`` answered 200; the log's tail in the error when it never did."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if process.poll() is not None:
            raise RuntimeError(f"the proxy exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return time.monotonic() - start
        except OSError:
            pass
        time.sleep(0.25)
    raise RuntimeError(f"the proxy was not ready after {timeout:.0f} s:\n{log.read_text()[-3000:]}")


@contextlib.contextmanager
def start_proxy(config: Path, log: Path, env: dict[str, str] | None = None, workers: int = 1) -> Iterator[Proxy]:
    command = litellm_command()
    if command is None:
        raise RuntimeError("no litellm command beside this Python: pip install -e '.[gateway]'")
    port, metrics_port = free_port(), free_port()
    key = "sk-" + secrets.token_hex(16)
    environment = {**os.environ, "LITELLM_MASTER_KEY": key, "LITELLM_LOCAL_MODEL_COST_MAP": "True",
                   "LIVEPPLX_METRICS_PORT": str(metrics_port), **(env or {})}
    with open(log, "wb") as out:
        process = subprocess.Popen(command + ["--config", str(config), "--host", "127.0.0.1", "--port", str(port),
                                              "--num_workers", str(workers)],
                                   stdout=out, stderr=subprocess.STDOUT, env=environment, cwd=log.parent)
    try:
        wait_ready(f"http://127.0.0.1:{port}/health/liveliness", process, log)
        yield Proxy(f"http://127.0.0.1:{port}/v1", key, f"http://127.0.0.1:{metrics_port}/metrics", process, log)
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
