"""The desired-state planner: pure, idempotent, never deletes unless asked."""

from __future__ import annotations

from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reconciler.core.model import Manifest
from reconciler.core.plan import CREATE, DELETE, NOTE, UPDATE, render_text
from reconciler.core.store import Store
from reconciler.specs.changes import execute_spec_action, plan_specs

names = st.from_regex(r"[a-z][a-z0-9]{0,6}", fullmatch=True)
titles = st.sampled_from(["one", "two", "three"])
manifest_sets = st.dictionaries(names, titles, max_size=8).map(
    lambda d: [Manifest("World", "shop", "", {"source": "/src"})]
    + [Manifest("Writ", n, "shop", {"title": t}) for n, t in d.items()]
)


def run(store: Store, desired: list[Manifest], prune: bool = False) -> list:
    actions = plan_specs(desired, store.list(), prune=prune)
    by_key = {m.key: m for m in desired}
    for action in actions:
        execute_spec_action(store, action, by_key)
    return actions


def test_plan_is_pure_and_renders() -> None:
    desired = [Manifest("World", "shop", "", {"source": "/src"}),
               Manifest("Writ", "a", "shop", {"title": "x"})]
    actions = plan_specs(desired, [])
    assert [a.op for a in actions] == [CREATE, CREATE]
    assert actions == plan_specs(desired, [])
    text = render_text(actions)
    assert "+ world/shop" in text and "+ writ/shop/a" in text
    assert "2 to create" in text


def test_changed_spec_is_an_update(tmp_path: Path) -> None:
    store = Store(tmp_path / "db")
    run(store, [Manifest("Writ", "a", "shop", {"title": "x"})])
    actions = plan_specs([Manifest("Writ", "a", "shop", {"title": "y"})], store.list())
    assert [(a.op, a.kind) for a in actions] == [(UPDATE, "record")]


def test_empty_desired_set_plans_nothing_even_with_prune(tmp_path: Path) -> None:
    store = Store(tmp_path / "db")
    run(store, [Manifest("Writ", "a", "shop", {"title": "x"})])
    assert plan_specs([], store.list(), prune=True) == []


def test_removed_writ_is_orphaned_without_prune_and_cancelled_with_it(tmp_path: Path) -> None:
    store = Store(tmp_path / "db")
    world = Manifest("World", "shop", "", {"source": "/src"})
    run(store, [world, Manifest("Writ", "a", "shop", {"title": "x"})])
    actions = run(store, [world])
    assert [(a.op, a.kind) for a in actions] == [(NOTE, "orphan")]
    record = store.get("Writ", "shop", "a")
    assert record is not None and record.orphaned and record.phase == "Pending"
    assert run(store, [world]) == []  # reported once, then stable
    pruning = plan_specs([world], store.list(), prune=True)
    assert [(a.op, a.kind) for a in pruning] == [(DELETE, "cancel")]


def test_removed_world_is_never_deleted(tmp_path: Path) -> None:
    store = Store(tmp_path / "db")
    run(store, [Manifest("World", "shop", "", {"source": "/src"}),
                Manifest("World", "other", "", {"source": "/o"})])
    actions = plan_specs([Manifest("World", "other", "", {"source": "/o"})], store.list(),
                         prune=True)
    assert [(a.op, a.kind) for a in actions] == [(NOTE, "orphan")]


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(first=manifest_sets, second=manifest_sets, prune=st.booleans())
def test_execute_then_plan_again_is_empty(tmp_path_factory, first, second, prune) -> None:
    store = Store(tmp_path_factory.mktemp("db") / "sol.db")
    run(store, first)
    assert plan_specs(first, store.list()) == []  # applying twice is a no-op
    actions = run(store, second, prune=prune)
    if not prune:
        assert all(a.op != DELETE for a in actions)  # never deletes unless asked
    assert plan_specs(second, store.list(), prune=prune) == []
