"""The LiteLLM proxy callback, in process: its hooks called as the proxy calls them, with
LiteLLM's own chunk objects (no proxy process; tests/test_gateway_proxy.py and
tests/test_gateway_real.py run the real proxy)."""

from __future__ import annotations

import asyncio
import logging
import math
import os
from typing import Any, AsyncIterator

import pytest

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # before LiteLLM is imported: nothing fetched
pytest.importorskip("litellm.proxy", reason="pip install -e '.[gateway]' for the gateway tests")
pytest.importorskip("prometheus_client", reason="pip install -e '.[gateway]' for the gateway tests")

from fastapi import HTTPException  # noqa: E402
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from litellm.types.utils import ModelResponseStream, TextCompletionResponse  # noqa: E402
from prometheus_client import CollectorRegistry, generate_latest  # noqa: E402

from livepplx import StreamState  # noqa: E402
from livepplx.integrations.litellm_proxy import (  # noqa: E402
    NOTE,
    RESULT,
    LivepplxCallback,
    Policy,
    PolicyError,
    _Watch,
)
from livepplx.integrations.prometheus import PrometheusListener  # noqa: E402


def chunk(i: int, logprob: float | None, *, finish: str | None = None, top: int = 3) -> ModelResponseStream:
    choice: dict[str, Any] = {"index": 0, "delta": {"content": f" w{i}"} if finish is None else {},
                              "finish_reason": finish}
    if logprob is not None and finish is None:
        alts = [{"token": f" w{i}", "logprob": logprob, "bytes": None}] + [
            {"token": f" a{j}", "logprob": logprob - 1 - j, "bytes": None} for j in range(top - 1)]
        choice["logprobs"] = {"content": [{**alts[0], "top_logprobs": alts}]}
    return ModelResponseStream(id="c1", created=1, model="local", object="chat.completion.chunk", choices=[choice])


def answer(logprobs: list[float | None]) -> list[ModelResponseStream]:
    return [chunk(i, lp) for i, lp in enumerate(logprobs)] + [chunk(len(logprobs), None, finish="stop")]


class Upstream:
    """The proxy's response object as the hook sees it: async iteration and aclose, counted."""

    def __init__(self, chunks: list[Any]) -> None:
        self.chunks = chunks
        self.sent = 0
        self.closed_at: int | None = None

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._gen()

    async def _gen(self) -> AsyncIterator[Any]:
        for c in self.chunks:
            if self.closed_at is not None:
                return
            self.sent += 1
            yield c

    async def aclose(self) -> None:
        if self.closed_at is None:
            self.closed_at = self.sent


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def callback(registry: CollectorRegistry) -> LivepplxCallback:
    return LivepplxCallback(metrics=PrometheusListener(registry=registry))


def request(**extra: Any) -> dict[str, Any]:
    return {"model": "local", "stream": True, "messages": [{"role": "user", "content": "hi"}],
            "metadata": {}, **extra}


def run(callback: LivepplxCallback, data: dict[str, Any], chunks: list[Any],
        call_type: str = "acompletion") -> tuple[dict[str, Any], list[Any], Upstream]:
    async def go() -> tuple[dict[str, Any], list[Any], Upstream]:
        prepared = await callback.async_pre_call_hook(None, None, data, call_type)
        upstream = Upstream(chunks)
        out = [c async for c in callback.async_post_call_streaming_iterator_hook(None, upstream, prepared)]
        return prepared, out, upstream
    return asyncio.run(go())


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    value = registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


