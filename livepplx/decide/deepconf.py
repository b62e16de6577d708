"""DeepConf over HTTP: many traces in parallel, the weak ones stopped live, a confidence-weighted vote.

DeepConf (arXiv 2508.15260, "online" mode) samples several answers ("traces") to one
question. The first ``warmup`` run in full; their lowest group confidences set the
threshold ``s`` (the ``100 - eta`` th percentile: ``eta=10``, DeepConf-low, keeps the top
10%; ``eta=90``, DeepConf-high, the top 90%). Up to ``traces`` more then run, ``concurrency``
at a time, and each is stopped, its connection closed so the server stops generating, as
soon as its group confidence (the mean token confidence over the last ``group_window``
tokens) drops below ``s``. The answer is the confidence-weighted majority of the traces
whose lowest group confidence reached ``s``, each weighted by that confidence.

    voter = DeepConfVoter(client, "gemma", endpoint="completions", warmup=8, traces=16,
                          group_window=16, max_tokens=96, params={"temperature": 0.8, "stop": ["\\nQ:"]})
    result = voter(prompt)
    result.answer, result.weights, result.tokens, result.tokens_saved

The paper does this inside vLLM; here every trace is an ordinary streamed request to any
OpenAI-compatible server (vLLM, SGLang, llama-server ``-np N``, OpenAI), watched by
:func:`livepplx.stream`. All the rules live in :class:`DeepConfRun` (no I/O): which request
to send next, what each trace's stream said, the threshold, the vote. :class:`DeepConfVoter`
(threads) and :class:`AsyncDeepConfVoter` (asyncio tasks) only run the requests it hands out.

Which traces vote, as facebookresearch/deepconf's ``deepconf-online.py`` does: every trace
whose lowest group confidence reached ``s``. A warm-up trace below ``s`` would have been
stopped, so it does not vote; neither does a later trace too short to fill one window whose
partial-window mean is below ``s``. ``vote_top`` (optional) keeps only the top ``vote_top``
percent of those by confidence (the paper's offline filter).

``n > 1``: one request then carries ``n`` traces (the server samples them together, where
it supports ``n``: vLLM, SGLang, OpenAI). Closing the connection ends every choice of the
response, so a choice that drops below ``s`` is only *marked* pruned (it no longer votes)
and the response is closed once every choice in it is pruned or finished: the tokens a
pruned choice generates while a sibling still runs are spent and not saved
(:attr:`VoteResult.tokens_after_prune`).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import math
import re
import threading
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Literal, Sequence, Union

from .calibrate import deepconf_threshold
from ..core.errors import CallbackError, NoLogprobsError
from ..monitor import _Monitored
from ..core.stats import ChoiceStats, json_number
from ..core.triggers import Condition, Trigger

__all__ = [
    "DeepConfVoter",
    "AsyncDeepConfVoter",
    "DeepConfPlan",
    "DeepConfRun",
    "VoteResult",
    "Trace",
    "TraceRow",
    "Extractor",
    "last_number",
    "boxed",
    "last_line",
    "number_or_boxed",
    "EXTRACTORS",
    "weighted_vote",
]

Messages = list[dict[str, Any]]
#: An answer extractor: the trace's text in, its answer out (None: no answer in it).
Extractor = Callable[[str], Union[str, None]]
#: DeepConf-low and -high, by name.
ETA_NAMES = {"low": 10.0, "high": 90.0}

# -- answer extractors ---------------------------------------------------------------------

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def last_number(text: str) -> str | None:
    """The last number in the text, written plainly: thousands separators dropped, trailing
    zeros of a decimal dropped, so ``"1,200.50"`` and ``"1200.5"`` vote together.

    >>> last_number("3 + 4 = 7. The answer is 7."), last_number("It costs $1,200.50"), last_number("none")
    ('7', '1200.5', None)
    """
    found = _NUMBER.findall(text)
    if not found:
        return None
    number = found[-1].replace(",", "")
    if "." in number:
        number = number.rstrip("0").rstrip(".")
    return "0" if number in ("-0", "") else number


def boxed(text: str) -> str | None:
    """The content of the last ``\\boxed{...}`` (braces inside it matched), as the paper's
    extractor reads it; None without one, or when it is not closed (a cut trace).

    >>> boxed(r"so \\boxed{\\frac{1}{2}}."), boxed("no box"), boxed(r"\\boxed{12")
    ('\\\\frac{1}{2}', None, None)
    """
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    depth, i = 1, start + len("\\boxed{")
    for j in range(i, len(text)):
        c = text[j]
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return text[i:j].strip() or None
    return None


def last_line(text: str) -> str | None:
    """The last line that is not blank, stripped, without a final period.

    >>> last_line("Q: capital of Peru?\\nLima.\\n\\n"), last_line("  ")
    ('Lima', None)
    """
    for line in reversed(text.splitlines()):
        line = line.strip()
        if line:
            return line.removesuffix(".").strip() or None
    return None


def number_or_boxed(text: str) -> str | None:
    """``\\boxed{}`` when the trace has one, else its last number (the default).

    >>> number_or_boxed(r"2+2 = 4, so \\boxed{4}"), number_or_boxed("so 12 apples")
    ('4', '12')
    """
    return boxed(text) if "\\boxed{" in text else last_number(text)


#: The extractors by the names the command line and ``answer=`` take.
EXTRACTORS: dict[str, Extractor] = {"auto": number_or_boxed, "number": last_number, "boxed": boxed, "line": last_line}


def weighted_vote(answers: Sequence[str], weights: Sequence[float]) -> tuple[str | None, dict[str, float]]:
    """The answer with the largest summed weight, and each candidate's sum. A tie goes to the
    answer that was given first.

    >>> weighted_vote(["7", "8", "7"], [1.0, 2.5, 1.0])
    ('8', {'7': 2.0, '8': 2.5})
    """
    totals: dict[str, float] = {}
    for answer, weight in zip(answers, weights):
        totals[answer] = totals.get(answer, 0.0) + weight
    best = max(totals, key=totals.__getitem__) if totals else None  # max keeps the first of equals
    return best, totals


# -- results -------------------------------------------------------------------------------

TraceStatus = Literal["queued", "running", "done", "pruned", "failed", "cancelled"]


@dataclass(frozen=True)
class Trace:
    """One trace, as it ended."""

    #: its place in the run: warm-up traces first, then the others in launch order
    index: int
    phase: Literal["warmup", "online"]
    #: tokens generated (counted from the logprobs)
    tokens: int
    #: its lowest group confidence: the weight it votes with (None: no token had alternatives)
    confidence: float | None
    #: the extracted answer (None: none could be extracted, or it was pruned before any)
    answer: str | None
    #: its group confidence dropped below the threshold (then it does not vote)
    pruned: bool
    #: its connection was closed before its end was read (pruned, or a sibling's stop, or cancelled)
    stopped: bool
    #: tokens it had when its group confidence dropped below the threshold
    pruned_at: int | None
    #: it votes: not pruned, not failed, an answer extracted, confidence at or above the threshold
    voted: bool
    #: why it does not vote, in words ("" when it does)
    excluded: str
    #: its text (as far as it got)
    text: str
    #: what failed: the stream, or the extractor (None: nothing)
    error: str | None = None

    def as_dict(self, text: bool = True) -> dict[str, Any]:
        out: dict[str, Any] = {
            "index": self.index, "phase": self.phase, "tokens": self.tokens,
            "confidence": None if self.confidence is None else json_number(self.confidence),
            "answer": self.answer, "pruned": self.pruned, "stopped": self.stopped, "pruned_at": self.pruned_at,
            "voted": self.voted, "excluded": self.excluded or None, "error": self.error,
        }
        if text:
            out["text"] = self.text
        return out


#: Why a trace does not vote: the start of its ``excluded``, by the name results count it under.
_EXCLUDED = {"failed": "failed", "unextractable": "no answer extracted", "below the threshold": "confidence below",
             "without confidence": "no confidence", "cancelled": "cancelled"}


@dataclass(frozen=True)
class VoteResult:
    """What the vote decided, and what it cost."""

    #: the confidence-weighted majority (None when no trace could vote: see ``reason``)
    answer: str | None
    #: why, in words
    reason: str
    #: each candidate answer's summed weight
    weights: dict[str, float]
    #: the stop threshold s (None when it could not be set)
    threshold: float | None
    #: the percentage of warm-up traces kept by the threshold (10: DeepConf-low, 90: -high)
    eta: float
    traces: tuple[Trace, ...]
    #: traces planned (warm-up and the others) and launched (fewer after a consensus stop)
    planned: int
    launched: int
    #: the winner's share of the weight when the consensus stop ended the run (else None)
    consensus: float | None = None
    #: what running every planned trace in full would have cost: the tokens of the traces
    #: that finished, and for each other one the mean length of those (an estimate; None
    #: when no trace finished)
    tokens_full: int | None = None
    #: tokens generated by ``n > 1`` choices after they were pruned, while a sibling ran on
    tokens_after_prune: int = 0

    @property
    def tokens(self) -> int:
        """Tokens generated in all, warm-up included."""
        return sum(t.tokens for t in self.traces)

    @property
    def tokens_saved(self) -> int | None:
        """``tokens_full - tokens``: the estimated saving against running every trace in full."""
        return None if self.tokens_full is None else max(0, self.tokens_full - self.tokens)

    def count(self, what: str) -> int:
        """Traces that were ``"pruned"``, ``"stopped"``, ``"voted"``, or excluded as ``"unextractable"``,
        ``"failed"``, ``"below the threshold"``, ``"without confidence"``, ``"cancelled"``."""
        if what in ("pruned", "stopped", "voted"):
            return sum(1 for t in self.traces if getattr(t, what))
        return sum(1 for t in self.traces if t.excluded.startswith(_EXCLUDED[what]))

    def as_dict(self, text: bool = True) -> dict[str, Any]:
        """JSON-ready: the answer, each candidate's weight, and every trace."""
        return {
            "answer": self.answer, "reason": self.reason,
            "weights": {k: json_number(v) for k, v in self.weights.items()},
            "threshold": None if self.threshold is None else json_number(self.threshold), "eta": self.eta,
            "tokens": self.tokens, "tokens_full": self.tokens_full, "tokens_saved": self.tokens_saved,
            "tokens_after_prune": self.tokens_after_prune, "consensus": self.consensus,
            "planned": self.planned, "launched": self.launched,
            "pruned": self.count("pruned"), "unextractable": self.count("unextractable"),
            "failed": self.count("failed"), "voted": self.count("voted"),
            "traces": [t.as_dict(text) for t in self.traces],
        }


