"""monitor() and amonitor() over real SSE bytes served through httpx's MockTransport."""

from __future__ import annotations

import asyncio
import json
import math
from typing import Any

import httpx
import openai
import pytest

from conftest import CountingBody, openai_clients, ppl_of, replay, sse, sse_response, token_event
from livepplx import (
    CallbackError,
    NotAStreamError,
    StreamFormatError,
    NoLogprobsError,
    ServerStreamError,
    StreamErrorEvent,
    Trigger,
    amonitor,
    min_tokens,
    monitor,
    ppl_above,
)
from livepplx.recordings import recording_path

MESSAGES = [{"role": "user", "content": "hi"}]


def climbing_events(n: int = 1000) -> list[bytes]:
    """n one-token chunks: confident at first, then lost (PPL climbs past 10 at token 14)."""
    return [token_event(f"t{i}", -0.1 if i < 10 else -8.0) for i in range(n)] + [b"data: [DONE]\n\n"]


def create(client: Any, **extra: Any) -> Any:
    return client.chat.completions.create(model="m", messages=MESSAGES, stream=True, logprobs=True, top_logprobs=3, **extra)


# -- passing through ----------------------------------------------------------------------------------


def test_chunks_pass_through_unchanged_and_stats_match_the_recording() -> None:
    data = recording_path("llamacpp-python-chat").read_bytes()
    sync, _ = openai_clients(lambda request: sse_response(data))
    raw = [c.model_dump() for c in create(sync)]
    with monitor(create(sync)) as m:
        seen = [c.model_dump() for c in m]
    assert seen == raw
    assert m.summary() == replay(data).summary() | {"format": "openai-chat"}
    assert m.tokens == 50 and math.isclose(m.ppl, replay(data).ppl, rel_tol=1e-15)


def test_plain_iterables_of_dicts_lines_and_bytes_and_an_httpx_response() -> None:
    data = recording_path("llamacpp-server-native").read_bytes()
    expected = replay(data).summary()
    dicts = [json.loads(line[5:]) for line in data.decode().splitlines() if line.startswith("data:")]
    lines = data.decode().splitlines()
    for source in (dicts, lines, [data[i : i + 100] for i in range(0, len(data), 100)]):
        with monitor(iter(source)) as m:
            assert len(list(m)) == len(source)
        assert m.summary() == expected
    body = CountingBody([data])
    response = sse_response(body)
    with monitor(response) as m:
        list(m)
    assert m.summary() == expected and body.closed


# -- stopping really stops --------------------------------------------------------------------------


def test_sync_stop_closes_the_body_and_reads_no_more() -> None:
    body = CountingBody(climbing_events())
    sync, _ = openai_clients(lambda request: sse_response(body))
    with monitor(create(sync), stop_above=10.0) as m:
        received = sum(1 for _ in m)
    assert m.stopped is not None and m.stopped.reason == "ppl above 10"
    assert m.stopped.at_token == received == m.tokens
    assert body.closed
    assert body.read <= m.tokens + 1  # at most the event already in flight
    assert m.ppl > 10.0 and math.isclose(m.ppl, ppl_of([-0.1] * 10 + [-8.0] * (m.tokens - 10)))


def test_async_stop_closes_the_body_and_reads_no_more() -> None:
    body = CountingBody(climbing_events())
    _, client = openai_clients(lambda request: sse_response(body))

    async def main() -> Any:
        stream = await create(client)
        async with amonitor(stream, stop_above=10.0) as m:
            async for _ in m:
                pass
        return m

    m = asyncio.run(main())
    assert m.stopped is not None and body.closed and body.read <= m.tokens + 1


def test_break_inside_with_closes_the_body() -> None:
    body = CountingBody(climbing_events())
    sync, _ = openai_clients(lambda request: sse_response(body))
    with monitor(create(sync)) as m:
        for i, _ in enumerate(m):
            if i == 4:
                break
    assert body.closed and body.read <= 6 and m.stopped is None


def test_n_greater_than_one_stop_stops_every_choice() -> None:
    events = []
    for i in range(200):
        events.append(token_event("a", -0.1, index=0))
        events.append(token_event("b", -0.1 if i < 20 else -9.0, index=1))
    body = CountingBody(events)
    with monitor(iter(body), stop_above=5.0) as m:
        list(m)
    assert m.stopped is not None and m.stopped.choice == 1
    assert m.choice(0).ppl < 1.2 and m.choice(1).ppl > 5.0
    assert body.read < 60


