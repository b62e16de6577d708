"""Each framework's example against upstream llama-server (Gemma 3 270M, temperature 0).

    pytest -m real_server tests/test_frameworks_real.py

* The live statistics equal those of the server's non-streamed answer to the same request,
  computed straight from its logprobs (relative 1e-6): each example runs as a command, and
  its last stdout line is read.
* ``--stop-above`` stops early and the server really stops: on ``-np 1`` (one slot) a request
  made right after the stop would wait behind the rest of a 1,500-token answer had the
  generation gone on; it must take less than a tenth of the time that rest would take (from
  the rate the server generates at). The example runs in this process, so its connection is
  closed by the stop, not by a process that exits.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import openai
import pytest

from servers import Server, start

pytestmark = pytest.mark.real_server

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
#: each example and the package it needs
NEEDS = {"langchain_stream": "langchain_openai", "litellm_stream": "litellm", "openai_agents_stream": "agents",
         "pydantic_ai_stream": "pydantic_ai"}
PROMPT = "Name three fruits."
TOKENS = 12  # the machine is shared: short answers


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    yield from start("llama-server", tmp_path_factory.mktemp("frameworks"))


def client(server: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url, api_key="sk-no-key", timeout=600, max_retries=0)


def reference(server: Server, max_tokens: int) -> tuple[int, float, str]:
    """Tokens, PPL and text of the server's non-streamed answer, straight from its logprobs."""
    answer = client(server).chat.completions.create(
        model="gemma", messages=[{"role": "user", "content": PROMPT}], max_tokens=max_tokens, temperature=0,
        logprobs=True, top_logprobs=5)
    values = [entry["logprob"] for entry in answer.model_dump()["choices"][0]["logprobs"]["content"]]
    return len(values), math.exp(-math.fsum(values) / len(values)), answer.choices[0].message.content or ""


def command(name: str, server: Server, *more: str) -> list[str]:
    return [sys.executable, str(EXAMPLES / f"{name}.py"), "--base-url", server.base_url, "--model", "gemma",
            "--prompt", PROMPT, "--temperature", "0", "--json", *more]


@pytest.mark.parametrize("name", sorted(NEEDS))
def test_example_equals_the_servers_non_streamed_answer(name: str, server: Server) -> None:
    pytest.importorskip(NEEDS[name], reason="pip install -e '.[langchain,litellm,agents,pydantic-ai]'")
    tokens, ppl, text = reference(server, TOKENS)
    env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    run = subprocess.run(command(name, server, "--max-tokens", str(TOKENS)), capture_output=True, text=True,
                         timeout=600, env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    summary = json.loads(run.stdout.strip().splitlines()[-1])
    assert summary["error"] is None and summary["complete"] and summary["stopped"] is None
    assert summary["tokens"] == tokens == TOKENS
    assert math.isclose(summary["ppl"], ppl, rel_tol=1e-6), (summary["ppl"], ppl)
    assert summary["text"] == text  # the framework delivered the server's text


def example(name: str) -> Any:
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def generation_rate(server: Server) -> float:
    """Tokens per second the server makes now (the machine is shared: measured, not assumed)."""
    times = []
    stream = client(server).chat.completions.create(
        model="gemma", messages=[{"role": "user", "content": "Count from 1 to 2000."}], max_tokens=24,
        temperature=0, stream=True, extra_body={"ignore_eos": True})
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            times.append(time.monotonic())
    return (len(times) - 1) / (times[-1] - times[0])


@pytest.mark.parametrize("name", sorted(NEEDS))
def test_stop_above_stops_the_server(name: str, server: Server, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip(NEEDS[name], reason="pip install -e '.[langchain,litellm,agents,pydantic-ai]'")
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    rate = generation_rate(server)
    argv = ["--base-url", server.base_url, "--model", "gemma", "--prompt", "Count from 1 to 2000.",
            "--max-tokens", "1500", "--temperature", "0", "--stop-above", "1.01", "--json",
            "--extra-body", '{"ignore_eos": true}']
    summary = example(name).main(argv)
    assert summary["stopped"] is not None and summary["stopped"]["reason"] == "ppl above 1.01"
    assert summary["tokens"] == summary["stopped"]["at_token"] < 20
    t = time.monotonic()
    follow = client(server).chat.completions.create(model="gemma", messages=[{"role": "user", "content": "Hi"}],
                                                    max_tokens=2, temperature=0)
    follow_seconds = time.monotonic() - t
    rest = (1500 - summary["tokens"]) / rate
    with capsys.disabled():
        print(f"\n{name}: stopped at token {summary['tokens']}; the next request took {follow_seconds:.2f} s, "
              f"the rest of the answer would have taken ~{rest:.0f} s at {rate:.1f} tokens/s")
    assert follow.choices[0].message.content is not None
    assert follow_seconds < 0.1 * rest
