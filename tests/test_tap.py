"""The tap (livepplx.integrations.tap): a transport under any httpx / httpx2 client.

Real recordings are served by a mocked transport (no network) through raw clients and the
openai SDK, sync and async, with httpx and with httpx2. The references are independent: the
recording's own bytes, `replay` of them, the SDK's objects without the tap, and the logprobs
read the plain way from the recording.
"""

from __future__ import annotations

import asyncio
import copy
import gzip
import importlib
import importlib.util
import json
import logging
import math
import re
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import openai
import pytest
from conftest import ALL_RECORDINGS, CountingBody, ppl_of, recorded_logprobs, replay, sse, token_event

from hypothesis import given, settings
from hypothesis import strategies as st

from livepplx import Listener, NoLogprobsError, StreamState, Trigger, min_tokens, recording_path
from livepplx.core.errors import CallbackError
from livepplx.integrations.tap import ID_HEADER, AsyncMonitorTransport, MonitorTransport, Tap

LIBRARIES = ["httpx"] + (["httpx2"] if importlib.util.find_spec("httpx2") else [])
CHAT = recording_path("llamacpp-server-chat")
COMPLETIONS = recording_path("llamacpp-python-completions")
MESSAGES = [{"role": "user", "content": "Hi"}]


@pytest.fixture(params=LIBRARIES)
def lib(request: pytest.FixtureRequest) -> Any:
    return importlib.import_module(request.param)


# -- a mocked server ---------------------------------------------------------------------


def events_of(data: bytes) -> list[bytes]:
    """An SSE capture cut into its events, each with its blank line."""
    events = re.findall(rb".+?(?:\n\n|\Z)", data, re.S)
    assert b"".join(events) == data
    return events


def body_stream(lib: Any, body: Any) -> Any:
    """The library's byte stream (sync and async) over a CountingBody or a list of chunks."""

    class Stream(lib.SyncByteStream, lib.AsyncByteStream):
        def __iter__(self) -> Iterator[bytes]:
            yield from body

        async def __aiter__(self):  # type: ignore[no-untyped-def]
            for part in body:
                yield part

        def close(self) -> None:
            if hasattr(body, "close"):
                body.close()

        async def aclose(self) -> None:
            self.close()

    return Stream()


class Server:
    """A mocked server: records every request (method, path, headers, JSON body) and answers
    with ``answer(request) -> (status, content type, body chunks or CountingBody, headers)``."""

    def __init__(self, lib: Any, answer: Callable[[Any], tuple[int, str, Any, dict[str, str]]]) -> None:
        self.lib = lib
        self.answer = answer
        self.requests: list[Any] = []
        self.bodies: list[Any] = []

    def __call__(self, request: Any) -> Any:
        self.requests.append(request)
        content = request.read()
        try:
            self.bodies.append(json.loads(content))
        except ValueError:
            self.bodies.append(content)
        status, ctype, body, headers = self.answer(request)
        return self.lib.Response(status, headers={"content-type": ctype, **headers}, stream=body_stream(self.lib, body))

    def transport(self) -> Any:
        return self.lib.MockTransport(self)


def serving(lib: Any, data: bytes | Callable[[], Any], ctype: str = "text/event-stream", status: int = 200,
            headers: dict[str, str] | None = None) -> Server:
    """A server that answers every request with ``data`` cut into its events (or a fresh body from ``data()``)."""
    def answer(request: Any) -> tuple[int, str, Any, dict[str, str]]:
        body = data() if callable(data) else (events_of(data) if ctype == "text/event-stream" else [data])
        return status, ctype, body, headers or {}
    return Server(lib, answer)


def sdk(lib: Any, transport: Any, asynchronous: bool = False) -> Any:
    if asynchronous:
        return openai.AsyncOpenAI(api_key="sk-test", base_url="http://test.invalid/v1", max_retries=0,
                                  http_client=lib.AsyncClient(transport=transport))
    return openai.OpenAI(api_key="sk-test", base_url="http://test.invalid/v1", max_retries=0,
                         http_client=lib.Client(transport=transport))


def dicts(chunks: list[Any]) -> list[dict[str, Any]]:
    """SDK objects as the keys the server sent (exclude_unset): a key removed or set to null differs."""
    return [chunk.to_dict() for chunk in chunks]


def without_logprobs(data: bytes, kind: str) -> bytes:
    """The capture as the server sends it when logprobs were not asked (the reference for stripping):
    chat choices without the key (llama-server's shape), completions choices with null."""
    out = []
    for event in events_of(data):
        line = event.strip()
        if line.startswith(b"data:") and b"[DONE]" not in line:
            obj = json.loads(line[5:])
            for choice in obj.get("choices", []):
                if kind == "chat":
                    choice.pop("logprobs", None)
                else:
                    choice["logprobs"] = None
            event = b"data: " + json.dumps(obj).encode() + b"\n\n"
        out.append(event)
    return b"".join(out)


def summary(state: StreamState) -> dict[str, Any]:
    return json.loads(json.dumps(state.summary()))  # NaN-safe comparison: NaN becomes NaN in both


# -- bytes unchanged, statistics equal replay -------------------------------------------


def _path(recording: Path) -> str:
    return "/completion" if "native" in recording.stem else \
        "/v1/chat/completions" if "chat" in recording.stem else "/v1/completions"


@pytest.mark.parametrize("size", [1, 7, 4096])
def test_raw_bytes_pass_unchanged_and_statistics_equal_replay(lib: Any, recording: Path, size: int) -> None:
    data = recording.read_bytes()
    pieces = [data[i:i + size] for i in range(0, len(data), size)]
    server = Server(lib, lambda request: (200, "text/event-stream", pieces, {}))
    tap = Tap(ask_logprobs=False, endpoints=("/chat/completions", "/completions", "/completion"))
    with lib.Client(transport=tap.transport(server.transport())) as http:
        with http.stream("POST", "http://x" + _path(recording), json={"stream": True}) as r:
            got = b"".join(r.iter_bytes())
    assert got == data
    assert summary(tap.last) == summary(replay(data))
    assert server.requests[0].headers["accept-encoding"] == "identity"


