"""The limits docs/architecture.md promises a reader: layers (import-linter), no import cycle among carcli's
modules (imports inside functions count), no function body over 60 lines, no module over 500 lines."""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "carcli"
MAX_FUNCTION_LINES = 60
MAX_MODULE_LINES = 500


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in PACKAGE.rglob("*.py")}


def imported_modules(name: str) -> set[str]:
    """The carcli modules `name` imports anywhere in its file (a name inside a module counts as the module)."""
    path = MODULES[name]
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module is not None:
            base = ".".join([*package[: len(package) - node.level + 1], node.module]) if node.level else node.module
            candidates = [base, *(f"{base}.{alias.name}" for alias in node.names)]
        elif isinstance(node, ast.Import):
            candidates = [alias.name for alias in node.names]
        else:
            continue
        for candidate in candidates:
            while candidate and candidate not in MODULES:
                candidate = candidate.rpartition(".")[0]
            if candidate and candidate != name and not name.startswith(candidate + "."):
                found.add(candidate)
    return found


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as the list of its modules, or None (depth-first search with colours)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(edges[node]):
            if state.get(target) == 1:
                return [*path[path.index(target) :], target]
            if target not in state and (cycle := visit(target)):
                return cycle
        state[node] = 2
        path.pop()
        return None

    for start in sorted(edges):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def test_cycle_finder_finds_a_cycle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_no_import_cycle() -> None:
    cycle = find_cycle({name: imported_modules(name) for name in MODULES})
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def long_functions(path: Path) -> list[str]:
    """Functions whose body (no signature, no docstring) is over MAX_FUNCTION_LINES lines."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if len(body) > 1 and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                body = body[1:]
            lines = (node.end_lineno or 0) - body[0].lineno + 1
            if lines > MAX_FUNCTION_LINES:
                found.append(f"{module_name(path)}.{node.name} ({lines} lines)")
    return found


def test_functions_and_modules_are_short() -> None:
    too_long = [f for path in MODULES.values() for f in long_functions(path)]
    too_long += [
        f"module {name} ({lines} lines)"
        for name, path in MODULES.items()
        if (lines := len(path.read_text().splitlines())) > MAX_MODULE_LINES
    ]
    assert not too_long, too_long


def test_every_module_says_what_it_owns() -> None:
    silent = [
        name
        for name, path in MODULES.items()
        if path.stat().st_size and not ast.get_docstring(ast.parse(path.read_text()))
    ]
    assert not silent, f"modules without a docstring: {silent}"


def test_every_module_has_a_layer() -> None:
    """A module left out of the layers contract would be free to import anything."""
    contract = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"][0]
    layered = {name for layer in contract["layers"] for name in re.split(r"[|:]", layer.replace(" ", ""))}
    top_level = {name.split(".")[1] for name in MODULES if name.count(".") >= 1}
    assert top_level - layered == set(), "add these to a layer in pyproject.toml"


def test_the_layers_hold() -> None:
    lint_imports = shutil.which("lint-imports")
    if lint_imports is None:
        pytest.skip("import-linter is not installed (pip install -e '.[test]')")
    result = subprocess.run([lint_imports], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
