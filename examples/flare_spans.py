"""FLARE-style: mark the spans where the model was unsure, while the answer streams.

    python examples/flare_spans.py --base-url http://127.0.0.1:8080/v1 --theta 0.4

FLARE (arXiv 2305.06983) retrieves and regenerates a sentence when any of its tokens
has probability below a threshold θ. Here two triggers mark each run of such tokens:
one fires when the probability drops below θ, its negation when it comes back. A
retrieval step would take the marked sentences as its queries.
"""

from __future__ import annotations

import argparse
import os

import openai

import livepplx
from livepplx import Trigger, prob_below


def main(client: openai.OpenAI, model: str, prompt: str, theta: float = 0.4) -> list[tuple[int, int]]:
    spans: list[list[int]] = []

    def unsure(event: livepplx.TriggerEvent) -> None:  # the first token of a low-probability run
        spans.append([len(event.text) - len(event.token), len(event.text)])

    def sure_again(event: livepplx.TriggerEvent) -> None:  # the first token after the run
        if spans and spans[-1][1] < len(event.text) - len(event.token):
            spans[-1][1] = len(event.text) - len(event.token)

    triggers = [Trigger(prob_below(theta), call=unsure), Trigger(~prob_below(theta), call=sure_again)]
    with livepplx.stream(client, model=model, messages=[{"role": "user", "content": prompt}],
                         max_tokens=80, triggers=triggers, text_limit=None) as s:
        for _ in s:
            pass
    text = s.text()
    marked, last = [], 0
    for start, end in spans:
        marked += [text[last:start], "[[", text[start:end], "]]"]
        last = end
    print("".join(marked + [text[last:]]))
    print(f"\n{len(spans)} low-confidence spans (p < {theta}) in {s.tokens} tokens")
    return [(a, b) for a, b in spans]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("prompt", nargs="?", default="Who was the first person to climb Mount Everest, and when?")
    parser.add_argument("--base-url", default=os.environ.get("OPENAI_BASE_URL", "http://127.0.0.1:8080/v1"))
    parser.add_argument("--model", default="gemma-3-270m")
    parser.add_argument("--theta", type=float, default=0.4)
    args = parser.parse_args()
    client = openai.OpenAI(base_url=args.base_url, api_key=os.environ.get("OPENAI_API_KEY", "sk-no-key"))
    main(client, args.model, args.prompt, args.theta)
