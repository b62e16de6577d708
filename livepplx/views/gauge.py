"""The Rich terminal gauge: a live view of a monitored stream, and :func:`watch`.

:class:`Gauge` is a Rich renderable over a :class:`~livepplx.core.state.StreamState`. It
records a little history per token (a bounded sparkline and the recent tokens) and
draws only when Rich asks: on :class:`rich.live.Live` that is about ten times a
second, whatever the token rate.

    with livepplx.watch(stream, stop_above=20) as m:   # monitor + gauge in one call
        ...
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from typing import Any, Callable, Iterable, Sequence

from rich.console import Console, ConsoleOptions, Group, RenderResult
from rich.live import Live
from rich.panel import Panel
from rich.text import Text

from ..monitor import MonitoredStream, monitor
from ..core.state import StreamState
from ..core.stats import ChoiceStats
from .textsafe import safe_line, safe_text
from ..core.tokens import Token
from ..core.triggers import AllOf, AnyOf, Condition, Trigger, ppl_above, sustained

__all__ = ["Gauge", "watch", "big_number", "sparkline", "ppl_levels"]

# A three-row font for the big number.
_FONT = {
    "0": ("┏━┓", "┃ ┃", "┗━┛"), "1": (" ┓ ", " ┃ ", " ┻ "), "2": ("┏━┓", "┏━┛", "┗━━"),
    "3": ("┏━┓", " ━┫", "┗━┛"), "4": ("╻ ╻", "┗━┫", "  ╹"), "5": ("┏━━", "┗━┓", "┗━┛"),
    "6": ("┏━━", "┣━┓", "┗━┛"), "7": ("━━┓", "  ┃", "  ╹"), "8": ("┏━┓", "┣━┫", "┗━┛"),
    "9": ("┏━┓", "┗━┫", "┗━┛"), ".": (" ", " ", "•"), "-": ("   ", "━━━", "   "), " ": (" ", " ", " "),
}
_BARS = "▁▂▃▄▅▆▇█"
#: Redraws per second on Rich's Live.
REFRESH_PER_SECOND = 10


def big_number(text: str) -> list[str]:
    """``text`` (digits, ``.``, ``-``) in a three-row font.

    >>> for row in big_number("4.2"):
    ...     print(row)
    ╻ ╻   ┏━┓
    ┗━┫   ┏━┛
      ╹ • ┗━━
    """
    glyphs = [_FONT.get(ch, _FONT[" "]) for ch in text]
    return [" ".join(g[row] for g in glyphs) for row in range(3)]


def sparkline(values: Sequence[float], top: float) -> str:
    """One character per value on a log scale from 1 to ``top`` (perplexities).

    >>> sparkline([1.0, 3.0, 10.0, 100.0], top=100.0)
    '▁▃▅█'
    """
    if not 1.0 < top < math.inf:
        top = math.e if top <= 1.0 else 1e308
    span = math.log(top)
    out = []
    for v in values:
        # Clamped to [0, 1]: an infinite perplexity (legal: a mean logprob below -709.78) is the top.
        level = min(1.0, math.log(v) / span) if v == v and v >= 1.0 else 0.0
        out.append(_BARS[min(len(_BARS) - 1, max(0, int(level * (len(_BARS) - 1) + 0.5)))])
    return "".join(out)


def ppl_levels(triggers: Iterable[Trigger]) -> list[float]:
    """The running-PPL limits in the triggers' conditions (what the bar marks)."""
    found: list[float] = []

    def walk(c: Condition) -> None:
        if isinstance(c, ppl_above):
            found.append(c.limit)
        elif isinstance(c, (AnyOf, AllOf)):
            for child in c.conditions:
                walk(child)
        elif isinstance(c, sustained):
            walk(c.condition)
        # Not(...): the level is crossed the other way; nothing to mark.

    for t in triggers:
        walk(t.when)
    return sorted(set(found))


class _History:
    """What the gauge keeps of one choice between redraws: bounded, so O(1) memory."""

    def __init__(self, points: int, tokens: int) -> None:
        self.window_ppl: deque[float] = deque(maxlen=points)
        self.recent: deque[tuple[str, float]] = deque(maxlen=tokens)
        self.first_at: float | None = None
        self.last_at = 0.0


def _fmt(x: float, spec: str) -> str:
    return format(x, spec) if x == x and math.isfinite(x) else "–"


