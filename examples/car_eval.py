"""Measure CAR on a real model: short-only, long-only, and CAR routing, on checkable questions.

    python examples/car_eval.py --base-url http://127.0.0.1:8080/v1 [--out car_eval.json]

Gemma 3 270M as shipped on PyPI is a base model: it does not follow chat turns, so the
questions go to /v1/completions with few-shot prompts, a direct one for the short answer
and a step-by-step one for the long answer.

For every question of examples/car_questions.jsonl it streams a short direct answer and a
long reasoned one (temperature 0) and checks each against the accepted answers. Then:
the AUROC of the short answer's perplexity for telling wrong answers from right ones;
CAR's decision with a calibration fitted on the *other* half of the questions (2-fold
cross-fitting, so no question decides its own rule), from the answers already read;
and the live router (early escalation on) run for real with the same calibrations.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import time
from pathlib import Path
from typing import Any

import openai

from livepplx import stream
from livepplx.calibrate import CalibrationError, CarCalibration, auroc
from livepplx.car import CarPlan, CarRouter

QUESTIONS = Path(__file__).with_name("car_questions.jsonl")
SHORT_PROMPT = (
    "Answer each question with a single word or number.\n"
    "Q: What is the capital of Sweden?\nA: Stockholm\n"
    "Q: What is 3 + 4?\nA: 7\n"
    "Q: Who painted the Mona Lisa?\nA: Leonardo da Vinci\n"
    "Q: How many sides does a triangle have?\nA: 3\n"
    "Q: {question}\nA:"
)
LONG_PROMPT = (
    "Q: What is 3 + 4?\nA: Let's think step by step. 3 plus 4 is 7. The answer is 7.\n"
    "Q: What is the capital of Sweden?\nA: Let's think step by step. Sweden is a country in northern Europe. "
    "Its capital city is Stockholm. The answer is Stockholm.\n"
    "Q: How many sides does a triangle have?\nA: Let's think step by step. A triangle is a shape with three "
    "corners joined by three straight sides. The answer is 3.\n"
    "Q: {question}\nA: Let's think step by step."
)


def correct(text: str, answers: list[str]) -> bool:
    """Whether the final answer names an accepted answer (after "The answer is", if it is said)."""
    text = text.lower()
    if "the answer is" in text:
        text = text.rsplit("the answer is", 1)[1]
    return any(re.search(rf"(?<![\w.]){re.escape(a)}(?![\w])", text) for a in answers)


def streamed(client: openai.OpenAI, request: dict[str, Any]) -> tuple[str, int, float]:
    with stream(client, **request) as s:
        for _ in s:
            pass
    return s.text(), s.tokens, s.ppl


def main(client: openai.OpenAI, model: str, out: str | None = None, limit: int | None = None) -> dict[str, Any]:
    items = [json.loads(line) for line in QUESTIONS.read_text().splitlines() if line.strip()][:limit]
    options: dict[str, Any] = dict(
        endpoint="completions", short_prompt=SHORT_PROMPT, long_prompt=LONG_PROMPT, short_max_tokens=16,
        long_max_tokens=160, short_params={"temperature": 0, "stop": ["\n"]},
        long_params={"temperature": 0, "stop": ["\nQ:"]})
    plan = CarPlan(model, threshold=1e9, early=False, **options)
    rows = []
    t0 = time.monotonic()
    for i, item in enumerate(items):
        messages = [{"role": "user", "content": item["question"]}]
        short_text, short_tokens, ppl = streamed(client, plan.short_request(messages))
        long_text, long_tokens, _ = streamed(client, plan.long_request(messages))
        rows.append({"question": item["question"], "ppl": ppl, "short": short_text, "short_tokens": short_tokens,
                     "short_correct": correct(short_text, item["answers"]), "long": long_text,
                     "long_tokens": long_tokens, "long_correct": correct(long_text, item["answers"])})
        print(f"{i + 1:2d}/{len(items)} ppl {ppl:6.2f} short {'✓' if rows[-1]['short_correct'] else '✗'} "
              f"long {'✓' if rows[-1]['long_correct'] else '✗'}  {item['question']}")
    n = len(rows)
    report: dict[str, Any] = {
        "model": model, "questions": n, "seconds": round(time.monotonic() - t0, 1),
        "short_only": {"accuracy": sum(r["short_correct"] for r in rows) / n,
                       "tokens": sum(r["short_tokens"] for r in rows)},
        "long_only": {"accuracy": sum(r["long_correct"] for r in rows) / n,
                      "tokens": sum(r["long_tokens"] for r in rows)},
    }
    try:
        report["auroc_short_ppl"] = auroc([r["ppl"] for r in rows], [not r["short_correct"] for r in rows])
    except CalibrationError as e:
        report["auroc_short_ppl"] = f"undefined: {e}"

    # 2-fold cross-fitting: each half is routed by a calibration fitted on the other half.
    folds = [rows[0::2], rows[1::2]]
    calibrations = []
    for k in (0, 1):
        train = folds[1 - k]
        try:
            calibrations.append(CarCalibration.fit([r["ppl"] for r in train], [r["short_correct"] for r in train]))
        except CalibrationError as e:
            report["car_error"] = str(e)
            calibrations.append(None)
    if all(calibrations):
        acc = tokens = escalated = 0
        for k in (0, 1):
            for r in folds[k]:
                esc = calibrations[k].escalate(r["ppl"])  # type: ignore[union-attr]
                escalated += esc
                acc += r["long_correct"] if esc else r["short_correct"]
                tokens += r["short_tokens"] + (r["long_tokens"] if esc else 0)
        report["car_after_short"] = {"accuracy": acc / n, "tokens": tokens, "escalated": escalated}
        acc = tokens = escalated = cut = 0
        for k in (0, 1):
            router = CarRouter(client, model, calibration=calibrations[k], early=True, warmup=2, **options)
            for r in folds[k]:
                item = next(i for i in items if i["question"] == r["question"])
                result = router([{"role": "user", "content": r["question"]}])
                escalated += result.decision == "long"
                cut += result.short_cut
                acc += correct(result.answer, item["answers"])
                tokens += result.tokens
        report["car_live_early"] = {"accuracy": acc / n, "tokens": tokens, "escalated": escalated, "short_cut": cut}
        report["calibrations"] = [json.loads(c.to_json()) for c in calibrations if c]
    report["rows"] = rows
    print(json.dumps({k: v for k, v in report.items() if k != "rows"}, indent=2))
    if out:
        Path(out).write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base-url", default=os.environ.get("OPENAI_BASE_URL", "http://127.0.0.1:8080/v1"))
    parser.add_argument("--model", default="gemma-3-270m")
    parser.add_argument("--out", help="write the full report (every answer) as JSON")
    parser.add_argument("--limit", type=int, help="only the first N questions")
    args = parser.parse_args()
    client = openai.OpenAI(base_url=args.base_url, api_key=os.environ.get("OPENAI_API_KEY", "sk-no-key"), timeout=600)
    main(client, args.model, args.out, args.limit)
