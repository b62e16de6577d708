"""`livepplx chat` against a real HTTP server on 127.0.0.1 that serves recorded SSE bytes,
or misbehaves (stalls, drops the connection, resets it); as a subprocess, or in-process
through `main()`; Ctrl-C on a live replay."""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import stat
import struct
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterator

import pytest

from conftest import ppl_of, recorded_logprobs, sse, token_event
from livepplx import cli
from livepplx.cli import main
from livepplx.recordings import recording_path

RECORDING = recording_path("llamacpp-python-chat")


class Server:
    """What the handler saw: the request bodies, and how many events it wrote before the client left."""

    def __init__(self) -> None:
        self.bodies: list[dict] = []
        self.written = 0
        self.disconnected = threading.Event()
        self.release = threading.Event()  # ends the stalls (set when the test is over)


def _handler(server: Server) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["content-length"])))
            server.bodies.append(body)
            model = body["model"]
            if model in MISBEHAVING:
                MISBEHAVING[model](self, server)
                return
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


def _headers(handler: BaseHTTPRequestHandler, chunked: bool = False) -> None:
    if chunked:
        handler.protocol_version = "HTTP/1.1"  # chunked framing, so a cut body is detectable
    handler.send_response(200)
    handler.send_header("content-type", "text/event-stream")
    if chunked:
        handler.send_header("transfer-encoding", "chunked")
    handler.end_headers()


def _stall(handler: BaseHTTPRequestHandler, server: Server) -> None:
    """Headers and one token, then silence (a hung server)."""
    _headers(handler)
    handler.wfile.write(token_event("a", -1.0))
    handler.wfile.flush()
    server.release.wait(30)


def _stall_headers(handler: BaseHTTPRequestHandler, server: Server) -> None:
    """The request read, then nothing at all: not even the status line."""
    server.release.wait(30)


def _drop(handler: BaseHTTPRequestHandler, server: Server) -> None:
    """A chunked body cut after one token: no terminating chunk, the connection closed."""
    _headers(handler, chunked=True)
    event = token_event("a", -1.0)
    handler.wfile.write(b"%x\r\n%s\r\n" % (len(event), event))
    handler.wfile.flush()
    time.sleep(0.2)
    handler.close_connection = True


def _reset(handler: BaseHTTPRequestHandler, server: Server) -> None:
    """One token, then a TCP reset."""
    _headers(handler)
    handler.wfile.write(token_event("a", -1.0))
    handler.wfile.flush()
    time.sleep(0.3)  # the client has read the token
    handler.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    handler.connection.close()


MISBEHAVING = {"stall": _stall, "stall-headers": _stall_headers, "drop": _drop, "reset": _reset}


@pytest.fixture
def server() -> Iterator[tuple[Server, str]]:
    state = Server()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield state, f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    state.release.set()
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


