"""The fast paths decide what the full paths decide: typed decoding, the fast parsers, batched counting."""

from __future__ import annotations

import json
import math
import random
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from livepplx.core.formats import FAST_PARSERS, FORMATS, TYPED_DECODERS
from livepplx.core.state import StreamState
from livepplx.core.stats import ChoiceStats
from livepplx.core.tokens import make_token

ENTRY = {"token": "Hi", "logprob": -0.25, "bytes": [72, 105],
         "top_logprobs": [{"token": "Hi", "logprob": -0.25}, {"token": "Hey", "logprob": -1.75}]}
BASE: dict[str, dict[str, Any]] = {
    "openai-chat": {"id": "c", "object": "chat.completion.chunk", "choices": [
        {"index": 0, "delta": {"content": "Hi"}, "logprobs": {"content": [ENTRY], "refusal": None},
         "finish_reason": None}]},
    "openai-completions": {"object": "text_completion", "choices": [
        {"index": 0, "text": "Hi", "finish_reason": "length", "logprobs": {
            "tokens": ["Hi"], "text_offset": [0], "token_logprobs": [-0.25],
            "top_logprobs": [{"Hi": -0.25, "Hey": -1.75}]}}]},
    "openai-responses": {"type": "response.output_text.delta", "sequence_number": 4, "delta": "Hi",
                         "logprobs": [ENTRY]},
    "llamacpp-native": {"index": 0, "content": "Hi", "stop": False, "id_slot": -1,
                        "completion_probabilities": [{"id": 7, **ENTRY, "top_logprobs": [
                            {"id": 7, "token": "Hi", "logprob": -0.25}, {"id": 8, "token": "Hey", "logprob": -1.75}]}]},
}


def _paths(value: Any, path: tuple = ()) -> list[tuple]:
    """Every place in a JSON value where a value could be put instead."""
    out = [path]
    if isinstance(value, dict):
        for k, v in value.items():
            out += _paths(v, (*path, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out += _paths(v, (*path, i))
    return out


def _put(value: Any, path: tuple, new: Any) -> Any:
    if not path:
        return new
    copy = dict(value) if isinstance(value, dict) else list(value)
    copy[path[0]] = _put(copy[path[0]], path[1:], new)
    return copy


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(10**30), 10**30) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=5) | st.sampled_from([-0.5, 0.0, -1e4, 1.5, -2.0, "stop", "", -1, 1, 2.0]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(["logprob", "token", "index", "x"]),
                                                                  inner, max_size=3),
    max_leaves=6,
)


def _said(parsed: Any) -> tuple:
    # repr of floats: a skipped token's logprob is NaN, which equals nothing; an alternative
    # read from a dict may stay the int the JSON had (0), a typed one is its float (0.0)
    tokens = [(t.choice, t.text, repr(t.logprob), t.status, repr(tuple(map(float, t.alternatives))))
              for t in parsed.tokens]
    return tokens, parsed.unscored, parsed.error, parsed.ended, parsed.malformed


def _attributes(value: Any, key: str = "", maps: str = "") -> Any:
    """A JSON value as objects with attributes, the way an SDK hands it over (the legacy
    ``top_logprobs`` maps stay maps: ``Dict[str, float]`` in the SDK's types)."""
    if isinstance(value, dict) and not (maps and key == maps):
        return SimpleNamespace(**{k: _attributes(v, k, maps) for k, v in value.items()})
    if isinstance(value, list):
        return [_attributes(v, key, maps) for v in value]
    return value


@pytest.mark.parametrize("fmt", list(BASE))
@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_a_typed_struct_reads_as_its_dict_or_is_refused(fmt: str, data: st.DataObject) -> None:
    """Any JSON value anywhere in a chunk: the typed decoder either refuses the chunk (which is
    then decoded into dicts) or gives a struct its format's parser reads exactly as the dict."""
    path = data.draw(st.sampled_from(_paths(BASE[fmt])))
    chunk = _put(BASE[fmt], path, data.draw(json_values))
    text = json.dumps(chunk)
    try:
        struct = TYPED_DECODERS[fmt](text)
    except ValueError:
        return
    assert _said(FORMATS[fmt](struct)) == _said(FORMATS[fmt](json.loads(text)))


