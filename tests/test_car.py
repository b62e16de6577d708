"""The CAR router over an OpenAI client whose HTTP is served SSE bytes (MockTransport)."""

from __future__ import annotations

import asyncio
import json
import math
from typing import Any

import httpx
import pytest

from conftest import CountingBody, openai_clients, sse_response, token_event
from livepplx.calibrate import CarCalibration
from livepplx.car import LONG_SYSTEM, SHORT_SYSTEM, AsyncCarRouter, CarPlan, CarRouter

CAL = CarCalibration(mu_correct=1.2, sigma_correct=0.2, mu_incorrect=4.0, sigma_incorrect=1.5,
                     prior_correct=0.6, prior_incorrect=0.4)


class FakeServer:
    """Short answers: confident for 'easy', lost for 'hard'. Long answers: 40 tokens of reasoning."""

    def __init__(self) -> None:
        self.requests: list[dict] = []
        self.bodies: list[CountingBody] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        self.requests.append(body)
        if "prompt" in body:  # /v1/completions, for base models
            return self.completions(body["prompt"])
        system, question = body["messages"][0]["content"], body["messages"][-1]["content"]
        if system == LONG_SYSTEM:
            events = [token_event(f"step{i} ", -0.4) for i in range(40)]
        elif "easy" in question:
            events = [token_event(w, -0.05) for w in ("Paris", ".")]
        else:
            events = [token_event(f"um{i} ", -2.5) for i in range(60)]
        counting = CountingBody(events + [b"data: [DONE]\n\n"])
        self.bodies.append(counting)
        return sse_response(counting)


    def completions(self, prompt: str) -> httpx.Response:
        def event(text: str, lp: float) -> bytes:
            chunk = {"object": "text_completion", "choices": [{"index": 0, "text": text, "logprobs": {
                "tokens": [text], "token_logprobs": [lp], "top_logprobs": [{text: lp}]}}]}
            return f"data: {json.dumps(chunk)}\n\n".encode()

        if "step by step" in prompt:
            events = [event(f" step{i}", -0.4) for i in range(20)]
        elif "easy" in prompt:
            events = [event(" Lima", -0.05)]
        else:
            events = [event(f" um{i}", -2.5) for i in range(30)]
        counting = CountingBody(events + [b"data: [DONE]\n\n"])
        self.bodies.append(counting)
        return sse_response(counting)


def ask(router: Any, question: str) -> Any:
    return router([{"role": "user", "content": question}])


def test_a_confident_short_answer_is_kept() -> None:
    server = FakeServer()
    sync, _ = openai_clients(server)
    decisions: list[Any] = []
    result = ask(CarRouter(sync, "m", calibration=CAL, on_decision=decisions.append), "easy: capital of France?")
    assert result.decision == "short" and result.answer == "Paris." and result.long is None
    assert result.short.tokens == 2 and result.tokens == 2 and not result.short_cut
    assert math.isclose(result.ppl, math.exp(0.05)) and result.p_correct == CAL.p_correct(result.ppl) > 0.9
    assert "within CAR's Bayes rule" in result.reason and decisions == [result]
    (request,) = server.requests
    assert request["messages"][0] == {"role": "system", "content": SHORT_SYSTEM}
    assert request["logprobs"] is True and request["top_logprobs"] == 5 and request["max_tokens"] == 64


def test_an_unsure_short_answer_is_cut_early_and_escalated() -> None:
    server = FakeServer()
    sync, _ = openai_clients(server)
    result = ask(CarRouter(sync, "m", calibration=CAL, warmup=8, long_model="big", long_max_tokens=500), "hard one")
    assert result.decision == "long" and result.short_cut and result.short.tokens == 8
    assert server.bodies[0].closed and server.bodies[0].read <= 9  # of 60: the server was told to stop
    assert result.answer.startswith("step0 step1") and result.long is not None and result.long.tokens == 40
    assert result.tokens == 48 and "cut at token 8" in result.reason
    long_request = server.requests[1]
    assert long_request["model"] == "big" and long_request["max_tokens"] == 500
    assert long_request["messages"][0]["content"] == LONG_SYSTEM


def test_without_early_escalation_the_short_answer_finishes_first() -> None:
    server = FakeServer()
    sync, _ = openai_clients(server)
    result = ask(CarRouter(sync, "m", calibration=CAL, early=False), "hard one")
    assert result.decision == "long" and not result.short_cut and result.short.tokens == 60
    assert math.isclose(result.ppl, math.exp(2.5)) and result.p_correct < 0.01
    assert "perplexity 12.2 crossed" in result.reason


def test_a_plain_threshold_rule_and_the_async_router() -> None:
    server = FakeServer()
    _, client = openai_clients(server)
    router = AsyncCarRouter(client, "m", threshold=3.0, warmup=4)

    async def both() -> tuple[Any, Any]:
        return await ask(router, "easy"), await ask(router, "hard")

    easy, hard = asyncio.run(both())
    assert easy.decision == "short" and easy.p_correct is None
    assert hard.decision == "long" and hard.short.tokens == 4 and "threshold 3" in hard.reason


def test_plan_needs_exactly_one_rule() -> None:
    with pytest.raises(ValueError, match="one rule"):
        CarPlan("m")
    with pytest.raises(ValueError, match="one rule"):
        CarPlan("m", calibration=CAL, threshold=2.0)


def test_completions_mode_for_base_models() -> None:
    server = FakeServer()
    sync, _ = openai_clients(server)
    router = CarRouter(sync, "m", threshold=2.0, endpoint="completions", short_prompt="Q: {question}\nA:",
                       short_params={"stop": ["\n"]})
    easy, hard = router("easy: capital of Peru?"), router("hard one")
    assert easy.decision == "short" and easy.answer == " Lima"
    assert hard.decision == "long" and hard.short_cut and hard.answer.startswith(" step0")
    short_request, long_request = server.requests[1], server.requests[2]
    assert short_request["prompt"] == "Q: hard one\nA:" and short_request["logprobs"] == 5
    assert short_request["stop"] == ["\n"] and "step by step" in long_request["prompt"]
