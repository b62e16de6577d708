"""The ``livepplx`` command line: ``chat``, ``replay``, ``demo``, ``calibrate``.

Exit codes: 0 done; 1 the stream or the request failed (one clear line on stderr, and
the statistics read so far still printed); 2 usage errors (an option out of its range
too); 130 interrupted (the summary of what was read is still printed); 141 stdout was
closed before everything was written (``livepplx replay x.sse --json | head -c 1``: what a
shell reports for ``cat`` cut short by SIGPIPE; nothing is said on stderr).

Text from the model or the server (the answer, an error message, a model's name) reaches
the terminal by :mod:`livepplx.views.textsafe`'s rule: control characters and escape sequences
as visible data, never as commands; Rich markup shown as typed.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import functools
import json
import math
import os
import stat
import sys
import tempfile
import time
from typing import IO, Any, Callable, Iterable, Iterator, NoReturn, Sequence

from .core.errors import LivepplxError, NoLogprobsError
from .recordings import RECORDINGS, recording_path
from .core.sse import MAX_EVENT_BYTES
from .core.state import StreamState
from .views.textsafe import safe_line, safe_text

__all__ = ["main"]

_READ_SIZE = 1 << 16
#: Tokens per second of `livepplx demo`: slow enough to watch the gauge move.
DEMO_PACE = 12.0
#: ``--timeout``'s default: the longest a server may stay silent, before its first byte or
#: between two. The SDK's 600 s suits a whole answer sent at once; a stream that said nothing
#: for a minute has stalled (a long prompt on a slow local server: raise it).
DEFAULT_TIMEOUT = 60.0
#: The connect timeout is ``--timeout``, at most this: a reachable server accepts in
#: milliseconds, a TLS handshake through a proxy in a few seconds.
MAX_CONNECT_TIMEOUT = 10.0
#: The exit code when stdout's reader went away (128 + SIGPIPE).
EXIT_BROKEN_PIPE = 141


class _Fail(Exception):
    """An error to report as one line and exit 1; ``after``: lines to say after it."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.after: list[str] = []


# -- sources of raw stream bytes ------------------------------------------------------------


def _reads(source: IO[bytes]) -> Iterator[bytes]:
    # read1 returns what is there now, so `curl -N ... | livepplx replay -` stays live.
    read = getattr(source, "read1", source.read)
    while True:
        data = read(_READ_SIZE)
        if not data:
            return
        yield data


def _open(path: str) -> IO[bytes]:
    if path == "-":
        return sys.stdin.buffer
    try:
        return open(path, "rb")
    except OSError as e:
        raise _Fail(f"cannot read {path}: {e.strerror or e}") from None


def _create(path: str) -> IO[bytes]:
    try:
        return open(path, "wb")
    except OSError as e:
        raise _Fail(f"cannot write {path}: {e.strerror or e}") from None


class _Recording:
    """``--record FILE``: the raw bytes go to a temporary file beside FILE, renamed into
    place only when the answer was read to its end; otherwise the temporary file is
    removed and FILE, if there was one, is left as it was. Never a truncated recording."""

    def __init__(self, path: str, end: bytes = b"", noun: str = "recording") -> None:
        self.path = path
        self.end = end  # written before the rename (the [DONE] of a stream made up here)
        self.noun = noun  # what the lines about it call it: the same atomic write saves --html and --plot
        # A symlink is written through, as open() would: the file it points to is replaced.
        self.target = target = os.path.realpath(path)
        folder = os.path.dirname(target)
        # What open(path, "wb") would refuse is refused now, not after the request.
        if os.path.isdir(target) or (os.path.exists(target) and not os.access(target, os.W_OK)):
            raise _Fail(f"cannot write {path}: {'Is a directory' if os.path.isdir(target) else 'Permission denied'}")
        self.settled = False
        self.temp: str | None = None
        try:
            if _not_a_file(path):
                # A device or a pipe (/dev/null, /dev/stdout, a FIFO) is written directly:
                # there is no file to put in place, and renaming over it would destroy it.
                # Opened by its own name: /dev/stdout's realpath names no file when it is a pipe.
                self.file = open(path, "wb")  # noqa: SIM115 - closed by keep() or drop()
                return
            fd, self.temp = tempfile.mkstemp(prefix=f".{os.path.basename(target)}.", suffix=".part", dir=folder)
        except OSError as e:
            raise _Fail(f"cannot write {path}: {e.strerror or e}") from None
        self.file = os.fdopen(fd, "wb")

    def write(self, data: bytes) -> None:
        try:
            self.file.write(data)
        except OSError as e:
            raise _Fail(f"cannot write {self.path}: {e.strerror or e}") from None

    def keep(self) -> None:
        """Rename the recording into place; say so when it replaces a file."""
        self.settled = True
        replaced = self.temp is not None and os.path.lexists(self.target)
        try:
            self.file.write(self.end)
            self.file.close()
            if self.temp is not None:
                os.chmod(self.temp, _new_file_mode(self.target))  # mkstemp's 0600, made what open() would give
                os.replace(self.temp, self.target)
        except OSError as e:
            self._remove()
            raise _Fail(f"cannot write {self.path}: {e.strerror or e}") from None
        if replaced:
            _say(f"replaced {self.path} with the new {self.noun}")

    def drop(self, why: str) -> str:
        """Remove the temporary file; return the line that says so."""
        self.settled = True
        self._remove()
        if self.temp is None:  # written directly: what was written stays written
            return f"the {self.noun} is incomplete ({why}): {self.path} got what was read"
        kept = "is unchanged" if os.path.lexists(self.target) else "was not created"
        return f"the {self.noun} was not saved ({why}): {self.path} {kept}"

    def _remove(self) -> None:
        with contextlib.suppress(OSError):
            self.file.close()
        if self.temp is not None:
            with contextlib.suppress(OSError):
                os.unlink(self.temp)


