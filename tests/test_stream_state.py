"""What a stream's state reports when the stream is not what it should be: truncated,
unreadable, without logprobs, a whole response, too many choices, stalled, plus the
per-token hook and the typed options."""

from __future__ import annotations

import asyncio
import json
import math
import time
from typing import Any, Iterator

import httpx
import openai
import pytest

from conftest import replay, sse, token_event
from livepplx import (
    MonitorOptions,
    NoLogprobsError,
    NotAStreamError,
    StreamFormatError,
    StreamState,
    TooManyChoicesError,
    Trigger,
    amonitor,
    monitor,
    prob_below,
)
from sse_server import PacedSSEServer, chat_event


def chunk(lp: float | None, index: int = 0, finish: str | None = None) -> dict:
    return {"object": "chat.completion.chunk", "choices": [
        {"index": index, "delta": {"content": "x"}, "finish_reason": finish,
         "logprobs": {"content": [{"token": "x", "logprob": lp, "top_logprobs": []}]}}]}


# -- truncated or complete ---------------------------------------------------------------------------


def test_a_stream_cut_without_its_end_is_truncated_with_the_statistics_kept() -> None:
    cut = replay(sse(chunk(-1.0), chunk(-2.0), done=False))
    assert cut.truncated and cut.error is not None and cut.error.startswith("truncated:")
    assert cut.tokens == 2 and math.isclose(cut.ppl, math.exp(1.5)) and not cut.complete
    assert cut.summary()["complete"] is False and "truncated" in cut.summary()["error"]


@pytest.mark.parametrize("ending", ["done", "finish_reason", "both"])
def test_done_or_a_finish_reason_makes_a_stream_complete(ending: str) -> None:
    events = [chunk(-1.0), chunk(-2.0, finish="stop" if ending != "done" else None)]
    state = replay(sse(*events, done=ending != "finish_reason"))
    assert state.complete and not state.truncated and state.error is None


def test_n_choices_are_complete_only_when_every_choice_ended() -> None:
    one_ended = replay(sse(chunk(-1.0, 0), chunk(-1.0, 1), chunk(-1.0, 0, finish="stop"), done=False))
    assert one_ended.truncated and one_ended.ended == {0}
    both = replay(sse(chunk(-1.0, 0), chunk(-1.0, 1), chunk(-1.0, 0, finish="stop"), chunk(-1.0, 1, finish="length"),
                      done=False))
    assert both.complete and both.error is None


def test_sdk_objects_are_judged_by_finish_reason() -> None:
    from openai.types.chat import ChatCompletionChunk

    objects = [ChatCompletionChunk.model_validate(dict(chunk(-0.5), id="c", created=0, model="m"))]
    with monitor(iter(objects)) as m:
        list(m)
    assert m.state.truncated  # no finish_reason ever came
    objects.append(ChatCompletionChunk.model_validate(dict(chunk(-0.5, finish="stop"), id="c", created=0, model="m")))
    with monitor(iter(objects)) as m:
        list(m)
    assert m.state.complete and m.error is None and m.tokens == 2


def test_a_stopped_stream_is_not_called_truncated() -> None:
    with monitor(iter([sse(chunk(-5.0), done=False)] * 20), stop_above=2.0, min_tokens=2) as m:
        list(m)
    assert m.stopped is not None and not m.state.truncated and m.error is None


def test_an_empty_stream_says_so() -> None:
    state = replay(b"")
    assert state.truncated and state.error is not None and "empty" in state.error


# -- unreadable, no logprobs -------------------------------------------------------------------------


def test_a_stream_in_no_known_format_is_not_a_zero_token_success() -> None:
    state = replay(sse({"weird": 1, "shape": [2]}, {"weird": 3}))
    assert state.error is not None and state.error.startswith("not a stream livepplx can read")
    assert "'weird'" in state.error and state.unrecognized == 2
    with pytest.raises(StreamFormatError, match="not a stream livepplx can read"):
        with monitor(iter([{"weird": 1}, {"weird": 2}])) as m:
            list(m)
    assert m.state.chunks == 2


def test_a_stream_whose_every_token_was_skipped_has_no_logprobs() -> None:
    events = sse(chunk(None), chunk(float("nan") if False else None, finish="stop"))
    with pytest.raises(NoLogprobsError, match="every one of the 2 tokens came without a usable logprob"):
        replay(events)
    state = replay(events, on_missing_logprobs="ignore")
    assert state.choice(0).skipped == 2 and state.tokens == 0


