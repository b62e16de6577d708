"""A real HTTP server on 127.0.0.1 that streams SSE events at a fixed pace and counts what it wrote.

It answers every POST with ``events(request_number, body)`` written one event at a time,
``interval`` seconds apart, flushed each time, over HTTP/1.0 (the body ends when the
connection closes). When the client goes away a write fails and the server stops: what it
managed to write is the measure of how promptly the client closed.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Iterable


class Served:
    """One request as the server saw it."""

    def __init__(self, body: Any) -> None:
        self.body = body
        self.written = 0  # events written in full
        self.write_times: list[float] = []  # when each was written (time.monotonic, comparable in-process)
        self.started = time.monotonic()
        self.ended: float | None = None  # when the server stopped writing (done, or the client left)
        self.client_left = False
        self.done = threading.Event()


class PacedSSEServer:
    """``with PacedSSEServer(events) as server: ... server.base_url ... server.served``."""

    def __init__(self, events: Callable[[int, Any], Iterable[bytes]], interval: float = 0.002,
                 first_delay: float = 0.0) -> None:
        self.events = events
        self.interval = interval
        self.first_delay = first_delay
        self.served: list[Served] = []
        self._lock = threading.Lock()

    def __enter__(self) -> PacedSSEServer:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"

            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                length = int(self.headers.get("content-length") or 0)
                raw = self.rfile.read(length) if length else b""
                try:
                    body = json.loads(raw or b"null")
                except ValueError:
                    body = raw
                with outer._lock:
                    number = len(outer.served)
                    served = Served(body)
                    outer.served.append(served)
                try:
                    self.send_response(200)
                    self.send_header("content-type", "text/event-stream")
                    self.end_headers()
                    self.wfile.flush()
                    if outer.first_delay:
                        time.sleep(outer.first_delay)
                    for event in outer.events(number, body):
                        self.wfile.write(event)
                        self.wfile.flush()
                        served.written += 1
                        served.write_times.append(time.monotonic())
                        time.sleep(outer.interval)
                except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError):
                    served.client_left = True
                finally:
                    served.ended = time.monotonic()
                    served.done.set()

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/v1"

    def written_after(self, number: int, moment: float) -> int:
        """Events of request ``number`` written after ``moment`` (a time.monotonic() reading)."""
        return sum(1 for t in self.wait(number).write_times if t > moment)

    def wait(self, number: int, timeout: float = 10.0) -> Served:
        """Request ``number`` once the server stopped writing it."""
        deadline = time.monotonic() + timeout
        while len(self.served) <= number:
            if time.monotonic() > deadline:
                raise AssertionError(f"request {number} never came")
            time.sleep(0.01)
        served = self.served[number]
        if not served.done.wait(max(0.0, deadline - time.monotonic())):
            raise AssertionError(f"the server was still writing request {number} after {timeout} s")
        return served

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()


def chat_event(text: str, logprob: float, finish: str | None = None) -> bytes:
    chunk = {"id": "c", "object": "chat.completion.chunk", "created": 0, "model": "m", "choices": [
        {"index": 0, "delta": {"content": text}, "finish_reason": finish,
         "logprobs": {"content": [{"token": text, "logprob": logprob, "bytes": None,
                                   "top_logprobs": [{"token": text, "logprob": logprob, "bytes": None}]}]}}]}
    return f"data: {json.dumps(chunk)}\n\n".encode()


def completion_event(text: str, logprob: float, finish: str | None = None) -> bytes:
    chunk = {"id": "c", "object": "text_completion", "created": 0, "model": "m", "choices": [
        {"index": 0, "text": text, "finish_reason": finish,
         "logprobs": {"tokens": [text], "token_logprobs": [logprob], "top_logprobs": [{text: logprob}]}}]}
    return f"data: {json.dumps(chunk)}\n\n".encode()
