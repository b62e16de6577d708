"""The I/O-free state of one monitored stream: chunks in, statistics out.

:class:`StreamState` takes chunks one at a time (openai SDK objects, dicts, or raw
SSE/NDJSON bytes and lines), finds the format, keeps one :class:`ChoiceStats` per
choice, and summarises. The sync and async wrappers, the CLI and the gauge all
drive this one object, so they cannot disagree.

>>> state = StreamState()
>>> _ = state.handle('data: {"choices": [{"index": 0, "delta": {"content": "Hi"}, '
...                  '"logprobs": {"content": [{"token": "Hi", "logprob": -0.5}]}}]}')
>>> _ = state.handle("")          # the blank line that ends the SSE event
>>> state.format, state.tokens, round(state.ppl, 4)
('openai-chat', 1, 1.6487)
"""

from __future__ import annotations

from typing import Any

from .errors import NoLogprobsError, StreamFormatError
from .formats import FORMATS, detect_format, error_message
from .sse import StreamDecoder
from .stats import DEFAULT_VOCAB_SIZE, ChoiceStats
from .tokens import Token

__all__ = ["StreamState"]


class StreamState:
    """Per-choice statistics of one stream, fed chunk by chunk. Does no I/O.

    Args:
        window: tokens in the windowed perplexity (default 64).
        ema_alpha: weight of the newest token in the moving perplexity (default ``2/(window+1)``).
        group_window: tokens in DeepConf's group confidence (default 2048).
        vocab_size: the model's vocabulary size, for the entropy upper bound.
        text_limit: characters of each choice's text kept for callbacks and views
            (default 8192; ``None`` keeps all of it, which makes memory grow with the answer).
    """

    def __init__(
        self,
        *,
        window: int = 64,
        ema_alpha: float | None = None,
        group_window: int = 2048,
        vocab_size: int = DEFAULT_VOCAB_SIZE,
        text_limit: int | None = 8192,
    ) -> None:
        self._stats_options = dict(window=window, ema_alpha=ema_alpha, group_window=group_window, vocab_size=vocab_size)
        ChoiceStats(**self._stats_options)  # check the options now, not at the first token
        self.text_limit = text_limit
        #: the detected wire format (a key of :data:`livepplx.formats.FORMATS`), None until known
        self.format: str | None = None
        #: statistics by choice index
        self.choices: dict[int, ChoiceStats] = {}
        #: the text of each choice (its last ``text_limit`` characters)
        self.texts: dict[int, str] = {}
        #: the message of a mid-stream error, or why reading stopped; None while all is well
        self.error: str | None = None
        #: chunks handled (decoded events, for raw input)
        self.chunks = 0
        #: chunks whose format could not be told
        self.unrecognized = 0
        #: pieces of generated text that came without logprobs
        self.unscored = 0
        self._decoder: StreamDecoder | None = None

    # -- input ------------------------------------------------------------------------

    def handle(self, chunk: Any) -> list[Token]:
        """Take one chunk; return the tokens it carried.

        ``bytes`` are raw stream bytes, split anywhere; a ``str`` is one line or more of
        SSE/NDJSON text (the trailing newline is optional, as from ``iter_lines()``);
        anything else is a decoded chunk (a dict or an openai SDK object).
        """
        if isinstance(chunk, (bytes, bytearray, memoryview)):
            return self._handle_raw(chunk)
        if isinstance(chunk, str):
            return self._handle_raw(chunk if chunk.endswith("\n") else chunk + "\n")
        return self._handle_object(chunk)

    def finish(self) -> None:
        """The input ended: flush raw input, and record a truncated stream as the error."""
        if self._decoder is None:
            return
        try:
            events = self._decoder.close()
        except StreamFormatError as e:
            self.error = self.error or str(e)
            return
        for event in events:
            self._handle_object(event.data)

    def _handle_raw(self, data: bytes | bytearray | memoryview | str) -> list[Token]:
        if self._decoder is None:
            self._decoder = StreamDecoder()
        try:
            events = self._decoder.feed(data)
        except StreamFormatError as e:
            self.error = self.error or str(e)
            raise
        if len(events) == 1:
            return self._handle_object(events[0].data)
        tokens: list[Token] = []
        for event in events:
            tokens += self._handle_object(event.data)
        return tokens

    def _handle_object(self, chunk: Any) -> list[Token]:
        self.chunks += 1
        fmt = self.format
        if fmt is None:
            fmt = detect_format(chunk)
            if fmt is None:
                message = error_message(chunk)
                if message:
                    self.error = self.error or message
                else:
                    self.unrecognized += 1
                return []
            self.format = fmt
        parsed = FORMATS[fmt](chunk)
        if parsed.error:
            self.error = self.error or parsed.error
        self.unscored += parsed.unscored
        for token in parsed.tokens:
            self._add(token)
        return parsed.tokens

    def _add(self, token: Token) -> None:
        index = token.choice
        stats = self.choices.get(index)
        if stats is None:
            stats = self.choices[index] = ChoiceStats(index, **self._stats_options)
            self.texts[index] = ""
        stats.update(token)
        if token.text:
            text = self.texts[index] + token.text
            limit = self.text_limit
            # Trim in steps of `limit` so the copy is amortised O(1) per character.
            if limit is not None and len(text) > 2 * limit:
                text = text[-limit:]
            self.texts[index] = text

    # -- output -----------------------------------------------------------------------

    def choice(self, index: int = 0) -> ChoiceStats:
        """The statistics of one choice (an empty one if it has no token yet)."""
        stats = self.choices.get(index)
        return stats if stats is not None else ChoiceStats(index, **self._stats_options)

    def text(self, index: int = 0) -> str:
        """The choice's text so far (its last ``text_limit`` characters or more)."""
        return self.texts.get(index, "")

    @property
    def tokens(self) -> int:
        """Choice 0's token count."""
        return self.choice(0).tokens

    @property
    def ppl(self) -> float:
        """Choice 0's running perplexity (NaN before its first token)."""
        return self.choice(0).ppl

    @property
    def total_tokens(self) -> int:
        return sum(s.tokens for s in self.choices.values())

    def check_logprobs(self) -> None:
        """Raise :class:`NoLogprobsError` if text arrived but no logprob did."""
        if not self.choices and (self.unscored or not self.error):
            detail = (
                f"{self.unscored} chunks of generated text came without logprobs"
                if self.unscored
                else "the stream carried no logprobs"
            )
            raise NoLogprobsError(detail)

    def summary(self) -> dict[str, Any]:
        """The JSON-ready report: format, choice 0's tokens and ppl, every choice, the error."""
        first = self.choice(0).as_dict()
        return {
            "format": self.format,
            "tokens": first["tokens"],
            "ppl": first["ppl"],
            "choices": [self.choices[i].as_dict() for i in sorted(self.choices)],
            "error": self.error,
        }

