"""CAR routing against any OpenAI-compatible endpoint: answer short, escalate when unsure.

    python examples/car_routing.py --base-url http://127.0.0.1:8080/v1 --calibration car.json "What is 17 * 23?"
    python examples/car_routing.py --base-url http://127.0.0.1:8080/v1 --threshold 2.5 "What is 17 * 23?"

Without a calibration file (see car_calibrate.py) a plain perplexity threshold decides.
With early escalation (the default) the short answer is cut as soon as its running
perplexity crosses the rule, and the long request starts at once.
"""

from __future__ import annotations

import argparse
import os

import openai

from livepplx.decide.calibrate import CarCalibration
from livepplx.decide.car import CarResult, CarRouter


def main(client: openai.OpenAI, model: str, questions: list[str], calibration: CarCalibration | None = None,
         threshold: float | None = None, endpoint: str = "chat") -> list[CarResult]:
    rule = {"calibration": calibration} if calibration is not None else {"threshold": threshold or 2.5}
    router = CarRouter(client, model, endpoint=endpoint, warmup=4, long_max_tokens=256, **rule)
    results = []
    for question in questions:
        result = router(question)
        results.append(result)
        p = f", P(correct) {result.p_correct:.2f}" if result.p_correct is not None else ""
        print(f"Q: {question}\n  {result.decision} answer ({result.reason}{p}; {result.tokens} tokens"
              f"{', short answer cut' if result.short_cut else ''}):\n  {result.answer.strip()[:300]}\n")
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("questions", nargs="*", default=["What is the capital of Peru?", "What is 17 * 23?"])
    parser.add_argument("--base-url", default=os.environ.get("OPENAI_BASE_URL", "http://127.0.0.1:8080/v1"))
    parser.add_argument("--model", default="gemma-3-270m")
    parser.add_argument("--calibration", help="a CarCalibration JSON file")
    parser.add_argument("--threshold", type=float, help="escalate above this perplexity (without a calibration)")
    parser.add_argument("--completions", action="store_true", help="use /v1/completions (base models)")
    args = parser.parse_args()
    client = openai.OpenAI(base_url=args.base_url, api_key=os.environ.get("OPENAI_API_KEY", "sk-no-key"))
    cal = CarCalibration.load(args.calibration) if args.calibration else None
    main(client, args.model, args.questions, cal, args.threshold, "completions" if args.completions else "chat")