@pytest.mark.parametrize("fmt", ["openai-chat", "openai-completions", "openai-responses"])
@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_an_sdk_like_object_reads_as_its_dict(fmt: str, data: st.DataObject) -> None:
    """An object read by attribute (the fast path, else the full parser) says what its dict says;
    dicts only ever take the full parser. Errors are read from dicts alone (the SDK raises on them)."""
    path = data.draw(st.sampled_from(_paths(BASE[fmt])))
    chunk = _put(BASE[fmt], path, data.draw(json_values))
    if not isinstance(chunk, dict) or "error" in chunk:
        return
    obj = _attributes(chunk, maps="top_logprobs" if fmt == "openai-completions" else "")
    got, want = FORMATS[fmt](obj), FORMATS[fmt](chunk)
    assert _said(got)[:2] + _said(got)[3:] == _said(want)[:2] + _said(want)[3:]
    fast = FAST_PARSERS[fmt](obj)
    if fast is not None:  # a fast answer is the whole answer: no unscored text, no malformed entry
        assert _said(FORMATS[fmt](obj))[0] == _said(want)[0] and fast[1] == want.ended
        assert not want.unscored and not want.malformed


@pytest.mark.parametrize("fmt", list(BASE))
def test_the_common_shape_takes_the_fast_path(fmt: str) -> None:
    """Typed and as SDK-like objects: else the fast paths would be tested on nothing."""
    typed = TYPED_DECODERS[fmt](json.dumps(BASE[fmt]))
    assert FAST_PARSERS[fmt](typed) is not None
    assert FAST_PARSERS[fmt](_attributes(BASE[fmt], maps="top_logprobs" if fmt == "openai-completions" else ""))


def _random_tokens(n: int, seed: int) -> list:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        kind = rng.random()
        alts = [-rng.expovariate(0.5) for _ in range(rng.choice([0, 1, 3, 5]))]
        if kind < 0.05:
            out.append(make_token(0, "?", None, alts))  # skipped
        elif kind < 0.1:
            out.append(make_token(0, "c", -9999.0, alts))  # censored
        else:
            out.append(make_token(0, "t", -rng.expovariate(0.7), alts))
    return out


@pytest.mark.parametrize("window,group", [(1, 1), (3, 4), (64, 2048), (7, 5)])
def test_update_many_is_update_token_by_token_bit_for_bit(window: int, group: int) -> None:
    tokens = _random_tokens(3000, seed=window * 31 + group)
    one, many = ChoiceStats(window=window, group_window=group), ChoiceStats(window=window, group_window=group)
    rng = random.Random(7)
    i = 0
    while i < len(tokens):
        run = tokens[i : i + rng.choice([1, 2, 17, 64, 300])]
        for t in run:
            one.update(t)
        many.update_many(run)
        i += len(run)
        assert repr(one.as_dict()) == repr(many.as_dict())  # repr: NaN-safe, bit for bit
    assert one.tokens + one.skipped == len(tokens)


def test_update_many_of_nothing_changes_nothing() -> None:
    stats = ChoiceStats()
    before = repr(stats.as_dict())
    stats.update_many([])
    assert repr(stats.as_dict()) == before and math.isnan(stats.ppl)


@pytest.mark.parametrize("split", [1, 7, 100, 65536])
def test_raw_bytes_read_in_batches_read_as_the_chunks_one_by_one(split: int) -> None:
    """The raw reader counts a read at once; the same chunks handed over one by one as dicts
    (counted token by token) give the same summary, bit for bit."""
    events = []
    for i, lp in enumerate([-0.1, -2.5, -0.7, -9999.0, -0.3] * 40):
        chunk = json.loads(json.dumps(BASE["openai-chat"]))
        entry = chunk["choices"][0]["logprobs"]["content"][0]
        entry["logprob"], entry["token"] = lp, f"t{i}"
        events.append(chunk)
    events[-1]["choices"][0]["finish_reason"] = "stop"
    data = "".join(f"data: {json.dumps(c)}\n\n" for c in events).encode() + b"data: [DONE]\n\n"
    raw, dicts = StreamState(text_limit=50), StreamState(text_limit=50)
    for i in range(0, len(data), split):
        raw.handle(data[i : i + split])
    raw.finish()
    for c in events:
        dicts.handle(c)
    dicts.finish()
    assert repr(raw.summary()) == repr(dicts.summary())
    assert raw.text(0) == dicts.text(0) and len(raw.text(0)) == 50


def test_a_token_is_hashed_and_compared_by_identity_as_before() -> None:
    a, b = make_token(0, "x", -0.5, [-0.5]), make_token(0, "x", -0.5, [-0.5])
    assert a == a and a != b and len({a, b}) == 2


# -- A read's events decoded in one call (StreamDecoder.typed_many) -----------------------

