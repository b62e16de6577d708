"""CLI cases found by a hostile review: keep-alives that defeat a read timeout, --record
through a symlink or onto a device, and a whole saved answer past the stream limit."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from sse_server import PacedSSEServer, chat_event


def cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "livepplx.cli", *args], capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def test_keep_alive_comments_do_not_hold_chat_past_its_timeout() -> None:
    events = [chat_event("Hi", -0.5)] + [b": ping\n\n"] * 300  # a comment every 0.1 s, never another event
    with PacedSSEServer(lambda n, b: events, interval=0.1) as server:
        started = time.monotonic()
        result = cli("chat", "hi", "--base-url", server.base_url, "--model", "m", "--json", "--timeout", "1")
        elapsed = time.monotonic() - started
    assert result.returncode == 1 and elapsed < 15, (elapsed, result.stderr)
    assert "sent nothing for 1 s after 1 token" in result.stderr
    assert json.loads(result.stdout)["tokens"] == 1


def _answer() -> list[bytes]:
    return [chat_event("Hi", -0.5), chat_event("!", -0.5, finish="stop"), b"data: [DONE]\n\n"]


def test_record_writes_through_a_symlink_and_onto_a_device(tmp_path: Path) -> None:
    target = tmp_path / "target.sse"
    target.write_text("old")
    link = tmp_path / "link.sse"
    link.symlink_to(target)
    with PacedSSEServer(lambda n, b: _answer(), interval=0.0) as server:
        result = cli("chat", "hi", "--base-url", server.base_url, "--model", "m", "--json", "--record", str(link))
        assert result.returncode == 0, result.stderr
        assert link.is_symlink() and target.read_bytes().startswith(b"data: ")  # the link kept, its target written
        device = cli("chat", "hi", "--base-url", server.base_url, "--model", "m", "--json", "--record", os.devnull)
    assert device.returncode == 0, device.stderr
    assert Path(os.devnull).is_char_device()  # still /dev/null, not a regular file


def test_replay_reads_a_whole_saved_answer_past_the_stream_limit(tmp_path: Path) -> None:
    entries = [{"token": f"t{i}", "logprob": -0.25, "bytes": None,
                "top_logprobs": [{"token": f"a{j}", "logprob": -0.25 - j, "bytes": None} for j in range(20)]}
               for i in range(4000)]
    answer = {"object": "chat.completion", "choices": [{"index": 0, "finish_reason": "length",
              "message": {"role": "assistant", "content": "x"}, "logprobs": {"content": entries}}]}
    path = tmp_path / "whole.json"
    path.write_text(json.dumps(answer, indent=2))
    assert path.stat().st_size > 8 << 20
    result = cli("replay", str(path), "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["tokens"] == 4000
