"""The shape of the package, read from the source: no import cycles (imports inside functions
and ``TYPE_CHECKING`` blocks counted), no import from a lower floor of the house to a higher
one (the floors of DESIGN.md's parts table), and no module past 350 lines."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).parent.parent / "src"
MAX_LINES = 350

# Floors from the bottom up: a module may import its own floor's modules (without a cycle)
# and any floor below. DESIGN.md's parts table, with errors first (config imports it) and
# metrics at the bottom (it imports nothing of ours).
FLOORS = [
    ["errors", "metrics", "chaos"],
    ["config"],
    ["results", "provenance", "token_values"],
    ["quiet", "events", "cache"],
    ["models", "data", "capability"],
    ["toolenv", "toolserver", "isolation"],
    ["backends"],
    ["reference", "evaluate", "tasks"],
    ["store"],
    ["context", "measure", "preflight", "runner"],
    ["sweeps", "mixed", "recovery"],
    ["decide"],
    ["report"],
    ["specs", "api", "cli", ""],  # "": the package itself (quantscope/__init__.py)
]


def modules() -> dict[str, Path]:
    found = {}
    for path in (SRC / "quantscope").rglob("*.py"):
        name = ".".join(path.relative_to(SRC).with_suffix("").parts)
        found[name.removesuffix(".__init__")] = path
    return found


def imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """Our modules ``name`` imports, anywhere in its file. ``from pkg import sub`` counts as
    importing ``pkg.sub`` (not ``pkg``'s own code) when ``sub`` is a module."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            targets = [
                f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names
            ]
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports(name, path, known) for name, path in known.items()}


def floor(name: str) -> int:
    part = name.removeprefix("quantscope").removeprefix(".").split(".")[0]
    for level, parts in enumerate(FLOORS):
        if part in parts:
            return level
    raise AssertionError(f"{name} is on no floor; add its part to FLOORS (and DESIGN's table)")


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in edges:
        if v not in index:
            visit(v)
    return out


def test_the_checker_finds_a_cycle_and_an_upward_import() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert floor("quantscope.results") < floor("quantscope.report.notebook")
    assert floor("quantscope") == len(FLOORS) - 1


def test_no_import_cycles() -> None:
    assert cycles(graph()) == []


def test_no_import_reaches_a_higher_floor() -> None:
    upward = [
        f"{name} -> {target}"
        for name, targets in graph().items()
        for target in targets
        if floor(target) > floor(name)
    ]
    assert upward == []


def test_no_module_is_longer_than_a_newcomer_can_read() -> None:
    long = {
        str(path.relative_to(SRC)): n
        for path in modules().values()
        if (n := len(path.read_text(encoding="utf-8").splitlines())) > MAX_LINES
    }
    assert long == {}
