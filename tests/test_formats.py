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
from livepplx.core.errors import NoLogprobsError
from livepplx.core.formats import detect_format, parse_chunk
from livepplx.core.state import StreamState
from livepplx.core.tokens import Status

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
        state = StreamState()  # not replay(b""): that would finish an empty stream first
        for piece in chunks_of(data, size):
            state.handle(piece)
        state.finish()
        assert state.summary() == whole


def test_recordings_read_line_by_line_as_text(recording: Path) -> None:
    state = StreamState()  # not replay(b""): that would finish an empty stream first
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


# -- the type rule: a wrong type anywhere is absent or malformed, never an exception ------------

ENTRY = {"token": "a", "logprob": -0.5, "top_logprobs": [{"token": "a", "logprob": -0.5}, {"token": "b", "logprob": -1.5}]}
A = (0, "a", "OK", -0.5, (-0.5, -1.5))  # what ENTRY reads as, for choice 0


def chat(*choices: dict, **extra: object) -> dict:
    return {"object": "chat.completion.chunk", "choices": list(choices), **extra}


def choice(**fields: object) -> dict:
    return {"index": 0, "delta": {"content": "a"}, "logprobs": {"content": [ENTRY]}, "finish_reason": None, **fields}


def brief(parsed: object) -> tuple:
    """Everything a Parsed says, comparable (NaN logprobs as None)."""
    tokens = [(t.choice, t.text, t.status.name, None if math.isnan(t.logprob) else t.logprob, t.alternatives)
              for t in parsed.tokens]  # type: ignore[attr-defined]
    return tokens, parsed.unscored, parsed.ended, parsed.malformed  # type: ignore[attr-defined]


