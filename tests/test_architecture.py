"""The walls between warnd's layers, read from the source (the AST), not from a running import.

- the core (warnd minus the shell below) imports neither the API, the adapters nor the shell;
  `warnd.api` and `adapters` import the core; the adapters never import the API;
- no cycle between packages (a top-level module of warnd counts as its own package);
- no import inside a function that is there to dodge a cycle (the command-line entry points may
  import lazily for start-up speed, each such import commented);
- SQL lives in warnd/store/ and warnd/migrations/ only.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# The shell: builds and runs warnd, or is a tool beside it. Everything else in warnd is the core.
SHELL = ("warnd.app", "warnd.daemon", "warnd.cli", "warnd.ctl", "warnd.tools")
EDGES = ("warnd.api", "adapters")
# Modules whose function-level imports are deliberate: the command line starts fast.
LAZY_OK = ("warnd.cli", "warnd.ctl")
# SQL as warnd writes it: keywords in capitals (English text says "select a channel").
SQL = re.compile(
    r"\bSELECT\b[\s\S]+\bFROM\b|\bINSERT\s+(OR\s+[A-Z]+\s+)?INTO\b|\bUPDATE\s+\w+\s+SET\b"
    r"|\bDELETE\s+FROM\b|\bCREATE\s+(TABLE|INDEX|VIEW)\b|\bPRAGMA\s+\w+"
)


def modules() -> Iterator[tuple[str, Path]]:
    """(dotted name, path) of every module of warnd and adapters."""
    for top in ("warnd", "adapters"):
        for path in sorted((ROOT / top).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            yield ".".join(parts), path


def imports(name: str, path: Path) -> Iterator[tuple[str, ast.stmt, bool]]:
    """(imported module, the statement, whether it is at module level) for each import."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    top_level = {id(n) for n in _module_level(tree)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node, id(node) in top_level
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            for alias in node.names:
                # `from warnd.api import feeds` imports the module warnd.api.feeds.
                yield f"{target}.{alias.name}", node, id(node) in top_level


def _module_level(tree: ast.Module) -> Iterator[ast.stmt]:
    """Statements run at import: the module body, inside `if`/`try` blocks too, never in functions."""
    stack: list[ast.stmt] = list(tree.body)
    while stack:
        node = stack.pop()
        yield node
        if isinstance(node, ast.If):
            stack += [*node.body, *node.orelse]
        elif isinstance(node, ast.Try):
            stack += [*node.body, *node.orelse, *node.finalbody]
            for handler in node.handlers:
                stack += handler.body


def ours(target: str, known: set[str]) -> str | None:
    """The module of warnd or adapters an import names (longest known prefix), else None."""
    parts = target.split(".")
    while parts:
        candidate = ".".join(parts)
        if candidate in known:
            return candidate
        parts.pop()
    return None


def layer(module: str) -> str:
    """`shell`, `edge` (the API, the adapters) or `core`."""
    if any(module == s or module.startswith(s + ".") for s in SHELL):
        return "shell"
    if any(module == e or module.startswith(e + ".") for e in EDGES):
        return "edge"
    return "core"


def package(module: str) -> str:
    """The package a module counts in: warnd's subpackages and adapters as one; a top-level module alone."""
    parts = module.split(".")
    if parts[0] == "adapters":
        return "adapters"
    return ".".join(parts[:2])


def graph() -> dict[str, set[tuple[str, Path, int]]]:
    """module → {(imported module of ours, file, line)}."""
    mods = dict(modules())
    known = set(mods)
    out: dict[str, set[tuple[str, Path, int]]] = {}
    for name, path in mods.items():
        edges = out.setdefault(name, set())
        for target, node, _top in imports(name, path):
            hit = ours(target, known)
            if hit is not None and hit != name:
                edges.add((hit, path, node.lineno))
    return out


def test_the_core_imports_neither_the_api_the_adapters_nor_the_shell() -> None:
    """Dependencies point inward: the core never names an edge or the shell, even for types."""
    wrong = [
        f"{path.relative_to(ROOT)}:{line} imports {target}"
        for name, edges in graph().items()
        if layer(name) == "core"
        for target, path, line in edges
        if layer(target) != "core"
    ]
    assert wrong == []


def test_the_adapters_never_import_the_api_and_the_api_never_imports_the_adapters() -> None:
    """Webhooks are plain data (warnd.adapter.Webhook) that the shell hands the API to mount."""
    wrong = [
        f"{path.relative_to(ROOT)}:{line} imports {target}"
        for name, edges in graph().items()
        for target, path, line in edges
        if {package(name), package(target)} == {"adapters", "warnd.api"}
        or (layer(name) == "edge" and layer(target) == "shell")
    ]
    assert wrong == []


def test_no_cycle_between_packages() -> None:
    """Package A imports B (at run time or for types) and B imports A: there is none."""
    deps: dict[str, set[str]] = {}
    for name, edges in graph().items():
        for target, _path, _line in edges:
            if package(target) != package(name):
                deps.setdefault(package(name), set()).add(package(target))
    cycles: list[list[str]] = []
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(node: str) -> None:
        """Depth-first; a node met again while still on the path closes a cycle."""
        state[node] = 1
        path.append(node)
        for nxt in sorted(deps.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append([*path[path.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt)
        path.pop()
        state[node] = 2

    for node in sorted(deps):
        if node not in state:
            visit(node)
    assert cycles == []


def test_no_function_level_import_of_our_own_modules() -> None:
    """An import inside a function hides a cycle; only the command line's fast start may use one."""
    mods = dict(modules())
    known = set(mods)
    wrong = [
        f"{path.relative_to(ROOT)}:{node.lineno} imports {target}"
        for name, path in mods.items()
        if not any(name == m or name.startswith(m + ".") for m in LAZY_OK)
        for target, node, top in imports(name, path)
        if not top and ours(target, known) is not None
    ]
    assert wrong == []


def test_sql_is_written_only_in_the_store() -> None:
    """Every string literal that reads as SQL is in warnd/store/ (or a migration file)."""
    wrong = []
    for name, path in modules():
        if name == "warnd.store" or name.startswith("warnd.store."):
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and SQL.search(node.value):
                wrong.append(f"{path.relative_to(ROOT)}:{node.lineno}: {node.value.strip()[:60]!r}")
    assert wrong == []


def test_the_walls_are_checked_on_something() -> None:
    """The walk sees the modules it guards (a wrong root would pass every test above)."""
    mods = dict(modules())
    assert {"warnd.app", "warnd.api", "warnd.store", "adapters.sms", "warnd.mqtt.link"} <= set(mods)
    assert any(t == "warnd.store" for t, _p, _l in graph()["warnd.dispatcher"])
    assert SQL.search("SELECT id FROM warnings") and not SQL.search("select a channel")