def _not_a_file(path: str) -> bool:
    """True when ``path`` (through symlinks) exists and is a device, pipe or socket."""
    try:
        return not stat.S_ISREG(os.stat(path).st_mode) and not os.path.isdir(path)
    except OSError:
        return False


def _new_file_mode(path: str) -> int:
    """The mode ``open(path, "w")`` would leave: the old file's, or 0666 less the umask."""
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


@contextlib.contextmanager
def _recorded(path: str | None, run: _Run, end: bytes = b"") -> Iterator[_Recording | None]:
    """The recording of one run, settled when the block ends: kept if the run read the
    answer to its end, else removed with one line on stderr."""
    if path is None:
        yield None
        return
    recording = _Recording(path, end)
    try:
        yield recording
    except _Fail as e:
        if not recording.settled:  # said after the error line
            e.after.append(recording.drop("the request failed"))
        raise
    finally:
        # Also when stdout broke after the answer was read: the recording does not need stdout.
        if not recording.settled:
            unfinished = run.unfinished()
            if unfinished is None:
                recording.keep()
            else:
                _say(recording.drop(unfinished))


class _Page:
    """``--html FILE``: the answer's heatmap page (:mod:`livepplx.views.heatmap`), fed the chunks the
    state is fed, written whole or not at all (the atomic write of ``--record``). An unwritable
    FILE is refused before the stream is read (a trial file made and removed beside it)."""

    def __init__(self, path: str, state: StreamState, source: str | None = None) -> None:
        from .views import heatmap

        self.path = path
        if source is not None and source != "-" and _same_file(path, source):
            # The page is written after the stream is read: it would replace the stream it shows.
            raise _Fail(f"cannot write {path}: it is the stream being read (the page would replace it); "
                        "name another file")
        if not _not_a_file(path):  # a FIFO's open would wait for its reader, and a trial would end its input
            _Recording(path, noun="page").drop("a trial")  # raises _Fail (one line, exit 1) if it cannot be written
        self.recorder = heatmap.TokenRecorder(state.options.window, state.options.max_event_bytes,
                                              max_tokens=heatmap.MAX_TOKENS, max_choices=state.options.max_choices)
        #: chunks read from the source but not yet fed (one the state refused never reaches feed)
        self.pending: collections.deque[Any] = collections.deque()

    def source(self, chunks: Iterable[Any]) -> Iterator[Any]:
        """``chunks`` as they are read, remembered until fed: a chunk that ends the stream with
        an error (the state raises on it, so it is never passed on) still reaches the page."""
        try:
            for chunk in chunks:
                self.pending.append(chunk)
                yield chunk
        finally:
            close = getattr(chunks, "close", None)
            if close is not None:
                close()  # a stop closes this wrapper: the connection or the generation behind it closes too

    def feed(self, chunk: Any) -> None:
        if self.pending and self.pending[0] is chunk:
            self.pending.popleft()
        self.recorder.feed(chunk)

    def settle(self, code: int, state: StreamState, title: str) -> int:
        """Write the page of what was read (also of a stopped or failed stream); the exit code."""
        from .views.heatmap import render

        if state.error is not None and self.pending:
            self.recorder.feed(self.pending.popleft())  # the chunk the state failed on: its tokens before the error
        self.recorder.close()
        try:
            page = render(self.recorder, state, title=title).encode()
        except NoLogprobsError:  # an empty stream, or one without logprobs: its own error line said why
            kept = "is unchanged" if os.path.lexists(self.path) else "was not created"
            _say(f"no page: no token came with a logprob, there is nothing to colour; {self.path} {kept}")
            return code or 1
        out = _Recording(self.path, noun="page")
        try:
            out.write(page)
        except _Fail:
            out.drop("it could not be written")
            raise
        out.keep()
        left_out = sum(c.left_out for c in self.recorder.choices.values())
        if left_out:  # a 27 MB page of a long answer is not all of it: said where the command is run
            cap = self.recorder.max_tokens
            _say(f"{self.path} shows the first {cap:,} tokens; {left_out:,} more were read and counted, "
                 f"not shown (a page keeps at most {cap:,})")
        return code


def _same_file(a: str, b: str) -> bool:
    """True when paths ``a`` and ``b`` name one file (through symlinks, ``.``, hard links)."""
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist (yet): the same file if they resolve alike
        return os.path.realpath(a) == os.path.realpath(b)


def _fed(*feeds: Callable[[Any], object] | None) -> Callable[[Any], object] | None:
    """One on_chunk callback that calls each given one in turn (None when none is given)."""
    given = [f for f in feeds if f is not None]
    if len(given) < 2:
        return given[0] if given else None
    return lambda chunk: [f(chunk) for f in given]


def _paced(chunks: Iterable[bytes], state: StreamState, tokens_per_second: float) -> Iterator[bytes]:
    """Let chunks through no faster than `tokens_per_second` (what the state has counted)."""
    start = time.monotonic()
    for chunk in chunks:
        yield chunk
        due = start + state.total_tokens / tokens_per_second
        delay = due - time.monotonic()
        if delay > 0:
            time.sleep(delay)


# -- output ------------------------------------------------------------------------------


def _one_line(message: str, limit: int = 500) -> str:
    """A server's message on one line (some send tracebacks), cut to a readable length,
    its control characters shown as data (:func:`~livepplx.views.textsafe.safe_line`)."""
    return safe_line(message, limit)


def _say(message: str) -> None:
    """One line on stderr, ``livepplx: <message>``, made safe for the terminal."""
    if sys.stderr is None:
        return
    try:
        print(f"livepplx: {_one_line(message)}", file=sys.stderr, flush=True)
    except (OSError, ValueError):
        pass  # no stderr left to say it on


def _fmt(x: float | str | None, spec: str = ".3f") -> str:
    """A statistic of the summary: ``-`` when undefined, ``inf`` as the summary says it."""
    if isinstance(x, str):
        return safe_line(x)  # "inf" / "-inf": stats.json_number
    return "-" if x is None or not math.isfinite(x) else format(x, spec)


