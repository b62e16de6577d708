"""The C accumulator against its Python twin: the same statistics, bit for bit, on any stream.

livepplx.core.accumulator promises that ChoiceStats gives the same floats whichever
accumulator runs (the C one when it is built, else the Python one). Here both run side by
side on random streams of every kind of value the value policy sorts (ordinary,
censored, skipped; alternatives that underflow, none, junk), token by token and in
batches of any split, and every attribute of the state is compared after each step.
The numpy references of test_stats.py check the arithmetic itself; CI runs them on both.
"""

from __future__ import annotations

import gc
import math
import os
import struct
import subprocess
import sys
import textwrap
import weakref
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from livepplx.core import accumulator
from livepplx.core.accumulator import PyAccumulator
from livepplx.core.stats import ChoiceStats
from livepplx.core.tokens import make_token

C_BUILT = accumulator.IMPLEMENTATION == "c"
needs_c = pytest.mark.skipif(not C_BUILT, reason="the C accumulator is not built (or LIVEPPLX_PURE_PYTHON is set)")


class PyChoiceStats(PyAccumulator):
    """ChoiceStats on the Python accumulator, whichever one livepplx chose at import."""

    __slots__ = ("index", "vocab_size", "__weakref__")
    __init__ = ChoiceStats.__init__
    as_dict = ChoiceStats.as_dict
    for _name, _value in vars(ChoiceStats).items():
        if isinstance(_value, property):
            locals()[_name] = _value
    del _name, _value


STATE = [name for name in PyAccumulator.__slots__ if name not in ("_wsums", "_wcomps", "_gsums", "_gcomps")]
RINGS = ("_wsums", "_wcomps", "_gsums", "_gcomps")


def _bits(value: Any) -> Any:
    """A value by its type and bits (-0.0 is not 0.0, -2 is not -2.0), every NaN alike."""
    if isinstance(value, float):
        return type(value).__name__, "nan" if math.isnan(value) else struct.pack("<d", value)
    return type(value).__name__, value


def _same(c: Any, py: Any) -> None:
    for name in STATE:
        assert _bits(getattr(c, name)) == _bits(getattr(py, name)), name
    for name in RINGS:
        assert bytes(getattr(c, name)) == bytes(getattr(py, name)), name
    assert c.as_dict() == py.as_dict()


# Values the value policy sorts: ordinary logprobs, tiny and huge ones, censored
# placeholders, and what is skipped (None, NaN, positive, not a number).
raw_logprob = st.one_of(
    st.floats(min_value=-60.0, max_value=0.0),
    st.sampled_from([0.0, -0.0, -1e-300, -5e-324, -700.0, -745.2, -9999.0, -1e308, -math.inf,
                     math.nan, 0.5, None, "x", True]),
)
raw_alternative = st.one_of(
    st.floats(min_value=-800.0, max_value=0.0),  # below -745, exp() underflows to 0
    st.sampled_from([-9999.0, -math.inf, math.nan, 1.0, None, "x"]),
)
tokens = st.lists(
    st.tuples(raw_logprob, st.one_of(st.none(), st.lists(raw_alternative, max_size=7))).map(
        lambda t: make_token(0, "", t[0], t[1] or ())),
    max_size=40,
)
options = st.fixed_dictionaries({
    "window": st.integers(1, 6),
    "group_window": st.integers(1, 6),
    "ema_alpha": st.one_of(st.none(), st.floats(min_value=1e-6, max_value=1.0)),
})


@needs_c
@settings(max_examples=300, deadline=None)
@given(tokens, options)
def test_c_and_python_agree_token_by_token(stream: list, opts: dict) -> None:
    c, py = ChoiceStats(**opts), PyChoiceStats(**opts)
    assert type(c).__mro__[1] is not PyAccumulator  # the C one, really
    _same(c, py)
    for token in stream:
        c.update(token)
        py.update(token)
        _same(c, py)


@needs_c
@settings(max_examples=300, deadline=None)
@given(tokens, options, st.lists(st.integers(0, 12), max_size=8))
def test_c_and_python_agree_in_batches(stream: list, opts: dict, cuts: list) -> None:
    """update_many over any split of the stream is update() token by token, in both."""
    c, py, one = ChoiceStats(**opts), PyChoiceStats(**opts), PyChoiceStats(**opts)
    start = 0
    for size in [*cuts, len(stream)]:
        batch = stream[start : start + size]
        start += size
        c.update_many(iter(batch) if size % 2 else batch)  # any iterable, as the Python twin takes
        py.update_many(batch)
        for token in batch:
            one.update(token)
        _same(c, py)
        _same(c, one)


