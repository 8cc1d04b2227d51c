"""Imports go one way (../shared/design/layers.md): import-linter's contracts hold.

The contracts live in pyproject.toml (``[tool.importlinter]``); this runs them
in ``make test``, so a change that imports against the layers fails the suite.
An import inside a function would hide a cycle from them, so none is allowed
but in the app loader (``jobkit/app.py``), which imports the app by name.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PRODUCT = ("jobkit", "actors", "brokers", "middleware")
PROJECT = (*PRODUCT, "benchmarks")
#: The one place that imports project code at run time, by name.
APP_LOADER = Path("jobkit/app.py")


def test_the_layer_contracts_hold() -> None:
    lint_imports = Path(sys.executable).parent / "lint-imports"
    result = subprocess.run(
        [str(lint_imports), "--no-cache"], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "BROKEN" not in result.stdout and "KEPT" in result.stdout


def _imports_inside_functions(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        for inner in ast.walk(node):
            if isinstance(inner, ast.Import):
                names = [alias.name for alias in inner.names]
            elif isinstance(inner, ast.ImportFrom):
                names = ["." if inner.level else (inner.module or "")]
            else:
                continue
            found += [
                f"{path}:{inner.lineno} imports {name} inside {node.name}()"
                for name in names
                if name == "." or name.split(".")[0] in PROJECT
            ]
    return found


def test_no_project_module_is_imported_inside_a_function() -> None:
    found = [
        line
        for package in PRODUCT
        for path in sorted((REPO / package).rglob("*.py"))
        if path.relative_to(REPO) != APP_LOADER
        for line in _imports_inside_functions(path)
    ]
    assert found == []


def test_the_function_import_check_sees_one(tmp_path: Path) -> None:
    """The check above is not vacuous: it finds project imports nested in functions."""
    sample = tmp_path / "sample.py"
    sample.write_text(
        "import os\n"
        "def f():\n    import json\n    from brokers import build_broker\n"
        "class C:\n    def g(self):\n        from . import x\n"
    )
    found = _imports_inside_functions(sample)
    assert [line.split(" imports ")[1] for line in found] == ["brokers inside f()", ". inside g()"]


def test_one_module_name_per_meaning() -> None:
    """A module's name says what it holds, once: no two product modules share one."""
    paths: dict[str, list[str]] = {}
    for package in PRODUCT:
        for path in (REPO / package).rglob("*.py"):
            if path.name not in ("__init__.py", "__main__.py"):
                paths.setdefault(path.name, []).append(str(path.relative_to(REPO)))
    assert {name: found for name, found in paths.items() if len(found) > 1} == {}
