"""The project's shape: the layers import downward only (no cycles), the coding core stays free of I/O, and
no function grows past 80 lines (docs/interfaces.md, "Layers")."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, Set

from nercc.paths import REPO_ROOT
from nercc.tables import format_table

#: Folders holding project code (python_backends: Triton model files, run by the stub).
CODE_FOLDERS = ("nercc", "bench", "loadtest", "export", "python_backends")
MAX_FUNCTION_LINES = 80
#: What nercc.coding may import besides itself: the math it is made of.
CODING_ALLOWED = {"numpy", "scipy", "tqdm", "__future__", "dataclasses", "typing", "math", "numbers",
                  "threading", "collections", "functools", "itertools", "warnings"}
#: The project modules it may import besides itself: the package's tqdm wrapper (quiet off a terminal).
CODING_ALLOWED_PROJECT = {"nercc.progress"}


def _python_files():
    for folder in CODE_FOLDERS:
        yield from sorted((REPO_ROOT / folder).rglob("*.py"))


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO_ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: Path, modules: Set[str]) -> Set[str]:
    """Project modules imported anywhere in ``path`` (top level or inside functions)."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            # `from a import b` imports module a.b when it is one, else the name b of module a
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
        else:
            continue
        found.update(t for t in targets if t in modules)
    found.discard(name)
    return found


def import_graph() -> Dict[str, Set[str]]:
    files = {_module_name(p): p for p in _python_files()}
    return {name: _imports(path, set(files)) for name, path in files.items()}


def _find_cycle(graph: Dict[str, Set[str]]):
    state: Dict[str, int] = {}  # 1: on the current path, 2: done
    stack = []

    def visit(node):
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_no_import_cycles():
    graph = import_graph()
    assert "nercc.coding.tuning" in graph and graph["nercc.bench.tune"] >= {"nercc.bench.experiment"}
    cycle = _find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_find_cycle_finds_one():
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _find_cycle({"a": {"b"}, "b": set()}) is None


def test_coding_core_imports_only_math():
    for path in sorted((REPO_ROOT / "nercc" / "coding").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                assert top in CODING_ALLOWED or name.startswith("nercc.coding") or name in CODING_ALLOWED_PROJECT, \
                    f"{path.name} imports {name}"


def test_the_lower_layers_never_import_the_upper_ones():
    graph = import_graph()
    upper = ("nercc.serving", "nercc.client", "nercc.demo", "nercc.cli", "nercc.bench", "nercc.loadtest",
             "nercc.export")
    for module, imported in graph.items():
        if module.startswith(("nercc.coding", "nercc.profiles", "nercc.models", "nercc.paths", "nercc.tables")):
            assert not [m for m in imported if m.startswith(upper)], (module, imported)


def test_no_function_over_80_lines():
    long = []
    for path in _python_files():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(REPO_ROOT)}:{node.lineno} {node.name} ({lines} lines)")
    assert not long, "functions over 80 lines:\n" + "\n".join(long)


def test_format_table():
    text = format_table([["a", 1.5], ["bbb", 22]], ["name", "x"], align="<>")
    assert text.splitlines() == ["name    x", "----  ---", "a     1.5", "bbb    22"]


def test_backends_import_nercc_as_installed():
    """The Triton stubs import nercc from their Python environment: no sys.path edits, and backend_utils does
    not pull in the cluster launcher (with its exit hook) into every stub."""
    import subprocess
    import sys

    for path in sorted((REPO_ROOT / "python_backends").glob("*/model.py")):
        text = path.read_text()
        assert "sys.path.insert" not in text and "sys.path.append" not in text, path
    code = ("import sys, nercc.serving.backend_utils; "
            "print(sorted(m for m in sys.modules if m.startswith('nercc')))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "nercc.serving.cluster" not in loaded and "atexit" not in loaded, loaded