class Gauge:
    """A live view of one stream's statistics, a panel per choice.

    Args:
        state: the stream's state (``monitored.state``).
        levels: perplexities marked on the bar (default: the ``ppl_above`` limits of
            the state's triggers, else 10 and 30). Below the first the bar is green,
            between yellow, above the last red.
        show_text: also show the answer's recent tokens, each coloured by its surprisal.
        title: a heading for the panels (e.g. the model or the file).
        history: tokens in the sparkline (default 48).
        clock: the time source for tokens/s (default ``time.monotonic``; injectable for tests).
    """

    def __init__(
        self,
        state: StreamState,
        *,
        levels: Sequence[float] | None = None,
        show_text: bool = False,
        title: str = "",
        history: int = 48,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.state = state
        self.levels = sorted(levels) if levels else (ppl_levels(state.triggers) or [10.0, 30.0])
        self.show_text = show_text
        self.title = title
        self.clock = clock
        self._history_size = history
        self._histories: dict[int, _History] = {}
        self._lock = threading.Lock()  # Live redraws on its own thread
        state.on_token(self._observe)

    def _observe(self, token: Token, stats: ChoiceStats) -> None:
        now = self.clock()
        with self._lock:
            h = self._histories.get(stats.index)
            if h is None:
                h = self._histories[stats.index] = _History(self._history_size, 400)
                h.first_at = now
            h.last_at = now
            h.window_ppl.append(stats.window_ppl)
            if self.show_text:
                h.recent.append((token.text, token.logprob))

    # -- drawing --------------------------------------------------------------------------

    def _colour(self, ppl: float) -> str:
        if not ppl == ppl or ppl <= self.levels[0]:
            return "green"
        return "red" if ppl > self.levels[-1] else "yellow"

    def _scale_top(self) -> float:
        finite = [level for level in self.levels if level < math.inf]
        return max(100.0, 2.0 * finite[-1]) if finite else 100.0

    def _bar(self, ppl: float, width: int) -> Text:
        top = math.log(self._scale_top())
        # Clamped: an infinite perplexity fills the bar instead of overflowing int().
        position = lambda v: min(width - 1, int(min(1.0, math.log(max(v, 1.0)) / top) * width))  # noqa: E731
        filled = position(ppl) + 1 if ppl == ppl else 0
        marks = sorted({position(level) for level in self.levels})
        bar = Text()
        start = 0
        # Runs of one style, appended whole: the gauge is redrawn ten times a second.
        for end in marks + [width]:
            if start < end:
                lit = min(max(filled - start, 0), end - start)
                bar.append("█" * lit, style=self._colour(ppl))
                bar.append("░" * (end - start - lit), style="grey37")
            if end < width:
                bar.append("┃", style="bold white")
            start = end + 1
        return bar

    def _rate(self, h: _History | None, tokens: int) -> float:
        if h is None or h.first_at is None or tokens < 2 or h.last_at <= h.first_at:
            return math.nan
        return (tokens - 1) / (h.last_at - h.first_at)

    def _choice_panel(self, stats: ChoiceStats, width: int) -> Panel:
        with self._lock:
            h = self._histories.get(stats.index)
            points = list(h.window_ppl) if h else []
            recent = list(h.recent) if h else []
        ppl = stats.ppl
        colour = self._colour(ppl)
        inner = max(10, width - 4)
        wide = inner >= 56
        # Right-aligned to a fixed width, so the bar beside it does not jump as digits change.
        number = _fmt(ppl, ".2f" if ppl < 1000 else ".0f").rjust(6)
        lines: list[Any] = []
        bar_width = inner - (len(big_number(number)[0]) + 10 if wide else 10)
        bar_row = Text.assemble(("ppl    ", "bold"), self._bar(ppl, max(8, bar_width)))
        spark = Text.assemble(("window ", "bold"),
                              (sparkline(points[-max(8, bar_width):], self._scale_top()), colour))
        facts = [f"tokens {stats.tokens}", f"{_fmt(self._rate(h, stats.tokens), '.1f')} tok/s",
                 f"min p {_fmt(stats.min_prob, '.3f')}"]
        if stats.topk_positions:
            facts += [f"H {_fmt(stats.entropy_mean, '.2f')} nats", f"conf {_fmt(stats.group_confidence, '.2f')}"]
        if stats.censored or stats.skipped:
            facts.append(f"censored {stats.censored} skipped {stats.skipped}")
        facts_text = Text("  ".join(facts), style="cyan", no_wrap=True, overflow="ellipsis")
        if wide:
            # Rows put together by hand: a Table would cost more than the rest of the frame.
            digits = big_number(number)
            for row, right in zip(digits, (bar_row, spark, facts_text)):
                lines.append(Text.assemble((row + "  ", f"bold {colour}"), right, no_wrap=True, overflow="ellipsis"))
        else:
            lines += [Text.assemble(("PPL ", "bold"), (number.strip(), f"bold {colour}")), bar_row, spark, facts_text]
        lines += self._trigger_lines(stats.index)
        if self.show_text and recent:
            text = self._coloured_text(recent, inner * 2)
            stop = self.state.stopped
            if stop is not None and stop.choice == stats.index:
                text.append(" ■", style="bold red")  # the answer was cut here
            lines.append(text)
        # A Text, not a str: Rich would read markup in a model's or a file's name.
        title = Text(f"choice {stats.index}" + (f" · {safe_line(self.title)}" if self.title else ""))
        return Panel(Group(*lines), title=title, title_align="left", border_style=colour, width=width)

    def _trigger_lines(self, choice: int) -> list[Text]:
        out = []
        stop = self.state.stopped
        events = list(self.state.events)
        if stop is not None and stop.choice == choice:
            # Where (the token that crossed) and why (the rule, and the value it saw), when a trigger stopped it.
            fired = next((e for e in events if e.choice == choice and e.trigger == stop.reason
                          and e.at_token == stop.at_token), None)
            ppl = fired.stats.get("ppl") if fired is not None else None
            why = f" · on {safe_line(repr(fired.token))}" if fired is not None else ""
            why += f", ppl {ppl:.2f}" if isinstance(ppl, float) and why else ""
            out.append(Text(f"■ stopped at token {stop.at_token}: {safe_line(stop.reason)}{why}", style="bold red"))
        events = [e for e in events if e.choice == choice
                  and not (stop is not None and e.trigger == stop.reason and e.at_token == stop.at_token)]
        for event in events[-2:]:
            out.append(Text(f"⚡ {safe_line(event.trigger)} at token {event.at_token}", style="magenta"))
        if self.state.error:  # a server's message: shown as data, on one line
            out.append(Text(f"✖ {safe_line(self.state.error, 500)}", style="bold red"))
        return out

    @staticmethod
    def _coloured_text(recent: list[tuple[str, float]], limit: int) -> Text:
        """The last ``limit`` characters of the answer, each token coloured by its surprisal
        (controls shown as data: :func:`~livepplx.views.textsafe.safe_text`)."""
        kept: list[tuple[str, float]] = []
        size = 0
        for piece, lp in reversed(recent):
            size += len(piece)
            if size > limit:
                break
            kept.append((piece, lp))
        text = Text()
        run, run_style = "", ""
        # Runs of one colour, appended whole: the gauge is redrawn ten times a second.
        for piece, lp in reversed(kept):
            style = "green" if lp > -1.0 else "yellow" if lp > -3.0 else "bold red"
            if style != run_style and run:
                text.append(safe_text(run), style=run_style)
                run = ""
            run, run_style = run + piece, style
        text.append(safe_text(run), style=run_style)
        return text

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        width = min(options.max_width, 120)
        choices = [self.state.choices[i] for i in sorted(self.state.choices)] or [self.state.choice(0)]
        for stats in choices:
            yield self._choice_panel(stats, width)


def watch(
    stream: Any,
    *,
    console: Console | None = None,
    show_text: bool = True,
    title: str = "",
    levels: Sequence[float] | None = None,
    **options: Any,
) -> MonitoredStream[Any]:
    """Monitor a stream and show the gauge until it ends; return the monitored stream.

    On a terminal the gauge redraws ten times a second; elsewhere (a pipe, CI) it is
    drawn once at the end. ``options`` are :func:`livepplx.monitor`'s.

    >>> from livepplx.recordings import recording_path
    >>> from rich.console import Console
    >>> m = watch(open(recording_path("llamacpp-server-chat"), "rb"), console=Console(file=open("/dev/null", "w")))
    >>> m.tokens
    30
    """
    console = console or Console()
    m = stream if isinstance(stream, MonitoredStream) else monitor(stream, **options)
    gauge = Gauge(m.state, levels=levels, show_text=show_text, title=title)
    with m:
        if console.is_terminal:
            with Live(gauge, console=console, refresh_per_second=REFRESH_PER_SECOND):
                for _ in m:
                    pass
        else:
            for _ in m:
                pass
            console.print(gauge)
    return m
