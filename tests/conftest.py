from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Iterator

import pytest

from livepplx.recordings import RECORDINGS, recording_path
from livepplx.core.state import StreamState

# The load test and its upstream run as scripts (python tests/load/run.py), never in the
# suite: --doctest-modules would import them (the upstream needs aiohttp, LiteLLM's own
# dependency). Ignored here, not by a conftest of their own: a second module named conftest
# would shadow this one for every `from conftest import ...` collected after it.
collect_ignore = ["load"]

SHARED_RECORDINGS = Path(__file__).resolve().parents[2] / "shared" / "recordings"


def sse(*objects: Any, done: bool = True, sep: str = "\n", space: bool = True) -> bytes:
    """Server-sent events of the objects, as a server writes them."""
    prefix = "data: " if space else "data:"
    body = "".join(f"{prefix}{o if isinstance(o, str) else json.dumps(o)}{sep}{sep}" for o in objects)
    if done:
        body += f"{prefix}[DONE]{sep}{sep}"
    return body.encode()


def replay(data: bytes | str, **options: Any) -> StreamState:
    state = StreamState(**options)
    state.handle(data)
    state.finish()
    return state


def recorded_logprobs(path: Path) -> list[float]:
    """The sampled tokens' logprobs of a recording, read the plain way (an independent reference)."""
    values: list[float] = []
    for line in path.read_text().splitlines():
        if not line.startswith("data:") or "[DONE]" in line:
            continue
        obj = json.loads(line[5:])
        for entry in obj.get("completion_probabilities") or []:
            values.append(entry["logprob"] if "logprob" in entry else math.log(entry["prob"]))
        for choice in obj.get("choices", []):
            lp = choice.get("logprobs") or {}
            values += [e["logprob"] for e in lp.get("content") or []]
            values += lp.get("token_logprobs") or []
    return values


def ppl_of(values: list[float]) -> float:
    return math.exp(-math.fsum(values) / len(values))


#: Captures of our own from upstream llama-server (tests only; the package ships the others).
TEST_RECORDINGS = Path(__file__).resolve().parent / "recordings"
ALL_RECORDINGS = [recording_path(name) for name in sorted(RECORDINGS)] + sorted(TEST_RECORDINGS.glob("*.sse"))


@pytest.fixture(params=ALL_RECORDINGS, ids=lambda p: p.stem)
def recording(request: pytest.FixtureRequest) -> Path:
    return request.param


def chunks_of(data: bytes, size: int) -> Iterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


# -- an HTTP server mocked at the transport: real SSE bytes, a body that records reads and close


class CountingBody:
    """A response body that serves SSE events one by one and records how much was read."""

    def __init__(self, events: list[bytes], then_fail: BaseException | None = None) -> None:
        self.events = events
        self.then_fail = then_fail  # raised after the last event: a dropped connection
        self.read = 0
        self.closed = False

    def __iter__(self) -> Iterator[bytes]:
        for event in self.events:
            if self.closed:
                return
            self.read += 1
            yield event
        if self.then_fail is not None:
            raise self.then_fail

    async def __aiter__(self):  # type: ignore[no-untyped-def]
        for event in self:  # the same reads, counts and failure as the sync body
            yield event

    def close(self) -> None:
        self.closed = True

    async def aclose(self) -> None:
        self.closed = True


def token_event(text: str, logprob: float, index: int = 0, top: int = 3) -> bytes:
    """One chat chunk, one token, as an SSE event."""
    alts = [{"token": text, "logprob": logprob, "bytes": None}] + [
        {"token": f"alt{i}", "logprob": logprob - 1.0 - i, "bytes": None} for i in range(top - 1)
    ]
    chunk = {"id": "c", "object": "chat.completion.chunk", "created": 0, "model": "m", "choices": [
        {"index": index, "delta": {"content": text}, "finish_reason": None,
         "logprobs": {"content": [{"token": text, "logprob": logprob, "bytes": None, "top_logprobs": alts[:top]}]}}]}
    return sse(chunk, done=False)


def openai_clients(handler: Any) -> tuple[Any, Any]:
    """A sync and an async OpenAI client whose HTTP goes to `handler` (no network)."""
    import httpx
    import openai

    sync = openai.OpenAI(api_key="sk-test", base_url="http://test.invalid/v1",
                         http_client=httpx.Client(transport=httpx.MockTransport(handler)))
    asyn = openai.AsyncOpenAI(api_key="sk-test", base_url="http://test.invalid/v1",
                              http_client=httpx.AsyncClient(transport=httpx.MockTransport(handler)))
    return sync, asyn


def sse_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Any:
    import httpx

    class Stream(_Stream, httpx.SyncByteStream, httpx.AsyncByteStream):
        pass

    return httpx.Response(status, stream=Stream(body), headers={"content-type": "text/event-stream", **(headers or {})})


class _Stream:
    """httpx's byte-stream protocol (sync and async) over a CountingBody or bytes."""

    def __init__(self, body: Any) -> None:
        self.body = body

    def __iter__(self) -> Iterator[bytes]:
        if isinstance(self.body, bytes):
            yield self.body
        else:
            yield from self.body

    async def __aiter__(self):  # type: ignore[no-untyped-def]
        for part in self:
            yield part

    def close(self) -> None:
        if not isinstance(self.body, bytes):
            self.body.close()

    async def aclose(self) -> None:
        if not isinstance(self.body, bytes):
            await self.body.aclose()