def test_the_live_ppl_is_the_answers_and_the_client_gets_no_logprobs_it_did_not_ask_for(
        callback: LivepplxCallback, registry: CollectorRegistry) -> None:
    logprobs: list[float | None] = [-0.1 * (i % 5) - 0.01 for i in range(30)]
    data, out, upstream = run(callback, request(max_tokens=30), answer(logprobs))
    assert data["logprobs"] is True and data["top_logprobs"] == 5  # asked upstream for the client
    assert data["metadata"][NOTE]["added"] is True
    assert len(out) == 31 and upstream.closed_at is None
    assert all(c.choices[0].logprobs is None for c in out)
    assert all("logprobs" not in c.model_dump_json(exclude_none=True, exclude_unset=True) for c in out)
    reference = math.exp(-math.fsum(lp for lp in logprobs if lp is not None) / len(logprobs))
    result = data["metadata"][RESULT]
    assert result["tokens"] == 30 and math.isclose(result["ppl"], reference, rel_tol=1e-12)
    assert sample(registry, "livepplx_generation_tokens_total", model="local") == 30
    assert math.isclose(sample(registry, "livepplx_generation_ppl_sum", model="local"), reference, rel_tol=1e-12)
    assert sample(registry, "livepplx_generations_total", model="local", outcome="complete") == 1


def test_a_client_that_asked_for_logprobs_keeps_them(callback: LivepplxCallback) -> None:
    data, out, _ = run(callback, request(logprobs=True, top_logprobs=2), answer([-0.5] * 4))
    assert data["top_logprobs"] == 2 and data["metadata"][NOTE]["added"] is False
    assert [c.choices[0].logprobs is not None for c in out] == [True] * 4 + [False]


def test_a_stop_closes_the_upstream_first_then_ends_the_stream_with_finish_reason_length(
        callback: LivepplxCallback, registry: CollectorRegistry) -> None:
    logprobs: list[float | None] = [-0.05] * 10 + [-4.0] * 190
    data = request(max_tokens=200, metadata={"livepplx": {"stop_above": 5, "min_tokens": 4}})
    data, out, upstream = run(callback, data, answer(logprobs))
    stop_at = next(n for n in range(4, 200) if math.exp((0.5 + 4.0 * (n - 10)) / n) > 5)
    assert upstream.closed_at == stop_at == len(out) - 1  # closed before the client got the last two chunks
    final = out[-1]
    assert final.choices[0].finish_reason == "length" and not final.choices[0].delta.content
    assert final.livepplx["stopped"] == "stop_above" and final.livepplx["at_token"] == stop_at
    assert final.livepplx["ppl"] > 5
    assert sample(registry, "livepplx_stops_total", model="local", trigger="stop_above") == 1
    assert sample(registry, "livepplx_tokens_saved_total", model="local", trigger="stop_above") == 200 - stop_at
    assert sample(registry, "livepplx_generations_total", model="local", outcome="stopped") == 1


def test_window_and_group_confidence_policies_stop_by_their_own_names(registry: CollectorRegistry) -> None:
    callback = LivepplxCallback(metrics=PrometheusListener(registry=registry),
                                models={"local": {"window_ppl_above": 20, "window": 8, "min_tokens": 8}})
    logprobs: list[float | None] = [-0.05] * 40 + [-4.0] * 60
    _, out, upstream = run(callback, request(), answer(logprobs))
    assert out[-1].livepplx["stopped"] == "window_ppl_above" and upstream.closed_at is not None
    assert 40 < upstream.closed_at < 50  # the running PPL would still be low there
    data = request(metadata={"livepplx_group_confidence_below": "2.5", "livepplx_group_window": "16",
                             "livepplx_window_ppl_above": "off"})
    _, out, _ = run(callback, data, answer(logprobs))
    assert out[-1].livepplx["stopped"] == "group_confidence_below"


def test_policies_from_the_model_headers_flat_and_nested_metadata_later_ones_win(callback: LivepplxCallback) -> None:
    callback = LivepplxCallback(default={"stop_above": 50}, models={"local": {"min_tokens": 3}}, metrics=False)
    data = request(proxy_server_request={"headers": {"X-Livepplx-Stop-Above": "9", "x-livepplx-window": "16"}},
                   metadata={"livepplx_stop_above": "8", "livepplx": {"stop_above": 7.5}})
    prepared = asyncio.run(callback.async_pre_call_hook(None, None, data, "acompletion"))
    policy = prepared["metadata"][NOTE]["policy"]
    assert (policy["stop_above"], policy["min_tokens"], policy["window"]) == (7.5, 3, 16)
    other = asyncio.run(callback.async_pre_call_hook(None, None, request(model="other"), "acompletion"))
    assert other["metadata"][NOTE]["policy"]["stop_above"] == 50 and other["metadata"][NOTE]["policy"]["min_tokens"] == 8