@pytest.mark.parametrize("end", [b"\r\n", b"\r"])
def test_crlf_and_cr_line_ends_are_cut_at_their_blank_lines(lib: Any, end: bytes) -> None:
    data = CHAT.read_bytes().replace(b"\n", end)
    pieces = [data[i:i + 5] for i in range(0, len(data), 5)]  # a line end split between two pieces
    server = Server(lib, lambda request: (200, "text/event-stream", pieces, {}))
    tap = Tap(ask_logprobs=False, triggers=[Trigger(min_tokens(3), stop=True)])
    with lib.Client(transport=tap.transport(server.transport())) as http:
        with http.stream("POST", "http://x/v1/chat/completions", json={"stream": True}) as r:
            got = b"".join(r.iter_bytes())
    prefix = b"".join(event + end * 2 for event in data.split(end * 2)[:4])  # the role chunk and three tokens
    assert got.startswith(prefix) and tap.last.tokens == 3
    finish = json.loads(got[len(prefix):].split(b"\n\n")[0][5:])  # then the finish chunk, and [DONE]
    assert finish["choices"][0]["finish_reason"] == "length" and got.endswith(b"\n\ndata: [DONE]\n\n")


def _pieces(data: bytes, cuts: list[int]) -> list[bytes]:
    cuts = sorted(cuts)
    return [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)])]


@settings(max_examples=40, deadline=None)
@given(st.sampled_from(ALL_RECORDINGS), st.lists(st.floats(0, 1), max_size=40))
def test_any_split_of_any_recording_passes_unchanged_and_reads_as_replay(recording: Path, cuts: list[float]) -> None:
    import httpx

    data = recording.read_bytes()
    pieces = _pieces(data, [int(c * len(data)) for c in cuts])
    tap = Tap(ask_logprobs=False, endpoints=("/chat/completions", "/completions", "/completion"))
    server = Server(httpx, lambda request: (200, "text/event-stream", pieces, {}))
    with httpx.Client(transport=tap.transport(server.transport())) as http:
        with http.stream("POST", "http://x" + _path(recording), json={"stream": True}) as r:
            assert b"".join(r.iter_bytes()) == data
    assert summary(tap.last) == summary(replay(data))


@settings(max_examples=30, deadline=None)
@given(st.sampled_from([CHAT, recording_path("llamacpp-python-chat"), COMPLETIONS]), st.integers(1, 50),
       st.lists(st.floats(0, 1), max_size=20))
def test_a_stop_at_any_token_hands_on_the_events_to_the_crossing_one_then_a_normal_end(
        recording: Path, k: int, cuts: list[float]) -> None:
    import httpx

    data = recording.read_bytes()
    events = events_of(data)
    reference = StreamState()  # the events up to the one that carries the k-th token, read one by one
    upto = 0
    while reference.tokens < k and upto < len(events):
        reference.handle(events[upto])
        upto += 1
    body = CountingBody(_pieces(data, [int(c * len(data)) for c in cuts]))
    tap = Tap(ask_logprobs=False, triggers=[Trigger(min_tokens(k), stop=True)])
    server = Server(httpx, lambda request: (200, "text/event-stream", body, {}))
    chunks = list(sdk(httpx, tap.transport(server.transport())).chat.completions.create(
        model="m", messages=MESSAGES, stream=True) if "chat" in recording.stem else
        sdk(httpx, tap.transport(server.transport())).completions.create(model="m", prompt="x", stream=True))
    expected = [json.loads(e.strip()[5:]) for e in events[:upto] if e.startswith(b"data: {")]
    if tap.last.stopped is None:  # k past the answer's last token: read to its end
        assert reference.tokens < k and len(chunks) == len(expected)
        return
    assert body.closed and tap.last.tokens == k == reference.tokens
    assert dicts(chunks[:-1]) == [c for c in expected]  # SDK objects as the server sent them
    assert chunks[-1].choices[0].finish_reason == "length"


def test_async_raw_bytes_pass_unchanged_and_statistics_equal_replay(lib: Any, recording: Path) -> None:
    data = recording.read_bytes()
    server = serving(lib, data)
    tap = Tap(ask_logprobs=False, endpoints=("/chat/completions", "/completions", "/completion"))

    async def read() -> bytes:
        async with lib.AsyncClient(transport=tap.async_transport(server.transport())) as http:
            async with http.stream("POST", "http://x" + _path(recording), json={"stream": True}) as r:
                return b"".join([part async for part in r.aiter_bytes()])

    assert asyncio.run(read()) == data
    assert summary(tap.last) == summary(replay(data))


@pytest.mark.parametrize("asynchronous", [False, True])
def test_openai_sdk_objects_are_those_without_the_tap(lib: Any, asynchronous: bool) -> None:
    """Through OpenAI(http_client=...): the caller asked for logprobs, so nothing is changed."""
    request = {"model": "m", "messages": MESSAGES, "stream": True, "logprobs": True, "top_logprobs": 3}

    def collect(transport: Any) -> list[Any]:
        client = sdk(lib, transport, asynchronous)
        if not asynchronous:
            return list(client.chat.completions.create(**request))

        async def run() -> list[Any]:
            return [chunk async for chunk in await client.chat.completions.create(**request)]
        return asyncio.run(run())

    plain = collect(serving(lib, CHAT.read_bytes()).transport())
    tap = Tap()
    server = serving(lib, CHAT.read_bytes())
    transport = tap.async_transport(server.transport()) if asynchronous else tap.transport(server.transport())
    tapped = collect(transport)
    assert dicts(tapped) == dicts(plain) and len(tapped) == 33
    assert server.bodies[0] == request  # asked already: sent as it was
    assert summary(tap.last) == summary(replay(CHAT.read_bytes()))
    assert tap.states == {tapped[0].id: tap.last}