def test_monitor_of_a_whole_response_points_to_score() -> None:
    from openai.types.chat import ChatCompletion

    whole = {"id": "c", "object": "chat.completion", "created": 0, "model": "m", "choices": [
        {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "Hi"},
         "logprobs": {"content": [{"token": "Hi", "logprob": -0.1, "bytes": None, "top_logprobs": []}]}}]}
    for response in (whole, ChatCompletion.model_validate(whole)):
        with pytest.raises(NotAStreamError, match=r"livepplx\.score\(response\)"):
            monitor(response)  # type: ignore[arg-type]


def test_a_whole_capture_given_as_bytes_is_one_chunk_not_its_bytes() -> None:
    data = sse(chunk(-1.0), chunk(-1.0, finish="stop"))
    with monitor(data) as m:  # type: ignore[arg-type]
        assert list(m) == [data]
    assert m.tokens == 2 and m.state.complete


# -- bounds -----------------------------------------------------------------------------------------


def test_choices_past_max_choices_are_a_named_error_with_the_statistics_kept() -> None:
    events = [chunk(-1.0, index=i) for i in range(40)]
    with pytest.raises(TooManyChoicesError, match="more than 32 distinct choices"):
        with monitor(iter(events), max_choices=32) as m:
            list(m)
    assert len(m.choices) == 32 and m.error is not None and "max_choices" in m.error


def test_events_say_when_old_ones_were_dropped() -> None:
    state = StreamState(triggers=[Trigger(prob_below(0.5))])
    for i in range(260):
        state.handle(chunk(-2.0 if i % 2 else -0.1))
    assert state.fired == {"prob_below(0.5)": 130} and len(state.events) == 100 and state.events_dropped == 30
    assert state.events[0].at_token == 62  # the 31st crossing: the oldest 30 went first


# -- idle timeout -----------------------------------------------------------------------------------


def _stalling() -> Iterator[bytes]:
    yield token_event("a", -0.5)
    time.sleep(30)  # a server that stops sending
    yield token_event("b", -0.5)


def test_sync_idle_timeout_stops_a_stalled_source_with_a_reason() -> None:
    started = time.monotonic()
    with monitor(_stalling(), idle_timeout=0.3) as m:
        got = list(m)
    assert time.monotonic() - started < 5
    assert len(got) == 1 and m.tokens == 1
    assert m.stopped is not None and m.stopped.reason == "idle timeout" and "no chunk came for 0.3 s" in (m.error or "")


def test_idle_timeout_against_a_real_stalled_server_closes_the_connection() -> None:
    events = [chat_event("a", -0.5), chat_event("b", -0.5)]
    with PacedSSEServer(lambda n, b: events, interval=20.0) as server:  # one event, then 20 s of silence
        c = openai.OpenAI(api_key="k", base_url=server.base_url, max_retries=0, http_client=httpx.Client())
        started = time.monotonic()
        stream = c.chat.completions.create(model="m", messages=[], stream=True, logprobs=True, top_logprobs=1)
        with monitor(stream, idle_timeout=0.5) as m:
            list(m)
        elapsed = time.monotonic() - started
    assert elapsed < 5 and m.tokens == 1 and m.stopped is not None and m.stopped.reason == "idle timeout"


def test_async_idle_timeout() -> None:
    async def stalling():  # type: ignore[no-untyped-def]
        yield token_event("a", -0.5)
        await asyncio.sleep(30)
        yield token_event("b", -0.5)

    async def main() -> Any:
        async with amonitor(stalling(), idle_timeout=0.2) as m:
            return m, [c async for c in m]

    started = time.monotonic()
    m, got = asyncio.run(main())
    assert time.monotonic() - started < 5 and len(got) == 1 and m.stopped.reason == "idle timeout"


def test_idle_timeout_does_not_change_what_a_healthy_stream_reports() -> None:
    events = [token_event(f"t{i}", -0.1 * (i % 5)) for i in range(50)] + [b"data: [DONE]\n\n"]
    with monitor(iter(events), idle_timeout=5.0) as timed:
        assert len(list(timed)) == 51
    with monitor(iter(events)) as plain:
        list(plain)
    assert timed.summary() == plain.summary() and timed.stopped is None


