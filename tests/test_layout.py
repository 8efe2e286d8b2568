"""The package's shape: no import cycle anywhere in `reconciler/`, and arrows only point
down the layers (core < drivers < specs < controllers < daemon < cli).

Run it as a script too: `python tests/test_layout.py` prints each cycle or upward arrow.
"""

from __future__ import annotations

import ast
import sys
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "reconciler"
LAYERS = ("core", "drivers", "specs", "controllers", "daemon", "cli")


def modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """Every module of the package that `name` imports, anywhere in its body."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name in known}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1] + ([base] if base else []))
            for alias in node.names:
                full = f"{base}.{alias.name}"
                found.add(full if full in known else base)
    return {m for m in found if m in known and m != name}


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports(name, path, known) for name, path in known.items()}


def layer(name: str) -> int | None:
    parts = name.split(".")
    return LAYERS.index(parts[1]) if len(parts) > 1 and parts[1] in LAYERS else None


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Each cycle found, one at a time (TopologicalSorter names one; drop an edge, repeat)."""
    edges = {k: set(v) for k, v in edges.items()}
    found = []
    while True:
        try:
            TopologicalSorter(edges).prepare()
            return found
        except CycleError as exc:
            cycle = exc.args[1]
            found.append(cycle)
            edges[cycle[1]].discard(cycle[0])


def upward(edges: dict[str, set[str]]) -> list[str]:
    bad = []
    for name, targets in sorted(edges.items()):
        for target in sorted(targets):
            here, there = layer(name), layer(target)
            if here is not None and there is not None and there > here:
                bad.append(f"{name} -> {target}")
    return bad


def test_no_import_cycle_in_the_package() -> None:
    assert cycles(graph()) == []


def test_imports_only_point_down_the_layers() -> None:
    assert upward(graph()) == []


PARTS = {"forge": "forge", "landing": "forge", "consul": "consul", "recovery": "consul"}
"""Modules that are parts of one reconciler (besides its `_plan`, `_act` and `_observe`
modules): the forge's steps, the consul's recovery."""


def owner(module: str) -> str:
    leaf = module.rpartition(".")[2]
    for part in ("_plan", "_act", "_observe"):
        leaf = leaf.removesuffix(part)
    return PARTS.get(leaf, leaf)


def test_controllers_never_import_each_other() -> None:
    """A controller uses drivers and core, never another controller (only the registry
    lists them all, and a controller's `*_plan` module is its own)."""
    shared = {"reconciler.controllers", "reconciler.controllers.base"}
    crossing = [f"{name} -> {target}" for name, targets in sorted(graph().items())
                if name.startswith("reconciler.controllers.") and not name.endswith(".registry")
                for target in sorted(targets - shared)
                if target.startswith("reconciler.controllers.") and owner(target) != owner(name)]
    assert crossing == []


def test_the_checker_finds_a_cycle_and_an_upward_arrow() -> None:
    edges = {"reconciler.core.a": {"reconciler.drivers.b"},
             "reconciler.drivers.b": {"reconciler.core.a"}}
    assert cycles(edges) and upward(edges) == ["reconciler.core.a -> reconciler.drivers.b"]


def test_no_dead_code() -> None:
    """vulture finds nothing unused at 80% confidence (unreachable code, unused imports,
    variables and arguments)."""
    import subprocess

    found = subprocess.run([sys.executable, "-m", "vulture", str(PACKAGE),
                            "--min-confidence", "80"], capture_output=True, text=True)
    assert found.returncode == 0, found.stdout + found.stderr


if __name__ == "__main__":
    g = graph()
    problems = [" -> ".join(c) for c in cycles(g)] + upward(g)
    print("\n".join(problems) or "no cycle, no upward import")
    sys.exit(1 if problems else 0)
