"""The token record and the value policy for odd logprobs.

Every wire format ends up here: one :class:`Token` per generated token, carrying
the sampled token's logprob after the policy below and the listed alternatives.

The policy (``shared/guide/wire-formats.md``):

* ``null``, NaN, non-numbers and positive logprobs are not tokens of the running
  statistics: the token is ``SKIPPED``.
* Censored values (``-9999.0`` or below, which covers llama.cpp's ``-3.4e38`` and
  ``-inf``) mean "less likely than anything listed": the token is ``CENSORED`` and
  takes the lowest finite listed alternative at that position, or ``ln(1e-6)``
  when nothing is listed.
* Probability mode (llama.cpp ``post_sampling_probs``) takes ``log(prob)``;
  ``prob == 0`` is censored.
* Any other finite value is the value, however small: ``-800`` is a token with
  ``p = e^-800``. An integer past the float range reads as infinite (so a huge
  negative one is censored and a huge positive one skipped); ``true``/``false`` are
  never numbers.

>>> make_token(0, "hi", -0.5, [-0.5, -1.2]).logprob
-0.5
>>> t = make_token(0, "x", -9999.0, [-0.1, -3.0, -9999.0])
>>> t.status is Status.CENSORED, t.logprob
(True, -3.0)
>>> make_token(0, "x", None, []).status is Status.SKIPPED
True
>>> make_token(0, "x", -10**400, [-2.5]).logprob, make_token(0, "x", -800, []).status.name
(-2.5, 'OK')
"""

from __future__ import annotations

import math
from numbers import Real as _Real
from enum import IntEnum
from typing import Any, Iterable

import msgspec

__all__ = ["CENSORED_AT_OR_BELOW", "UNLISTED_FLOOR", "Status", "Token", "make_token", "as_logprob"]

#: A logprob at or below this is a placeholder, not a value (OpenAI and vLLM use -9999.0).
CENSORED_AT_OR_BELOW = -9999.0
#: What a censored token is worth when the server listed no alternative to bound it.
UNLISTED_FLOOR = math.log(1e-6)

_log = math.log


class Status(IntEnum):
    """What the value policy made of a token's logprob."""

    OK = 0
    CENSORED = 1
    SKIPPED = 2


# Enum attribute lookups cost ~100 ns each: the hot paths use these names instead.
OK, CENSORED, SKIPPED = Status.OK, Status.CENSORED, Status.SKIPPED


class Token(msgspec.Struct, gc=False, eq=False):
    """One generated token of one choice.

    Attributes:
        choice: the choice index (``n > 1`` streams interleave choices).
        text: the token's text, ``""`` when the format does not say.
        logprob: the value the statistics use (NaN when ``SKIPPED``).
        status: :class:`Status` of the raw value.
        alternatives: the listed alternatives' logprobs, finite and not censored.

    A struct made in C (msgspec): one is made for every token, at a third of the
    instructions of a Python class's ``__init__``; never tracked by the garbage
    collector (it holds no container of objects of its own making). Compared and hashed
    by identity, as a plain class is.
    """

    choice: int
    text: str
    logprob: float
    status: Status
    alternatives: tuple[float, ...]

    def __repr__(self) -> str:
        return (
            f"Token(choice={self.choice}, text={self.text!r}, logprob={self.logprob!r}, "
            f"status={self.status.name}, alternatives={self.alternatives!r})"
        )


def as_logprob(raw: object, prob_mode: bool = False) -> float | None:
    """The raw value as a logprob, ``None`` if it is not one (the policy's "skipped").

    Censored values come back as they are (``-9999.0``, ``-inf``); the caller decides.

    >>> as_logprob(-1.5), as_logprob(float("nan")), as_logprob(0.25, prob_mode=True)
    (-1.5, None, -1.3862943611198906)
    """
    if type(raw) is not float:
        # bool is an int but never a logprob; strings are never numbers here.
        if type(raw) is int:
            raw = _int_to_float(raw)
        elif isinstance(raw, _Real) and not isinstance(raw, bool):
            raw = float(raw)  # numpy's float32 / float64 (llama-cpp-python's answers), Fraction, Decimal-free reals
        else:
            return None
    if prob_mode:
        if not 0.0 <= raw <= 1.0:  # also False for NaN
            return None
        return _log(raw) if raw > 0.0 else -math.inf
    if raw != raw or raw > 0.0:  # NaN, or a positive "logprob"
        return None
    return raw


def _int_to_float(raw: int) -> float:
    """An int as a float; past the float range (JSON allows ``1`` followed by 400 zeros) it is ±inf."""
    try:
        return float(raw)
    except OverflowError:
        return math.inf if raw > 0 else -math.inf


def _clean_alternatives(alternatives: Iterable[object], prob_mode: bool) -> tuple[float, ...]:
    values: tuple[Any, ...] = tuple(alternatives)
    if not prob_mode and values:
        # Fast path: every value an ordinary logprob. min/max raise TypeError on None, a
        # string or a list, and a NaN makes the sum compare unequal to itself. An int past
        # the float range fails the bounds. False == 0 passes them, so a list whose largest
        # value is 0 is also checked for bools (which are never logprobs). The values come
        # back as floats: a JSON int, numpy's float32 (llama-cpp-python's answers) or a float
        # subclass would otherwise be computed with in its own type (float32 arithmetic in
        # the statistics), and the C accumulator, which reads doubles, would differ.
        try:
            top = max(values)
            if (
                min(values) > CENSORED_AT_OR_BELOW
                and (top < 0.0 or (top == 0.0 and not any(v is False for v in values)))
                and sum(values) == sum(values)
            ):
                return tuple(map(float, values))
        except TypeError:
            pass
    out = []
    for raw in values:
        value = as_logprob(raw, prob_mode)
        if value is not None and value > CENSORED_AT_OR_BELOW:
            out.append(value)
    return tuple(out)


def make_token(
    choice: int, text: str, raw: object, alternatives: Iterable[object] = (), prob_mode: bool = False
) -> Token:
    """Apply the value policy to one token's raw logprob (or probability) and alternatives."""
    alts = _clean_alternatives(alternatives, prob_mode)
    if type(raw) is float and CENSORED_AT_OR_BELOW < raw <= 0.0 and not prob_mode:
        return Token(choice, text, raw, OK, alts)  # the common case, first
    value = as_logprob(raw, prob_mode)
    if value is None:
        return Token(choice, text, math.nan, SKIPPED, alts)
    if value <= CENSORED_AT_OR_BELOW:
        # The sampled token is at least as unlikely as the least likely listed one.
        return Token(choice, text, min(alts) if alts else UNLISTED_FLOOR, CENSORED, alts)
    return Token(choice, text, value, OK, alts)

