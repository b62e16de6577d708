"""Threshold triggers: conditions over the live statistics, and what to do when they hold.

A condition is a small object called with one choice's :class:`ChoiceStats` after
each counted token; it returns True when the trigger should fire. Conditions combine
with ``|``, ``&`` and ``~`` (as tenacity's stop strategies do), and a plain function of
the statistics is accepted wherever a condition is.

>>> from livepplx.core.stats import ChoiceStats
>>> from livepplx.core.tokens import make_token
>>> rule = ppl_above(5.0) & min_tokens(2)
>>> s = ChoiceStats()
>>> s.update(make_token(0, "", -3.0)); rule(s)    # ppl 20, but only one token
False
>>> s.update(make_token(0, "", -2.0)); rule(s)    # ppl exp(2.5) = 12.2 after two
True

Observing and holding are two steps. ``observe(stats)`` lets a stateful condition
(:func:`sustained`, a plain function, which may keep state of its own) see the token;
``holds(stats)`` answers, without changing anything. Combinators observe through every
operand on every token and only then combine the answers, so ``a & sustained(b, 3)``
counts ``b``'s run even on tokens where ``a`` is false; calling a condition does both.

The firing rule: a :class:`Trigger` fires once per crossing of its whole condition. It
fires on the first token at which the condition holds, then stays quiet while it keeps
holding, and re-arms on the first token at which it no longer holds; the next crossing
fires again. Each choice of an ``n > 1`` stream has its own arming state, and every
stream binds its own copy of a stateful condition, so one trigger object can watch many
streams at once.

A trigger that stops records the stop; the wrapper that reads the stream closes it and
only then runs the callbacks (``call``), then the escalations (:mod:`livepplx.monitor`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Awaitable, Callable, Union

from .stats import ChoiceStats

__all__ = [
    "Condition",
    "ConditionLike",
    "Not",
    "ppl_above",
    "window_ppl_above",
    "moving_ppl_above",
    "prob_below",
    "group_confidence_below",
    "entropy_above",
    "min_tokens",
    "sustained",
    "Trigger",
    "TriggerEvent",
    "Escalation",
    "Callback",
    "Armed",
]


class Condition:
    """Base of every condition: ``condition(stats) -> bool``; combine with ``|``, ``&``, ``~``.

    Subclasses define :meth:`holds`; a condition that keeps state across tokens also
    defines :meth:`observe` and :meth:`bind`, and sets ``stateful = True``.
    """

    #: True when :meth:`observe` must see every counted token
    stateful = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "__call__" in cls.__dict__ and cls.holds is Condition.holds:
            _adopt_legacy(cls)

    def observe(self, stats: ChoiceStats) -> None:
        """See one counted token (the statistics already include it). Stateless: nothing."""

    def holds(self, stats: ChoiceStats) -> bool:
        """Whether the condition holds now; changes nothing."""
        raise NotImplementedError

    def __call__(self, stats: ChoiceStats) -> bool:
        """Observe the newest token, then answer: what a trigger does on every counted token."""
        self.observe(stats)
        return self.holds(stats)

    def bind(self) -> Condition:
        """A copy for one choice of one stream; stateless conditions return themselves."""
        return self

    def __or__(self, other: ConditionLike) -> Condition:
        return AnyOf(self, as_condition(other))

    def __ror__(self, other: ConditionLike) -> Condition:
        return AnyOf(as_condition(other), self)

    def __and__(self, other: ConditionLike) -> Condition:
        return AllOf(self, as_condition(other))

    def __rand__(self, other: ConditionLike) -> Condition:
        return AllOf(as_condition(other), self)

    def __invert__(self) -> Condition:
        return Not(self)


ConditionLike = Union[Condition, Callable[[ChoiceStats], bool]]


def _adopt_legacy(cls: type[Condition]) -> None:
    """A 0.1-style subclass answers in ``__call__`` (and may keep state there): call it
    exactly once per counted token, as :func:`observe`, and answer from that."""
    legacy = cls.__dict__["__call__"]

    def observe(self: Condition, stats: ChoiceStats) -> None:
        self.__dict__["_legacy_answer"] = bool(legacy(self, stats))

    def holds(self: Condition, stats: ChoiceStats) -> bool:
        return bool(self.__dict__.get("_legacy_answer", False))

    def call(self: Condition, stats: ChoiceStats) -> bool:
        observe(self, stats)
        return holds(self, stats)

    cls.observe, cls.holds, cls.__call__ = observe, holds, call  # type: ignore[method-assign]
    cls.stateful = True


class _Function(Condition):
    """A plain function of the statistics: called exactly once per counted token (it may
    keep state of its own), its answer kept until the next token."""

    stateful = True

    def __init__(self, fn: Callable[[ChoiceStats], bool]) -> None:
        self.fn = fn
        self._last = False

    def observe(self, stats: ChoiceStats) -> None:
        self._last = bool(self.fn(stats))

    def holds(self, stats: ChoiceStats) -> bool:
        return self._last

    def bind(self) -> Condition:
        return _Function(self.fn)

    def __repr__(self) -> str:
        return getattr(self.fn, "__name__", repr(self.fn))


def as_condition(value: ConditionLike) -> Condition:
    """A condition from a condition or a plain function of the statistics."""
    if isinstance(value, Condition):
        return value
    if callable(value):
        return _Function(value)
    raise TypeError(f"a trigger condition must be a Condition or a function of ChoiceStats, got {value!r}")


class _Combination(Condition):
    """What ``|`` and ``&`` share: every stateful operand observes every token."""

    def __init__(self, *conditions: Condition) -> None:
        self.conditions = conditions
        self._observing = tuple(c for c in conditions if c.stateful)
        self.stateful = bool(self._observing)

    def observe(self, stats: ChoiceStats) -> None:
        for c in self._observing:
            c.observe(stats)

    def bind(self) -> Condition:
        return type(self)(*(c.bind() for c in self.conditions)) if self.stateful else self


class AnyOf(_Combination):
    """Holds when any of its conditions holds (``a | b``)."""

    def holds(self, stats: ChoiceStats) -> bool:
        return any(c.holds(stats) for c in self.conditions)

    def __repr__(self) -> str:
        return " | ".join(map(repr, self.conditions))


class AllOf(_Combination):
    """Holds when all of its conditions hold (``a & b``)."""

    def holds(self, stats: ChoiceStats) -> bool:
        return all(c.holds(stats) for c in self.conditions)

    def __repr__(self) -> str:
        return " & ".join(f"({c!r})" if isinstance(c, AnyOf) else repr(c) for c in self.conditions)


class Not(Condition):
    """Holds when its condition does not (``~a``); NaN comparisons make ``~prob_below(x)``
    hold before the first token too."""

    def __init__(self, condition: Condition) -> None:
        self.condition = condition
        self.stateful = condition.stateful

    def observe(self, stats: ChoiceStats) -> None:
        self.condition.observe(stats)

    def holds(self, stats: ChoiceStats) -> bool:
        return not self.condition.holds(stats)

    def bind(self) -> Condition:
        return Not(self.condition.bind()) if self.stateful else self

    def __repr__(self) -> str:
        return f"~{self.condition!r}"


class _Threshold(Condition):
    """``value(stats) > limit`` (or ``<`` for the ``_below`` kinds); NaN never holds."""

    name = ""
    below = False

    def __init__(self, limit: float) -> None:
        try:
            value = float(limit)
        except (TypeError, ValueError, OverflowError):
            value = math.nan
        if isinstance(limit, bool) or not isinstance(limit, (int, float)) or math.isnan(value):
            raise ValueError(f"{self.name}() needs a number, got {limit!r}")
        self.limit = value

    def value(self, stats: ChoiceStats) -> float:
        raise NotImplementedError

    def holds(self, stats: ChoiceStats) -> bool:
        v = self.value(stats)
        return v < self.limit if self.below else v > self.limit

    def __repr__(self) -> str:
        return f"{self.name}({self.limit:g})"


class ppl_above(_Threshold):
    """The running perplexity exceeds ``limit``."""

    name = "ppl_above"

    def value(self, stats: ChoiceStats) -> float:
        return stats.ppl


class window_ppl_above(_Threshold):
    """The perplexity of the last ``window`` tokens exceeds ``limit``."""

    name = "window_ppl_above"

    def value(self, stats: ChoiceStats) -> float:
        return stats.window_ppl


class moving_ppl_above(_Threshold):
    """The exponentially weighted moving perplexity exceeds ``limit``."""

    name = "moving_ppl_above"

    def value(self, stats: ChoiceStats) -> float:
        return stats.moving_ppl


class prob_below(_Threshold):
    """The newest token's probability is below ``theta`` (FLARE's trigger; FLARE used 0.8,
    LangChain's FlareChain 0.2)."""

    name = "prob_below"
    below = True

    def value(self, stats: ChoiceStats) -> float:
        return math.exp(stats.last_logprob)