# -- triggers and callbacks ---------------------------------------------------------------------------


def test_trigger_fires_once_per_crossing_and_rearms() -> None:
    fired: list[int] = []
    # The newest token's probability is the value: it dips below 0.5 twice, for 3 tokens each time.
    probs = [0.9, 0.9, 0.3, 0.2, 0.1, 0.9, 0.9, 0.4, 0.4, 0.4, 0.9]
    trigger = Trigger(lambda s: math.exp(s.last_logprob) < 0.5, call=lambda e: fired.append(e.at_token))
    with monitor(iter(token_event("x", math.log(p)) for p in probs), triggers=[trigger]) as m:
        list(m)
    assert fired == [3, 8]
    assert m.state.fired == {trigger.name: 2} and [e.at_token for e in m.events] == [3, 8]


def test_callback_event_carries_choice_stats_and_text() -> None:
    events: list[Any] = []
    trigger = Trigger(ppl_above(3) & min_tokens(2), call=events.append, name="unsure")
    with monitor(iter(token_event(w, lp) for w, lp in [("The", -0.1), (" cat", -2.0), (" sat", -3.0)]),
                 triggers=[trigger]) as m:
        list(m)
    (event,) = events
    assert (event.trigger, event.choice, event.at_token, event.text) == ("unsure", 0, 3, "The cat sat")
    assert math.isclose(event.stats["ppl"], math.exp(5.1 / 3)) and m.stopped is None


def test_a_callback_that_raises_reaches_the_caller_and_closes_the_stream() -> None:
    body = CountingBody(climbing_events())
    sync, _ = openai_clients(lambda request: sse_response(body))

    def boom(event: Any) -> None:
        raise RuntimeError("callback failed")

    with pytest.raises(CallbackError, match="raised RuntimeError: callback failed") as caught:
        with monitor(create(sync), triggers=[Trigger(ppl_above(5), call=boom)]) as m:
            list(m)
    assert isinstance(caught.value.__cause__, RuntimeError)
    assert body.closed and m.tokens > 0 and m.error is not None and "callback failed" in m.error


def test_escalate_stops_and_hands_over_the_request() -> None:
    body = CountingBody(climbing_events())
    sync, _ = openai_clients(lambda request: sse_response(body))
    got: list[Any] = []
    import livepplx

    with livepplx.stream(sync, model="m", messages=MESSAGES, triggers=[
            Trigger(ppl_above(4) & min_tokens(8), escalate=got.append)]) as s:
        list(s)
    (escalation,) = got
    assert s.stopped is not None and body.closed
    assert escalation.request["messages"] == MESSAGES and escalation.request["top_logprobs"] == 5
    assert escalation.event.at_token == s.tokens


# -- what goes wrong ---------------------------------------------------------------------------------


def test_endpoint_that_ignores_logprobs_raises_a_named_error_and_closes() -> None:
    chunk = {"id": "c", "object": "chat.completion.chunk", "created": 0, "model": "m",
             "choices": [{"index": 0, "delta": {"content": "word "}, "logprobs": None, "finish_reason": None}]}
    body = CountingBody([sse(chunk, done=False)] * 100)
    sync, _ = openai_clients(lambda request: sse_response(body))
    with pytest.raises(NoLogprobsError, match="top_logprobs"):
        with monitor(create(sync)) as m:
            list(m)
    assert body.closed and body.read <= 4
    with monitor(iter([sse(chunk, done=False)] * 5), on_missing_logprobs="ignore") as m:
        assert len(list(m)) == 5


def test_sdk_mid_stream_error_keeps_the_stats() -> None:
    events = [token_event("a", -1.0), token_event("b", -2.0), sse({"error": {"message": "GPU fell over"}}, done=False)]
    sync, _ = openai_clients(lambda request: sse_response(CountingBody(events)))
    with pytest.raises(ServerStreamError, match="GPU fell over") as caught:  # named, as for raw bytes
        with monitor(create(sync)) as m:
            list(m)
    assert type(caught.value.__cause__) is openai.APIError  # the SDK's own, kept as the cause
    assert m.tokens == 2 and m.error == "the server sent an error mid-stream: GPU fell over"
    assert math.isclose(m.ppl, math.exp(1.5))


