"""A shareable picture of one answer: each token coloured by its surprisal, in one HTML file.

:class:`TokenRecorder` keeps every token of a stream (the statistics keep O(1) per token
and forget them); :func:`render` turns what it kept into one self-contained page: inline
CSS, an inline script and an inline SVG chart, nothing fetched. Hovering or focusing a
token shows its logprob, probability, rank among the listed alternatives and the
alternatives themselves; under the text, the running and windowed perplexity with the
trigger levels and where triggers fired; then the summary statistics; one section a choice.

>>> from livepplx.recordings import recording_path
>>> page = replay_page(open(recording_path("unsure-answer"), "rb").read(), title="unsure")
>>> page.startswith("<!DOCTYPE html>"), "http://" in page.replace("http://www.w3.org/2000/svg", "")
(True, False)

Text from the model or the server is shown, never run: the page's text goes through
:func:`html.escape` after :mod:`livepplx.views.textsafe`'s rule (controls as visible data, lone
surrogates as escapes), and the data the script reads is JSON in a
``<script type="application/json">`` block, ASCII only, with ``<``, ``>`` and ``&``
written as ``\\u003c``... so that no ``</script>`` or ``<!--`` can end it. The script reads
that data and writes it with ``textContent`` only.

Colours: surprisal ``-logprob`` in nats on a fixed scale, from pale (``p`` near 1) to deep
red (``p <= e^-6``, about 0.0025); a skipped token (no usable logprob) is grey and struck
through, a censored one (below everything listed) outlined.
"""

from __future__ import annotations

import html
import json
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterable

from ..core.errors import LivepplxError, NoLogprobsError, StreamFormatError
from ..core.formats import detect_format, parse_chunk
from ..core.sse import MAX_EVENT_BYTES, StreamDecoder
from ..core.stats import ChoiceStats
from .textsafe import safe_line, safe_text
from ..core.tokens import CENSORED_AT_OR_BELOW, SKIPPED, Status, Token, as_logprob
from ..core.triggers import AllOf, AnyOf, Condition, ppl_above, sustained, window_ppl_above

if TYPE_CHECKING:
    from ..core.state import StreamState

__all__ = ["TokenRecorder", "render", "replay_page", "alternative_texts", "surprisal_colour", "MAX_TOKENS"]

#: Tokens a page keeps, all its choices together; past it the page says how many it left
#: out (a page of 100,000 coloured spans is already a heavy one for a browser: 27 MB).
MAX_TOKENS = 100_000
#: Choices a page keeps (the state's own default limit); further ones are counted, not kept.
MAX_CHOICES = 256
#: How much of a captured stream replay_page reads at a time (the command line's read size).
_PIECE = 1 << 16
#: The top of the colour scale, in nats: ``p = e^-6``, about 0.0025, and anything less likely.
MAX_SURPRISAL = 6.0


def surprisal_colour(surprisal: float) -> str:
    """The background of a token of this surprisal (nats): pale yellow at 0 to deep red at
    :data:`MAX_SURPRISAL` and beyond, as an ``hsl()`` colour.

    >>> surprisal_colour(0.0), surprisal_colour(6.0), surprisal_colour(60.0)
    ('hsl(55,90%,96%)', 'hsl(0,85%,52%)', 'hsl(0,85%,52%)')
    """
    x = min(max(surprisal / MAX_SURPRISAL, 0.0), 1.0) if surprisal == surprisal else 0.0
    # Hue from yellow to red, lightness from near white to a red that white text reads on.
    return f"hsl({round(55 * (1 - x))},{round(90 - 5 * x)}%,{round(96 - 44 * x)}%)"


@dataclass
class _Kept:
    """One token as the page shows it."""

    text: str
    logprob: float
    status: Status
    #: (text or None, logprob) of each listed alternative, as the value policy kept them
    alternatives: list[tuple[str | None, float]]
    #: the choice's running and windowed perplexity after this token (NaN if skipped first)
    ppl: float
    window_ppl: float
    #: how many tokens of the choice were counted with this one
    counted: int


@dataclass
class _Choice:
    index: int
    stats: ChoiceStats
    tokens: list[_Kept] = field(default_factory=list)
    left_out: int = 0


def _get(obj: Any, name: str) -> Any:
    if isinstance(obj, dict):
        return obj.get(name)
    return getattr(obj, name, None)


