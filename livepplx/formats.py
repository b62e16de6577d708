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


def _getter(obj: Any) -> Callable[[Any, str, Any], Any]:
    """How to read fields from this chunk and everything in it: ``get(obj, name, None)``.

    Both are C builtins, so reading a field costs no Python call; SDK objects are read
    only by their declared fields, since a missing attribute costs pydantic an exception.
    """
    return dict.get if type(obj) is dict else getattr  # type: ignore[return-value]


def error_message(chunk: Any) -> str | None:
    """The message of an error event (``{"error": ...}`` in any server's shape), else None."""
    get = _getter(chunk)
    err = get(chunk, "error", None)
    if not err:
        if get(chunk, "type", None) == "error":  # the Responses API's error event
            return str(get(chunk, "message", None) or get(chunk, "code", None) or "error event")
        return None
    if isinstance(err, str):
        return err
    message = _getter(err)(err, "message", None)
    return str(message) if message else str(err)


def _dict_error(chunk: Any) -> str | None:
    # The openai SDK raises on error chunks itself: only decoded dicts can carry one here.
    return error_message(chunk) if type(chunk) is dict else None


def _has_text(get: Callable[[Any, str, Any], Any], delta: Any) -> bool:
    if delta is None:
        return False
    for key in ("content", "refusal", "reasoning_content", "reasoning"):
        if get(delta, key, None):
            return True
    return False


def _entry_token(index: int, e: Any) -> Token:
    """One ``{token, logprob, top_logprobs: [{logprob}]}`` entry (chat, responses, ollama).

    The entry picks its own getter: an SDK object can hold plain dicts in fields it does
    not declare (llama-server's ``logprobs.content`` in a Completion).
    """
    get = _getter(e)
    tops = get(e, "top_logprobs", None)
    return make_token(
        index, get(e, "token", None) or "", get(e, "logprob", None), [get(a, "logprob", None) for a in tops] if tops else ()
    )


def parse_openai_chat(chunk: Any) -> Parsed:
    """OpenAI Chat Completions (and vLLM, SGLang, llama.cpp, Ollama /v1, TGI /v1)."""
    get = _getter(chunk)
    tokens: list[Token] = []
    unscored = 0
    for choice in get(chunk, "choices", None) or ():
        index = get(choice, "index", None) or 0
        logprobs = get(choice, "logprobs", None)
        scored = False
        if logprobs is not None:
            # Refusal and reasoning tokens are generated tokens: they count too.
            for key in ("content", "refusal"):
                for e in get(logprobs, key, None) or ():
                    tokens.append(_entry_token(index, e))
                    scored = True
        if not scored and _has_text(get, get(choice, "delta", None) or get(choice, "message", None)):
            unscored += 1
    return Parsed(tokens, unscored, _dict_error(chunk))


def parse_openai_completions(chunk: Any) -> Parsed:
    """OpenAI legacy Completions (and vLLM, llama-cpp-python): parallel lists per chunk."""
    get = _getter(chunk)
    tokens: list[Token] = []
    unscored = 0
    for choice in get(chunk, "choices", None) or ():
        index = get(choice, "index", None) or 0
        logprobs = get(choice, "logprobs", None)
        values = get(logprobs, "token_logprobs", None) if logprobs is not None else None
        if not values:
            # Upstream llama-server writes the chat shape (logprobs.content) here.
            entries = get(logprobs, "content", None) if logprobs is not None else None
            if entries:
                tokens += [_entry_token(index, e) for e in entries]
            elif get(choice, "text", None):
                unscored += 1
            continue
        texts = get(logprobs, "tokens", None) or ()
        tops = get(logprobs, "top_logprobs", None) or ()
        for j, raw in enumerate(values):
            top = tops[j] if j < len(tops) else None
            # top_logprobs here is a dict token -> logprob (duplicate tokens collapse).
            tokens.append(make_token(index, texts[j] if j < len(texts) else "", raw, top.values() if top else ()))
    return Parsed(tokens, unscored, _dict_error(chunk))


