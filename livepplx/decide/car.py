"""CAR-style adaptive reasoning, streamed: answer short, escalate to long reasoning when unsure.

CAR (arXiv 2505.15154) asks for a short, direct answer, computes its perplexity, and
pays for long reasoning only when the perplexity says the model is unsure. On a live
stream livepplx can decide before the short answer has finished: with ``early=True``
the short answer is cut as soon as its running perplexity crosses the escalation rule
after a warm-up, and the long request starts at once.

Said as it is: CAR's Gaussians are fitted on *final* perplexities, while the early rule
compares a *running* perplexity of a few tokens with them. Give ``early_calibration``, a
calibration fitted on running perplexities at the warm-up length (``examples/car_eval.py``
records them as ``ppl_at_warmup``), to compare like with like. The rule is checked at every
token from the warm-up on.

    router = CarRouter(client, "gemma", calibration=CarCalibration.load("car.json"))
    result = router([{"role": "user", "content": "What is 17 * 23?"}])
    result.answer, result.decision, result.reason, result.tokens

The decision logic lives in :class:`CarPlan` (no I/O) and the routing in one generator
of steps; :class:`CarRouter` and :class:`AsyncCarRouter` only stream the requests it yields.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Generator, Literal

from openai import NOT_GIVEN

from .calibrate import CarCalibration
from ..client import astream, stream
from ..monitor import _Monitored
from ..core.stats import ChoiceStats
from ..core.triggers import Trigger

__all__ = ["Answer", "CarResult", "CarPlan", "CarRouter", "AsyncCarRouter", "SHORT_SYSTEM", "LONG_SYSTEM"]

#: The short request's system message: a direct answer, nothing else.
SHORT_SYSTEM = "Answer with the final answer only, in a few words. No explanation."
#: The long request's system message, as CAR words it.
LONG_SYSTEM = "Think step by step: output the reasoning process before the answer."

Messages = list[dict[str, Any]]


def _as_messages(question: Messages | str) -> Messages:
    return [{"role": "user", "content": question}] if isinstance(question, str) else question


@dataclass(frozen=True)
class Answer:
    """One streamed answer."""

    text: str
    #: tokens generated: counted from the logprobs when the answer has them, else the usage
    #: chunk's ``completion_tokens``, else the pieces of text streamed (see ``tokens_from``)
    tokens: int
    #: its running perplexity at the end (None when no logprobs came)
    ppl: float | None
    #: closed before the server finished it: stopped, its end not read, and short of ``max_tokens``
    cut: bool
    #: stopped by the early rule (perhaps on its last token: then it is whole and not ``cut``)
    stopped: bool = False
    #: where ``tokens`` came from: ``"logprobs"``, ``"usage"``, or ``"text chunks"`` (an estimate:
    #: one token per streamed piece of text, what llama.cpp and OpenAI send)
    tokens_from: Literal["logprobs", "usage", "text chunks"] = "logprobs"


@dataclass(frozen=True)
class CarResult:
    """What the router decided, why, and what it cost."""

    #: the answer to use: the short one, or the long one after an escalation
    answer: str
    decision: Literal["short", "long"]
    #: why, in words
    reason: str
    #: the short answer's perplexity that decided (at the cut, if it was cut)
    ppl: float | None
    #: the posterior that the short answer is correct (with a CAR calibration)
    p_correct: float | None
    short: Answer
    long: Answer | None = None

    @property
    def short_cut(self) -> bool:
        """The short answer's stream was closed before the server finished it, to escalate
        sooner. Not when the rule was met on its last token: its end had been read, or it
        had reached its ``max_tokens``. (Where the end comes in a chunk of its own after the
        last token, as in OpenAI's and llama.cpp's streams, a stop on the last token closes
        the stream before that end is read, and counts as a cut: the client cannot tell.)"""
        return self.short.cut

    @property
    def tokens(self) -> int:
        """Tokens generated in all: the short answer and, if escalated, the long one."""
        return self.short.tokens + (self.long.tokens if self.long else 0)


def _usage_tokens(chunk: Any) -> int | None:
    """``usage.completion_tokens`` of a chunk (SDK object or dict), when it carries one."""
    usage = chunk.get("usage") if isinstance(chunk, dict) else getattr(chunk, "usage", None)
    count = usage.get("completion_tokens") if isinstance(usage, dict) else getattr(usage, "completion_tokens", None)
    return count if isinstance(count, int) and not isinstance(count, bool) and count >= 0 else None


def _get(obj: Any, name: str) -> Any:
    return obj.get(name) if isinstance(obj, dict) else getattr(obj, name, None)


def _chunk_text(chunk: Any) -> str:
    """Choice 0's text in a chat or completions chunk (SDK object or dict), read without
    logprobs: what the monitor does not keep for an answer that has none."""
    choices = _get(chunk, "choices")
    for choice in choices if isinstance(choices, list) else ():
        if _get(choice, "index") in (0, None):
            delta = _get(choice, "delta")
            text = _get(delta, "content") if delta is not None else _get(choice, "text")
            return text if isinstance(text, str) else ""
    return ""


class _Reading:
    """What the routers read beside the monitor: the usage chunk, and the text of an answer
    streamed without logprobs."""

    def __init__(self) -> None:
        self.usage: int | None = None
        self.pieces: list[str] = []

    def read(self, chunk: Any) -> None:
        if self.usage is None:
            self.usage = _usage_tokens(chunk)
        text = _chunk_text(chunk)
        if text:
            self.pieces.append(text)

    def answer(self, m: _Monitored, request: dict[str, Any]) -> Answer:
        """The answer as read, and whether its stream was cut: stopped, its end not read (the
        monitored state's ``complete``), and fewer tokens than the request's ``max_tokens``."""
        ppl = m.ppl
        stopped = m.stopped is not None
        limit = request.get("max_tokens")
        complete = m.state.complete
        cut = stopped and not complete and not (isinstance(limit, int) and m.tokens >= limit)
        text = m.text(0)
        if m.tokens:
            tokens, source = m.tokens, "logprobs"
        else:
            text = text or "".join(self.pieces)
            tokens, source = (self.usage, "usage") if self.usage is not None else (len(self.pieces), "text chunks")
        return Answer(text, tokens, ppl if math.isfinite(ppl) else None, cut, stopped,
                      source)  # type: ignore[arg-type]


@dataclass
class CarPlan:
    """The requests CAR makes and the rule that picks between them; no I/O.

    Args:
        model: the model of the short request (and of the long one, unless ``long_model``).
        endpoint: ``"chat"`` (default: the system messages below frame the question) or
            ``"completions"``, for base models, with ``short_prompt`` and ``long_prompt``
            as templates where ``{question}`` is the user's last message.
        calibration: CAR's Gaussians (:meth:`CarCalibration.fit`), fitted on final perplexities;
            its rule (the paper's Bayes rule, or one-sided: ``rule="upper"``) decides on the
            whole short answer.
        threshold: or a plain perplexity above which to escalate.
        early: cut the short answer as soon as its running perplexity crosses the early rule
            at or after ``warmup`` tokens (default True).
        early_calibration: the calibration of the early rule, fitted on running perplexities
            at ``warmup`` tokens (default: ``calibration``, or ``threshold``: final perplexities,
            compared with running ones).
        warmup: tokens before an early escalation may happen (default 8).
        short_system, long_system: the system messages (defaults :data:`SHORT_SYSTEM`, :data:`LONG_SYSTEM`).
        short_max_tokens, long_max_tokens: defaults 64 and 1024.
        long_model: the long request's model (default: ``model``).
        short_params, long_params: more request parameters (temperature, extra_body, ...).
        top_logprobs: alternatives per token of the short answer (default 5).
        long_logprobs: ask for logprobs in the long request too (default False: the long
            answer is not judged, and its tokens are counted from the usage chunk).

    A short answer stopped by the early rule on its last token is whole, not cut: the final
    rule (``calibration`` or ``threshold``) decides on it.
    """

    model: str
    endpoint: Literal["chat", "completions"] = "chat"
    short_prompt: str = "Q: {question}\nA:"
    long_prompt: str = "Q: {question}\nA: Let's think step by step."
    calibration: CarCalibration | None = None
    threshold: float | None = None
    early: bool = True
    warmup: int = 8
    short_system: str = SHORT_SYSTEM
    long_system: str = LONG_SYSTEM
    short_max_tokens: int = 64
    long_max_tokens: int = 1024
    long_model: str | None = None
    short_params: dict[str, Any] = field(default_factory=dict)
    long_params: dict[str, Any] = field(default_factory=dict)
    top_logprobs: int = 5
    early_calibration: CarCalibration | None = None
    long_logprobs: bool = False

    def __post_init__(self) -> None:
        if (self.calibration is None) == (self.threshold is None):
            raise ValueError("CarPlan needs one rule: calibration=CarCalibration.fit(...) or threshold=<perplexity>")
        for name in ("calibration", "early_calibration"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, CarCalibration):
                raise TypeError(f"{name} must be a CarCalibration, got {type(value).__name__}")
        t = self.threshold
        if t is not None and (isinstance(t, bool) or not isinstance(t, (int, float)) or not t == t):
            raise ValueError(f"threshold must be a perplexity (a number), got {t!r}")
        if isinstance(self.warmup, bool) or not isinstance(self.warmup, int) or self.warmup < 1:
            raise ValueError(f"warmup must be a whole number of tokens >= 1, got {self.warmup!r}")

    def escalate(self, ppl: float) -> bool:
        """The final rule: the calibration's (Bayes, or one-sided), else ``ppl > threshold``."""
        if self.calibration is not None:
            return self.calibration.escalate(ppl)
        assert self.threshold is not None
        return not ppl <= self.threshold  # NaN (no logprobs) escalates

    def escalate_early(self, ppl: float) -> bool:
        """The early rule, on a running perplexity: ``early_calibration``'s, else the final rule."""
        if self.early_calibration is not None:
            return self.early_calibration.escalate(ppl)
        return self.escalate(ppl)

    def _rule_name(self, early: bool = False) -> str:
        cal = self.early_calibration if early and self.early_calibration is not None else self.calibration
        if cal is None:
            return f"threshold {self.threshold:g}"
        name = "CAR's Bayes rule" if cal.rule == "bayes" else "CAR's one-sided rule"
        return f"{name} on running perplexities" if cal is self.early_calibration and early else name

    def p_correct(self, ppl: float | None) -> float | None:
        if self.calibration is None or ppl is None:
            return None
        return self.calibration.p_correct(ppl)

    def _framed(self, system: str, template: str, messages: Messages) -> dict[str, Any]:
        if self.endpoint == "completions":
            question = next((m["content"] for m in reversed(messages) if m.get("role") == "user"), "")
            return {"endpoint": "completions", "prompt": template.format(question=question)}
        return {"messages": [{"role": "system", "content": system}, *(m for m in messages if m.get("role") != "system")]}

    def short_request(self, messages: Messages) -> dict[str, Any]:
        triggers = []
        if self.early:
            def crossed(s: ChoiceStats) -> bool:
                return s.tokens >= self.warmup and self.escalate_early(s.ppl)

            triggers.append(Trigger(crossed, stop=True, name="car early escalation"))
        return dict(self.short_params, **self._framed(self.short_system, self.short_prompt, messages),
                    model=self.model, max_tokens=self.short_max_tokens, top_logprobs=self.top_logprobs,
                    triggers=triggers, text_limit=None)

    def long_request(self, messages: Messages) -> dict[str, Any]:
        request = dict(self.long_params, **self._framed(self.long_system, self.long_prompt, messages),
                       model=self.long_model or self.model, max_tokens=self.long_max_tokens,
                       text_limit=None, on_missing_logprobs="ignore")  # the long answer is not judged by its logprobs
        if not self.long_logprobs:
            # Left out of the request altogether (the SDK's NOT_GIVEN), unless long_params set them:
            # the tokens are then counted from the usage chunk that stream() asks for.
            for key in ("logprobs", "top_logprobs") if self.endpoint == "chat" else ("logprobs",):
                request.setdefault(key, NOT_GIVEN)
        return request

    def decide(self, short: Answer) -> tuple[bool, str]:
        """Whether to escalate after the short answer, and why."""
        ppl = math.nan if short.ppl is None else short.ppl
        rule = self._rule_name()
        if short.cut:
            return True, f"cut at token {short.tokens}: running perplexity {ppl:.3g} crossed {self._rule_name(True)}"
        if short.ppl is None:
            return True, "the short answer carried no logprobs"
        if self.escalate(ppl):
            return True, f"perplexity {ppl:.3g} crossed {rule}"
        return False, f"perplexity {ppl:.3g} within {rule}"

    def result(self, short: Answer, long: Answer | None, reason: str) -> CarResult:
        return CarResult(
            answer=long.text if long is not None else short.text,
            decision="long" if long is not None else "short",
            reason=reason,
            ppl=short.ppl,
            p_correct=self.p_correct(short.ppl),
            short=short,
            long=long,
        )


class _Router:
    """What the sync and async routers share: the plan, the callback, the steps."""

    def __init__(self, client: Any, model: str, *, on_decision: Callable[[CarResult], Any] | None = None,
                 **plan_options: Any) -> None:
        self.client = client
        self.plan = CarPlan(model, **plan_options)
        self.on_decision = on_decision

    def _steps(self, question: Messages | str) -> Generator[dict[str, Any], Answer, CarResult]:
        """The routing, without I/O: yields each request to stream, receives its answer."""
        messages = _as_messages(question)
        short = yield self.plan.short_request(messages)
        escalate, reason = self.plan.decide(short)
        long = (yield self.plan.long_request(messages)) if escalate else None
        result = self.plan.result(short, long, reason)
        if self.on_decision:
            self.on_decision(result)
        return result


class CarRouter(_Router):
    """CAR over any OpenAI-compatible client: ``router(question) -> CarResult``.

    A callable an agent can use as a tool. ``on_decision`` (optional) is called with each
    result, after the decision and any long answer. ``plan_options`` are :class:`CarPlan`'s.
    """

    def __call__(self, question: Messages | str) -> CarResult:
        """Route one question (chat messages, or a plain string)."""
        steps = self._steps(question)
        request = next(steps)
        while True:
            try:
                request = steps.send(self.answer(request))
            except StopIteration as done:
                return done.value

    def answer(self, request: dict[str, Any]) -> Answer:
        """Stream one of the plan's requests (``plan.short_request(...)``, ``plan.long_request(...)``)
        and read its answer."""
        reading = _Reading()
        with stream(self.client, **request) as s:
            for chunk in s:
                reading.read(chunk)
        return reading.answer(s, request)


class AsyncCarRouter(_Router):
    """:class:`CarRouter` for an ``AsyncOpenAI`` client: ``await router(question)``."""

    async def __call__(self, question: Messages | str) -> CarResult:
        """Route one question (chat messages, or a plain string)."""
        steps = self._steps(question)
        request = next(steps)
        while True:
            answer = await self.answer(request)
            try:
                request = steps.send(answer)
            except StopIteration as done:
                return done.value

    async def answer(self, request: dict[str, Any]) -> Answer:
        """:meth:`CarRouter.answer`, awaited."""
        reading = _Reading()
        s = await astream(self.client, **request)
        async with s:
            async for chunk in s:
                reading.read(chunk)
        return reading.answer(s, request)