def _seq(value: Any) -> list[Any] | tuple[Any, ...]:
    """``value`` if it is a list (a server's wrong type, a number or an object, reads as none)."""
    return value if isinstance(value, (list, tuple)) else ()


def _listed(tops: Any, key: str, prob: bool) -> list[str | None]:
    """The texts of the alternatives the value policy keeps, in their order."""
    if not isinstance(tops, (list, tuple)):
        return []
    texts: list[str | None] = []
    for top in tops:
        value = as_logprob(_get(top, key), prob)
        if value is not None and value > CENSORED_AT_OR_BELOW:
            text = next((t for t in (_get(top, n) for n in ("token", "tok_str", "text")) if isinstance(t, str)), None)
            texts.append(text)
    return texts


def _entry_texts(entries: Any) -> list[list[str | None]]:
    """``{token, logprob, top_logprobs: [{token, logprob}]}`` entries (chat, Responses,
    Ollama, llama.cpp's native ``top_logprobs``, ``top_probs`` or older ``probs``)."""
    out: list[list[str | None]] = []
    for e in entries if isinstance(entries, (list, tuple)) else ():
        if _get(e, "top_logprobs") is not None:
            out.append(_listed(_get(e, "top_logprobs"), "logprob", False))
        else:
            out.append(_listed(_get(e, "top_probs") if _get(e, "top_probs") is not None else _get(e, "probs"),
                               "prob", True))
    return out


def alternative_texts(chunk: Any, fmt: str) -> list[list[str | None]] | None:
    """The alternatives' texts of each token of ``chunk``, in :func:`parse_chunk`'s order,
    for the formats that name them; None when this chunk's shape is not one of those (the
    page then shows the alternatives' probabilities without their text)."""
    if fmt in ("openai-chat", "openai-completions"):
        out: list[list[str | None]] = []
        for choice in _seq(_get(chunk, "choices")):
            logprobs = _get(choice, "logprobs")
            if logprobs is None:
                continue
            found = False
            for key in ("content", "refusal"):
                entries = _get(logprobs, key)
                if isinstance(entries, (list, tuple)):
                    out += _entry_texts(entries)
                    found = True
            if not found and isinstance(_get(logprobs, "token_logprobs"), (list, tuple)):
                tops = _seq(_get(logprobs, "top_logprobs"))
                for j in range(len(_get(logprobs, "token_logprobs"))):
                    top = tops[j] if j < len(tops) else None
                    out.append([k for k, v in top.items() if (lp := as_logprob(v)) is not None
                                and lp > CENSORED_AT_OR_BELOW] if isinstance(top, dict) else [])
        return out
    if fmt == "llamacpp-native":
        return _entry_texts(_get(chunk, "completion_probabilities"))
    if fmt == "openai-responses" and _get(chunk, "object") == "response":
        # A whole Response: the output_text parts of its messages, in parse_chunk's order.
        out = []
        for item in _seq(_get(chunk, "output")):
            if _get(item, "type") == "message":
                for part in _seq(_get(item, "content")):
                    if _get(part, "type") == "output_text":
                        out += _entry_texts(_get(part, "logprobs"))
        return out
    if fmt in ("ollama", "openai-responses"):
        return _entry_texts(_get(chunk, "logprobs"))
    if fmt == "tgi":
        if _get(chunk, "token") is not None:
            return [_listed(_get(chunk, "top_tokens"), "logprob", False)]
        details = _get(chunk, "details")
        tops = _seq(_get(details, "top_tokens"))
        return [_listed(tops[j] if j < len(tops) else (), "logprob", False)
                for j in range(len(_seq(_get(details, "tokens"))))]
    if fmt == "gemini":
        out = []
        for candidate in _seq(_get(chunk, "candidates")):
            result = _get(candidate, "logprobsResult")
            tops = _seq(_get(result, "topCandidates"))
            for j in range(len(_seq(_get(result, "chosenCandidates")))):
                out.append(_listed(_get(tops[j], "candidates") if j < len(tops) else (), "logProbability", False))
        return out
    return None