def _summary_lines(summary: dict[str, Any]) -> list[str]:
    lines = [f"format: {summary['format'] or 'unknown'}"]
    for c in summary["choices"]:
        lines.append(
            f"choice {c['index']}: {c['tokens']} tokens  ppl {_fmt(c['ppl'])}  "
            f"window ppl {_fmt(c['window_ppl'])}  min p {_fmt(c['min_prob'], '.4f')}  "
            f"mean entropy {_fmt(c['entropy_mean'])}  censored {c['censored']}  skipped {c['skipped']}"
        )
    stopped = summary.get("stopped")
    if stopped:
        lines.append(f"stopped: choice {stopped['choice']} at token {stopped['at_token']}: "
                     f"{safe_line(stopped['reason'])}")
    return lines


def _loaded(*names: tuple[str, str]) -> tuple[type[BaseException], ...]:
    """The exception classes ``module.attr`` of the modules already imported (one not
    imported cannot have raised)."""
    found: list[type[BaseException]] = []
    for module_name, attr in names:
        error = getattr(sys.modules.get(module_name), attr, None)
        if isinstance(error, type) and issubclass(error, BaseException):
            found.append(error)
    return tuple(found)


def _transport_errors() -> tuple[type[BaseException], ...]:
    """A connection that broke or stalled: the openai SDK's errors, and the base classes of
    httpx and httpx2 (openai >= 3 reads with httpx2; ``response.iter_bytes()`` is not wrapped
    by the SDK)."""
    return _loaded(("openai", "APIConnectionError"), ("httpx", "RequestError"), ("httpx2", "RequestError"),
                   ("ssl", "SSLError"))


def _timeout_errors() -> tuple[type[BaseException], ...]:
    return _loaded(("openai", "APITimeoutError"), ("httpx", "TimeoutException"), ("httpx2", "TimeoutException"))


def _outcome(state: StreamState) -> tuple[dict[str, Any], str | None]:
    """The summary, and what failed (None when all is well)."""
    failure = state.error
    if failure is None and state.stopped is None:
        try:
            state.check_logprobs()
        except LivepplxError as e:
            failure = str(e)
    summary = state.summary()
    if failure is not None:
        summary["error"] = failure
    return summary, failure


class _Run:
    """One stream read to its end (or a stop, an error, Ctrl-C) and reported."""

    def __init__(self, args: argparse.Namespace, state: StreamState, title: str) -> None:
        self.args = args
        self.state = state
        self.title = title
        self.interrupted = False
        #: the stream was read to its end: no stop, no error, not interrupted
        self.complete = False

    def read(self, chunks: Iterable[Any], on_chunk: Callable[[Any], object] | None = None) -> None:
        from .monitor import MonitoredStream

        # chat's --timeout also bounds the time between two events (keep-alive comments and
        # a trickle of bytes do not count), which the HTTP client's read timeout cannot see.
        m = MonitoredStream(chunks, self.state, idle_timeout=getattr(self.args, "timeout", None))
        try:
            with m:
                if self.args.json:
                    self._drain(m, on_chunk)
                else:
                    self._show(m, on_chunk)
            self.complete = self.state.error is None and self.state.stopped is None
            stop = self.state.stopped
            if stop is not None and stop.reason == "idle timeout":  # events stopped coming, bytes or not
                n = self.state.total_tokens
                self.state.error = (f"the server sent nothing for {self.args.timeout:g} s after {n} "
                                    f"token{'' if n == 1 else 's'} (raise --timeout to wait longer)")
        except KeyboardInterrupt:
            self.interrupted = True
            self.state.stop("interrupted")
        except LivepplxError:
            pass  # the state recorded it; the statistics read so far are reported
        except _transport_errors() as e:
            # The connection broke or stalled mid-answer: what was read is reported, exit 1.
            self.state.error = self._broken(e)

    def _broken(self, error: BaseException) -> str:
        n = self.state.total_tokens
        after = f"after {n} token{'' if n == 1 else 's'}"
        timeout = getattr(self.args, "timeout", None)
        if timeout and isinstance(error, _timeout_errors()):
            return f"the server sent nothing for {timeout:g} s {after} (raise --timeout to wait longer)"
        cause = error.__cause__ if error.__cause__ is not None else error  # the SDK's "Connection error."
        return f"the connection broke {after}: {str(cause) or type(cause).__name__}"

    def unfinished(self) -> str | None:
        """Why the answer was not read to its end, or None."""
        if self.complete:
            return None
        if self.interrupted:
            return "interrupted"
        if self.state.stopped is not None and self.state.stopped.reason != "idle timeout":
            return f"the stream was stopped at token {self.state.stopped.at_token}, before its end"
        return "the stream failed" if self.state.error is not None else "the stream was not read to its end"

    @staticmethod
    def _drain(m: Iterable[Any], on_chunk: Callable[[Any], object] | None) -> None:
        for chunk in m:
            if on_chunk:
                on_chunk(chunk)

    def _show(self, m: Any, on_chunk: Callable[[Any], object] | None) -> None:
        from rich.console import Console
        from rich.live import Live

        from .views.gauge import REFRESH_PER_SECOND, Gauge

        console = Console(stderr=False)
        if console.is_terminal:
            # Made only here: the gauge records history on every token, wasted off a terminal.
            gauge = Gauge(self.state, show_text=True, title=self.title)
            with Live(gauge, console=console, refresh_per_second=REFRESH_PER_SECOND):
                self._drain(m, on_chunk)
        else:
            # Not a terminal: no animation; the answer as it comes, then plain lines.
            # The new tokens' text is gathered per chunk (re-reading the whole text each
            # chunk would cost quadratic time on a long answer).
            fresh: list[str] = []
            shown = False
            if self.args.command == "chat":
                self.state.on_token(lambda token, stats: fresh.append(token.text) if stats.index == 0 else None)

            def echo(chunk: bytes) -> None:
                nonlocal shown
                if on_chunk:
                    on_chunk(chunk)
                if fresh:
                    sys.stdout.write(safe_text("".join(fresh)))  # the model's text, never escape codes
                    sys.stdout.flush()
                    fresh.clear()
                    shown = True

            try:
                self._drain(m, echo)
            finally:
                if shown:
                    print()  # the summary starts on a line of its own, also after a failure

    def report(self) -> int:
        summary, failure = _outcome(self.state)
        if self.args.json:
            # Strict JSON: a NaN or an infinity left in the summary fails here, loudly.
            print(json.dumps(summary, allow_nan=False))
        elif not sys.stdout.isatty():
            print("\n".join(_summary_lines(summary)))
        if self.interrupted:
            _say("interrupted")
            return 130
        if failure is not None:
            _say(f"error: {failure}")
            return 1
        return 0


