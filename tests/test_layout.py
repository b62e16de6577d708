"""The floors: the core imports neither openai nor rich (it runs on plain dicts too), and
nothing of livepplx outside ``livepplx/core/``; the folders are the floors."""

from __future__ import annotations

import ast
import pathlib
import subprocess
import sys

import livepplx

PACKAGE = pathlib.Path(livepplx.__file__).parent
CORE = ["livepplx.core", "livepplx.core.tokens", "livepplx.core.errors", "livepplx.core.accumulator",
        "livepplx.core.stats", "livepplx.core.formats", "livepplx.core.sse", "livepplx.core.triggers",
        "livepplx.core.state", "livepplx.monitor", "livepplx"]
# What stays at the top besides the folders core/, integrations/, decide/, views/, recordings/.
TOP = {"__init__.py", "monitor.py", "client.py", "score.py", "local.py", "serve.py", "cli.py", "vote_cli.py"}


def test_the_core_imports_neither_openai_nor_rich() -> None:
    code = ("import sys\n" + "".join(f"import {m}\n" for m in CORE) +
            "print(sorted(m for m in ('openai', 'rich', 'numpy', 'httpx') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def _livepplx_imports(path: pathlib.Path) -> set[str]:
    """The livepplx modules a file imports (absolute names), wherever in the file."""
    package = ["livepplx", *path.parent.relative_to(PACKAGE).parts]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1] if node.level else []
            found.add(".".join(base + (node.module.split(".") if node.module else [])))
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {name for name in found if name == "livepplx" or name.startswith("livepplx.")}


def test_the_core_imports_nothing_of_livepplx_outside_it() -> None:
    outside = {str(path.relative_to(PACKAGE)): sorted(name for name in _livepplx_imports(path)
                                                      if not name.startswith("livepplx.core"))
               for path in (PACKAGE / "core").glob("*.py*")}
    assert {path: names for path, names in outside.items() if names} == {}


def test_the_top_level_holds_only_the_entry_points_and_the_folders() -> None:
    modules = {path.name for path in PACKAGE.glob("*.py")}
    assert modules == TOP
    folders = {path.name for path in PACKAGE.iterdir() if (path / "__init__.py").exists()}
    assert folders == {"core", "integrations", "decide", "views", "recordings"}
    assert not list(PACKAGE.glob("_caccumulator*")), "the C extension lives in livepplx/core/"


def test_every_public_name_is_importable_from_the_top() -> None:
    code = "import livepplx\nfor name in livepplx.__all__:\n    getattr(livepplx, name)\nprint('ok')"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "ok"
