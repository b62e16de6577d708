"""The running sums behind :class:`~livepplx.core.stats.ChoiceStats`, and their per-token update.

Two implementations of one thing, chosen at import:

- ``livepplx.core._caccumulator.Accumulator``, in C, built when livepplx is installed with a C
  compiler at hand (a few hundred instructions a token, against ~13k in Python: a third of
  what a raw reader spends on a chunk of a stream);
- :class:`PyAccumulator` below, its Python twin, used when the extension is not built or
  ``LIVEPPLX_PURE_PYTHON=1`` is set.

Both do the same IEEE operations in the same order with the same ``exp`` and ``log``
(libm's, which Python's math module calls), so they agree bit for bit:
``tests/test_accumulator.py`` checks it on random streams. :data:`IMPLEMENTATION` says
which one runs. The state is held in attributes of the same names in both, which
:class:`~livepplx.core.stats.ChoiceStats` sets in ``__init__`` and reads in its properties.
"""

from __future__ import annotations

import math
import os
from array import array
from typing import Iterable

from .tokens import SKIPPED, Token

__all__ = ["Accumulator", "PyAccumulator", "IMPLEMENTATION"]

_exp = math.exp
_log = math.log
_nan = math.nan


class PyAccumulator:
    """The Python twin of the C accumulator (see the module's docstring).

    How it stays cheap: one method does the work of :class:`~livepplx.core.stats.Mean`,
    :class:`~livepplx.core.stats.EWMean`, :class:`~livepplx.core.stats.Variance` and
    :func:`~livepplx.core.stats.topk_entropy`'s sums (a call and the attribute traffic of each
    small statistic cost more than its arithmetic).
    """

    __slots__ = (
        "tokens", "censored", "skipped", "last_logprob", "_min_logprob",
        "topk_positions", "entropy", "confidence", "lowest_group_confidence", "_alts",
        "_sum", "_comp", "_ema", "_alpha", "_vmean", "_m2",
        "_wsize", "_wpos", "_wsums", "_wcomps",
        "_hn", "_hsum", "_hcomp",
        "_gsize", "_gpos", "_gsum", "_gcomp", "_gsums", "_gcomps",
    )

    tokens: int
    censored: int
    skipped: int
    last_logprob: float
    _min_logprob: float
    topk_positions: int
    entropy: float
    confidence: float
    lowest_group_confidence: float
    _alts: tuple[float, ...]
    _sum: float
    _comp: float
    _ema: float
    _alpha: float
    _vmean: float
    _m2: float
    _wsize: int
    _wpos: int
    _wsums: array[float]
    _wcomps: array[float]
    _hn: int
    _hsum: float
    _hcomp: float
    _gsize: int
    _gpos: int
    _gsum: float
    _gcomp: float
    _gsums: array[float]
    _gcomps: array[float]

    def update(self, token: Token) -> None:
        """Add one token (O(1): the work does not depend on how many came before)."""
        status = token.status
        if status:  # OK is 0
            if status is SKIPPED:
                self.skipped += 1
                return
            self.censored += 1
        x = token.logprob
        n = self.tokens + 1
        self.tokens = n
        self.last_logprob = x
        if x < self._min_logprob:
            self._min_logprob = x
        # The running sum (Neumaier): what the float sum loses goes to the compensation.
        # Counted logprobs are <= 0 (the value policy), so the sum is too, and the larger
        # magnitude is the smaller value.
        s = self._sum
        t = s + x
        c = self._comp + ((s - t) + x if s <= x else (x - t) + s)
        self._sum = t
        self._comp = c
        i = self._wpos + 1
        if i > self._wsize:
            i = 0
        self._wpos = i
        self._wsums[i] = t
        self._wcomps[i] = c
        y = self._ema  # EWMean, seeded by the first value
        self._ema = y + self._alpha * (x - y) if y == y else x
        # Welford (on the logprob: its M2 is the surprisal's, bit for bit)
        m = self._vmean
        d = x - m
        m += d / n
        self._vmean = m
        self._m2 += d * (x - m)
        alts = token.alternatives
        if not alts:
            return
        # One position of listed alternatives: topk_entropy's sums, the entropy's mean,
        # the confidence and the group window's.
        self._alts = alts
        k = self.topk_positions + 1
        self.topk_positions = k
        total = p_log_p = listed = 0.0
        for a in alts:
            p = _exp(a)
            total += p
            p_log_p += p * a
            listed += a  # the confidence's sum, here: cheaper than a call to sum()
        h = _log(total) - p_log_p / total if total > 0.0 else _nan  # NaN: all below -745, nothing to renormalise
        self.entropy = h
        if h == h:
            self._hn += 1
            s = self._hsum
            t = s + h
            # Entropies are >= 0 (up to a rounding), so the sum is the larger magnitude unless h is.
            self._hcomp += (s - t) + h if s >= h else (h - t) + s
            self._hsum = t
        x = -listed / len(alts)
        self.confidence = x
        s = self._gsum
        t = s + x
        c = self._gcomp + ((s - t) + x if s >= x else (x - t) + s)  # confidences are >= 0
        self._gsum = t
        self._gcomp = c
        size = self._gsize
        i = self._gpos + 1
        if i > size:
            i = 0
        self._gpos = i
        self._gsums[i] = t
        self._gcomps[i] = c
        if k < size:  # the partial window stands in until the window fills
            self.lowest_group_confidence = (t + c) / k
        else:  # then only full windows compete, the first replacing the partial one
            i = i + 1 if i < size else 0
            g = ((t - self._gsums[i]) + (c - self._gcomps[i])) / size
            if k == size or g < self.lowest_group_confidence:
                self.lowest_group_confidence = g

    def update_many(self, tokens: Iterable[Token]) -> None:
        """Add tokens in order: the same arithmetic as :meth:`update` token by token, bit for
        bit, with the state held in locals for the run (what a raw reader does with the
        tokens of one read, when nothing watches them one by one).

        >>> from livepplx.core.stats import ChoiceStats
        >>> from livepplx.core.tokens import make_token
        >>> a, b = ChoiceStats(), ChoiceStats()
        >>> ts = [make_token(0, "", lp, [lp, lp - 1]) for lp in (-0.5, -2.0, -0.1)]
        >>> for t in ts:
        ...     a.update(t)
        >>> b.update_many(ts)
        >>> a.as_dict() == b.as_dict()
        True
        """
        n, skipped, censored, low, last = self.tokens, self.skipped, self.censored, self._min_logprob, self.last_logprob
        tsum, tcomp, y, alpha, vmean, m2 = self._sum, self._comp, self._ema, self._alpha, self._vmean, self._m2
        wsize, wpos, wsums, wcomps = self._wsize, self._wpos, self._wsums, self._wcomps
        k, alts_last, h_last, conf_last, lowest = (
            self.topk_positions, self._alts, self.entropy, self.confidence, self.lowest_group_confidence)
        hn, hsum, hcomp = self._hn, self._hsum, self._hcomp
        gsize, gpos, gsum, gcomp, gsums, gcomps = self._gsize, self._gpos, self._gsum, self._gcomp, self._gsums, self._gcomps
        for token in tokens:
            status = token.status
            if status:
                if status is SKIPPED:
                    skipped += 1
                    continue
                censored += 1
            x = token.logprob
            n += 1
            last = x
            if x < low:
                low = x
            s = tsum
            tsum = s + x
            tcomp += (s - tsum) + x if s <= x else (x - tsum) + s
            wpos += 1
            if wpos > wsize:
                wpos = 0
            wsums[wpos] = tsum
            wcomps[wpos] = tcomp
            y = y + alpha * (x - y) if y == y else x
            d = x - vmean
            vmean += d / n
            m2 += d * (x - vmean)
            alts = token.alternatives
            if not alts:
                continue
            alts_last = alts
            k += 1
            total = p_log_p = listed = 0.0
            for a in alts:
                p = _exp(a)
                total += p
                p_log_p += p * a
                listed += a
            h = _log(total) - p_log_p / total if total > 0.0 else _nan
            h_last = h
            if h == h:
                hn += 1
                s = hsum
                hsum = s + h
                hcomp += (s - hsum) + h if s >= h else (h - hsum) + s
            x = -listed / len(alts)
            conf_last = x
            s = gsum
            gsum = s + x
            gcomp += (s - gsum) + x if s >= x else (x - gsum) + s
            gpos += 1
            if gpos > gsize:
                gpos = 0
            gsums[gpos] = gsum
            gcomps[gpos] = gcomp
            if k < gsize:
                lowest = (gsum + gcomp) / k
            else:
                i = gpos + 1 if gpos < gsize else 0
                g = ((gsum - gsums[i]) + (gcomp - gcomps[i])) / gsize
                if k == gsize or g < lowest:
                    lowest = g
        self.tokens, self.skipped, self.censored, self._min_logprob, self.last_logprob = n, skipped, censored, low, last
        self._sum, self._comp, self._ema, self._vmean, self._m2, self._wpos = tsum, tcomp, y, vmean, m2, wpos
        self.topk_positions, self._alts, self.entropy, self.confidence, self.lowest_group_confidence = (
            k, alts_last, h_last, conf_last, lowest)
        self._hn, self._hsum, self._hcomp, self._gpos, self._gsum, self._gcomp = hn, hsum, hcomp, gpos, gsum, gcomp


#: The accumulator ChoiceStats is built on: the C one when it is built, unless
#: ``LIVEPPLX_PURE_PYTHON`` is set to something other than ``""`` or ``"0"``.
Accumulator: type[PyAccumulator] = PyAccumulator
#: ``"c"`` or ``"python"``: which accumulator runs (benchmarks and bug reports say it).
IMPLEMENTATION = "python"
if os.environ.get("LIVEPPLX_PURE_PYTHON", "") in ("", "0"):
    try:
        from ._caccumulator import Accumulator  # type: ignore[no-redef]
    except ImportError:  # not built (no C compiler at install): the Python twin, same results
        pass
    else:
        IMPLEMENTATION = "c"
