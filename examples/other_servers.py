"""The exact streaming request each server needs for logprobs, and livepplx over it.

    python examples/other_servers.py vllm    --base-url http://127.0.0.1:8000
    python examples/other_servers.py sglang  --base-url http://127.0.0.1:30000
    python examples/other_servers.py ollama  --base-url http://127.0.0.1:11434
    python examples/other_servers.py tgi     --base-url http://127.0.0.1:8080

vLLM, SGLang, Ollama and TGI need a GPU or a model download, so they cannot run where
livepplx is tested; their wire formats are covered by fixtures in tests/test_formats.py and
tests/test_examples.py serves those shapes to these functions.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import httpx
import openai

import livepplx

QUESTION = "Name three moons of Jupiter."


def vllm(base_url: str, model: str, http: httpx.Client | None = None) -> livepplx.MonitoredStream:
    """vLLM's OpenAI server. top_logprobs must be a number: an explicit null returns no logprobs.
    Several tokens may share a chunk, -9999.0 marks a value outside the top 20, and reasoning
    models (--reasoning-parser) attach logprobs to reasoning deltas too: livepplx counts them all."""
    client = openai.OpenAI(base_url=f"{base_url}/v1", api_key="EMPTY", http_client=http)
    return livepplx.stream(client, model=model, messages=[{"role": "user", "content": QUESTION}], max_tokens=64,
                           top_logprobs=5)  # adds stream=True, logprobs=True, stream_options.include_usage


def sglang(base_url: str, model: str, http: httpx.Client | None = None) -> livepplx.MonitoredStream:
    """SGLang's OpenAI-compatible server: the same request as OpenAI's."""
    client = openai.OpenAI(base_url=f"{base_url}/v1", api_key="EMPTY", http_client=http)
    return livepplx.stream(client, model=model, messages=[{"role": "user", "content": QUESTION}], max_tokens=64)


def ollama(base_url: str, model: str, http: httpx.Client | None = None) -> livepplx.MonitoredStream:
    """Ollama's native /api/chat: NDJSON, one object a line, a `logprobs` list beside each message
    (Ollama 0.12.11 and later). Its /v1 endpoint takes the OpenAI request instead."""
    http = http or httpx.Client(timeout=600)
    request = {"model": model, "messages": [{"role": "user", "content": QUESTION}], "stream": True,
               "logprobs": True, "top_logprobs": 5, "options": {"num_predict": 64}}
    response = http.send(http.build_request("POST", f"{base_url}/api/chat", json=request), stream=True)
    response.raise_for_status()
    return livepplx.monitor(response)  # reads the raw NDJSON bytes; closing closes the response


def tgi(base_url: str, model: str, http: httpx.Client | None = None) -> livepplx.MonitoredStream:
    """Text Generation Inference's native /generate_stream: `data:{json}` events (no space, no [DONE]),
    the sampled token's logprob always there, alternatives only with top_n_tokens."""
    http = http or httpx.Client(timeout=600)
    request = {"inputs": QUESTION, "parameters": {"max_new_tokens": 64, "top_n_tokens": 5, "details": True}}
    response = http.send(http.build_request("POST", f"{base_url}/generate_stream", json=request), stream=True)
    response.raise_for_status()
    return livepplx.monitor(response)


SERVERS = {"vllm": vllm, "sglang": sglang, "ollama": ollama, "tgi": tgi}


def main(server: str, base_url: str, model: str, http: Any = None) -> dict[str, Any]:
    with SERVERS[server](base_url, model, http) as m:
        for _ in m:
            pass
    print(f"{server}: {m.state.format}, {m.tokens} tokens, perplexity {m.ppl:.2f}: {m.text()[:80]!r}")
    return m.summary()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("server", choices=SERVERS)
    parser.add_argument("--base-url", required=True, help="the server's root URL, without /v1")
    parser.add_argument("--model", default="default")
    args = parser.parse_args()
    sys.exit(0 if main(args.server, args.base_url.rstrip("/"), args.model)["tokens"] else 1)