TYPE_RULE = [
    # (id, format, chunk, tokens, unscored, ended, malformed)
    ("choices-false", "openai-chat", chat() | {"choices": False}, [], 0, (), 1),
    ("choices-object", "openai-chat", chat() | {"choices": {"a": 1}}, [], 0, (), 1),
    ("choices-null", "openai-chat", chat() | {"choices": None}, [], 0, (), 0),
    ("choice-entries-odd", "openai-chat", chat(5, "x", None, [], choice()), [A], 0, (), 4),
    ("index-list", "openai-chat", chat(choice(index=[1])), [], 0, (), 1),
    ("index-string", "openai-chat", chat(choice(index="1")), [], 0, (), 1),
    ("index-true", "openai-chat", chat(choice(index=True)), [], 0, (), 1),
    ("index-negative", "openai-chat", chat(choice(index=-1)), [], 0, (), 1),
    ("index-float", "openai-chat", chat(choice(index=1.0)), [], 0, (), 1),
    # index 0 beside "1": the "1" is malformed, never merged into choice 0
    ("index-0-and-string-1", "openai-chat", chat(choice(), choice(index="1", finish_reason="stop")), [A], 0, (), 1),
    ("index-absent-is-position", "openai-chat",
     chat(choice(), {k: v for k, v in choice().items() if k != "index"}), [A, (1,) + A[1:]], 0, (), 0),
    ("logprobs-string", "openai-chat", chat(choice(logprobs="x")), [], 0, (), 1),
    ("logprobs-list", "openai-chat", chat(choice(logprobs=[1])), [], 0, (), 1),
    ("logprobs-true", "openai-chat", chat(choice(logprobs=True)), [], 0, (), 1),
    # Together streams a bare number: 5 is a positive logprob, skipped by the value policy
    ("logprobs-number", "openai-chat", chat(choice(logprobs=5)), [(0, "a", "SKIPPED", None, ())], 0, (), 0),
    ("content-object", "openai-chat", chat(choice(logprobs={"content": {"x": 1}})), [], 0, (), 1),
    ("entries-odd", "openai-chat", chat(choice(logprobs={"content": [1, "x", None, [], ENTRY]})), [A], 0, (), 4),
    ("top-logprobs-string", "openai-chat", chat(choice(logprobs={"content": [ENTRY | {"top_logprobs": "x"}]})),
     [(0, "a", "OK", -0.5, ())], 0, (), 0),
    ("top-logprobs-odd", "openai-chat",
     chat(choice(logprobs={"content": [ENTRY | {"top_logprobs": [1, "x", None, [], {"logprob": "y"}, {"logprob": -2.0}]}]})),
     [(0, "a", "OK", -0.5, (-2.0,))], 0, (), 0),
    ("token-list", "openai-chat", chat(choice(logprobs={"content": [ENTRY | {"token": ["x"]}]})),
     [(0, "", "OK", -0.5, (-0.5, -1.5))], 0, (), 0),
    ("logprob-string", "openai-chat", chat(choice(logprobs={"content": [ENTRY | {"logprob": "-0.5"}]})),
     [(0, "a", "SKIPPED", None, (-0.5, -1.5))], 0, (), 0),
    ("delta-string", "openai-chat", chat(choice(delta="x", logprobs=None)), [], 0, (), 0),
    ("delta-content-list", "openai-chat", chat(choice(delta={"content": ["x"]}, logprobs=None)), [], 0, (), 0),
    ("finish-reason-number", "openai-chat", chat(choice(finish_reason=5)), [A], 0, (), 0),
    ("finish-reason-empty", "openai-chat", chat(choice(finish_reason="")), [A], 0, (), 0),
    ("chunk-list", "openai-chat", [chat(choice())], [], 0, (), 1),
    ("chunk-number", "openai-chat", 5, [], 0, (), 1),
    ("legacy-values-object", "openai-completions",
     {"choices": [{"index": 0, "text": "a", "logprobs": {"token_logprobs": {"a": 1}}}]}, [], 0, (), 1),
    ("legacy-tokens-number", "openai-completions",
     {"choices": [{"index": 0, "text": "a", "logprobs": {"tokens": 5, "token_logprobs": [-0.5], "top_logprobs": ["x"]}}]},
     [(0, "", "OK", -0.5, ())], 0, (), 0),
    ("legacy-tops-odd", "openai-completions",
     {"choices": [{"index": 0, "text": "a", "logprobs": {"tokens": [["a"]], "token_logprobs": [-0.5, "x"],
                                                           "top_logprobs": [5, {"b": -1.0, "c": "x"}]}}]},
     [(0, "", "OK", -0.5, ()), (0, "", "SKIPPED", None, (-1.0,))], 0, (), 0),
    ("responses-logprobs-object", "openai-responses",
     {"type": "response.output_text.delta", "delta": "a", "logprobs": {"x": 1}}, [], 0, (), 1),
    ("responses-logprobs-empty-object", "openai-responses",
     {"type": "response.output_text.delta", "delta": "a", "logprobs": {}}, [], 0, (), 1),
    ("responses-type-list", "openai-responses", {"type": ["response.completed"]}, [], 0, (), 0),
    ("responses-output-string", "openai-responses", {"object": "response", "status": "completed", "output": "x"},
     [], 0, (0,), 1),
    ("native-index-string", "llamacpp-native",
     {"index": "0", "content": "a", "stop": False, "completion_probabilities": [ENTRY]}, [], 0, (), 1),
    ("native-probabilities-string", "llamacpp-native",
     {"content": "a", "stop": False, "completion_probabilities": "x"}, [], 0, (), 1),
    ("native-entries-odd", "llamacpp-native",
     {"content": "a", "stop": True, "completion_probabilities": [5, None, ENTRY]}, [A], 0, (0,), 2),
    ("native-probs-string", "llamacpp-native",
     {"content": "a", "stop": False, "completion_probabilities": [{"content": "a", "probs": "x"}]},
     [(0, "a", "SKIPPED", None, ())], 0, (), 0),
    ("native-stop-string", "llamacpp-native", {"content": "", "stop": "true"}, [], 0, (), 0),
    ("tgi-token-string", "tgi", {"token": "x", "generated_text": None, "details": None}, [], 0, (), 1),
    ("tgi-top-tokens-number", "tgi", {"token": {"text": "a", "logprob": -0.5}, "top_tokens": 5, "details": 5},
     [(0, "a", "OK", -0.5, ())], 0, (), 0),
    ("tgi-details-tokens-object", "tgi", {"generated_text": "a", "details": {"tokens": {"x": 1}}}, [], 0, (0,), 1),
    ("ollama-logprobs-object", "ollama", {"message": {"content": "a"}, "done": False, "logprobs": {"x": 1}}, [], 0, (), 1),
    ("ollama-logprobs-zero", "ollama", {"message": {"content": "a"}, "done": False, "logprobs": 0}, [], 0, (), 1),
    ("ollama-done-string", "ollama", {"message": {"content": "a"}, "done": "true", "logprobs": [ENTRY]}, [A], 0, (), 0),
    ("gemini-candidates-number", "gemini", {"candidates": 5}, [], 0, (), 1),
    ("gemini-result-list", "gemini", {"candidates": [{"logprobsResult": [], "finishReason": "STOP"}]}, [], 0, (0,), 1),
    ("gemini-chosen-string", "gemini", {"candidates": [{"logprobsResult": {"chosenCandidates": "x"}}]}, [], 0, (), 1),
    ("gemini-index-string", "gemini",
     {"candidates": [{"index": "0", "logprobsResult": {"chosenCandidates": [{"token": "a", "logProbability": -0.5}]}}]},
     [], 0, (), 1),
    ("gemini-top-odd", "gemini",
     {"candidates": [{"logprobsResult": {"chosenCandidates": [{"token": "a", "logProbability": -0.5}, 7],
                                         "topCandidates": [{"candidates": "x"}]}}]},
     [(0, "a", "OK", -0.5, ())], 0, (), 1),
]