_CHAT = json.dumps(BASE["openai-chat"])
_BLOCKS = [
    "data: " + _CHAT,  # the common shape
    "data: " + _CHAT.replace("-0.25", "-9999.0"),  # refused by the typed decoders: read by the policy
    "data:" + _CHAT,  # no space
    "event: x\ndata: " + _CHAT,
    "event: error\ndata: " + _CHAT,
    "event: error\ndata: overloaded",
    ": keep-alive",
    "id: 7\ndata: " + _CHAT,
    "data: " + _CHAT + "\ndata: " + _CHAT,  # a proxy dropped the blank line
    "data: {\"choices\": [",  # malformed
    "data: ",  # keep-alive
    "data: [DONE]",
    "data: " + json.dumps({"error": {"message": "boom"}}),
    '{"x": 1}',  # a line that is no field
    "data: " + _CHAT + "\n",  # an extra blank line
]


@settings(max_examples=300, deadline=None)
@given(blocks=st.lists(st.sampled_from([0] * 12 + [11] * 3 + list(range(len(_BLOCKS)))), max_size=12),
       cuts=st.lists(st.integers(0, 5000), max_size=4), first=st.booleans())
@example(blocks=[0, 0, 11], cuts=[], first=True)  # a final [DONE] after common events, in one read
@example(blocks=[0, 11, 0], cuts=[], first=True)  # what follows [DONE] is skipped
@example(blocks=[0, 0, 0], cuts=[1000], first=True)  # a read that completes an event left open
def test_events_decoded_in_one_call_read_as_one_by_one(blocks: list[int], cuts: list[int], first: bool) -> None:
    """Whatever the blocks and wherever the reads split them: the same values, skips, first
    skip, [DONE] and errors as the event-by-event decoding."""
    import msgspec

    from livepplx.core.formats import TYPED_ARRAY_DECODERS
    from livepplx.core.sse import StreamDecoder

    # The framing is told by the first read; `first`: that read was one common event alone.
    head = ("data: " + _CHAT + "\n\n").encode() if first else b""
    data = head + "".join(_BLOCKS[i] + "\n\n" for i in blocks).encode()
    points = sorted({0, len(head), len(data), *(c % (len(data) + 1) for c in cuts)})

    def read(many: bool) -> tuple:
        d = StreamDecoder()
        d.typed = TYPED_DECODERS["openai-chat"]
        d.typed_many = TYPED_ARRAY_DECODERS["openai-chat"] if many else None
        out: list[Any] = []
        try:
            for a, b in zip(points, points[1:]):
                out += d.feed_values(data[a:b])
            out += [e.data for e in d.close()]
            error = None
        except Exception as e:  # noqa: BLE001 - the same error either way is the point
            error = f"{type(e).__name__}: {e}"
        return msgspec.to_builtins(out), d.done, d.skipped, d.first_skip, error

    assert read(True) == read(False)


@pytest.mark.parametrize("fmt", list(BASE))
@settings(max_examples=60, deadline=None)
@given(values=st.lists(st.sampled_from([-0.25, -1.5, 0.0, -9999.0, 0.5, None, -3, "x", -1e-300]), min_size=1, max_size=30),
       split=st.sampled_from([1, 97, 65536]))
def test_raw_bytes_read_as_their_dicts_whatever_the_values(fmt: str, values: list, split: int) -> None:
    """Typed structs read by the typed readers (or refused to the value policy) against the
    same chunks handed over as dicts: the same summary, bit for bit, for every format."""
    chunks = []
    for i, v in enumerate(values):
        chunk = json.loads(json.dumps(BASE[fmt]))
        if fmt == "openai-completions":
            chunk["choices"][0]["logprobs"]["token_logprobs"] = [v]
            chunk["choices"][0]["logprobs"]["top_logprobs"] = [{"Hi": v if i % 3 else -0.25, "Hey": -1.75}]
            chunk["choices"][0]["finish_reason"] = None
        else:
            entry = (chunk["choices"][0]["logprobs"]["content"][0] if fmt == "openai-chat" else
                     chunk["logprobs"][0] if fmt == "openai-responses" else chunk["completion_probabilities"][0])
            entry["logprob"] = v
            entry["top_logprobs"][1]["logprob"] = v if i % 3 else -1.75
        chunks.append(chunk)
    name = "event: response.output_text.delta\n" if fmt == "openai-responses" else ""
    data = "".join(f"{name}data: {json.dumps(c)}\n\n" for c in chunks).encode()
    raw, dicts = StreamState(), StreamState()
    for i in range(0, len(data), split):
        raw.handle(data[i : i + split])
    for c in chunks:
        dicts.handle(c)
    assert repr([raw.choices[i].as_dict() for i in sorted(raw.choices)]) == \
        repr([dicts.choices[i].as_dict() for i in sorted(dicts.choices)])
    assert (raw.malformed, raw.unscored, raw.chunks) == (dicts.malformed, dicts.unscored, dicts.chunks)
