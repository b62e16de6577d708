"""DeepConf against upstream llama-server with two parallel slots (Gemma 3 270M, a base model).

Small on purpose (well under a minute): the measurement is ``examples/deepconf_vote.py``.
"""

from __future__ import annotations

import asyncio
import math
from typing import Iterator

import numpy as np
import openai
import pytest

import servers
from livepplx.decide.deepconf import AsyncDeepConfVoter, DeepConfVoter, last_number

pytestmark = pytest.mark.real_server

PROMPT = ("Q: Kate has 2 dogs and gets 3 more. How many dogs does Kate have?\n"
          "A: Kate starts with 2 dogs. She gets 3 more. 2 + 3 = 5. The answer is 5.\n\n"
          "Q: A tree has 10 apples. 4 apples fall. How many apples are on the tree?\n"
          "A: The tree has 10 apples. 4 fall off. 10 - 4 = 6. The answer is 6.\n\n"
          "Q: Sam has 4 pencils and finds 3 more. How many pencils does Sam have?\nA:")
OPTIONS = dict(endpoint="completions", group_window=6, max_tokens=28, concurrency=2, top_logprobs=5,
               answer=last_number, params={"temperature": 1.0, "stop": ["\n\n", "\nQ:"]})


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """llama-server as tests/servers.py starts it, with two slots (-np 2) so traces run side by side."""
    for running in servers.start("llama-server", tmp_path_factory.mktemp("deepconf"), parallel=2):
        yield running.base_url


def test_the_threshold_and_the_vote_on_a_real_model(server: str) -> None:
    client = openai.OpenAI(base_url=server, api_key="sk-no-key", timeout=60)
    result = DeepConfVoter(client, "gemma", warmup=2, traces=3, eta="low", **OPTIONS)(PROMPT)  # type: ignore[arg-type]
    assert result.launched == 5 and all(t.tokens > 0 and t.confidence is not None for t in result.traces)
    warm = [t.confidence for t in result.traces if t.phase == "warmup"]
    assert result.threshold == pytest.approx(float(np.percentile(warm, 90)))
    for t in result.traces:
        if t.pruned:  # closed on the token that crossed: nothing read after it
            assert t.stopped and t.pruned_at == t.tokens and t.tokens >= 6 and not t.voted
        if t.voted:
            assert t.confidence >= result.threshold and t.answer is not None  # type: ignore[operator]
    voters = [t for t in result.traces if t.voted]
    if voters:
        assert result.answer is not None and math.isclose(sum(result.weights.values()),
                                                          sum(t.confidence for t in voters))  # type: ignore[misc]
    else:
        assert result.answer is None and result.reason.startswith("no trace could vote")


def test_a_threshold_no_trace_reaches_prunes_every_online_trace_at_its_first_window(server: str) -> None:
    client = openai.AsyncOpenAI(base_url=server, api_key="sk-no-key", timeout=60)
    voter = AsyncDeepConfVoter(client, "gemma", warmup=1, traces=2, threshold=1e6, **OPTIONS)  # type: ignore[arg-type]
    result = asyncio.run(voter(PROMPT))
    online = [t for t in result.traces if t.phase == "online"]
    assert len(online) == 2 and all(t.pruned and t.stopped and t.tokens == 6 for t in online)
    assert result.answer is None and "2 pruned" in result.reason
