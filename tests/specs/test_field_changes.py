"""The spec planner on partial sets and field-level changes: pure functions on values."""

from __future__ import annotations

from pathlib import Path

import pytest

from reconciler.core.errors import SolError
from reconciler.core.model import Manifest
from reconciler.core.plan import CREATE, NOTE, UPDATE
from reconciler.core.store import Store
from reconciler.specs.changes import (
    execute_spec_action,
    field_changes,
    is_partial,
    plan_specs,
)

WORLD = Manifest("World", "shop", "", {"source": "/src"})


def writ(name: str, **spec: object) -> Manifest:
    return Manifest("Writ", name, "shop", {"title": f"Writ {name}", **spec})


def run(store: Store, desired: list[Manifest], **how: bool) -> list:
    actions = plan_specs(desired, store.list(), **how)
    by_key = {m.key: m for m in desired}
    for action in actions:
        execute_spec_action(store, action, by_key)
    return actions


def test_field_changes_name_each_changed_field_by_its_path() -> None:
    old = {"title": "a", "priority": 2, "dependsOn": ["x"], "suspend": True,
           "runtime": {"name": "script"}}
    new = {"title": "b", "priority": 1, "dependsOn": ["x", "y"], "kind": "analysis",
           "runtime": {"name": "command", "command": "run"}}
    assert field_changes(old, new) == [
        {"path": "title", "old": "a", "new": "b"},
        {"path": "priority", "old": 2, "new": 1},
        {"path": "dependsOn", "old": ["x"], "new": ["x", "y"]},  # a list of names: whole
        {"path": "kind", "new": "analysis"},                       # unset before
        {"path": "runtime.name", "old": "script", "new": "command"},
        {"path": "runtime.command", "new": "run"},
        {"path": "suspend", "old": True},                          # unset now
    ]
    assert field_changes(old, old) == []


def test_field_changes_of_lists_of_mappings_go_by_index_and_types_count() -> None:
    gates = [{"name": "unit", "run": "pytest"}, {"name": "lint", "run": "ruff"}]
    edited = [{"name": "unit", "run": "pytest -q"}, {"name": "lint", "run": "ruff"}]
    assert field_changes({"forge": {"gates": gates}}, {"forge": {"gates": edited}}) == [
        {"path": "forge.gates[0].run", "old": "pytest", "new": "pytest -q"}]
    longer = [*gates, {"name": "types", "run": "mypy"}]
    assert field_changes({"gates": gates}, {"gates": longer}) == [
        {"path": "gates", "old": gates, "new": longer}]
    # 1 == True in Python, not in a manifest (nor in its generation hash)
    assert field_changes({"suspend": 1}, {"suspend": True}) == [
        {"path": "suspend", "old": 1, "new": True}]


def test_an_update_carries_its_field_changes(tmp_path: Path) -> None:
    store = Store(tmp_path / "db")
    run(store, [WORLD, writ("a", priority=2)])
    actions = plan_specs([WORLD, writ("a", priority=1, dependsOn=[])], store.list())
    assert [(a.op, a.target) for a in actions] == [(UPDATE, "writ/shop/a")]
    assert actions[0].data["changes"] == [{"path": "priority", "old": 2, "new": 1},
                                          {"path": "dependsOn", "new": []}]
    assert "changes" not in plan_specs([WORLD, writ("b")], store.list())[0].data


def test_a_set_without_a_world_is_partial_and_leaves_the_rest_alone(tmp_path: Path) -> None:
    store = Store(tmp_path / "db")
    run(store, [WORLD, writ("a"), writ("b")])
    assert is_partial([writ("c")]) and not is_partial([WORLD]) and not is_partial([])
    actions = run(store, [writ("c"), writ("a", title="Edited")])
    assert [(a.op, a.target) for a in actions] == [(UPDATE, "writ/shop/a"),
                                                   (CREATE, "writ/shop/c")]
    assert not any(r.orphaned for r in store.list())  # the world and b are untouched
    # the same set treated as whole (partial=False) would orphan the world and b
    whole = plan_specs([writ("c"), writ("a", title="Edited")], store.list(), partial=False)
    assert {a.target for a in whole if a.op == NOTE} == {"world/shop", "writ/shop/b"}
    assert plan_specs([WORLD], store.list(), partial=True) == []  # nothing of its own changed


def test_pruning_with_a_partial_set_is_refused(tmp_path: Path) -> None:
    store = Store(tmp_path / "db")
    run(store, [WORLD, writ("a"), writ("b")])
    with pytest.raises(SolError, match="--prune needs the whole specs directory"):
        plan_specs([writ("a")], store.list(), prune=True)
    with pytest.raises(SolError, match="whole specs directory"):
        plan_specs([WORLD], store.list(), prune=True, partial=True)
    assert [a.kind for a in plan_specs([WORLD, writ("a")], store.list(), prune=True)] == [
        "cancel"]  # the whole set still prunes