def _state(args: argparse.Namespace, max_event_bytes: int = MAX_EVENT_BYTES) -> StreamState:
    return StreamState(
        window=args.window,
        stop_above=args.stop_above,
        min_tokens=args.min_tokens,
        on_missing_logprobs="ignore",  # judged at the end, with the whole stream seen
        text_limit=None if getattr(args, "command", "") == "chat" else 8192,
        max_event_bytes=max_event_bytes,
    )


# -- commands ------------------------------------------------------------------------------


def _replay(args: argparse.Namespace) -> int:
    source = _open(args.path)
    # A file on disk is bounded by its size: a whole answer saved pretty-printed may be one
    # JSON document past the stream limit, and is read whole. stdin keeps the limit.
    size = 0 if source is sys.stdin.buffer else os.fstat(source.fileno()).st_size
    state = _state(args, max(MAX_EVENT_BYTES, size + 1))
    run = _Run(args, state, "stdin" if args.path == "-" else os.path.basename(args.path))
    try:
        page = _Page(args.html, state, args.path) if args.html else None
        # Paced: line by line (at most _READ_SIZE bytes at a time, so a huge line costs no memory).
        chunks: Iterable[bytes] = iter(lambda: source.readline(_READ_SIZE), b"") if args.speed else _reads(source)
        if page:
            chunks = page.source(chunks)
        run.read(_paced(chunks, state, args.speed) if args.speed else chunks, page.feed if page else None)
    finally:
        if source is not sys.stdin.buffer:
            source.close()
    code = run.report()
    return page.settle(code, state, run.title) if page else code


def _demo(args: argparse.Namespace) -> int:
    from .recordings import SCENES

    scenes = [scene for scene in SCENES if args.name in (None, scene.recording)]
    if args.local and not scenes:
        raise _Fail(f"--local plays the demo's scenes ({', '.join(s.recording for s in SCENES)}); "
                    f"{args.name} is a recording: replay it without --local")
    if not scenes:  # one recording by name, replayed as it was captured
        state = _state(args)
        run = _Run(args, state, args.name)
        with open(recording_path(args.name), "rb") as f:
            run.read(_paced(f, state, args.speed) if args.speed else _reads(f))
        return run.report()
    code = 0
    for number, scene in enumerate(scenes):
        if number and sys.stdout.isatty() and not args.json:
            time.sleep(1.0)  # a moment to read the last frame before the next scene
        code = max(code, _scene(args, scene))
        if code == 130:
            break
    return code


def _scene(args: argparse.Namespace, scene: Any) -> int:
    """One scene: its answer (recorded, or live with --local) watched by the scenes' rule,
    which escalates: the stream is closed first, then the escalation is told."""
    from .recordings import QA_STOP, SCENE_PPL, SCENE_WARMUP
    from .core.triggers import Trigger, min_tokens, ppl_above

    escalations: list[Any] = []
    rule = Trigger(ppl_above(SCENE_PPL) & min_tokens(SCENE_WARMUP), escalate=escalations.append,
                   name=f"unsure: ppl above {SCENE_PPL:g} after {SCENE_WARMUP} tokens")
    state = StreamState(window=args.window, stop_above=args.stop_above, min_tokens=args.min_tokens,
                        on_missing_logprobs="ignore", triggers=[rule])
    if not args.json:
        print(f"== {scene.title}\n   Q: {scene.question}", flush=True)
    if args.local:
        from .local import LocalClient, default_model

        run = _Run(args, state, "gemma-3-270m (local, live)")
        try:
            client = LocalClient(default_model(on_note=_say))
            run.read(client.completions.create(model="gemma", prompt=scene.prompt, stream=True, logprobs=5,
                                               max_tokens=scene.max_tokens, temperature=0, stop=list(QA_STOP)))
        except LivepplxError as e:
            raise _Fail(str(e)) from None
    else:
        run = _Run(args, state, f"{scene.recording} (recorded)")
        with open(recording_path(scene.recording), "rb") as f:
            run.read(_paced(f, state, args.speed) if args.speed else _reads(f))
    if not args.json and not sys.stdout.isatty():
        print(f"   A:{safe_text(state.text(0))}" + (" ■" if state.stopped else ""))
    code = run.report()
    if not args.json and not run.interrupted:
        print(f"   -> {scene.fired if escalations else scene.calm}\n", flush=True)
    return code


def _messages(args: argparse.Namespace) -> list[dict[str, str]]:
    system = [{"role": "system", "content": args.system}] if args.system else []
    return system + [{"role": "user", "content": args.prompt}]


def _openai_client(args: argparse.Namespace, other_ways: str = "") -> Any:
    """The OpenAI client of ``--base-url``, ``--api-key`` and ``--timeout`` (chat's and vote's)."""
    import openai

    api_key = args.api_key or os.environ.get("OPENAI_API_KEY")
    if not api_key:
        if args.base_url is None:
            raise _Fail(f"no API key: pass --api-key or set OPENAI_API_KEY (or --base-url for a local server"
                        f"{other_ways})")
        api_key = "sk-no-key"  # local servers take any key
    # Connect and idle read: a stalled server fails after --timeout (the SDK's default is
    # 600 s, and it retries twice). The retries stay, for a refused connection, 429 and 5xx;
    # they apply before the answer starts, never mid-answer.
    timeout = openai.Timeout(args.timeout, connect=min(args.timeout, MAX_CONNECT_TIMEOUT))
    return openai.OpenAI(api_key=api_key, base_url=args.base_url, max_retries=2, timeout=timeout)


