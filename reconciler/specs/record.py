"""Recording the desired state in the store: serialised, stamped with its source.

`sol apply`, the spec watcher and the git source poller all record through `record`, so
two applies never interleave their plans and every recording says where it came from.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from reconciler.core.locks import flock
from reconciler.core.model import Manifest, WorldSpec
from reconciler.core.plan import Action, summary
from reconciler.core.store import Store
from reconciler.drivers import outposts, worktrees
from reconciler.drivers.sphere import Sphere
from reconciler.specs.changes import (
    REVISION_META,
    SOURCE_META,
    execute_spec_action,
    is_partial,
    plan_specs,
)


def record(sphere: Sphere, manifests: Sequence[Manifest], *, prune: bool = False,
           revision: str | None = None, source: str | None = None,
           check: Callable[[], None] | None = None) -> list[Action]:
    """Record the desired state; serialised so two applies never interleave their plans.

    `revision` is the commit the manifests were read from (a git source): it is stored
    in meta and in every recorded object's status (`sourceRevision`), and the apply is
    an `applied` event of the sphere with the plan summary. `check` runs under the lock
    before anything is recorded (a saved plan raises there when it went stale). A
    partial set (no World document) leaves the source stamp as it is: it is not the
    whole desired state of any revision.
    """
    with flock(sphere.home.run / "apply.lock"):
        if check is not None:
            check()
        actions = plan_specs(manifests, sphere.store.list(), prune=prune)
        desired = {m.key: m for m in manifests}
        with sphere.store.transaction():  # a reader sees the objects with their revision
            for action in actions:
                execute_spec_action(sphere.store, action, desired)
            if not is_partial(manifests):
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
