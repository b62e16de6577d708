"""DeepConf voting against a real HTTP server on 127.0.0.1 that streams scripted confidences.

Every token's DeepConf confidence is scripted: its two listed alternatives' logprobs average
to ``-c``, so the token's confidence is exactly ``c``. The server counts what it wrote, so a
pruned trace shows as a request whose client left after a few events, not after all of them.
"""

from __future__ import annotations

import _thread
import asyncio
import json
import math
import threading
import time
from typing import Any, Callable, Iterable

import numpy as np
import openai
import pytest

from livepplx import NoLogprobsError
from livepplx.decide.deepconf import (
    AsyncDeepConfVoter,
    DeepConfPlan,
    DeepConfRun,
    DeepConfVoter,
    Trace,
    boxed,
    last_line,
    last_number,
    weighted_vote,
)
from livepplx.core.errors import CallbackError
from sse_server import PacedSSEServer

#: one trace's script: a confidence per token, its words, and the answer it ends with
Script = tuple[list[float], str]


def token_chunk(word: str, confidence: float | None, index: int = 0) -> dict[str, Any]:
    choice: dict[str, Any] = {"index": index, "delta": {"content": word}, "finish_reason": None}
    if confidence is not None:
        top = [{"token": word, "logprob": -0.01, "bytes": None},
               {"token": "alt", "logprob": -(2 * confidence - 0.01), "bytes": None}]
        choice["logprobs"] = {"content": [{"token": word, "logprob": -0.01, "bytes": None, "top_logprobs": top}]}
    return {"id": "c", "object": "chat.completion.chunk", "created": 0, "model": "m", "choices": [choice]}


def data(obj: Any) -> bytes:
    return f"data: {json.dumps(obj)}\n\n".encode()


def trace_events(confidences: list[float | None], answer: str, index: int = 0) -> list[bytes]:
    """Filler words (no digits) at the scripted confidences, the last word being the answer."""
    words = [" so"] * (len(confidences) - 1) + [f" {answer}"]
    return [data(token_chunk(w, c, index)) for w, c in zip(words, confidences)]


def end_events(indexes: Iterable[int] = (0,)) -> list[bytes]:
    ends = [data({"id": "c", "object": "chat.completion.chunk", "created": 0, "model": "m",
                  "choices": [{"index": i, "delta": {}, "finish_reason": "stop"}]}) for i in indexes]
    return ends + [b"data: [DONE]\n\n"]


def scripted(scripts: Callable[[int], tuple[list[float | None], str]]) -> Callable[[int, Any], list[bytes]]:
    """The server's answer to request ``number``: its script, then the end."""
    def events(number: int, body: Any) -> list[bytes]:
        confidences, answer = scripts(number)
        return trace_events(confidences, answer) + end_events()
    return events


def steady(c: float, n: int = 10) -> list[float | None]:
    return [c] * n


def falling(high: float, low: float, keep: int, n: int = 200) -> list[float | None]:
    """Confident for ``keep`` tokens, then lost: a trace the online rule should stop."""
    return [high] * keep + [low] * (n - keep)


def client_of(server: PacedSSEServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url, api_key="sk-test", max_retries=0, timeout=10)


def aclient_of(server: PacedSSEServer) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=server.base_url, api_key="sk-test", max_retries=0, timeout=10)


WARMUP = [2.0, 3.0, 4.0, 5.0]  # the warm-up traces' (constant) confidences


def warmup_then(online: Callable[[int], tuple[list[float | None], str]]) -> Callable[[int], tuple[list[float | None], str]]:
    """Requests 0-3 are the warm-up (the run holds the others back until they finish)."""
    def script(number: int) -> tuple[list[float | None], str]:
        if number < len(WARMUP):
            return steady(WARMUP[number]), "7"
        return online(number - len(WARMUP))
    return script


# -- the threshold, pruning, the vote ---------------------------------------------------------


