"""`livepplx vote` against the scripted SSE server of test_deepconf (real HTTP on 127.0.0.1)."""

from __future__ import annotations

import _thread
import json
import threading
import pytest

from livepplx.cli import main
from sse_server import PacedSSEServer
from test_deepconf import WARMUP, falling, scripted, steady, warmup_then


def vote(server: PacedSSEServer, *extra: str) -> list[str]:
    return ["vote", "q", "--base-url", server.base_url, "--model", "m", "--warmup", "4", "--traces", "3",
            "--group-window", "4", *extra]


def test_json_has_the_answer_the_weights_and_every_trace(capsys: pytest.CaptureFixture[str]) -> None:
    online = {0: (falling(5.0, 0.5, 6), "9"), 1: (steady(5.0), "6"), 2: (steady(5.0), "6")}
    with PacedSSEServer(scripted(warmup_then(lambda i: online[i]))) as server:
        code = main(vote(server, "--eta", "high", "--concurrency", "1", "--json"))
        bodies = [s.body for s in server.served]
    out = json.loads(capsys.readouterr().out)
    assert code == 0
    assert out["answer"] == "7" and out["weights"] == pytest.approx({"7": 12.0, "6": 10.0})
    assert out["threshold"] == pytest.approx(2.3) and out["eta"] == 90 and out["pruned"] == 1
    assert [t["stopped"] for t in out["traces"]] == [False] * 4 + [True, False, False]
    assert {"tokens", "confidence", "answer", "stopped"} <= set(out["traces"][0]) and "text" not in out["traces"][0]
    assert out["traces"][4]["tokens"] == 9 and out["traces"][4]["answer"] is None
    assert out["tokens"] == 4 * 10 + 9 + 2 * 10
    assert bodies[0]["top_logprobs"] == 20 and bodies[0]["logprobs"] is True and bodies[0]["stream"] is True


def test_the_live_view_and_the_summary(capsys: pytest.CaptureFixture[str]) -> None:
    with PacedSSEServer(scripted(lambda i: (steady(WARMUP[i % 4]), "7")), interval=0.01) as server:
        code = main(vote(server, "--eta", "low", "--completions", "--stop", "\n", "--temperature", "0.7"))
        body = server.served[0].body
    captured = capsys.readouterr()
    assert code == 0 and body["prompt"] == "q" and body["stop"] == ["\n"] and body["temperature"] == 0.7
    # Online traces at 2, 3 and 4 are pruned under s = 4.7 at their first full window (4 tokens).
    assert captured.out.startswith("answer: 7\n") and "tokens: 52 spent, about 70 to run all 7 traces in full: 18 saved" in captured.out
    assert "threshold s = 4.700" in captured.err and "warmup" in captured.err  # the live lines, on stderr


def test_no_voter_is_an_answer_of_null_not_an_error(capsys: pytest.CaptureFixture[str]) -> None:
    with PacedSSEServer(scripted(lambda i: (steady(3.0), "none"))) as server:
        code = main(vote(server, "--json"))
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and out["answer"] is None and out["unextractable"] == 7
    assert out["reason"].startswith("no trace could vote: 7 traces, 7 unextractable")


@pytest.mark.parametrize("args, message", [
    (["--eta", "0"], "--eta: must be low, high, or a percentage"),
    (["--consensus", "1.5"], "--consensus: must be"),
    (["--traces", "-1"], "--traces: must be an integer from 0"),
    (["--answer", "words"], "--answer: invalid choice"),
])
def test_bad_options_are_usage_errors(args: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit:
        main(["vote", "q", "--base-url", "http://127.0.0.1:9/v1", *args])
    assert exit.value.code == 2 and message in capsys.readouterr().err


def test_a_server_without_logprobs_is_one_line_and_exit_1(capsys: pytest.CaptureFixture[str]) -> None:
    with PacedSSEServer(scripted(lambda i: ([None] * 20, "7"))) as server:
        code = main(vote(server, "--json"))
    err = capsys.readouterr().err
    assert code == 1 and err.startswith("livepplx: error: ") and err.count("\n") == 1 and "logprobs" in err


def test_warmup_0_needs_a_threshold(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["vote", "q", "--base-url", "http://127.0.0.1:9/v1", "--warmup", "0"]) == 1
    assert "--warmup 0 needs --threshold" in capsys.readouterr().err


def test_ctrl_c_is_exit_130_with_every_trace_closed(capsys: pytest.CaptureFixture[str]) -> None:
    with PacedSSEServer(scripted(lambda i: (steady(3.0, 400), "7")), interval=0.005) as server:
        threading.Timer(0.4, _thread.interrupt_main).start()
        code = main(vote(server, "--concurrency", "2"))
        served = [server.wait(i) for i in range(len(server.served))]
    assert code == 130 and "livepplx: interrupted" in capsys.readouterr().err
    assert len(served) == 2 and all(s.client_left and s.written < 200 for s in served)
