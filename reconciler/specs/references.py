"""References across a whole set of manifests: worlds, dependsOn, caravans, duplicates.

manifests.py validates each document on its own against its schema; what one document
says about another is checked here, once every document of the set is read, and reported
at the node that makes the reference, like every other problem.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from graphlib import CycleError, TopologicalSorter
from typing import TYPE_CHECKING, Any

from reconciler.core.model import split_ref

if TYPE_CHECKING:
    from reconciler.specs.documents import Document, Problem

Key = tuple[str, str]  # (world, name) of a writ


def suggest(word: Any, choices: Sequence[Any]) -> str:
    """A did-you-mean hint for a misspelt name (also used by manifests.py), or nothing."""
    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _get(data: Any, *path: str) -> list[Any]:
    """The list at `path`, or [] (the schema reports anything else)."""
    for step in path:
        data = data.get(step) if isinstance(data, dict) else None
    return data if isinstance(data, list) else []


def cross_problems(docs: list[Document], complete: bool) -> list[Problem]:
    """References across the whole set: worlds, dependsOn, caravans, duplicate names
    (per kind and world, so an envoy and a writ may share a name; two envoys may not).

    When some file could not be read or parsed, the target of a reference may be in the
    part that was lost, so unknown references are not reported then; the rest still is.
    """
    problems: list[Problem] = []
    owners: dict[tuple[str, str, str], Document] = {}
    for doc in (d for d in docs if d.named):
        first = owners.setdefault((doc.kind, doc.world, doc.name), doc)
        if first is not doc:
            problems.append(doc.problem(["metadata", "name"], f"duplicate name: {doc.label} is "
                                        f"also defined at {first.origin}; rename or remove one"))
    worlds = sorted(n for k, _, n in owners if k == "World")
    writs = {(w, n): d for (k, w, n), d in owners.items() if k == "Writ"}
    for doc in (d for d in owners.values() if complete and d.world and d.world not in worlds):
        problems.append(doc.problem(["metadata", "world"], f"unknown world '{doc.world}'"
                                    f"{suggest(doc.world, worlds)}: add a World manifest "
                                    "with that name or fix the name"))
    graph: dict[Key, list[tuple[int, Key]]] = {}
    for key, doc in writs.items():
        graph[key] = []
        for i, ref in enumerate(_get(doc.data, "spec", "dependsOn")):
            target = split_ref(ref, doc.world) if isinstance(ref, str) else ("", "")
            if target in writs:
                graph[key].append((i, target))
            elif complete and target[0] in worlds:
                problems.append(doc.problem(["spec", "dependsOn", i], _unknown_writ(target, writs)))
            elif complete and target[0] and target[0] != doc.world:
                hint = suggest(target[0], worlds)
                problems.append(doc.problem(["spec", "dependsOn", i],
                                            f"unknown world '{target[0]}' in '{ref}'{hint}"))
    problems += _cycle_problems(graph, writs)
    caravans = sorted((d for d in owners.values() if d.kind == "Caravan"), key=_place)
    return problems + _caravan_problems(caravans, writs, worlds if complete else [])


def _place(doc: Document) -> tuple[str, int, int]:
    return doc.origin.file, doc.origin.line, doc.origin.col


def _unknown_writ(target: Key, writs: dict[Key, Document]) -> str:
    names = [n for w, n in writs if w == target[0]]
    return (f"unknown writ '{target[1]}' in world {target[0]}{suggest(target[1], names)}: add "
            "its Writ manifest or fix the name")


def _cycle_problems(graph: dict[Key, list[tuple[int, Key]]], writs: dict[Key, Document]
                    ) -> list[Problem]:
    """Each dependsOn cycle once, printed `a -> b -> a`; its writs are dropped from the set."""
    problems = []
    deps = {key: {t for _, t in edges} for key, edges in graph.items()}
    while True:
        try:
            TopologicalSorter(deps).prepare()
            return problems
        except CycleError as exc:
            ring = list(reversed(exc.args[1]))[:-1]  # a dependsOn b: a comes first
        first = ring.index(min(ring, key=lambda k: _place(writs[k])))
        ring = ring[first:] + ring[:first]
        one_world = len({w for w, _ in ring}) == 1
        shown = " -> ".join(n if one_world else f"{w}/{n}" for w, n in [*ring, ring[0]])
        index = next(i for i, t in graph[ring[0]] if t == ring[1 % len(ring)])
        problems.append(writs[ring[0]].problem(["spec", "dependsOn", index], f"dependsOn cycle: "
                                               f"{shown}: none of them could ever start"))
        for key in ring:
            writs[key].bad = True
            deps.pop(key)
        for targets in deps.values():
            targets.difference_update(ring)


def _caravan_problems(caravans: list[Document], writs: dict[Key, Document], worlds: list[str]
                      ) -> list[Problem]:
    """Unknown writs (in known `worlds`), a writ listed twice or in two caravans, and phases
    that deadlock."""
    problems = []
    claimed: dict[Key, tuple[Document, tuple[int, int]]] = {}
    for doc in caravans:
        placed: dict[Key, tuple[int, int]] = {}
        for p, phase in enumerate(_get(doc.data, "spec", "phases")):
            for j, name in enumerate(phase if isinstance(phase, list) else []):
                key, at = (doc.world, name), ["spec", "phases", p, j]
                if not isinstance(name, str):
                    continue
                if key not in writs:
                    if doc.world in worlds:
                        problems.append(doc.problem(at, _unknown_writ(key, writs)))
                elif key in placed:
                    problems.append(doc.problem(at, f"writ '{name}' is listed twice (also at "
                                                "phases[{}][{}]): remove one".format(*placed[key])))
                elif key in claimed:
                    other, (line, col) = claimed[key]
                    problems.append(doc.problem(at, f"writ '{name}' is already in caravan "
                                                f"'{other.name}' ({other.file}:{line}:{col}): "
                                                "a writ belongs to one caravan at most"))
                else:
                    placed[key], claimed[key] = (p, j), (doc, doc.at(at))
        for key, (p, j) in placed.items():
            for ref in _get(writs[key].data, "spec", "dependsOn"):
                dep = split_ref(ref, key[0]) if isinstance(ref, str) else ("", "")
                if dep in placed and placed[dep][0] > p:
                    problems.append(doc.problem(
                        ["spec", "phases", p, j], f"writ '{key[1]}' (phase {p}) depends on "
                        f"'{ref}' in the later phase {placed[dep][0]}: it could never start; "
                        "move one of them"))
    return problems