@pytest.mark.parametrize(("fmt", "chunk", "tokens", "unscored", "ended", "malformed"),
                         [row[1:] for row in TYPE_RULE], ids=[row[0] for row in TYPE_RULE])
def test_a_wrong_type_reads_as_absent_or_is_counted_malformed(
        fmt: str, chunk: object, tokens: list, unscored: int, ended: tuple, malformed: int) -> None:
    assert brief(parse_chunk(chunk, fmt)) == (tokens, unscored, ended, malformed)


def test_the_statistics_so_far_are_kept_past_malformed_chunks() -> None:
    good = chat(choice())
    bad = [chat(choice(index="1")), chat(choice(index=[1])), chat(choice(logprobs={"content": "x"})),
           chat(5, None), chat() | {"choices": False}, chat(choice(logprobs={"content": [ENTRY | {"token": ["x"]}]}))]
    state = StreamState()
    for chunk in [good, *bad, good, chat(choice(logprobs=None, delta={}, finish_reason="stop"))]:
        state.handle(chunk)
    state.finish()
    summary = state.summary()
    assert [c["index"] for c in summary["choices"]] == [0]  # nothing merged, nothing made of "1"
    assert summary["tokens"] == 3 and state.text(0) == "aa"  # the token with a list for text counts, as ""
    assert math.isclose(state.ppl, math.exp(0.5)) and summary["malformed"] == 6


def test_sdk_objects_may_hold_plain_dicts_and_odd_values() -> None:
    from openai.types.chat import ChatCompletionChunk

    odd = chat(choice(logprobs={"content": [ENTRY, 5]}), choice(index=1, logprobs={"content": [ENTRY]}))
    parsed = parse_chunk(ChatCompletionChunk.construct(**odd))  # the SDK object keeps the dicts as they came
    assert brief(parsed) == ([A, (1,) + A[1:]], 0, (), 1)


# -- every format says where it ends -------------------------------------------------------------


