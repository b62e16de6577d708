"""An agent that uses the CAR router as a tool: cheap answers when the model is sure,
reasoning when it is not, and a log of every decision.

    python examples/car_agent_tool.py --base-url http://127.0.0.1:8080/v1

The agent here is a plain loop over tool calls (as an LLM planner would emit them); the
`ask` tool is the router, so every sub-question costs a short answer and, only when its
perplexity says the model is unsure, a long one.
"""

from __future__ import annotations

import argparse
import os
from typing import Any, Callable

import openai

from livepplx.decide.car import CarResult, CarRouter


class Agent:
    def __init__(self, tools: dict[str, Callable[..., Any]]) -> None:
        self.tools = tools
        self.decisions: list[CarResult] = []

    def run(self, plan: list[tuple[str, dict[str, Any]]]) -> list[Any]:
        return [self.tools[name](**arguments) for name, arguments in plan]


def main(client: openai.OpenAI, model: str, threshold: float = 2.5) -> Agent:
    agent = Agent({})
    router = CarRouter(client, model, threshold=threshold, warmup=4, long_max_tokens=256,
                       on_decision=agent.decisions.append)  # the decision callback: an audit log
    agent.tools["ask"] = lambda question: router(question).answer.strip()
    answers = agent.run([("ask", {"question": "What is the capital of Peru?"}),
                         ("ask", {"question": "What is the population of Lima, roughly?"})])
    for result, answer in zip(agent.decisions, answers):
        print(f"[{result.decision:5s} {result.tokens:3d} tokens] {result.reason}\n    -> {answer[:200]}")
    spent = sum(r.tokens for r in agent.decisions)
    print(f"{len(agent.decisions)} tool calls, {spent} tokens, {sum(r.decision == 'long' for r in agent.decisions)} escalated")
    return agent


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base-url", default=os.environ.get("OPENAI_BASE_URL", "http://127.0.0.1:8080/v1"))
    parser.add_argument("--model", default="gemma-3-270m")
    parser.add_argument("--threshold", type=float, default=2.5)
    args = parser.parse_args()
    client = openai.OpenAI(base_url=args.base_url, api_key=os.environ.get("OPENAI_API_KEY", "sk-no-key"))
    main(client, args.model, args.threshold)