def test_one_transport_goes_into_either_library() -> None:
    for name in LIBRARIES:
        library = importlib.import_module(name)
        assert isinstance(MonitorTransport(), library.BaseTransport)
        assert isinstance(AsyncMonitorTransport(), library.AsyncBaseTransport)


@pytest.mark.skipif(len(LIBRARIES) < 2, reason="needs httpx and httpx2")
def test_an_inner_transport_of_the_other_library_is_named() -> None:
    import httpx
    import httpx2

    inner = httpx.MockTransport(lambda request: httpx.Response(200))
    client = sdk(httpx2, MonitorTransport(inner))
    with pytest.raises(TypeError, match="the inner transport is a httpx transport .* and the client is a httpx2 "
                       "client: a transport must come from the same library as the client"):
        client.chat.completions.create(model="m", messages=MESSAGES)


# -- asking for logprobs, and giving them back ------------------------------------------


@pytest.mark.parametrize("asynchronous", [False, True])
def test_chat_logprobs_asked_for_and_taken_out_again(lib: Any, asynchronous: bool) -> None:
    request = {"model": "m", "messages": MESSAGES, "stream": True}
    reference = [c for c in _chat_chunks(lib, serving(lib, without_logprobs(CHAT.read_bytes(), "chat")).transport(),
                                         request, asynchronous)]
    server = serving(lib, CHAT.read_bytes())
    tap = Tap()
    transport = tap.async_transport(server.transport()) if asynchronous else tap.transport(server.transport())
    tapped = _chat_chunks(lib, transport, request, asynchronous)
    assert server.bodies[0] == {**request, "logprobs": True, "top_logprobs": 5}
    assert dicts(tapped) == dicts(reference)
    assert all(choice.logprobs is None for chunk in tapped for choice in chunk.choices)
    assert math.isclose(tap.last.ppl, ppl_of(recorded_logprobs(CHAT)), rel_tol=1e-12)
    assert tap.last.tokens == 30 and tap.last.error is None
    assert tap.last.request == request  # the caller's own body, for escalations


def _chat_chunks(lib: Any, transport: Any, request: dict[str, Any], asynchronous: bool) -> list[Any]:
    client = sdk(lib, transport, asynchronous)
    if not asynchronous:
        return list(client.chat.completions.create(**request))

    async def run() -> list[Any]:
        return [chunk async for chunk in await client.chat.completions.create(**request)]
    return asyncio.run(run())


def test_completions_logprobs_asked_for_and_given_back_as_null(lib: Any) -> None:
    request = {"model": "m", "prompt": "The quick brown fox", "stream": True}
    client = sdk(lib, serving(lib, without_logprobs(COMPLETIONS.read_bytes(), "completions")).transport())
    reference = list(client.completions.create(**request))
    server = serving(lib, COMPLETIONS.read_bytes())
    tap = Tap(top_logprobs=3)
    tapped = list(sdk(lib, tap.transport(server.transport())).completions.create(**request))
    assert server.bodies[0] == {**request, "logprobs": 3}
    assert dicts(tapped) == dicts(reference)
    assert math.isclose(tap.last.ppl, ppl_of(recorded_logprobs(COMPLETIONS)), rel_tol=1e-12)


def test_only_top_logprobs_added_comes_back_empty(lib: Any) -> None:
    """logprobs=True without top_logprobs: llama-cpp-python would send none, so the tap adds it,
    and each entry's alternatives come back [] as OpenAI sends them."""
    request = {"model": "m", "messages": MESSAGES, "stream": True, "logprobs": True}
    server = serving(lib, CHAT.read_bytes())
    tap = Tap()
    tapped = list(sdk(lib, tap.transport(server.transport())).chat.completions.create(**request))
    assert server.bodies[0]["top_logprobs"] == 5
    entries = [e for chunk in tapped for c in chunk.choices if c.logprobs for e in c.logprobs.content]
    assert len(entries) == 30 and all(e.top_logprobs == [] for e in entries)
    assert [e.logprob for e in entries] == recorded_logprobs(CHAT)
    # the statistics (entropy too) are read from the alternatives the caller does not get
    assert tap.last.choice(0).as_dict() == replay(CHAT.read_bytes()).choice(0).as_dict()


def test_usage_asked_for_only_when_told_and_taken_out_again(lib: Any) -> None:
    data = CHAT.read_bytes()  # its request asked include_usage: the last chunk is the usage chunk
    request = {"model": "m", "messages": MESSAGES, "stream": True}
    server = serving(lib, data)
    list(sdk(lib, Tap().transport(server.transport())).chat.completions.create(**request))
    assert "stream_options" not in server.bodies[0]
    server = serving(lib, data)
    tapped = list(sdk(lib, Tap(ask_usage=True).transport(server.transport())).chat.completions.create(**request))
    assert server.bodies[0]["stream_options"] == {"include_usage": True}
    assert all(chunk.choices and chunk.usage is None for chunk in tapped) and len(tapped) == 32


def test_responses_logprobs_asked_for_and_emptied(lib: Any) -> None:
    data = responses_stream()
    request = {"model": "m", "input": "Hi", "stream": True}
    server = serving(lib, data)
    tap = Tap(top_logprobs=2)
    events = list(sdk(lib, tap.transport(server.transport())).responses.create(**request))
    assert server.bodies[0] == {**request, "include": ["message.output_text.logprobs"], "top_logprobs": 2}
    deltas = [e for e in events if e.type == "response.output_text.delta"]
    assert [d.delta for d in deltas] == ["Hel", "lo"] and all(d.logprobs == [] for d in deltas)
    completed = events[-1].response
    assert completed.output[0].content[0].logprobs == [] and completed.top_logprobs is None
    assert tap.last.format == "openai-responses" and tap.last.tokens == 2
    assert math.isclose(tap.last.ppl, math.exp(0.75))
    assert list(tap.states) == ["resp_1"]


