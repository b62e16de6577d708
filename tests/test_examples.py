"""The examples run for real, against recorded SSE bytes served through httpx's MockTransport."""

from __future__ import annotations

import importlib.util
import itertools
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest

from conftest import openai_clients, sse_response
from livepplx.recordings import recording_path

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def serving(*names: str):  # type: ignore[no-untyped-def]
    bodies = itertools.cycle([recording_path(n).read_bytes() for n in names])
    return openai_clients(lambda request: sse_response(next(bodies)))[0]


def test_wrap_openai_stream(capsys: pytest.CaptureFixture[str]) -> None:
    summary = load("wrap_openai_stream").main(serving("llamacpp-python-chat"), "m", "hi")
    assert summary["tokens"] == 50 and "perplexity 10.16" in capsys.readouterr().out


def test_stop_early(capsys: pytest.CaptureFixture[str]) -> None:
    summary = load("stop_early").main(serving("llamacpp-python-chat"), "m", "hi", stop_above=12.0)
    assert summary["stopped"] == {"reason": "ppl above 12", "choice": 0, "at_token": 14}
    assert "stopped at token 14" in capsys.readouterr().out


def test_flare_spans(capsys: pytest.CaptureFixture[str]) -> None:
    spans = load("flare_spans").main(serving("llamacpp-python-chat"), "m", "hi", theta=0.4)
    out = capsys.readouterr().out
    assert spans and out.count("[[") == len(spans) and all(a < b for a, b in spans)


def test_deepconf_stop(capsys: pytest.CaptureFixture[str]) -> None:
    result = load("deepconf_stop").main(serving("llamacpp-python-chat", "llamacpp-server-chat"), "m", "hi",
                                        warmup=4, traces=4, eta=10)
    # Warm-ups alternate two recordings; DeepConf-low keeps only the more confident one's
    # level, so the traces of the other stop early.
    assert result["stopped"] == 2 and result["tokens"] < 2 * 50 + 2 * 30
    assert "threshold s =" in capsys.readouterr().out


def test_otel_console(capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("opentelemetry.sdk", reason="pip install -e '.[otel]'")
    load("otel_console").main(serving("llamacpp-python-chat", "llamacpp-server-chat"), "m", ["a", "b"])
    out = capsys.readouterr().out
    assert out.count('"name": "livepplx.generation"') == 2
    assert '"livepplx.stop.reason": "ppl above 12"' in out and "livepplx.generation.ppl" in out


def test_car_routing(capsys: pytest.CaptureFixture[str]) -> None:
    # Short answers alternate: the unsure one (ppl 10.2) escalates to the next served stream.
    client = serving("llamacpp-server-chat", "llamacpp-python-chat", "llamacpp-server-chat")
    results = load("car_routing").main(client, "m", ["easy?", "hard?"], threshold=2.5)
    assert [r.decision for r in results] == ["short", "long"]
    assert results[1].short_cut and results[1].short.tokens == 4
    assert "short answer cut" in capsys.readouterr().out


def test_car_calibrate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from livepplx.decide.calibrate import CarCalibration

    cal = load("car_calibrate").main(str(EXAMPLES / "car_eval_result.json"), str(tmp_path / "car.json"))
    assert CarCalibration.load(tmp_path / "car.json") == cal
    assert "AUROC of the short answer's perplexity: 0.580" in capsys.readouterr().out


def test_car_agent_tool(capsys: pytest.CaptureFixture[str]) -> None:
    client = serving("llamacpp-server-chat", "llamacpp-python-chat", "llamacpp-server-chat")
    agent = load("car_agent_tool").main(client, "m")
    assert [r.decision for r in agent.decisions] == ["short", "long"]
    assert "2 tool calls" in capsys.readouterr().out


def test_other_servers_send_the_right_request_and_read_the_answer() -> None:
    import json as _json

    from conftest import sse

    module = load("other_servers")
    seen: dict[str, Any] = {}
    chat = recording_path("llamacpp-server-chat").read_bytes()
    ollama = b"".join(_json.dumps(line).encode() + b"\n" for line in [
        {"model": "m", "message": {"role": "assistant", "content": "Io"}, "done": False,
         "logprobs": [{"token": "Io", "logprob": -0.2, "top_logprobs": [{"token": "Io", "logprob": -0.2}]}]},
        {"model": "m", "message": {"role": "assistant", "content": ""}, "done": True}])
    tgi = sse({"index": 1, "token": {"id": 5, "text": "Io", "logprob": -0.3, "special": False},
               "top_tokens": [{"id": 5, "text": "Io", "logprob": -0.3, "special": False}],
               "generated_text": "Io", "details": None}, done=False, space=False)

    def handler(request: httpx.Request) -> httpx.Response:
        seen[request.url.path] = _json.loads(request.content)
        body = {"/api/chat": ollama, "/generate_stream": tgi}.get(request.url.path, chat)
        return sse_response(body)

    http = httpx.Client(transport=httpx.MockTransport(handler))
    formats = {name: module.main(name, "http://server.invalid", "m", http)["format"] for name in module.SERVERS}
    assert formats == {"vllm": "openai-chat", "sglang": "openai-chat", "ollama": "ollama", "tgi": "tgi"}
    assert seen["/v1/chat/completions"]["top_logprobs"] == 5 and seen["/v1/chat/completions"]["logprobs"] is True
    assert seen["/api/chat"]["logprobs"] is True and seen["/api/chat"]["top_logprobs"] == 5
    assert seen["/generate_stream"]["parameters"]["top_n_tokens"] == 5
