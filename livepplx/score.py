"""Score a whole (non-streamed) response: the same statistics a stream of it would give.

:func:`score` reads the answer of a request sent without ``stream``: OpenAI chat
(``choices[].message`` with ``choices[].logprobs``) and legacy completions, a Responses
object (``output[].content[].logprobs``), llama.cpp's native ``/completion``, TGI's
``/generate`` (``details.tokens``), Ollama's ``/api/chat`` and Gemini's
``generateContent``: a decoded dict, its JSON text or bytes, or an openai SDK object
(``ChatCompletion``, ``Completion``, ``Response``). The parsers are the stream's own
(:mod:`livepplx.core.formats`), fed into a :class:`~livepplx.core.state.StreamState`, so a whole
answer and the stream of the same tokens cannot disagree.

>>> answer = {"object": "chat.completion", "choices": [{"index": 0, "finish_reason": "stop",
...     "message": {"role": "assistant", "content": "Hi!"},
...     "logprobs": {"content": [{"token": "Hi", "logprob": -0.5, "top_logprobs": []},
...                              {"token": "!", "logprob": -1.5, "top_logprobs": []}]}}]}
>>> state = score(answer)
>>> state.tokens, round(state.ppl, 4), state.summary()["error"]   # exp(1.0)
(2, 2.7183, None)
"""

from __future__ import annotations

import json
import reprlib
from typing import TYPE_CHECKING, Any

from .core.errors import HOW_TO_ASK_WHOLE, NoLogprobsError, ServerStreamError, StreamFormatError
from .core.formats import error_message
from .core.state import MonitorOptions, StreamState

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from .core.state import MonitorKeywords

__all__ = ["score"]

_PREFIX = "not a response livepplx can read"


def score(response: Any, options: MonitorOptions | None = None, **keywords: Unpack[MonitorKeywords]) -> StreamState:
    """The finished :class:`~livepplx.core.state.StreamState` of a whole response.

    Args:
        response: a decoded JSON object; its JSON text (``str``) or bytes; an openai SDK
            response object; or a JSON array of such objects, read in order (Gemini's
            ``streamGenerateContent?alt=json`` answers with one).
        options, **keywords: :class:`~livepplx.core.state.MonitorOptions` or its fields
            (``window``, ``vocab_size``, ``on_missing_logprobs``, ...). Triggers see every
            token as a stream would, but nothing is left to stop.

    Returns:
        the state after its last token: ``.summary()``, ``.ppl``, ``.choice(i)``, ... as for
        a stream. Its ``error`` says when the response lacks its format's end mark.

    Raises:
        StreamFormatError: not a response livepplx can read (not JSON, or in no format it
            knows); the message shows its top-level keys.
        ServerStreamError: the response is a server's error object (``{"error": ...}``).
        NoLogprobsError: a readable response without one usable logprob (unless
            ``on_missing_logprobs`` says otherwise).
    """
    value = _decode(response)
    parts = list(value) if isinstance(value, (list, tuple)) else [value]
    for part in parts:
        if isinstance(part, (str, bytes, bytearray, memoryview)) or part is None:
            raise StreamFormatError(f"{_PREFIX}: {_describe(value)}")  # never decoded again as a stream
    state = StreamState(options, **keywords)
    errors = []
    try:
        for part in parts:
            message = error_message(part)
            if message:
                errors.append(message)
            state.handle(part)
        state.finish()
    except NoLogprobsError:
        pass  # said below, in a response's words
    summary = state.summary()
    if errors or state.server_error is not None:  # a failed, blocked or error answer: the server's own words
        raise ServerStreamError(f"the response is an error: {errors[0] if errors else state.server_error}")
    if summary["format"] is None:
        raise StreamFormatError(f"{_PREFIX}: {_describe(value)}; it reads OpenAI chat, completions and "
                                "Responses answers, llama.cpp /completion, TGI /generate, Ollama and Gemini ones")
    if state.unreadable:
        raise StreamFormatError(f"{_PREFIX}: {state.error}")
    if not any(choice["tokens"] for choice in summary["choices"]) and state.options.on_missing_logprobs == "raise":
        tokens = sum(choice["skipped"] for choice in summary["choices"])
        if tokens:
            detail = f"every one of the response's {tokens} tokens came without a usable logprob (null, NaN or positive)"
        else:
            detail = "the response carried no logprobs"
        raise NoLogprobsError(detail, hint=HOW_TO_ASK_WHOLE)
    return state


def _decode(response: Any) -> Any:
    """The response as a decoded value: JSON text and bytes are parsed, the rest kept."""
    if isinstance(response, (bytes, bytearray, memoryview)):
        try:
            response = bytes(response).decode("utf-8-sig")
        except UnicodeDecodeError as e:
            raise StreamFormatError(f"{_PREFIX}: not UTF-8 text (invalid byte at {e.start})") from None
    if isinstance(response, str):
        try:
            return json.loads(response)
        except RecursionError:
            raise StreamFormatError(f"{_PREFIX}: its JSON is nested too deeply") from None
        except ValueError as e:  # JSONDecodeError, and ints past Python's digit limit
            raise StreamFormatError(f"{_PREFIX}: not JSON ({e}): {_snippet(response)}") from None
    return response


def _describe(value: Any) -> str:
    """What the response looked like: its top-level keys, or its type."""
    if isinstance(value, dict):
        keys = list(value)
        shown = ", ".join(_snippet(k, 30) for k in keys[:12])
        more = f", ... ({len(keys)} keys)" if len(keys) > 12 else ""
        return f"a JSON object with keys {{{shown}{more}}}" if keys else "an empty JSON object"
    if isinstance(value, (list, tuple)):
        kinds = sorted({type(v).__name__ for v in value})
        return f"a JSON array of {len(value)} values ({', '.join(kinds) or 'empty'})"
    fields = getattr(type(value), "model_fields", None)
    if isinstance(fields, dict):
        return f"a {type(value).__name__} object with fields {{{', '.join(list(fields)[:12])}}}"
    return f"a {type(value).__name__}: {_snippet(value)}"


def _snippet(value: Any, limit: int = 60) -> str:
    try:
        text = value if isinstance(value, str) else reprlib.repr(value)
    except Exception:  # a repr that fails says nothing more than the type
        text = f"<{type(value).__name__}>"
    return repr(text if len(text) <= limit else text[:limit] + "...")