def test_the_c_accumulator_is_built_in_ci() -> None:
    """CI installs with a compiler: a build that failed quietly (the extension is optional)
    would leave every speed figure of the README untested."""
    if not os.environ.get("CI") or os.environ.get("LIVEPPLX_PURE_PYTHON", "") not in ("", "0"):
        pytest.skip("only CI promises a C compiler")
    assert C_BUILT, "livepplx.core._caccumulator did not build: see pip's output for the compiler's error"


# -- the C accumulator against hostile tokens: a named error, nothing half-counted, no crash


class _Tok:
    """A token-like object whose fields can be anything (make_token never makes these)."""

    def __init__(self, status: Any = 0, logprob: Any = -1.0, alternatives: Any = ()) -> None:
        from livepplx.core.tokens import OK

        self.status = OK if status == 0 else status
        self.logprob = logprob
        self.alternatives = alternatives


@needs_c
@pytest.mark.parametrize("token, error", [
    (_Tok(logprob="x"), TypeError),
    (_Tok(logprob=None), TypeError),
    (_Tok(alternatives=["x"]), TypeError),
    (_Tok(alternatives=5), TypeError),
    (_Tok(alternatives=(800.0,)), OverflowError),  # what math.exp raises, as the Python twin does
    (object(), AttributeError),
])
def test_a_token_of_wrong_types_is_refused_whole(token: Any, error: type) -> None:
    stats = ChoiceStats()
    stats.update(make_token(0, "", -1.0, [-1.0, -2.0]))
    before = {name: _bits(getattr(stats, name)) for name in STATE}
    rings = [bytes(getattr(stats, name)) for name in RINGS]
    with pytest.raises(error):
        stats.update(token)
    assert {name: _bits(getattr(stats, name)) for name in STATE} == before  # nothing half-counted
    assert [bytes(getattr(stats, name)) for name in RINGS] == rings
    with pytest.raises(error):
        stats.update_many([make_token(0, "", -0.5), token, make_token(0, "", -0.5)])
    assert stats.tokens == 2  # the token before the bad one, then it stopped


@needs_c
def test_code_run_by_a_token_cannot_pull_the_rings_away() -> None:
    """A value's __float__ that reassigns a ring (or empties the batch) while the C code
    holds the ring's memory: the old buffer stays held until the token is counted."""
    stats = ChoiceStats(window=2)

    class Sly:  # not a float: PyFloat_AsDouble calls its __float__
        def __float__(self) -> float:
            stats._wsums = memoryview(bytearray(8 * 3)).cast("d")  # a new ring, as __init__ makes
            batch.clear()
            return -1.0

    batch: list = []
    batch += [_Tok(alternatives=(Sly(),)), _Tok(logprob=-2.0)]
    stats.update_many(batch)
    assert stats.tokens == 1 and stats.topk_positions == 1  # the second token left with the cleared list
    assert stats.window_ppl == stats.window_ppl  # readable, and finite
    with pytest.raises(TypeError, match="doubles"):
        stats._wcomps = bytearray(24)  # bytes, not doubles
    with pytest.raises(ValueError, match="shorter"):
        stats._gsums = memoryview(bytearray(8)).cast("d")
        stats.update(make_token(0, "", -1.0, [-1.0]))


@needs_c
def test_stats_made_without_init_refuse_to_update() -> None:
    stats = ChoiceStats.__new__(ChoiceStats)
    with pytest.raises(AttributeError, match="ChoiceStats.__init__"):
        stats.update(make_token(0, "", -1.0))
    assert stats.tokens == 0


@needs_c
@pytest.mark.parametrize("name, value, error", [
    ("_wsize", sys.maxsize, "shorter"),  # window + 1 would overflow: compared without computing it
    ("_gsize", 0, "shorter"),
    ("_wpos", -1, "outside"),
    ("tokens", sys.maxsize, "largest"),  # one more would overflow
    ("skipped", sys.maxsize, "largest"),
])
def test_assigned_sizes_and_counters_past_their_range_are_refused(name: str, value: int, error: str) -> None:
    stats = ChoiceStats(window=4, group_window=4)
    setattr(stats, name, value)
    skipped = make_token(0, "", None)
    for token in (make_token(0, "", -1.0, [-1.0]), skipped):
        if name != "skipped" and token is skipped:
            continue  # a skipped token touches no ring and no other counter
        with pytest.raises(ValueError, match=error):
            stats.update(token)


# -- found by a hostile review: code run by a token's values while C holds the rings


def _run_child(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=120)


# -- memory safety ----------------------------------------------------------------------