def parse_openai_responses(chunk: Any) -> Parsed:
    """OpenAI Responses API events: logprobs ride on ``response.output_text.delta``."""
    get = _getter(chunk)
    kind = get(chunk, "type", None)
    if kind == "response.output_text.delta":
        entries = get(chunk, "logprobs", None)
        if not entries:
            return Parsed([], 1 if get(chunk, "delta", None) else 0)
        return Parsed([_entry_token(0, e) for e in entries])
    if kind == "response.failed":
        return Parsed([], 0, error_message(get(chunk, "response", None)) or "response.failed")
    if kind == "error":
        return Parsed([], 0, error_message(chunk))
    # Other events (created, done, output_text.done which repeats the logprobs) add nothing.
    return Parsed([], 0, _dict_error(chunk))


def parse_llamacpp_native(chunk: Any) -> Parsed:
    """llama.cpp ``/completion``: ``logprob`` mode, or ``prob`` mode with ``post_sampling_probs``."""
    get = _getter(chunk)
    entries = get(chunk, "completion_probabilities", None)
    if not entries:
        return Parsed([], 1 if get(chunk, "content", None) else 0, _dict_error(chunk))
    index = get(chunk, "index", None) or 0
    tokens = []
    for e in entries:
        if "prob" in e and "logprob" not in e:
            tops = e.get("top_probs") or ()
            tokens.append(make_token(index, e.get("token") or "", e["prob"], [a.get("prob") for a in tops], True))
        else:
            tokens.append(_entry_token(index, e))
    return Parsed(tokens)


def parse_tgi(chunk: Any) -> Parsed:
    """Hugging Face TGI ``/generate_stream``: one ``token`` per event, ``top_tokens`` beside it."""
    get = _getter(chunk)
    token = get(chunk, "token", None)
    if not token:
        return Parsed([], 0, _dict_error(chunk))
    tops = get(chunk, "top_tokens", None) or ()
    return Parsed([make_token(0, get(token, "text", None) or "", get(token, "logprob", None),
                              [get(a, "logprob", None) for a in tops])])


def parse_ollama(chunk: Any) -> Parsed:
    """Ollama native ``/api/chat`` and ``/api/generate`` NDJSON: a ``logprobs`` list beside the message."""
    get = _getter(chunk)
    entries = get(chunk, "logprobs", None)
    if not entries:
        message = get(chunk, "message", None)
        text = _has_text(get, message) if message else get(chunk, "response", None)
        return Parsed([], 1 if text else 0, _dict_error(chunk))
    return Parsed([_entry_token(0, e) for e in entries])


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
    get = _getter(chunk)
    choices = get(chunk, "choices", None)
    if choices is not None:
        obj = get(chunk, "object", None)
        if obj == "chat.completion.chunk":
            return "openai-chat"
        if obj == "text_completion":
            return "openai-completions"
        for choice in choices:
            # "message": a non-streamed answer reads the same way.
            if get(choice, "delta", None) is not None or get(choice, "message", None) is not None:
                return "openai-chat"
            if get(choice, "text", None) is not None:
                return "openai-completions"
        return None
    kind = get(chunk, "type", None)
    if isinstance(kind, str) and kind.startswith("response."):
        return "openai-responses"
    if type(chunk) is not dict:
        return None  # the remaining formats come only as decoded JSON
    if "completion_probabilities" in chunk or ("content" in chunk and "stop" in chunk):
        return "llamacpp-native"
    if isinstance(chunk.get("token"), dict) or "top_tokens" in chunk:
        return "tgi"
    if "done" in chunk and ("message" in chunk or "response" in chunk):
        return "ollama"
    return None


def parse_chunk(chunk: Any, fmt: str | None = None) -> Parsed:
    """Tokens, unscored text and error of one chunk, in format ``fmt`` or the detected one."""
    if fmt is None:
        fmt = detect_format(chunk)
        if fmt is None:
            return Parsed([], 0, error_message(chunk))
    return FORMATS[fmt](chunk)
