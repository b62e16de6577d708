"""Measure CAR on a real model: short-only, long-only, and CAR routing, on checkable questions.

    python examples/car_eval.py --base-url http://127.0.0.1:8080/v1 [--out car_eval.json] [--rows rows.jsonl]

Gemma 3 270M as shipped on PyPI is a base model: it does not follow chat turns, so the
questions go to /v1/completions with few-shot prompts, a direct one for the short answer
and a step-by-step one for the long answer.

For every question of examples/car_questions.jsonl it streams a short direct answer and a
long reasoned one (temperature 0) and checks each against the accepted answers. Each short
answer's perplexity is kept twice: final (``ppl``) and running at the warm-up length
(``ppl_at_warmup``, None when the answer is shorter), the value the live early rule looks at
first. Then: the AUROC of each for telling wrong answers from right ones; CAR's decision with
a calibration fitted on the *other* half of the questions (2-fold cross-fitting, so no question
decides its own rule), from the answers already read, by the paper's Bayes rule and by the
one-sided rule; and the live router (early escalation on) run for real, once with the
calibration of final perplexities for the early rule (what CAR fits) and once with a second
calibration fitted on ``ppl_at_warmup`` (``early_calibration``).

A live short answer is counted as cut (``short_cut``) by the library's rule; ``cut_short``
checks it against the first pass: cut answers that had more tokens to come.
``--rows`` writes the labelled rows as JSON lines, for
``livepplx calibrate rows.jsonl --score ppl_at_warmup --label short_correct``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import re
import time
from pathlib import Path
from typing import Any

import openai

from livepplx.decide.calibrate import CalibrationError, CarCalibration, auroc
from livepplx.decide.car import CarRouter
from livepplx.core.stats import ChoiceStats
from livepplx.core.triggers import Trigger

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


def finite(x: float | None) -> float | None:
    """A perplexity for the JSON report: None where there is none (JSON has no NaN)."""
    return x if x is not None and math.isfinite(x) else None


def fit_folds(folds: list[list[dict[str, Any]]], score: str, report: dict[str, Any]) -> list[CarCalibration] | None:
    """2-fold cross-fitting: fold k is routed by a calibration fitted on the other fold."""
    calibrations = []
    for k in (0, 1):
        train = folds[1 - k]
        try:
            calibrations.append(CarCalibration.fit([r[score] for r in train], [r["short_correct"] for r in train]))
        except CalibrationError as e:
            report[f"car_error_{score}"] = str(e)
            return None
    return calibrations


def main(client: openai.OpenAI, model: str, out: str | None = None, limit: int | None = None, warmup: int = 2,
         rows_out: str | None = None) -> dict[str, Any]:
    items = [json.loads(line) for line in QUESTIONS.read_text().splitlines() if line.strip()][:limit]
    options: dict[str, Any] = dict(
        endpoint="completions", short_prompt=SHORT_PROMPT, long_prompt=LONG_PROMPT, short_max_tokens=16,
        long_max_tokens=160, short_params={"temperature": 0, "stop": ["\n"]},
        long_params={"temperature": 0, "stop": ["\nQ:"]})
    reader = CarRouter(client, model, threshold=1e9, early=False, **options)  # reads, never escalates
    plan = reader.plan
    rows = []
    t0 = time.monotonic()
    for i, item in enumerate(items):
        messages = [{"role": "user", "content": item["question"]}]
        at_warmup: list[float] = []

        def record(s: ChoiceStats, at_warmup: list[float] = at_warmup) -> bool:
            # Never fires: it notes the running PPL at the warm-up length.
            if s.tokens == warmup:
                at_warmup.append(s.ppl)
            return False

        request = plan.short_request(messages)
        request["triggers"] = [*request["triggers"], Trigger(record, name="ppl at warm-up")]
        short = reader.answer(request)
        long = reader.answer(plan.long_request(messages))
        rows.append({"question": item["question"], "ppl": short.ppl,
                     "ppl_at_warmup": finite(at_warmup[0]) if at_warmup else None,
                     "short": short.text, "short_tokens": short.tokens,
                     "short_correct": correct(short.text, item["answers"]), "long": long.text,
                     "long_tokens": long.tokens, "long_tokens_from": long.tokens_from,
                     "long_correct": correct(long.text, item["answers"])})
        print(f"{i + 1:2d}/{len(items)} ppl {short.ppl or math.nan:6.2f} short {'✓' if rows[-1]['short_correct'] else '✗'} "
              f"long {'✓' if rows[-1]['long_correct'] else '✗'}  {item['question']}")
    n = len(rows)
    report: dict[str, Any] = {
        "model": model, "questions": n, "warmup": warmup, "seconds": round(time.monotonic() - t0, 1),
        "short_only": {"accuracy": sum(r["short_correct"] for r in rows) / n,
                       "tokens": sum(r["short_tokens"] for r in rows)},
        "long_only": {"accuracy": sum(r["long_correct"] for r in rows) / n,
                      "tokens": sum(r["long_tokens"] for r in rows),
                      "tokens_from": sorted({r["long_tokens_from"] for r in rows})},
    }
    for score in ("ppl", "ppl_at_warmup"):
        try:
            report[f"auroc_short_{score}"] = auroc([r[score] for r in rows], [not r["short_correct"] for r in rows])
        except CalibrationError as e:
            report[f"auroc_short_{score}"] = f"undefined: {e}"

    folds = [rows[0::2], rows[1::2]]
    final = fit_folds(folds, "ppl", report)
    early = fit_folds(folds, "ppl_at_warmup", report)
    if final:
        for name, rule in (("car_after_short", "bayes"), ("car_after_short_one_sided", "upper")):
            acc = tokens = escalated = 0
            for k in (0, 1):
                cal = dataclasses.replace(final[k], rule=rule)
                for r in folds[k]:
                    esc = cal.escalate(math.nan if r["ppl"] is None else r["ppl"])
                    escalated += esc
                    acc += r["long_correct"] if esc else r["short_correct"]
                    tokens += r["short_tokens"] + (r["long_tokens"] if esc else 0)
            report[name] = {"accuracy": acc / n, "tokens": tokens, "escalated": escalated}
        runs = [("car_live_early", final)] + ([("car_live_early_warmup_calibrated", early)] if early else [])
        for name, early_calibrations in runs:
            acc = tokens = escalated = cut = stopped = cut_short = 0
            for k in (0, 1):
                router = CarRouter(client, model, calibration=final[k], early_calibration=early_calibrations[k],
                                   early=True, warmup=warmup, **options)
                for r in folds[k]:
                    item = next(i for i in items if i["question"] == r["question"])
                    result = router([{"role": "user", "content": r["question"]}])
                    escalated += result.decision == "long"
                    stopped += result.short.stopped
                    cut += result.short_cut
                    cut_short += result.short_cut and result.short.tokens < r["short_tokens"]
                    acc += correct(result.answer, item["answers"])
                    tokens += result.tokens
            report[name] = {"accuracy": acc / n, "tokens": tokens, "escalated": escalated, "stopped": stopped,
                            "short_cut": cut, "cut_short": cut_short}
        report["calibrations"] = [json.loads(c.to_json()) for c in final]
        if early:
            report["calibrations_ppl_at_warmup"] = [json.loads(c.to_json()) for c in early]
    report["rows"] = rows
    print(json.dumps({k: v for k, v in report.items() if k != "rows"}, indent=2))
    if out:
        Path(out).write_text(json.dumps(report, indent=2) + "\n")
    if rows_out:
        Path(rows_out).write_text("".join(json.dumps({k: r[k] for k in ("ppl", "ppl_at_warmup", "short_correct")})
                                          + "\n" for r in rows))
    return report


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base-url", default=os.environ.get("OPENAI_BASE_URL", "http://127.0.0.1:8080/v1"))
    parser.add_argument("--model", default="gemma-3-270m")
    parser.add_argument("--out", help="write the full report (every answer) as JSON")
    parser.add_argument("--limit", type=int, help="only the first N questions")
    parser.add_argument("--warmup", type=int, default=2, help="tokens before the live rule may cut (default 2)")
    parser.add_argument("--rows", help="write the labelled rows as JSON lines (for livepplx calibrate)")
    args = parser.parse_args()
    client = openai.OpenAI(base_url=args.base_url, api_key=os.environ.get("OPENAI_API_KEY", "sk-no-key"), timeout=600)
    main(client, args.model, args.out, args.limit, args.warmup, args.rows)