@contextlib.contextmanager
def _answered(client: Any, timeout: float, tries: str = "") -> Iterator[None]:
    """The SDK's errors of a request as one line each: what the server said, a timeout, no server."""
    import openai

    try:
        yield
    except openai.APIStatusError as e:
        raise _Fail(f"the server answered {e.status_code}: {_api_message(e)}") from None
    except openai.APITimeoutError:
        raise _Fail(f"no answer from {client.base_url} within {timeout:g} s{tries} "
                    "(raise --timeout to wait longer)") from None
    except openai.APIConnectionError:
        raise _Fail(f"cannot reach {client.base_url}: is the server running?") from None


def _endpoint_arguments(p: argparse.ArgumentParser) -> None:
    """PROMPT and the endpoint's options, as chat and vote take them."""
    p.add_argument("prompt", metavar="PROMPT")
    p.add_argument("--base-url", help="the endpoint (default: OpenAI's, or OPENAI_BASE_URL)")
    p.add_argument("--model", default=os.environ.get("LIVEPPLX_MODEL", "gpt-4o-mini"),
                   help="model name (default gpt-4o-mini, or LIVEPPLX_MODEL)")
    p.add_argument("--api-key", help="API key (default: OPENAI_API_KEY; any key for a local server)")


def _chat(args: argparse.Namespace) -> int:
    if args.local:
        return _chat_local(args)

    from .client import build_request

    client = _openai_client(args, ", or --local for the embedded model")
    request: dict[str, Any] = {"model": args.model, "messages": _messages(args), "max_tokens": args.max_tokens}
    if args.temperature is not None:
        request["temperature"] = args.temperature
    request = build_request("chat", request, top_logprobs=args.top_logprobs, include_usage=True)
    state = _state(args)
    run = _Run(args, state, args.model)
    page = _Page(args.html, state, args.record) if args.html else None
    with _recorded(args.record, run) as recording:
        with _answered(client, args.timeout, ", 3 tries"):
            with client.chat.completions.with_streaming_response.create(**request) as response:
                # The raw bytes: read by livepplx's own reader, and recordable as they came.
                run.read(page.source(response.iter_bytes()) if page else response.iter_bytes(),
                         _fed(recording.write if recording else None, page.feed if page else None))
        code = run.report()
    return page.settle(code, state, f"{args.model}: {args.prompt}") if page else code


def _chat_local(args: argparse.Namespace) -> int:
    from .local import LocalClient, default_model
    from .recordings import QA_PROMPT, QA_STOP

    if not args.prompt.strip():
        raise _Fail("the prompt is empty: ask a question, e.g. livepplx chat --local 'What is the capital of Peru?'")
    # The Gemma on PyPI is a base model: the question is asked in a few-shot prompt (as the
    # demo's scenes are), on completions, and the answer ends with its line.
    prompt = QA_PROMPT.format(question=args.prompt)
    if args.system:
        prompt = f"{args.system}\n{prompt}"
    state = _state(args)
    run = _Run(args, state, "gemma-3-270m (local)")
    page = _Page(args.html, state, args.record) if args.html else None
    # The chunks are dicts: recorded as the SSE a server would send, [DONE] only at the end.
    with _recorded(args.record, run, end=b"data: [DONE]\n\n") as recording:

        def save(chunk: Any) -> None:
            assert recording is not None
            recording.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")

        try:
            client = LocalClient(default_model(on_note=_say))
            chunks = client.completions.create(
                model="gemma", prompt=prompt, stream=True, logprobs=args.top_logprobs, max_tokens=args.max_tokens,
                temperature=args.temperature or 0.0, stop=list(QA_STOP), stream_options={"include_usage": True})
            run.read(page.source(chunks) if page else chunks, _fed(save if recording else None,
                                                                   page.feed if page else None))
        except LivepplxError as e:
            raise _Fail(str(e)) from None
        code = run.report()
    return page.settle(code, state, f"gemma-3-270m (local): {args.prompt}") if page else code


def _labelled(path: str, score_key: str, label_key: str) -> tuple[list[float], list[bool]]:
    """Scores and labels from JSON lines: one object per labelled answer.

    A score written as null, NaN or Infinity (how tools write a missing or an infinite
    perplexity) is read as NaN: the fits drop it, and the count is reported. Anything else
    is one line and exit 1: a line that is not a JSON object or nests too deep, a score that
    is not a number or is a number too large for a float (``1e999``, which ``json`` would
    read as infinity), a label other than true, false, 1 or 0.
    """
    too_large = object()  # a number literal past a float's range, told apart from the Infinity literal

    def number(text: str) -> Any:
        value = float(text)
        return too_large if math.isinf(value) else value

    def integer(text: str) -> Any:
        try:
            value = int(text)
            float(value)
        except (ValueError, OverflowError):  # past 4300 digits, or past 1.8e308
            return too_large
        return value

    def kind(value: Any) -> str:  # the JSON type, never the (untrusted) value itself
        return {str: "a string", list: "an array", dict: "an object", bool: "a boolean", type(None): "null",
                int: "a number", float: "a number"}.get(type(value), "something else")

    example = f'{{"{score_key}": 1.8, "{label_key}": true}}'
    scores: list[float] = []
    labels: list[bool] = []
    source = _open(path)
    try:
        for number_of_line, raw in enumerate(source, 1):
            where = f"{path} line {number_of_line}"
            line = raw.decode("utf-8", "replace").strip()
            if not line:
                continue
            try:
                record = json.loads(line, parse_float=number, parse_int=integer)
            except RecursionError:
                raise _Fail(f"{where} nests too deep to read: one flat object a line, like {example}") from None
            except ValueError:
                raise _Fail(f"{where} is not JSON: one object a line, like {example}") from None
            if not isinstance(record, dict):
                raise _Fail(f"{where} is {kind(record)}, not a JSON object: one object a line, like {example}")
            if score_key not in record or label_key not in record:
                raise _Fail(f"{where} has no {score_key!r} and {label_key!r}: name the fields with --score and --label")
            score, label = record[score_key], record[label_key]
            if score is too_large:
                raise _Fail(f"{where}: {score_key!r} is a number too large for a float")
            if score is None:
                score = math.nan  # no score: dropped and counted, as NaN and infinity are
            if isinstance(score, bool) or not isinstance(score, (int, float)):
                raise _Fail(f"{where}: {score_key!r} must be a number (or null), got {kind(score)}")
            if not (label is True or label is False or (type(label) is int and label in (0, 1))):
                raise _Fail(f"{where}: {label_key!r} must be true or false (or 1 or 0), got {kind(label)}"
                            + (f" {label}" if type(label) in (int, float) else ""))
            scores.append(float(score))
            labels.append(bool(label))
    finally:
        if source is not sys.stdin.buffer:
            source.close()
    return scores, labels