@pytest.mark.parametrize("bad", [0, -1, float("nan"), float("inf"), "5", True])
def test_a_bad_idle_timeout_is_a_value_error(bad: object) -> None:
    with pytest.raises(ValueError, match="idle_timeout"):
        monitor(iter([]), idle_timeout=bad)  # type: ignore[arg-type]


# -- hooks and options -------------------------------------------------------------------------------


def test_on_token_sees_every_counted_token_before_the_triggers() -> None:
    seen: list[tuple[str, int]] = []
    state = StreamState()
    state.on_token(lambda token, stats: seen.append((token.text, stats.tokens)))
    for lp in (-0.1, None, -0.2):
        state.handle(chunk(lp))
    assert seen == [("x", 1), ("x", 2)]  # the skipped token is not counted, so not seen


def test_trigger_events_are_json_ready() -> None:
    state = StreamState(triggers=[Trigger(prob_below(0.5), name="low")])
    state.handle(chunk(-800.0))  # an infinite perplexity in the snapshot
    (event,) = state.events
    data = json.loads(json.dumps(event.as_dict(), allow_nan=False))
    assert data["trigger"] == "low" and data["stats"]["ppl"] == "inf" and data["at_token"] == 1


def test_options_are_typed_checked_once_and_shared() -> None:
    options = MonitorOptions(window=8, stop_above=20.0)
    assert StreamState(options).choice().window == 8
    assert StreamState(options, window=4).choice().window == 4  # keywords lay over the options
    with pytest.raises(TypeError, match="unknown monitor option.*stop_abov"):
        StreamState(stop_abov=20)  # type: ignore[call-arg]
    with pytest.raises(ValueError, match="on_missing_logprobs"):
        MonitorOptions(on_missing_logprobs="sometimes")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="Trigger"):
        MonitorOptions(triggers=[prob_below(0.5)])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="max_choices"):
        MonitorOptions(max_choices=0)


def test_stream_keeps_the_request_apart_from_the_monitor_options() -> None:
    import livepplx
    from conftest import openai_clients, sse_response

    bodies: list[dict] = []
    data = sse(chunk(-0.5), chunk(-0.5, finish="stop"))

    def handler(request: httpx.Request) -> httpx.Response:
        bodies.append(json.loads(request.content))
        return sse_response(data)

    sync, _ = openai_clients(handler)
    request = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}
    with livepplx.stream(sync, request=request, options=MonitorOptions(stop_above=50.0)) as s:
        list(s)
    assert s.tokens == 2 and bodies[0]["max_tokens"] == 3 and "stop_above" not in bodies[0]
    assert s.state.request["model"] == "m" and s.state.triggers[0].name == "ppl above 50"
    with pytest.raises(TypeError, match="not both"):
        livepplx.stream(sync, request=request, temperature=0.0)


@pytest.mark.parametrize("value", ["soon", "nan", "-3", "inf", "Mon, 99 Foo 2026 99:99:99 GMT", ""])
def test_retry_after_that_is_neither_seconds_nor_a_date_is_no_hint(value: str) -> None:
    import tenacity

    from livepplx.client import wait_retry_after

    request = httpx.Request("POST", "http://x.invalid")
    error = openai.RateLimitError("slow", response=httpx.Response(429, headers={"retry-after": value}, request=request),
                                  body=None)
    state = tenacity.RetryCallState(None, None, (), {})
    state.set_exception((type(error), error, None))
    assert wait_retry_after(tenacity.wait_fixed(7))(state) == 7.0


def test_a_bad_event_mid_stream_is_skipped_counted_and_reported() -> None:
    data = sse(chunk(-1.0)).replace(b"data: [DONE]\n\n", b"") + b"data: {not json\n\n" + sse(chunk(-1.0, finish="stop"))
    state = replay(data)
    assert state.tokens == 2 and state.skipped_events == 1 and state.complete and state.error is None
    assert state.summary()["skipped_events"] == 1
    with pytest.raises(StreamFormatError, match="not JSON"):
        replay(b"data: {not json\n\n" + data)  # a stream that starts unreadable is not one livepplx can read


def test_a_top_level_json_array_is_a_sequence_of_chunks() -> None:
    whole = json.dumps([chunk(-1.0), chunk(-2.0, finish="stop")], indent=2).encode()  # pretty-printed, as saved
    state = replay(whole)
    assert state.tokens == 2 and state.complete and state.error is None and math.isclose(state.ppl, math.exp(1.5))