@dataclass(frozen=True)
class TraceRow:
    """One trace as a live view shows it (a snapshot: safe to read from another thread)."""

    index: int
    phase: Literal["warmup", "online"]
    status: TraceStatus
    tokens: int
    #: the group confidence now (NaN before a token)
    group_confidence: float
    #: the lowest so far (NaN before a token)
    lowest: float
    answer: str | None


# -- the plan and the run (no I/O) -----------------------------------------------------------


def _whole(name: str, value: Any, low: int, high: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        span = f"from {low} to {high}" if high is not None else f">= {low}"
        raise ValueError(f"{name} must be a whole number {span}, got {value!r}")


def _fraction(name: str, value: Any, low: float, high: float, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low < value <= high:
        raise ValueError(f"{name} must be {what}, got {value!r}")
    return float(value)


#: Request parameters the plan sets itself, and where to set them instead.
_OWNED = {"model": "model=", "prompt": "the question", "messages": "the question", "n": "n=",
          "max_tokens": "max_tokens=", "logprobs": "top_logprobs=", "top_logprobs": "top_logprobs=",
          "stream": "always True"}


@dataclass(frozen=True)
class DeepConfPlan:
    """The requests DeepConf makes and the rules that judge them; no I/O.

    Args:
        model: the model to ask.
        endpoint: ``"chat"`` (default: the question is messages, or a string sent as the user's
            message) or ``"completions"`` (for base models: the question is the prompt).
        warmup: traces run in full to set the threshold (default 8; the paper runs 16). 0
            needs ``threshold``.
        traces: traces run after the warm-up, each stopped live (default 16).
        eta: the percentage of warm-up traces the threshold keeps: 10 or ``"low"`` (DeepConf-low,
            the default: s is the 90th percentile of the warm-up's lowest group confidences),
            90 or ``"high"`` (DeepConf-high: the 10th percentile).
        threshold: a fixed s instead (the paper's "predefined threshold"); the warm-up then
            only votes.
        group_window: tokens in a group (default 2048, the paper's; lower it for short answers:
            a trace shorter than one window is never stopped).
        top_logprobs: alternatives per token, the k of the token confidence (default 20, the
            paper's; OpenAI allows 20, llama-server and vLLM more).
        max_tokens: per trace (default 1024).
        concurrency: requests streamed at once (default 4: match the server's parallel slots,
            llama-server's ``-np``).
        n: traces per request (default 1; see the module's notes on ``n > 1``).
        answer: the extractor, a function of the text, or ``"auto"`` (default: ``\\boxed{}``,
            else the last number), ``"number"``, ``"boxed"``, ``"line"``.
        vote_top: keep only this top percentage of the voting traces by confidence (default None: all).
        consensus: stop launching traces once the leading answer holds this share of the weight
            (the paper's tau, e.g. 0.95; default None: never). Traces already running finish.
        params: more request parameters (``temperature``, ``stop``, ``seed``, ``extra_body``, ...).
        idle_timeout: seconds without a chunk before a trace is stopped and counted failed
            (default None: the client's own timeout bounds each read).
    """

    model: str
    endpoint: Literal["chat", "completions"] = "chat"
    warmup: int = 8
    traces: int = 16
    eta: float | str = 10.0
    threshold: float | None = None
    group_window: int = 2048
    top_logprobs: int = 20
    max_tokens: int = 1024
    concurrency: int = 4
    n: int = 1
    answer: Extractor | str = "auto"
    vote_top: float | None = None
    consensus: float | None = None
    params: dict[str, Any] = field(default_factory=dict)
    idle_timeout: float | None = None

    def __post_init__(self) -> None:
        if self.endpoint not in ("chat", "completions"):
            raise ValueError(f"endpoint must be 'chat' or 'completions', got {self.endpoint!r}")
        _whole("warmup", self.warmup, 0, 100_000)
        _whole("traces", self.traces, 0, 100_000)
        _whole("group_window", self.group_window, 1, 1 << 20)
        _whole("top_logprobs", self.top_logprobs, 1, 1000)
        _whole("max_tokens", self.max_tokens, 1)
        _whole("concurrency", self.concurrency, 1, 1024)
        _whole("n", self.n, 1, 128)
        eta = ETA_NAMES.get(self.eta, self.eta) if isinstance(self.eta, str) else self.eta
        object.__setattr__(self, "eta", _fraction("eta", eta, 0.0, 100.0 - 1e-12,
                                                  "a percentage in (0, 100), 'low' (10) or 'high' (90)"))
        if self.threshold is not None:
            t = self.threshold
            if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t):
                raise ValueError(f"threshold must be a finite number (a group confidence), got {t!r}")
        elif self.warmup == 0 and self.traces:
            raise ValueError("warmup=0 needs a threshold: give threshold=<group confidence>, or warmup >= 1")
        if self.vote_top is not None:
            _fraction("vote_top", self.vote_top, 0.0, 100.0, "a percentage in (0, 100]")
        if self.consensus is not None:
            _fraction("consensus", self.consensus, 0.0, 1.0, "a share of the weight in (0, 1], e.g. 0.95")
        if isinstance(self.answer, str):
            if self.answer not in EXTRACTORS:
                raise ValueError(f"answer must be a function of the text or one of {', '.join(EXTRACTORS)}, "
                                 f"got {self.answer!r}")
        elif not callable(self.answer):
            raise TypeError(f"answer must be a function of the text, got {self.answer!r}")
        if self.idle_timeout is not None:
            _fraction("idle_timeout", self.idle_timeout, 0.0, math.inf, "a positive number of seconds")
        if not isinstance(self.params, dict):
            raise TypeError(f"params must be a dict of request parameters, got {type(self.params).__name__}")
        owned = sorted(_OWNED.keys() & self.params.keys())
        if owned:
            raise ValueError(f"params may not set {', '.join(owned)}: the plan does "
                             f"({', '.join(_OWNED[k] for k in owned)})")

    @property
    def extractor(self) -> Extractor:
        return EXTRACTORS[self.answer] if isinstance(self.answer, str) else self.answer

    def body(self, question: Messages | str) -> dict[str, Any]:
        """The request's question part: ``messages`` or ``prompt``."""
        if self.endpoint == "completions":
            if not isinstance(question, str):
                raise TypeError("endpoint='completions' takes the prompt as a string, not messages")
            return {"prompt": question}
        if isinstance(question, str):
            return {"messages": [{"role": "user", "content": question}]}
        if not isinstance(question, list) or not all(isinstance(m, dict) for m in question):
            raise TypeError(f"the question must be a string or a list of chat messages (dicts), "
                            f"got {type(question).__name__}")
        return {"messages": question}

    def start(self, question: Messages | str) -> DeepConfRun:
        """A run of this plan on one question."""
        return DeepConfRun(self, question)


class _Watch:
    """One request's choices as the online rule sees them: which dropped below s, and when."""

    def __init__(self, threshold: float | None, n: int) -> None:
        self.threshold = threshold
        self.n = n
        #: choice index -> its token count when its group confidence first dropped below s
        self.dropped: dict[int, int] = {}


class _Dropped(Condition):
    """Observes every choice's full-window group confidence against s; holds once every
    choice of the request has dropped (for ``n=1``: the one). One object for all choices
    of a request: the choices are judged together because one close ends them all."""

    stateful = True

    def __init__(self, watch: _Watch) -> None:
        self.watch = watch

    def observe(self, stats: ChoiceStats) -> None:
        w = self.watch
        if (w.threshold is not None and stats.index not in w.dropped
                and stats.topk_positions >= stats.group_window and stats.group_confidence < w.threshold):
            w.dropped[stats.index] = stats.tokens

    def holds(self, stats: ChoiceStats) -> bool:
        return len(self.watch.dropped) >= self.watch.n

    def bind(self) -> Condition:
        return self  # shared across the choices on purpose

    def __repr__(self) -> str:
        return f"deepconf_prune({self.watch.threshold:g})" if self.watch.threshold is not None else "deepconf_prune"


@dataclass
class _Slot:
    """One trace while the run lasts."""

    index: int
    phase: Literal["warmup", "online"]
    status: TraceStatus = "queued"
    trace: Trace | None = None


class _Request:
    """One HTTP request: ``n`` traces, the request's keywords for :func:`livepplx.stream`, and
    its monitored stream once open (for views and cancellation)."""

    def __init__(self, slots: list[_Slot], kwargs: dict[str, Any], watch: _Watch) -> None:
        self.slots = slots
        self.kwargs = kwargs
        self.watch = watch
        self.stream: _Monitored | None = None


#: What a driver reports for a request: its stream (None if it never opened) and an error.
Outcome = tuple[Union[_Monitored, None], Union[BaseException, None]]


class DeepConfRun:
    """One question's vote, without I/O: the driver asks :meth:`next_request` for work, streams
    it, reports it with :meth:`finished`, and reads :meth:`result` at the end.

    The warm-up's requests are handed out first; none of the others until every warm-up
    request has finished and set the threshold. Thread-safe: a view may read :meth:`rows`
    while the driver runs.
    """

    def __init__(self, plan: DeepConfPlan, question: Messages | str) -> None:
        self.plan = plan
        self._body = plan.body(question)
        self._lock = threading.Lock()
        self.slots: list[_Slot] = []
        self._queue: list[list[_Slot]] = []  # requests not yet handed out, in order
        self._requests: list[_Request] = []  # handed out
        self._running = 0
        #: the stop threshold s (set when the warm-up has finished, or given)
        self.threshold: float | None = plan.threshold
        self.phase: Literal["warmup", "online", "done"] = "warmup"
        #: why the run ended early, if it did (the consensus stop, no threshold, cancelled)
        self.ended_early: str | None = None
        self.consensus: float | None = None
        self.cancelled = False
        self._plan_slots("warmup", plan.warmup)
        if not plan.warmup:
            self._start_online()

    # -- planning ----------------------------------------------------------------------------

    def _plan_slots(self, phase: Literal["warmup", "online"], count: int) -> None:
        n = self.plan.n
        for start in range(0, count, n):
            slots = [_Slot(len(self.slots) + i, phase) for i in range(min(n, count - start))]
            self.slots += slots
            self._queue.append(slots)

    def _start_online(self) -> None:
        self.phase = "online"
        if self.threshold is None:
            lowest = [t.confidence for t in self._traces() if t.phase == "warmup" and t.confidence is not None
                      and t.error is None]
            if not lowest:
                self._end_early(f"no threshold: none of the {self.plan.warmup} warm-up traces gave a confidence "
                                "(each failed, or had no token with alternatives)")
                return
            self.threshold = deepconf_threshold(lowest, float(self.plan.eta))
        # The warm-up was judged before s existed: a warm-up trace below it does not vote.
        for slot in self.slots:
            t = slot.trace
            if t is not None and t.voted and t.confidence is not None and t.confidence < self.threshold:
                slot.trace = dataclasses.replace(t, voted=False, excluded=self._below(self.threshold))
        if self.plan.traces and self._check_consensus(self.plan.traces):
            return
        self._plan_slots("online", self.plan.traces)

    def _end_early(self, why: str) -> None:
        self.ended_early = why
        self.phase = "done"
        self._queue.clear()

    def next_request(self) -> _Request | None:
        """The next request to stream, or None: nothing more now (the warm-up is still running,
        or every request was handed out, or the run ended)."""
        with self._lock:
            if self.cancelled or not self._queue:
                return None
            slots = self._queue.pop(0)
            watch = _Watch(self.threshold if slots[0].phase == "online" else None, len(slots))
            kwargs = dict(self.plan.params, **self._body, model=self.plan.model, endpoint=self.plan.endpoint,
                          max_tokens=self.plan.max_tokens, top_logprobs=self.plan.top_logprobs,
                          group_window=self.plan.group_window, text_limit=None,
                          idle_timeout=self.plan.idle_timeout,
                          triggers=[Trigger(_Dropped(watch), stop=True, name="deepconf prune")])
            if len(slots) > 1:
                kwargs["n"] = len(slots)
            request = _Request(slots, kwargs, watch)
            for slot in slots:
                slot.status = "running"
            self._requests.append(request)
            self._running += 1
            return request

    @property
    def done(self) -> bool:
        """Nothing running and nothing left to hand out."""
        return self._running == 0 and not self._queue

    # -- reading the streams -------------------------------------------------------------------

    def opened(self, request: _Request, stream: _Monitored) -> bool:
        """The request's stream is open; False when the run was cancelled meanwhile (close it)."""
        request.stream = stream
        return not self.cancelled

    def should_close(self, request: _Request, stream: _Monitored) -> bool:
        """After a chunk: close when cancelled, or (``n > 1``) when every choice is pruned or
        finished (the trigger alone closes only once every choice is pruned)."""
        if self.cancelled:
            return True
        watch = request.watch
        if watch.n == 1 or not watch.dropped:
            return False
        return len(watch.dropped.keys() | stream.state.ended) >= watch.n

    def finished(self, request: _Request, outcome: Outcome) -> list[Trace]:
        """The request is over: read its traces. Raises what must end the whole vote: a server
        without logprobs (:class:`~livepplx.core.errors.NoLogprobsError`)."""
        stream, error = outcome
        with self._lock:
            self._running -= 1
            traces = [self._trace(request, slot, i, stream, error) for i, slot in enumerate(request.slots)]
            if isinstance(error, NoLogprobsError) or (stream is None and isinstance(error, Exception)):
                # No logprobs: every trace would fail alike. Refused before its first token (no
                # connection, a 4xx, 5xx after the retries): the server or the request is wrong.
                self.cancelled = True
                self._queue.clear()
                raise error
            if self.phase == "warmup" and not self.cancelled and self._running == 0 and not self._queue:
                self._start_online()
            elif self.phase == "online" and not self.cancelled:
                self._check_consensus(sum(len(q) for q in self._queue))
            if self.done and self.phase != "done":
                self.phase = "done"
        return traces

    def _trace(self, request: _Request, slot: _Slot, choice: int, stream: _Monitored | None,
               error: BaseException | None) -> Trace:
        stats = stream.state.choices.get(choice) if stream is not None else None
        tokens = stats.tokens if stats is not None else 0
        lowest = stats.lowest_group_confidence if stats is not None else math.nan
        confidence = lowest if math.isfinite(lowest) else None
        text = stream.text(choice) if stream is not None else ""
        ended = stream is not None and (stream.state.complete or choice in stream.state.ended)
        pruned_at = request.watch.dropped.get(choice)
        pruned = pruned_at is not None
        failed = error is not None or (stream is not None and stream.state.error is not None)
        message = None
        if error is not None:
            message = f"{type(error).__name__}: {error}".rstrip(": ")
        elif failed and stream is not None:
            message = stream.state.error
        elif stats is None and stream is not None and not self.cancelled and len(request.slots) > 1:
            failed, message = True, f"the server sent no choice {choice} (does it take n > 1?)"
        answer, extract_error = (None, None) if pruned or failed else self._extract(text)
        threshold = self.threshold
        if self.cancelled and not ended and not pruned:
            excluded, status = "cancelled", "cancelled"
        elif failed:
            excluded, status = f"failed: {message}", "failed"
        elif pruned:
            excluded, status = f"pruned at token {pruned_at}", "pruned"
        elif extract_error is not None:
            excluded, status = f"no answer extracted: {extract_error}", "done"
        elif answer is None:
            excluded, status = "no answer extracted", "done"
        elif confidence is None:
            excluded, status = "no confidence (no token had alternatives)", "done"
        elif threshold is not None and confidence < threshold:
            excluded, status = self._below(threshold), "done"
        else:
            excluded, status = "", "done"
        trace = Trace(slot.index, slot.phase, tokens, confidence, answer, pruned, not ended and stream is not None,
                      pruned_at, not excluded, excluded, text, message or extract_error)
        slot.trace, slot.status = trace, status  # type: ignore[assignment]
        return trace

    @staticmethod
    def _below(threshold: float) -> str:
        return f"confidence below the threshold {threshold:.4g}"

    def _extract(self, text: str) -> tuple[str | None, str | None]:
        """The answer, or why none: a user's extractor that raises or returns a non-string is a
        counted skip, not the end of the vote."""
        try:
            value = self.plan.extractor(text)
        except Exception as e:  # the user's function: its failure is this trace's, said with the trace
            return None, f"the extractor raised {type(e).__name__}: {e}"
        if value is None:
            return None, None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = str(value)
        if not isinstance(value, str):
            return None, f"the extractor returned {type(value).__name__}, not a string"
        value = value.strip()
        return (value or None), None

    # -- the vote ----------------------------------------------------------------------------

    def _traces(self) -> list[Trace]:
        return [s.trace for s in self.slots if s.trace is not None]

    def _voters(self) -> list[Trace]:
        voters = [t for t in self._traces() if t.voted]
        if self.plan.vote_top is not None and voters:
            keep = max(1, math.ceil(len(voters) * self.plan.vote_top / 100.0))
            voters = sorted(voters, key=lambda t: -(t.confidence or 0.0))[:keep]
            voters.sort(key=lambda t: t.index)
        return voters

    def _check_consensus(self, not_launched: int) -> bool:
        """The consensus stop: True (and nothing more is launched) once the leader's share >= tau."""
        tau = self.plan.consensus
        if tau is None or not not_launched:
            return False
        voters = self._voters()
        best, weights = weighted_vote([t.answer or "" for t in voters], [t.confidence or 0.0 for t in voters])
        total = sum(weights.values())
        if best is None or not total > 0:
            return False
        share = weights[best] / total
        if share < tau:
            return False
        self.consensus = share
        self._end_early(f"consensus: {best!r} held {share:.1%} of the weight (tau {tau:g}) after "
                        f"{len(voters)} votes; {not_launched} traces not launched")
        return True

    def cancel(self) -> list[_Monitored]:
        """Stop handing out requests; the streams still open, for the driver to close."""
        with self._lock:
            self.cancelled = True
            self._queue.clear()
            return [r.stream for r in self._requests if r.stream is not None]

    def rows(self) -> list[TraceRow]:
        """Every planned trace as it stands now: for a live view."""
        rows = []
        for request in list(self._requests):
            stream = request.stream
            for i, slot in enumerate(request.slots):
                stats = stream.state.choices.get(i) if stream is not None else None
                t = slot.trace
                rows.append(TraceRow(slot.index, slot.phase, slot.status,
                                     t.tokens if t else stats.tokens if stats else 0,
                                     stats.group_confidence if stats else math.nan,
                                     stats.lowest_group_confidence if stats else math.nan,
                                     t.answer if t else None))
        handed = {r.index for r in rows}
        rows += [TraceRow(s.index, s.phase, "queued", 0, math.nan, math.nan, None)
                 for s in self.slots if s.index not in handed]
        return sorted(rows, key=lambda r: r.index)

    def result(self) -> VoteResult:
        """The vote over the traces that finished."""
        traces = tuple(sorted(self._traces(), key=lambda t: t.index))
        voters = self._voters()
        answer, weights = weighted_vote([t.answer or "" for t in voters], [t.confidence or 0.0 for t in voters])
        finished = {t.index: t.tokens for t in traces if not t.stopped and t.error is None}
        full = None
        if finished:  # each trace not run to its end, or not run, counted at the finished ones' mean
            planned = self.plan.warmup + self.plan.traces
            est = min(self.plan.max_tokens, round(sum(finished.values()) / len(finished)))
            full = (sum(finished.get(t.index, max(t.tokens, est)) for t in traces)
                    + est * (planned - len(traces)))
        after = 0
        for request in self._requests:
            if request.watch.n > 1 and request.stream is not None:
                for choice, at in request.watch.dropped.items():
                    stats = request.stream.state.choices.get(choice)
                    after += max(0, (stats.tokens if stats else at) - at)
        counts = {"pruned": sum(1 for t in traces if t.pruned)}
        counts.update((what, sum(1 for t in traces if t.excluded.startswith(start))) for what, start in _EXCLUDED.items())
        excluded = ", ".join(f"{v} {k}" for k, v in counts.items() if v)
        if answer is not None:
            share = weights[answer] / sum(weights.values()) if sum(weights.values()) > 0 else math.nan
            reason = (f"confidence-weighted majority of {len(voters)} of {len(traces)} traces "
                      f"({share:.0%} of the weight)" + (f"; excluded: {excluded}" if excluded else ""))
        else:
            reason = f"no trace could vote: {len(traces)} traces, {excluded or 'none finished'}"
        if self.ended_early:
            reason += f"; {self.ended_early}"
        return VoteResult(answer, reason, weights, self.threshold, float(self.plan.eta), traces,
                          self.plan.warmup + self.plan.traces, len(traces), self.consensus, full, after)


# -- the drivers -----------------------------------------------------------------------------


def _fatal(error: BaseException) -> bool:
    """Errors that end the whole vote rather than one trace: no logprobs (every trace would
    fail the same way), Ctrl-C, a cancelled task, interpreter exit."""
    return isinstance(error, NoLogprobsError) or not isinstance(error, Exception)


class _Voter:
    """What the sync and async voters share: the plan and the callbacks."""

    def __init__(self, client: Any, model: str, *, on_start: Callable[[DeepConfRun], Any] | None = None,
                 on_trace: Callable[[Trace], Any] | None = None, **plan_options: Any) -> None:
        self.client = client
        self.plan = DeepConfPlan(model, **plan_options)
        self.on_start = on_start
        self.on_trace = on_trace

    def _begin(self, question: Messages | str) -> tuple[DeepConfRun, Any]:
        run = self.plan.start(question)
        return run, (self._call(self.on_start, run) if self.on_start is not None else None)

    def _call(self, function: Callable[[Any], Any], argument: Any) -> Any:
        try:
            return function(argument)
        except Exception as e:
            name = getattr(function, "__name__", repr(function))
            raise CallbackError(f"the voter's callback {name} raised {type(e).__name__}: {e}") from e


class DeepConfVoter(_Voter):
    """DeepConf over an ``openai.OpenAI`` client: ``voter(question) -> VoteResult``.

    The traces stream on ``concurrency`` threads (an HTTP stream blocks its thread; the
    work per token is microseconds, so threads are not the bottleneck: the server is). On
    Ctrl-C, or any error that ends the vote, every open stream is closed before it is raised.

    Args:
        client: an ``openai.OpenAI`` client (any OpenAI-compatible server).
        model: the model.
        on_start: called with the :class:`DeepConfRun` before the first request (a live view
            reads its :meth:`~DeepConfRun.rows`).
        on_trace: called with each :class:`Trace` as it ends, on the caller's thread.
        plan_options: :class:`DeepConfPlan`'s (``warmup``, ``traces``, ``eta``, ...).
    """

    def __call__(self, question: Messages | str) -> VoteResult:
        """Vote on one question (chat messages or a string; the prompt for ``endpoint="completions"``)."""
        run, _ = self._begin(question)
        pool = concurrent.futures.ThreadPoolExecutor(self.plan.concurrency, thread_name_prefix="livepplx-deepconf")
        running: dict[concurrent.futures.Future[Outcome], _Request] = {}
        try:
            while True:
                while len(running) < self.plan.concurrency and (request := run.next_request()) is not None:
                    running[pool.submit(self._stream, run, request)] = request
                if not running:
                    return run.result()
                # A short timeout: a wait without one is not interrupted by Ctrl-C until a trace ends.
                finished, _ = concurrent.futures.wait(running, timeout=_TICK,
                                                      return_when=concurrent.futures.FIRST_COMPLETED)
                for future in finished:
                    for trace in run.finished(running.pop(future), future.result()):
                        if self.on_trace is not None:
                            self._call(self.on_trace, trace)
        except BaseException:
            for stream in run.cancel():
                _close_now(stream)
            raise
        finally:
            # Threads still opening a request see the run cancelled and close what they get.
            pool.shutdown(wait=False, cancel_futures=True)

    def _stream(self, run: DeepConfRun, request: _Request) -> Outcome:
        from ..client import stream

        s = None
        try:
            s = stream(self.client, **request.kwargs)
            with s:
                if not run.opened(request, s):
                    return s, None
                for _ in s:
                    if run.should_close(request, s):
                        break
            return s, None
        except BaseException as e:
            if _fatal(e) and not isinstance(e, NoLogprobsError):
                raise
            return s, e


#: Seconds between the sync driver's checks for Ctrl-C while it waits for a trace.
_TICK = 0.05


def _close_now(stream: _Monitored) -> None:
    """Close a stream another thread is reading: mark it stopped (its reader ends at the next
    chunk) and close its HTTP response now (the server sees the client go)."""
    stream.stop("cancelled")
    response = getattr(stream.stream, "response", None)
    close = getattr(response, "close", None)
    if close is not None:
        try:
            close()
        except Exception:  # the reader's thread may be inside it: it ends at its next read
            pass


class AsyncDeepConfVoter(_Voter):
    """:class:`DeepConfVoter` for an ``openai.AsyncOpenAI`` client: ``await voter(question)``.

    The traces are asyncio tasks on the caller's loop. Cancelling the call (``task.cancel()``,
    a timeout) cancels every trace and closes its stream before the cancellation propagates.
    ``on_start`` and ``on_trace`` may be ``async def``.
    """

    async def __call__(self, question: Messages | str) -> VoteResult:
        """Vote on one question (chat messages or a string; the prompt for ``endpoint="completions"``)."""
        run, started = self._begin(question)
        if asyncio.iscoroutine(started):
            await _awaited(started, self.on_start)  # type: ignore[arg-type]
        running: dict[asyncio.Task[Outcome], _Request] = {}
        try:
            while True:
                while len(running) < self.plan.concurrency and (request := run.next_request()) is not None:
                    running[asyncio.ensure_future(self._stream(run, request))] = request
                if not running:
                    return run.result()
                finished, _ = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
                for task in finished:
                    for trace in run.finished(running.pop(task), task.result()):
                        if self.on_trace is not None:
                            result = self._call(self.on_trace, trace)
                            if asyncio.iscoroutine(result):
                                await _awaited(result, self.on_trace)
        except BaseException:
            run.cancel()
            for task in running:
                task.cancel()
            # Each task closes its own stream as the cancellation unwinds it: wait for that.
            await asyncio.gather(*running, return_exceptions=True)
            raise

    async def _stream(self, run: DeepConfRun, request: _Request) -> Outcome:
        from ..client import astream

        s = None
        try:
            s = await astream(self.client, **request.kwargs)
            async with s:
                if not run.opened(request, s):
                    return s, None
                async for _ in s:
                    if run.should_close(request, s):
                        break
            return s, None
        except BaseException as e:
            if _fatal(e) and not isinstance(e, NoLogprobsError):
                raise
            return s, e


async def _awaited(result: Awaitable[Any], function: Callable[[Any], Any]) -> Any:
    try:
        return await result
    except Exception as e:
        name = getattr(function, "__name__", repr(function))
        raise CallbackError(f"the voter's callback {name} raised {type(e).__name__}: {e}") from e

