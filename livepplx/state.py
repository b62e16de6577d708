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

import warnings
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Literal

from .errors import NoLogprobsError, StreamFormatError
from .formats import FORMATS, detect_format, error_message
from .sse import StreamDecoder
from .stats import DEFAULT_VOCAB_SIZE, ChoiceStats
from .tokens import SKIPPED, Token
from .triggers import Escalation, Trigger, TriggerEvent, min_tokens, ppl_above

__all__ = ["StreamState", "Stop", "Listener", "stop_above_trigger"]

MissingPolicy = Literal["raise", "warn", "ignore"]


@dataclass(frozen=True)
class Stop:
    """Why a stream was stopped."""

    #: the trigger's name, or why else it stopped (e.g. "interrupted")
    reason: str
    #: the choice whose statistics crossed
    choice: int
    #: that choice's token count when it stopped
    at_token: int

    def as_dict(self) -> dict[str, Any]:
        return {"reason": self.reason, "choice": self.choice, "at_token": self.at_token}


class Listener:
    """Told of a stream's life, never of each token (so it costs nothing per token).

    Subclass and override what you need; :mod:`livepplx.otel` is one.
    """

    def on_start(self, state: StreamState) -> None:
        """The state was made: the stream is about to be read."""

    def on_trigger(self, state: StreamState, event: TriggerEvent, trigger: Trigger) -> None:
        """A trigger fired (before its callback runs)."""

    def on_stop(self, state: StreamState, stop: Stop) -> None:
        """The stream was stopped early."""

    def on_end(self, state: StreamState) -> None:
        """The stream is over: the statistics are final."""


def stop_above_trigger(limit: float, warmup: int = 8) -> Trigger:
    """The ``stop_above`` shortcut: stop once any choice's running PPL exceeds ``limit``
    after ``warmup`` tokens."""
    return Trigger(ppl_above(limit) & min_tokens(warmup), stop=True, name=f"ppl above {limit:g}")


