"""`livepplx chat` as a subprocess against a real HTTP server on 127.0.0.1 that serves
recorded SSE bytes; Ctrl-C on a live replay."""

from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterator

import pytest

from conftest import ppl_of, recorded_logprobs, sse, token_event
from livepplx.recordings import recording_path

RECORDING = recording_path("llamacpp-python-chat")


class Server:
    """What the handler saw: the request bodies, and how many events it wrote before the client left."""

    def __init__(self) -> None:
        self.bodies: list[dict] = []
        self.written = 0
        self.disconnected = threading.Event()


def _handler(server: Server) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["content-length"])))
            server.bodies.append(body)
            model = body["model"]
            if model == "unauthorized":
                data = json.dumps({"error": {"message": "Incorrect API key provided", "type": "invalid_request_error"}})
                self.send_response(401)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data.encode())
                return
            self.send_response(200)
            self.send_header("content-type", "text/event-stream")
            self.end_headers()
            if model == "long":
                events: Iterator[bytes] = (token_event(f"w{i} ", -0.05 if i < 10 else -6.0) for i in range(5000))
            elif model == "nologprobs":
                chunk = {"id": "c", "object": "chat.completion.chunk", "created": 0, "model": "m",
                         "choices": [{"index": 0, "delta": {"content": "hello "}, "logprobs": None, "finish_reason": None}]}
                events = iter([sse(chunk, done=False)] * 5 + [b"data: [DONE]\n\n"])
            else:
                events = iter(RECORDING.read_bytes().split(b"\n\n"))
            try:
                for event in events:
                    self.wfile.write(event if model in ("long", "nologprobs") else event + b"\n\n")
                    self.wfile.flush()
                    server.written += 1
                    if model == "long":
                        time.sleep(0.002)
            except (BrokenPipeError, ConnectionResetError):
                server.disconnected.set()

    return Handler


@pytest.fixture
def server() -> Iterator[tuple[Server, str]]:
    state = Server()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield state, f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    httpd.shutdown()
    httpd.server_close()


def chat(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "livepplx.cli", "chat", *args], capture_output=True, text=True,
                          timeout=60, env={"PATH": "/usr/bin:/bin", "HOME": "/tmp"})


def test_chat_json_prints_the_summary_and_sends_the_logprob_request(server: tuple[Server, str], tmp_path: Path) -> None:
    state, url = server
    record = tmp_path / "answer.sse"
    result = chat("Name the colors", "--base-url", url, "--model", "gemma", "--json", "--system", "Be brief",
                  "--max-tokens", "50", "--temperature", "0", "--record", str(record))
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["tokens"] == 50 and summary["stopped"] is None and summary["error"] is None
    assert math.isclose(summary["ppl"], ppl_of(recorded_logprobs(RECORDING)), rel_tol=1e-12)
    (body,) = state.bodies
    assert body["stream"] is True and body["logprobs"] is True and body["top_logprobs"] == 5
    assert body["messages"] == [{"role": "system", "content": "Be brief"}, {"role": "user", "content": "Name the colors"}]
    assert body["max_tokens"] == 50 and body["temperature"] == 0
    # The recording replays to the same summary.
    again = subprocess.run([sys.executable, "-m", "livepplx.cli", "replay", str(record), "--json"],
                           capture_output=True, text=True, timeout=60)
    assert json.loads(again.stdout) == summary


def test_chat_off_terminal_prints_the_answer_then_the_summary(server: tuple[Server, str]) -> None:
    _, url = server
    result = chat("Name the colors", "--base-url", url, "--model", "gemma")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Name the colors in the rainbow.")
    assert "choice 0: 50 tokens" in result.stdout and "\x1b[" not in result.stdout


def test_chat_stop_above_closes_the_connection(server: tuple[Server, str]) -> None:
    state, url = server
    result = chat("go on", "--base-url", url, "--model", "long", "--json", "--stop-above", "20")
    summary = json.loads(result.stdout)
    assert result.returncode == 0
    assert summary["stopped"]["reason"] == "ppl above 20" and summary["tokens"] == summary["stopped"]["at_token"]
    assert state.disconnected.wait(10)  # the server saw the client go
    assert state.written < 1000  # of 5000 events


def test_chat_without_logprobs_says_how_to_ask(server: tuple[Server, str]) -> None:
    _, url = server
    result = chat("hi", "--base-url", url, "--model", "nologprobs", "--json")
    assert result.returncode == 1 and "top_logprobs" in result.stderr and "Traceback" not in result.stderr
    assert json.loads(result.stdout)["ppl"] is None


def test_chat_server_errors_are_one_line(server: tuple[Server, str]) -> None:
    _, url = server
    result = chat("hi", "--base-url", url, "--model", "unauthorized")
    assert result.returncode == 1
    assert result.stderr.strip() == "livepplx: error: the server answered 401: Incorrect API key provided"


def test_chat_without_a_server_or_a_key_is_one_line() -> None:
    refused = chat("hi", "--base-url", "http://127.0.0.1:9/v1", "--model", "m")
    assert refused.returncode == 1 and refused.stderr.strip().startswith("livepplx: error: cannot reach http://127.0.0.1:9/v1")
    assert "Traceback" not in refused.stderr
    no_key = chat("hi")
    assert no_key.returncode == 1 and "OPENAI_API_KEY" in no_key.stderr


def test_ctrl_c_stops_prints_the_summary_and_exits_130() -> None:
    proc = subprocess.Popen([sys.executable, "-m", "livepplx.cli", "replay", "-", "--json"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdin is not None
    for _ in range(20):
        proc.stdin.write(token_event("x", -1.0))
    proc.stdin.flush()
    time.sleep(1.5)  # the stream stays open, as a live `curl -N` would
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    summary = json.loads(out)
    assert summary["tokens"] == 20 and summary["stopped"]["reason"] == "interrupted" and summary["error"] is None
    assert b"Traceback" not in err


def test_help_on_every_command_shows_examples() -> None:
    for command in ("chat", "replay", "demo"):
        result = subprocess.run([sys.executable, "-m", "livepplx.cli", command, "--help"], capture_output=True, text=True)
        assert result.returncode == 0 and "examples:" in result.stdout