def test_raw_mid_stream_error_raises_a_named_error_with_the_stats_kept() -> None:
    events = [token_event("a", -1.0), sse({"error": {"message": "overloaded"}}, done=False)]
    with pytest.raises(StreamErrorEvent, match="overloaded"):
        with monitor(iter(events)) as m:
            list(m)
    assert m.tokens == 1 and m.summary()["error"] == "overloaded"


# -- scale ------------------------------------------------------------------------------------------------


def test_a_thousand_async_streams_at_once() -> None:
    async def source(seed: int):  # type: ignore[no-untyped-def]
        for _ in range(20):
            await asyncio.sleep(0)
            yield {"choices": [{"index": 0, "delta": {"content": "x"},
                                "logprobs": {"content": [{"token": "x", "logprob": -0.01 * (seed % 7 + 1)}]}}]}

    async def one(seed: int) -> float:
        async with amonitor(source(seed)) as m:
            async for _ in m:
                pass
        return m.ppl

    async def main() -> list[float]:
        return await asyncio.gather(*(one(i) for i in range(1000)))

    ppls = asyncio.run(main())
    assert len(ppls) == 1000
    assert all(math.isclose(p, math.exp(0.01 * (i % 7 + 1))) for i, p in enumerate(ppls))


# -- opening the stream: the request and the retries ------------------------------------------------------


def test_stream_helper_asks_for_logprobs_on_every_endpoint() -> None:
    import livepplx

    bodies: list[dict] = []
    data = recording_path("llamacpp-python-chat").read_bytes()

    def handler(request: httpx.Request) -> httpx.Response:
        bodies.append(json.loads(request.content))
        return sse_response(data)

    sync, _ = openai_clients(handler)
    with livepplx.stream(sync, model="m", messages=MESSAGES) as s:
        list(s)
    with livepplx.stream(sync, endpoint="completions", model="m", prompt="x", top_logprobs=2) as s:
        list(s)
    with livepplx.stream(sync, endpoint="responses", model="m", input="x", on_missing_logprobs="ignore") as s:
        list(s)
    chat, completions, responses = bodies
    assert chat["stream"] and chat["logprobs"] is True and chat["top_logprobs"] == 5
    assert chat["stream_options"] == {"include_usage": True}
    assert completions["logprobs"] == 2 and completions["stream"]
    assert responses["top_logprobs"] == 5 and responses["include"] == ["message.output_text.logprobs"]


@pytest.mark.parametrize(
    "failure",
    [
        lambda: httpx.Response(429, json={"error": {"message": "slow down"}}, headers={"retry-after": "0"}),
        lambda: httpx.Response(503, json={"error": {"message": "busy"}}),
        "connect",
    ],
    ids=["429-retry-after", "503", "connection-error"],
)
def test_retries_before_the_first_token(failure: Any) -> None:
    import tenacity

    import livepplx

    calls: list[int] = []
    data = recording_path("llamacpp-server-chat").read_bytes()

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        if len(calls) == 1:
            if failure == "connect":
                raise httpx.ConnectError("refused", request=request)
            return failure()
        return sse_response(data)

    sync, asyn = openai_clients(handler)
    with livepplx.stream(sync, model="m", messages=MESSAGES, wait=tenacity.wait_none()) as s:
        assert sum(1 for _ in s) == 33  # 34 events, one of them [DONE]
    assert len(calls) == 2 and s.tokens == 30

    calls.clear()

    async def main() -> Any:
        s = await livepplx.astream(asyn, model="m", messages=MESSAGES, wait=tenacity.wait_none())
        async with s:
            return [c async for c in s]

    assert len(asyncio.run(main())) == 33 and len(calls) == 2


