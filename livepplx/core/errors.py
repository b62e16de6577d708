"""Exceptions livepplx raises; each message says what to do about it."""

from __future__ import annotations

__all__ = [
    "LivepplxError",
    "StreamFormatError",
    "NoLogprobsError",
    "ServerStreamError",
    "StreamErrorEvent",
    "TooManyChoicesError",
    "NotAStreamError",
    "CallbackError",
    "CalibrationError",
]

#: What to send, said once for every message that needs it.
HOW_TO_ASK = (
    "send stream=True, logprobs=True and top_logprobs (e.g. 5) with the request; "
    "llama-cpp-python returns none without top_logprobs, vLLM none for an explicit "
    '"top_logprobs": null, and LM Studio accepts the parameter and returns nothing'
)
#: The same advice for a whole (non-streamed) response.
HOW_TO_ASK_WHOLE = (
    "send logprobs=True and top_logprobs (e.g. 5) with the request (legacy completions: logprobs=5; "
    'Responses: include=["message.output_text.logprobs"]; Gemini: responseLogprobs and logprobs)'
)


class LivepplxError(Exception):
    """Base class of every error livepplx raises on purpose."""


class StreamFormatError(LivepplxError, ValueError):
    """The input is not a stream livepplx can read (not SSE/NDJSON, not JSON, truncated)."""


class NoLogprobsError(LivepplxError):
    """The stream carries generated text but no logprobs: the request did not ask for them."""

    def __init__(self, detail: str = "the stream carried no logprobs", hint: str = HOW_TO_ASK) -> None:
        super().__init__(f"{detail}: {hint}")


class ServerStreamError(LivepplxError):
    """The server sent an error event in the middle of the stream; the statistics so far are kept."""


#: The 0.1 name of :class:`ServerStreamError`, kept so existing ``except`` clauses still match.
StreamErrorEvent = ServerStreamError


class TooManyChoicesError(StreamFormatError):
    """The stream named more distinct choice indexes than ``max_choices`` allows."""


class NotAStreamError(LivepplxError, TypeError):
    """A whole (non-streamed) response was given where a stream was expected."""


class CallbackError(LivepplxError):
    """A trigger's callback or escalation raised; the stream was already closed, its statistics kept.

    The original exception is ``__cause__``.
    """


class CalibrationError(LivepplxError, ValueError):
    """The labelled data cannot support the fit asked for, or a calibration is not valid."""