class entropy_above(_Threshold):
    """The newest position's renormalised top-k entropy (nats) exceeds ``limit``."""

    name = "entropy_above"

    def value(self, stats: ChoiceStats) -> float:
        return stats.entropy


class group_confidence_below(_Threshold):
    """DeepConf: the group confidence (mean token confidence over a full window of
    ``group_window`` positions) has dropped below ``limit``.

    With ``full_window=False`` a partial window counts too, for answers shorter than
    the window.
    """

    name = "group_confidence_below"
    below = True

    def __init__(self, limit: float, full_window: bool = True) -> None:
        super().__init__(limit)
        self.full_window = full_window

    def value(self, stats: ChoiceStats) -> float:
        if self.full_window and stats.topk_positions < stats.group_window:
            return math.nan
        return stats.group_confidence


class min_tokens(Condition):
    """At least ``n`` tokens have been seen (a warm-up before other conditions count)."""

    def __init__(self, n: int) -> None:
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"min_tokens() needs a whole number n >= 0, got {n!r}")
        self.n = n

    def holds(self, stats: ChoiceStats) -> bool:
        return stats.tokens >= self.n

    def __repr__(self) -> str:
        return f"min_tokens({self.n})"


class sustained(Condition):
    """``condition`` has held for the last ``n`` counted tokens in a row."""

    stateful = True

    def __init__(self, condition: ConditionLike, n: int) -> None:
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"sustained() needs n >= 1 tokens, got {n!r}")
        self.condition = as_condition(condition)
        self.n = n
        self._run = 0

    def observe(self, stats: ChoiceStats) -> None:
        self.condition.observe(stats)
        self._run = self._run + 1 if self.condition.holds(stats) else 0

    def holds(self, stats: ChoiceStats) -> bool:
        return self._run >= self.n

    def bind(self) -> Condition:
        return sustained(self.condition.bind(), self.n)

    def __repr__(self) -> str:
        return f"sustained({self.condition!r}, {self.n})"


