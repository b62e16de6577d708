"""The floors: the core imports neither openai nor rich (it runs on plain dicts too)."""

from __future__ import annotations

import subprocess
import sys

CORE = ["livepplx.tokens", "livepplx.accumulator", "livepplx.stats", "livepplx.formats", "livepplx.sse",
        "livepplx.triggers", "livepplx.state", "livepplx.monitor", "livepplx"]


def test_the_core_imports_neither_openai_nor_rich() -> None:
    code = ("import sys\n" + "".join(f"import {m}\n" for m in CORE) +
            "print(sorted(m for m in ('openai', 'rich', 'numpy', 'httpx') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
