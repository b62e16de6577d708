"""Any JSON value in any field of any format: no exception but livepplx's own, nothing lost.

Valid chunks come from every recording and fixture; one field (or any nested value) is
replaced with an arbitrary JSON value, or removed. The parsers, detection, and a
:class:`StreamState` fed the dicts and their SSE bytes must raise nothing but a
:class:`LivepplxError`, and what was read before the bad chunk must stay as it was.
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any, Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import ALL_RECORDINGS
from livepplx.core.errors import LivepplxError
from livepplx.core.formats import FORMATS, detect_format, error_message, parse_chunk
from livepplx.core.state import StreamState

FIXTURES = Path(__file__).resolve().parent / "fixtures"


def chunks_of(path: Path) -> list[Any]:
    text = path.read_text()
    if path.suffix == ".json":
        return [json.loads(text)]
    if path.suffix == ".ndjson":
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    return [json.loads(line[5:]) for line in text.splitlines() if line.startswith("data:") and "[DONE]" not in line]


SOURCES = {p.name: chunks_of(p) for p in [*ALL_RECORDINGS, *sorted(FIXTURES.glob("*.sse")), *sorted(FIXTURES.glob("*.json")),
                                          *sorted(FIXTURES.glob("*.ndjson"))]}


def paths(value: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Every place in a JSON value (the first few items of long lists)."""
    if prefix:
        yield prefix
    if isinstance(value, dict):
        for key, item in value.items():
            yield from paths(item, prefix + (key,))
    elif isinstance(value, list):
        for i, item in enumerate(value[:3]):
            yield from paths(item, prefix + (i,))


#: (source, chunk index, path): every place of the first four and last two chunks of every source
PLACES = [(name, k, path) for name, chunks in SOURCES.items()
          for k in sorted({*range(min(4, len(chunks))), *range(max(0, len(chunks) - 2), len(chunks))})
          for path in paths(chunks[k])]

#: Field names the parsers read, so generated objects sometimes look like the real thing.
KEYS = ["choices", "index", "delta", "message", "logprobs", "content", "refusal", "token", "logprob", "top_logprobs",
        "token_logprobs", "tokens", "text", "finish_reason", "type", "object", "completion_probabilities", "prob",
        "probs", "tok_str", "stop", "top_tokens", "details", "generated_text", "done", "candidates",
        "logprobsResult", "chosenCandidates", "topCandidates", "logProbability", "finishReason", "output", "error"]

ODD_NUMBERS = [10**400, -(10**400), 2**63, -1, -9999, -9999.0, -1e30, -1.2676506e30, -3.4028234663852886e38, -800.0, 0.0,
               -0.0, 1e-7, math.nan, math.inf, -math.inf]
DELETE = object()

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.sampled_from(ODD_NUMBERS) | st.floats() | st.text(max_size=6),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=4),
                                                                     children, max_size=3),
    max_leaves=8,
)


def mutated(chunk: Any, path: tuple[Any, ...], value: Any) -> Any:
    out = copy.deepcopy(chunk)
    target = out
    for step in path[:-1]:
        target = target[step]
    if value is DELETE:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return out


def records(tokens: list[Any]) -> list[tuple[Any, ...]]:
    return [(t.choice, t.text, t.status, None if math.isnan(t.logprob) else t.logprob, t.alternatives) for t in tokens]


def fed(chunks: list[Any]) -> tuple[StreamState, list[tuple[Any, ...]]]:
    state = StreamState()
    tokens: list[Any] = []
    for chunk in chunks:
        tokens += state.handle(chunk)
    return state, records(tokens)


def sse_bytes(name: str, chunks: list[Any]) -> bytes:
    if name.endswith((".json", ".ndjson")):
        return "".join(json.dumps(c) + "\n" for c in chunks).encode()
    return "".join(f"data: {json.dumps(c)}\n\n" for c in chunks).encode()


PROPERTY = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROPERTY
@given(place=st.sampled_from(PLACES), value=json_values | st.just(DELETE))
def test_any_value_anywhere_reads_without_a_foreign_exception(place: tuple[str, int, tuple[Any, ...]], value: Any) -> None:
    name, k, path = place
    chunks = SOURCES[name]
    bad = mutated(chunks[k], path, value)
    # The parsers alone, in the detected format and in every other.
    detect_format(bad)
    error_message(bad)
    parse_chunk(bad)
    for fmt in FORMATS:
        parsed = FORMATS[fmt](bad)
        assert all(type(t.choice) is int and t.choice >= 0 and isinstance(t.text, str) for t in parsed.tokens)
        assert isinstance(parsed.malformed, int) and all(type(i) is int for i in parsed.ended)
    # A state fed the stream up to the bad chunk keeps what it read before it.
    before, before_tokens = fed(chunks[:k])
    state, tokens = StreamState(), []
    try:
        for chunk in chunks[:k]:
            tokens += records(state.handle(chunk))
        assert tokens == before_tokens
        added = records(state.handle(bad))
        state.finish()
        state.summary()
    except LivepplxError:
        return
    touched = {t[0] for t in added}
    reference = before.summary()["choices"]
    now = {c["index"]: c for c in state.summary()["choices"]}
    for old in reference:
        if old["index"] not in touched:
            assert now[old["index"]] == old  # nothing read before was changed
        else:
            assert now[old["index"]]["tokens"] >= old["tokens"]


@PROPERTY
@given(place=st.sampled_from(PLACES), value=json_values | st.just(DELETE), split=st.integers(min_value=1, max_value=4096))
def test_any_value_anywhere_in_raw_bytes_reads_like_the_dicts(
        place: tuple[str, int, tuple[Any, ...]], value: Any, split: int) -> None:
    name, k, path = place
    chunks = [*SOURCES[name][:k], mutated(SOURCES[name][k], path, value)]
    data = sse_bytes(name, chunks)
    raw = StreamState()
    try:
        for i in range(0, len(data), split):
            raw.handle(data[i : i + split])
        raw.finish()
    except LivepplxError:
        return
    objects = StreamState()
    try:
        for chunk in json.loads(json.dumps(chunks)):  # the values the decoder reads back
            objects.handle(chunk)
        objects.finish()
    except LivepplxError:
        return
    ours, theirs = raw.summary(), objects.summary()
    assert ours["choices"] == theirs["choices"] and ours["format"] == theirs["format"]


def test_every_source_has_places_to_mutate() -> None:
    assert len(SOURCES) >= 20 and all(any(n == name for n, _, _ in PLACES) for name in SOURCES)


@pytest.mark.parametrize("name", sorted(n for n in SOURCES if not n.endswith(".json")))
def test_nineteen_odd_values_in_every_field_of_one_chunk(name: str) -> None:
    """The census of issue 11, on the first chunk of each stream that carries tokens: every
    place, 19 values (whole answers, much larger, are left to the properties above)."""
    chunks = SOURCES[name]
    k = next((i for i, c in enumerate(chunks) if parse_chunk(c).tokens), 0)
    odd = [None, False, True, 0, -1, 10**400, -(10**400), 1.5, math.nan, math.inf, -9999, -1e30, "", "x", "1", [], [1],
           {}, {"x": 1}]
    for path in paths(chunks[k]):
        for value in odd:
            bad = mutated(chunks[k], path, value)
            for fmt in FORMATS:
                FORMATS[fmt](bad)
            state = StreamState(on_missing_logprobs="ignore")
            for chunk in chunks[:k]:
                state.handle(chunk)
            try:
                state.handle(bad)
                state.finish()
            except LivepplxError:
                pass
            state.summary()
