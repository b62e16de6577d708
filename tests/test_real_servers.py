"""End to end against real llama.cpp servers on 127.0.0.1 (Gemma 3 270M).

    pytest -m real_server

They start the servers themselves (tests/servers.py) and skip, saying why, when the
server packages are not installed; `.ci/run` installs them.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import openai
import pytest

import livepplx
from livepplx import NoLogprobsError, Trigger, min_tokens
from servers import Server, start

pytestmark = pytest.mark.real_server

KINDS = ["llama-cpp-python", "llama-server"]
MESSAGES = [{"role": "user", "content": "Name three fruits."}]
PROMPT = "The three largest cities in Japan are"
# llama-cpp-python makes 2-3 tokens/s with logprobs: keep its answers short.
SHORT = {"llama-cpp-python": 10, "llama-server": 40}


@pytest.fixture(scope="session", params=KINDS)
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    yield from start(request.param, tmp_path_factory.mktemp(request.param))


@pytest.fixture(scope="session")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    yield from start("llama-server", tmp_path_factory.mktemp("upstream"))


@pytest.fixture(scope="session")
def lcp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    yield from start("llama-cpp-python", tmp_path_factory.mktemp("lcp"))


def client(server: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url, api_key="sk-no-key", timeout=600)


def ppl_of_answer(answer: Any) -> float:
    """PPL of a non-streamed answer, straight from the server's logprobs (not through livepplx):
    chat's ``logprobs.content``, or a completion's ``token_logprobs`` (llama-cpp-python) or
    chat-shaped ``content`` (upstream llama-server)."""
    logprobs = answer.model_dump()["choices"][0]["logprobs"]
    values = logprobs.get("token_logprobs") or [entry["logprob"] for entry in logprobs["content"]]
    assert values, answer
    return math.exp(-math.fsum(values) / len(values))


@pytest.mark.parametrize("endpoint", ["chat", "completions"])
def test_live_ppl_equals_the_non_streamed_answers(server: Server, endpoint: str) -> None:
    c = client(server)
    n = SHORT[server.kind]
    common: dict[str, Any] = {"model": "gemma", "max_tokens": n, "temperature": 0, "seed": 1}
    if endpoint == "chat":
        common["messages"] = MESSAGES
        answer = c.chat.completions.create(**common, logprobs=True, top_logprobs=5)
    else:
        common["prompt"] = PROMPT
        answer = c.completions.create(**common, logprobs=5)
    with livepplx.stream(c, endpoint=endpoint, **common) as s:
        chunks = sum(1 for _ in s)
    assert s.error is None and s.tokens == n and chunks >= n and s.state.complete
    reference = ppl_of_answer(answer)
    assert math.isclose(s.ppl, reference, rel_tol=1e-6)
    scored = livepplx.score(answer)  # the whole answer, read by livepplx
    assert scored.tokens == n and math.isclose(scored.ppl, reference, rel_tol=1e-12)


def _stopped_then_follow_up(server: Server, extra_body: dict[str, Any]) -> tuple[float, float, int]:
    """Stop a 1,000-token generation at token 10; return (tokens/s before the stop,
    seconds the next request took, tokens read)."""
    c = client(server)
    times: list[float] = []
    with livepplx.stream(c, model="gemma", messages=[{"role": "user", "content": "Count from 1 to 2000."}],
                         max_tokens=1000, temperature=0, extra_body=extra_body,
                         triggers=[Trigger(min_tokens(10), stop=True, call=lambda e: None)]) as s:
        for _ in s:
            times.append(time.monotonic())
    assert s.stopped is not None and s.stopped.at_token == 10
    rate = (len(times) - 1) / (times[-1] - times[0])
    t = time.monotonic()
    follow = c.chat.completions.create(model="gemma", messages=[{"role": "user", "content": "Hi"}], max_tokens=4,
                                       temperature=0)
    assert follow.choices[0].message.content is not None
    return rate, time.monotonic() - t, s.tokens


def test_early_stop_stops_upstream_llama_server(upstream: Server) -> None:
    """One slot (-np 1): had the server kept generating, the next request would wait for it."""
    c = client(upstream)
    t = time.monotonic()
    full = c.chat.completions.create(model="gemma", messages=[{"role": "user", "content": "Count from 1 to 2000."}],
                                     max_tokens=1000, temperature=0, logprobs=True, top_logprobs=5,
                                     extra_body={"ignore_eos": True})
    full_seconds = time.monotonic() - t
    assert full.usage is not None and full.usage.completion_tokens == 1000
    _, follow_seconds, _ = _stopped_then_follow_up(upstream, {"ignore_eos": True})
    ratio = follow_seconds / full_seconds
    print(f"\nllama-server: full 1,000 tokens {full_seconds:.2f} s; after a stop at token 10 the next "
          f"request took {follow_seconds:.3f} s (ratio {ratio:.3f})")
    assert ratio < 0.1


def test_early_stop_stops_llama_cpp_python_server(lcp: Server) -> None:
    """At 2-3 tokens/s with logprobs a full 1,000-token answer takes minutes: its time is
    taken from the rate measured before the stop."""
    # Gemma's end tokens (<eos> 1, <end_of_turn> 106) banned, so the answer would run 1,000 tokens.
    rate, follow_seconds, _ = _stopped_then_follow_up(lcp, {"logit_bias": {"1": -100, "106": -100}})
    full_seconds = 1000 / rate
    ratio = follow_seconds / full_seconds
    print(f"\nllama-cpp-python: {rate:.2f} tokens/s, so ~{full_seconds:.0f} s for 1,000 tokens; after a stop "
          f"at token 10 the next request took {follow_seconds:.3f} s (ratio {ratio:.4f})")
    assert ratio < 0.05


def test_a_request_without_top_logprobs_gets_the_clear_error(lcp: Server) -> None:
    c = client(lcp)
    stream = c.chat.completions.create(model="gemma", messages=MESSAGES, max_tokens=12, temperature=0,
                                       stream=True, logprobs=True)  # no top_logprobs: llama-cpp-python sends none
    with pytest.raises(NoLogprobsError, match="top_logprobs"):
        with livepplx.monitor(stream) as m:
            for _ in m:
                pass
    assert m.tokens == 0 and m.summary()["ppl"] is None


def test_cli_chat_json_against_the_server(server: Server, tmp_path: Path) -> None:
    record = tmp_path / "chat.sse"
    n = SHORT[server.kind]
    result = subprocess.run(
        [sys.executable, "-m", "livepplx.cli", "chat", "Name three fruits.", "--base-url", server.base_url,
         "--model", "gemma", "--max-tokens", str(n), "--temperature", "0", "--json", "--record", str(record)],
        capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["format"] == "openai-chat" and summary["tokens"] == n and summary["ppl"] > 1.0
    assert summary["error"] is None and summary["choices"][0]["topk_positions"] == n
    replayed = subprocess.run([sys.executable, "-m", "livepplx.cli", "replay", str(record), "--json"],
                              capture_output=True, text=True, timeout=60)
    assert json.loads(replayed.stdout) == summary


def test_cli_chat_local_runs_the_embedded_model(tmp_path: Path) -> None:
    pytest.importorskip("llama_cpp", reason="pip install -e '.[local]' for the embedded model")
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "LIVEPPLX_CACHE": str(tmp_path / "cache")}
    result = subprocess.run(
        [sys.executable, "-m", "livepplx.cli", "chat", "What is the capital of Peru?", "--local",
         "--max-tokens", "8", "--json"], capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["tokens"] == 8 and summary["ppl"] > 1.0 and summary["choices"][0]["topk_positions"] == 8
    assert (tmp_path / "cache" / "gemma-3-270m-q4_k_m.gguf").stat().st_size > 200e6  # assembled once, here
    assert result.stderr == ""  # llama.cpp's notes are kept off the terminal
    stopped = subprocess.run(
        [sys.executable, "-m", "livepplx.cli", "chat", "Who discovered penicillin?", "--local",
         "--max-tokens", "200", "--json", "--stop-above", "2", "--min-tokens", "8"],
        capture_output=True, text=True, timeout=600, env=env)
    summary = json.loads(stopped.stdout)
    assert summary["stopped"] is not None and summary["tokens"] == summary["stopped"]["at_token"] < 200