@pytest.mark.parametrize("eta, expected", [(10, float(np.percentile(WARMUP, 90))), ("high", float(np.percentile(WARMUP, 10)))])
def test_the_threshold_is_the_paper_percentile_of_the_warmups_lowest_group_confidence(eta: Any, expected: float) -> None:
    with PacedSSEServer(scripted(warmup_then(lambda i: (steady(5.0), "7")))) as server:
        result = DeepConfVoter(client_of(server), "m", warmup=4, traces=2, eta=eta, group_window=4)("q")
    assert result.threshold is not None and math.isclose(result.threshold, expected)  # 4.7 low, 2.3 high
    assert [t.phase for t in result.traces] == ["warmup"] * 4 + ["online"] * 2
    warm = result.traces[:4]
    assert sorted(t.confidence for t in warm) == pytest.approx(WARMUP)  # type: ignore[arg-type]
    assert not any(t.stopped or t.pruned for t in warm) and all(t.tokens == 10 for t in warm)
    # Warm-up traces below s do not vote (they would have been stopped), as in deepconf-online.py.
    assert [t.voted for t in warm] == [t.confidence >= expected for t in warm]  # type: ignore[operator]


def test_a_trace_whose_group_confidence_drops_is_closed_at_once() -> None:
    # Online traces: confident (5.0) for 6 tokens, then 0.5 for 194 more. Window 4, DeepConf-high:
    # s = 2.3; the window mean (3 x 5 + 0.5) / 4 = 3.875, then (2 x 5 + 2 x 0.5) / 4 = 2.75, then
    # (5 + 3 x 0.5) / 4 = 1.625 < s at token 9.
    with PacedSSEServer(scripted(warmup_then(lambda i: (falling(5.0, 0.5, 6), "9"))), interval=0.005) as server:
        result = DeepConfVoter(client_of(server), "m", warmup=4, traces=2, eta=90, group_window=4,
                               concurrency=2)("q")
        served = [server.wait(i) for i in range(6)]
    online = result.traces[4:]
    assert all(t.pruned and t.stopped and t.pruned_at == 9 and t.tokens == 9 and not t.voted for t in online)
    assert all(t.excluded == "pruned at token 9" and t.answer is None for t in online)
    for s in served[4:]:  # the server saw the client go: soon after the stop (9 tokens), not after 200
        assert s.client_left and s.written < 60, s.written
    assert all(s.written == 10 + 2 for s in served[:4])  # the warm-up ran in full (10 tokens, end, [DONE])
    assert result.count("pruned") == 2 and result.tokens == 4 * 10 + 2 * 9
    # Against all in full: the two pruned traces are estimated at the mean finished length (10).
    assert result.tokens_full == 4 * 10 + 2 * 10 and result.tokens_saved == 2
    assert result.answer == "7" and "2 pruned" in result.reason


def test_the_vote_is_weighted_by_confidence_not_counted() -> None:
    # DeepConf-high (s = 2.3): three traces say 8 at confidence 2.5, two say 6 at 5.0 (plus the
    # warm-up's 7s at 3, 4 and 5, which vote: 12). Weights: 7 -> 12, 6 -> 10, 8 -> 7.5.
    answers = {0: (steady(2.5), "8"), 1: (steady(2.5), "8"), 2: (steady(2.5), "8"),
               3: (steady(5.0), "6"), 4: (steady(5.0), "6")}
    with PacedSSEServer(scripted(warmup_then(lambda i: answers[i]))) as server:
        result = DeepConfVoter(client_of(server), "m", warmup=4, traces=5, eta="high", group_window=4,
                               concurrency=1)("q")
    assert result.weights == pytest.approx({"7": 12.0, "8": 7.5, "6": 10.0})
    assert result.answer == "7" and result.count("voted") == 3 + 5
    # Only the top 40% by confidence (of 8 voters: 4) -> 6 (5.0 + 5.0) beats 7 (5.0 + 4.0).
    with PacedSSEServer(scripted(warmup_then(lambda i: answers[i]))) as server:
        top = DeepConfVoter(client_of(server), "m", warmup=4, traces=5, eta="high", group_window=4,
                            concurrency=1, vote_top=40)("q")
    assert top.answer == "6" and top.weights == pytest.approx({"7": 9.0, "6": 10.0})


