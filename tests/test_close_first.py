"""Close first, then act: at the socket of a real local server, a stop closes the stream
before any callback or escalation runs (issue: 1 s callbacks let the server write ~460 more events)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import openai
import pytest

from livepplx import CallbackError, Listener, Trigger, amonitor, min_tokens, monitor, ppl_above
from livepplx.decide.car import AsyncCarRouter, CarRouter
from sse_server import PacedSSEServer, chat_event, completion_event

SLOW = 1.0  # seconds a callback takes: 500 events' worth at one every 2 ms
#: What the server may write after the stop was recorded: the event in flight, and the one
#: write that finds the connection closed only when the peer answers it (a loaded machine
#: may take a few milliseconds between recording the stop and closing).
IN_FLIGHT = 5


class StopClock(Listener):
    """When the state recorded the stop (listeners are told inline)."""

    at: float = 0.0

    def on_stop(self, state: Any, stop: Any) -> None:
        self.at = time.monotonic()


def climbing(number: int, body: Any) -> list[bytes]:
    """Confident for 10 tokens, then lost: the running PPL passes 10 at token 14."""
    return [chat_event(f"t{i}", -0.1 if i < 10 else -8.0) for i in range(2000)]


def client(server: PacedSSEServer) -> openai.OpenAI:
    return openai.OpenAI(api_key="sk-test", base_url=server.base_url, max_retries=0, http_client=httpx.Client())


def aclient(server: PacedSSEServer) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(api_key="sk-test", base_url=server.base_url, max_retries=0,
                              http_client=httpx.AsyncClient())


def create(c: Any) -> Any:
    return c.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}], stream=True,
                                     logprobs=True, top_logprobs=1)


@pytest.mark.parametrize("kind", ["call", "escalate"])
def test_sync_stop_closes_before_a_slow_callback_runs(kind: str) -> None:
    ran: list[float] = []

    def slow(_: Any) -> None:
        time.sleep(SLOW)
        ran.append(time.monotonic())

    trigger = Trigger(ppl_above(10) & min_tokens(8), stop=True, **{kind: slow})  # type: ignore[arg-type]
    clock = StopClock()
    with PacedSSEServer(climbing) as server:
        with monitor(create(client(server)), triggers=[trigger], listeners=[clock]) as m:
            for _ in m:
                pass
        served = server.wait(0)
        after = server.written_after(0, clock.at)
    assert ran and m.stopped is not None and m.stopped.at_token == 14
    assert served.client_left and after <= IN_FLIGHT, after
    assert served.ended is not None and served.ended < ran[0] - SLOW / 2  # the server stopped before the callback ended


def test_async_stop_closes_then_awaits_an_async_callback_and_escalation() -> None:
    order: list[str] = []

    async def slow_call(event: Any) -> None:
        await asyncio.sleep(SLOW)
        order.append(f"call {event.at_token}")

    async def escalate(escalation: Any) -> None:
        order.append(f"escalate {escalation.event.at_token}")

    clock = StopClock()

    async def main() -> Any:
        c = aclient(server)
        stream = await create(c)
        async with amonitor(stream, listeners=[clock],
                            triggers=[Trigger(ppl_above(10) & min_tokens(8), call=slow_call, escalate=escalate)]) as m:
            async for _ in m:
                pass
        return m

    with PacedSSEServer(climbing) as server:
        m = asyncio.run(main())
        served = server.wait(0)
        after = server.written_after(0, clock.at)
    assert order == ["call 14", "escalate 14"]  # awaited (no "coroutine was never awaited"), calls before escalations
    assert m.stopped is not None and served.client_left and after <= IN_FLIGHT, after


def test_an_async_callback_under_the_sync_wrapper_is_a_named_error_after_the_close() -> None:
    async def call(event: Any) -> None:
        pass

    clock = StopClock()
    with PacedSSEServer(climbing) as server:
        with pytest.raises(CallbackError, match="is async: use amonitor"):
            with monitor(create(client(server)), listeners=[clock],
                         triggers=[Trigger(ppl_above(10) & min_tokens(8), call=call, stop=True)]) as m:
                list(m)
        after = server.written_after(0, clock.at)
    assert m.tokens == 14 and after <= IN_FLIGHT


def test_a_non_stopping_callback_runs_inline_and_the_stream_goes_on() -> None:
    seen: list[int] = []
    events = [chat_event(f"t{i}", -0.1 if i % 10 else -5.0) for i in range(30)] + [
        chat_event("", -0.1, finish="stop"), b"data: [DONE]\n\n"]
    with PacedSSEServer(lambda n, b: events, interval=0.0) as server:
        with monitor(create(client(server)), triggers=[Trigger(lambda s: s.last_logprob < -1, call=lambda e: seen.append(e.at_token))]) as m:
            list(m)
    assert seen == [1, 11, 21] and m.stopped is None and m.state.complete and m.error is None


def _car_server(number: int, body: Any) -> list[bytes]:
    if number == 0:  # the short answer: unsure from its first tokens on
        return [completion_event(f" w{i}", -6.0) for i in range(2000)]
    return [completion_event(" The answer is 4.", -0.2, finish="stop"), b"data: [DONE]\n\n"]


def test_car_early_escalation_closes_the_short_answer_before_the_long_request() -> None:
    clock = StopClock()
    with PacedSSEServer(_car_server) as server:
        router = CarRouter(client(server), "m", endpoint="completions", threshold=20.0, warmup=4,
                           short_params={"listeners": [clock]})
        result = router("What is 2 + 2?")
        short, long = server.wait(0), server.wait(1)
        after_stop = server.written_after(0, clock.at)
        after_long = server.written_after(0, long.started)
    assert result.decision == "long" and result.short.tokens == 4 and result.short_cut
    # closed at the stop, before the long request began: the server noticed at its next write
    assert short.client_left and after_stop <= IN_FLIGHT and after_long <= 2, (after_stop, after_long)


def test_async_car_early_escalation_closes_first_too() -> None:
    clock = StopClock()
    with PacedSSEServer(_car_server) as server:
        router = AsyncCarRouter(aclient(server), "m", endpoint="completions", threshold=20.0, warmup=4,
                                short_params={"listeners": [clock]})
        result = asyncio.run(router("What is 2 + 2?"))
        short, long = server.wait(0), server.wait(1)
        after_stop = server.written_after(0, clock.at)
        after_long = server.written_after(0, long.started)
    assert result.decision == "long" and result.short_cut
    assert short.client_left and after_stop <= IN_FLIGHT and after_long <= 2, (after_stop, after_long)
