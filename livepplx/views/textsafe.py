"""Text from a model or a server, made safe to show on a terminal.

A model's answer, a server's error message, a model name or a trigger name can hold
anything: ``\\x1b]0;title\\x07`` would retitle the terminal, ``\\x1b[2J`` clear it, ``\\r``
and ``\\x08`` overwrite what was printed, U+202E reverse the rest of the line, and a lone
surrogate (JSON allows ``"\\ud800"``) crashes a UTF-8 writer. livepplx shows such text as
data, never as commands, by one rule used by the gauge and every line the CLI prints:

- C0 control characters (U+0000-U+001F) and DEL become their Unicode control pictures:
  ESC is shown ``␛``, CR ``␍``, BS ``␈``, BEL ``␇``, DEL ``␡``. In an answer's text,
  newline and tab are kept (they are the text's layout).
- C1 controls (U+0080-U+009F, e.g. the 8-bit CSI U+009B), bidirectional marks, embeddings,
  overrides and isolates (U+061C, U+200E, U+200F, U+202A-U+202E, U+2066-U+2069) and lone
  surrogates become escapes: ``\\x9b``, ``\\u202e``, ``\\ud800``.
- Everything else (accents, CJK, emoji and their zero-width joiners) is shown as it is.
- A one-line place (an error line, a title, a trigger name) first folds every run of
  whitespace, newlines included, into one space.

No core module imports this one: the statistics see the text as it came.

>>> safe_text("ok\\x1b[2J\\tdone\\n")
'ok␛[2J\\tdone\\n'
>>> safe_line("line one\\r\\nline\\u202etwo")
'line one line\\\\u202etwo'
"""

from __future__ import annotations

import re

__all__ = ["safe_text", "safe_line"]

_UNSAFE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069\ud800-\udfff]")
_UNSAFE_IN_LINE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069\ud800-\udfff]")


def _shown(match: re.Match[str]) -> str:
    code = ord(match.group())
    if code < 0x20:
        return chr(0x2400 + code)  # the control picture: U+241B for ESC
    if code == 0x7F:
        return "\u2421"
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


def safe_text(text: str) -> str:
    """Text (an answer) with newlines and tabs kept and every other control shown as data.

    >>> safe_text("\\x1b]0;pwned\\x07hi\\r\\x08")
    '␛]0;pwned␇hi␍␈'
    >>> safe_text("\\x9b31m \\ud800 é 漢 👍")
    '\\\\x9b31m \\\\ud800 é 漢 👍'
    """
    return _UNSAFE.sub(_shown, text) if _UNSAFE.search(text) else text


def safe_line(text: str, limit: int | None = None) -> str:
    """Text on one line: whitespace runs folded to one space, controls shown as data, cut
    to ``limit`` characters (ending in ``...``) when it is longer.

    >>> safe_line("Traceback:\\n  File x\\n\\x1b[31mboom", limit=20)
    'Traceback: File x...'
    """
    line = " ".join(text.split())
    if _UNSAFE_IN_LINE.search(line):
        line = _UNSAFE_IN_LINE.sub(_shown, line)
    if limit is not None and len(line) > limit:
        line = line[: max(0, limit - 3)] + "..."
    return line