@pytest.mark.parametrize("metadata, message", [
    ({"livepplx": {"stop_above": "abc"}}, "metadata.livepplx.stop_above must be a number > 0"),
    ({"livepplx": {"stop_above": True}}, "metadata.livepplx.stop_above must be a number > 0"),
    ({"livepplx": {"min_tokens": 2.5}}, "metadata.livepplx.min_tokens must be a whole number"),
    ({"livepplx": {"stop_abve": 3}}, "unknown livepplx policy key metadata.livepplx.stop_abve"),
    ({"livepplx": [1, 2]}, "metadata.livepplx must be an object of stop_above"),
    ({"livepplx_stop_above": "nan"}, "metadata.livepplx_stop_above must be a number > 0"),
    ({"livepplx_window": "-3"}, "metadata.livepplx_window must be a whole number from 1"),
    ({"livepplx_enabled": "perhaps"}, "metadata.livepplx_enabled must be true or false"),
])
def test_a_policy_of_the_wrong_type_is_a_400_that_names_it(callback: LivepplxCallback, metadata: dict[str, Any],
                                                          message: str) -> None:
    with pytest.raises(HTTPException) as raised:
        asyncio.run(callback.async_pre_call_hook(None, None, request(metadata=metadata), "acompletion"))
    assert raised.value.status_code == 400 and message in raised.value.detail["error"]


def test_a_bad_header_is_named_as_sent(callback: LivepplxCallback) -> None:
    data = request(proxy_server_request={"headers": {"x-livepplx-stop-above": "high"}})
    with pytest.raises(HTTPException, match="header x-livepplx-stop-above must be a number"):
        asyncio.run(callback.async_pre_call_hook(None, None, data, "acompletion"))


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.sampled_from(["stop_above", "min_tokens", "window", "enabled", "group_window", "x"]),
                       st.one_of(st.none(), st.booleans(), st.integers(-5, 10**7), st.floats(allow_nan=True),
                                 st.text(max_size=6), st.lists(st.integers(), max_size=2)), max_size=4))
def test_any_policy_is_read_or_refused_by_name(values: dict[str, Any]) -> None:
    try:
        policy = Policy.parse(values, "metadata.livepplx.")
    except PolicyError as e:
        assert str(e).startswith(("metadata.livepplx.", "unknown livepplx policy key"))
        return
    assert policy.stop_above is None or (math.isfinite(policy.stop_above) and policy.stop_above > 0)
    assert 1 <= policy.window <= 1 << 16 and isinstance(policy.enabled, bool)


def test_what_is_not_a_streamed_chat_passes_untouched(callback: LivepplxCallback) -> None:
    for data, call_type in [(request(stream=False), "acompletion"), (request(), "aembedding"),
                            (request(metadata={"livepplx": {"enabled": False}}), "acompletion")]:
        before = {k: v for k, v in data.items() if k != "metadata"}
        prepared = asyncio.run(callback.async_pre_call_hook(None, None, data, call_type))
        assert {k: v for k, v in prepared.items() if k != "metadata"} == before and NOTE not in prepared["metadata"]
    chunks = answer([-0.5] * 3)
    _, out, _ = run(callback, request(stream=False), chunks)
    assert out == chunks


