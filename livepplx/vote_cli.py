"""``livepplx vote``: DeepConf over an OpenAI-compatible endpoint, one line per trace, live.

    livepplx vote 'What is 17 * 23?' --base-url http://127.0.0.1:8080/v1 --model m --traces 16 --warmup 8
    livepplx vote "$(cat prompt.txt)" --completions --group-window 16 --stop $'\\n' --json

The warm-up traces run in full and set the threshold; the others are stopped (their
connection closed) as soon as their group confidence drops below it; the answer is the
confidence-weighted majority (:mod:`livepplx.decide.deepconf`). ``--json`` prints one object: the
answer, each candidate's weight, and every trace (tokens, confidence, answer, stopped).
A vote in which no trace could vote is a result (``answer`` null, and why), exit 0.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from typing import Any, Callable

from .cli import (DEFAULT_TIMEOUT, MAX_TIMEOUT, MAX_TOKENS, MAX_TOP_LOGPROBS, _answered, _endpoint_arguments, _Fail,
                  _number, _openai_client)
from .decide.deepconf import EXTRACTORS, ETA_NAMES, DeepConfRun, DeepConfVoter, TraceRow, VoteResult
from .core.errors import LivepplxError
from .views.textsafe import safe_line

__all__ = ["add_parser"]

_STYLES = {"queued": "dim", "running": "cyan", "done": "green", "pruned": "red", "failed": "yellow",
           "cancelled": "yellow"}


def _eta(text: str) -> float:
    if text in ETA_NAMES:
        return ETA_NAMES[text]
    value: float = _number(float, 0, 100)(text)
    if not 0 < value < 100:
        raise argparse.ArgumentTypeError(f"must be low, high, or a percentage above 0 and below 100, got {text!r}")
    return value


def add_parser(sub: Any, make: Callable[..., argparse.ArgumentParser]) -> None:
    """Register ``vote`` on the command line's subparsers (``make`` is cli's ``_sub``)."""
    p = make(sub, "vote", "DeepConf: sample several answers in parallel, stop the unsure ones live, "
             "and vote weighted by confidence",
             "  livepplx vote 'What is 17 * 23? Put the answer in \\boxed{}.' --base-url http://127.0.0.1:8080/v1 "
             "--model m\n"
             "  livepplx vote \"$(cat fewshot.txt)\" --completions --group-window 16 --max-tokens 64 --stop $'\\n\\n' "
             "--json\n  livepplx vote 'Capital of Peru?' --model gpt-4o-mini --answer line --eta high --consensus 0.95")
    _endpoint_arguments(p)
    p.add_argument("--completions", action="store_true",
                   help="send PROMPT as a completion prompt (for base models), not as a chat message")
    p.add_argument("--traces", type=_number(int, 0, 100_000), default=16, metavar="K",
                   help="traces after the warm-up, each stopped live (default 16)")
    p.add_argument("--warmup", type=_number(int, 0, 100_000), default=8, metavar="W",
                   help="traces run in full to set the threshold (default 8; the paper: 16)")
    p.add_argument("--eta", type=_eta, default=10.0,
                   help="low (10: keep the top 10%% of the warm-up, the default), high (90), or a percentage")
    p.add_argument("--threshold", type=_number(float, -math.inf), metavar="S",
                   help="a fixed threshold instead of the warm-up's")
    p.add_argument("--group-window", type=_number(int, 1, 1 << 20), default=2048, metavar="TOKENS",
                   help="tokens per group (default 2048, the paper's; a trace shorter than one is never stopped: "
                        "lower it for short answers)")
    p.add_argument("--top-logprobs", type=_number(int, 1, MAX_TOP_LOGPROBS), default=MAX_TOP_LOGPROBS,
                   help=f"alternatives per token, the k of the confidence (default {MAX_TOP_LOGPROBS}, the paper's)")
    p.add_argument("--max-tokens", type=_number(int, 1, MAX_TOKENS), default=1024, help="per trace (default 1024)")
    p.add_argument("--concurrency", type=_number(int, 1, 1024), default=4,
                   help="requests at once (default 4; match the server's parallel slots, llama-server's -np)")
    p.add_argument("-n", type=_number(int, 1, 128), default=1, dest="n",
                   help="traces per request, where the server takes n (default 1; a close ends every choice of "
                        "a response, so one is closed only once all its choices are pruned or finished)")
    p.add_argument("--answer", choices=sorted(EXTRACTORS), default="auto",
                   help="how to read a trace's answer: auto (\\boxed{}, else the last number; default), number, "
                        "boxed, line (the last line)")
    p.add_argument("--vote-top", type=_number(float, 0, 100, above=True), metavar="PERCENT",
                   help="only the top PERCENT of the voting traces by confidence vote (default: all)")
    p.add_argument("--consensus", type=_number(float, 0, 1, above=True), metavar="TAU",
                   help="stop launching traces once one answer holds TAU of the weight (e.g. 0.95; default: off)")
    p.add_argument("--temperature", type=_number(float, 0), help="sampling temperature (default: the server's)")
    p.add_argument("--stop", action="append", metavar="TEXT", help="a stop sequence (repeat for more)")
    p.add_argument("--timeout", type=_number(float, 0, MAX_TIMEOUT, above=True), default=DEFAULT_TIMEOUT,
                   metavar="SECONDS", help=f"give up on a server silent for SECONDS (default {DEFAULT_TIMEOUT:g})")
    p.add_argument("--json", action="store_true", help="print one JSON object (no live view)")
    p.add_argument("--text", action="store_true", help="with --json: each trace's text too")
    p.set_defaults(run=run)


class _View:
    """One line per trace, read from the run's snapshot each time rich repaints (its own thread)."""

    def __init__(self) -> None:
        self.run: DeepConfRun | None = None

    def __rich__(self) -> Any:
        from rich.table import Table
        from rich.text import Text

        run = self.run
        table = Table(box=None, pad_edge=False, header_style="bold")
        for name, justify in (("#", "right"), ("phase", "left"), ("status", "left"), ("tokens", "right"),
                              ("group conf", "right"), ("lowest", "right"), ("answer", "left")):
            table.add_column(name, justify=justify)  # type: ignore[arg-type]
        if run is None:
            return table
        s = run.threshold
        table.title = Text(f"threshold s = {s:.3f} (eta {float(run.plan.eta):g})" if s is not None
                           else "warm-up: the threshold comes when it ends", style="bold")
        for row in run.rows():
            table.add_row(*_cells(row, s))
        return table