_FREE_OLD_ALTERNATIVES = """
    import sys
    from livepplx.core.stats import ChoiceStats, _ring
    from livepplx.core.tokens import make_token

    stats = ChoiceStats(window=2, group_window=2)

    def meddle():
        # Runs while add() holds the rings' pointers and checked sizes.
        stats._gsums = _ring(3)          # the ring add() is about to write is freed
        stats._gcomps = _ring(3)
        stats._gsize = 1 << 45           # and the bounds add() checked are gone
        stats._gpos = (1 << 45) - 1      # next slot: 2**45 doubles past the buffer

    try:
        {setup}
        stats.update(make_token(0, "", -1.0, [-1.0, -2.0]))
    except Exception as e:  # the Python twin may raise (IndexError): fine, it is not a crash
        print("raised", type(e).__name__)
    print("survived")
"""


@pytest.mark.parametrize("setup", [
    # the previous alternatives set directly
    """
    class Evil(tuple):
        def __del__(self):
            meddle()
    stats._alts = Evil((-1.0,))
    """,
    # reachable through make_token: its fast path keeps float subclasses as they are,
    # and the stats hold the last position's tuple (the only reference once the token is gone)
    """
    class F(float):
        def __del__(self):
            meddle()
    stats.update(make_token(0, "", -0.5, [F(-0.5), -3.0]))
    """,
], ids=["assigned _alts", "make_token float subclass"])
def test_freeing_the_previous_alternatives_cannot_make_add_write_out_of_its_rings(setup: str) -> None:
    """add() swaps self->alts (Py_XSETREF) *after* rings() looked the buffers up and checked
    the sizes: the old value's deallocation runs Python code (a __del__) that can release a
    ring or change _gsize/_gpos, and add() then writes gs[i]/gc[i] into freed memory or
    (here) 2**48 bytes past the buffer: a segfault. Fix: keep the old alternatives in a
    local and Py_XDECREF it after the last write (the end of add())."""
    code = _FREE_OLD_ALTERNATIVES.replace("{setup}", textwrap.dedent(setup).strip().replace("\n", "\n        "))
    child = _run_child(code)
    assert child.returncode == 0 and "survived" in child.stdout, (child.returncode, child.stdout, child.stderr[-2000:])


def test_a_reference_cycle_through_alternatives_is_collected() -> None:
    """The C type holds arbitrary objects (_alts takes any object, token.alternatives any
    sequence) but is not a GC type and has no tp_traverse: a cycle through _alts is never
    collected (the Python twin's slots are traversed). Fix: Py_TPFLAGS_HAVE_GC with a
    tp_traverse/tp_clear visiting alts and the four ring objects (and PyObject_GC_UnTrack
    in dealloc)."""

    class Stats(ChoiceStats):
        __slots__ = ("__weakref__",)

    for cls in (Stats, PyChoiceStats):
        stats = cls()
        stats.update(make_token(0, "", -1.0, [-1.0, -2.0]))
        stats._alts = (stats,)  # type: ignore[assignment]
        ref = weakref.ref(stats)
        del stats
        gc.collect()
        assert ref() is None, cls.__name__


# -- C and Python, bit for bit, on what make_token makes of odd number types ------------


@needs_c
def test_numpy_float32_alternatives_give_the_same_statistics_in_c_and_python() -> None:
    """make_token's fast path keeps the alternatives as given: numpy float32 values (what
    llama-cpp-python answers hold; test_stream_state scores such an answer) reach the
    accumulator as they are. The Python twin then computes `p * a`, `listed += a`, and for a
    censored token `s + x`, in float32 (NumPy 2 keeps the float32 type against a Python float);
    C converts each to a double first. ppl, entropy, confidence, ... differ (score() of the
    same answer gives ppl 2.718281909470158 in C, 2.718281828459045 in Python). Fix: make
    the fast path of tokens._clean_alternatives return floats only (e.g. accept it only when
    every value's type is float, else convert with float()), so both twins see doubles."""
    np = pytest.importorskip("numpy")
    alts = [np.float32(-0.3), np.float32(-1.7)]
    stream = [make_token(0, "", np.float32(-0.3), alts), make_token(0, "", -9999.0, alts),
              make_token(0, "", -0.2, [np.longdouble(-0.2), np.float16(-2.5)])]
    c, py = ChoiceStats(), PyChoiceStats()
    for token in stream:
        c.update(token)
        py.update(token)
        _same(c, py)


@needs_c
def test_json_integer_alternatives_give_float_statistics_in_c_and_python() -> None:
    """JSON integers (``"logprob": -2``, as some serializers write an integral float) pass
    make_token's fast path as ints; a censored token then takes ``min(alts)``, an int: the
    Python twin keeps it in last_logprob, _min_logprob and _ema (min_logprob reads -2), the C
    one stores -2.0. Fix: as above, floats only out of _clean_alternatives (or float(min(alts)))."""
    stream = [make_token(0, "", -9999.0, [-1, -2]), make_token(0, "", -0.5, [0, -3])]
    c, py = ChoiceStats(), PyChoiceStats()
    for token in stream:
        c.update(token)
        py.update(token)
        _same(c, py)