@pytest.mark.parametrize(("fmt", "chunk", "ended"), [
    ("openai-chat", chat(choice(index=2, finish_reason="stop")), (2,)),
    ("openai-chat", chat(choice(finish_reason="length"), choice(index=1, finish_reason=None)), (0,)),
    ("openai-chat", chat(choice()), ()),
    ("openai-completions", {"choices": [{"index": 0, "text": "", "logprobs": None, "finish_reason": "length"}]}, (0,)),
    ("openai-responses", {"type": "response.completed", "response": {}}, (0,)),
    ("openai-responses", {"type": "response.incomplete", "response": {}}, (0,)),
    ("openai-responses", {"type": "response.done", "response": {}}, (0,)),
    ("openai-responses", {"type": "response.output_text.done", "text": "a"}, ()),
    ("llamacpp-native", {"index": 1, "content": "", "stop": True}, (1,)),
    ("llamacpp-native", {"index": 0, "content": "a", "stop": False}, ()),
    ("tgi", {"token": {"text": "a", "logprob": -0.5}, "generated_text": "a", "details": None}, (0,)),
    ("tgi", {"token": {"text": "a", "logprob": -0.5}, "generated_text": None, "details": None}, ()),
    ("ollama", {"message": {"content": ""}, "done": True}, (0,)),
    ("ollama", {"message": {"content": "a"}, "done": False}, ()),
    ("gemini", {"candidates": [{"content": {"parts": [{"text": "a"}]}}, {"index": 1, "finishReason": "MAX_TOKENS"}]}, (1,)),
])
def test_each_format_marks_its_end(fmt: str, chunk: dict, ended: tuple) -> None:
    assert parse_chunk(chunk, fmt).ended == ended


def test_a_failed_response_is_an_end_and_an_error() -> None:
    parsed = parse_chunk({"type": "response.failed", "response": {"error": {"code": "server_error", "message": "boom"}}})
    assert (parsed.ended, parsed.error) == ((0,), "boom")


def test_every_recording_ends_with_its_own_end_mark(recording: Path) -> None:
    chunks = [json.loads(line[5:]) for line in recording.read_text().splitlines()
              if line.startswith("data:") and "[DONE]" not in line]
    fmt = FORMAT_OF[recording.stem]
    marks = [(i, parse_chunk(c, fmt).ended) for i, c in enumerate(chunks)]
    ends = [(i, e) for i, e in marks if e]
    assert len(ends) == 1 and ends[0][1] == (0,) and ends[0][0] >= len(chunks) - 2


# -- formats that real users send (fixtures: tests/fixtures/README.md) --------------------------

FIXTURES = Path(__file__).resolve().parent / "fixtures"


def fixture_chunks(name: str) -> list:
    """The decoded chunks of a fixture, read the plain way (not through livepplx's decoder)."""
    text = (FIXTURES / name).read_text()
    if name.endswith(".json"):
        return [json.loads(text)]
    if name.endswith(".ndjson"):
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    return [json.loads(line[5:]) for line in text.splitlines() if line.startswith("data:") and "[DONE]" not in line]


@pytest.mark.parametrize(("name", "fmt"), [
    ("gemini-generate.json", "gemini"), ("gemini-stream.sse", "gemini"),
    ("llamacpp-old-completion.json", "llamacpp-native"), ("llamacpp-old-stream.sse", "llamacpp-native"),
    ("llamacpp-server-native.json", "llamacpp-native"), ("responses.json", "openai-responses"),
    ("tgi-generate.json", "tgi"), ("ollama-chat.json", "ollama"), ("together-chat.json", "openai-chat"),
    ("together-chat-stream.sse", "openai-chat"), ("vllm-chat-legacy.json", "openai-chat"),
    ("llamacpp-python-chat.json", "openai-chat"), ("llamacpp-python-completions.json", "openai-completions"),
])
def test_whole_answers_and_new_streams_are_detected_from_their_dicts(name: str, fmt: str) -> None:
    assert detect_format(fixture_chunks(name)[0]) == fmt