def _serve(args: argparse.Namespace) -> int:
    from .serve import main as serve

    return serve(["--port", str(args.port)])


def _calibrate(args: argparse.Namespace) -> int:
    import dataclasses

    import numpy as np

    from .decide.calibrate import CalibrationError, CarCalibration, auroc, fit_threshold

    raw_scores, raw_labels = _labelled(args.path, args.score, args.label)
    scores, labels = np.asarray(raw_scores, dtype=float), np.asarray(raw_labels, dtype=bool)
    finite = np.isfinite(scores)
    dropped = int(scores.size - np.count_nonzero(finite))  # the fits drop the same rows, by the same rule
    try:
        cal = CarCalibration.fit(scores, labels, rule="upper" if args.one_sided else "bayes")
        area = auroc(scores, ~labels)
        youden = fit_threshold(scores, labels)
    except CalibrationError as e:
        why = f" ({dropped} of {scores.size} rows dropped: {args.score} null, NaN or infinite)" if dropped else ""
        raise _Fail(f"{e}{why}") from None
    used, correct = int(np.count_nonzero(finite)), int(np.count_nonzero(labels & finite))
    paper = dataclasses.replace(cal, rule="bayes")
    if args.plot:
        _save_plot(args.plot, scores, labels, cal, args.score)
    if args.out:
        with _create(args.out) as out:
            out.write((cal.to_json() + "\n").encode())
    if args.json:
        print(json.dumps({
            "answers": used, "correct": correct, "dropped": dropped, "auroc": area,
            "calibration": json.loads(cal.to_json()), "rule": cal.rule, "escalate_when": cal.describe(args.score),
            "thresholds": list(cal.thresholds), "threshold": cal.threshold, "upper_threshold": cal.upper_threshold,
            "youden": {"threshold": youden.threshold, "true_positive_rate": youden.true_positive_rate,
                       "false_positive_rate": youden.false_positive_rate, "precision": youden.precision},
        }))
        return 0
    def num(x: float) -> str:  # three decimals, or four digits when huge or tiny
        return f"{x:.3f}" if 1e-3 <= abs(x) < 1e6 or x == 0 else f"{x:.4g}"

    crossings = ", ".join(num(t) for t in cal.thresholds) or "none"
    print(f"{used} answers, {correct} correct"
          + (f"; {dropped} dropped ({args.score} null, NaN or infinite)" if dropped else ""))
    print(f"AUROC {area:.3f} ({args.score} telling incorrect answers from correct; 0.5 is chance)")
    print(f"CAR: correct ~ N({num(cal.mu_correct)}, {num(cal.sigma_correct)}^2), incorrect ~ "
          f"N({num(cal.mu_incorrect)}, {num(cal.sigma_incorrect)}^2), priors {cal.prior_correct:.2f} / "
          f"{cal.prior_incorrect:.2f}; the weighted densities cross at {crossings}")
    if cal.rule == "upper":
        print(f"CAR rule (one-sided): {cal.describe(args.score)}; the paper's Bayes rule would "
              f"{paper.describe(args.score)}")
    else:
        print(f"CAR rule (the paper's Bayes rule): {cal.describe(args.score)}"
              + ("; --one-sided escalates only above the upper crossing" if len(cal.thresholds) > 1 else ""))
    print(f"Youden's J: flag {args.score} > {num(youden.threshold)} (catches {youden.true_positive_rate:.0%} of "
          f"incorrect, {youden.false_positive_rate:.0%} of correct)")
    from .views.calibration_plot import text_histogram

    print(safe_text(text_histogram(scores, labels, cal, score=args.score)))
    if args.out:
        print(f"saved {args.out}")
    if args.plot:
        print(f"saved {args.plot}")
    return 0


def _html_path(text: str) -> str:
    """``--html``'s argument: any file name but an empty one (which would quietly write nothing)."""
    if not text:
        raise argparse.ArgumentTypeError("needs a file name (OUT.html), got an empty one")
    return text


def _plot_path(text: str) -> str:
    """``--plot``'s argument: a file name ending in .png or .svg (the format)."""
    if not text.lower().endswith((".png", ".svg")):
        raise argparse.ArgumentTypeError(f"must end in .png or .svg (the picture's format), got {text!r}")
    return text


def _save_plot(path: str, scores: Any, labels: Any, cal: Any, score: str) -> None:
    """``calibrate --plot``: the picture made whole in memory, then written by ``--record``'s
    atomic write (an error leaves no half-written file)."""
    from .views.calibration_plot import plot_bytes

    try:
        data = plot_bytes(scores, labels, cal, fmt="svg" if path.lower().endswith(".svg") else "png", score=score)
    except ImportError:
        raise _Fail("--plot needs matplotlib: pip install 'livepplx[plot]'") from None
    except LivepplxError as e:
        raise _Fail(f"no plot: {e}") from None
    out = _Recording(path, noun="plot")
    try:
        out.write(data)
    except _Fail:
        out.drop("it could not be written")
        raise
    out.keep()


