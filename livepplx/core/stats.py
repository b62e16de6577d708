"""Online statistics of a token stream: O(1) time per update, O(1) memory.

Each small statistic follows one protocol, ``update(x)`` then ``get()``, and
:class:`ChoiceStats` composes them into everything livepplx reports for one choice.

>>> from livepplx.core.tokens import make_token
>>> s = ChoiceStats(window=2)
>>> for lp in (-1.0, -2.0, -3.0):
...     s.update(make_token(0, "", lp))
>>> s.tokens, round(s.ppl, 6), round(s.window_ppl, 6)    # exp(2), exp(2.5)
(3, 7.389056, 12.182494)
"""

from __future__ import annotations

import math
from array import array
from typing import TYPE_CHECKING, Any, Sequence, cast

if TYPE_CHECKING:  # the C accumulator has the same attributes and methods as its Python twin
    from .accumulator import PyAccumulator as Accumulator
else:
    from .accumulator import Accumulator

__all__ = [
    "Mean",
    "RollingMean",
    "EWMean",
    "Variance",
    "topk_entropy",
    "deepconf_confidence",
    "ChoiceStats",
    "DEFAULT_VOCAB_SIZE",
    "MAX_WINDOW",
    "json_number",
]

_exp = math.exp
_log = math.log
_nan = math.nan
_inf = math.inf


def _exp_neg(mean: float) -> float:
    """``exp(-mean)``: infinite, not an OverflowError, once ``-mean`` passes 709.78
    (a mean logprob below that is legal input; its perplexity is beyond a double)."""
    try:
        return _exp(-mean)
    except OverflowError:
        return _inf

#: Vocabulary size assumed by the entropy upper bound when the caller does not give one.
#: It is a per-model setting: Gemma 3's 262,144 here; GPT-4o's o200k tokenizer has about
#: 200,000, Llama 3 128,256, Qwen 2.5 151,936. Only ``entropy_upper`` depends on it, and
#: a value larger than the model's only loosens that bound.
DEFAULT_VOCAB_SIZE = 262_144
#: The longest window a rolling statistic accepts (:class:`ChoiceStats` keeps 16 bytes a slot).
MAX_WINDOW = 1 << 24


class Mean:
    """Running mean with Neumaier-compensated summation: no drift over long streams.

    >>> m = Mean()
    >>> for x in (1e16, 1.0, -1e16):
    ...     m.update(x)
    >>> m.get() * 3      # a plain float sum would give 0.0
    1.0
    """

    __slots__ = ("n", "_sum", "_comp")

    def __init__(self) -> None:
        self.n = 0
        self._sum = 0.0
        self._comp = 0.0  # the low-order bits the float sum lost

    def update(self, x: float) -> None:
        self.n += 1
        s = self._sum
        t = s + x
        if abs(s) >= abs(x):
            self._comp += (s - t) + x
        else:
            self._comp += (x - t) + s
        self._sum = t

    def total(self) -> float:
        return self._sum + self._comp

    def get(self) -> float:
        """The mean, NaN before the first update."""
        return (self._sum + self._comp) / self.n if self.n else _nan


def _check_window(window: Any, name: str = "window") -> None:
    if isinstance(window, bool) or not isinstance(window, int) or not 1 <= window <= MAX_WINDOW:
        raise ValueError(f"{name} must be a whole number of tokens from 1 to {MAX_WINDOW:,}, got {window!r}")


def _zeros(n: int) -> array[float]:
    """``n`` raw doubles: the memory is fixed from the start (a list would grow by a float
    object per slot as it fills)."""
    return array("d", bytes(8 * n))


def _ring(n: int) -> array[float]:
    """:func:`_zeros` seen through a memoryview: an item is stored in fewer instructions
    than through the array's own ``__setitem__`` (which parses its argument), read alike.
    Typed as the array it views (typeshed gives a memoryview's items as ints only)."""
    return cast("array[float]", memoryview(_zeros(n)))


