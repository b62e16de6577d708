"""The ``livepplx`` command line.

Exit codes: 0 done, 1 the stream or the request failed (one clear line on stderr),
2 usage errors, 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from typing import IO, Any, Sequence

from .errors import LivepplxError
from .recordings import RECORDINGS, recording_path
from .state import StreamState

__all__ = ["main"]

_READ_SIZE = 1 << 16


class _Fail(Exception):
    """An error to report as one line and exit 1."""


def _read_into(state: StreamState, source: IO[bytes]) -> None:
    # read1 returns what is there now, so `curl -N ... | livepplx replay -` stays live.
    read = getattr(source, "read1", source.read)
    while True:
        data = read(_READ_SIZE)
        if not data:
            break
        state.handle(data)
    state.finish()


def _open(path: str) -> IO[bytes]:
    if path == "-":
        return sys.stdin.buffer
    try:
        return open(path, "rb")
    except OSError as e:
        raise _Fail(f"cannot read {path}: {e.strerror or e}") from None


def _fmt(x: float | None, spec: str = ".3f") -> str:
    return "-" if x is None or (isinstance(x, float) and not math.isfinite(x)) else format(x, spec)


def _print_summary(summary: dict[str, Any], out: IO[str]) -> None:
    print(f"format: {summary['format'] or 'unknown'}", file=out)
    for c in summary["choices"]:
        print(
            f"choice {c['index']}: {c['tokens']} tokens  ppl {_fmt(c['ppl'])}  "
            f"window ppl {_fmt(c['window_ppl'])}  min p {_fmt(c['min_prob'], '.4f')}  "
            f"mean entropy {_fmt(c['entropy_mean'])}  censored {c['censored']}  skipped {c['skipped']}",
            file=out,
        )


def _report(state: StreamState, as_json: bool) -> int:
    """Print the outcome of a read stream; return the exit code."""
    failure = state.error
    if failure is None:
        try:
            state.check_logprobs()
        except LivepplxError as e:
            failure = str(e)
    summary = state.summary()
    if failure is not None:
        summary["error"] = failure
    if as_json:
        print(json.dumps(summary))
    else:
        _print_summary(summary, sys.stdout)
    if failure is not None:
        print(f"livepplx: error: {failure}", file=sys.stderr)
        return 1
    return 0


def _replay(args: argparse.Namespace) -> int:
    state = StreamState(window=args.window, on_missing_logprobs="ignore")
    source = _open(args.path)
    try:
        _read_into(state, source)
    except LivepplxError:
        pass  # the state recorded it; the statistics read so far are reported
    finally:
        if source is not sys.stdin.buffer:
            source.close()
    return _report(state, args.json)


def _demo(args: argparse.Namespace) -> int:
    code = 0
    for name in [args.name] if args.name else list(RECORDINGS):
        print(f"== {name}: {RECORDINGS[name]}")
        state = StreamState(window=args.window, on_missing_logprobs="ignore")
        with open(recording_path(name), "rb") as f:
            _read_into(state, f)
        code = max(code, _report(state, False))
    return code


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="livepplx",
        description="Watch an LLM answer stream and tell, token by token, how perplexed the model is.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  livepplx demo\n  livepplx replay answer.sse --json\n"
        "  curl -N URL -d '{...\"stream\": true, \"logprobs\": true, \"top_logprobs\": 5}' | livepplx replay -",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    replay = sub.add_parser(
        "replay",
        help="read a captured stream (SSE or NDJSON, any server's format) and report",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  livepplx replay answer.sse\n  livepplx replay answer.sse --json\n"
        "  curl -N ... | livepplx replay -",
    )
    replay.add_argument("path", metavar="PATH", help="the captured stream; - reads stdin")
    replay.add_argument("--json", action="store_true", help="print one JSON object with the statistics")
    replay.add_argument("--window", type=_positive_int, default=64, help="tokens in the windowed perplexity (default 64)")
    replay.set_defaults(run=_replay)

    demo = sub.add_parser(
        "demo",
        help="replay real recordings shipped in the package: no key, no network, no server",
        epilog="example:\n  livepplx demo llamacpp-python-chat",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    demo.add_argument("name", nargs="?", choices=list(RECORDINGS), help="one recording (default: all)")
    demo.add_argument("--window", type=_positive_int, default=64, help="tokens in the windowed perplexity (default 64)")
    demo.set_defaults(run=_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit code."""
    args = _parser().parse_args(argv)
    try:
        return int(args.run(args))
    except _Fail as e:
        print(f"livepplx: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