def old_llamacpp_reference(entry: dict) -> tuple[float, bool]:
    """The sampled token's logprob in the older shape, and whether it was censored."""
    probs = {p["tok_str"]: p["prob"] for p in reversed(entry["probs"])}
    if entry["content"] in probs:
        return math.log(probs[entry["content"]]), False
    return math.log(min(probs.values())), True


@pytest.mark.parametrize("name", ["llamacpp-old-stream.sse", "llamacpp-old-completion.json"])
def test_older_llamacpp_probs_with_tok_str(name: str) -> None:
    whole = fixture_chunks("llamacpp-old-completion.json")[0]
    reference = [old_llamacpp_reference(e) for e in whole["completion_probabilities"]]
    state = replay((FIXTURES / name).read_bytes())
    stats = state.choice(0)
    # The stream's last event repeats every token (older servers): they are not counted twice.
    assert (state.format, stats.tokens) == ("llamacpp-native", 7)
    assert stats.censored == sum(censored for _, censored in reference) == 1
    assert math.isclose(stats.ppl, ppl_of([lp for lp, _ in reference]), rel_tol=1e-12)
    assert state.text(0) == whole["content"] == " Paris. It is also the largest"
    assert state.error is None and state.summary()["complete"]


def test_older_llamacpp_token_outside_the_listed_is_censored_at_the_lowest() -> None:
    entry = {"content": " also", "probs": [{"tok_str": " known", "prob": 0.4}, {"tok_str": " a", "prob": 0.1}]}
    [token] = parse_chunk({"content": " also", "stop": False, "completion_probabilities": [entry]}).tokens
    assert token.status is Status.CENSORED and token.logprob == math.log(0.1)


def gemini_reference(response: dict) -> list[float]:
    return [c["logProbability"] for cand in response["candidates"]
            for c in cand["logprobsResult"]["chosenCandidates"]]


@pytest.mark.parametrize("name", ["gemini-stream.sse", "gemini-generate.json"])
def test_gemini_logprobs_result(name: str) -> None:
    values = [v for chunk in fixture_chunks(name) for v in gemini_reference(chunk)]
    state = replay((FIXTURES / name).read_bytes())
    stats = state.choice(0)
    assert (state.format, stats.tokens, stats.censored, stats.topk_positions) == ("gemini", 5, 0, 5)
    assert math.isclose(stats.ppl, ppl_of(values), rel_tol=1e-12)
    assert state.text(0) == "The sky is blue." and state.error is None and state.summary()["complete"]
    # Gemini's own average agrees: its candidate-level avgLogprobs is the mean of the chosen.
    average = fixture_chunks("gemini-generate.json")[0]["candidates"][0]["avgLogprobs"]
    assert math.isclose(stats.ppl, math.exp(-average), rel_tol=1e-12)


def test_gemini_unseen_value_is_censored_and_bounds_nothing() -> None:
    unseen = -1.2676506e30
    chunk = {"candidates": [{"logprobsResult": {
        "chosenCandidates": [{"token": "x", "logProbability": unseen}, {"token": "y", "logProbability": 0}],
        "topCandidates": [{"candidates": [{"token": "a", "logProbability": -0.2}, {"token": "b", "logProbability": -3.5},
                                          {"token": "x", "logProbability": unseen}]},
                          {"candidates": [{"token": "y", "logProbability": 0}, {"token": "c", "logProbability": unseen}]}]}}]}
    first, second = parse_chunk(chunk).tokens
    assert (first.status, first.logprob, first.alternatives) == (Status.CENSORED, -3.5, (-0.2, -3.5))
    assert (second.status, second.logprob, second.alternatives) == (Status.OK, 0.0, (0,))