def test_the_consensus_stop_launches_no_more_traces() -> None:
    # DeepConf-low (s = 4.7): only the warm-up's 5.0 votes, for 7; every online trace says 7 at 5.0.
    with PacedSSEServer(scripted(warmup_then(lambda i: (steady(5.0), "7")))) as server:
        result = DeepConfVoter(client_of(server), "m", warmup=4, traces=8, eta="low", group_window=4,
                               consensus=0.95)("q")
        assert len(server.served) == 4  # the warm-up alone agreed: nothing else was sent
    assert result.answer == "7" and result.consensus == 1.0 and result.launched == 4 and result.planned == 12
    assert "consensus" in result.reason and "8 traces not launched" in result.reason
    assert result.tokens_full == 12 * 10 and result.tokens_saved == 8 * 10
    # Split answers never reach tau: every trace runs.
    with PacedSSEServer(scripted(lambda i: (steady(5.0), str(i % 2)))) as server:
        split = DeepConfVoter(client_of(server), "m", warmup=4, traces=4, eta="low", group_window=4,
                              consensus=0.95, concurrency=1)("q")
    assert split.launched == 8 and split.consensus is None


def test_async_prunes_votes_and_stops_at_consensus_alike() -> None:
    online = {0: (falling(5.0, 0.5, 6), "9"), 1: (steady(5.0), "6"), 2: (steady(5.0), "6")}

    async def vote(**options: Any) -> Any:
        with PacedSSEServer(scripted(warmup_then(lambda i: online[i])), interval=0.005) as server:
            result = await AsyncDeepConfVoter(aclient_of(server), "m", warmup=4, traces=3, eta="high",
                                              group_window=4, concurrency=1, **options)("q")
            return result, [server.wait(i) for i in range(len(server.served))]

    result, served = asyncio.run(vote())
    pruned = result.traces[4]
    assert pruned.pruned and pruned.stopped and pruned.tokens == 9 and served[4].client_left and served[4].written < 60
    assert result.answer == "7" and result.weights == pytest.approx({"7": 12.0, "6": 10.0})
    traces_seen: list[Trace] = []

    async def on_trace(trace: Trace) -> None:  # async callbacks are awaited
        traces_seen.append(trace)

    result, served = asyncio.run(vote(consensus=0.5, on_trace=on_trace))
    assert result.launched == 4 and len(served) == 4 and result.answer == "7" and len(traces_seen) == 4


# -- bad input ------------------------------------------------------------------------------------


def test_all_pruned_or_unextractable_is_a_result_not_an_exception() -> None:
    def script(number: int) -> tuple[list[float | None], str]:
        if number < 4:
            return steady(WARMUP[number]), "none"  # no number in it
        return falling(5.0, 0.5, 6, n=40), "9"
    with PacedSSEServer(scripted(script)) as server:
        result = DeepConfVoter(client_of(server), "m", warmup=4, traces=3, eta="high", group_window=4)("q")
    assert result.answer is None and result.weights == {}
    assert result.count("unextractable") == 4 and result.count("pruned") == 3
    assert result.reason == "no trace could vote: 7 traces, 3 pruned, 4 unextractable"
    payload = json.loads(json.dumps(result.as_dict()))
    assert payload["answer"] is None and payload["unextractable"] == 4 and len(payload["traces"]) == 7


def test_an_extractor_that_raises_or_returns_junk_is_a_counted_skip() -> None:
    calls = iter(range(100))

    def picky(text: str) -> Any:
        i = next(calls)
        if i == 0:
            raise ValueError("cannot read it")
        return {"no": "string"} if i == 1 else 7

    with PacedSSEServer(scripted(lambda i: (steady(3.0), "7"))) as server:
        result = DeepConfVoter(client_of(server), "m", warmup=3, traces=0, group_window=4, answer=picky,
                               concurrency=1)("q")
    assert [t.answer for t in result.traces] == [None, None, "7"]
    assert result.traces[0].excluded == "no answer extracted: the extractor raised ValueError: cannot read it"
    assert result.traces[1].excluded == "no answer extracted: the extractor returned dict, not a string"
    assert result.answer == "7" and result.count("unextractable") == 2


def test_a_server_without_logprobs_fails_at_once_and_closes_the_others() -> None:
    with PacedSSEServer(scripted(lambda i: ([None] * 1000, "7")), interval=0.005) as server:
        started = time.monotonic()
        with pytest.raises(NoLogprobsError):
            DeepConfVoter(client_of(server), "m", warmup=4, traces=4, group_window=4, concurrency=3)("q")
        assert time.monotonic() - started < 2.5  # not 1000 tokens x 5 ms
        served = [server.wait(i) for i in range(len(server.served))]
    assert len(served) == 3 and all(s.client_left and s.written < 500 for s in served)