class TokenRecorder:
    """Every token of one stream, for :func:`render`: fed the chunks the stream's
    :class:`~livepplx.core.state.StreamState` is fed (raw SSE/NDJSON bytes or lines, dicts, or
    the openai SDK's objects), it reads them itself and keeps per token its text, logprob,
    alternatives and the perplexities after it (the same :class:`ChoiceStats` arithmetic).

    Memory grows with the answer (the statistics' O(1) does not hold here): at most
    :data:`MAX_TOKENS` tokens (all choices together) and :data:`MAX_CHOICES` choices are
    kept, the rest counted.

    >>> rec = TokenRecorder()
    >>> rec.feed(b'data: {"choices": [{"index": 0, "delta": {"content": "Hi"}, "logprobs": '
    ...          b'{"content": [{"token": "Hi", "logprob": -0.5, "top_logprobs": '
    ...          b'[{"token": "Hi", "logprob": -0.5}, {"token": "Yo", "logprob": -1.5}]}]}}]}\\n\\n')
    >>> kept = rec.choices[0].tokens[0]
    >>> kept.text, kept.alternatives, round(kept.ppl, 4)
    ('Hi', [('Hi', -0.5), ('Yo', -1.5)], 1.6487)
    """

    def __init__(self, window: int = 64, max_event_bytes: int = MAX_EVENT_BYTES, max_tokens: int = MAX_TOKENS,
                 max_choices: int = MAX_CHOICES) -> None:
        ChoiceStats(window=window)  # the window's own check
        self.window = window
        self.max_tokens = max_tokens
        self.max_choices = max_choices
        #: tokens kept, all choices together
        self.kept = 0
        self._refused: set[int] = set()
        self.format: str | None = None
        #: choices by index
        self.choices: dict[int, _Choice] = {}
        #: raw events that were not JSON (the state counts them too)
        self.unreadable = 0
        self._decoder: StreamDecoder | None = None
        self._max_event_bytes = max_event_bytes

    @property
    def left_out_choices(self) -> int:
        """Choices past ``max_choices``: their tokens were read, not kept."""
        return len(self._refused)

    @property
    def has_logprobs(self) -> bool:
        """True once a choice counted a token with a logprob."""
        return any(c.stats.tokens for c in self.choices.values())

    def feed(self, chunk: Any) -> None:
        """Read one chunk: raw bytes or text (decoded here), or a decoded object."""
        if isinstance(chunk, (bytes, bytearray, memoryview, str)):
            if self._decoder is None:
                self._decoder = StreamDecoder(self._max_event_bytes)
            try:
                values = self._decoder.feed_values(chunk if not isinstance(chunk, str) or chunk.endswith("\n")
                                                   else chunk + "\n")
            except StreamFormatError:
                self.unreadable += 1
                return  # the state reports the stream's own error
            for value in values:
                self._object(value)
        else:
            self._object(chunk)

    def close(self) -> None:
        """The input ended: read the last event if it was left without its blank line."""
        if self._decoder is not None:
            try:
                events = self._decoder.close()
            except StreamFormatError:
                return
            for event in events:
                self._object(event.data)

    def _object(self, value: Any) -> None:
        for chunk in value if type(value) is list else (value,):
            if self.format is None:
                self.format = detect_format(chunk)
                if self.format is None:
                    continue
            try:
                tokens = parse_chunk(chunk, self.format).tokens
            except Exception:  # noqa: BLE001 - a chunk the state also cannot read: the state reports it
                continue
            # Past the cap the tokens are only counted: their alternatives' names are not read.
            texts = alternative_texts(chunk, self.format) if tokens and self.kept < self.max_tokens else None
            if texts is not None and len(texts) != len(tokens):
                texts = None  # a shape this reader does not know: values without names
            for j, token in enumerate(tokens):
                self._add(token, texts[j] if texts is not None else None)

    def _add(self, token: Token, texts: list[str | None] | None) -> None:
        kept = self.choices.get(token.choice)
        if kept is None:
            if len(self.choices) >= self.max_choices:
                if len(self._refused) < 1 << 16:  # counted up to a bound: a hostile stream's indexes cost no more
                    self._refused.add(token.choice)
                return
            kept = self.choices[token.choice] = _Choice(token.choice, ChoiceStats(token.choice, window=self.window))
        stats = kept.stats
        stats.update(token)
        if self.kept >= self.max_tokens:
            kept.left_out += 1
            return
        self.kept += 1
        values = token.alternatives
        names: list[str | None] = list(texts) if texts is not None and len(texts) == len(values) else [None] * len(values)
        alternatives = sorted(zip(names, values), key=lambda a: -a[1])
        kept.tokens.append(_Kept(token.text, token.logprob, token.status, alternatives,
                                 stats.ppl if stats.tokens else math.nan,
                                 stats.window_ppl if stats.tokens else math.nan, stats.tokens))