class RollingMean:
    """Mean of the last ``window`` values: a ring buffer and a compensated running sum.

    Adding the new value and subtracting the one that leaves are both compensated, so
    the sum does not drift even after millions of updates.

    >>> r = RollingMean(2)
    >>> for x in (1.0, 2.0, 4.0):
    ...     r.update(x)
    >>> r.get(), r.full
    (3.0, True)
    """

    __slots__ = ("window", "_buf", "_pos", "_count", "_sum", "_comp")

    def __init__(self, window: int) -> None:
        _check_window(window)
        self.window = window
        self._buf = _zeros(window)
        self._pos = 0
        self._count = 0
        self._sum = 0.0
        self._comp = 0.0

    def update(self, x: float) -> None:
        i = self._pos
        s, comp = self._sum, self._comp
        if self._count == self.window:
            # Take out the value that leaves (compensated, like the add below).
            old = -self._buf[i]
            t = s + old
            comp += (s - t) + old if abs(s) >= abs(old) else (old - t) + s
            s = t
        else:
            self._count += 1
        self._buf[i] = x
        t = s + x
        comp += (s - t) + x if abs(s) >= abs(x) else (x - t) + s
        self._sum, self._comp = t, comp
        self._pos = i + 1 if i + 1 < self.window else 0

    @property
    def full(self) -> bool:
        return self._count == self.window

    def __len__(self) -> int:
        return self._count

    def get(self) -> float:
        return (self._sum + self._comp) / self._count if self._count else _nan


class EWMean:
    """Exponentially weighted mean, ``y += alpha * (x - y)``, starting at the first value.

    >>> e = EWMean(0.5)
    >>> for x in (4.0, 0.0, 2.0):
    ...     e.update(x)
    >>> e.get()
    2.0
    """

    __slots__ = ("alpha", "_value")

    def __init__(self, alpha: float) -> None:
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0.0 < alpha <= 1.0:
            raise ValueError(f"alpha must be a number in (0, 1], got {alpha!r}")
        self.alpha = alpha
        self._value = _nan

    def update(self, x: float) -> None:
        y = self._value
        self._value = x if y != y else y + self.alpha * (x - y)

    def get(self) -> float:
        return self._value


class Variance:
    """Population variance by Welford's algorithm (stable where sum-of-squares is not).

    >>> v = Variance()
    >>> for x in (1e9 + 4, 1e9 + 7, 1e9 + 13, 1e9 + 16):
    ...     v.update(x)
    >>> v.get()
    22.5
    """

    __slots__ = ("n", "_mean", "_m2")

    def __init__(self) -> None:
        self.n = 0
        self._mean = 0.0
        self._m2 = 0.0

    def update(self, x: float) -> None:
        self.n += 1
        delta = x - self._mean
        self._mean += delta / self.n
        self._m2 += delta * (x - self._mean)

    def get(self) -> float:
        return self._m2 / self.n if self.n else _nan


def topk_entropy(alternatives: Sequence[float], vocab_size: int = DEFAULT_VOCAB_SIZE) -> tuple[float, float, float, float]:
    """Entropy facts from the listed alternatives' logprobs at one position.

    Returns ``(h_k, r, lower, upper)``: the entropy of the top-k renormalised, the tail
    mass ``r = 1 - sum(p)`` the list leaves out, and bounds on the full entropy, every
    unlisted token having ``p <= min(p_min, r)``::

        lower = -sum(p log p) + r log(1 / min(p_min, r))
        upper = -sum(p log p) + r log((V - k) / r)

    With a vocabulary of 3, the tail is one token of p = 0.25 and the bounds meet at
    the entropy of (0.5, 0.25, 0.25):

    >>> h, r, lo, hi = topk_entropy([math.log(0.5), math.log(0.25)], vocab_size=3)
    >>> round(h, 6), r, round(lo, 6), round(hi, 6)
    (0.636514, 0.25, 1.039721, 1.039721)
    """
    total = 0.0
    p_log_p = 0.0
    a_min = 0.0
    for a in alternatives:
        p = _exp(a)
        total += p
        p_log_p += p * a
        if a < a_min:
            a_min = a
    if total <= 0.0:  # every alternative below -745: exp underflows, nothing to renormalise
        return _nan, _nan, _nan, _nan
    return (_log(total) - p_log_p / total, *_tail_bounds(total, p_log_p, a_min, len(alternatives), vocab_size))


def _tail_bounds(total: float, p_log_p: float, a_min: float, k: int, vocab_size: int) -> tuple[float, float, float]:
    """``(r, lower, upper)`` of :func:`topk_entropy` from the sums of one position (``total > 0``)."""
    r = 1.0 - total
    if r <= 1e-12:  # float32 logprobs can sum a hair above 1
        return 0.0, -p_log_p, -p_log_p
    # log(1 / min(p_min, r)) from the logprob itself: exp(a_min) may underflow to 0.
    lower = -p_log_p + r * -min(a_min, _log(r))
    unseen = vocab_size - k
    upper = -p_log_p + r * _log(unseen / r) if unseen > 0 else lower
    return r, lower, max(lower, upper)


