from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Iterator

import pytest

from livepplx.recordings import RECORDINGS, recording_path
from livepplx.state import StreamState

SHARED_RECORDINGS = Path(__file__).resolve().parents[2] / "shared" / "recordings"


def sse(*objects: Any, done: bool = True, sep: str = "\n", space: bool = True) -> bytes:
    """Server-sent events of the objects, as a server writes them."""
    prefix = "data: " if space else "data:"
    body = "".join(f"{prefix}{o if isinstance(o, str) else json.dumps(o)}{sep}{sep}" for o in objects)
    if done:
        body += f"{prefix}[DONE]{sep}{sep}"
    return body.encode()


def replay(data: bytes | str, **options: Any) -> StreamState:
    state = StreamState(**options)
    state.handle(data)
    state.finish()
    return state


def recorded_logprobs(path: Path) -> list[float]:
    """The sampled tokens' logprobs of a recording, read the plain way (an independent reference)."""
    values: list[float] = []
    for line in path.read_text().splitlines():
        if not line.startswith("data:") or "[DONE]" in line:
            continue
        obj = json.loads(line[5:])
        for entry in obj.get("completion_probabilities") or []:
            values.append(entry["logprob"])
        for choice in obj.get("choices", []):
            lp = choice.get("logprobs") or {}
            values += [e["logprob"] for e in lp.get("content") or []]
            values += lp.get("token_logprobs") or []
    return values


def ppl_of(values: list[float]) -> float:
    return math.exp(-math.fsum(values) / len(values))


@pytest.fixture(params=sorted(RECORDINGS))
def recording(request: pytest.FixtureRequest) -> Path:
    return recording_path(request.param)


def chunks_of(data: bytes, size: int) -> Iterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]
