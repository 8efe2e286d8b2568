"""References across a whole set of manifests: worlds, dependsOn, caravans, duplicates.

manifests.py validates each document on its own against its schema; what one document
says about another is checked here, once every document of the set is read, and reported
at the node that makes the reference, like every other problem.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from graphlib import CycleError, TopologicalSorter
from typing import TYPE_CHECKING, Any

from reconciler.core.model import split_ref

if TYPE_CHECKING:
    from reconciler.core.records import Record
    from reconciler.specs.documents import Document, Problem

Key = tuple[str, str]  # (world, name) of a writ


@dataclass(frozen=True)
class Known:
    """Objects already applied (read from the store): a set may refer to them without
    defining them, so a file of writs for an applied world validates on its own. Each
    writ keeps its recorded dependsOn, so a cycle through an applied writ is still found."""

    worlds: frozenset[str] = frozenset()
    writs: Mapping[Key, tuple[str, ...]] = field(default_factory=dict)


def known_from(records: Iterable[Record]) -> Known:
    """The non-orphaned worlds and writs among `records` (an orphaned object is no longer
    desired, so nothing new may come to depend on it)."""
    worlds, writs = set(), {}
    for r in records:
        if r.orphaned:
            continue
        if r.kind == "World":
            worlds.add(r.name)
        elif r.kind == "Writ":
            deps = r.spec.get("dependsOn") if isinstance(r.spec, dict) else None
            writs[(r.world, r.name)] = tuple(d for d in deps or [] if isinstance(d, str))
    return Known(frozenset(worlds), writs)


def suggest(word: Any, choices: Sequence[Any]) -> str:
    """A did-you-mean hint for a misspelt name (also used by manifests.py), or nothing."""
    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _get(data: Any, *path: str) -> list[Any]:
    """The list at `path`, or [] (the schema reports anything else)."""
    for step in path:
        data = data.get(step) if isinstance(data, dict) else None
    return data if isinstance(data, list) else []


def cross_problems(docs: list[Document], complete: bool, known: Known | None = None
                   ) -> list[Problem]:
    """References across the whole set: worlds, dependsOn, caravans, duplicate names
    (per kind and world, so an envoy and a writ may share a name; two envoys may not).
    A reference may also name a `known` (applied) world or writ; a document of the set
    replaces the applied object of its name.

    When some file could not be read or parsed, the target of a reference may be in the
    part that was lost, so unknown references are not reported then; the rest still is.
    """
    known = known or Known()
    problems: list[Problem] = []
    owners: dict[tuple[str, str, str], Document] = {}
    for doc in (d for d in docs if d.named):
        first = owners.setdefault((doc.kind, doc.world, doc.name), doc)
        if first is not doc:
            problems.append(doc.problem(["metadata", "name"], f"duplicate name: {doc.label} is "
                                        f"also defined at {first.origin}; rename or remove one"))
    worlds = sorted({n for k, _, n in owners if k == "World"} | known.worlds)
    writs = {(w, n): d for (k, w, n), d in owners.items() if k == "Writ"}
    applied = {key: deps for key, deps in known.writs.items() if key not in writs}
    for doc in (d for d in owners.values() if complete and d.world and d.world not in worlds):
        problems.append(doc.problem(["metadata", "world"], f"unknown world '{doc.world}'"
                                    f"{suggest(doc.world, worlds)}: add a World manifest "
                                    "with that name or fix the name"))
    graph: dict[Key, list[tuple[int, Key]]] = {}
    for key, doc in writs.items():
        graph[key] = []
        for i, ref in enumerate(_get(doc.data, "spec", "dependsOn")):
            target = split_ref(ref, doc.world) if isinstance(ref, str) else ("", "")
            if target in writs or target in applied:
                graph[key].append((i, target))
            elif complete and target[0] in worlds:
                problems.append(doc.problem(["spec", "dependsOn", i],
                                            _unknown_writ(target, [*writs, *applied])))
            elif complete and target[0] and target[0] != doc.world:
                hint = suggest(target[0], worlds)
                problems.append(doc.problem(["spec", "dependsOn", i],
                                            f"unknown world '{target[0]}' in '{ref}'{hint}"))
    for key, deps in applied.items():  # the applied writs' edges, for cycles through them
        targets = (split_ref(ref, key[0]) for ref in deps)
        graph[key] = [(i, t) for i, t in enumerate(targets) if t in writs or t in applied]
    problems += _cycle_problems(graph, writs)
    caravans = sorted((d for d in owners.values() if d.kind == "Caravan"), key=_place)
    return problems + _caravan_problems(caravans, writs, worlds if complete else [], applied)


def _place(doc: Document) -> tuple[str, int, int]:
    return doc.origin.file, doc.origin.line, doc.origin.col


def _unknown_writ(target: Key, writs: Iterable[Key]) -> str:
    names = [n for w, n in writs if w == target[0]]
    return (f"unknown writ '{target[1]}' in world {target[0]}{suggest(target[1], names)}: add "
            "its Writ manifest or fix the name")


def _cycle_problems(graph: dict[Key, list[tuple[int, Key]]], writs: dict[Key, Document]
                    ) -> list[Problem]:
    """Each dependsOn cycle once, printed `a -> b -> a`, at the first writ of the set in it
    (a cycle may pass through applied writs); its writs are dropped from the set."""
    problems = []
    deps = {key: {t for _, t in edges} for key, edges in graph.items()}
    while True:
        try:
            TopologicalSorter(deps).prepare()
            return problems
        except CycleError as exc:
            ring = list(reversed(exc.args[1]))[:-1]  # a dependsOn b: a comes first
        ours = [k for k in ring if k in writs]
        if ours:  # a cycle among applied writs alone is not this set's to report
            first = ring.index(min(ours, key=lambda k: _place(writs[k])))
            ring = ring[first:] + ring[:first]
            one_world = len({w for w, _ in ring}) == 1
            shown = " -> ".join(n if one_world else f"{w}/{n}" for w, n in [*ring, ring[0]])
            index = next(i for i, t in graph[ring[0]] if t == ring[1 % len(ring)])
            problems.append(writs[ring[0]].problem(["spec", "dependsOn", index],
                                                   f"dependsOn cycle: {shown}: none of them "
                                                   "could ever start"))
        for key in ring:
            if key in writs:
                writs[key].bad = True
            deps.pop(key)
        for targets in deps.values():
            targets.difference_update(ring)


def _caravan_problems(caravans: list[Document], writs: dict[Key, Document], worlds: list[str],
                      applied: Mapping[Key, tuple[str, ...]]) -> list[Problem]:
    """Unknown writs (in known `worlds`; an `applied` writ is known), a writ listed twice or
    in two caravans of the set, and phases that deadlock."""
    def deps(key: Key) -> list[Any]:
        return list(applied[key]) if key in applied else _get(writs[key].data, "spec",
                                                              "dependsOn")

    problems = []
    claimed: dict[Key, tuple[Document, tuple[int, int]]] = {}
    for doc in caravans:
        placed: dict[Key, tuple[int, int]] = {}
        for p, phase in enumerate(_get(doc.data, "spec", "phases")):
            for j, name in enumerate(phase if isinstance(phase, list) else []):
                key, at = (doc.world, name), ["spec", "phases", p, j]
                if not isinstance(name, str):
                    continue
                if key not in writs and key not in applied:
                    if doc.world in worlds:
                        problems.append(doc.problem(at, _unknown_writ(key, [*writs, *applied])))
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
            for ref in deps(key):
                dep = split_ref(ref, key[0]) if isinstance(ref, str) else ("", "")
                if dep in placed and placed[dep][0] > p:
                    problems.append(doc.problem(
                        ["spec", "phases", p, j], f"writ '{key[1]}' (phase {p}) depends on "
                        f"'{ref}' in the later phase {placed[dep][0]}: it could never start; "
                        "move one of them"))
    return problems
