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

The state never runs a trigger's callback itself: it records what fired, and whoever
drives it (:func:`~livepplx.monitor`, the CLI) closes the source first when the stream
was stopped, then runs what :meth:`StreamState.take_due` hands over. Reading rules
(the README's "What livepplx reads, and what it refuses"):

* A stream is *complete* when its own end was read: ``[DONE]``, a ``finish_reason`` (or
  its format's end event) for every choice that appeared. One that just stops is
  *truncated*: :attr:`StreamState.error` says so and the statistics cover what was read.
* A stream none of whose chunks is in a known format is an error ("not a stream livepplx
  can read"), not "0 tokens"; one whose every token was skipped has "no logprobs".
"""

from __future__ import annotations

import reprlib
import warnings
from collections import deque
from dataclasses import dataclass, fields, replace
from operator import attrgetter
from typing import TYPE_CHECKING, Any, Callable, Iterable, Literal, TypedDict

from .errors import NoLogprobsError, StreamFormatError, TooManyChoicesError
from .formats import (
    FAST_PARSERS, Reader, FORMATS, TYPED_ARRAY_DECODERS, TYPED_DECODERS, TYPED_READERS, Parsed, detect_format,
    error_message,
)
from .sse import MAX_EVENT_BYTES, StreamDecoder
from .stats import DEFAULT_VOCAB_SIZE, ChoiceStats
from .tokens import SKIPPED, Token
from .triggers import Armed, Escalation, Trigger, TriggerEvent, min_tokens, ppl_above
from .triggers import _no_callback as _no_call

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = ["StreamState", "MonitorOptions", "MonitorKeywords", "Stop", "Listener", "Due", "stop_above_trigger"]

MissingPolicy = Literal["raise", "warn", "ignore"]
#: The most memory the rolling windows of one stream's choices may reserve (1 GiB).
WINDOW_MEMORY_BUDGET = 1 << 30
TokenHook = Callable[[Token, ChoiceStats], None]


@dataclass(frozen=True)
class Stop:
    """Why a stream was stopped."""

    #: the trigger's name, or why else it stopped (e.g. "interrupted", "idle timeout")
    reason: str
    #: the choice whose statistics crossed
    choice: int
    #: that choice's token count when it stopped
    at_token: int

    def as_dict(self) -> dict[str, Any]:
        return {"reason": self.reason, "choice": self.choice, "at_token": self.at_token}


class Listener:
    """Told of a stream's life, never of each token (so it costs nothing per token).

    Listeners are told inline, as the state records each thing: they must not block.
    Subclass and override what you need; :mod:`livepplx.integrations.otel` is one.
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


def _whole(name: str, value: Any, low: int, high: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        bound = f"from {low} to {high:,}" if high is not None else f">= {low}"
        raise ValueError(f"{name} must be a whole number {bound}, got {value!r}")


@dataclass(frozen=True)
class MonitorOptions:
    """How one stream is watched: every option of :class:`StreamState`, checked once.

    Args:
        window: tokens in the windowed perplexity (default 64).
        ema_alpha: weight of the newest token in the moving perplexity (default ``2/(window+1)``).
        group_window: tokens in DeepConf's group confidence (default 2048).
        vocab_size: the model's vocabulary size, for the entropy upper bound only; a
            per-model setting (default 262,144, Gemma 3's).
        text_limit: characters of each choice's text kept for callbacks and views: the
            last 8192 by default, so memory stays bounded; ``None`` keeps all of it.
        triggers: :class:`Trigger` objects checked after every counted token of every choice.
        stop_above: shortcut for a trigger that stops once any choice's running PPL
            exceeds this after ``min_tokens`` tokens.
        min_tokens: the warm-up of ``stop_above`` (default 8).
        on_missing_logprobs: what to do when ``missing_after`` chunks of text arrived and
            not one logprob: ``"raise"`` :class:`NoLogprobsError` (default), ``"warn"``, ``"ignore"``.
        missing_after: how many chunks of text without logprobs prove the endpoint drops them (default 3).
        max_choices: distinct choice indexes one stream may name (default 256; each costs
            about 34 kB); past it, :class:`~livepplx.core.errors.TooManyChoicesError`.
        max_event_bytes: the longest line or event raw input may have (default 8 MiB);
            a longer one is malformed (:class:`~livepplx.core.sse.StreamDecoder`).
        listeners: objects told of the stream's life (:class:`Listener`): telemetry, for one.
    """

    window: int = 64
    ema_alpha: float | None = None
    group_window: int = 2048
    vocab_size: int = DEFAULT_VOCAB_SIZE
    text_limit: int | None = 8192
    triggers: tuple[Trigger, ...] = ()
    stop_above: float | None = None
    min_tokens: int = 8
    on_missing_logprobs: MissingPolicy = "raise"
    missing_after: int = 3
    max_choices: int = 256
    max_event_bytes: int = MAX_EVENT_BYTES
    listeners: tuple[Listener, ...] = ()

    def __post_init__(self) -> None:
        # Lists are welcome as arguments; the options stay immutable.
        object.__setattr__(self, "triggers", tuple(self.triggers))
        object.__setattr__(self, "listeners", tuple(self.listeners))
        for t in self.triggers:
            if not isinstance(t, Trigger):
                raise TypeError(f"triggers must be Trigger objects, got {t!r}: wrap a condition as Trigger(condition, ...)")
        if self.on_missing_logprobs not in ("raise", "warn", "ignore"):
            raise ValueError(f"on_missing_logprobs must be 'raise', 'warn' or 'ignore', got {self.on_missing_logprobs!r}")
        _whole("min_tokens", self.min_tokens, 0)
        _whole("missing_after", self.missing_after, 1)
        _whole("max_choices", self.max_choices, 1, 1 << 16)
        _whole("max_event_bytes", self.max_event_bytes, 1)
        if self.text_limit is not None:
            _whole("text_limit", self.text_limit, 0)
        if self.stop_above is not None:
            stop_above_trigger(self.stop_above)  # a number, or the trigger's own error
        ChoiceStats(**self.stats_options())  # window, group_window, ema_alpha, vocab_size: checked now

    def stats_options(self) -> dict[str, Any]:
        return {"window": self.window, "ema_alpha": self.ema_alpha, "group_window": self.group_window,
                "vocab_size": self.vocab_size}


class MonitorKeywords(TypedDict, total=False):
    """The fields of :class:`MonitorOptions`, as typed keyword arguments."""

    window: int
    ema_alpha: float | None
    group_window: int
    vocab_size: int
    text_limit: int | None
    triggers: Iterable[Trigger]
    stop_above: float | None
    min_tokens: int
    on_missing_logprobs: MissingPolicy
    missing_after: int
    max_choices: int
    max_event_bytes: int
    listeners: Iterable[Listener]


#: The names of every monitor option (what :func:`livepplx.stream` keeps apart from the request).
OPTION_NAMES = frozenset(f.name for f in fields(MonitorOptions))


def make_options(options: MonitorOptions | None, keywords: dict[str, Any]) -> MonitorOptions:
    """``options`` with ``keywords`` laid over it; an unknown name is a TypeError that lists the known ones."""
    unknown = set(keywords) - OPTION_NAMES
    if unknown:
        raise TypeError(f"unknown monitor option(s) {', '.join(sorted(unknown))}; the options are {', '.join(sorted(OPTION_NAMES))}")
    base = options if options is not None else MonitorOptions()
    return replace(base, **keywords) if keywords else base


@dataclass(frozen=True)
class Due:
    """A callback or escalation that a trigger's firing made due; the driver runs it."""

    trigger: Trigger
    #: ``"call"`` or ``"escalate"``
    kind: str
    #: the callback itself
    function: Callable[[Any], Any]
    #: what it is called with: a :class:`TriggerEvent`, or an :class:`Escalation`
    argument: Any


_text_of = attrgetter("text")
_RAW = (bytes, bytearray, memoryview, str)


def _snippet(chunk: Any, limit: int = 80) -> str:
    """What an unreadable chunk looked like, short and safe to print (repr escapes controls)."""
    if isinstance(chunk, dict):
        text = "{" + ", ".join(repr(k)[:40] for k in list(chunk)[:8]) + (", ..." if len(chunk) > 8 else "") + "}"
    elif isinstance(chunk, int) and not isinstance(chunk, bool) and chunk.bit_length() > 1000:
        text = f"int of {chunk.bit_length()} bits"  # repr() refuses ints past 4300 digits
    else:
        text = f"{type(chunk).__name__} {reprlib.repr(chunk)}"
    return text if len(text) <= limit else text[: limit - 3] + "..."


class StreamState:
    """Per-choice statistics of one stream, fed chunk by chunk. Does no I/O.

    Takes a :class:`MonitorOptions`, or its fields as keywords (``StreamState(stop_above=20)``),
    and ``request``: the request the stream was opened with, handed to escalations.
    """

    def __init__(
        self, options: MonitorOptions | None = None, *, request: dict[str, Any] | None = None,
        **keywords: Unpack[MonitorKeywords],
    ) -> None:
        self.options = opts = make_options(options, dict(keywords))
        self._stats_options = opts.stats_options()
        self.text_limit = opts.text_limit
        #: the detected wire format (a key of :data:`livepplx.core.formats.FORMATS`), None until known
        self.format: str | None = None
        #: statistics by choice index
        self.choices: dict[int, ChoiceStats] = {}
        # The text of each choice as pieces, joined when read: appending stays O(1) a token
        # even when the whole text is kept (text_limit=None).
        self._texts: dict[int, list[str]] = {}
        #: what went wrong, first thing first: a server's error event, a truncated or
        #: unreadable stream, missing logprobs, a failed callback; None while all is well
        self.error: str | None = None
        #: the message of the server's own error event, if it sent one
        self.server_error: str | None = None
        #: chunks that came after the server's error event: not counted (the answer had
        #: failed; what follows an error is no part of it), only counted here
        self.after_error = 0
        #: True when the stream ended without its end (see the module's rules)
        self.truncated = False
        #: True when nothing in it could be read: no known format, or every entry malformed
        self.unreadable = False
        #: chunks handled (decoded events, for raw input)
        self.chunks = 0
        #: chunks whose format could not be told (before it was known, or not a JSON object)
        self.unrecognized = 0
        #: entries that could not be read as tokens (wrong JSON types): skipped and counted
        self.malformed = 0
        #: pieces of generated text that came without logprobs
        self.unscored = 0
        #: choices whose end (``finish_reason`` or their format's end event) was read
        self.ended: set[int] = set()
        #: why the stream stopped early, None while it runs
        self.stopped: Stop | None = None
        #: the latest trigger events, newest last (at most 100 kept; see :attr:`events_dropped`)
        self.events: deque[TriggerEvent] = deque(maxlen=100)
        #: trigger events no longer in :attr:`events` (the oldest go first)
        self.events_dropped = 0
        #: how many times each trigger fired, by name
        self.fired: dict[str, int] = {}
        self.request = dict(request or {})
        self.triggers = list(opts.triggers)
        if opts.stop_above is not None:
            self.triggers.append(stop_above_trigger(opts.stop_above, opts.min_tokens))
        self.on_missing_logprobs = opts.on_missing_logprobs
        self.missing_after = opts.missing_after
        self._missing_seen = False
        self._first_unrecognized: str | None = None
        self._armed: dict[int, list[Armed]] = {}  # per choice, each trigger with its own arming
        self._token_hooks: list[TokenHook] = []
        #: callbacks and escalations made due and not yet taken (:meth:`take_due`)
        self.due: list[Due] = []
        #: told when a trigger fires, when the stream stops, and when it ends (not per token)
        self.listeners: list[Listener] = list(opts.listeners)
        self._ended = False
        self._finished = False
        self._decoder: StreamDecoder | None = None
        self._fast: Callable[[Any], tuple[list[Token], tuple[int, ...]] | None] | None = None
        self._read: Reader | None = None  # the reader of raw input's typed structs
        for listener in self.listeners:
            listener.on_start(self)

    # -- hooks --------------------------------------------------------------------------

    def on_token(self, hook: TokenHook) -> TokenHook:
        """Call ``hook(token, stats)`` after every counted token, before the triggers see it.

        For views and per-token callbacks (the gauge uses it): it runs inline, on the hot
        path, so it must be quick and do no I/O. Returns the hook, so it can decorate.
        """
        self._token_hooks.append(hook)
        return hook

    def take_due(self) -> list[Due]:
        """The callbacks and escalations made due since the last call, in the order to run
        them: every ``call`` in firing order, then every ``escalate``. The driver runs them
        (after closing the source, when the stream was stopped)."""
        due, self.due = self.due, []
        if len(due) > 1:
            due.sort(key=lambda d: d.kind == "escalate")  # stable: firing order kept within each kind
        return due

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
        if isinstance(chunk, _RAW):
            if isinstance(chunk, str):
                return self._handle_raw(chunk if chunk.endswith("\n") else chunk + "\n")
            return self._handle_raw(chunk)
        if self.server_error is not None:
            self.after_error += 1  # what follows a server's error event is no part of the answer
            return []
        return self._handle_object(chunk)

    def finish(self) -> None:
        """The input ended: flush raw input, then judge the stream as a whole: truncated,
        unreadable, or without logprobs (by ``on_missing_logprobs``). Idempotent."""
        if self._finished or self.stopped is not None:
            return
        self._finished = True
        if self._decoder is not None:
            try:
                events = [event.data for event in self._decoder.close()]
            except StreamFormatError as e:
                self.truncated = True
                self.fail(str(e))
                return
            self._handle_values(events)
        for pieces in self._texts.values():
            if len(pieces) > 1:
                self._collapse(pieces)  # the text as one string: what a stream holds after it, whatever its length
        if self.error is not None:
            return
        if self.format is None:
            if self.chunks == 0:
                self.truncated = True
                self.fail("the stream was empty: it ended before its first chunk")
            else:
                self.unreadable = True
                self.fail(
                    f"not a stream livepplx can read: none of its {self.chunks} chunks is in a format livepplx "
                    f"knows (the first looked like {self._first_unrecognized}); it reads OpenAI chat, "
                    "completions and Responses, llama.cpp, TGI, Ollama and Gemini streams"
                )
            return
        if self.malformed and not self.has_logprobs:
            # Not "no logprobs": the server sent entries, in shapes that are not tokens.
            self.unreadable = True
            self.fail(
                f"not a stream livepplx can read: its {self.malformed} token entries or choices were all malformed "
                f"(wrong JSON types, e.g. a choice index that is not a whole number) in an otherwise {self.format} stream"
            )
            return
        if not self.complete:
            self.truncated = True
            self.fail(
                f"truncated: the stream ended without its end (no [DONE], finish_reason or final event) after "
                f"{self.total_tokens} tokens; the statistics cover what was read"
            )
            return
        if not self.has_logprobs and (self.unscored or self.choices):
            self._missing_logprobs()

    def fail(self, message: str) -> None:
        """Record what went wrong; the first thing recorded is the one reported."""
        self.error = self.error or message

    def _handle_raw(self, data: bytes | bytearray | memoryview | str) -> list[Token]:
        if self._decoder is None:
            self._decoder = StreamDecoder(self.options.max_event_bytes)
        try:
            values = self._decoder.feed_values(data)
        except StreamFormatError as e:
            self.fail(str(e))
            raise
        if not self.triggers and not self._token_hooks and self.format is not None:
            return self._handle_batch(values)
        if len(values) == 1 and type(values[0]) is not list and self.server_error is None:
            return self._handle_object(values[0])
        return self._handle_values(values)

    def _handle_values(self, values: list[Any]) -> list[Token]:
        tokens: list[Token] = []
        for value in values:
            # A top-level JSON array is a sequence of chunks (Gemini's alt=json answer).
            for data in value if type(value) is list else (value,):
                if self.stopped is not None:
                    return tokens
                if self.server_error is not None:
                    self.after_error += 1
                    continue
                tokens += self._handle_object(data)
        return tokens

    def _handle_batch(self, values: list[Any]) -> list[Token]:
        """The events of one read when nothing watches tokens one by one (no trigger, no
        hook): each chunk is read as :meth:`_handle_object` reads it, and its tokens are
        counted at the end of the read, each choice's in one :meth:`ChoiceStats.update_many`
        (the same arithmetic, token by token) and its text joined once. Nothing is ever left
        uncounted: a new choice (which may fail) first counts what came before it."""
        batch: list[Token] = []
        read = self._read
        choices = self.choices
        ended = self.ended
        fast = 0  # chunks read by `read`, counted once
        events = iter(values)
        if self.server_error is not None:
            self.after_error += len(values)  # see handle(): what follows an error is not counted
            return batch
        try:
            for data in events:
                if read is not None:
                    # A typed struct of the common shape: its tokens straight into the batch
                    marks = read(data, batch, choices)
                    if marks is not None:
                        fast += 1
                        if marks:
                            ended.update(marks)
                        continue
                for item in data if type(data) is list else (data,):
                    self._handle_object(item, batch)
                if self.server_error is not None:  # only this slow path can find one
                    self.after_error += sum(1 for _ in events)
                    break
        finally:
            self.chunks += fast
            self._count(batch)
        return batch

    def _count(self, batch: list[Token]) -> None:
        """Count the tokens a batch held back (their choices exist already)."""
        if not batch:
            return
        first = batch[0].choice
        if len(self.choices) == 1 or all(t.choice == first for t in batch):
            self._count_choice(first, batch)
            return
        by_choice: dict[int, list[Token]] = {}
        for t in batch:
            by_choice.setdefault(t.choice, []).append(t)
        for index, tokens in by_choice.items():
            self._count_choice(index, tokens)

    def _count_choice(self, index: int, tokens: list[Token]) -> None:
        self.choices[index].update_many(tokens)
        text = "".join(map(_text_of, tokens))
        if text:
            pieces = self._texts[index]
            pieces.append(text)
            limit = self.text_limit
            if limit is not None and (len(pieces) > 64 or len(text) > limit):
                self._collapse(pieces)  # bounded memory, amortised over 64 reads

    def _handle_object(self, chunk: Any, batch: list[Token] | None = None) -> list[Token]:
        self.chunks += 1
        fmt = self.format
        if fmt is None:
            fmt = detect_format(chunk)
            if fmt is None:
                message = error_message(chunk)
                if message:
                    self.server_error = self.server_error or message
                    self.fail(message)
                else:
                    self.unrecognized += 1
                    if self._first_unrecognized is None:
                        self._first_unrecognized = _snippet(chunk)
                return []
            self.format = fmt
            self._fast = FAST_PARSERS.get(fmt)
            self._read = TYPED_READERS.get(fmt)
            if self._decoder is not None:
                # Raw input: from now on its data is decoded straight into the format's structs.
                self._decoder.typed = TYPED_DECODERS.get(fmt)
                self._decoder.typed_many = TYPED_ARRAY_DECODERS.get(fmt)
        fast = self._fast
        if fast is not None:
            # The common shape: tokens and end marks, nothing else to record (the format's
            # parser would say the same, slower).
            read = fast(chunk)
            if read is not None:
                tokens, ended = read
                if batch is not None:
                    choices = self.choices
                    for token in tokens:
                        if token.choice not in choices:
                            self._count(batch)  # what came before is counted, whatever happens next
                            batch.clear()
                            self._new_choice(token.choice)
                        batch.append(token)
                elif len(tokens) == 1 and not self.triggers and not self._token_hooks:
                    # One token, nothing watching it (an SDK stream's chunk): _add, inline.
                    token = tokens[0]
                    index = token.choice
                    stats = self.choices.get(index)
                    if stats is None:
                        stats = self._new_choice(index)
                    stats.update(token)
                    if token.text:
                        pieces = self._texts[index]
                        pieces.append(token.text)
                        if len(pieces) > 64 and self.text_limit is not None:
                            self._collapse(pieces)  # bounded memory, amortised over 64 tokens
                else:
                    for token in tokens:
                        self._add(token)
                        if self.stopped is not None:
                            break  # what follows the crossing token in the same chunk is not counted
                if ended:
                    self.ended.update(ended)
                return tokens
        parsed: Parsed = FORMATS[fmt](chunk)
        if parsed.error:
            self.server_error = self.server_error or parsed.error
            self.fail(parsed.error)
        malformed = getattr(parsed, "malformed", 0)
        if malformed:
            self.malformed += malformed
        if parsed.unscored:
            self.unscored += parsed.unscored
            if not self.choices and self.unscored >= self.missing_after:
                self._missing_logprobs()
        if batch is not None:
            choices = self.choices
            for token in parsed.tokens:
                if token.choice not in choices:
                    self._count(batch)  # what came before is counted, whatever happens next
                    batch.clear()
                    self._new_choice(token.choice)
                batch.append(token)
        else:
            for token in parsed.tokens:
                self._add(token)
                if self.stopped is not None:
                    break  # what follows the crossing token in the same chunk is not counted
        ended = getattr(parsed, "ended", ())
        if ended:
            self.ended.update(ended)
        return parsed.tokens

    def _missing_logprobs(self) -> None:
        if self._missing_seen or self.on_missing_logprobs == "ignore":
            return
        self._missing_seen = True
        if self.unscored:
            detail = f"{self.unscored} chunks of generated text came without logprobs"
        else:
            detail = f"every one of the {self.skipped} tokens came without a usable logprob (null, NaN or positive)"
        error = NoLogprobsError(detail)
        if self.on_missing_logprobs == "warn":
            warnings.warn(str(error), RuntimeWarning, stacklevel=4)
            return
        self.fail(str(error))
        raise error

    def _new_choice(self, index: int) -> ChoiceStats:
        if len(self.choices) >= self.options.max_choices:
            message = (f"the stream named more than {self.options.max_choices} distinct choices (index {index}); "
                       "raise max_choices if the request really asked for that many (n)")
            self.fail(message)
            raise TooManyChoicesError(message)
        # Each choice reserves its windows up front: a huge window times many choices is
        # refused by name before it becomes gigabytes.
        held = 16 * (self.options.window + self.options.group_window + 2) * (len(self.choices) + 1)  # ChoiceStats: 2 doubles a slot
        if held > WINDOW_MEMORY_BUDGET:
            message = (f"choice {index} would make the windows of this stream hold {held / 2**30:.1f} GiB "
                       f"({len(self.choices) + 1} choices x window {self.options.window:,} + group_window "
                       f"{self.options.group_window:,}); lower window or max_choices")
            self.fail(message)
            raise TooManyChoicesError(message)
        stats = self.choices[index] = ChoiceStats(index, **self._stats_options)
        self._texts[index] = []
        self._armed[index] = [Armed(t) for t in self.triggers]
        return stats

    def _add(self, token: Token) -> None:
        index = token.choice
        stats = self.choices.get(index)
        if stats is None:
            stats = self._new_choice(index)
        stats.update(token)
        if token.text:
            pieces = self._texts[index]
            pieces.append(token.text)
            if len(pieces) > 64 and self.text_limit is not None:
                self._collapse(pieces)  # bounded memory, amortised over 64 tokens
        if token.status is not SKIPPED:
            for hook in self._token_hooks:
                hook(token, stats)
            for armed in self._armed[index]:
                if armed.crossed(stats):
                    self._fire(armed.trigger, stats, token.text)

    def _fire(self, trigger: Trigger, stats: ChoiceStats, token: str) -> None:
        event = TriggerEvent(trigger.name, stats.index, stats.tokens, token, stats.as_dict(), self.text(stats.index))
        if len(self.events) == self.events.maxlen:
            self.events_dropped += 1
        self.events.append(event)
        self.fired[trigger.name] = self.fired.get(trigger.name, 0) + 1
        for listener in self.listeners:
            listener.on_trigger(self, event, trigger)
        if trigger.stop and self.stopped is None:
            self._stopped(Stop(trigger.name, stats.index, stats.tokens))
        if trigger.call is not _no_call:
            self.due.append(Due(trigger, "call", trigger.call, event))
        if trigger.escalate is not None:
            self.due.append(Due(trigger, "escalate", trigger.escalate, Escalation(event, self.request)))

    def stop(self, reason: str, choice: int = 0) -> None:
        """Mark the stream stopped from outside (a user's decision, Ctrl-C, an idle timeout)."""
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

    @property
    def complete(self) -> bool:
        """True when the stream's own end was read: ``[DONE]``, or the end mark
        (``finish_reason``, or the format's final event) of every choice that appeared."""
        if self._decoder is not None and self._decoder.done:
            return True
        return bool(self.ended) and self.ended.issuperset(self.choices)

    @property
    def has_logprobs(self) -> bool:
        """True once any choice has counted a token."""
        return any(s.tokens for s in self.choices.values())

    def choice(self, index: int = 0) -> ChoiceStats:
        """The statistics of one choice (an empty one if it has no token yet)."""
        stats = self.choices.get(index)
        return stats if stats is not None else ChoiceStats(index, **self._stats_options)

    def _collapse(self, pieces: list[str]) -> str:
        text = "".join(pieces)
        limit = self.text_limit
        if limit is not None and len(text) > limit:
            text = text[-limit:] if limit else ""
        pieces[:] = [text]
        return text

    def text(self, index: int = 0) -> str:
        """The choice's text so far (at most its last ``text_limit`` characters)."""
        pieces = self._texts.get(index)
        if not pieces:
            return ""
        if len(pieces) == 1 and (self.text_limit is None or len(pieces[0]) <= self.text_limit):
            return pieces[0]
        return self._collapse(pieces)

    @property
    def texts(self) -> dict[int, str]:
        """The text of each choice (at most its last ``text_limit`` characters)."""
        return {index: self.text(index) for index in self._texts}

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

    @property
    def skipped(self) -> int:
        """Tokens skipped by the value policy, over every choice."""
        return sum(s.skipped for s in self.choices.values())

    @property
    def skipped_events(self) -> int:
        """Raw events or lines that were not JSON (or too long), skipped and counted by the decoder."""
        return self._decoder.skipped if self._decoder is not None else 0

    def check_logprobs(self) -> None:
        """Raise :class:`NoLogprobsError` if the stream had text or tokens but not one usable logprob."""
        if not self.has_logprobs and (self.unscored or self.choices or not self.error):
            if self.unscored:
                detail = f"{self.unscored} chunks of generated text came without logprobs"
            elif self.choices:
                detail = f"every one of the {self.skipped} tokens came without a usable logprob (null, NaN or positive)"
            else:
                detail = "the stream carried no logprobs"
            raise NoLogprobsError(detail)

    def summary(self) -> dict[str, Any]:
        """The JSON-ready report (``livepplx replay --json``): format, choice 0's tokens
        and ppl, every choice, the error, the stop, and what could not be read."""
        choices = [self.choices[i].as_dict() for i in sorted(self.choices)]
        first = choices[0] if 0 in self.choices else self.choice(0).as_dict()
        return {
            "format": self.format,
            "tokens": first["tokens"],
            "ppl": first["ppl"],
            "choices": choices,
            "error": self.error,
            "stopped": self.stopped.as_dict() if self.stopped else None,
            "complete": self.complete,
            "malformed": self.malformed,
            "unrecognized": self.unrecognized,
            "skipped_events": self.skipped_events,
            "after_error": self.after_error,
        }