def test_keep_alive_comments_do_not_keep_a_stalled_stream_alive() -> None:
    def trickle() -> Iterator[bytes]:
        yield token_event("a", -0.5)
        for _ in range(200):  # 20 s of ": ping" and never an event
            time.sleep(0.1)
            yield b": ping\n\n"

    started = time.monotonic()
    with monitor(trickle(), idle_timeout=0.5) as m:
        list(m)
    assert time.monotonic() - started < 5 and m.tokens == 1 and m.stopped is not None
    assert m.stopped.reason == "idle timeout"

    async def atrickle():  # type: ignore[no-untyped-def]
        yield token_event("a", -0.5)
        for _ in range(200):
            await asyncio.sleep(0.1)
            yield b": ping\n\n"

    async def main() -> Any:
        async with amonitor(atrickle(), idle_timeout=0.5) as am:
            async for _ in am:
                pass
        return am

    started = time.monotonic()
    am = asyncio.run(main())
    assert time.monotonic() - started < 5 and am.stopped is not None and am.stopped.reason == "idle timeout"


def test_nothing_after_done_is_counted() -> None:
    data = sse(chunk(-1.0), chunk(-2.0, finish="stop")) + sse(chunk(-9.0), done=False)
    state = replay(data)
    assert state.tokens == 2 and math.isclose(state.ppl, math.exp(1.5)) and state.skipped_events == 1
    assert state.complete and state.error is None


def test_a_stream_whose_every_entry_is_malformed_is_unreadable_not_fine() -> None:
    bad = {"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": "Hi"}, "finish_reason": "stop",
           "logprobs": {"content": {"token": "Hi", "logprob": -0.5}}}]}  # content is an object, not a list
    with pytest.raises(StreamFormatError, match="malformed"):
        with monitor(iter([bad])) as m:
            list(m)
    assert m.state.unreadable and m.state.malformed == 1 and m.tokens == 0


def test_numpy_floats_are_numbers_as_llama_cpp_python_returns_them() -> None:
    import numpy as np

    from livepplx import score

    answer = {"object": "chat.completion", "choices": [{"index": 0, "finish_reason": "stop", "message": {"content": "Hi!"},
              "logprobs": {"content": [
                  {"token": "Hi", "logprob": np.float32(-0.5), "top_logprobs": [{"token": "Hi", "logprob": np.float32(-0.5)},
                                                                                {"token": "Yo", "logprob": np.float32(-1.5)}]},
                  {"token": "!", "logprob": np.float64(-1.5), "top_logprobs": []}]}}]}
    state = score(answer)
    assert state.tokens == 2 and math.isclose(state.ppl, math.exp(1.0), rel_tol=1e-6)
    json.loads(json.dumps(state.summary(), allow_nan=False))  # numpy values never reach the JSON


def test_a_chunk_that_is_a_huge_integer_is_described_not_a_value_error() -> None:
    state = StreamState()
    state.handle(10**5000)
    state.finish()
    assert state.unreadable and state.error is not None and "int of" in state.error


@pytest.mark.parametrize("watched", [False, True], ids=["batch", "per-token"])
@pytest.mark.parametrize("split", ["one read", "per event", "every 7 bytes", "decoded"])
def test_nothing_after_a_server_error_event_is_counted(watched: bool, split: str) -> None:
    # A server that sends tokens after its error event: the answer had failed there; the
    # later chunks are counted in after_error, never as tokens of the answer (it read "alate").
    events = [token_event("a", -1.0), sse({"error": {"message": "boom"}}, done=False),
              token_event("late", -2.0), token_event("x", -0.5), sse(done=True)]
    state = StreamState(stop_above=1e9) if watched else StreamState()
    data = b"".join(events)
    if split == "one read":
        state.handle(data)
    elif split == "per event":
        for event in events:
            state.handle(event)
    elif split == "every 7 bytes":
        for i in range(0, len(data), 7):
            state.handle(data[i:i + 7])
    else:
        for event in events[:-1]:
            state.handle(json.loads(event[len(b"data: "):]))
    state.finish()
    assert state.tokens == 1 and state.text() == "a" and state.ppl == pytest.approx(math.e)
    assert state.server_error == "boom" and state.error is not None and "boom" in state.error
    assert state.after_error == 2 and state.summary()["after_error"] == 2