@dataclass(frozen=True)
class TriggerEvent:
    """What a callback is told when its trigger fires."""

    #: the trigger's name (its condition written out, unless named)
    trigger: str
    #: the choice whose statistics crossed
    choice: int
    #: how many tokens of that choice had been counted (the crossing token is the last)
    at_token: int
    #: the crossing token's text
    token: str
    #: a snapshot of that choice's statistics (:meth:`ChoiceStats.as_dict`)
    stats: dict[str, Any]
    #: the choice's text so far (its last ``text_limit`` characters)
    text: str

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready copy (the statistics are already JSON-ready)."""
        return asdict(self)


@dataclass(frozen=True)
class Escalation:
    """What an escalation callback gets to start a follow-up request."""

    #: the event that escalated
    event: TriggerEvent
    #: the request the stream was opened with, when the stream was opened by livepplx
    request: dict[str, Any] = field(default_factory=dict)


def _no_callback(event: Any) -> None:
    return None


class Armed:
    """One trigger watching one choice of one stream: its own bound condition and the
    firing rule (fire on a crossing, stay quiet while it holds, re-arm when it stops).

    >>> from livepplx.core.stats import ChoiceStats
    >>> from livepplx.core.tokens import make_token
    >>> armed, s, fired = Armed(Trigger(prob_below(0.5))), ChoiceStats(), []
    >>> for lp in (-2.0, -2.0, -0.1, -2.0):
    ...     s.update(make_token(0, "", lp))
    ...     fired.append(armed.crossed(s))
    >>> fired
    [True, False, False, True]
    """

    __slots__ = ("trigger", "condition", "armed")

    def __init__(self, trigger: Trigger) -> None:
        self.trigger = trigger
        self.condition = trigger.when.bind()
        self.armed = True

    def crossed(self, stats: ChoiceStats) -> bool:
        """Show the condition the newest counted token; True when the trigger fires now."""
        if self.condition(stats):
            if self.armed:
                self.armed = False
                return True
            return False
        self.armed = True  # the value came back: the next crossing fires again
        return False


#: A callback: a plain function, or an ``async def`` one under :func:`~livepplx.amonitor`.
Callback = Callable[[Any], Union[Any, Awaitable[Any]]]


class Trigger:
    """A condition and what to do when it holds.

    Args:
        when: a condition (or a function of :class:`ChoiceStats` returning bool).
        call: a callback given a :class:`TriggerEvent` each time the trigger fires.
        stop: stop the stream when it fires (closes the HTTP response, so the server stops).
        escalate: a callback given an :class:`Escalation`; the stream is stopped first,
            so the follow-up request can start at once.
        name: how reports name the trigger (default: the condition written out).

    Order, when a stopping trigger fires: the source is closed first, then every ``call``
    of that chunk runs in firing order, then every ``escalate``. A trigger that does not
    stop has its ``call`` run after the chunk that fired it was counted, before that chunk
    is handed on. Under :func:`~livepplx.amonitor` and :func:`~livepplx.astream` an
    ``async def`` callback or escalation is awaited; under the sync wrappers it is an error.
    An exception from a callback reaches the caller as :class:`~livepplx.core.errors.CallbackError`.

    >>> Trigger(ppl_above(20) & min_tokens(8), stop=True).name
    'ppl_above(20) & min_tokens(8)'
    """

    def __init__(
        self,
        when: ConditionLike,
        *,
        call: Callback | None = None,
        stop: bool = False,
        escalate: Callback | None = None,
        name: str | None = None,
    ) -> None:
        self.when = as_condition(when)
        if call is not None and not callable(call):
            raise TypeError(f"Trigger(call=...) must be a function of the TriggerEvent, got {call!r}")
        if escalate is not None and not callable(escalate):
            raise TypeError(f"Trigger(escalate=...) must be a function of the Escalation, got {escalate!r}")
        self.call = call or _no_callback
        self.escalate = escalate
        self.stop = stop or escalate is not None
        self.name = name or repr(self.when)

    def __repr__(self) -> str:
        return f"Trigger({self.name!r}, stop={self.stop})"
