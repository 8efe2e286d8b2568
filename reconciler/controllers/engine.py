"""One reconcile pass: record the manifests, then run each reconciler's observe/plan/act."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from reconciler.controllers import consul, worlds
from reconciler.core.locks import flock
from reconciler.core.model import Manifest, WorldSpec
from reconciler.core.plan import Action, summary
from reconciler.core.store import Record, Store
from reconciler.drivers import outposts, worktrees
from reconciler.drivers.sphere import Sphere
from reconciler.specs.changes import execute_spec_action, plan_specs

REVISION_META = "source_revision"
"""The commit the desired state was last recorded from (`sol status` shows it)."""
SOURCE_META = "source"
"""The git source (`git+REPO@REF#DIR`) that commit was read from."""


def overlay(records: Sequence[Record], manifests: Sequence[Manifest]) -> list[Record]:
    """The store's records as they would be once `manifests` are recorded (for diff)."""
    wanted = {m.key for m in manifests}
    by_key = {r.key: (r if not wanted or r.key in wanted else
                      Record(**{**r.__dict__, "orphaned": True})) for r in records}
    now = time.time()
    for m in manifests:
        old = by_key.get(m.key)
        if old is None:
            by_key[m.key] = Record(m.kind, m.world, m.name, m.spec, m.generation, str(m.origin),
                                   False, "Pending", "", "", "", {}, 0, now, now)
        else:
            by_key[m.key] = Record(**{**old.__dict__, "spec": m.spec,
                                      "generation": m.generation, "orphaned": False})
    return list(by_key.values())


def plan_all(sphere: Sphere, manifests: Sequence[Manifest] | None, *, prune: bool = False
             ) -> list[Action]:
    """What `sol diff` shows: the spec changes, then what the reconcilers would do."""
    records = sphere.store.list()
    actions = plan_specs(manifests, records, prune=prune) if manifests else []
    desired = overlay(records, manifests or [])
    world_records = [r for r in desired if r.kind == "World"]
    observed = worlds.observe(sphere, world_records, refresh=False)
    actions += worlds.plan_worlds(world_records, observed)
    snap = consul.Snapshot(
        worlds={r.name: r for r in world_records},
        writs={(r.world, r.name): r for r in desired if r.kind == "Writ"},
        caravans=tuple(r for r in desired if r.kind == "Caravan"),
        live=outposts.occupied(outposts.live_counts(sphere),
                               [r for r in desired if r.kind == "Writ"]),
    )
    actions += consul.cast_actions(consul.plan_dispatch(snap))
    return actions


def record(sphere: Sphere, manifests: Sequence[Manifest], *, prune: bool = False,
           revision: str | None = None, source: str | None = None,
           check: Callable[[], None] | None = None) -> list[Action]:
    """Record the desired state; serialised so two applies never interleave their plans.

    `revision` is the commit the manifests were read from (a git source): it is stored
    in meta and in every recorded object's status (`sourceRevision`), and the apply is
    an `applied` event of the sphere with the plan summary. `check` runs under the lock
    before anything is recorded (a saved plan raises there when it went stale).
    """
    with flock(sphere.home.run / "apply.lock"):
        if check is not None:
            check()
        actions = plan_specs(manifests, sphere.store.list(), prune=prune)
        desired = {m.key: m for m in manifests}
        for action in actions:
            execute_spec_action(sphere.store, action, desired)
        _stamp(sphere.store, manifests, actions, revision, source)
    return actions


def _stamp(store: Store, manifests: Sequence[Manifest], actions: list[Action],
           revision: str | None, source: str | None) -> None:
    """Mark where the desired state came from; a directory source clears an old mark."""
    before = store.get_meta(REVISION_META)
    if revision is None and before is None:
        return
    with store.transaction():
        for m in manifests:
            store.set_status(m.key, sourceRevision=revision)
        store.set_meta(REVISION_META, revision)
        store.set_meta(SOURCE_META, source if revision else None)
        if revision and (actions or revision != before):
            store.event("applied", kind="Sphere",
                        message=f"revision {revision[:7]} of {source}: {summary(actions)}",
                        revision=revision, source=source, summary=summary(actions),
                        actions=[f"{a.op} {a.target}" for a in actions][:200])


def applied_revision(store: Store, source: str) -> str | None:
    """The commit last recorded from `source`, None if the desired state came from
    elsewhere (another source, a directory)."""
    if store.get_meta(SOURCE_META) != source:
        return None
    return store.get_meta(REVISION_META)


def observed_state(sphere: Sphere) -> dict[str, dict[str, Any]]:
    """What a plan was computed on, cheap to take again: every object's spec generation,
    phase and orphaned flag, and per world its target tip and live sessions. (Not the
    row version: status chatter such as a heartbeat message does not stale a plan.)"""
    live = outposts.live_counts(sphere)
    state: dict[str, dict[str, Any]] = {}
    for r in sphere.store.list():
        entry: dict[str, Any] = {"generation": r.generation, "phase": r.phase,
                                 "orphaned": r.orphaned}
        if r.kind == "World":
            repo = sphere.home.repo(r.name)
            branch = WorldSpec.from_spec(r.spec).branch
            entry["tip"] = (worktrees.rev(repo, f"refs/heads/{branch}")
                            if worktrees.is_clone(repo) else None)
            entry["sessions"] = live.get(r.name, 0)
        state[f"{r.kind.lower()} {r.world + '/' if r.world else ''}{r.name}"] = entry
    return state


def state_changes(before: dict[str, dict[str, Any]], now: dict[str, dict[str, Any]]
                  ) -> list[str]:
    """What moved between two `observed_state`s, one phrase each, for people."""
    def show(value: Any) -> str:
        if isinstance(value, str) and len(value) == 40:
            return value[:7]
        return "none" if value in (None, "") else str(value)

    changes = []
    for key in sorted(before.keys() | now.keys()):
        old, new = before.get(key), now.get(key)
        if old == new:
            continue
        if old is None or new is None:
            changes.append(f"{key} appeared" if old is None else f"{key} is gone")
            continue
        for name in sorted(old.keys() | new.keys()):
            if old.get(name) != new.get(name):
                changes.append(f"{key} changed {name} {show(old.get(name))} -> "
                               f"{show(new.get(name))}")
    return changes


def reconcile_once(sphere: Sphere, *, forge: bool = True) -> list[Action]:
    """Every reconciler that exists, once, in dependency order."""
    from reconciler.controllers import envoys

    actions = worlds.reconcile(sphere)
    actions += envoys.reconcile(sphere)
    actions += consul.reconcile(sphere)
    if forge:
        from reconciler.controllers import forge as forge_reconciler

        actions += forge_reconciler.reconcile(sphere)
        actions += consul.reconcile(sphere)  # writs sent back or unblocked by a merge
    return actions


def apply(sphere: Sphere, manifests: Sequence[Manifest], *, prune: bool = False,
          revision: str | None = None, source: str | None = None,
          check: Callable[[], None] | None = None) -> list[Action]:
    """`sol apply`: record, then one pass (dispatch included, the forge left to the loop)."""
    actions = record(sphere, manifests, prune=prune, revision=revision, source=source,
                     check=check)
    for action in actions:
        if action.kind == "cancel":
            outposts.release(sphere, action.data["world"], action.data["name"],
                             reason="cancelled: removed from the manifests")
    actions += reconcile_once(sphere, forge=False)
    return actions