def test_an_upstream_that_ignores_logprobs_is_passed_through_counted_and_logged_once_per_model(
        callback: LivepplxCallback, registry: CollectorRegistry, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "livepplx.gateway")
    for _ in range(3):
        chunks = answer([None] * 12)
        texts = [c.model_dump_json() for c in chunks]
        _, out, _ = run(callback, request(metadata={"livepplx_stop_above": "2"}), chunks)
        assert [c.model_dump_json() for c in out] == texts
    _, _, _ = run(callback, request(model="deaf-2"), answer([None] * 12))
    assert sample(registry, "livepplx_unscored_total", model="local") == 3
    assert sample(registry, "livepplx_generations_total", model="local", outcome="unscored") == 3
    assert sample(registry, "livepplx_generation_tokens_total", model="local") == 0
    lines = [r.getMessage() for r in caplog.records if "without logprobs" in r.getMessage()]
    assert len(lines) == 2 and "'local'" in lines[0] and "'deaf-2'" in lines[1]
    assert "the upstream ignored the request" in lines[0]


class Logging:
    """LiteLLM's per-request logging object, as far as the tap uses it (an attribute holder)."""


class TextStream:
    """LiteLLM's /v1/completions stream as the hook sees it: per upstream chunk, LiteLLM's
    ``CustomStreamWrapper`` (here ``source``) runs ``handle_openai_text_completion_chunk`` on the
    upstream's own chunk (the tap's place), then the client's chunk comes out without logprobs."""

    def __init__(self, logprobs: list[float], logging_obj: Logging) -> None:
        from types import SimpleNamespace

        self.logprobs = logprobs
        self.source = SimpleNamespace(logging_obj=logging_obj, closed_at=None)
        self.sent = 0

        async def aclose() -> None:
            self.source.closed_at = self.sent
        self.source.aclose = aclose

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._gen()

    async def _gen(self) -> AsyncIterator[Any]:
        from litellm.litellm_core_utils.streaming_handler import CustomStreamWrapper
        from openai._models import construct_type  # how the SDK builds a streamed chunk: not validated
        from openai.types import Completion

        n = len(self.logprobs)
        for i in range(n + 1):
            if self.source.closed_at is not None:
                return
            finish = "length" if i == n else None
            raw = construct_type(type_=Completion, value={
                "id": "t", "object": "text_completion", "created": 1, "model": "local",
                "choices": [{"index": 0, "text": "" if finish else f" w{i}", "finish_reason": finish,
                             "logprobs": None if finish else {"content": [
                                 {"token": f" w{i}", "logprob": self.logprobs[i], "bytes": None,
                                  "top_logprobs": [{"token": f" w{i}", "logprob": self.logprobs[i]}]}]}}]})
            CustomStreamWrapper.handle_openai_text_completion_chunk(self.source, raw)  # type: ignore[arg-type]
            self.sent += 1
            yield TextCompletionResponse(id="t", object="text_completion", created=1, model="local",
                                         choices=[{"index": 0, "text": None if finish else f" w{i}",
                                                   "logprobs": None, "finish_reason": finish}])


def completions(values: list[float], callback: LivepplxCallback, **extra: Any) -> tuple[dict[str, Any], list[Any],
                                                                                          TextStream]:
    logging_obj = Logging()
    data = {"model": "local", "stream": True, "prompt": "hi", "metadata": {}, "litellm_logging_obj": logging_obj,
            **extra}

    async def go() -> tuple[dict[str, Any], list[Any], TextStream]:
        prepared = await callback.async_pre_call_hook(None, None, data, "atext_completion")
        stream = TextStream(values, logging_obj)
        out = [c async for c in callback.async_post_call_streaming_iterator_hook(None, stream, prepared)]
        return prepared, out, stream
    return asyncio.run(go())


def test_legacy_completions_are_scored_from_the_upstreams_own_chunks(callback: LivepplxCallback,
                                                                     registry: CollectorRegistry) -> None:
    logprobs = [-0.2 * (i % 4) - 0.05 for i in range(20)]
    data, out, stream = completions(logprobs, callback, max_tokens=20)
    assert callback.text_completion_tap and data["logprobs"] == 5 and data["metadata"][NOTE]["added"]
    assert len(out) == 21 and stream.source.closed_at is None
    assert all(c.choices[0].logprobs is None for c in out)
    reference = math.exp(-math.fsum(logprobs) / len(logprobs))
    assert math.isclose(data["metadata"][RESULT]["ppl"], reference, rel_tol=1e-12)
    assert sample(registry, "livepplx_generation_tokens_total", model="local") == 20
    assert sample(registry, "livepplx_generations_total", model="local", outcome="complete") == 1
    assert not hasattr(data["litellm_logging_obj"], "_livepplx_raw_chunks")  # nothing kept after the stream
    asked, _, _ = completions(logprobs, callback, logprobs=2)
    assert asked["logprobs"] == 2 and not asked["metadata"][NOTE]["added"]