def deepconf_confidence(alternatives: Sequence[float]) -> float:
    """DeepConf token confidence ``C = -(1/k) sum_j log p_j`` over the k listed alternatives.

    Higher means more peaked; its scale depends on k (arXiv 2508.15260).

    >>> deepconf_confidence([-0.1, -2.0, -3.9])
    2.0
    """
    return -sum(alternatives) / len(alternatives) if alternatives else _nan


def json_number(x: float) -> float | str | None:
    """A statistic as JSON allows it: the number, ``None`` (null) when it is undefined
    (NaN: no token yet), or the string ``"inf"`` / ``"-inf"`` when it is infinite (a
    perplexity past a double's range). JSON has no NaN or Infinity.

    >>> json_number(1.5), json_number(math.nan), json_number(math.inf)
    (1.5, None, 'inf')
    """
    if x - x == 0.0:  # finite: the common case first
        return float(x)  # a numpy scalar from a client's own numbers would not serialise
    if x != x:
        return None
    return "inf" if x > 0 else "-inf"



class ChoiceStats(Accumulator):
    """Everything livepplx keeps for one choice of a stream, updated token by token.

    Args:
        index: the choice index.
        window: tokens in the windowed perplexity (default 64).
        ema_alpha: weight of the newest token in the moving perplexity
            (default ``2 / (window + 1)``, pandas' "span = window").
        group_window: tokens in DeepConf's group confidence (default 2048, as in the paper).
        vocab_size: the model's vocabulary size, for the entropy upper bound only: set it
            per model (default :data:`DEFAULT_VOCAB_SIZE`, Gemma 3's 262,144).

    Definitions: ``ppl = exp(-mean logprob)`` over the tokens counted (``OK`` and
    ``CENSORED``); a ``SKIPPED`` token changes nothing but :attr:`skipped`. Entropy
    and confidence use the positions where alternatives were listed. The lowest group
    confidence is the minimum over full windows, or over the partial window while
    fewer than ``group_window`` positions have been seen.

    How it stays cheap: ``update(token)`` and ``update_many(tokens)`` come from
    :mod:`livepplx.core.accumulator` (in C when built, else its Python twin, bit for bit the
    same): one update does the work of :class:`Mean`, :class:`EWMean`, :class:`Variance`
    and :func:`topk_entropy`'s sums, and what no update needs (the perplexities, the
    newest position's tail mass and entropy bounds) is computed when read. A window's
    sum is the difference of two compensated running sums, ``S(n) - S(n - window)``: each token stores the pair (sum, compensation) in a ring of
    ``window + 1`` slots instead of taking a value out and adding one in. The two sums
    differ by the window's values exactly (the running sums are close, so their float
    difference is exact), and the compensations carry what the floats lost: no drift.
    """

    __slots__ = ("index", "vocab_size")

    def __init__(
        self,
        index: int = 0,
        *,
        window: int = 64,
        ema_alpha: float | None = None,
        group_window: int = 2048,
        vocab_size: int = DEFAULT_VOCAB_SIZE,
    ) -> None:
        if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < 1:
            raise ValueError(f"vocab_size must be the model's vocabulary size, a positive whole number; got {vocab_size!r}")
        _check_window(window)
        _check_window(group_window, "group_window")
        self._alpha = EWMean(ema_alpha if ema_alpha is not None else 2.0 / (window + 1)).alpha  # its check
        self.index = index
        self.vocab_size = vocab_size
        #: tokens counted in the statistics (OK and CENSORED)
        self.tokens = 0
        #: tokens whose logprob was a placeholder (-9999, -inf, prob 0)
        self.censored = 0
        #: tokens whose logprob was missing or not a logprob (null, NaN, positive)
        self.skipped = 0
        #: the newest counted logprob
        self.last_logprob = _nan
        self._min_logprob = _inf  # the lowest counted logprob (min_logprob: NaN before the first)
        #: positions that listed alternatives
        self.topk_positions = 0
        #: the newest position's top-k entropy (its tail mass and bounds are properties)
        self.entropy = _nan
        #: the newest position's DeepConf token confidence
        self.confidence = _nan
        #: the lowest DeepConf group confidence so far
        self.lowest_group_confidence = _nan
        self._alts: tuple[float, ...] = ()  # the newest position's alternatives
        self._sum = self._comp = 0.0  # the compensated sum of the counted logprobs (Neumaier)
        self._ema = _nan  # EWMean's value
        self._vmean = self._m2 = 0.0  # Welford's mean and M2, over `tokens` values
        # Rings of window + 1 slots of running (sum, compensation) pairs, S(0) = (0, 0) in slot 0.
        self._wsize, self._wpos = window, 0
        self._wsums, self._wcomps = _ring(window + 1), _ring(window + 1)
        self._hn, self._hsum, self._hcomp = 0, 0.0, 0.0  # compensated sum of the finite entropies
        self._gsize, self._gpos, self._gsum, self._gcomp = group_window, 0, 0.0, 0.0  # of the confidences
        self._gsums, self._gcomps = _ring(group_window + 1), _ring(group_window + 1)

    # -- derived values: computed when read, so an update stays cheap ---------------

    @property
    def mean_logprob(self) -> float:
        return (self._sum + self._comp) / self.tokens if self.tokens else _nan

    @property
    def ppl(self) -> float:
        """Running perplexity ``exp(-mean logprob)``; NaN before the first token."""
        return _exp_neg((self._sum + self._comp) / self.tokens) if self.tokens else _nan

    @property
    def window_ppl(self) -> float:
        """Perplexity of the last ``window`` tokens."""
        n = self.tokens
        if not n:
            return _nan
        size = self._wsize
        i = self._wpos + 1 if self._wpos < size else 0  # S(n - window): (0, 0) until the window fills
        return _exp_neg(((self._sum - self._wsums[i]) + (self._comp - self._wcomps[i])) / (n if n < size else size))

    @property
    def moving_ppl(self) -> float:
        """Exponentially weighted moving perplexity."""
        return _exp_neg(self._ema)

    @property
    def min_logprob(self) -> float:
        """The lowest counted logprob; NaN before the first token."""
        return self._min_logprob if self.tokens else _nan

    @property
    def min_prob(self) -> float:
        return _exp(self._min_logprob) if self.tokens else _nan

    @property
    def max_surprisal(self) -> float:
        return -self._min_logprob if self.tokens else _nan

    @property
    def surprisal_var(self) -> float:
        return self._m2 / self.tokens if self.tokens else _nan

    @property
    def entropy_mean(self) -> float:
        return (self._hsum + self._hcomp) / self._hn if self._hn else _nan

    @property
    def tail_mass(self) -> float:
        """The newest position's tail mass ``1 - sum(p)`` (:func:`topk_entropy`)."""
        return topk_entropy(self._alts, self.vocab_size)[1] if self._alts else _nan

    @property
    def entropy_lower(self) -> float:
        """A lower bound on the newest position's full entropy (:func:`topk_entropy`)."""
        return topk_entropy(self._alts, self.vocab_size)[2] if self._alts else _nan

    @property
    def entropy_upper(self) -> float:
        """An upper bound on the newest position's full entropy (:func:`topk_entropy`)."""
        return topk_entropy(self._alts, self.vocab_size)[3] if self._alts else _nan

    @property
    def group_confidence(self) -> float:
        """DeepConf group confidence: mean token confidence over the last ``group_window`` positions."""
        k = self.topk_positions
        if not k:
            return _nan
        size = self._gsize
        i = self._gpos + 1 if self._gpos < size else 0
        return ((self._gsum - self._gsums[i]) + (self._gcomp - self._gcomps[i])) / (k if k < size else size)

    @property
    def window(self) -> int:
        return self._wsize

    @property
    def group_window(self) -> int:
        return self._gsize

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready summary: undefined values (no tokens yet) are ``None``, infinite
        ones the strings ``"inf"`` / ``"-inf"`` (:func:`json_number`)."""
        f = json_number
        _, tail_mass, lower, upper = topk_entropy(self._alts, self.vocab_size) if self._alts else (_nan,) * 4
        return {
            "index": self.index,
            "tokens": self.tokens,
            "ppl": f(self.ppl),
            "mean_logprob": f(self.mean_logprob),
            "min_logprob": f(self.min_logprob),
            "min_prob": f(self.min_prob),
            "max_surprisal": f(self.max_surprisal),
            "surprisal_var": f(self.surprisal_var),
            "window": self.window,
            "window_ppl": f(self.window_ppl),
            "moving_ppl": f(self.moving_ppl),
            "censored": self.censored,
            "skipped": self.skipped,
            "topk_positions": self.topk_positions,
            "entropy_mean": f(self.entropy_mean),
            "entropy": f(self.entropy),
            "tail_mass": f(tail_mass),
            "entropy_lower": f(lower),
            "entropy_upper": f(upper),
            "confidence": f(self.confidence),
            "group_confidence": f(self.group_confidence),
            "lowest_group_confidence": f(self.lowest_group_confidence),
        }