# -- the page -----------------------------------------------------------------------------


def _num(x: float | None, digits: int = 3) -> str:
    if x is None or not isinstance(x, (int, float)) or not math.isfinite(x):
        return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else ("inf" if x > 0 else "-inf")
    return f"{x:.{digits}f}" if abs(x) < 1e6 else f"{x:.4g}"


def _finite(x: float) -> float | None:
    return x if isinstance(x, (int, float)) and math.isfinite(x) else None


def _rank(token: _Kept) -> tuple[int | None, int]:
    """Where the sampled token stands among the listed alternatives: (rank from 1, or None
    when it is below every one listed; how many were listed)."""
    listed = len(token.alternatives)
    if token.status is SKIPPED or not listed:
        return None, listed
    named = [i for i, (text, _) in enumerate(token.alternatives) if text is not None and text == token.text]
    if named:
        return named[0] + 1, listed
    above = sum(1 for _, value in token.alternatives if value > token.logprob)
    if token.status is Status.CENSORED or above == listed and token.logprob < token.alternatives[-1][1]:
        return None, listed
    return above + 1, listed


def _levels(state: StreamState | None) -> list[dict[str, Any]]:
    """The perplexity levels the stream's triggers watch: each ``ppl_above`` and
    ``window_ppl_above`` in a trigger's condition, with the trigger's name."""
    if state is None:
        return []
    found: list[dict[str, Any]] = []

    def walk(condition: Condition, name: str) -> None:
        if isinstance(condition, (ppl_above, window_ppl_above)):
            found.append({"name": name, "level": condition.limit,
                          "line": "window" if isinstance(condition, window_ppl_above) else "running"})
        elif isinstance(condition, (AnyOf, AllOf)):
            for c in condition.conditions:
                walk(c, name)
        elif isinstance(condition, sustained):
            walk(condition.condition, name)

    for trigger in state.triggers:
        walk(trigger.when, safe_line(trigger.name, 120))
    return found


def _choice_data(kept: _Choice, state: StreamState | None) -> dict[str, Any]:
    tokens = kept.tokens
    if state is not None and (state.stopped is not None or state.error is not None):
        # The recorder read the whole chunk; the state counted up to the crossing token (or
        # up to the event that failed the stream).
        stats = state.choices.get(kept.index)
        counted = stats.tokens if stats is not None else 0
        if stats is None:
            tokens = []  # a choice the state refused (one too many) or never reached
        elif counted:
            end = next((i + 1 for i, t in enumerate(tokens) if t.counted == counted and t.status is not SKIPPED),
                       len(tokens))
            tokens = tokens[:end]
    out = []
    for t in tokens:
        rank, listed = _rank(t)
        out.append({
            "t": safe_text(t.text),
            "lp": _finite(t.logprob),
            "s": int(t.status),
            "r": rank,
            "n": listed,
            "a": [[safe_text(a) if a is not None else None, v] for a, v in t.alternatives],
            "c": t.counted,
        })
    return {"index": kept.index, "tokens": out, "left_out": kept.left_out}


