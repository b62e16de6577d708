"""The command line, run as a user runs it: a subprocess, stdin, exit codes."""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import re
import subprocess
import sys
import unicodedata
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import ppl_of, recorded_logprobs, sse
from livepplx.cli import DEFAULT_TIMEOUT, _parser, main
from livepplx.recordings import recording_path
from livepplx.core.state import StreamState


def run(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "livepplx.cli", *args],
        input=stdin.decode("latin-1") if stdin is not None else None,
        capture_output=True,
        text=True,
        encoding="latin-1",
        timeout=60,
    )


def run_bytes(*args: str, stdin: bytes) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "livepplx.cli", *args], input=stdin, capture_output=True, timeout=60)


def test_replay_json_reports_the_recordings_ppl(recording: Path) -> None:
    result = run("replay", str(recording), "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    expected = recorded_logprobs(recording)
    assert report["tokens"] == len(expected) and report["error"] is None
    assert math.isclose(report["ppl"], ppl_of(expected), rel_tol=1e-12)
    first = report["choices"][0]
    assert {"index", "tokens", "ppl", "mean_logprob", "min_logprob", "censored", "skipped"} <= first.keys()
    assert first["ppl"] == report["ppl"]


def test_replay_reads_stdin() -> None:
    data = recording_path("llamacpp-server-chat").read_bytes()
    result = run_bytes("replay", "-", "--json", stdin=data)
    assert result.returncode == 0 and json.loads(result.stdout)["tokens"] == 30


def test_replay_without_json_prints_a_readable_summary() -> None:
    result = run("replay", str(recording_path("llamacpp-server-native")))
    assert result.returncode == 0 and "30 tokens" in result.stdout and "llamacpp-native" in result.stdout


def _chunk(text: str, lp: float) -> dict:
    return {"choices": [{"index": 0, "delta": {"content": text}, "logprobs": {"content": [{"token": text, "logprob": lp}]}}]}


def test_mid_stream_error_reports_the_stats_so_far_and_exits_1() -> None:
    body = sse(_chunk("a", -1.0), _chunk("b", -3.0), {"error": {"message": "upstream died"}})
    result = run_bytes("replay", "-", "--json", stdin=body)
    assert result.returncode == 1
    report = json.loads(result.stdout)
    assert report["error"] == "upstream died" and report["tokens"] == 2
    assert math.isclose(report["ppl"], math.exp(2.0))
    assert b"upstream died" in result.stderr and b"Traceback" not in result.stderr


def test_no_logprobs_says_how_to_ask_for_them() -> None:
    chunk = {"choices": [{"index": 0, "delta": {"content": "hello"}, "logprobs": None}]}
    result = run_bytes("replay", "-", "--json", stdin=sse(chunk, chunk))
    assert result.returncode == 1
    report = json.loads(result.stdout)
    assert report["ppl"] is None and report["tokens"] == 0
    for words in (b"logprobs=True", b"top_logprobs"):
        assert words in result.stderr
    assert b"Traceback" not in result.stderr


@pytest.mark.parametrize(
    "data",
    [
        bytes(range(256)) * 4,
        b'{"detail": "Not Found"}',
        b"<!DOCTYPE html><html><title>502</title></html>",
        b"",
    ],
    ids=["binary", "json-error-page", "html", "empty"],
)
def test_input_that_is_not_a_stream_is_one_line_and_exit_1(data: bytes) -> None:
    result = run_bytes("replay", "-", stdin=data)
    assert result.returncode == 1
    errors = result.stderr.decode().strip().splitlines()
    assert len(errors) == 1 and errors[0].startswith("livepplx: error:"), result.stderr
    assert b"Traceback" not in result.stderr


def test_truncated_stream_reports_what_was_read() -> None:
    data = recording_path("llamacpp-python-chat").read_bytes()
    result = run_bytes("replay", "-", "--json", stdin=data[: len(data) // 2 - 7])
    report = json.loads(result.stdout)
    assert result.returncode == 1 and "truncated" in report["error"] and report["tokens"] > 10


def test_missing_file_and_usage_errors() -> None:
    missing = run("replay", "/no/such/file.sse")
    assert missing.returncode == 1 and "cannot read /no/such/file.sse" in missing.stderr
    assert run("replay").returncode == 2
    assert run("replay", "x", "--window", "0").returncode == 2
    assert run("replay", "--help").returncode == 0


def test_version_says_which_accumulator_runs() -> None:
    from livepplx.core.accumulator import IMPLEMENTATION

    result = run("--version")
    language = "C" if IMPLEMENTATION == "c" else "Python"
    assert result.returncode == 0 and f"(statistics in {language}, Python " in result.stdout, result


def test_demo_replays_every_shipped_recording() -> None:
    result = run("demo", "--speed", "100000")
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("ppl") >= 4


def test_replay_stop_above_reports_the_stop() -> None:
    result = run("replay", str(recording_path("llamacpp-python-chat")), "--json", "--stop-above", "12")
    report = json.loads(result.stdout)
    assert result.returncode == 0 and report["stopped"] == {"reason": "ppl above 12", "choice": 0, "at_token": 14}
    assert report["tokens"] == 14 and report["ppl"] > 12


def test_a_multi_line_server_error_is_reported_on_one_line() -> None:
    body = sse({"error": {"message": "1 validation error:\n  body\n    Input should be a valid dictionary"}}, done=False)
    result = run_bytes("replay", "-", stdin=body)
    lines = result.stderr.decode().strip().splitlines()
    assert result.returncode == 1 and lines == ["livepplx: error: 1 validation error: body Input should be a valid dictionary"]


def test_files_that_cannot_be_written_are_one_line(tmp_path: Path) -> None:
    labelled = tmp_path / "l.jsonl"
    labelled.write_text("".join(json.dumps({"ppl": p, "correct": c}) + "\n"
                                for p, c in [(1.0, True), (1.2, True), (3.0, False), (3.5, False)]))
    result = run("calibrate", str(labelled), "--out", "/no/such/dir/car.json")
    assert result.returncode == 1 and result.stderr.startswith("livepplx: error: cannot write /no/such/dir/car.json")
    assert "Traceback" not in result.stderr


# -- option ranges ------------------------------------------------------------------------------

REPLAY = ["replay", "/no/such/file.sse"]  # the file is never opened: the options are judged first
CHAT = ["chat", "hi", "--base-url", "http://127.0.0.1:9/v1"]


@pytest.mark.parametrize("argv", [
    [*REPLAY, "--speed", "1e-300"], [*REPLAY, "--speed", "0.05"], [*REPLAY, "--speed", "inf"],
    [*REPLAY, "--speed", "nan"], [*REPLAY, "--speed", "2000000"],
    [*REPLAY, "--window", "10000000000"], [*REPLAY, "--window", "1000001"], [*REPLAY, "--window", "1e10"],
    [*REPLAY, "--stop-above", "nan"], [*REPLAY, "--stop-above", "inf"], [*REPLAY, "--stop-above", "-1"],
    [*REPLAY, "--min-tokens", "10000000000"], [*REPLAY, "--min-tokens", "9" * 5000],
    [*CHAT, "--top-logprobs", "-1"], [*CHAT, "--top-logprobs", "21"], [*CHAT, "--max-tokens", "10000000000"],
    [*CHAT, "--temperature", "nan"], [*CHAT, "--temperature", "-0.5"], [*CHAT, "--temperature", "inf"],
    [*CHAT, "--timeout", "0"], [*CHAT, "--timeout", "nan"], [*CHAT, "--timeout", "inf"], [*CHAT, "--timeout", "1e9"],
], ids=lambda argv: " ".join(argv[-2:])[:40])
def test_out_of_range_options_are_usage_errors(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit:
        main(argv)
    err = capsys.readouterr().err
    assert exit.value.code == 2 and f"argument {argv[-2]}: must be " in err, err


def test_the_bounds_themselves_are_accepted() -> None:
    args = _parser().parse_args([*REPLAY, "--speed", "0.1", "--window", "1000000", "--min-tokens", "1",
                                 "--stop-above", "1e300"])
    assert (args.speed, args.window, args.min_tokens, args.stop_above) == (0.1, 1_000_000, 1, 1e300)
    args = _parser().parse_args([*CHAT, "--top-logprobs", "0", "--temperature", "0", "--timeout", "0.5"])
    assert (args.top_logprobs, args.temperature, args.timeout) == (0, 0.0, 0.5)
    assert _parser().parse_args([*CHAT, "--top-logprobs", "20"]).top_logprobs == 20
    assert _parser().parse_args(CHAT).timeout == DEFAULT_TIMEOUT == 60.0


# -- JSON is JSON, and an infinite perplexity is said as inf ----------------------------------------


def strict_json(text: str) -> Any:
    def refuse(constant: str) -> None:
        raise AssertionError(f"not JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


def test_an_infinite_perplexity_is_inf_in_both_outputs(capsys: pytest.CaptureFixture[str],
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    body = sse(_chunk("a", -1000.0))  # exp(1000) is past a double: the perplexity is inf
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(body)))
    assert main(["replay", "-", "--json"]) == 0
    report = strict_json(capsys.readouterr().out)
    assert report["ppl"] == "inf" and report["choices"][0]["mean_logprob"] == -1000.0
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(body)))
    assert main(["replay", "-"]) == 0
    assert "choice 0: 1 tokens  ppl inf  window ppl inf  min p 0.0000" in capsys.readouterr().out


def test_a_non_finite_value_in_the_summary_fails_loudly_not_as_bad_json(monkeypatch: pytest.MonkeyPatch) -> None:
    summary = StreamState.summary
    monkeypatch.setattr(StreamState, "summary", lambda self: {**summary(self), "ppl": math.nan})
    with pytest.raises(ValueError, match="JSON compliant"):
        main(["replay", str(recording_path("llamacpp-server-chat")), "--json"])


# -- a closed stdout -------------------------------------------------------------------------------


@pytest.mark.parametrize("argv", [
    ["replay", str(recording_path("llamacpp-python-chat")), "--json"],
    ["demo", "--speed", "1000000"],
], ids=["json", "plain"])
def test_a_closed_stdout_exits_quietly_with_141(argv: list[str]) -> None:
    # The reader goes away before anything is written, as `| head -c 0` would: every write fails.
    proc = subprocess.Popen([sys.executable, "-m", "livepplx.cli", *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()
    err = proc.stderr.read()
    assert proc.wait(timeout=60) == 141 and err == b""


@pytest.mark.parametrize("mode", [[], ["--json"]], ids=["plain", "json"])
def test_a_closed_stdout_descriptor_is_written_to_nowhere(mode: list[str]) -> None:
    # `livepplx replay x.sse >&-`: Python starts with sys.stdout None.
    command = [sys.executable, "-m", "livepplx.cli", "replay", str(recording_path("llamacpp-python-chat")), *mode]
    result = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60,
                            preexec_fn=lambda: os.close(1))
    assert result.returncode == 0 and result.stderr == b"", result.stderr


# -- any value in any field: one named outcome, strict JSON, the tokens before it kept ------------

_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(10**400), max_value=10**400) | st.floats()
    | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=6,
)
_PATHS = [("choices",), ("choices", 0), ("choices", 0, "index"), ("choices", 0, "delta"),
          ("choices", 0, "delta", "content"), ("choices", 0, "logprobs"), ("choices", 0, "logprobs", "content"),
          ("choices", 0, "logprobs", "content", 0), ("choices", 0, "logprobs", "content", 0, "token"),
          ("choices", 0, "logprobs", "content", 0, "logprob"), ("choices", 0, "logprobs", "content", 0, "top_logprobs"),
          ("choices", 0, "finish_reason")]


def _good(text: str, logprob: float, finish: str | None = None) -> dict[str, Any]:
    return {"choices": [{"index": 0, "delta": {"content": text}, "finish_reason": finish,
                         "logprobs": {"content": [{"token": text, "logprob": logprob, "top_logprobs": []}]}}]}


def _run_in_process(argv: list[str], stdin: bytes) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    saved = sys.stdin
    sys.stdin = io.TextIOWrapper(io.BytesIO(stdin))
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(argv)
    finally:
        sys.stdin = saved
    return code, out.getvalue(), err.getvalue()


@settings(max_examples=150, deadline=None)
@given(path=st.sampled_from(_PATHS), value=_JSON, json_mode=st.booleans())
def test_any_value_in_any_field_is_a_named_outcome(path: tuple[Any, ...], value: Any, json_mode: bool) -> None:
    bad = _good("b", -2.0)
    node: Any = bad
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    body = sse(_good("a", -1.0), bad, _good("c", -0.5, "stop"))
    code, out, err = _run_in_process(["replay", "-", *(["--json"] if json_mode else [])], body)
    assert code in (0, 1)
    lines = err.splitlines()
    assert (lines == []) if code == 0 else (len(lines) == 1 and lines[0].startswith("livepplx: error: "))
    assert not any(unicodedata.category(ch) == "Cc" for ch in err.rstrip("\n"))
    if json_mode:
        report = strict_json(out)
        assert report["tokens"] >= 1 and (report["error"] is None) == (code == 0)  # the first token is kept
    else:
        assert re.search(r"choice 0: [1-9]\d* tokens", out), out
