"""CAR-style adaptive reasoning, streamed: answer short, escalate to long reasoning when unsure.

CAR (arXiv 2505.15154) asks for a short, direct answer, computes its perplexity, and
pays for long reasoning only when the perplexity says the model is unsure. On a live
stream livepplx can decide before the short answer has finished: with ``early=True``
the short answer is cut as soon as its running perplexity crosses the escalation rule
after a warm-up, and the long request starts at once.

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

from .calibrate import CarCalibration
from .client import astream, stream
from .monitor import _Monitored
from .stats import ChoiceStats
from .triggers import Trigger

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
    tokens: int
    #: its running perplexity at the end (None when no logprobs came)
    ppl: float | None
    #: cut before it finished
    cut: bool


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
        """The short answer was cut early, to escalate sooner."""
        return self.short.cut

    @property
    def tokens(self) -> int:
        """Tokens generated in all: the short answer and, if escalated, the long one."""
        return self.short.tokens + (self.long.tokens if self.long else 0)


def _answer(m: _Monitored) -> Answer:
    ppl = m.ppl
    return Answer(m.text(0), m.tokens, ppl if math.isfinite(ppl) else None, m.stopped is not None)


@dataclass
class CarPlan:
    """The requests CAR makes and the rule that picks between them; no I/O.

    Args:
        model: the model of the short request (and of the long one, unless ``long_model``).
        endpoint: ``"chat"`` (default: the system messages below frame the question) or
            ``"completions"``, for base models, with ``short_prompt`` and ``long_prompt``
            as templates where ``{question}`` is the user's last message.
        calibration: CAR's Gaussians (:meth:`CarCalibration.fit`); its Bayes rule decides.
        threshold: or a plain perplexity above which to escalate.
        early: cut the short answer as soon as its running perplexity crosses the rule
            after ``warmup`` tokens (default True).
        warmup: tokens before an early escalation may happen (default 8).
        short_system, long_system: the system messages (defaults :data:`SHORT_SYSTEM`, :data:`LONG_SYSTEM`).
        short_max_tokens, long_max_tokens: defaults 64 and 1024.
        long_model: the long request's model (default: ``model``).
        short_params, long_params: more request parameters (temperature, extra_body, ...).
        top_logprobs: alternatives per token of the short answer (default 5).
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

    def __post_init__(self) -> None:
        if (self.calibration is None) == (self.threshold is None):
            raise ValueError("CarPlan needs one rule: calibration=CarCalibration.fit(...) or threshold=<perplexity>")

    def escalate(self, ppl: float) -> bool:
        """The rule: CAR's Bayes decision with a calibration, else ``ppl > threshold``."""
        if self.calibration is not None:
            return self.calibration.escalate(ppl)
        assert self.threshold is not None
        return not ppl <= self.threshold  # NaN (no logprobs) escalates

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
                return s.tokens >= self.warmup and self.escalate(s.ppl)

            triggers.append(Trigger(crossed, stop=True, name="car early escalation"))
        return dict(self.short_params, **self._framed(self.short_system, self.short_prompt, messages),
                    model=self.model, max_tokens=self.short_max_tokens, top_logprobs=self.top_logprobs,
                    triggers=triggers, text_limit=None)

    def long_request(self, messages: Messages) -> dict[str, Any]:
        return dict(self.long_params, **self._framed(self.long_system, self.long_prompt, messages),
                    model=self.long_model or self.model, max_tokens=self.long_max_tokens,
                    text_limit=None, on_missing_logprobs="ignore")  # the long answer is not judged by its logprobs

    def decide(self, short: Answer) -> tuple[bool, str]:
        """Whether to escalate after the short answer, and why."""
        ppl = math.nan if short.ppl is None else short.ppl
        rule = "CAR's Bayes rule" if self.calibration is not None else f"threshold {self.threshold:g}"
        if short.cut:
            return True, f"cut at token {short.tokens}: running perplexity {ppl:.3g} crossed {rule}"
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
            with stream(self.client, **request) as s:
                for _ in s:
                    pass
            try:
                request = steps.send(_answer(s))
            except StopIteration as done:
                return done.value


class AsyncCarRouter(_Router):
    """:class:`CarRouter` for an ``AsyncOpenAI`` client: ``await router(question)``."""

    async def __call__(self, question: Messages | str) -> CarResult:
        """Route one question (chat messages, or a plain string)."""
        steps = self._steps(question)
        request = next(steps)
        while True:
            s = await astream(self.client, **request)
            async with s:
                async for _ in s:
                    pass
            try:
                request = steps.send(_answer(s))
            except StopIteration as done:
                return done.value