_CSS = """
:root{color-scheme:light;--ink:#1d2330;--muted:#5b6475;--line:#d8dce4}
*{box-sizing:border-box}
body{margin:0;padding:24px 28px 48px;font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:var(--ink);background:#fff}
h1{font-size:20px;margin:0 0 4px}h2{font-size:16px;margin:28px 0 8px}
.meta{color:var(--muted);font-size:13px;margin:0 0 12px}
.legend{display:flex;align-items:center;gap:10px;font-size:12px;color:var(--muted);margin:8px 0 16px;flex-wrap:wrap}
.scale{display:flex;border:1px solid var(--line);border-radius:4px;overflow:hidden}
.scale span{width:44px;height:18px;display:flex;align-items:center;justify-content:center;font-size:11px}
.answer{white-space:pre-wrap;word-break:break-word;font:15px/1.9 ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;
border:1px solid var(--line);border-radius:6px;padding:12px 14px;background:#fcfcfd;max-width:980px}
.tok{border-radius:3px;padding:1px 0;cursor:default;outline:none}
.tok:hover,.tok:focus{box-shadow:0 0 0 2px #1d4ed8}
.key{border-radius:3px;padding:0 4px}
.skip{background:#e5e7eb;color:#6b7280;text-decoration:line-through}
.cens{box-shadow:inset 0 0 0 1px #7f1d1d}
.tok.fired{border-bottom:3px solid #1d4ed8}
.tip{position:absolute;z-index:10;min-width:220px;max-width:360px;background:#111827;color:#f9fafb;border-radius:6px;
padding:8px 10px;font-size:12px;line-height:1.45;box-shadow:0 6px 20px rgba(0,0,0,.25);pointer-events:none}
.tip[hidden]{display:none}
.tip .tt{font:13px ui-monospace,Menlo,Consolas,monospace;white-space:pre-wrap;background:#374151;padding:0 4px;border-radius:3px}
.tip table{border-collapse:collapse;width:100%;margin-top:6px}
.tip td{padding:1px 4px;font:12px ui-monospace,Menlo,Consolas,monospace;white-space:pre}
.tip td.bar{width:40%}.tip td.bar i{display:block;height:8px;background:#60a5fa;border-radius:2px}
.tip tr.me td{color:#fde68a}
svg.chart{display:block;max-width:980px;width:100%;height:auto;margin-top:14px}
table.stats{border-collapse:collapse;font-size:13px;margin-top:12px}
table.stats td,table.stats th{border-bottom:1px solid var(--line);padding:3px 12px 3px 0;text-align:left}
table.stats th{color:var(--muted);font-weight:500}
.note{color:#92400e;font-size:13px}
"""

_JS = """
(function(){
"use strict";
var data=JSON.parse(document.getElementById("livepplx-data").textContent);
var tip=document.getElementById("tip");
function fmt(x,d){return x===null||x===undefined?"-":x.toFixed(d);}
function prob(lp){if(lp===null)return "-";var p=Math.exp(lp);return p>=0.001?p.toFixed(4):p.toExponential(2);}
function cell(tr,text,cls){var td=document.createElement("td");td.textContent=text;if(cls)td.className=cls;tr.appendChild(td);return td;}
function show(el){
  var c=data.choices[el.getAttribute("data-c")],t=c.tokens[+el.getAttribute("data-i")];
  while(tip.firstChild)tip.removeChild(tip.firstChild);
  var head=document.createElement("div");
  var tt=document.createElement("span");tt.className="tt";tt.textContent=t.t;head.appendChild(tt);
  tip.appendChild(head);
  var lines=[];
  if(t.s===2){lines.push("no usable logprob: skipped by the statistics");}
  else{
    lines.push("logprob "+fmt(t.lp,4)+"   p "+prob(t.lp)+(t.s===1?"   (censored: below every listed)":""));
    lines.push(t.n?(t.r?"rank "+t.r+" of "+t.n+" listed":"below all "+t.n+" listed"):"no alternatives listed");
  }
  for(var k=0;k<lines.length;k++){var d=document.createElement("div");d.textContent=lines[k];tip.appendChild(d);}
  if(t.a.length){
    var table=document.createElement("table");table.className="alts";
    for(var j=0;j<t.a.length;j++){
      var a=t.a[j],tr=document.createElement("tr");
      if(t.r===j+1)tr.className="me";
      cell(tr,a[0]===null?"(not named)":JSON.stringify(a[0]).slice(1,-1));
      cell(tr,prob(a[1]));
      var bar=cell(tr,"","bar"),i=document.createElement("i");i.style.width=(100*Math.exp(a[1])).toFixed(1)+"%";bar.appendChild(i);
      table.appendChild(tr);
    }
    tip.appendChild(table);
  }
  tip.hidden=false;
  var r=el.getBoundingClientRect();
  var x=Math.min(window.scrollX+r.left,window.scrollX+document.documentElement.clientWidth-tip.offsetWidth-8);
  tip.style.left=Math.max(8,x)+"px";tip.style.top=(window.scrollY+r.bottom+6)+"px";
}
function hide(){tip.hidden=true;}
var toks=document.querySelectorAll(".tok[data-i]");
for(var n=0;n<toks.length;n++){
  toks[n].addEventListener("mouseenter",function(){show(this);});
  toks[n].addEventListener("focus",function(){show(this);});
  toks[n].addEventListener("mouseleave",hide);
  toks[n].addEventListener("blur",hide);
}
document.addEventListener("keydown",function(e){if(e.key==="Escape")hide();});
})();
"""