def test_a_stopped_legacy_completion_closes_litellms_stream_of_the_upstream(callback: LivepplxCallback,
                                                                            registry: CollectorRegistry) -> None:
    logprobs = [-0.05] * 5 + [-4.0] * 95
    _, out, stream = completions(logprobs, callback, max_tokens=100,
                                 metadata={"livepplx": {"stop_above": 5, "min_tokens": 4}})
    stop_at = next(n for n in range(4, 100) if math.exp((0.25 + 4.0 * (n - 5)) / n) > 5)
    assert stream.source.closed_at == stop_at == len(out) - 1
    final = out[-1]
    assert isinstance(final, TextCompletionResponse) and final.choices[0].finish_reason == "length"
    assert final.choices[0].text == "" and final.livepplx["stopped"] == "stop_above"
    assert sample(registry, "livepplx_stops_total", model="local", trigger="stop_above") == 1


def _fail_the_third_handle(monkeypatch: pytest.MonkeyPatch) -> None:
    """StreamState.handle raises on its third call (a bug inside livepplx, as the proxy would meet it)."""
    calls = {"n": 0}
    real = StreamState.handle

    def flaky(self: StreamState, c: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("boom")
        return real(self, c)

    monkeypatch.setattr(StreamState, "handle", flaky)


def test_a_legacy_completion_the_callback_cannot_read_flows_on_and_holds_no_chunks(
        callback: LivepplxCallback, monkeypatch: pytest.MonkeyPatch) -> None:
    _fail_the_third_handle(monkeypatch)
    held: list[int] = []
    real_see = _Watch.see

    def see(self: _Watch, chunk: Any) -> bool:
        stopped = real_see(self, chunk)
        held.append(len(self.raw or ()))
        return stopped

    monkeypatch.setattr(_Watch, "see", see)
    data, out, stream = completions([-0.5] * 12, callback, metadata={"livepplx_stop_above": "1.1"})
    assert len(out) == 13 and stream.source.closed_at is None  # every chunk, none stopped after the failure
    assert data["metadata"][RESULT]["tokens"] == 2 and max(held) == 0


def test_without_the_tap_legacy_completions_are_watched_unscored(callback: LivepplxCallback,
                                                                  registry: CollectorRegistry) -> None:
    callback.text_completion_tap = False  # another LiteLLM, without the method the tap wraps
    data = {"model": "local", "stream": True, "prompt": "hi", "metadata": {}}
    chunks = [TextCompletionResponse(id="t", object="text_completion", created=1, model="local",
                                     choices=[{"index": 0, "text": f" w{i}", "logprobs": None, "finish_reason": None}])
              for i in range(5)]
    _, out, _ = run(callback, data, chunks, "atext_completion")
    assert out == chunks
    assert sample(registry, "livepplx_unscored_total", model="local") == 1


def events(logprobs: list[float | None], rid: str = "resp_1") -> list[Any]:
    """A Responses stream as LiteLLM hands it to the hook (its event classes; OpenAI's logprobs on
    each delta are an extra field)."""
    from litellm.types.llms.openai import OutputTextDeltaEvent, ResponseCompletedEvent, ResponseCreatedEvent

    response = {"id": rid, "object": "response", "created_at": 1, "status": "in_progress", "output": []}
    out: list[Any] = [ResponseCreatedEvent.model_validate({"type": "response.created", "response": response})]
    for i, lp in enumerate(logprobs):
        delta: dict[str, Any] = {"type": "response.output_text.delta", "item_id": "m", "output_index": 0,
                                 "content_index": 0, "delta": f" w{i}"}
        if lp is not None:
            delta["logprobs"] = [{"token": f" w{i}", "logprob": lp, "bytes": [],
                                  "top_logprobs": [{"token": f" w{i}", "logprob": lp, "bytes": []}]}]
        out.append(OutputTextDeltaEvent.model_validate(delta))
    done = {**response, "status": "completed"}
    out.append(ResponseCompletedEvent.model_validate({"type": "response.completed", "response": done}))
    return out


def responses_request(**extra: Any) -> dict[str, Any]:
    return {"model": "local", "stream": True, "input": "hi", "metadata": {}, **extra}


def test_responses_ask_for_logprobs_are_scored_and_the_client_gets_none(callback: LivepplxCallback,
                                                                         registry: CollectorRegistry) -> None:
    logprobs: list[float | None] = [-0.1 * (i % 3) - 0.02 for i in range(16)]
    data, out, upstream = run(callback, responses_request(include=["reasoning.encrypted_content"]),
                              events(logprobs), "aresponses")
    assert data["include"] == ["reasoning.encrypted_content", "message.output_text.logprobs"]
    assert "top_logprobs" not in data and "logprobs" not in data
    assert len(out) == 18 and upstream.closed_at is None
    assert all("logprobs" not in c.model_dump_json() for c in out)
    reference = math.exp(-math.fsum(lp for lp in logprobs if lp is not None) / len(logprobs))
    assert math.isclose(data["metadata"][RESULT]["ppl"], reference, rel_tol=1e-12)
    assert sample(registry, "livepplx_generations_total", model="local", outcome="complete") == 1
    asked, out, _ = run(callback, responses_request(include=["message.output_text.logprobs"]), events(logprobs),
                        "aresponses")
    assert not asked["metadata"][NOTE]["added"] and sum("logprobs" in c.model_dump_json() for c in out) == 16
    odd, _, _ = run(callback, responses_request(include="message.output_text.logprobs"), events([]), "aresponses")
    assert odd["include"] == "message.output_text.logprobs"  # not a list: left for the upstream to refuse


def test_a_stopped_response_closes_the_upstream_and_ends_as_incomplete(callback: LivepplxCallback,
                                                                       registry: CollectorRegistry) -> None:
    logprobs: list[float | None] = [-0.05] * 5 + [-4.0] * 95
    data = responses_request(metadata={"livepplx_stop_above": "5", "livepplx_min_tokens": "4"})
    _, out, upstream = run(callback, data, events(logprobs, rid="resp_42"), "aresponses")
    stop_at = next(n for n in range(4, 100) if math.exp((0.25 + 4.0 * (n - 5)) / n) > 5)
    assert upstream.closed_at == stop_at + 1 == len(out) - 1  # the created event, then stop_at deltas
    final = out[-1]
    assert final.type == "response.incomplete" and final.response.status == "incomplete"
    assert final.response.id == "resp_42" and final.response.incomplete_details.reason == "max_output_tokens"
    assert final.livepplx["stopped"] == "stop_above" and final.livepplx["at_token"] == stop_at
    assert '"type":"response.incomplete"' in final.model_dump_json()
    assert sample(registry, "livepplx_stops_total", model="local", trigger="stop_above") == 1


def test_a_responses_upstream_without_logprobs_is_passed_through_unscored(callback: LivepplxCallback,
                                                                          registry: CollectorRegistry) -> None:
    stream = events([None] * 6)
    texts = [c.model_dump_json() for c in stream]
    _, out, _ = run(callback, responses_request(metadata={"livepplx_stop_above": "1.01"}), stream, "aresponses")
    assert [c.model_dump_json() for c in out] == texts
    assert sample(registry, "livepplx_unscored_total", model="local") == 1


def test_an_exception_inside_the_callback_never_breaks_the_clients_stream(
        callback: LivepplxCallback, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    real = StreamState.handle  # put back below
    _fail_the_third_handle(monkeypatch)
    chunks = answer([-0.5] * 10)
    data, out, upstream = run(callback, request(metadata={"livepplx_stop_above": "1.1"}), chunks)
    assert len(out) == 11 and upstream.closed_at is None  # every chunk, none stopped after the failure
    assert all(c.choices[0].logprobs is None for c in out)  # still given the shape the client asked for
    assert any("could not be read" in r.getMessage() for r in caplog.records)
    assert data["metadata"][RESULT]["tokens"] == 2  # the two chunks before the failure

    # A listener that raises, and a note the callback cannot read: the stream still flows.
    class Raising(PrometheusListener):
        def on_end(self, state: StreamState) -> None:
            raise ValueError("listener failed")

    monkeypatch.setattr(StreamState, "handle", real)
    broken = LivepplxCallback(metrics=False, listeners=[Raising(registry=CollectorRegistry())])
    _, out, _ = run(broken, request(), answer([-0.5] * 3))
    assert len(out) == 4
    odd = request()
    odd["metadata"][NOTE] = {"policy": {"stop_above": "nonsense"}}
    out = asyncio.run(_collect(broken.async_post_call_streaming_iterator_hook(None, Upstream(answer([-0.5])), odd)))
    assert len(out) == 2


async def _collect(gen: Any) -> list[Any]:
    return [c async for c in gen]


def test_an_upstream_failure_still_reaches_the_proxy(callback: LivepplxCallback, registry: CollectorRegistry) -> None:
    class Failing(Upstream):
        async def _gen(self) -> AsyncIterator[Any]:
            yield chunk(0, -0.5)
            raise ConnectionError("upstream hung up")

    async def go() -> list[Any]:
        data = await callback.async_pre_call_hook(None, None, request(), "acompletion")
        return [c async for c in callback.async_post_call_streaming_iterator_hook(None, Failing([]), data)]

    with pytest.raises(ConnectionError):
        asyncio.run(go())
    assert sample(registry, "livepplx_generations_total", model="local", outcome="error") == 1


def test_bad_settings_are_refused_when_the_proxy_starts(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(PolicyError, match=r"models\['local'\].stop_above must be a number > 0"):
        LivepplxCallback(models={"local": {"stop_above": -1}}, metrics=False)
    with pytest.raises(ValueError, match="top_logprobs must be a whole number from 0 to 20"):
        LivepplxCallback(top_logprobs=50, metrics=False)
    monkeypatch.setenv("LIVEPPLX_METRICS_PORT", "http")
    with pytest.raises(ValueError, match="LIVEPPLX_METRICS_PORT must be a port number"):
        LivepplxCallback(metrics=PrometheusListener(registry=CollectorRegistry()))


def test_metrics_are_served_over_http(registry: CollectorRegistry) -> None:
    import socket
    import urllib.request

    from livepplx.integrations.prometheus import serve

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    callback = LivepplxCallback(metrics=PrometheusListener(registry=registry), metrics_port=port)
    run(callback, request(), answer([-0.5] * 4))
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    assert 'livepplx_generation_tokens_total{model="local"} 4.0' in text
    assert generate_latest(registry).decode().count("livepplx_generation_ppl_count") == 1
    assert serve(port, registry)  # the same port again in this process: already served, not an error


def test_an_open_stream_costs_a_few_kilobytes(callback: LivepplxCallback) -> None:
    """Thousands of streams are open at once in a gateway: DeepConf's 2,048-slot window is kept
    only when its trigger is on."""
    import tracemalloc

    from livepplx.integrations.litellm_proxy import _Watch

    def held(policy: dict[str, Any]) -> int:
        data = asyncio.run(callback.async_pre_call_hook(None, None, request(metadata={"livepplx": policy}),
                                                        "acompletion"))
        chunks = answer([-0.5] * 20)[:-1]
        tracemalloc.start()
        watch = _Watch(callback, data["metadata"][NOTE], data)
        for c in chunks:
            watch.see(c)
        size, _ = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        return size

    small = held({"stop_above": 20})
    print(f"\nheld by one watched stream: {small} bytes")
    assert small < 12_000
    assert held({"group_confidence_below": 2.0}) > 33_000
