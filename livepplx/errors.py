"""Exceptions livepplx raises; each message says what to do about it."""

from __future__ import annotations

__all__ = ["LivepplxError", "StreamFormatError", "NoLogprobsError", "StreamErrorEvent"]

#: What to send, said once for every message that needs it.
HOW_TO_ASK = (
    "send stream=True, logprobs=True and top_logprobs (e.g. 5) with the request; "
    "llama-cpp-python returns none without top_logprobs, vLLM none for an explicit "
    '"top_logprobs": null, and LM Studio accepts the parameter and returns nothing'
)


class LivepplxError(Exception):
    """Base class of every error livepplx raises on purpose."""


class StreamFormatError(LivepplxError, ValueError):
    """The input is not a stream livepplx can read (not SSE/NDJSON, not JSON, truncated)."""


class NoLogprobsError(LivepplxError):
    """The stream carries generated text but no logprobs: the request did not ask for them."""

    def __init__(self, detail: str = "the stream carried no logprobs") -> None:
        super().__init__(f"{detail}: {HOW_TO_ASK}")


class StreamErrorEvent(LivepplxError):
    """The server sent an error event in the middle of the stream."""