def test_gemini_blocked_prompt_and_error() -> None:
    assert parse_chunk({"promptFeedback": {"blockReason": "SAFETY"}}, "gemini").error == "the prompt was blocked: SAFETY"
    state = replay(sse({"error": {"code": 429, "message": "Resource has been exhausted", "status": "RESOURCE_EXHAUSTED"}},
                       done=False))
    assert "Resource has been exhausted" in (state.error or "")


def test_gemini_candidates_keep_their_own_index() -> None:
    chunk = {"candidates": [{"index": 1, "logprobsResult": {"chosenCandidates": [{"token": "b", "logProbability": -2.0}]}},
                            {"logprobsResult": {"chosenCandidates": [{"token": "c", "logProbability": -3.0}]}}]}
    assert [(t.choice, t.text) for t in parse_chunk(chunk).tokens] == [(1, "b"), (1, "c")]


def legacy_reference(name: str) -> list[float]:
    values = []
    for chunk in fixture_chunks(name):
        for c in chunk["choices"]:
            lp = c.get("logprobs")
            if isinstance(lp, float):
                values.append(lp)  # Together's stream: a bare number
            else:
                values += (lp or {}).get("token_logprobs") or []
    return values


@pytest.mark.parametrize("name", ["vllm-chat-legacy-stream.sse", "vllm-chat-legacy.json"])
def test_chat_with_legacy_lists_and_a_positive_first_value(name: str) -> None:
    values = legacy_reference(name)
    assert values[0] > 0  # float rounding on the server: the policy skips it
    state = replay((FIXTURES / name).read_bytes())
    stats = state.choice(0)
    assert (state.format, stats.tokens, stats.skipped, stats.topk_positions) == ("openai-chat", 6, 1, 6)
    assert math.isclose(stats.ppl, ppl_of(values[1:]), rel_tol=1e-12)
    assert state.text(0) == "▁▁Hello!▁It's▁nice" and state.summary()["complete"]  # the tokens as the server wrote them


@pytest.mark.parametrize("name", ["together-chat-stream.sse", "together-chat.json"])
def test_together_bare_number_stream_and_legacy_answer(name: str) -> None:
    values = legacy_reference(name)
    state = replay((FIXTURES / name).read_bytes())
    assert (state.format, state.tokens) == ("openai-chat", 10)
    assert math.isclose(state.ppl, ppl_of(values), rel_tol=1e-12)
    assert state.text(0) == "New York City is a vibrant and diverse destination with"
    assert state.error is None and state.summary()["complete"]


@pytest.mark.parametrize(("stream", "whole"), [
    ("gemini-stream.sse", "gemini-generate.json"), ("llamacpp-old-stream.sse", "llamacpp-old-completion.json"),
    ("vllm-chat-legacy-stream.sse", "vllm-chat-legacy.json"), ("responses-stream.sse", "responses.json"), ("tgi-stream.sse", "tgi-generate.json"),
    ("ollama-chat-stream.ndjson", "ollama-chat.json"),
    ("../../livepplx/recordings/llamacpp-python-chat.sse", "llamacpp-python-chat.json"),
    ("../../livepplx/recordings/llamacpp-python-completions.sse", "llamacpp-python-completions.json"),
    ("../../livepplx/recordings/llamacpp-server-native.sse", "llamacpp-server-native.json"),
    ("../recordings/llamacpp-server-native-probs.sse", "llamacpp-server-native-probs.json"),
    ("../recordings/llamacpp-server-completions.sse", "llamacpp-server-completions.json"),
], ids=lambda name: Path(name).stem)
def test_a_whole_answer_replays_like_its_stream(stream: str, whole: str) -> None:
    streamed = replay((FIXTURES / stream).read_bytes())
    answered = replay((FIXTURES / whole).read_bytes())  # a pretty-printed JSON file, as `livepplx replay` gets it
    assert answered.summary() == streamed.summary() and streamed.tokens > 0 and streamed.error is None
    assert answered.text(0) == streamed.text(0)