def responses_stream(logprobs: tuple[float, ...] = (-0.5, -1.0)) -> bytes:
    """A Responses stream in OpenAI's shape, with logprobs on the deltas."""
    texts = ["Hel", "lo"]
    opened = {"id": "resp_1", "object": "response", "status": "in_progress", "model": "m", "output": [],
              "top_logprobs": 2}
    events: list[tuple[str, dict[str, Any]]] = [("response.created", {"response": opened})]
    for text, lp in zip(texts, logprobs):
        events.append(("response.output_text.delta", {"item_id": "msg_1", "output_index": 0, "content_index": 0,
                                                      "delta": text, "logprobs": [{"token": text, "logprob": lp,
                                                                                   "top_logprobs": []}]}))
    part = {"type": "output_text", "text": "Hello", "annotations": [],
            "logprobs": [{"token": t, "logprob": lp, "top_logprobs": []} for t, lp in zip(texts, logprobs)]}
    done = {**opened, "status": "completed",
            "output": [{"type": "message", "id": "msg_1", "role": "assistant", "status": "completed",
                        "content": [part]}]}
    events.append(("response.completed", {"response": done}))
    out = b""
    for n, (name, body) in enumerate(events):
        out += f"event: {name}\ndata: {json.dumps({'type': name, 'sequence_number': n, **body})}\n\n".encode()
    return out


def whole_answer(recording: Path) -> dict[str, Any]:
    """A non-streamed chat answer assembled from a streamed capture (content and logprobs joined)."""
    text, entries, first = "", [], None
    for event in events_of(recording.read_bytes()):
        line = event.strip()
        if not line.startswith(b"data:") or b"[DONE]" in line:
            continue
        obj = json.loads(line[5:])
        first = first or obj
        for choice in obj["choices"]:
            text += choice["delta"].get("content") or ""
            entries += (choice.get("logprobs") or {}).get("content") or []
    return {"id": first["id"], "object": "chat.completion", "created": first["created"], "model": first["model"],
            "choices": [{"index": 0, "finish_reason": "length", "message": {"role": "assistant", "content": text},
                         "logprobs": {"content": entries}}],
            "usage": {"completion_tokens": len(entries), "prompt_tokens": 1, "total_tokens": len(entries) + 1}}


@pytest.mark.parametrize("asynchronous", [False, True])
def test_whole_answers_are_scored_and_given_back_without_what_was_asked(lib: Any, asynchronous: bool) -> None:
    answer = whole_answer(CHAT)
    plain = copy.deepcopy(answer)
    del plain["choices"][0]["logprobs"]
    ends: list[Any] = []
    server = serving(lib, json.dumps(answer).encode(), ctype="application/json")
    tap = Tap(on_end=lambda state, request: ends.append((state, request)))
    request = {"model": "m", "messages": MESSAGES}
    if asynchronous:
        async def run() -> Any:
            return await sdk(lib, tap.async_transport(server.transport()), True).chat.completions.create(**request)
        got = asyncio.run(run())
    else:
        got = sdk(lib, tap.transport(server.transport())).chat.completions.create(**request)
    assert server.bodies[0] == {**request, "logprobs": True, "top_logprobs": 5}
    assert got.to_dict() == plain
    assert math.isclose(tap.last.ppl, ppl_of(recorded_logprobs(CHAT)), rel_tol=1e-12) and tap.last.tokens == 30
    assert list(tap.states) == [answer["id"]] and ends == [(tap.last, ends[0][1])]
    assert ends[0][1].url.path == "/v1/chat/completions"


def test_a_refusal_gets_the_callers_own_request_and_is_remembered(lib: Any) -> None:
    """llama-server answers 400 to a Responses request with top_logprobs: the caller gets what
    it would have got without the tap."""
    plain = b'event: response.created\ndata: {"type":"response.created","response":{"id":"r","object":"response"}}\n\n'

    def answer(request: Any) -> tuple[int, str, Any, dict[str, str]]:
        if b"top_logprobs" in request.content:
            return 400, "application/json", [b'{"error":{"code":400,"message":"top_logprobs requires logprobs"}}'], {}
        return 200, "text/event-stream", [plain], {}

    server = Server(lib, answer)
    tap = Tap()
    client = sdk(lib, tap.transport(server.transport()))
    assert [e.type for e in client.responses.create(model="m", input="Hi", stream=True)] == ["response.created"]
    assert "top_logprobs" in server.bodies[0] and server.bodies[1] == {"model": "m", "input": "Hi", "stream": True}
    assert "answered 400" in tap.last.error and "top_logprobs requires logprobs" in tap.last.error
    list(client.responses.create(model="m", input="Hi", stream=True))
    assert len(server.bodies) == 3 and server.bodies[2] == server.bodies[1]  # not asked again


# -- stop -------------------------------------------------------------------------------


