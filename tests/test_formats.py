"""Every wire format and every quirk of shared/guide/wire-formats.md.

Real recordings from llama.cpp servers, and fixtures written from each server's
documented shapes for the servers that cannot run here.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from conftest import ALL_RECORDINGS, SHARED_RECORDINGS, chunks_of, ppl_of, recorded_logprobs, replay, sse
from livepplx.errors import NoLogprobsError
from livepplx.formats import detect_format, parse_chunk
from livepplx.tokens import Status

FORMAT_OF = {
    "llamacpp-server-native-probs": "llamacpp-native",
    "llamacpp-server-completions": "openai-completions",
    "llamacpp-python-chat": "openai-chat",
    "llamacpp-python-completions": "openai-completions",
    "llamacpp-server-chat": "openai-chat",
    "llamacpp-server-native": "llamacpp-native",
}


def chat_chunk(*entries: tuple[str, float], index: int = 0, top: int = 0, field: str = "content", **extra: object) -> dict:
    content = [
        {"token": t, "logprob": lp, "bytes": None,
         "top_logprobs": [{"token": t, "logprob": lp - i * 0.5} for i in range(top)]}
        for t, lp in entries
    ]
    delta = {field: "".join(t for t, _ in entries)} if field != "reasoning_content" else {"reasoning_content": "".join(t for t, _ in entries)}
    logprobs_field = "refusal" if field == "refusal" else "content"
    return {"object": "chat.completion.chunk", "choices": [
        {"index": index, "delta": delta, "logprobs": {logprobs_field: content}, "finish_reason": None}], **extra}


# -- real recordings -------------------------------------------------------------------


def test_recordings_read_to_the_ppl_of_their_logprobs(recording: Path) -> None:
    state = replay(recording.read_bytes())
    expected = recorded_logprobs(recording)
    assert state.format == FORMAT_OF[recording.stem]
    assert state.error is None and state.tokens == len(expected) > 0
    assert math.isclose(state.ppl, ppl_of(expected), rel_tol=1e-12)
    assert state.choice(0).topk_positions == state.tokens  # every position listed alternatives


def test_recordings_read_the_same_fed_a_few_bytes_at_a_time(recording: Path) -> None:
    data = recording.read_bytes()
    whole = replay(data).summary()
    for size in (1, 7, 4096):
        state = replay(b"")
        for piece in chunks_of(data, size):
            state.handle(piece)
        state.finish()
        assert state.summary() == whole


def test_recordings_read_line_by_line_as_text(recording: Path) -> None:
    state = replay(b"")
    for line in recording.read_text().splitlines():
        state.handle(line)  # as httpx's iter_lines() gives them: no newline
    state.finish()
    assert state.summary() == replay(recording.read_bytes()).summary()


@pytest.mark.skipif(not SHARED_RECORDINGS.is_dir(), reason="shared/ is not beside this checkout")
def test_shipped_recordings_are_the_shared_captures() -> None:
    from livepplx.recordings import RECORDINGS, recording_path

    for name in RECORDINGS:
        assert recording_path(name).read_bytes() == (SHARED_RECORDINGS / f"{name}.sse").read_bytes()


def test_recorded_text_is_kept_per_choice() -> None:
    from livepplx.recordings import recording_path

    path = recording_path("llamacpp-python-chat")
    text = "".join(
        c["delta"].get("content") or ""
        for line in path.read_text().splitlines()
        if line.startswith("data: {")
        for c in json.loads(line[6:])["choices"]
    )
    assert replay(path.read_bytes()).text(0) == text


# -- OpenAI Chat Completions and the servers that copy it -------------------------------


def test_n_greater_than_one_keeps_state_per_choice() -> None:
    chunks = [chat_chunk(("a", -1.0), index=0), chat_chunk(("b", -3.0), index=1),
              chat_chunk(("c", -2.0), index=0), chat_chunk(("d", -5.0), index=1)]
    state = replay(sse(*chunks))
    assert sorted(state.choices) == [0, 1]
    assert math.isclose(state.choice(0).ppl, math.exp(1.5)) and math.isclose(state.choice(1).ppl, math.exp(4.0))
    assert state.text(0) == "ac" and state.text(1) == "bd"
    summary = state.summary()
    assert summary["tokens"] == 2 and [c["index"] for c in summary["choices"]] == [0, 1]


def test_refusal_and_reasoning_tokens_count() -> None:
    state = replay(sse(chat_chunk(("I can't", -0.5), field="refusal"),
                       chat_chunk(("think", -1.5), field="reasoning_content")))
    assert state.tokens == 2 and math.isclose(state.ppl, math.exp(1.0))


def test_openai_quirks_role_chunk_usage_chunk_azure_filter_and_extra_fields() -> None:
    role = {"object": "chat.completion.chunk", "choices": [
        {"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": {"content": [], "refusal": None}}]}
    azure_first = {"choices": [], "prompt_filter_results": [{"prompt_index": 0}], "id": "", "object": ""}
    usage = {"object": "chat.completion.chunk", "choices": [], "usage": {"completion_tokens": 2}}
    content = chat_chunk(("Hi", -0.25), top=3, obfuscation="abc", system_fingerprint="fp", moderation=None)
    finish = {"object": "chat.completion.chunk", "choices": [
        {"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}]}
    state = replay(sse(azure_first, role, content, finish, usage))
    assert state.format == "openai-chat" and state.tokens == 1 and state.unscored == 0 and state.error is None


def test_vllm_several_tokens_per_chunk_placeholders_and_finish_chunk_logprobs() -> None:
    merged = chat_chunk(("The", -0.1), (" sky", -9999.0), (" is", -0.3), top=2, usage={"completion_tokens": 3})
    # " sky" fell outside the top 20: its alternatives are listed, its own value is a placeholder.
    merged["choices"][0]["logprobs"]["content"][1]["top_logprobs"] = [{"token": " sea", "logprob": -0.2},
                                                                     {"token": " land", "logprob": -2.5}]
    token_ids = chat_chunk(("token_id:123", -1.0), ("", -0.5))
    eos = {"choices": [{"index": 0, "delta": {"content": ""}, "finish_reason": "stop", "stop_reason": None,
                        "logprobs": {"content": [{"token": "<|eot|>", "logprob": -0.05, "top_logprobs": []}]}}]}
    state = replay(sse(merged, token_ids, eos))
    stats = state.choice(0)
    assert (stats.tokens, stats.censored) == (6, 1)
    # " sky" is worth the lowest listed alternative at its position.
    assert math.isclose(stats.ppl, ppl_of([-0.1, -2.5, -0.3, -1.0, -0.5, -0.05]))
    assert stats.min_logprob == -2.5


def test_vllm_explicit_null_alternatives_and_missing_bytes() -> None:
    chunk = {"choices": [{"index": 0, "delta": {"content": "x"},
                          "logprobs": {"content": [{"token": "x", "logprob": -0.7, "top_logprobs": None}]}}]}
    state = replay(sse(chunk))
    assert state.tokens == 1 and state.choice(0).topk_positions == 0


def test_llamacpp_log_zero_and_null_logprobs() -> None:
    state = replay(sse(chat_chunk(("a", -3.4028234663852886e38)), chat_chunk(("b", float("nan"))),
                       '{"choices":[{"index":0,"delta":{"content":"c"},"logprobs":{"content":[{"token":"c","logprob":null}]}}]}'))
    stats = state.choice(0)
    # json.dumps writes NaN as the bare word NaN, which Python's json reads back.
    assert (stats.tokens, stats.censored, stats.skipped) == (1, 1, 2)
    assert stats.ppl == pytest.approx(1e6)


def test_endpoint_that_ignores_logprobs_is_seen() -> None:
    chunk = {"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": "x"}, "logprobs": None}]}
    state = replay(sse(chunk, chunk, chunk), on_missing_logprobs="ignore")
    assert state.tokens == 0 and state.unscored == 3
    with pytest.raises(NoLogprobsError, match="top_logprobs"):
        replay(sse(chunk, chunk, chunk))
    with pytest.warns(RuntimeWarning, match="logprobs=True"):
        replay(sse(chunk, chunk, chunk), on_missing_logprobs="warn")


def test_non_streamed_chat_answer_reads_too() -> None:
    answer = {"object": "chat.completion", "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"},
              "logprobs": {"content": [{"token": "ok", "logprob": -0.2, "top_logprobs": []}]}}]}
    state = replay(json.dumps(answer, indent=2))
    assert state.format == "openai-chat" and state.tokens == 1


# -- legacy Completions -------------------------------------------------------------------


def test_legacy_completions_with_collapsed_duplicate_alternatives() -> None:
    chunk = {"object": "text_completion", "choices": [{"index": 0, "text": " a b", "logprobs": {
        "tokens": [" a", " b"], "token_logprobs": [-0.5, -1.5], "text_offset": [0, 2],
        "top_logprobs": [{" a": -0.5, " the": -1.2}, {" b": -1.5}]}}]}
    state = replay(sse(chunk, {"object": "text_completion", "choices": [{"index": 0, "text": "", "logprobs": None, "finish_reason": "length"}]}))
    assert state.format == "openai-completions" and state.tokens == 2
    assert math.isclose(state.ppl, math.exp(1.0)) and state.text(0) == " a b"


# -- Responses API --------------------------------------------------------------------------


def test_responses_events_count_deltas_once() -> None:
    delta = {"type": "response.output_text.delta", "item_id": "m", "output_index": 1, "content_index": 0,
             "delta": "Hi there", "sequence_number": 3,
             "logprobs": [{"token": "Hi", "logprob": -0.1, "top_logprobs": [{"token": "Hi", "logprob": -0.1}]},
                          {"token": " there", "logprob": -0.9, "top_logprobs": []}]}
    done = {"type": "response.output_text.done", "text": "Hi there", "logprobs": delta["logprobs"]}
    events = [
        ("response.created", {"type": "response.created", "response": {"id": "r"}}),
        ("response.output_text.delta", delta),
        ("response.output_text.done", done),
        ("response.completed", {"type": "response.completed", "response": {"id": "r"}}),
    ]
    body = "".join(f"event: {name}\ndata: {json.dumps(obj)}\n\n" for name, obj in events)
    state = replay(body)
    assert state.format == "openai-responses" and state.tokens == 2
    assert math.isclose(state.ppl, math.exp(0.5))


def test_responses_error_event_is_the_error() -> None:
    body = (f"event: response.output_text.delta\ndata: {json.dumps({'type': 'response.output_text.delta', 'delta': 'a', 'logprobs': [{'token': 'a', 'logprob': -1.0}]})}\n\n"
            'event: error\ndata: {"type": "error", "code": "server_error", "message": "The server had an error"}\n\n')
    state = replay(body)
    assert state.tokens == 1 and state.error == "The server had an error"


# -- llama.cpp native, TGI, Ollama ------------------------------------------------------------


def test_llamacpp_native_probability_mode() -> None:
    def event(tok: str, prob: float, tops: list[float]) -> dict:
        return {"index": 0, "content": tok, "stop": False, "completion_probabilities": [
            {"id": 1, "token": tok, "bytes": [], "prob": prob, "top_probs": [{"token": "t", "prob": p} for p in tops]}]}

    state = replay(sse(event("a", 0.5, [0.5, 0.25]), event("b", 0.0, [0.9, 0.05]),
                       {"index": 0, "content": "", "stop": True, "timings": {}}, done=False))
    stats = state.choice(0)
    assert state.format == "llamacpp-native" and (stats.tokens, stats.censored) == (2, 1)
    assert math.isclose(stats.ppl, ppl_of([math.log(0.5), math.log(0.05)]))


def test_tgi_native_no_space_after_data_no_done() -> None:
    def event(i: int, text: str, lp: float, special: bool = False) -> dict:
        return {"index": i, "token": {"id": i, "text": text, "logprob": lp, "special": special},
                "top_tokens": [{"id": 9, "text": text, "logprob": lp, "special": False}],
                "generated_text": None, "details": None}

    final = event(3, "</s>", -0.01, special=True) | {"generated_text": "Hello world", "details": {"finish_reason": "eos_token", "generated_tokens": 3}}
    body = sse(event(1, "Hello", -0.4), event(2, " world", -1.6), final, done=False, space=False)
    state = replay(body)
    assert state.format == "tgi" and state.tokens == 3 and state.text(0) == "Hello world</s>"
    assert math.isclose(state.ppl, ppl_of([-0.4, -1.6, -0.01]))


def test_ollama_native_ndjson() -> None:
    lines = [
        {"model": "gemma3", "created_at": "t", "message": {"role": "assistant", "content": "Hi"}, "done": False,
         "logprobs": [{"token": "Hi", "logprob": -0.3, "bytes": [72, 105], "top_logprobs": [{"token": "Hi", "logprob": -0.3}]}]},
        {"model": "gemma3", "created_at": "t", "message": {"role": "assistant", "content": "!"}, "done": False,
         "logprobs": [{"token": "!", "logprob": -1.1, "top_logprobs": []}]},
        {"model": "gemma3", "created_at": "t", "message": {"role": "assistant", "content": ""}, "done": True,
         "done_reason": "stop", "eval_count": 2},
    ]
    state = replay("".join(json.dumps(line) + "\n" for line in lines).encode())
    assert state.format == "ollama" and state.tokens == 2
    assert math.isclose(state.ppl, math.exp(0.7))


def test_ollama_error_line() -> None:
    state = replay(b'{"error":"model \\"x\\" not found, try pulling it first"}\n')
    assert state.tokens == 0 and "not found" in state.error


# -- errors mid-stream ---------------------------------------------------------------------


@pytest.mark.parametrize("done", [True, False])
def test_mid_stream_error_keeps_the_statistics_read(done: bool) -> None:
    body = sse(chat_chunk(("a", -1.0)), chat_chunk(("b", -2.0)),
               {"error": {"message": "Internal server error", "type": "server_error"}}, done=done)
    state = replay(body)
    assert state.error == "Internal server error" and state.tokens == 2


def test_detection_waits_for_a_chunk_that_tells() -> None:
    assert detect_format({"choices": []}) is None
    assert detect_format({"error": {"message": "x"}}) is None
    assert parse_chunk({"error": {"message": "boom"}}).error == "boom"


# -- openai SDK objects read the same as dicts ----------------------------------------------------


@pytest.mark.parametrize("recording", [p for p in ALL_RECORDINGS if FORMAT_OF[p.stem].startswith("openai-")],
                         ids=lambda p: p.stem)
def test_sdk_objects_parse_like_the_dicts_they_came_from(recording: Path) -> None:
    from openai.types import Completion
    from openai.types.chat import ChatCompletionChunk

    model = {"openai-chat": ChatCompletionChunk, "openai-completions": Completion}[FORMAT_OF[recording.stem]]
    dicts = [json.loads(line[5:]) for line in recording.read_text().splitlines()
             if line.startswith("data:") and "[DONE]" not in line]
    from livepplx.state import StreamState

    from_dicts, from_objects = StreamState(), StreamState()
    for d in dicts:
        from_dicts.handle(d)
        from_objects.handle(model.construct(**d))  # what the SDK builds from stream data
    assert from_objects.summary() == from_dicts.summary() and from_objects.tokens > 0


def test_sdk_responses_event_object() -> None:
    from openai.types.responses import ResponseTextDeltaEvent

    event = ResponseTextDeltaEvent.model_validate({
        "type": "response.output_text.delta", "item_id": "m", "output_index": 0, "content_index": 0,
        "delta": "Hi", "sequence_number": 1,
        "logprobs": [{"token": "Hi", "logprob": -0.4, "top_logprobs": [{"token": "Hi", "logprob": -0.4}]}]})
    tokens = parse_chunk(event).tokens
    assert [(t.text, t.logprob, t.status) for t in tokens] == [("Hi", -0.4, Status.OK)]