def test_a_callback_that_raises_is_named_and_closes_every_stream() -> None:
    def boom(trace: Trace) -> None:
        raise RuntimeError("my bug")

    def script(number: int) -> tuple[list[float | None], str]:
        return (steady(3.0, 2), "7") if number == 0 else (steady(3.0, 400), "7")

    with PacedSSEServer(scripted(script), interval=0.005) as server:
        with pytest.raises(CallbackError, match="on_trace|boom"):
            DeepConfVoter(client_of(server), "m", warmup=3, traces=0, group_window=4, on_trace=boom)("q")
        served = [server.wait(i) for i in range(3)]
    assert all(s.client_left and s.written < 100 for s in served[1:])


def test_ctrl_c_closes_every_running_trace() -> None:
    with PacedSSEServer(scripted(lambda i: (steady(3.0, 400), "7")), interval=0.005) as server:
        threading.Timer(0.4, _thread.interrupt_main).start()
        with pytest.raises(KeyboardInterrupt):
            DeepConfVoter(client_of(server), "m", warmup=3, traces=3, group_window=4, concurrency=3)("q")
        interrupted = time.monotonic()
        served = [server.wait(i) for i in range(len(server.served))]
    assert len(served) == 3  # the online traces were never launched
    for s in served:  # each stopped writing right after the interrupt: 400 tokens would be 2 s
        assert s.client_left and s.ended is not None and s.ended - interrupted < 0.5
        assert server.written_after(served.index(s), interrupted + 0.3) == 0


def test_cancelling_the_async_vote_closes_every_running_trace() -> None:
    async def main(server: PacedSSEServer) -> float:
        task = asyncio.ensure_future(AsyncDeepConfVoter(aclient_of(server), "m", warmup=3, traces=3,
                                                        group_window=4, concurrency=3)("q"))
        await asyncio.sleep(0.4)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return time.monotonic()

    with PacedSSEServer(scripted(lambda i: (steady(3.0, 400), "7")), interval=0.005) as server:
        cancelled = asyncio.run(main(server))
        served = [server.wait(i) for i in range(len(server.served))]
    assert len(served) == 3
    for s in served:  # closed before the cancellation reached the caller
        assert s.client_left and s.ended is not None and s.ended - cancelled < 0.5


# -- n > 1 ----------------------------------------------------------------------------------------


def test_n_choices_are_judged_together_one_close_ends_them_all() -> None:
    """Request 0 (warm-up, n=2): two steady choices. Then each online request carries two
    choices; a dropped choice stops voting but the response stays open while its sibling is
    fine; once every choice has dropped or finished, the response is closed."""
    def events(number: int, body: Any) -> list[bytes]:
        assert body["n"] == 2
        if number == 0:
            a, b = steady(4.0, 10), steady(5.0, 10)
            ans = ("7", "7")
        elif number == 1:  # choice 1 drops; choice 0 is fine and finishes at 30
            a, b = steady(6.0, 30), falling(5.0, 0.5, 6, n=30)
            ans = ("6", "9")
        else:  # both drop: the response is closed
            a, b = falling(5.0, 0.5, 6), falling(5.0, 0.5, 6)
            ans = ("9", "9")
        first, second = trace_events(a, ans[0], 0), trace_events(b, ans[1], 1)
        interleaved = [e for pair in zip(first, second) for e in pair]
        return interleaved + end_events((0, 1))

    with PacedSSEServer(events, interval=0.003) as server:
        result = DeepConfVoter(client_of(server), "m", warmup=2, traces=4, n=2, eta="low", group_window=4,
                               concurrency=1)("q")
        served = [server.wait(i) for i in range(3)]
    assert result.threshold == pytest.approx(4.9)
    t = {tr.index: tr for tr in result.traces}
    assert t[2].voted and t[2].answer == "6" and not t[2].stopped
    # s = 4.9: (3 x 5 + 0.5) / 4 is below it at token 7. Choice 1 ran on to its 30th token while
    # choice 0 finished; once choice 0's end came the response was closed (choice 1's end unread).
    assert t[3].pruned and t[3].pruned_at == 7 and t[3].tokens == 30 and not t[3].voted
    assert served[1].written >= 60
    assert t[4].pruned and t[5].pruned and t[4].stopped and t[5].stopped
    assert served[2].client_left and served[2].written < 120  # of 400 tokens
    assert result.tokens_after_prune == 30 - 7 + (t[4].tokens - 7) + (t[5].tokens - 7)
    assert result.answer == "6"


