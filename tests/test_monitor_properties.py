"""Property: monitor() and amonitor() over any byte split of any stream, odd values and
wrong types included, report what StreamState reports for the whole capture; nothing but
livepplx's named errors escapes, and the tokens read before a bad chunk are kept."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from livepplx import LivepplxError, StreamState, amonitor, monitor

ODD = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(10**400), max_value=10**400),
    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([-9999.0, -1e30, -800.0, 0.5]),
    st.text(max_size=5), st.lists(st.integers(), max_size=2), st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)


def chat(lp: Any, index: Any = 0, alt: Any = None) -> dict:
    return {"object": "chat.completion.chunk", "choices": [
        {"index": index, "delta": {"content": "x"}, "finish_reason": None,
         "logprobs": {"content": [{"token": "x", "logprob": lp,
                                   "top_logprobs": [{"token": "y", "logprob": alt if alt is not None else lp}]}]}}]}


@st.composite
def streams(draw: st.DrawFn) -> tuple[bytes, int]:
    """SSE bytes of good chunks, maybe one odd chunk, then more good ones; and the index of the odd one."""
    good = [chat(draw(st.floats(min_value=-20, max_value=0))) for _ in range(draw(st.integers(0, 6)))]
    odd_at = len(good)
    field = draw(st.sampled_from(["logprob", "index", "alt", "choices", "content", "whole"]))
    value = draw(ODD)
    odd = {"logprob": lambda: chat(value), "index": lambda: chat(-1.0, index=value), "alt": lambda: chat(-1.0, alt=value),
           "choices": lambda: {"object": "chat.completion.chunk", "choices": value},
           "content": lambda: {"object": "chat.completion.chunk", "choices": [{"index": 0, "logprobs": {"content": value}}]},
           "whole": lambda: value}[field]()
    tail = [chat(-0.5) for _ in range(draw(st.integers(0, 3)))]
    end = draw(st.sampled_from([b"data: [DONE]\n\n", b""]))
    body = b"".join(b"data: " + json.dumps(c).encode() + b"\n\n" for c in [*good, odd, *tail]) + end
    return body, odd_at


def pieces(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)])]


def reference(data: bytes) -> tuple[dict | None, type | None]:
    state = StreamState(on_missing_logprobs="ignore")
    try:
        state.handle(data)
        state.finish()
    except LivepplxError as e:
        return state.summary(), type(e)
    return state.summary(), None


@settings(max_examples=150, deadline=None)
@given(stream=streams(), cuts=st.lists(st.integers(min_value=0), max_size=8))
def test_any_split_through_monitor_reports_the_whole_and_keeps_what_was_read(stream: tuple[bytes, int], cuts: list[int]) -> None:
    data, good_before = stream
    expected, _ = reference(data)
    m = monitor(iter(pieces(data, cuts)), on_missing_logprobs="ignore")
    try:
        with m:
            for _ in m:
                pass
    except LivepplxError:
        pass  # named; anything else fails the test
    assert m.state.total_tokens >= good_before  # every token before the odd chunk is kept
    assert m.summary() == expected  # however the bytes were split


@settings(max_examples=60, deadline=None)
@given(stream=streams(), cuts=st.lists(st.integers(min_value=0), max_size=8))
def test_any_split_through_amonitor_agrees_with_monitor(stream: tuple[bytes, int], cuts: list[int]) -> None:
    data, _ = stream
    parts = pieces(data, cuts)

    async def source():  # type: ignore[no-untyped-def]
        for p in parts:
            yield p

    async def run() -> Any:
        m = amonitor(source(), on_missing_logprobs="ignore")
        try:
            async with m:
                async for _ in m:
                    pass
        except LivepplxError:
            pass
        return m

    a = asyncio.run(run())
    s = monitor(iter(parts), on_missing_logprobs="ignore")
    try:
        with s:
            for _ in s:
                pass
    except LivepplxError:
        pass
    assert a.summary() == s.summary()
