"""Streaming wire formats: one parser per format, chunk -> :class:`Parsed`.

A chunk is a decoded JSON object (a ``dict``) or an openai SDK object of the same
shape; attributes and keys are read alike, so nothing here imports openai.
Where each server puts its logprobs: ``shared/guide/wire-formats.md``.

>>> chunk = {"choices": [{"index": 0, "delta": {"content": "Hi"},
...          "logprobs": {"content": [{"token": "Hi", "logprob": -0.25, "top_logprobs": []}]}}]}
>>> detect_format(chunk)
'openai-chat'
>>> parse_chunk(chunk).tokens
[Token(choice=0, text='Hi', logprob=-0.25, status=OK, alternatives=())]
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

from .tokens import Token, make_token

__all__ = ["Parsed", "FORMATS", "detect_format", "parse_chunk", "error_message"]


class Parsed(NamedTuple):
    """What one chunk carried."""

    #: the tokens, with the value policy applied
    tokens: list[Token]
    #: pieces of generated text that came with no logprobs (an endpoint that ignores them)
    unscored: int = 0
    #: the message of a mid-stream error event, else None
    error: str | None = None


def _f(obj: Any, name: str) -> Any:
    """A field of a dict or an SDK object, None if absent."""
    if type(obj) is dict:
        return obj.get(name)
    return getattr(obj, name, None)


def _alternatives(entries: Any, key: str = "logprob") -> list[Any]:
    return [_f(a, key) for a in entries] if entries else []


def error_message(chunk: Any) -> str | None:
    """The message of an error event (``{"error": ...}`` in any server's shape), else None."""
    err = _f(chunk, "error")
    if not err:
        if _f(chunk, "type") == "error":  # the Responses API's error event
            return str(_f(chunk, "message") or _f(chunk, "code") or "error event")
        return None
    if isinstance(err, str):
        return err
    message = _f(err, "message")
    return str(message) if message else str(err)


def _has_text(delta: Any) -> bool:
    if delta is None:
        return False
    for key in ("content", "refusal", "reasoning_content", "reasoning"):
        if _f(delta, key):
            return True
    return False


def parse_openai_chat(chunk: Any) -> Parsed:
    """OpenAI Chat Completions (and vLLM, SGLang, llama.cpp, Ollama /v1, TGI /v1)."""
    tokens: list[Token] = []
    unscored = 0
    for choice in _f(chunk, "choices") or ():
        index = _f(choice, "index") or 0
        logprobs = _f(choice, "logprobs")
        scored = False
        if logprobs is not None:
            # Refusal and reasoning tokens are generated tokens: they count too.
            for key in ("content", "refusal"):
                for e in _f(logprobs, key) or ():
                    tokens.append(
                        make_token(index, _f(e, "token") or "", _f(e, "logprob"), _alternatives(_f(e, "top_logprobs")))
                    )
                    scored = True
        if not scored and _has_text(_f(choice, "delta") or _f(choice, "message")):
            unscored += 1
    return Parsed(tokens, unscored, error_message(chunk))


def parse_openai_completions(chunk: Any) -> Parsed:
    """OpenAI legacy Completions (and vLLM, llama-cpp-python): parallel lists per chunk."""
    tokens: list[Token] = []
    unscored = 0
    for choice in _f(chunk, "choices") or ():
        index = _f(choice, "index") or 0
        logprobs = _f(choice, "logprobs")
        values = _f(logprobs, "token_logprobs") if logprobs is not None else None
        if not values:
            if _f(choice, "text"):
                unscored += 1
            continue
        texts = _f(logprobs, "tokens") or ()
        tops = _f(logprobs, "top_logprobs") or ()
        for j, raw in enumerate(values):
            top = tops[j] if j < len(tops) else None
            # top_logprobs here is a dict token -> logprob (duplicate tokens collapse).
            tokens.append(make_token(index, texts[j] if j < len(texts) else "", raw, top.values() if top else ()))
    return Parsed(tokens, unscored, error_message(chunk))


def parse_openai_responses(chunk: Any) -> Parsed:
    """OpenAI Responses API events: logprobs ride on ``response.output_text.delta``."""
    kind = _f(chunk, "type")
    if kind == "response.output_text.delta":
        entries = _f(chunk, "logprobs")
        if not entries:
            return Parsed([], 1 if _f(chunk, "delta") else 0)
        return Parsed(
            [make_token(0, _f(e, "token") or "", _f(e, "logprob"), _alternatives(_f(e, "top_logprobs"))) for e in entries]
        )
    if kind == "response.failed":
        return Parsed([], 0, error_message(_f(chunk, "response")) or "response.failed")
    # Other events (created, done, output_text.done which repeats the logprobs) add nothing.
    return Parsed([], 0, error_message(chunk))


def parse_llamacpp_native(chunk: Any) -> Parsed:
    """llama.cpp ``/completion``: ``logprob`` mode, or ``prob`` mode with ``post_sampling_probs``."""
    entries = _f(chunk, "completion_probabilities")
    if not entries:
        return Parsed([], 1 if _f(chunk, "content") else 0, error_message(chunk))
    index = _f(chunk, "index") or 0
    tokens = []
    for e in entries:
        if "prob" in e and "logprob" not in e:
            tokens.append(make_token(index, e.get("token") or "", e["prob"], _alternatives(e.get("top_probs"), "prob"), True))
        else:
            tokens.append(make_token(index, e.get("token") or "", e.get("logprob"), _alternatives(e.get("top_logprobs"))))
    return Parsed(tokens)


def parse_tgi(chunk: Any) -> Parsed:
    """Hugging Face TGI ``/generate_stream``: one ``token`` per event, ``top_tokens`` beside it."""
    token = _f(chunk, "token")
    if not token:
        return Parsed([], 0, error_message(chunk))
    return Parsed([make_token(0, _f(token, "text") or "", _f(token, "logprob"), _alternatives(_f(chunk, "top_tokens")))])


def parse_ollama(chunk: Any) -> Parsed:
    """Ollama native ``/api/chat`` and ``/api/generate`` NDJSON: a ``logprobs`` list beside the message."""
    entries = _f(chunk, "logprobs")
    if not entries:
        message = _f(chunk, "message")
        text = (_f(message, "content") or _f(message, "thinking")) if message else _f(chunk, "response")
        return Parsed([], 1 if text else 0, error_message(chunk))
    return Parsed(
        [make_token(0, _f(e, "token") or "", _f(e, "logprob"), _alternatives(_f(e, "top_logprobs"))) for e in entries]
    )


#: Every format, by the name reports use.
FORMATS: dict[str, Callable[[Any], Parsed]] = {
    "openai-chat": parse_openai_chat,
    "openai-completions": parse_openai_completions,
    "openai-responses": parse_openai_responses,
    "llamacpp-native": parse_llamacpp_native,
    "tgi": parse_tgi,
    "ollama": parse_ollama,
}


def detect_format(chunk: Any) -> str | None:
    """The name of the format a chunk is in, or None when the chunk does not tell.

    Some chunks fit any format (``{"choices": []}``, an error event); detection then
    waits for the next one.
    """
    choices = _f(chunk, "choices")
    if choices is not None:
        obj = _f(chunk, "object")
        if obj == "chat.completion.chunk":
            return "openai-chat"
        if obj == "text_completion":
            return "openai-completions"
        for choice in choices:
            # "message": a non-streamed answer reads the same way.
            if _f(choice, "delta") is not None or _f(choice, "message") is not None:
                return "openai-chat"
            if _f(choice, "text") is not None:
                return "openai-completions"
        return None
    kind = _f(chunk, "type")
    if isinstance(kind, str) and kind.startswith("response."):
        return "openai-responses"
    if _f(chunk, "completion_probabilities") is not None or (
        _f(chunk, "content") is not None and _f(chunk, "stop") is not None
    ):
        return "llamacpp-native"
    if isinstance(_f(chunk, "token"), dict) or _f(chunk, "top_tokens") is not None:
        return "tgi"
    if _f(chunk, "done") is not None and (_f(chunk, "message") is not None or _f(chunk, "response") is not None):
        return "ollama"
    return None


def parse_chunk(chunk: Any, fmt: str | None = None) -> Parsed:
    """Tokens, unscored text and error of one chunk, in format ``fmt`` or the detected one."""
    if fmt is None:
        fmt = detect_format(chunk)
        if fmt is None:
            return Parsed([], 0, error_message(chunk))
    return FORMATS[fmt](chunk)