def _cells(row: TraceRow, s: float | None) -> list[Any]:
    from rich.text import Text

    def conf(x: float) -> Text:
        if not math.isfinite(x):
            return Text("-", style="dim")
        return Text(f"{x:.3f}", style="red" if s is not None and x < s else "")

    answer = Text(safe_line(row.answer, 32)) if row.answer is not None else Text("")
    return [str(row.index), row.phase, Text(row.status, style=_STYLES.get(row.status, "")), str(row.tokens),
            conf(row.group_confidence), conf(row.lowest), answer]


def _summary(result: VoteResult) -> list[str]:
    lines = [f"answer: {safe_line(result.answer, 200) if result.answer is not None else '(none)'}",
             f"  {safe_line(result.reason, 400)}"]
    total = sum(result.weights.values())
    for answer, weight in sorted(result.weights.items(), key=lambda kv: -kv[1])[:10]:
        share = f"{weight / total:6.1%}" if total > 0 else "     -"
        lines.append(f"  {weight:10.3f}  {share}  {safe_line(answer, 60)}")
    saved = result.tokens_saved
    lines.append(f"tokens: {result.tokens} spent" + (
        f", about {result.tokens_full} to run all {result.planned} traces in full: {saved} saved "
        f"({saved / result.tokens_full:.0%})" if saved is not None and result.tokens_full else ""))
    return lines


def run(args: argparse.Namespace) -> int:

    client = _openai_client(args)
    if args.warmup == 0 and args.threshold is None and args.traces:
        raise _Fail("--warmup 0 needs --threshold S (no warm-up, no threshold to learn)")
    params: dict[str, Any] = {}
    if args.temperature is not None:
        params["temperature"] = args.temperature
    if args.stop:
        params["stop"] = args.stop
    view = _View()
    voter = DeepConfVoter(
        client, args.model, endpoint="completions" if args.completions else "chat", warmup=args.warmup,
        traces=args.traces, eta=args.eta, threshold=args.threshold, group_window=args.group_window,
        top_logprobs=args.top_logprobs, max_tokens=args.max_tokens, concurrency=args.concurrency, n=args.n,
        answer=args.answer, vote_top=args.vote_top, consensus=args.consensus, params=params,
        on_start=lambda r: setattr(view, "run", r))
    try:
        with _answered(client, args.timeout):
            if args.json:
                result = voter(args.prompt)
            else:
                from rich.console import Console
                from rich.live import Live

                console = Console(stderr=not sys.stdout.isatty())  # the live lines stay off a redirected stdout
                with Live(view, console=console, refresh_per_second=8):
                    result = voter(args.prompt)
    except LivepplxError as e:
        raise _Fail(str(e)) from None
    if args.json:
        print(json.dumps(result.as_dict(text=args.text), ensure_ascii=False))
    else:
        print("\n".join(_summary(result)))
    return 0
