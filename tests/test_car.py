"""The CAR router over an OpenAI client whose HTTP is served SSE bytes (MockTransport)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import math
from typing import Any

import httpx
import pytest

from conftest import CountingBody, openai_clients, sse, sse_response
from livepplx.decide.calibrate import CarCalibration
from livepplx.decide.car import LONG_SYSTEM, SHORT_SYSTEM, AsyncCarRouter, CarPlan, CarRouter

CAL = CarCalibration(mu_correct=1.2, sigma_correct=0.2, mu_incorrect=4.0, sigma_incorrect=1.5,
                     prior_correct=0.6, prior_incorrect=0.4)


def chunk(text: str | None, logprob: float | None = None, finish: str | None = None,
          usage: int | None = None) -> dict[str, Any]:
    """A chat chunk as a server writes it: a token (with or without its logprob), and/or the
    finish_reason, or the usage chunk (no choices)."""
    if usage is not None:
        return {"id": "c", "object": "chat.completion.chunk", "created": 0, "model": "m", "choices": [],
                "usage": {"prompt_tokens": 9, "completion_tokens": usage, "total_tokens": 9 + usage}}
    choice: dict[str, Any] = {"index": 0, "delta": {"content": text} if text is not None else {},
                              "finish_reason": finish}
    if logprob is not None and text is not None:
        choice["logprobs"] = {"content": [{"token": text, "logprob": logprob, "bytes": None,
                                           "top_logprobs": [{"token": text, "logprob": logprob, "bytes": None}]}]}
    return {"id": "c", "object": "chat.completion.chunk", "created": 0, "model": "m", "choices": [choice]}


class FakeServer:
    """Short answers: confident for 'easy', lost for 'hard'. Long answers: 40 tokens of reasoning.

    It honours the request as a real server does: at most ``max_tokens`` tokens (then
    ``finish_reason: "length"``), logprobs only when asked, and the usage chunk (which counts
    one token more than it streams: the end-of-turn token) when ``stream_options`` asks for it.
    ``finish_with_last`` puts the finish_reason in the last token's chunk, as vLLM does, instead
    of a chunk of its own after it, as OpenAI and llama.cpp do.
    """

    def __init__(self, finish_with_last: bool = False) -> None:
        self.requests: list[dict] = []
        self.bodies: list[CountingBody] = []
        self.finish_with_last = finish_with_last

    def __call__(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        self.requests.append(body)
        if "prompt" in body:  # /v1/completions, for base models
            return self.completions(body)
        system, question = body["messages"][0]["content"], body["messages"][-1]["content"]
        if system == LONG_SYSTEM:
            words = [(f"step{i} ", -0.4) for i in range(40)]
        elif "easy" in question:
            words = [(w, -0.05) for w in ("Paris", ".")]
        elif "sure" in question:
            words = [(w, -0.001) for w in ("Lima", ".")]  # perplexity 1.001
        else:
            words = [(f"um{i} ", -2.5) for i in range(60)]
        limit = body.get("max_tokens") or len(words)
        finish = "stop" if len(words) <= limit else "length"
        words = words[:limit]
        with_logprobs = body.get("logprobs") is True
        chunks = [chunk(w, lp if with_logprobs else None) for w, lp in words]
        if self.finish_with_last:
            chunks[-1]["choices"][0]["finish_reason"] = finish
        else:
            chunks.append(chunk(None, finish=finish))
        if (body.get("stream_options") or {}).get("include_usage"):
            chunks.append(chunk(None, usage=len(words) + 1))
        counting = CountingBody([sse(c, done=False) for c in chunks] + [b"data: [DONE]\n\n"])
        self.bodies.append(counting)
        return sse_response(counting)


    def completions(self, body: dict[str, Any]) -> httpx.Response:
        prompt = body["prompt"]

        def event(text: str, lp: float) -> bytes:
            choice: dict[str, Any] = {"index": 0, "text": text}
            if body.get("logprobs"):
                choice["logprobs"] = {"tokens": [text], "token_logprobs": [lp], "top_logprobs": [{text: lp}]}
            return f"data: {json.dumps({'object': 'text_completion', 'choices': [choice]})}\n\n".encode()

        if "step by step" in prompt:
            events = [event(f" step{i}", -0.4) for i in range(20)]
        elif "easy" in prompt:
            events = [event(" Lima", -0.05)]
        else:
            events = [event(f" um{i}", -2.5) for i in range(30)]
        end = {"object": "text_completion", "choices": [{"index": 0, "text": "", "finish_reason": "stop"}]}
        counting = CountingBody(events + [sse(end, done=False), b"data: [DONE]\n\n"])
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
    assert result.answer.startswith("step0 step1") and result.long is not None
    # The long request asks for no logprobs: its 40 streamed tokens are counted by the usage chunk.
    assert result.long.tokens == 41 and result.long.tokens_from == "usage" and result.long.ppl is None
    assert result.tokens == 8 + 41 and "cut at token 8" in result.reason
    long_request = server.requests[1]
    assert long_request["model"] == "big" and long_request["max_tokens"] == 500
    assert long_request["messages"][0]["content"] == LONG_SYSTEM
    assert "logprobs" not in long_request and "top_logprobs" not in long_request
    assert long_request["stream_options"] == {"include_usage": True}


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


# -- short_cut: the stream closed before the server finished it -------------------------------------


def test_a_stop_on_the_last_token_with_the_end_read_is_not_a_cut() -> None:
    # The finish_reason comes in the last token's chunk: the rule is met on that token, the
    # server had finished, nothing was cut. The whole answer is judged by the final rule.
    server = FakeServer(finish_with_last=True)
    sync, _ = openai_clients(server)
    result = ask(CarRouter(sync, "m", threshold=1.02, warmup=2), "easy")  # ppl 1.05: over 1.02 at token 2
    assert result.short.stopped and not result.short_cut and result.short.tokens == 2
    assert result.decision == "long" and "perplexity 1.05 crossed threshold 1.02" in result.reason


def test_a_stop_on_the_last_allowed_token_is_not_a_cut() -> None:
    server = FakeServer()
    sync, _ = openai_clients(server)
    result = ask(CarRouter(sync, "m", calibration=CAL, warmup=8, short_max_tokens=8), "hard one")
    assert result.short.stopped and result.short.tokens == 8 and not result.short_cut
    assert result.decision == "long" and "cut" not in result.reason
    assert server.requests[0]["max_tokens"] == 8


def test_a_stop_before_the_end_is_a_cut_and_says_so() -> None:
    server = FakeServer(finish_with_last=True)
    sync, _ = openai_clients(server)
    result = ask(CarRouter(sync, "m", calibration=CAL, warmup=8), "hard one")
    assert result.short_cut and result.short.stopped and result.short.tokens == 8
    assert server.bodies[0].closed and server.bodies[0].read <= 9


# -- the long request without logprobs --------------------------------------------------------------


def test_the_long_request_asks_for_logprobs_only_when_told() -> None:
    server = FakeServer()
    sync, _ = openai_clients(server)
    result = ask(CarRouter(sync, "m", threshold=2.0, early=False, long_logprobs=True), "hard one")
    long_request = server.requests[1]
    assert long_request["logprobs"] is True and long_request["top_logprobs"] == 5
    assert result.long is not None and result.long.tokens == 40 and result.long.tokens_from == "logprobs"
    assert math.isclose(result.long.ppl, math.exp(0.4))


def test_without_a_usage_chunk_the_long_answer_is_counted_by_its_pieces_of_text() -> None:
    server = FakeServer()
    sync, _ = openai_clients(server)
    result = ask(CarRouter(sync, "m", threshold=2.0, early=False, long_params={"stream_options": None}), "hard one")
    assert "stream_options" not in server.requests[1] or server.requests[1]["stream_options"] is None
    assert result.long is not None and result.long.tokens == 40 and result.long.tokens_from == "text chunks"


def test_completions_long_request_without_logprobs() -> None:
    server = FakeServer()
    sync, _ = openai_clients(server)
    result = CarRouter(sync, "m", threshold=2.0, endpoint="completions")("hard one")
    assert "logprobs" not in server.requests[1] and server.requests[0]["logprobs"] == 5
    assert result.long is not None and result.long.text.startswith(" step0") and result.long.tokens == 20


# -- the early rule's own calibration; the one-sided rule ---------------------------------------------

#: Running perplexities after a few tokens are wider than final ones: a calibration of its own.
EARLY = CarCalibration(mu_correct=5.0, sigma_correct=5.0, mu_incorrect=40.0, sigma_incorrect=5.0,
                       prior_correct=0.6, prior_incorrect=0.4)


def test_the_early_rule_uses_the_early_calibration() -> None:
    server = FakeServer()
    sync, _ = openai_clients(server)
    # ppl 12.2 from the first token: escalates by CAL (final PPLs), not by EARLY (incorrect around 40).
    assert CAL.escalate(math.exp(2.5)) and not EARLY.escalate(math.exp(2.5))
    router = CarRouter(sync, "m", calibration=CAL, early_calibration=EARLY, warmup=4)
    result = ask(router, "hard one")
    assert not result.short_cut and not result.short.stopped and result.short.tokens == 60
    assert result.decision == "long" and "crossed CAR's Bayes rule" in result.reason
    lost = dataclasses.replace(EARLY, mu_incorrect=10.0, sigma_incorrect=3.0)
    assert lost.escalate(math.exp(2.5))
    result = ask(CarRouter(sync, "m", calibration=CAL, early_calibration=lost, warmup=4), "hard one")
    assert result.short_cut and result.short.tokens == 4
    assert "crossed CAR's Bayes rule on running perplexities" in result.reason
    assert router.plan.escalate_early(30.0) == EARLY.escalate(30.0)
    with pytest.raises(TypeError, match="early_calibration must be a CarCalibration"):
        CarPlan("m", calibration=CAL, early_calibration={"mu_correct": 1.0})  # type: ignore[arg-type]


def test_the_one_sided_rule_keeps_a_sure_answer_the_paper_rule_escalates() -> None:
    both = CarCalibration(mu_correct=1.5, sigma_correct=0.1, mu_incorrect=3.0, sigma_incorrect=1.5,
                          prior_correct=0.6, prior_incorrect=0.4)
    assert both.thresholds[0] > 1.001  # the wide incorrect class wins below the narrow correct one too
    server = FakeServer()
    sync, _ = openai_clients(server)
    paper = ask(CarRouter(sync, "m", calibration=both, early=False), "sure: capital of Peru?")
    assert paper.decision == "long" and math.isclose(paper.ppl, math.exp(0.001))
    one_sided = ask(CarRouter(sync, "m", calibration=dataclasses.replace(both, rule="upper"), early=False),
                    "sure: capital of Peru?")
    assert one_sided.decision == "short" and "within CAR's one-sided rule" in one_sided.reason


# -- on a real llama-server ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def llama_server(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from servers import start

    yield from start("llama-server", tmp_path_factory.mktemp("car-llama-server"))


@pytest.mark.real_server
def test_on_a_real_server_a_cut_is_a_cut_and_the_long_answer_is_counted_by_usage(llama_server: Any) -> None:
    import openai

    client = openai.OpenAI(base_url=llama_server.base_url, api_key="sk-no-key", timeout=120)
    question = "Name the eight planets of the solar system, in order from the Sun."
    options: dict[str, Any] = dict(endpoint="completions", short_prompt="Q: {question}\nA:",
                                   long_prompt="Q: {question}\nA: Let's think step by step.",
                                   long_max_tokens=40, short_params={"temperature": 0},
                                   long_params={"temperature": 0, "stop": ["\nQ:"]})

    def whole(prompt: str, max_tokens: int, **params: Any) -> Any:  # the reference: one non-streamed answer
        return client.completions.create(model="m", prompt=prompt, max_tokens=max_tokens, temperature=0, **params)

    short_whole = whole(f"Q: {question}\nA:", 64)
    assert short_whole.usage.completion_tokens > 4  # more to come after the warm-up: the cut is real
    result = CarRouter(client, "m", threshold=1.0, warmup=4, **options)(question)
    assert result.short.stopped and result.short_cut and result.short.tokens == 4 and result.decision == "long"
    assert short_whole.choices[0].text.startswith(result.short.text)
    long_whole = whole(f"Q: {question}\nA: Let's think step by step.", 40, stop=["\nQ:"])
    assert result.long is not None and result.long.tokens_from == "usage" and result.long.ppl is None
    assert result.long.tokens == long_whole.usage.completion_tokens and result.long.text == long_whole.choices[0].text
    # Stopped on its last allowed token: whole, not cut.
    capped = CarRouter(client, "m", threshold=1.0, warmup=4, short_max_tokens=4, **options)(question)
    assert capped.short.stopped and capped.short.tokens == 4 and not capped.short_cut


@pytest.mark.parametrize("bad", [{"threshold": "20"}, {"threshold": float("nan")}, {"threshold": 20.0, "warmup": 0}])
def test_a_plan_with_a_threshold_that_is_not_a_number_fails_when_made(bad: dict) -> None:
    from livepplx.decide.car import CarPlan

    with pytest.raises(ValueError, match="threshold|warmup"):
        CarPlan("m", **bad)