def _api_message(error: Any) -> str:
    body = getattr(error, "body", None)
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and inner.get("message"):
            return str(inner["message"])
    return str(getattr(error, "message", error))


# -- parsing ------------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    """argparse, its error line made safe: it quotes what was typed (a pasted escape code)."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: error: {safe_line(message)}\n")


def _number(kind: type, low: float, high: float | None = None, *, above: bool = False) -> Callable[[str], Any]:
    """An argparse type: an int, or a finite float, from ``low`` (or above it) to ``high``
    (None: any finite value); outside, a usage error that says the range.

    >>> _number(float, 0.1, 1_000_000)("nan")
    Traceback (most recent call last):
    argparse.ArgumentTypeError: must be a number from 0.1 to 1,000,000, got 'nan'
    """
    noun = "an integer" if kind is int else "a number" if high is not None else "a finite number"
    shown = lambda x: f"{x:,}" if isinstance(x, int) else f"{x:g}"  # noqa: E731
    expected = f"{noun} {'above' if above else 'from'} {shown(low)}" + (f" to {shown(high)}" if high is not None else "")

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except (ValueError, OverflowError):
            value = math.nan
        # NaN fails every comparison; inf fails the finite test.
        if not ((value > low if above else value >= low) and (value <= high if high is not None else
                                                               math.isfinite(value))):
            raise argparse.ArgumentTypeError(f"must be {expected}, got {text!r}")
        return value

    return parse


#: The options' ranges. A window slot costs 8 bytes: a million is 8 MB. 20 alternatives is
#: OpenAI's limit and vLLM's default. Below 0.1 token/s a replay would all but never end.
MAX_WINDOW = MAX_TOKENS = 1_000_000
MIN_SPEED, MAX_SPEED = 0.1, 1_000_000
MAX_TOP_LOGPROBS = 20
MAX_TIMEOUT = 86_400  # a day

_positive_float = _number(float, 0, above=True)
_speed = _number(float, MIN_SPEED, MAX_SPEED)


def _monitor_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print one JSON object with the statistics, no gauge")
    p.add_argument("--window", type=_number(int, 1, MAX_WINDOW), default=64,
                   help=f"tokens in the windowed perplexity (default 64, at most {MAX_WINDOW:,})")
    p.add_argument("--stop-above", type=_positive_float, metavar="PPL",
                   help="stop once the running perplexity exceeds PPL (after --min-tokens)")
    p.add_argument("--min-tokens", type=_number(int, 1, MAX_TOKENS), default=8,
                   help="warm-up before --stop-above applies (default 8)")


_HTML_HELP = ("save a page to share: one self-contained HTML file, each token coloured by its surprisal, "
              "its alternatives on hover, the perplexity chart and the statistics")