def counting_chat(n: int = 60) -> CountingBody:
    return CountingBody([token_event(f"t{i}", -0.1 * (i % 7)) for i in range(n)]
                        + [sse({"id": "c", "object": "chat.completion.chunk", "created": 0, "model": "m",
                                "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})])


def test_a_stop_closes_the_upstream_first_and_ends_the_sdk_stream_normally(lib: Any) -> None:
    body = counting_chat()
    order: list[str] = []
    trigger = Trigger(min_tokens(10), stop=True, name="ten",
                      call=lambda event: order.append(f"call closed={body.closed}"))
    ends: list[StreamState] = []
    tap = Tap(triggers=[trigger], on_end=lambda state, request: (order.append("end"), ends.append(state)))
    server = Server(lib, lambda request: (200, "text/event-stream", body, {}))
    chunks = list(sdk(lib, tap.transport(server.transport())).chat.completions.create(
        model="m", messages=MESSAGES, stream=True, logprobs=True, top_logprobs=3))
    assert body.closed and body.read == 10  # nothing read past the crossing event
    assert order == ["call closed=True", "end"] and ends == [tap.last]
    assert [c.choices[0].delta.content for c in chunks[:10]] == [f"t{i}" for i in range(10)]
    last = chunks[-1]
    assert len(chunks) == 11 and last.choices[0].finish_reason == "length" and last.id == "c" and last.model == "m"
    assert tap.last.stopped is not None and tap.last.stopped.at_token == 10 and tap.last.tokens == 10


def test_a_stop_in_the_async_transport_awaits_async_callbacks_after_the_close(lib: Any) -> None:
    body = counting_chat()
    order: list[str] = []

    async def call(event: Any) -> None:
        await asyncio.sleep(0)
        order.append(f"call closed={body.closed}")

    async def on_end(state: StreamState, request: Any) -> None:
        order.append("end")

    tap = Tap(triggers=[Trigger(min_tokens(5), stop=True, call=call)], on_end=on_end)
    server = Server(lib, lambda request: (200, "text/event-stream", body, {}))
    client = sdk(lib, tap.async_transport(server.transport()), True)

    async def run() -> list[Any]:
        stream = await client.chat.completions.create(model="m", messages=MESSAGES, stream=True)
        return [chunk async for chunk in stream]

    chunks = asyncio.run(run())
    assert body.closed and body.read == 5 and order == ["call closed=True", "end"]
    assert chunks[-1].choices[0].finish_reason == "length" and len(chunks) == 6
    assert all(c.choices[0].logprobs is None for c in chunks)  # asked by the tap, taken out again


def test_litellm_ends_a_stopped_stream_normally(monkeypatch: pytest.MonkeyPatch) -> None:
    """LiteLLM raises MidStreamFallbackError on a stream that ends without a finish_reason; after
    the tap's stop its CustomStreamWrapper ends as after any answer cut by max_tokens."""
    monkeypatch.setenv("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    litellm = pytest.importorskip("litellm", reason="pip install -e '.[litellm]'")
    import httpx

    body = counting_chat()
    tap = Tap(triggers=[Trigger(min_tokens(10), stop=True)])
    monkeypatch.setattr(litellm, "client_session", httpx.Client(transport=tap.transport(
        Server(httpx, lambda request: (200, "text/event-stream", body, {})).transport())))
    chunks = list(litellm.completion(model="openai/m", api_base="http://tap-stop.invalid/v1", api_key="k",
                                     messages=MESSAGES, stream=True))
    assert body.closed and body.read == 10 and tap.last.stopped is not None
    assert chunks[-1].choices[0].finish_reason == "length"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "".join(f"t{i}" for i in range(10))


def test_listeners_and_escalations_work_through_the_tap(lib: Any) -> None:
    told: list[str] = []

    class Told(Listener):
        def on_start(self, state: StreamState) -> None:
            told.append("start")

        def on_stop(self, state: StreamState, stop: Any) -> None:
            told.append(f"stop {stop.at_token}")

        def on_end(self, state: StreamState) -> None:
            told.append("end")

    body = counting_chat()
    escalations: list[Any] = []
    trigger = Trigger(min_tokens(7), escalate=lambda escalation: escalations.append(
        (escalation.request, escalation.event.at_token, body.closed)))
    tap = Tap(triggers=[trigger], listeners=[Told()])
    request = {"model": "m", "messages": MESSAGES, "stream": True, "temperature": 0.5}
    chunks = list(sdk(lib, tap.transport(Server(lib, lambda r: (200, "text/event-stream", body, {})).transport()))
                  .chat.completions.create(**request))
    assert told == ["start", "stop 7", "end"] and len(chunks) == 8
    assert escalations == [(request, 7, True)]  # the caller's own request, after the close


def test_async_callbacks_in_the_sync_transport_are_recorded(lib: Any) -> None:
    async def call(event: Any) -> None:
        pass

    async def on_end(state: StreamState, request: Any) -> None:
        pass

    tap = Tap(triggers=[Trigger(min_tokens(3), call=call)], on_end=on_end)
    chunks = list(sdk(lib, tap.transport(serving(lib, CHAT.read_bytes()).transport())).chat.completions.create(
        model="m", messages=MESSAGES, stream=True))
    assert len(chunks) == 33
    assert tap.last.error.startswith("the call of trigger 'min_tokens(3)' is async: use the async transport")


def test_a_stop_ends_every_unfinished_choice_then_done(lib: Any) -> None:
    events = [token_event("a", -0.1, index=0), token_event("b", -0.1, index=1),
              sse({"id": "c", "object": "chat.completion.chunk", "created": 0, "model": "m",
                   "choices": [{"index": 1, "delta": {}, "finish_reason": "stop"}]}, done=False),
              token_event("c", -3.0, index=0), token_event("d", -0.1, index=0)]
    body = CountingBody(events)
    tap = Tap(triggers=[Trigger(min_tokens(2), stop=True)], ask_logprobs=False, stop_finish_reason="stop")
    with lib.Client(transport=tap.transport(Server(lib, lambda r: (200, "text/event-stream", body, {})).transport())) \
            as http:
        with http.stream("POST", "http://x/v1/chat/completions", json={"stream": True}) as r:
            got = b"".join(r.iter_bytes())
    tail = got[len(b"".join(events[:4])):]
    assert got.startswith(b"".join(events[:4])) and body.closed
    finishes = [json.loads(line[5:]) for line in tail.split(b"\n\n") if line.startswith(b"data: {")]
    assert [(f["choices"][0]["index"], f["choices"][0]["finish_reason"]) for f in finishes] == [(0, "stop")]
    assert tail.endswith(b"data: [DONE]\n\n")


def test_a_stop_in_the_last_event_held_till_the_end_still_ends_normally(lib: Any) -> None:
    """The last event came without its blank line: it is read at the end, and may cross."""
    data = CHAT.read_bytes()
    events = events_of(data)
    cut = b"".join(events[:4]) + events[4].rstrip(b"\n") + b"\n"  # the 4th token, then the stream ends
    tap = Tap(ask_logprobs=False, triggers=[Trigger(min_tokens(4), stop=True, name="four")])
    with lib.Client(transport=tap.transport(Server(lib, lambda r: (200, "text/event-stream", [cut], {})).transport())) \
            as http:
        with http.stream("POST", "http://x/v1/chat/completions", json={"stream": True}) as r:
            got = b"".join(r.iter_bytes())
    assert tap.last.stopped is not None and tap.last.stopped.at_token == 4
    assert got.startswith(cut) and got.endswith(b"data: [DONE]\n\n") and b'"finish_reason":"length"' in got[len(cut):]
    assert all(event.count(b"data:") == 1 for event in got.split(b"\n\n") if event)  # the held event was ended


def ollama_stream(n: int = 30) -> bytes:
    """Ollama's native /api/chat stream (NDJSON): a logprobs list beside each message delta."""
    lines = [{"model": "gemma3", "created_at": f"2026-01-01T00:00:{i:02d}Z",
              "message": {"role": "assistant", "content": f"w{i}"},
              "logprobs": [{"token": f"w{i}", "logprob": -0.05 * (i % 9), "top_logprobs": []}], "done": False}
             for i in range(n)]
    lines.append({"model": "gemma3", "created_at": "2026-01-01T00:01:00Z", "message": {"role": "assistant",
                  "content": ""}, "done": True, "done_reason": "stop", "eval_count": n})
    return b"".join(json.dumps(line).encode() + b"\n" for line in lines)


def test_an_ndjson_stream_is_watched_and_a_stop_ends_it_with_done(lib: Any) -> None:
    data = ollama_stream()
    pieces = _pieces(data, list(range(0, len(data), 97)))
    tap = Tap(endpoints=("/api/chat",))
    server = Server(lib, lambda request: (200, "application/x-ndjson", pieces, {}))
    with lib.Client(transport=tap.transport(server.transport())) as http:
        with http.stream("POST", "http://x/api/chat", json={"model": "gemma3", "messages": MESSAGES}) as r:
            assert b"".join(r.iter_bytes()) == data
    assert summary(tap.last) == summary(replay(data)) and tap.last.format == "ollama" and tap.last.tokens == 30
    assert server.bodies[0] == {"model": "gemma3", "messages": MESSAGES}  # only OpenAI endpoints are asked

    body = CountingBody(data.splitlines(keepends=True))
    tap = Tap(endpoints=("/api/chat",), triggers=[Trigger(min_tokens(5), stop=True)])
    server = Server(lib, lambda request: (200, "application/x-ndjson", body, {}))
    with lib.Client(transport=tap.transport(server.transport())) as http:
        with http.stream("POST", "http://x/api/chat", json={"model": "gemma3", "messages": MESSAGES}) as r:
            lines = [json.loads(line) for line in b"".join(r.iter_bytes()).splitlines()]
    assert body.closed and body.read == 5 and len(lines) == 6
    assert lines[-1] == {"model": "gemma3", "created_at": "2026-01-01T00:00:04Z",
                         "message": {"role": "assistant", "content": ""}, "done": True, "done_reason": "length"}


def test_tap_stop_from_outside_takes_effect_at_the_next_chunk(lib: Any) -> None:
    body = counting_chat()
    tap = Tap()
    stream = sdk(lib, tap.transport(Server(lib, lambda r: (200, "text/event-stream", body, {})).transport())) \
        .chat.completions.create(model="m", messages=MESSAGES, stream=True)
    chunks = []
    for chunk in stream:
        chunks.append(chunk)
        if len(chunks) == 3:
            assert tap.stop() is tap.last
    assert body.closed and body.read == 4 and len(chunks) == 4
    assert chunks[-1].choices[0].finish_reason == "length"
    assert tap.last.stopped is not None and tap.last.stopped.reason == "stopped by the caller"


def test_a_stopped_responses_stream_ends_with_response_incomplete(lib: Any) -> None:
    data = responses_stream((-0.5, -9.0))
    tap = Tap(triggers=[Trigger(min_tokens(1), stop=True)])
    events = list(sdk(lib, tap.transport(serving(lib, data).transport())).responses.create(
        model="m", input="Hi", stream=True))
    assert [e.type for e in events] == ["response.created", "response.output_text.delta", "response.incomplete"]
    end = events[-1]
    assert end.response.id == "resp_1" and end.response.status == "incomplete"
    assert end.response.incomplete_details.reason == "max_output_tokens" and end.sequence_number == 2


# -- what passes untouched ----------------------------------------------------------------


def test_an_html_page_a_get_and_an_upload_pass_untouched_and_record_nothing(lib: Any) -> None:
    page = b"<html><body>502 Bad Gateway</body></html>"
    server = serving(lib, page, ctype="text/html")
    tap = Tap()
    with lib.Client(transport=tap.transport(server.transport())) as http:
        with http.stream("POST", "http://x/v1/chat/completions", json={"model": "m", "stream": True}) as r:
            assert b"".join(r.iter_bytes()) == page
        assert http.get("http://x/v1/models").content == page
        upload = http.post("http://x/v1/chat/completions", files={"file": ("a.png", b"\x89PNG\r\n\x1a\n")})
        assert upload.content == page
    assert server.bodies[0] == {"model": "m", "stream": True, "logprobs": True, "top_logprobs": 5}
    assert b"\x89PNG" in server.requests[2].content and ID_HEADER not in server.requests[2].headers
    assert tap.last is None and tap.states == {}

    failing = serving(lib, page, ctype="text/html", status=500)
    with pytest.raises(openai.InternalServerError):
        sdk(lib, Tap().transport(failing.transport())).chat.completions.create(model="m", messages=MESSAGES)


def test_requests_the_tap_does_not_read_are_sent_as_they_were(lib: Any) -> None:
    server = serving(lib, b'{"error": {"message": "bad request"}}', ctype="application/json", status=400)
    tap = Tap()
    bodies = [b'{"model": "m", "stream": tru', b'["not", "an", "object"]']
    with lib.Client(transport=tap.transport(server.transport())) as http:
        for body in bodies:
            http.post("http://x/v1/chat/completions", content=body, headers={"content-type": "application/json"})
        http.post("http://x/v1/embeddings", json={"model": "m", "input": "hi"})
        answer = http.post("http://x/v1/chat/completions",
                           json={"model": "m", "stream": True, "logprobs": True, "top_logprobs": 2})
    assert [r.content for r in server.requests[:2]] == bodies
    assert server.bodies[2] == {"model": "m", "input": "hi"}
    assert all(r.headers.get("accept-encoding") != "identity" for r in server.requests[:3])
    assert answer.status_code == 400 and answer.json() == {"error": {"message": "bad request"}}
    assert len(server.requests) == 4  # a 400 to a request the tap did not change is the caller's own
    assert tap.last is None and tap.states == {}


def test_whole_answers_never_raise_and_record_what_is_missing(lib: Any) -> None:
    answer = whole_answer(CHAT)
    del answer["choices"][0]["logprobs"]  # a server that ignores the request for logprobs
    server = serving(lib, json.dumps(answer).encode(), ctype="application/json")
    tap = Tap(on_missing_logprobs="raise")
    got = sdk(lib, tap.transport(server.transport())).chat.completions.create(model="m", messages=MESSAGES)
    assert got.to_dict() == answer
    assert tap.last.error is not None and tap.last.error.startswith("the answer carried no logprobs")
    page = serving(lib, b'{"object": "list", "data": []}', ctype="application/json")
    with lib.Client(transport=tap.transport(page.transport())) as http:
        assert http.post("http://x/v1/chat/completions", json={"model": "m"}).json() == {"object": "list", "data": []}
    assert "not a response livepplx can read" in tap.last.error


def test_tap_stop_by_key(lib: Any) -> None:
    body = counting_chat()
    tap = Tap()
    stream = sdk(lib, tap.transport(Server(lib, lambda r: (200, "text/event-stream", body, {})).transport())) \
        .chat.completions.create(model="m", messages=MESSAGES, stream=True, extra_headers={ID_HEADER: "mine"})
    chunks = [next(stream), next(stream)]
    assert tap.stop("other") is None and tap.stop("mine", reason="enough") is tap.states["mine"]
    chunks += list(stream)
    assert len(chunks) == 3 and chunks[-1].choices[0].finish_reason == "length" and body.closed
    assert tap.states["mine"].stopped is not None and tap.states["mine"].stopped.reason == "enough"


def test_an_error_inside_the_tap_never_breaks_the_request(lib: Any, monkeypatch: pytest.MonkeyPatch,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    calls = 0
    handle = StreamState.handle

    def flaky(self: StreamState, chunk: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 5:
            raise RuntimeError("a bug")
        return handle(self, chunk)

    monkeypatch.setattr(StreamState, "handle", flaky)
    request = {"model": "m", "messages": MESSAGES, "stream": True, "logprobs": True, "top_logprobs": 3}
    plain = list(sdk(lib, serving(lib, CHAT.read_bytes()).transport()).chat.completions.create(**request))
    tap = Tap(on_end=lambda state, request: 1 / 0)
    with caplog.at_level(logging.WARNING, logger="livepplx.tap"):
        for _ in range(2):
            calls = 0
            tapped = list(sdk(lib, tap.transport(serving(lib, CHAT.read_bytes()).transport()))
                          .chat.completions.create(**request))
            assert dicts(tapped) == dicts(plain)
            assert tap.last.error.startswith("the tap failed and let the rest of the answer pass unread: RuntimeError")
            assert tap.last.tokens == 3  # what was read before is kept
    assert tap.failures == 2
    bugs = [r for r in caplog.records if "a bug" in r.getMessage()]
    assert len(bugs) == 1  # logged once
    assert sum("on_end raised ZeroDivisionError" in r.getMessage() for r in caplog.records) == 1


def test_missing_logprobs_are_recorded_by_default_and_raised_when_asked(lib: Any) -> None:
    data = without_logprobs(CHAT.read_bytes(), "chat")  # a server that ignores the logprobs asked for
    request = {"model": "m", "messages": MESSAGES, "stream": True}
    tap = Tap()
    chunks = list(sdk(lib, tap.transport(serving(lib, data).transport())).chat.completions.create(**request))
    assert len(chunks) == 33 and "came without logprobs" in tap.last.error
    tap = Tap(on_missing_logprobs="raise")
    with pytest.raises(NoLogprobsError):
        list(sdk(lib, tap.transport(serving(lib, data).transport())).chat.completions.create(**request))
    tap = Tap(on_missing_logprobs="ignore")
    list(sdk(lib, tap.transport(serving(lib, data).transport())).chat.completions.create(**request))
    assert tap.last.error is None


def test_a_stream_the_sdk_closes_at_done_is_still_judged(lib: Any) -> None:
    """The sync SDK stops reading at [DONE] and closes: the tap still judges the whole stream
    (two chunks of text without logprobs are fewer than missing_after, so only the end tells)."""
    chunk = {"id": "c", "object": "chat.completion.chunk", "created": 0, "model": "m"}
    data = sse({**chunk, "choices": [{"index": 0, "delta": {"content": "Hi"}, "finish_reason": None}]},
               {**chunk, "choices": [{"index": 0, "delta": {"content": "!"}, "finish_reason": "stop"}]})
    tap = Tap()
    chunks = list(sdk(lib, tap.transport(serving(lib, data).transport())).chat.completions.create(
        model="m", messages=MESSAGES, stream=True))
    assert len(chunks) == 2 and tap.last.complete
    assert tap.last.error is not None and "2 chunks of generated text came without logprobs" in tap.last.error


def test_a_failing_callback_is_recorded_or_raised_when_asked(lib: Any) -> None:
    trigger = Trigger(min_tokens(3), call=lambda event: 1 / 0, name="boom")
    request = {"model": "m", "messages": MESSAGES, "stream": True}
    tap = Tap(triggers=[trigger])
    client = sdk(lib, tap.transport(serving(lib, CHAT.read_bytes()).transport()))
    chunks = list(client.chat.completions.create(**request))
    assert len(chunks) == 33 and "trigger 'boom' raised ZeroDivisionError" in tap.last.error
    tap = Tap(triggers=[trigger], callback_errors="raise")
    with pytest.raises(CallbackError):
        list(sdk(lib, tap.transport(serving(lib, CHAT.read_bytes()).transport())).chat.completions.create(**request))


def test_gzip_is_decoded_for_reading_and_the_client_gets_the_text(lib: Any) -> None:
    data = CHAT.read_bytes()
    packed = gzip.compress(data)
    pieces = [packed[i:i + 100] for i in range(0, len(packed), 100)]
    server = Server(lib, lambda r: (200, "text/event-stream", pieces, {"content-encoding": "gzip"}))
    tap = Tap(ask_logprobs=False)
    with lib.Client(transport=tap.transport(server.transport())) as http:
        with http.stream("POST", "http://x/v1/chat/completions", json={"stream": True}) as r:
            assert b"".join(r.iter_bytes()) == data and "content-encoding" not in r.headers
    assert summary(tap.last) == summary(replay(data))


# -- statistics per answer ----------------------------------------------------------------


def test_states_by_the_callers_id_or_the_answers_and_bounded(lib: Any) -> None:
    tap = Tap(keep=2)
    server = serving(lib, CHAT.read_bytes())
    client = sdk(lib, tap.transport(server.transport()))
    for step in ("step-1", "step-2", "step-3"):
        list(client.chat.completions.create(model="m", messages=MESSAGES, stream=True,
                                            extra_headers={"X-Livepplx-Id": step}))
    assert list(tap.states) == ["step-2", "step-3"] and tap.states["step-3"] is tap.last
    assert all(ID_HEADER not in r.headers for r in server.requests)  # it never reaches the server
    unnamed = serving(lib, b"data: {\"choices\": [{\"index\": 0, \"delta\": {}, \"finish_reason\": \"stop\"}]}\n\n")
    with lib.Client(transport=tap.transport(unnamed.transport())) as http:
        http.post("http://x/v1/chat/completions", json={"stream": True}).read()
    assert list(tap.states)[-1] == "request-1"


def test_options_are_checked(lib: Any) -> None:
    with pytest.raises(ValueError, match="top_logprobs"):
        Tap(top_logprobs=21)
    with pytest.raises(ValueError, match="keep"):
        Tap(keep=0)
    with pytest.raises(TypeError, match="unknown monitor option"):
        Tap(stop_abve=3)
    with pytest.raises(TypeError, match="give the options"):
        MonitorTransport(tap=Tap(), stop_above=3)


# -- the real server --------------------------------------------------------------------


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from servers import start

    yield from start("llama-server", tmp_path_factory.mktemp("tap-upstream"))


@pytest.mark.real_server
def test_real_server_the_taps_ppl_equals_the_non_streamed_answers(upstream: Any) -> None:
    import httpx2

    common: dict[str, Any] = {"model": "gemma", "messages": [{"role": "user", "content": "Name three fruits."}],
                              "max_tokens": 40, "temperature": 0, "seed": 1}
    plain = openai.OpenAI(base_url=upstream.base_url, api_key="sk-no-key")
    answer = plain.chat.completions.create(**common, logprobs=True, top_logprobs=5)
    values = [entry.logprob for entry in answer.choices[0].logprobs.content]
    reference = math.exp(-math.fsum(values) / len(values))
    tap = Tap()
    client = openai.OpenAI(base_url=upstream.base_url, api_key="sk-no-key",
                           http_client=httpx2.Client(transport=tap.transport()))
    chunks = list(client.chat.completions.create(**common, stream=True))  # the caller asks no logprobs
    assert tap.last.error is None and tap.last.complete and tap.last.tokens == len(values) == 40
    assert math.isclose(tap.last.ppl, reference, rel_tol=1e-6)
    assert all(c.choices[0].logprobs is None for c in chunks if c.choices)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == answer.choices[0].message.content
    whole = client.chat.completions.create(**common)
    assert whole.choices[0].logprobs is None and math.isclose(tap.last.ppl, reference, rel_tol=1e-6)


@pytest.mark.real_server
def test_real_server_a_stop_through_the_tap_stops_the_server(upstream: Any) -> None:
    """One slot (-np 1): had the server kept generating, its slot would stay busy and the next
    request would wait behind the rest of a 1,500-token answer. The time that rest would take is
    the rate measured before the stop (the shared machine's speed varies too much to generate it)."""
    import httpx2

    long = {"model": "gemma", "messages": [{"role": "user", "content": "Count from 1 to 5000."}],
            "max_tokens": 1500, "temperature": 0, "extra_body": {"ignore_eos": True}}
    tap = Tap(triggers=[Trigger(min_tokens(10), stop=True)])
    client = openai.OpenAI(base_url=upstream.base_url, api_key="sk-no-key",
                           http_client=httpx2.Client(transport=tap.transport()))
    times, chunks = [], []
    for chunk in client.chat.completions.create(**long, stream=True):
        times.append(time.monotonic())
        chunks.append(chunk)
    assert chunks[-1].choices[0].finish_reason == "length" and tap.last.stopped.at_token == 10
    rate = 8 / (times[-2] - times[2])  # tokens 2..10: the first chunk is the role, the last the end
    rest_seconds = 1490 / rate
    slots = upstream.base_url.removesuffix("/v1") + "/slots"
    t = time.monotonic()
    while httpx2.get(slots).json()[0]["is_processing"]:
        assert time.monotonic() - t < rest_seconds / 4, "the server is still generating"
        time.sleep(0.05)
    idle_seconds = time.monotonic() - t
    plain = openai.OpenAI(base_url=upstream.base_url, api_key="sk-no-key")
    t = time.monotonic()
    follow = plain.chat.completions.create(model="gemma", messages=MESSAGES, max_tokens=4, temperature=0)
    follow_seconds = time.monotonic() - t
    assert follow.choices[0].message.content is not None
    print(f"\ntap: {rate:.1f} tokens/s, so the 1,490 tokens after the stop would take ~{rest_seconds:.0f} s; the slot "
          f"was idle {idle_seconds:.2f} s after the stop, the next request took {follow_seconds:.2f} s "
          f"(ratio {follow_seconds / rest_seconds:.3f})")
    assert follow_seconds < rest_seconds / 2  # queued, it would take at least rest_seconds
