"""Wrap an OpenAI chat stream and watch its perplexity token by token.

    python examples/wrap_openai_stream.py --base-url http://127.0.0.1:8080/v1 "Why is the sky blue?"

Works against any OpenAI-compatible server (OpenAI, vLLM, llama.cpp, Ollama /v1, TGI /v1, SGLang).
"""

from __future__ import annotations

import argparse
import os

import openai

import livepplx


def main(client: openai.OpenAI, model: str, prompt: str) -> dict:
    stream = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": prompt}],
        max_tokens=60,
        stream=True,
        logprobs=True,
        top_logprobs=5,  # llama-cpp-python sends no logprobs without it
    )
    with livepplx.monitor(stream) as m:
        for chunk in m:  # the very same chunks the SDK yields
            for choice in chunk.choices:
                if choice.delta.content:
                    print(choice.delta.content, end="", flush=True)
    print(f"\n\n{m.tokens} tokens, perplexity {m.ppl:.2f}, lowest token probability {m.choice(0).min_prob:.3f}")
    return m.summary()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("prompt", nargs="?", default="Name the colors of the rainbow.")
    parser.add_argument("--base-url", default=os.environ.get("OPENAI_BASE_URL", "http://127.0.0.1:8080/v1"))
    parser.add_argument("--model", default="gemma-3-270m")
    args = parser.parse_args()
    main(openai.OpenAI(base_url=args.base_url, api_key=os.environ.get("OPENAI_API_KEY", "sk-no-key")), args.model, args.prompt)
