"""The frameworks agents are built with, each driven for real over httpx.MockTransport serving
recorded SSE bytes of upstream llama-server (no network).

Each reference is the recording's own logprobs, read the plain way (conftest.recorded_logprobs);
each stop is checked on the response body: closed, not read to its end, and closed before the
triggers' callbacks ran where the framework lets livepplx close first.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import math
import os
import sys
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

import livepplx
from conftest import CountingBody, ppl_of, recorded_logprobs, sse, sse_response
from livepplx import NoLogprobsError, NotAStreamError, StreamFormatError, Trigger, min_tokens
from livepplx.recordings import recording_path

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # LiteLLM fetches its cost map at import otherwise

RECORDING = recording_path("llamacpp-server-chat")
BODY = RECORDING.read_bytes()
VALUES = recorded_logprobs(RECORDING)
TOKENS, PPL = len(VALUES), ppl_of(VALUES)
ANSWER = "".join(json.loads(line[6:])["choices"][0]["delta"].get("content") or ""
                 for line in BODY.decode().splitlines() if line.startswith("data: {") and '"delta"' in line)


def events() -> list[bytes]:
    """The recording as the server sent it, one SSE event at a time."""
    return [part + b"\n\n" for part in BODY.split(b"\n\n") if part.strip()]


def whole_answer() -> dict[str, Any]:
    """The same answer, not streamed (as llama-server sends it)."""
    content = [{"token": "", "logprob": v, "top_logprobs": []} for v in VALUES]
    return {"id": "chatcmpl-1", "object": "chat.completion", "created": 0, "model": "m",
            "choices": [{"index": 0, "finish_reason": "length", "message": {"role": "assistant", "content": ANSWER},
                         "logprobs": {"content": content}}],
            "usage": {"prompt_tokens": 1, "completion_tokens": TOKENS, "total_tokens": TOKENS + 1}}


class PacedBody(CountingBody, httpx.AsyncByteStream):
    """A body served as a network would: the reader waits a moment for each event, so a task
    that reads ahead (the Agents SDK's run task) does not get the whole body at once."""

    async def __aiter__(self):  # type: ignore[no-untyped-def]
        for event in self.events:
            await asyncio.sleep(0.002)
            if self.closed:
                return
            self.read += 1
            yield event


class Server:
    """A mocked server: answers every request with a new CountingBody over the recording (or a
    whole JSON answer when the request did not ask to stream), and keeps the requests and bodies."""

    def __init__(self, body: list[bytes] | None = None, paced: bool = False) -> None:
        self.requests: list[dict[str, Any]] = []
        self.bodies: list[CountingBody] = []
        self.events = body if body is not None else events()
        self.paced = paced

    def __call__(self, request: httpx.Request) -> httpx.Response:
        sent = json.loads(request.content)
        self.requests.append(sent)
        if not sent.get("stream"):
            return httpx.Response(200, json=whole_answer())
        body = (PacedBody if self.paced else CountingBody)(list(self.events))
        self.bodies.append(body)
        if self.paced:
            return httpx.Response(200, stream=body, headers={"content-type": "text/event-stream"})
        return sse_response(body)

    def client(self) -> httpx.Client:
        return httpx.Client(transport=httpx.MockTransport(self))

    def async_client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(transport=httpx.MockTransport(self))


def stop_at(n: int, seen: list[Any], body_of: Any) -> Trigger:
    """A trigger that stops at token n; its callback records whether the body was closed by then."""
    return Trigger(min_tokens(n), stop=True, call=lambda event: seen.append((event.at_token, body_of().closed)))


# -- LangChain ---------------------------------------------------------------------------------


@pytest.fixture
def lc() -> Any:
    pytest.importorskip("langchain_openai", reason="pip install -e '.[langchain]'")
    from livepplx.integrations import langchain

    return langchain


def chat_openai(server: Server, **kwargs: Any) -> Any:
    from langchain_openai import ChatOpenAI

    kwargs.setdefault("streaming", True)
    return ChatOpenAI(base_url="http://test.invalid/v1", api_key="sk-test", model="m", logprobs=True, top_logprobs=3,
                      max_retries=0, http_client=server.client(), http_async_client=server.async_client(), **kwargs)


def test_langchain_stream_reads_the_servers_logprobs_per_run(lc: Any) -> None:
    server = Server()
    handler = lc.LivepplxCallbackHandler()
    run_id = uuid.uuid4()
    text = "".join(chunk.content for chunk in chat_openai(server).stream("hi", config={"callbacks": [handler],
                                                                                         "run_id": run_id}))
    state = handler.states[run_id]
    assert text == ANSWER and state is handler.latest
    assert state.tokens == TOKENS and math.isclose(state.ppl, PPL, rel_tol=1e-12)
    assert state.complete and state.error is None and state.format == "openai-chat"
    assert server.requests[0]["logprobs"] is True and server.requests[0]["top_logprobs"] == 3
    assert state.request["model"] == "m"  # escalations get the run's invocation parameters


def test_langchain_invoke_counts_each_token_once_streamed_or_whole(lc: Any) -> None:
    handler = lc.LivepplxCallbackHandler()
    streamed = chat_openai(Server()).invoke("hi", config={"callbacks": [handler]})
    assert streamed.content == ANSWER
    assert handler.latest is not None and handler.latest.tokens == TOKENS  # not twice: on_llm_end adds nothing
    whole = chat_openai(Server(), streaming=False).invoke("hi", config={"callbacks": [handler]})
    state = handler.latest
    assert whole.content == ANSWER and len(handler.states) == 2
    assert state.tokens == TOKENS and math.isclose(state.ppl, PPL, rel_tol=1e-12) and state.complete


def test_langchain_stop_in_invoke_closes_the_response_before_the_callbacks(lc: Any) -> None:
    server, seen = Server(), []
    handler = lc.LivepplxCallbackHandler(triggers=[stop_at(5, seen, lambda: server.bodies[0])])
    with pytest.raises(lc.StreamStopped) as caught:
        chat_openai(server).invoke("hi", config={"callbacks": [handler]})
    # ChatOpenAI calls the handler inside its read loop: the exception closed the response first.
    assert seen == [(5, True)]
    assert caught.value.stop.at_token == 5 and caught.value.state.tokens == 5
    body = server.bodies[0]
    assert body.closed and body.read < len(body.events)


def test_langchain_stop_in_stream_ends_the_stream_and_closes_the_response(lc: Any) -> None:
    server = Server()
    handler = lc.LivepplxCallbackHandler(stop_above=1.01, min_tokens=3)
    delivered: list[str] = []
    with pytest.raises(lc.StreamStopped) as caught:
        for chunk in chat_openai(server).stream("hi", config={"callbacks": [handler]}):
            delivered.append(chunk.content)
    stop = caught.value.stop
    assert stop.reason == "ppl above 1.01" and stop.at_token >= 3
    assert server.bodies[0].closed and server.bodies[0].read < len(server.bodies[0].events)
    # The chunk that crossed was counted and not handed on.
    assert len([d for d in delivered if d]) == stop.at_token - 1


def test_langchain_async_stream_and_stop(lc: Any) -> None:
    async def main() -> None:
        handler = lc.LivepplxCallbackHandler()
        text = "".join([c.content async for c in chat_openai(Server()).astream("hi", config={"callbacks": [handler]})])
        assert text == ANSWER and handler.latest is not None
        assert handler.latest.tokens == TOKENS and math.isclose(handler.latest.ppl, PPL, rel_tol=1e-12)
        server, seen = Server(), []
        stopper = lc.LivepplxCallbackHandler(triggers=[stop_at(4, seen, lambda: server.bodies[0])])
        with pytest.raises(lc.StreamStopped):
            await chat_openai(server).ainvoke("hi", config={"callbacks": [stopper]})
        # langchain-core closes its async read loop once the exception has left it (an async
        # generator is closed by the event loop): the callback ran, the response is closed now.
        assert [at for at, _ in seen] == [4] and server.bodies[0].closed
        assert server.bodies[0].read < len(server.bodies[0].events)

    asyncio.run(main())


def langgraph_of(llm: Any) -> Any:
    """The smallest LangGraph agent: one node that calls the model."""
    from langgraph.graph import END, START, MessagesState, StateGraph

    graph = StateGraph(MessagesState)
    graph.add_node("model", lambda state: {"messages": [llm.invoke(state["messages"])]})
    graph.add_edge(START, "model")
    graph.add_edge("model", END)
    return graph.compile()


def test_langgraph_streams_messages_watched_per_model_call_and_stops(lc: Any) -> None:
    pytest.importorskip("langgraph", reason="pip install -e '.[langchain]'")
    handler = lc.LivepplxCallbackHandler()
    graph = langgraph_of(chat_openai(Server()))
    pieces = [chunk.content for chunk, _ in graph.stream({"messages": [("user", "hi")]},
                                                           config={"callbacks": [handler]}, stream_mode="messages")]
    assert "".join(pieces) == ANSWER and len(handler.states) == 1
    state = handler.latest
    assert state is not None and state.tokens == TOKENS and math.isclose(state.ppl, PPL, rel_tol=1e-12)
    server, seen = Server(), []
    stopper = lc.LivepplxCallbackHandler(triggers=[stop_at(5, seen, lambda: server.bodies[0])])
    with pytest.raises(lc.StreamStopped):
        langgraph_of(chat_openai(server)).invoke({"messages": [("user", "hi")]}, config={"callbacks": [stopper]})
    assert seen == [(5, True)]  # inside a graph the model is invoked: closed first, then the callback
    assert server.bodies[0].read < len(server.bodies[0].events)


def test_langchain_over_the_tap_stops_as_a_normal_end(lc: Any) -> None:
    """The tap under ChatOpenAI: closed first on every path, and the stream ends as a normal
    end, so LangChain returns the message up to the stop."""
    from livepplx.integrations.tap import Tap

    server, seen = Server(), []
    tap = Tap(triggers=[stop_at(5, seen, lambda: server.bodies[0])])
    from langchain_openai import ChatOpenAI

    llm = ChatOpenAI(base_url="http://test.invalid/v1", api_key="sk-test", model="m", max_retries=0, streaming=True,
                     http_client=httpx.Client(transport=tap.transport(httpx.MockTransport(server))))
    chunks = list(llm.stream("hi"))
    assert seen == [(5, True)] and tap.last is not None and tap.last.stopped is not None
    assert "".join(c.content for c in chunks) == tap.last.text() and tap.last.tokens == 5
    assert [c.response_metadata.get("finish_reason") for c in chunks if c.response_metadata.get("finish_reason")] \
        == ["length"]
    assert server.bodies[0].read < len(server.bodies[0].events)


def test_langchain_fallback_escalates_a_stopped_run(lc: Any) -> None:
    """LangChain's own escalation: with_fallbacks on StreamStopped asks the second model."""
    first, second = Server(), Server()
    handler = lc.LivepplxCallbackHandler(triggers=[Trigger(min_tokens(3), stop=True)])
    chain = chat_openai(first).with_fallbacks([chat_openai(second, streaming=False)],
                                              exceptions_to_handle=(lc.StreamStopped,))
    answer = chain.invoke("hi", config={"callbacks": [handler]})
    assert answer.content == ANSWER and first.bodies[0].closed and len(second.requests) == 1
    watched = list(handler.states.values())
    assert [s.stopped is not None for s in watched] == [True, True]  # the fallback is watched too: it crossed as well
    assert watched[0].tokens == 3


def test_langchain_text_without_logprobs_is_named_not_zero(lc: Any) -> None:
    from langchain_core.language_models.fake_chat_models import FakeListChatModel

    handler = lc.LivepplxCallbackHandler()
    with pytest.raises(NoLogprobsError, match="without logprobs"):
        list(FakeListChatModel(responses=["four words of text"]).stream("hi", config={"callbacks": [handler]}))
    assert handler.latest is not None and handler.latest.tokens == 0 and handler.latest.error


def test_langchain_chunks_livepplx_cannot_read_are_said(lc: Any) -> None:
    """A model whose callbacks hand over chunks of another kind: "not a stream livepplx can read"."""
    from langchain_core.outputs import ChatGeneration, LLMResult
    from langchain_core.messages import AIMessage

    handler = lc.LivepplxCallbackHandler()
    run_id = uuid.uuid4()
    handler.on_chat_model_start({}, [[]], run_id=run_id)
    for token in ("a", "b", "c"):
        handler.on_llm_new_token(token, chunk=object(), run_id=run_id)
    with pytest.raises(StreamFormatError, match="not a stream livepplx can read"):
        handler.on_llm_end(LLMResult(generations=[[ChatGeneration(message=AIMessage(content="abc"))]]), run_id=run_id)
    assert handler.states[run_id].unrecognized == 3


def test_monitor_of_langchain_message_chunks_is_an_error_not_zero_tokens(lc: Any) -> None:
    """The issue's first complaint: LangChain's message chunks read as "0 tokens" without a word."""
    with pytest.raises(StreamFormatError, match="not a stream livepplx can read"):
        with livepplx.monitor(chat_openai(Server()).stream("hi")) as m:
            for _ in m:
                pass


def test_langchain_handler_keeps_the_newest_runs(lc: Any) -> None:
    handler = lc.LivepplxCallbackHandler(keep=2)
    llm = chat_openai(Server(), streaming=False)
    for _ in range(3):
        llm.invoke("hi", config={"callbacks": [handler]})
    assert len(handler.states) == 2
    with pytest.raises(ValueError, match="keep"):
        lc.LivepplxCallbackHandler(keep=0)
    with pytest.raises(TypeError, match="unknown monitor option"):
        lc.LivepplxCallbackHandler(stop_abov=3)


# -- LiteLLM -------------------------------------------------------------------------------------


@pytest.fixture
def lx() -> Any:
    pytest.importorskip("litellm", reason="pip install -e '.[litellm]'")
    from livepplx.integrations import litellm

    return litellm


def openai_client(server: Server, asynchronous: bool = False) -> Any:
    import openai

    if asynchronous:
        return openai.AsyncOpenAI(api_key="sk-test", base_url="http://test.invalid/v1", max_retries=0,
                                  http_client=server.async_client())
    return openai.OpenAI(api_key="sk-test", base_url="http://test.invalid/v1", max_retries=0,
                         http_client=server.client())


MESSAGES = [{"role": "user", "content": "hi"}]


def test_litellm_chunks_are_read_by_monitor_as_they_are(lx: Any) -> None:
    import litellm

    server = Server()
    stream = litellm.completion(model="openai/m", client=openai_client(server), messages=MESSAGES, stream=True,
                                logprobs=True, top_logprobs=3)
    with livepplx.monitor(stream) as m:
        text = "".join(chunk.choices[0].delta.content or "" for chunk in m)
    assert text == ANSWER and m.tokens == TOKENS and math.isclose(m.ppl, PPL, rel_tol=1e-12)
    assert m.state.complete and m.error is None


def test_litellm_completion_asks_for_logprobs_and_stops_closing_first(lx: Any) -> None:
    server, seen = Server(), []
    with lx.completion(model="openai/m", client=openai_client(server), messages=MESSAGES,
                       triggers=[stop_at(6, seen, lambda: server.bodies[0])]) as m:
        chunks = list(m)
    assert server.requests[0]["logprobs"] is True and server.requests[0]["top_logprobs"] == 5
    assert m.stopped is not None and m.stopped.at_token == 6 and seen == [(6, True)]
    assert server.bodies[0].read < len(server.bodies[0].events) and len(chunks) < TOKENS
    assert m.state.request["stream"] is True  # escalations get LiteLLM's request


def test_litellm_acompletion(lx: Any) -> None:
    async def main() -> None:
        server = Server()
        m = await lx.acompletion(model="openai/m", client=openai_client(server, asynchronous=True), messages=MESSAGES)
        async with m:
            text = "".join([chunk.choices[0].delta.content or "" async for chunk in m])
        assert text == ANSWER and m.tokens == TOKENS and math.isclose(m.ppl, PPL, rel_tol=1e-12)
        stopped_server, seen = Server(), []
        m = await lx.acompletion(model="openai/m", client=openai_client(stopped_server, asynchronous=True),
                                 messages=MESSAGES, triggers=[stop_at(3, seen, lambda: stopped_server.bodies[0])])
        async with m:
            async for _ in m:
                pass
        assert m.stopped is not None and seen == [(3, True)]

    asyncio.run(main())


def vllm_style(last_content: str | None, last_logprobs: Any) -> list[bytes]:
    """A stream whose finish_reason comes in the chunk of the last token (as vLLM sends it):
    the shape of LiteLLM's issue #10686."""
    def chunk(content: str | None, logprobs: Any, finish: str | None) -> bytes:
        return sse({"id": "x", "object": "chat.completion.chunk", "created": 0, "model": "m", "choices": [
            {"index": 0, "delta": {"content": content}, "logprobs": logprobs, "finish_reason": finish}]}, done=False)

    def lp(token: str, value: float) -> dict[str, Any]:
        return {"content": [{"token": token, "logprob": value, "bytes": None,
                             "top_logprobs": [{"token": token, "logprob": value, "bytes": None}]}]}

    return [chunk("", None, None), chunk(" ", lp(" ", -0.5), None), chunk("2", lp("2", -1.0), None),
            chunk(last_content, last_logprobs, "stop"), b"data: [DONE]\n\n"]


@pytest.mark.parametrize("last", [("", None), ("!", "logprobs"), ("", {"content": []})], ids=["empty", "token", "empty-list"])
def test_litellm_keeps_the_finish_reason_with_logprobs(lx: Any, last: tuple[str, Any]) -> None:
    """LiteLLM's #10686 (finish_reason lost with logprobs and stream) does not occur: every
    token is counted and the stream is complete, not truncated."""
    content, logprobs = last
    values = [-0.5, -1.0]
    if logprobs == "logprobs":
        logprobs = {"content": [{"token": "!", "logprob": -0.25, "bytes": None, "top_logprobs": []}]}
        values.append(-0.25)
    server = Server(vllm_style(content, logprobs))
    with lx.completion(model="openai/m", client=openai_client(server), messages=MESSAGES) as m:
        finish = [c.choices[0].finish_reason for c in m if c.choices and c.choices[0].finish_reason]
    assert finish == ["stop"] and m.state.complete and m.error is None
    assert m.tokens == len(values) and math.isclose(m.ppl, ppl_of(values), rel_tol=1e-12)


def test_litellm_text_without_logprobs_and_a_whole_answer_are_named(lx: Any) -> None:
    import litellm

    plain = [e.replace(b'"logprobs"', b'"x_logprobs"') for e in events()]
    with pytest.raises(NoLogprobsError):
        with lx.completion(model="openai/m", client=openai_client(Server(plain)), messages=MESSAGES) as m:
            list(m)
    assert m.tokens == 0 and m.summary()["ppl"] is None
    whole = litellm.completion(model="openai/m", client=openai_client(Server()), messages=MESSAGES, logprobs=True)
    with pytest.raises(NotAStreamError, match="score"):
        livepplx.monitor(whole)
    assert livepplx.score(whole.model_dump()).tokens == TOKENS


def test_litellm_request_keeps_what_the_caller_set(lx: Any) -> None:
    call, options = lx.request({"model": "m", "messages": [], "top_logprobs": 2, "logprobs": True, "window": 8,
                                "triggers": []})
    assert call == {"model": "m", "messages": [], "top_logprobs": 2, "logprobs": True, "stream": True}
    assert options == {"window": 8, "triggers": []}


# -- the examples, over the mocked server --------------------------------------------------------

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def example(name: str) -> Any:
    if str(EXAMPLES) not in sys.path:  # as `python examples/X.py` has it: the examples import _agent_step
        sys.path.insert(0, str(EXAMPLES))
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def last_json_line(out: str) -> dict[str, Any]:
    return json.loads(out.strip().splitlines()[-1])


ARGS = ["--base-url", "http://test.invalid/v1", "--model", "m", "--prompt", "hi", "--max-tokens", "30",
        "--temperature", "0", "--json"]


#: each example, the package it needs, and the client it is given
EXAMPLE_CLIENTS = {
    "langchain_stream": ("langchain_openai", lambda server: server.client()),
    "litellm_stream": ("litellm", lambda server: openai_client(server)),
    "openai_agents_stream": ("agents", lambda server: openai_client(server, asynchronous=True)),
    "pydantic_ai_stream": ("pydantic_ai", lambda server: httpx.MockTransport(server)),
}


def example_client(name: str, server: Server) -> Any:
    package, make = EXAMPLE_CLIENTS[name]
    pytest.importorskip(package, reason="pip install -e '.[langchain,litellm,agents,pydantic-ai]'")
    return make(server)


@pytest.mark.parametrize("name", sorted(EXAMPLE_CLIENTS))
def test_example_json_is_the_replay_summary_with_the_text(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    server = Server()
    client = example_client(name, server)
    summary = example(name).main(ARGS, client)
    printed = last_json_line(capsys.readouterr().out)
    replayed = livepplx.StreamState()
    replayed.handle(BODY)
    replayed.finish()
    expected = {**replayed.summary(), "text": ANSWER}
    if name == "openai_agents_stream":
        expected["format"] = "openai-responses"  # the SDK's events carry the chat stream's logprobs
    assert printed == summary == expected


@pytest.mark.parametrize("name", sorted(EXAMPLE_CLIENTS))
def test_example_stops_and_escalates(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    server = Server(paced=name == "openai_agents_stream")
    client = example_client(name, server)
    summary = example(name).main([*ARGS, "--stop-above", "1.01", "--escalate-to", "openai/big"], client)
    out = capsys.readouterr()
    assert last_json_line(out.out) == summary and "stopped at token 8" in out.err
    assert summary["stopped"] == {"reason": "ppl above 1.01", "choice": 0, "at_token": 8} and summary["tokens"] == 8
    assert summary["escalated"]["text"] == ANSWER and len(summary["text"]) < len(ANSWER)
    assert server.bodies[0].closed and server.requests[-1]["model"].endswith("big")


# -- OpenAI Agents SDK ---------------------------------------------------------------------------


@pytest.fixture
def oa() -> Any:
    pytest.importorskip("agents", reason="pip install -e '.[agents]'")
    from agents import set_tracing_disabled

    from livepplx.integrations import openai_agents

    set_tracing_disabled(True)  # the SDK exports traces to OpenAI otherwise
    return openai_agents


def agent_for(server: Server, **settings: Any) -> Any:
    from agents import Agent, ModelSettings, OpenAIChatCompletionsModel

    model = OpenAIChatCompletionsModel(model="m", openai_client=openai_client(server, asynchronous=True))
    guardrails = settings.pop("output_guardrails", [])
    return Agent(name="a", instructions="Be brief.", model=model, output_guardrails=guardrails,
                 model_settings=ModelSettings(**{"top_logprobs": 3, "temperature": 0, **settings}))


def test_agents_run_streamed_is_read_live_and_by_the_hooks(oa: Any) -> None:
    from agents import Runner
    from agents.stream_events import RawResponsesStreamEvent

    async def main() -> None:
        server = Server()
        monitor = oa.RunMonitor()
        result = Runner.run_streamed(agent_for(server), "hi", hooks=monitor)
        seen = [event async for event in monitor.watch(result)]
        deltas = "".join(e.data.delta for e in seen if isinstance(e, RawResponsesStreamEvent)
                         and e.data.type == "response.output_text.delta")
        assert deltas == ANSWER == result.final_output
        live, whole = monitor.last, monitor.responses[-1]
        assert live is not None and live.format == "openai-responses" and live.complete and live.error is None
        assert live.tokens == whole.tokens == TOKENS
        assert math.isclose(live.ppl, PPL, rel_tol=1e-12) and math.isclose(whole.ppl, PPL, rel_tol=1e-12)
        assert server.requests[0]["logprobs"] is True and server.requests[0]["top_logprobs"] == 3

    asyncio.run(main())


def test_agents_stop_cancels_the_run_and_closes_the_response_before_the_callbacks(oa: Any) -> None:
    from agents import Runner

    async def main() -> None:
        server, seen = Server(paced=True), []
        monitor = oa.RunMonitor(triggers=[Trigger(min_tokens(5), stop=True,
                                                  call=lambda e: seen.append((server.bodies[0].closed,
                                                                              result.run_loop_task.done())))])
        result = Runner.run_streamed(agent_for(server), "hi")
        events = [event async for event in monitor.watch(result)]
        assert monitor.stopped is not None and monitor.stopped.at_token == 5
        assert seen == [(True, True)]  # the model's stream closed and the run task over, then the callback
        assert result.final_output is None and monitor.last is not None and monitor.last.tokens == 5 and events
        # The SDK's run task reads ahead of the consumer: at most one event past the crossing one
        # (the role event and 5 tokens are 6) when the server paces its events as a network does.
        assert server.bodies[0].read <= 7

    asyncio.run(main())


def test_agents_guardrail_trips_on_the_final_responses_perplexity(oa: Any) -> None:
    from agents import Runner
    from agents.exceptions import OutputGuardrailTripwireTriggered

    async def main() -> None:
        calm = oa.RunMonitor()
        result = Runner.run_streamed(agent_for(Server(), output_guardrails=[calm.guardrail(max_ppl=PPL * 1.01)]), "hi",
                                     hooks=calm)
        async for _ in calm.watch(result):
            pass
        assert result.final_output == ANSWER
        assert result.output_guardrail_results[0].output.output_info["tokens"] == TOKENS
        strict = oa.RunMonitor()
        result = Runner.run_streamed(agent_for(Server(), output_guardrails=[strict.guardrail(max_ppl=PPL * 0.99)]), "hi",
                                     hooks=strict)
        with pytest.raises(OutputGuardrailTripwireTriggered) as caught:
            async for _ in strict.watch(result):
                pass
        info = caught.value.guardrail_result.output.output_info
        assert info["tokens"] == TOKENS and math.isclose(info["ppl"], PPL, rel_tol=1e-12)
        blind = oa.RunMonitor()  # no hooks=: the guardrail has nothing to judge by, and says so
        result = Runner.run_streamed(agent_for(Server(), output_guardrails=[blind.guardrail(max_ppl=10)]), "hi")
        with pytest.raises(livepplx.LivepplxError, match="hooks=monitor"):
            async for _ in blind.watch(result):
                pass

    asyncio.run(main())


def test_agents_run_without_streaming_is_scored_by_the_hooks(oa: Any) -> None:
    from agents import Runner

    async def main() -> None:
        monitor = oa.RunMonitor()
        result = await Runner.run(agent_for(Server()), "hi", hooks=monitor)
        assert result.final_output == ANSWER and not monitor.states
        assert monitor.responses[-1].tokens == TOKENS and math.isclose(monitor.responses[-1].ppl, PPL, rel_tol=1e-12)

    asyncio.run(main())


def test_agents_text_without_logprobs_is_named_not_zero(oa: Any) -> None:
    from agents import Runner

    async def main() -> None:
        plain = [e.replace(b'"logprobs"', b'"x_logprobs"') for e in events()]
        monitor = oa.RunMonitor()
        result = Runner.run_streamed(agent_for(Server(plain), top_logprobs=None), "hi")
        with pytest.raises(NoLogprobsError):
            async for _ in monitor.watch(result):
                pass
        assert monitor.last is not None and monitor.last.tokens == 0
        assert result.run_loop_task is not None and result.run_loop_task.done()  # the run was not left going

    asyncio.run(main())


def test_agents_options_are_checked(oa: Any) -> None:
    with pytest.raises(ValueError, match="cancel_mode"):
        oa.RunMonitor(cancel_mode="later")
    with pytest.raises(TypeError, match="unknown monitor option"):
        oa.RunMonitor(stop_abov=3)
    with pytest.raises(ValueError, match="max_ppl"):
        oa.RunMonitor().guardrail(max_ppl=0)
    with pytest.raises(livepplx.LivepplxError, match="watch"):
        oa.RunMonitor().summary()


def test_agents_example_guardrail_escalates(capsys: pytest.CaptureFixture[str]) -> None:
    server = Server()
    client = example_client("openai_agents_stream", server)
    summary = example("openai_agents_stream").main(
        [*ARGS, "--max-ppl", f"{PPL * 0.99}", "--escalate-to", "big"], client)
    assert "[guardrail: ppl" in capsys.readouterr().err
    assert summary["stopped"] is None and summary["tokens"] == TOKENS and summary["text"] == ANSWER
    assert summary["escalated"] == {"model": "big", "text": ANSWER} and server.requests[-1]["model"] == "big"


# -- pydantic-ai (through the tap) ---------------------------------------------------------------


@pytest.fixture
def pa() -> Any:
    pytest.importorskip("pydantic_ai", reason="pip install -e '.[pydantic-ai]'")
    from livepplx.integrations import pydantic_ai

    return pydantic_ai


def pydantic_agent(pa: Any, server: Server, tap: Any, **agent: Any) -> Any:
    from pydantic_ai import Agent
    from pydantic_ai.models.openai import OpenAIChatModel

    provider = pa.tapped_provider(tap, base_url="http://test.invalid/v1", inner=httpx.MockTransport(server),
                                  max_retries=0)
    return Agent(OpenAIChatModel("m", provider=provider), **agent)


def test_pydantic_ai_run_stream_is_watched_by_the_tap(pa: Any) -> None:
    from livepplx.integrations.tap import Tap

    async def main() -> None:
        server, tap = Server(), Tap()
        async with pydantic_agent(pa, server, tap).run_stream("hi") as result:
            text = "".join([delta async for delta in result.stream_text(delta=True)])
        state = tap.last
        assert text == ANSWER and state is not None and state.complete and state.error is None
        assert state.tokens == TOKENS and math.isclose(state.ppl, PPL, rel_tol=1e-12)
        # The tap asked for logprobs pydantic-ai did not ask for, and took them out again.
        assert server.requests[0]["logprobs"] is True and server.requests[0]["top_logprobs"] == 5
        assert "logprobs" not in (result.all_messages()[-1].provider_details or {})

    asyncio.run(main())


def test_pydantic_ai_stop_ends_the_run_normally_with_the_text_up_to_the_stop(pa: Any) -> None:
    from livepplx.integrations.tap import Tap

    async def main() -> None:
        server, seen = Server(), []
        tap = Tap(triggers=[stop_at(6, seen, lambda: server.bodies[0])])
        async with pydantic_agent(pa, server, tap).run_stream("hi") as result:
            text = "".join([delta async for delta in result.stream_text(delta=True)])
        assert tap.last is not None and tap.last.stopped is not None and tap.last.tokens == 6
        assert seen == [(6, True)]  # the tap closed the upstream first
        assert text == tap.last.text() and ANSWER.startswith(text) and len(text) < len(ANSWER)
        assert result.all_messages()[-1].finish_reason == "length"
        assert server.bodies[0].read < len(server.bodies[0].events)

    asyncio.run(main())


def test_pydantic_ai_retry_above_asks_again_in_run_and_refuses_in_run_stream(pa: Any) -> None:
    from pydantic_ai.exceptions import UnexpectedModelBehavior

    from livepplx.integrations.tap import Tap

    async def main() -> None:
        server, tap = Server(), Tap()
        agent = pydantic_agent(pa, server, tap, retries=1)
        agent.output_validator(pa.retry_above(tap, max_ppl=PPL * 0.99))

        async def handler(ctx: Any, events: Any) -> None:  # makes run() stream its requests
            async for _ in events:
                pass

        with pytest.raises(UnexpectedModelBehavior, match="retries"):
            await agent.run("hi", event_stream_handler=handler)
        assert len(server.requests) == 2 and all(r["stream"] for r in server.requests)
        assert "perplexity" in json.dumps(server.requests[1]["messages"])  # the retry told the model why
        with pytest.raises(UnexpectedModelBehavior, match="run_stream"):
            async with agent.run_stream("hi") as result:
                async for _ in result.stream_text(delta=True):
                    pass
        calm = pydantic_agent(pa, Server(), tap)
        calm.output_validator(pa.retry_above(tap, max_ppl=PPL * 1.01))
        assert (await calm.run("hi", event_stream_handler=handler)).output == ANSWER

    asyncio.run(main())


def test_pydantic_ai_bad_input_is_named(pa: Any) -> None:
    from livepplx.integrations.tap import Tap

    async def main() -> None:
        # Text without logprobs (a server that ignores the request): said on the answer, never 0 tokens; the run goes on.
        odd = [sse({"id": "x", "object": "chat.completion.chunk", "created": 0, "model": "m",
                    "choices": [{"index": 0, "delta": {"content": w}, "finish_reason": None}]}, done=False)
               for w in ("a", "b", "c")] + [b"data: [DONE]\n\n"]
        tap = Tap()
        async with pydantic_agent(pa, Server(odd), tap).run_stream("hi") as result:
            assert "".join([d async for d in result.stream_text(delta=True)]) == "abc"
        assert tap.last is not None and tap.last.tokens == 0 and "without logprobs" in (tap.last.error or "")
        with pytest.raises(livepplx.LivepplxError, match="without logprobs"):
            pa.retry_above(tap, max_ppl=10)(None, "abc")
        with pytest.raises(livepplx.LivepplxError, match="tapped_provider"):
            pa.retry_above(Tap(), max_ppl=10)(None, "abc")
        with pytest.raises(TypeError, match="Tap"):
            pa.tapped_provider(object())
        with pytest.raises(ValueError, match="max_ppl"):
            pa.retry_above(tap, max_ppl=-1)

    asyncio.run(main())
