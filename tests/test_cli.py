"""The command line, run as a user runs it: a subprocess, stdin, exit codes."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ppl_of, recorded_logprobs, sse
from livepplx.recordings import recording_path


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
