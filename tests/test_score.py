"""livepplx.score: a whole (non-streamed) response reads to the same summary as its stream."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from conftest import ppl_of, replay
from livepplx.core.errors import LivepplxError, NoLogprobsError, ServerStreamError, StreamFormatError
from livepplx.score import score

FIXTURES = Path(__file__).resolve().parent / "fixtures"
RECORDINGS = Path(__file__).resolve().parents[1] / "livepplx" / "recordings"
TEST_RECORDINGS = Path(__file__).resolve().parent / "recordings"

#: (whole answer, the stream of the same tokens)
PAIRS = [
    ("llamacpp-python-chat.json", RECORDINGS / "llamacpp-python-chat.sse"),
    ("llamacpp-python-completions.json", RECORDINGS / "llamacpp-python-completions.sse"),
    ("llamacpp-server-completions.json", TEST_RECORDINGS / "llamacpp-server-completions.sse"),
    ("llamacpp-server-native.json", RECORDINGS / "llamacpp-server-native.sse"),
    ("llamacpp-server-native-probs.json", TEST_RECORDINGS / "llamacpp-server-native-probs.sse"),
    ("llamacpp-old-completion.json", FIXTURES / "llamacpp-old-stream.sse"),
    ("gemini-generate.json", FIXTURES / "gemini-stream.sse"),
    ("vllm-chat-legacy.json", FIXTURES / "vllm-chat-legacy-stream.sse"),
    ("responses.json", FIXTURES / "responses-stream.sse"),
    ("tgi-generate.json", FIXTURES / "tgi-stream.sse"),
    ("ollama-chat.json", FIXTURES / "ollama-chat-stream.ndjson"),
]


def load(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text())


@pytest.mark.parametrize(("whole", "stream"), PAIRS, ids=[w for w, _ in PAIRS])
def test_a_whole_response_scores_like_its_stream(whole: str, stream: Path) -> None:
    expected = replay(stream.read_bytes()).summary()
    assert expected["tokens"] > 0 and expected["error"] is None
    for given in (load(whole), (FIXTURES / whole).read_text(), (FIXTURES / whole).read_bytes()):
        assert score(given).summary() == expected


def plain_logprobs(answer: dict) -> list[float]:
    """The sampled tokens' logprobs of a whole answer, read by hand for each shape."""
    if "choices" in answer:
        lp = answer["choices"][0]["logprobs"]
        return lp.get("token_logprobs") or [e["logprob"] for e in lp["content"]]
    if "output" in answer:
        return [e["logprob"] for item in answer["output"] if item["type"] == "message"
                for part in item["content"] for e in part["logprobs"]]
    if "details" in answer:
        return [t["logprob"] for t in answer["details"]["tokens"]]
    if "candidates" in answer:
        return [c["logProbability"] for c in answer["candidates"][0]["logprobsResult"]["chosenCandidates"]]
    if "message" in answer:
        return [e["logprob"] for e in answer["logprobs"]]
    return [e["logprob"] if "logprob" in e else math.log(e["prob"]) for e in answer["completion_probabilities"]]


@pytest.mark.parametrize("whole", ["llamacpp-python-chat.json", "llamacpp-python-completions.json",
                                   "llamacpp-server-completions.json", "llamacpp-server-native.json",
                                   "llamacpp-server-native-probs.json", "gemini-generate.json", "responses.json",
                                   "tgi-generate.json", "ollama-chat.json", "together-chat.json"])
def test_the_ppl_is_the_answers_own(whole: str) -> None:
    answer = load(whole)
    state = score(answer)
    assert math.isclose(state.ppl, ppl_of(plain_logprobs(answer)), rel_tol=1e-12)
    assert state.summary()["complete"] and state.error is None


def test_openai_sdk_objects_read_like_their_dicts() -> None:
    from openai.types import Completion
    from openai.types.chat import ChatCompletion
    from openai.types.responses import Response

    for name, model in [("llamacpp-python-chat.json", ChatCompletion), ("llamacpp-python-completions.json", Completion),
                        # llama-server's chat-shaped logprobs ride in a field Completion does not declare
                        ("llamacpp-server-completions.json", Completion),
                        # Together's parallel lists, in fields ChatCompletion does not declare
                        ("together-chat.json", ChatCompletion),
                        ("responses.json", Response)]:
        answer = load(name)
        typed = model.model_validate(answer)
        assert type(typed) is model
        assert score(typed).summary() == score(answer).summary(), name