# -- the pieces -----------------------------------------------------------------------------------


def test_extractors() -> None:
    assert last_number("Step 1: 12 + 30 = 42.\nThe answer is 42.") == "42"
    assert last_number("-3.50 degrees") == "-3.5" and last_number("1,000,000!") == "1000000"
    assert boxed(r"\boxed{a{b}c} then \boxed{x}") == "x" and boxed(r"\boxed{}") is None
    assert last_line("Lima\n") == "Lima" and last_line("") is None
    assert weighted_vote([], []) == (None, {})
    assert weighted_vote(["a", "b"], [1.0, 1.0])[0] == "a"  # a tie goes to the first given


@pytest.mark.parametrize("options, message", [
    ({"warmup": 0}, "warmup=0 needs a threshold"),
    ({"eta": 100}, "eta must be a percentage"),
    ({"eta": "medium"}, "eta must be a percentage"),
    ({"consensus": 1.5}, "consensus must be"),
    ({"vote_top": 0}, "vote_top must be"),
    ({"answer": "words"}, "answer must be a function of the text or one of auto, number, boxed, line"),
    ({"concurrency": 0}, "concurrency must be a whole number from 1"),
    ({"threshold": math.nan}, "threshold must be a finite number"),
    ({"n": True}, "n must be a whole number"),
    ({"params": {"n": 4, "logprobs": False}}, r"params may not set logprobs, n: the plan does \(top_logprobs=, n=\)"),
])
def test_bad_options_are_refused_when_the_plan_is_made(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        DeepConfPlan("m", **options)


def test_a_run_hands_out_the_warmup_first_and_holds_the_rest() -> None:
    run = DeepConfRun(DeepConfPlan("m", warmup=3, traces=4, n=2, group_window=4), "q")
    first, second = run.next_request(), run.next_request()
    assert first is not None and second is not None and run.next_request() is None  # the barrier
    assert [len(first.slots), len(second.slots)] == [2, 1] and first.kwargs["n"] == 2 and "n" not in second.kwargs
    assert first.kwargs["messages"] == [{"role": "user", "content": "q"}] and first.kwargs["top_logprobs"] == 20
    assert [r.status for r in run.rows()] == ["running"] * 3
    with pytest.raises(TypeError, match="takes the prompt as a string"):
        DeepConfPlan("m", endpoint="completions").start([{"role": "user", "content": "q"}])


def test_a_server_that_ignores_n_shows_as_failed_traces_not_empty_answers() -> None:
    with PacedSSEServer(scripted(lambda i: (steady(3.0), "7"))) as server:  # one choice, whatever n says
        result = DeepConfVoter(client_of(server), "m", warmup=2, traces=0, n=2, group_window=4)("q")
    assert [t.answer for t in result.traces] == ["7", None] and result.count("failed") == 1
    assert result.traces[1].excluded == "failed: the server sent no choice 1 (does it take n > 1?)"


def test_the_measurement_script_runs_its_methods_on_one_question(tmp_path: Any) -> None:
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "examples" / "deepconf_vote.py"
    spec = importlib.util.spec_from_file_location("deepconf_vote", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    with PacedSSEServer(scripted(lambda i: (steady(3.0 + i % 3), "7" if i % 4 else "8"))) as server:
        measured = module.run(client_of(server), [{"question": "q", "answer": "7"}], 2, 2, model="m", concurrency=1,
                              group_window=4, max_tokens=16, temperature=0.8, top_logprobs=5)
        body = server.served[0].body
    assert body["prompt"].endswith("Q: q\nA:") and body["stop"] == module.STOP and body["logprobs"] == 5
    (row,) = measured["rows"]
    assert len(row["full"]["traces"]) == 4 and row["full"]["majority"] == "7" and row["full"]["single"] == "8"
    assert [line["method"] for line in measured["summary"]][2] == "majority vote over K=4"
    assert all(len(row[name]["traces"]) == 4 for name in ("deepconf_low", "deepconf_high"))