def test_a_connection_dropped_before_the_first_token_is_retried_but_never_after() -> None:
    import tenacity

    import livepplx

    calls: list[int] = []
    role = {"id": "c", "object": "chat.completion.chunk", "created": 0, "model": "m",
            "choices": [{"index": 0, "delta": {"role": "assistant"}, "logprobs": None, "finish_reason": None}]}

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        dropped = httpx.ReadError("connection reset")
        if len(calls) == 1:  # drops after the role chunk, before any token: retried
            return sse_response(CountingBody([sse(role, done=False)], then_fail=dropped))
        # drops after two tokens: the caller gets the error, no silent restart
        return sse_response(CountingBody([token_event("a", -0.5), token_event("b", -0.5)], then_fail=dropped))

    sync, _ = openai_clients(handler)
    s = livepplx.stream(sync, model="m", messages=MESSAGES, wait=tenacity.wait_none())
    assert len(calls) == 2
    with pytest.raises(openai.APIConnectionError):
        with s:
            list(s)
    assert len(calls) == 2 and s.tokens == 2 and s.error is not None


def test_an_error_event_before_the_first_token_is_not_retried() -> None:
    import tenacity

    import livepplx

    calls: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        return sse_response(CountingBody([sse({"error": {"message": "bad prompt"}}, done=False)]))

    sync, _ = openai_clients(handler)
    with pytest.raises(ServerStreamError, match="bad prompt"):
        livepplx.stream(sync, model="m", messages=MESSAGES, wait=tenacity.wait_none())
    assert len(calls) == 1


def test_retry_gives_up_after_its_attempts_with_the_servers_error() -> None:
    import tenacity

    import livepplx

    calls: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        return httpx.Response(500, json={"error": {"message": "down"}})

    sync, _ = openai_clients(handler)
    with pytest.raises(openai.InternalServerError):
        livepplx.stream(sync, model="m", messages=MESSAGES, attempts=3, wait=tenacity.wait_none())
    assert len(calls) == 3


@pytest.mark.slow
def test_memory_held_after_a_hundred_thousand_tokens_equals_that_after_a_thousand() -> None:
    """O(1) memory. (10^6 tokens take a minute under tracemalloc: tests/bench/bench_monitor.py does that.)"""
    from bench.bench_monitor import held_after

    small, big = held_after(1_000), held_after(100_000)
    assert abs(big - small) <= 256, (small, big)  # a few small objects' worth of noise, not growth


def test_retry_after_is_read_in_every_form_and_capped() -> None:
    import email.utils
    import time as _time

    import tenacity

    from livepplx.client import MAX_RETRY_AFTER, wait_retry_after

    def waited(headers: dict[str, str]) -> float:
        request = httpx.Request("POST", "http://x.invalid")
        error = openai.RateLimitError("slow down", response=httpx.Response(429, headers=headers, request=request),
                                      body=None)
        state = tenacity.RetryCallState(None, None, (), {})
        state.set_exception((type(error), error, None))
        return wait_retry_after(tenacity.wait_fixed(7))(state)

    assert waited({"retry-after": "3"}) == 3.0
    assert waited({"retry-after-ms": "250"}) == 0.25
    date = email.utils.formatdate(_time.time() + 20, usegmt=True)
    assert 15 < waited({"retry-after": date}) <= 20
    assert waited({"retry-after": "3600"}) == MAX_RETRY_AFTER
    assert waited({}) == 7.0  # no header: the fallback wait


@pytest.mark.parametrize("bad", [b"data: <html>\n\n", b"data: " + b"[" * 100_000 + b"\n\n", b"data: \xff\n\n",
                                 b'data: {"choices": [{"index": 0, "logprobs": {"content": [{"logprob": ' + b"1" * 5000 + b'}]}}]}\n\n'],
                         ids=["html", "deep", "bad-utf8", "5000-digits"])
def test_what_the_sdk_cannot_decode_mid_stream_is_a_named_error_with_the_stats_kept(bad: bytes) -> None:
    sync, _ = openai_clients(lambda request: sse_response(CountingBody([token_event("a", -1.0), bad])))
    with pytest.raises(StreamFormatError, match="not a stream livepplx can read: the client could not decode it"):
        with monitor(create(sync)) as m:
            list(m)
    assert m.tokens == 1 and m.error is not None


def test_amonitor_of_a_plain_list_says_to_use_monitor() -> None:
    with pytest.raises(NotAStreamError, match="use monitor"):
        amonitor([token_event("a", -1.0)])  # type: ignore[arg-type]