def _sub(sub: Any, name: str, help: str, examples: str) -> argparse.ArgumentParser:
    return sub.add_parser(name, help=help, description=help, epilog=f"examples:\n{examples}",
                          formatter_class=argparse.RawDescriptionHelpFormatter)


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="livepplx",
        description="Watch an LLM answer stream and tell, token by token, how perplexed the model is.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  livepplx demo\n  livepplx chat 'Why is the sky blue?' --base-url http://127.0.0.1:8080/v1\n"
        "  livepplx replay answer.sse --json\n  curl -N URL -d '{..., \"stream\": true, \"logprobs\": true, "
        "\"top_logprobs\": 5}' | livepplx replay -",
    )
    from . import __version__
    from .core.accumulator import IMPLEMENTATION

    # Which accumulator runs belongs in a bug report: the C one is optional (built at install).
    parser.add_argument("--version", action="version",
                        version=f"livepplx {__version__} (statistics in {'C' if IMPLEMENTATION == 'c' else 'Python'}, "
                        f"Python {sys.version.split()[0]})")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    chat = _sub(sub, "chat", "ask an OpenAI-compatible endpoint and watch the answer's perplexity live",
                "  livepplx chat 'Name three moons of Jupiter' --base-url http://127.0.0.1:8080/v1 --model gemma\n"
                "  livepplx chat 'Hi' --model gpt-4o-mini --stop-above 20 --json\n"
                "  livepplx chat 'Hi' --base-url http://127.0.0.1:8000/v1 --model m --record hi.sse\n"
                "  livepplx chat 'What is the capital of Peru?' --local --max-tokens 24")
    _endpoint_arguments(chat)
    chat.add_argument("--system", help="a system message")
    chat.add_argument("--max-tokens", type=_number(int, 1, MAX_TOKENS), default=256, help="default 256")
    chat.add_argument("--temperature", type=_number(float, 0), help="sampling temperature (default: the server's)")
    chat.add_argument("--top-logprobs", type=_number(int, 0, MAX_TOP_LOGPROBS), default=5,
                      help=f"alternatives per token (default 5, at most {MAX_TOP_LOGPROBS})")
    chat.add_argument("--timeout", type=_number(float, 0, MAX_TIMEOUT, above=True), default=DEFAULT_TIMEOUT,
                      metavar="SECONDS",
                      help=f"give up when the server sends nothing for SECONDS, before the answer or in it "
                           f"(default {DEFAULT_TIMEOUT:g}; connecting: at most {MAX_CONNECT_TIMEOUT:g})")
    chat.add_argument("--record", metavar="FILE", help="save the raw stream to FILE, for `livepplx replay FILE`")
    chat.add_argument("--html", metavar="OUT.html", type=_html_path, help=_HTML_HELP)
    chat.add_argument("--local", action="store_true",
                      help="run Gemma 3 270M in-process (pip install 'livepplx[local]'): no server, no key, "
                           "no network; a base model, so the question is asked in a few-shot prompt; "
                           "exact logprobs at about 0.9x the model's own speed")
    _monitor_options(chat)
    chat.set_defaults(run=_chat)

    replay = _sub(sub, "replay", "read a captured stream (SSE or NDJSON, any server's format) and report",
                  "  livepplx replay answer.sse\n  livepplx replay answer.sse --json --stop-above 20\n"
                  "  livepplx replay answer.sse --speed 30\n  curl -N ... | livepplx replay -\n"
                  "  livepplx replay answer.sse --html answer.html   # a page to share: tokens coloured, alternatives")
    replay.add_argument("path", metavar="PATH", help="the captured stream; - reads stdin")
    replay.add_argument("--speed", type=_speed, metavar="TOKENS_PER_S",
                        help=f"replay at this pace, {MIN_SPEED:g} to {MAX_SPEED:,} (default: as fast as it comes)")
    replay.add_argument("--html", metavar="OUT.html", type=_html_path, help=_HTML_HELP)
    _monitor_options(replay)
    replay.set_defaults(run=_replay)

    from .recordings import SCENE_RECORDINGS

    demo = _sub(sub, "demo", "what livepplx is for, in two scenes: a confident answer, and an unsure one cut and "
                "escalated (real recordings shipped in the package: no key, no network, no server)",
                "  livepplx demo\n  livepplx demo --local                # the same scenes, live on the embedded model\n"
                "  livepplx demo llamacpp-python-chat --stop-above 12\n  livepplx demo --speed 200")
    demo.add_argument("name", nargs="?", choices=[*SCENE_RECORDINGS, *RECORDINGS],
                      help="one scene or recording (default: the scenes)")
    demo.add_argument("--speed", type=_speed, default=DEMO_PACE, metavar="TOKENS_PER_S",
                      help=f"tokens per second of the recordings (default {DEMO_PACE:g})")
    demo.add_argument("--local", action="store_true",
                      help="play the scenes live on the embedded model (pip install 'livepplx[local]')")
    _monitor_options(demo)
    demo.set_defaults(run=_demo)

    calibrate = _sub(sub, "calibrate", "fit CAR's escalation rule and thresholds from labelled answers (JSON lines)",
                     "  livepplx calibrate labelled.jsonl --out car.json     # lines like {\"ppl\": 1.8, \"correct\": true}\n"
                     "  livepplx calibrate runs.jsonl --score window_ppl --label ok --json\n"
                     "  livepplx calibrate labelled.jsonl --plot calibration.png   # pip install 'livepplx[plot]'")
    calibrate.add_argument("path", metavar="FILE", help="JSON lines, one labelled answer each; - reads stdin")
    calibrate.add_argument("--score", default="ppl", help="the field holding the score (default ppl)")
    calibrate.add_argument("--label", default="correct", help="the field holding true/false (default correct)")
    calibrate.add_argument("--out", metavar="FILE", help="save the CAR calibration as JSON (CarCalibration.load)")
    calibrate.add_argument("--one-sided", action="store_true",
                           help="escalate only above the upper crossing (saved in --out); default: the paper's "
                                "Bayes rule, which escalates on both sides when the classes' widths differ")
    calibrate.add_argument("--json", action="store_true", help="print one JSON object")
    calibrate.add_argument("--plot", metavar="OUT.png|svg", type=_plot_path,
                           help="save the histograms with the fitted Gaussians and the escalation region, and the "
                                "ROC with the operating points (pip install 'livepplx[plot]')")
    calibrate.set_defaults(run=_calibrate)

    serve = _sub(sub, "serve", "the embedded model behind an OpenAI-compatible endpoint on 127.0.0.1 (SSE)",
                 "  livepplx serve --local --port 8080\n"
                 "  livepplx chat 'Hi' --base-url http://127.0.0.1:8080/v1 --model gemma")
    serve.add_argument("--local", action="store_true", required=True, help="the embedded model (the only one served)")
    serve.add_argument("--port", type=_number(int, 1, 65535), default=8080, help="the port (default 8080)")
    serve.set_defaults(run=_serve)

    from .vote_cli import add_parser as add_vote  # DeepConf's command lives in its own module

    add_vote(sub, _sub)
    return parser


def _tolerant_output() -> Callable[[], None]:
    """Let stdout and stderr write what their encoding cannot hold (a lone surrogate, an
    ASCII locale) as backslash escapes instead of raising; a closed one (``>&-``) becomes
    /dev/null. Return what undoes it (``main`` may run inside another program)."""
    undo: list[Callable[[], None]] = []
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        if stream is None:
            devnull = open(os.devnull, "w")
            setattr(sys, name, devnull)
            undo += [functools.partial(setattr, sys, name, None), devnull.close]
            continue
        errors, reconfigure = getattr(stream, "errors", None), getattr(stream, "reconfigure", None)
        if reconfigure is None or errors in (None, "backslashreplace"):
            continue
        try:
            reconfigure(errors="backslashreplace")
        except (OSError, ValueError):
            continue
        undo.append(functools.partial(reconfigure, errors=errors))

    def restore() -> None:
        for step in reversed(undo):
            with contextlib.suppress(OSError, ValueError):
                step()

    return restore


def _quiet_stdout() -> None:
    """stdout's reader is gone: point it at /dev/null, so the interpreter's last flush
    of what is still buffered is quiet (no "Exception ignored ... BrokenPipeError")."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):
        pass  # not a real file (inside a test): nothing to flush at exit


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit code."""
    restore = _tolerant_output()
    try:
        args = _parser().parse_args(argv)  # argparse itself ignores a closed stdout (--help: exit 0)
        try:
            code = int(args.run(args))
        except _Fail as e:
            _say(f"error: {e}")
            for line in e.after:
                _say(line)
            code = 1
        except KeyboardInterrupt:
            _say("interrupted")
            code = 130
        sys.stdout.flush()  # a closed pipe shows here, not at the interpreter's exit
        return code
    except BrokenPipeError:
        _quiet_stdout()
        return EXIT_BROKEN_PIPE
    finally:
        restore()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