class StreamState:
    """Per-choice statistics of one stream, fed chunk by chunk. Does no I/O.

    Args:
        window: tokens in the windowed perplexity (default 64).
        ema_alpha: weight of the newest token in the moving perplexity (default ``2/(window+1)``).
        group_window: tokens in DeepConf's group confidence (default 2048).
        vocab_size: the model's vocabulary size, for the entropy upper bound.
        text_limit: characters of each choice's text kept for callbacks and views: the
            last 8192 by default, so memory stays bounded; ``None`` keeps all of it.
        triggers: :class:`Trigger` objects checked after every token of every choice.
        stop_above: shortcut for a trigger that stops once any choice's running PPL
            exceeds this after ``min_tokens`` tokens.
        min_tokens: the warm-up of ``stop_above`` (default 8).
        on_missing_logprobs: what to do when ``missing_after`` chunks of text arrived and
            not one logprob: ``"raise"`` :class:`NoLogprobsError` (default), ``"warn"``, ``"ignore"``.
        missing_after: how many chunks of text without logprobs prove the endpoint drops them (default 3).
        request: the request the stream was opened with, handed to escalation callbacks.
        listeners: objects told of the stream's life (:class:`Listener`): telemetry, for one.
    """

    def __init__(
        self,
        *,
        window: int = 64,
        ema_alpha: float | None = None,
        group_window: int = 2048,
        vocab_size: int = DEFAULT_VOCAB_SIZE,
        text_limit: int | None = 8192,
        triggers: Iterable[Trigger] = (),
        stop_above: float | None = None,
        min_tokens: int = 8,
        on_missing_logprobs: MissingPolicy = "raise",
        missing_after: int = 3,
        request: dict[str, Any] | None = None,
        listeners: Iterable[Listener] = (),
    ) -> None:
        if on_missing_logprobs not in ("raise", "warn", "ignore"):
            raise ValueError(f"on_missing_logprobs must be 'raise', 'warn' or 'ignore', got {on_missing_logprobs!r}")
        self._stats_options: dict[str, Any] = dict(window=window, ema_alpha=ema_alpha, group_window=group_window, vocab_size=vocab_size)
        ChoiceStats(**self._stats_options)  # check the options now, not at the first token
        self.text_limit = text_limit
        #: the detected wire format (a key of :data:`livepplx.formats.FORMATS`), None until known
        self.format: str | None = None
        #: statistics by choice index
        self.choices: dict[int, ChoiceStats] = {}
        #: the text of each choice (at most its last ``text_limit`` characters)
        self.texts: dict[int, str] = {}
        #: the message of a mid-stream error, or why reading stopped; None while all is well
        self.error: str | None = None
        #: chunks handled (decoded events, for raw input)
        self.chunks = 0
        #: chunks whose format could not be told
        self.unrecognized = 0
        #: pieces of generated text that came without logprobs
        self.unscored = 0
        #: why the stream stopped early, None while it runs
        self.stopped: Stop | None = None
        #: the latest trigger events, newest last (at most 100 kept)
        self.events: deque[TriggerEvent] = deque(maxlen=100)
        #: how many times each trigger fired, by name
        self.fired: dict[str, int] = {}
        self.request = dict(request or {})
        self.triggers = list(triggers)
        if stop_above is not None:
            self.triggers.append(stop_above_trigger(stop_above, min_tokens))
        self.on_missing_logprobs = on_missing_logprobs
        self.missing_after = missing_after
        self._missing_seen = False
        # Per choice: [trigger, its condition bound to this choice, armed?]
        self._armed: dict[int, list[list[Any]]] = {}
        #: functions called with (token, its choice's stats) after every counted token (views)
        self.observers: list[Callable[[Token, ChoiceStats], None]] = []
        #: told when a trigger fires, when the stream stops, and when it ends (not per token)
        self.listeners: list[Listener] = list(listeners)
        self._ended = False
        for listener in self.listeners:
            listener.on_start(self)
        self._decoder: StreamDecoder | None = None

    # -- input ------------------------------------------------------------------------

    def handle(self, chunk: Any) -> list[Token]:
        """Take one chunk; return the tokens it carried.

        ``bytes`` are raw stream bytes, split anywhere; a ``str`` is one line or more of
        SSE/NDJSON text (the trailing newline is optional, as from ``iter_lines()``);
        anything else is a decoded chunk (a dict or an openai SDK object). Once the
        stream is stopped, nothing more is counted.
        """
        if self.stopped is not None:
            return []  # a stopped stream counts nothing more
        if isinstance(chunk, (bytes, bytearray, memoryview)):
            return self._handle_raw(chunk)
        if isinstance(chunk, str):
            return self._handle_raw(chunk if chunk.endswith("\n") else chunk + "\n")
        return self._handle_object(chunk)

    def finish(self) -> None:
        """The input ended: flush raw input, record a truncated stream as the error, and
        apply the missing-logprobs policy to a stream too short to have shown it."""
        if self._decoder is not None:
            try:
                events = self._decoder.close()
            except StreamFormatError as e:
                self.error = self.error or str(e)
                return
            for event in events:
                self._handle_object(event.data)
        if self.unscored and not self.choices:
            self._missing_logprobs()

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
            if self.stopped is not None:
                break
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
        if parsed.unscored:
            self.unscored += parsed.unscored
            if not self.choices and self.unscored >= self.missing_after:
                self._missing_logprobs()
        for token in parsed.tokens:
            self._add(token)
            if self.stopped is not None:
                break  # what follows the crossing token in the same chunk is not counted
        return parsed.tokens

    def _missing_logprobs(self) -> None:
        if self._missing_seen or self.on_missing_logprobs == "ignore":
            return
        self._missing_seen = True
        error = NoLogprobsError(f"{self.unscored} chunks of generated text came without logprobs")
        if self.on_missing_logprobs == "warn":
            warnings.warn(str(error), RuntimeWarning, stacklevel=4)
            return
        self.error = self.error or str(error)
        raise error

    def _add(self, token: Token) -> None:
        index = token.choice
        stats = self.choices.get(index)
        if stats is None:
            stats = self.choices[index] = ChoiceStats(index, **self._stats_options)
            self.texts[index] = ""
            self._armed[index] = [[t, t.when.bind(), True] for t in self.triggers]
        stats.update(token)
        if token.text:
            text = self.texts[index] + token.text
            limit = self.text_limit
            if limit is not None and len(text) > limit:
                text = text[-limit:] if limit else ""
            self.texts[index] = text
        if token.status is not SKIPPED:
            for observe in self.observers:
                observe(token, stats)
            for slot in self._armed[index]:
                if slot[1](stats):
                    if slot[2]:
                        slot[2] = False
                        self._fire(slot[0], stats, token.text)
                else:
                    slot[2] = True  # the value came back: the next crossing fires again

    def _fire(self, trigger: Trigger, stats: ChoiceStats, token: str) -> None:
        event = TriggerEvent(trigger.name, stats.index, stats.tokens, token, stats.as_dict(), self.text(stats.index))
        self.events.append(event)
        self.fired[trigger.name] = self.fired.get(trigger.name, 0) + 1
        for listener in self.listeners:
            listener.on_trigger(self, event, trigger)
        if trigger.stop and self.stopped is None:
            self._stopped(Stop(trigger.name, stats.index, stats.tokens))
        trigger.call(event)
        if trigger.escalate is not None:
            trigger.escalate(Escalation(event, self.request))

    def stop(self, reason: str, choice: int = 0) -> None:
        """Mark the stream stopped from outside (a user's decision, Ctrl-C)."""
        if self.stopped is None:
            self._stopped(Stop(reason, choice, self.choice(choice).tokens))

    def _stopped(self, stop: Stop) -> None:
        self.stopped = stop
        for listener in self.listeners:
            listener.on_stop(self, stop)

    def end(self) -> None:
        """The stream is over (read to its end, stopped, failed or closed): tell the listeners, once."""
        if self._ended:
            return
        self._ended = True
        for listener in self.listeners:
            listener.on_end(self)

    # -- output -----------------------------------------------------------------------

    def choice(self, index: int = 0) -> ChoiceStats:
        """The statistics of one choice (an empty one if it has no token yet)."""
        stats = self.choices.get(index)
        return stats if stats is not None else ChoiceStats(index, **self._stats_options)

    def text(self, index: int = 0) -> str:
        """The choice's text so far (at most its last ``text_limit`` characters)."""
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
        choices = [self.choices[i].as_dict() for i in sorted(self.choices)]
        first = choices[0] if 0 in self.choices else self.choice(0).as_dict()
        return {
            "format": self.format,
            "tokens": first["tokens"],
            "ppl": first["ppl"],
            "choices": choices,
            "error": self.error,
            "stopped": self.stopped.as_dict() if self.stopped else None,
        }