def test_a_json_array_is_read_in_order() -> None:
    # streamGenerateContent?alt=json answers with an array of the stream's chunks.
    chunks = [json.loads(line[5:]) for line in (FIXTURES / "gemini-stream.sse").read_text().splitlines()
              if line.startswith("data:")]
    assert score(chunks).summary() == score(load("gemini-generate.json")).summary()
    assert score(json.dumps(chunks)).tokens == 5


def test_state_options_are_passed_on() -> None:
    state = score(load("llamacpp-python-chat.json"), window=4, vocab_size=1000)
    assert state.choice(0).window == 4 and state.summary()["choices"][0]["window"] == 4


@pytest.mark.parametrize("response", [
    {"foo": 1, "bar": [1, 2]}, {}, [], [1, 2], 5, None, "nope", "[" * 100_000, b"\xff\xfe", ["data: {}"], "1" * 5000,
    {"choices": False}, {"candidates_": []},
], ids=["object", "empty-object", "empty-array", "numbers", "int", "none", "not-json", "deep", "not-utf8",
        "array-of-text", "huge-int", "choices-false", "unknown-key"])
def test_what_cannot_be_read_says_so(response: Any) -> None:
    with pytest.raises(StreamFormatError) as caught:
        score(response)
    assert str(caught.value).startswith("not a response livepplx can read:")
    assert len(str(caught.value)) < 400


def test_the_unreadable_message_shows_the_top_level_keys() -> None:
    with pytest.raises(StreamFormatError, match=r"keys \{'foo', 'bar'\}"):
        score({"foo": 1, "bar": {"baz": 2}})


def test_a_readable_response_without_logprobs() -> None:
    answer = load("llamacpp-python-chat.json")
    answer["choices"][0]["logprobs"] = None
    with pytest.raises(NoLogprobsError, match="the response carried no logprobs"):
        score(answer)
    assert score(answer, on_missing_logprobs="ignore").tokens == 0
    nulls = load("llamacpp-python-chat.json")
    for entry in nulls["choices"][0]["logprobs"]["content"]:
        entry["logprob"] = None
    with pytest.raises(NoLogprobsError, match="every one of the response's 50 tokens came without a usable logprob"):
        score(nulls)


def test_an_error_body_is_the_servers_error() -> None:
    with pytest.raises(ServerStreamError, match="model 'x' not found"):
        score({"error": {"message": "model 'x' not found", "type": "invalid_request_error"}})


def test_a_response_without_its_end_mark_is_reported_truncated() -> None:
    answer = load("llamacpp-python-chat.json")
    answer["choices"][0]["finish_reason"] = None
    state = score(answer)
    assert state.tokens == 50 and not state.summary()["complete"] and "truncated" in (state.error or "")


def test_every_error_is_a_livepplx_error() -> None:
    for bad in ({"choices": [{"index": "0", "message": {"content": "x"}}]}, {"object": "response", "output": 5}):
        with pytest.raises(LivepplxError):
            score(bad)


@pytest.mark.parametrize("response", [
    {"object": "response", "status": "failed", "error": {"message": "The model is overloaded"}, "output": []},
    {"promptFeedback": {"blockReason": "SAFETY"}},
    {"object": "chat.completion", "choices": [], "error": {"message": "context length exceeded"}},
], ids=["responses-failed", "gemini-blocked", "chat-error"])
def test_a_failed_or_blocked_answer_is_the_servers_error_not_no_logprobs(response: dict) -> None:
    from livepplx import ServerStreamError

    with pytest.raises(ServerStreamError, match="the response is an error"):
        score(response)


def test_an_answer_whose_every_entry_is_malformed_is_unreadable_not_no_logprobs() -> None:
    from livepplx import StreamFormatError

    answer = {"object": "chat.completion", "choices": [{"index": "0", "finish_reason": "stop", "message": {"content": "Hi"},
              "logprobs": {"content": [{"token": "Hi", "logprob": -0.5}]}}]}
    with pytest.raises(StreamFormatError, match="malformed"):
        score(answer)
