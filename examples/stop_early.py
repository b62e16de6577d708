"""Stop a generation as soon as the model is lost, and count the tokens that were not paid for.

    python examples/stop_early.py --base-url http://127.0.0.1:8080/v1 --stop-above 12

`livepplx.stream` opens the stream with stream=True, logprobs=True and top_logprobs=5.
When the running perplexity exceeds the limit after an 8-token warm-up, the HTTP
response is closed: the server stops generating, and iteration ends without an error.
"""

from __future__ import annotations

import argparse
import os

import openai

import livepplx


def main(client: openai.OpenAI, model: str, prompt: str, stop_above: float, max_tokens: int = 400) -> dict:
    with livepplx.stream(client, model=model, messages=[{"role": "user", "content": prompt}],
                         max_tokens=max_tokens, stop_above=stop_above, min_tokens=8) as s:
        for chunk in s:
            for choice in chunk.choices:
                print(choice.delta.content or "", end="", flush=True)
    if s.stopped:
        print(f"\n\nstopped at token {s.stopped.at_token} ({s.stopped.reason}): "
              f"perplexity {s.ppl:.1f}; at most {max_tokens - s.tokens} tokens never generated")
    else:
        print(f"\n\nfinished: {s.tokens} tokens, perplexity {s.ppl:.2f}")
    return s.summary()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("prompt", nargs="?", default="Write the lyrics of a song nobody has heard of.")
    parser.add_argument("--base-url", default=os.environ.get("OPENAI_BASE_URL", "http://127.0.0.1:8080/v1"))
    parser.add_argument("--model", default="gemma-3-270m")
    parser.add_argument("--stop-above", type=float, default=12.0)
    args = parser.parse_args()
    client = openai.OpenAI(base_url=args.base_url, api_key=os.environ.get("OPENAI_API_KEY", "sk-no-key"))
    main(client, args.model, args.prompt, args.stop_above)