def _script_json(data: Any) -> str:
    """JSON that stays inside its ``<script>`` element whatever its strings hold: ASCII only
    (so U+2028 and lone surrogates are escapes), ``<``, ``>`` and ``&`` escaped.

    >>> _script_json({"t": "</script><!--\\u2028"})
    '{"t": "\\\\u003c/script\\\\u003e\\\\u003c!--\\\\u2028"}'
    """
    text = json.dumps(data, ensure_ascii=True, allow_nan=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _e(text: str) -> str:
    """Text for the page: controls shown as data, then HTML-escaped."""
    return html.escape(safe_text(text), quote=True)


def _chart(index: int, tokens: list[_Kept], levels: list[dict[str, Any]], fired: list[tuple[int, str]]) -> str:
    """The running and windowed perplexity of one choice as an inline SVG, log scale."""
    points = [(t.counted, t.ppl, t.window_ppl) for t in tokens if t.status is not SKIPPED and math.isfinite(t.ppl)]
    if not points:
        return ""
    width, height, left, right, top, bottom = 960, 220, 52, 16, 14, 30
    n = max(points[-1][0], 2)
    levels = [lv for lv in levels if math.isfinite(lv["level"]) and lv["level"] > 0]  # a level of inf: not drawn
    values = [v for _, a, b in points for v in (a, b) if math.isfinite(v)] + [lv["level"] for lv in levels]
    low, high = max(1.0, min(values)), max(max(values), 2.0)
    ylo, yhi = math.log(low), math.log(high * 1.15)
    if yhi - ylo < 1e-9:
        yhi = ylo + 1.0

    def x(i: float) -> float:
        return left + (i - 1) / (n - 1) * (width - left - right)

    def y(v: float) -> float:
        v = min(max(v, low), high * 1.15)
        return top + (1 - (math.log(v) - ylo) / (yhi - ylo)) * (height - top - bottom)

    parts = [f'<svg class="chart" viewBox="0 0 {width} {height}" role="img" xmlns="http://www.w3.org/2000/svg" '
             f'aria-label="running and windowed perplexity of choice {index}">',
             f'<rect x="{left}" y="{top}" width="{width - left - right}" height="{height - top - bottom}" '
             'fill="#fafafa" stroke="#d8dce4"/>']
    ticks = [t * 10**e for e in range(0, 12) for t in (1, 1.5, 2, 3, 5, 7)
             if low <= t * 10**e <= high * 1.15]
    for t in ticks[:: max(1, math.ceil(len(ticks) / 6))]:
        parts.append(f'<line x1="{left}" x2="{width - right}" y1="{y(t):.1f}" y2="{y(t):.1f}" stroke="#eceef2"/>'
                     f'<text x="{left - 6}" y="{y(t) + 4:.1f}" text-anchor="end" font-size="11" fill="#5b6475">{t:g}</text>')
    step = max(1, int(round(n / 8, -1)) or 1)
    for i in sorted({1, n, *range(0, n + 1, step)} - {0}):
        parts.append(f'<text x="{x(i):.1f}" y="{height - 12}" text-anchor="middle" font-size="11" fill="#5b6475">{i}</text>')
    parts.append(f'<text x="{width - right}" y="{height - 1}" text-anchor="end" font-size="11" fill="#5b6475">token</text>')
    for lv in levels:
        yy = y(lv["level"])
        parts.append(f'<line x1="{left}" x2="{width - right}" y1="{yy:.1f}" y2="{yy:.1f}" stroke="#dc2626" '
                     f'stroke-dasharray="6 4"><title>{html.escape(lv["name"])}</title></line>'
                     f'<text x="{width - right - 14}" y="{yy - 5:.1f}" text-anchor="end" font-size="11" fill="#dc2626">'
                     f'{html.escape(lv["line"])} ppl {lv["level"]:g}: {html.escape(lv["name"][:60])}</text>')
    for key, colour, dash in ((2, "#9333ea", ' stroke-dasharray="4 3"'), (1, "#1d4ed8", "")):
        path = " ".join(f"{x(p[0]):.1f},{y(p[key]):.1f}" for p in points if math.isfinite(p[key]))
        parts.append(f'<polyline fill="none" stroke="{colour}" stroke-width="2"{dash} points="{path}"/>')
    by_count = {p[0]: p for p in points}
    for at, name in fired:
        p = by_count.get(at)
        if p is not None:
            parts.append(f'<circle class="fire" cx="{x(at):.1f}" cy="{y(p[1]):.1f}" r="6" fill="#dc2626" stroke="#fff" '
                         f'stroke-width="2"><title>{html.escape(name)} fired at token {at}</title></circle>')
    parts.append(f'<g font-size="12"><line x1="{left + 10}" x2="{left + 34}" y1="{top + 14}" y2="{top + 14}" '
                 f'stroke="#1d4ed8" stroke-width="2"/><text x="{left + 40}" y="{top + 18}">running ppl</text>'
                 f'<line x1="{left + 130}" x2="{left + 154}" y1="{top + 14}" y2="{top + 14}" stroke="#9333ea" '
                 f'stroke-width="2" stroke-dasharray="4 3"/><text x="{left + 160}" y="{top + 18}">window ppl</text>'
                 + (f'<circle cx="{left + 262}" cy="{top + 14}" r="5" fill="#dc2626"/><text x="{left + 272}" '
                    f'y="{top + 18}">trigger fired</text>' if fired else "") + "</g></svg>")
    return "".join(parts)


_STAT_ROWS = (("tokens", "tokens", 0), ("ppl", "perplexity", 3), ("window_ppl", "window perplexity", 3),
              ("min_prob", "lowest p", 4), ("max_surprisal", "largest surprisal (nats)", 3),
              ("entropy_mean", "mean entropy (nats)", 3), ("censored", "censored", 0), ("skipped", "skipped", 0))


def _stats_table(stats: dict[str, Any]) -> str:
    rows = []
    for key, label, digits in _STAT_ROWS:
        value = stats.get(key)
        if isinstance(value, str):  # json_number's "inf" and "-inf"
            value = float(value) if value in ("inf", "-inf") else math.nan
        shown = str(value) if digits == 0 else _num(value, digits)
        rows.append(f"<tr><th>{label}</th><td>{html.escape(shown)}</td></tr>")
    return '<table class="stats">' + "".join(rows) + "</table>"


def _legend() -> str:
    cells = []
    for s in (0.0, 0.5, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0):
        p = math.exp(-s)
        ink = "#fff" if s >= 4 else "#1d2330"
        cells.append(f'<span style="background:{surprisal_colour(s)};color:{ink}" title="surprisal {s:g} nats">'
                     f"{p:.2g}</span>")
    return ('<div class="legend" aria-label="colour scale"><span>p =</span><span class="scale">' + "".join(cells)
            + '</span><span>surprisal 0 to 6+ nats (-logprob)</span><span class="key skip">skipped</span>'
            '<span class="key cens" style="background:' + surprisal_colour(6) + ';color:#fff">censored</span></div>')


def render(recorder: TokenRecorder, state: StreamState | None = None, *, title: str = "livepplx") -> str:
    """The page of what ``recorder`` kept, with ``state``'s summary, triggers and stop.

    Raises :class:`~livepplx.core.errors.NoLogprobsError` when no token carried a logprob
    (an empty stream, or a server that sent none): there is nothing to colour.
    """
    if not recorder.has_logprobs:
        raise NoLogprobsError("the stream had no token with a logprob, so there is nothing to colour "
                              "(was it empty, or did the request not ask for logprobs?)")
    levels = _levels(state)
    events = list(state.events) if state is not None else []
    summary = state.summary() if state is not None else None
    stats_of = {c["index"]: c for c in summary["choices"]} if summary else {}
    data: dict[str, Any] = {"choices": {}}
    sections = []
    for index in sorted(recorder.choices):
        kept = recorder.choices[index]
        if not kept.stats.tokens and not kept.tokens:
            continue
        choice = _choice_data(kept, state)
        if not choice["tokens"] and not kept.left_out:
            continue
        data["choices"][str(index)] = choice
        shown = kept.tokens[: len(choice["tokens"])]
        fired = [(e.at_token, safe_line(e.trigger, 120)) for e in events if e.choice == index]
        fired_at = {at for at, _ in fired}
        spans = []
        for i, t in enumerate(shown):
            cls = "tok"
            style = ""
            if t.status is SKIPPED:
                cls += " skip"
            else:
                style = f' style="background:{surprisal_colour(-t.logprob)}' + (';color:#fff"' if -t.logprob >= 4 else '"')
                if t.status is Status.CENSORED:
                    cls += " cens"
                if t.counted in fired_at:
                    cls += " fired"
            spans.append(f'<span class="{cls}" tabindex="0" data-c="{index}" data-i="{i}"{style}>{_e(t.text)}</span>')
        more = (f'<p class="note">{kept.left_out:,} more token{" was" if kept.left_out == 1 else "s were"} read and counted, not shown '
                f"(a page keeps at most {recorder.max_tokens:,} tokens, all choices together)</p>") if kept.left_out else ""
        stats = stats_of.get(index) or kept.stats.as_dict()
        fired_lines = "".join(f"<li>{html.escape(name)}: fired at token {at}</li>" for at, name in fired)
        sections.append(
            f'<section id="choice-{index}"><h2>choice {index}</h2>'
            f'<div class="answer">{"".join(spans)}</div>{more}'
            f'{_chart(index, shown, levels, fired)}'
            + (f'<ul class="fired">{fired_lines}</ul>' if fired_lines else "")
            + f"{_stats_table(stats)}</section>")
    meta = [f"format {recorder.format or 'unknown'}"]
    if summary:
        if summary.get("stopped"):
            s = summary["stopped"]
            meta.append(f"stopped at token {s['at_token']} of choice {s['choice']}: {safe_line(s['reason'], 200)}")
        elif state is not None and state.error:
            meta.append(f"error: {safe_line(state.error, 300)}")
        else:
            meta.append("complete" if summary.get("complete") else "not read to its end")
    meta.append(f"{len(sections)} choice{'s' if len(sections) != 1 else ''}")
    if recorder.left_out_choices:
        n = recorder.left_out_choices
        sections.append(f'<p class="note">{n:,} more choice{" was" if n == 1 else "s were"} read, not shown '
                        f"(a page keeps at most {recorder.max_choices:,})</p>")
    page_title = html.escape(safe_line(title, 200))
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'; "
        "script-src 'unsafe-inline'; img-src data:\">"
        f"<title>{page_title} - livepplx</title><style>{_CSS}</style></head><body>"
        f"<h1>{page_title}</h1><p class=\"meta\">{html.escape(' · '.join(meta))}</p>{_legend()}"
        f"{''.join(sections)}"
        '<p class="meta">Made by livepplx. Hover or focus (Tab) a token for its logprob, probability, rank and '
        "alternatives.</p>"
        '<div class="tip" id="tip" role="tooltip" hidden></div>'
        f'<script type="application/json" id="livepplx-data">{_script_json(data)}</script>'
        f"<script>{_JS}</script></body></html>\n"
    )