def test_chat_stop_above_closes_the_connection_before_reporting(
        server: tuple[Server, str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    # In-process, so no process exit closes the socket for us: the server must see the client
    # go before the summary is written, a few events after the stopping token (it writes one
    # every 2 ms, 5,000 in all, and keeps writing into the socket buffers if nobody closes).
    state, url = server
    seen: dict[str, Any] = {}
    report = cli._Run.report

    def report_once_closed(run: Any) -> int:
        seen["disconnected"] = state.disconnected.wait(5)
        seen["written"] = state.written
        return report(run)

    monkeypatch.setattr(cli._Run, "report", report_once_closed)
    assert main(["chat", "go on", "--base-url", url, "--model", "long", "--json", "--stop-above", "20"]) == 0
    summary = json.loads(capsys.readouterr().out)
    # Ten tokens at -0.05, then -6.0 each: the running PPL first exceeds 20 at token 20.
    assert summary["stopped"] == {"reason": "ppl above 20", "choice": 0, "at_token": 20} and summary["tokens"] == 20
    assert seen["disconnected"], "the response was still open when the summary was written"
    assert seen["written"] <= 20 + 100, seen  # 100 events: 200 ms of slack for a loaded machine


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


# -- a connection that breaks or stalls mid-answer -------------------------------------------------


def test_a_stalled_server_fails_after_timeout_with_the_statistics_so_far(server: tuple[Server, str]) -> None:
    _, url = server
    start = time.monotonic()
    result = chat("hi", "--base-url", url, "--model", "stall", "--json", "--timeout", "1")
    elapsed = time.monotonic() - start
    assert result.returncode == 1 and elapsed < 15, (elapsed, result.stderr)
    assert result.stderr.splitlines() == [
        "livepplx: error: the server sent nothing for 1 s after 1 token (raise --timeout to wait longer)"]
    summary = json.loads(result.stdout)
    assert summary["tokens"] == 1 and summary["ppl"] == pytest.approx(math.e) and "sent nothing" in summary["error"]


def test_a_server_that_never_answers_fails_after_three_timeouts(server: tuple[Server, str]) -> None:
    _, url = server
    start = time.monotonic()
    result = chat("hi", "--base-url", url, "--model", "stall-headers", "--timeout", "0.5")
    elapsed = time.monotonic() - start
    assert result.returncode == 1 and elapsed < 15, (elapsed, result.stderr)  # 3 tries of 0.5 s, and the SDK's backoff
    assert result.stderr.splitlines() == [f"livepplx: error: no answer from {url}/ within 0.5 s, 3 tries "
                                          "(raise --timeout to wait longer)"]


@pytest.mark.parametrize(("model", "says"), [
    ("drop", "the connection broke after 1 token: peer closed connection without sending complete message body"),
    ("reset", "the connection broke after 1 token: [Errno 104] Connection reset by peer"),
])
def test_a_connection_that_breaks_mid_answer_is_one_line_and_exit_1(
        server: tuple[Server, str], capsys: pytest.CaptureFixture[str], model: str, says: str) -> None:
    _, url = server
    assert main(["chat", "hi", "--base-url", url, "--model", model, "--json"]) == 1
    out, err = capsys.readouterr()
    (line,) = err.splitlines()
    assert line.startswith(f"livepplx: error: {says}"), line
    summary = json.loads(out)
    assert summary["tokens"] == 1 and summary["ppl"] == pytest.approx(math.e) and summary["error"] == line[17:]


def test_without_json_the_statistics_so_far_are_printed_too(server: tuple[Server, str],
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    _, url = server
    assert main(["chat", "hi", "--base-url", url, "--model", "drop"]) == 1
    out, err = capsys.readouterr()
    assert out.startswith("a\nformat: openai-chat\nchoice 0: 1 tokens  ppl 2.718") and len(err.splitlines()) == 1


# -- --record: a temporary file, renamed into place only for a whole answer --------------------------


def served_bytes() -> bytes:
    return b"".join(event + b"\n\n" for event in RECORDING.read_bytes().split(b"\n\n"))


def test_record_replaces_an_existing_file_and_says_so(server: tuple[Server, str], tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    _, url = server
    record = tmp_path / "answer.sse"
    record.write_bytes(b"an older answer")
    record.chmod(0o640)
    assert main(["chat", "hi", "--base-url", url, "--model", "gemma", "--json", "--record", str(record)]) == 0
    assert capsys.readouterr().err == f"livepplx: replaced {record} with the new recording\n"
    assert record.read_bytes() == served_bytes() and os.listdir(tmp_path) == ["answer.sse"]
    assert stat.S_IMODE(record.stat().st_mode) == 0o640  # as writing over it in place would leave it


def test_a_new_recording_says_nothing_and_gets_the_usual_mode(server: tuple[Server, str], tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    _, url = server
    record = tmp_path / "new.sse"
    assert main(["chat", "hi", "--base-url", url, "--model", "gemma", "--json", "--record", str(record)]) == 0
    assert capsys.readouterr().err == "" and record.read_bytes() == served_bytes()
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(record.stat().st_mode) == 0o666 & ~umask  # not mkstemp's 0600


@pytest.mark.parametrize(("model", "options", "why"), [
    ("stall", ["--timeout", "1"], "the stream failed"),
    ("drop", [], "the stream failed"),
    ("reset", [], "the stream failed"),
    ("long", ["--stop-above", "20"], "the stream was stopped at token 20, before its end"),
    ("unauthorized", [], "the request failed"),
])
@pytest.mark.parametrize("existing", [True, False], ids=["over-a-file", "new"])
def test_an_answer_not_read_to_its_end_is_not_recorded(
        server: tuple[Server, str], tmp_path: Path, capsys: pytest.CaptureFixture[str],
        model: str, options: list[str], why: str, existing: bool) -> None:
    _, url = server
    record = tmp_path / "answer.sse"
    if existing:
        record.write_bytes(b"an older answer")
    code = main(["chat", "hi", "--base-url", url, "--model", model, "--json", "--record", str(record), *options])
    assert code == (0 if model == "long" else 1)
    lines = capsys.readouterr().err.splitlines()
    kept = "is unchanged" if existing else "was not created"
    assert lines[-1] == f"livepplx: the recording was not saved ({why}): {record} {kept}"
    assert len(lines) == (1 if model == "long" else 2) and (model == "long" or lines[0].startswith("livepplx: error:"))
    assert os.listdir(tmp_path) == (["answer.sse"] if existing else [])  # no temporary file left behind
    if existing:
        assert record.read_bytes() == b"an older answer"


def test_a_recording_that_cannot_be_written_fails_before_the_request(server: tuple[Server, str], tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    state, url = server
    assert main(["chat", "hi", "--base-url", url, "--model", "gemma", "--record", str(tmp_path)]) == 1
    assert capsys.readouterr().err == f"livepplx: error: cannot write {tmp_path}: Is a directory\n"
    assert state.bodies == [] and os.listdir(tmp_path) == []