def replay_page(source: bytes | str | Iterable[Any], *, title: str = "livepplx", max_tokens: int = MAX_TOKENS,
                **options: Any) -> str:
    """The page of a whole captured stream (raw bytes or text, or an iterable of chunks),
    read by a :class:`~livepplx.core.state.StreamState` with ``options`` (its keywords); the page
    keeps at most ``max_tokens`` tokens (:class:`TokenRecorder`)."""
    from ..core.state import StreamState

    options.setdefault("on_missing_logprobs", "ignore")
    state = StreamState(**options)
    recorder = TokenRecorder(window=state.options.window, max_event_bytes=state.options.max_event_bytes,
                             max_tokens=max_tokens, max_choices=state.options.max_choices)
    # Bytes are read in pieces, as the command line reads a file: decoding every event at
    # once would hold them all (a 1,000,000-token capture: gigabytes) past the cap.
    chunks: Iterable[Any]
    if isinstance(source, bytes):
        chunks = (source[i:i + _PIECE] for i in range(0, len(source), _PIECE))
    else:
        chunks = [source] if isinstance(source, str) else source
    for chunk in chunks:
        try:
            state.handle(chunk)
        except LivepplxError:
            pass  # the state keeps the error; the page says it and shows what was counted
        recorder.feed(chunk)  # the chunk the stream stopped or failed in: its tokens up to there
        if state.stopped is not None or state.error is not None:
            break
    state.finish()
    recorder.close()
    return render(recorder, state, title=title)
