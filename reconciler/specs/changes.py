"""Recording desired state: a pure plan from manifests to the store, and its execution.

Invariant 1: an empty or unreadable specs directory never prunes anything, and only
`--prune` cancels; without it an object missing from the manifests is reported as
orphaned and keeps running. Pruning an envoy only retires it: its record stays (status
`retired`), the envoy reconciler stops its session, and its worktree, branch and memory
are kept; back in the manifests it starts again.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from reconciler.core.model import ALL_WRIT_PHASES, CANCELLED, FAILED, MERGED, ORPHANED, Manifest
from reconciler.core.plan import CREATE, DELETE, NOTE, UPDATE, Action
from reconciler.core.store import Record, Store

KIND_ORDER = {"World": 0, "Writ": 1, "Caravan": 2, "Envoy": 3}

REVISION_META = "source_revision"
"""The commit the desired state was last recorded from (`sol status` shows it)."""
SOURCE_META = "source"
"""The git source (`git+REPO@REF#DIR`) that commit was read from."""


def target(kind: str, world: str, name: str) -> str:
    """How an object is named in plans and events: `writ/shop/add-x`, `world/shop`."""
    return f"{kind.lower()}/{world}/{name}" if world else f"{kind.lower()}/{name}"


def plan_specs(
    desired: Sequence[Manifest], recorded: Iterable[Record], *, prune: bool = False
) -> list[Action]:
    """Actions that make the store's desired state equal to `desired`.

    Pure: it sees only values. With no desired documents at all it plans nothing,
    so an empty specs directory can never orphan or prune anything.
    """
    actions: list[Action] = []
    if not desired:
        return actions
    recorded_by_key = {r.key: r for r in recorded}
    wanted = {m.key for m in desired}
    for m in sorted(desired, key=lambda m: (KIND_ORDER[m.kind], m.world, m.name)):
        data = {"kind": m.kind, "world": m.world, "name": m.name}
        tgt = target(m.kind, m.world, m.name)
        old = recorded_by_key.get(m.key)
        if old is None:
            actions.append(Action(CREATE, "record", tgt, f"new {m.kind.lower()}", data))
        elif old.orphaned:
            actions.append(Action(UPDATE, "record", tgt, "back in the manifests: adopt it", data))
        elif old.generation != m.generation:
            actions.append(Action(
                UPDATE, "record", tgt,
                f"update spec (generation {old.generation} -> {m.generation})", data,
            ))
        elif m.kind == "Writ" and old.phase == CANCELLED:
            actions.append(Action(UPDATE, "record", tgt, "back in the manifests: restart", data))
        elif m.kind == "Envoy" and old.status.get("retired"):
            actions.append(Action(UPDATE, "record", tgt, "back in the manifests: start", data))
    for old in sorted(recorded_by_key.values(), key=lambda r: (KIND_ORDER[r.kind], r.key)):
        if old.key in wanted:
            continue
        tgt = target(old.kind, old.world, old.name)
        data = {"kind": old.kind, "world": old.world, "name": old.name}
        if prune and old.kind == "Writ" and old.phase not in (CANCELLED, MERGED, FAILED):
            actions.append(Action(
                DELETE, "cancel", tgt, "removed from the manifests: cancel (branch kept)", data
            ))
        elif prune and old.kind == "Caravan":
            actions.append(Action(DELETE, "forget", tgt, "removed from the manifests", data))
        elif prune and old.kind == "Envoy" and not old.status.get("retired"):
            actions.append(Action(DELETE, "retire", tgt, "removed from the manifests: stop its "
                                  "session (worktree, branch and memory kept)", data))
        elif not old.orphaned and not (old.kind == "Writ" and old.phase == CANCELLED):
            how = {"World": "never deleted", "Envoy": "kept running (use --prune to stop it)"
                   }.get(old.kind, "kept (use --prune to cancel)")
            if prune and old.kind == "Writ":
                how = f"already {old.phase}: nothing to cancel"
            actions.append(Action(NOTE, "orphan", tgt, f"not in the manifests: orphaned, {how}",
                                  data))
    return actions


def execute_spec_action(store: Store, action: Action, desired: dict[tuple, Manifest]) -> None:
    """Run one recording action; each is idempotent and recorded as an event."""
    key = (action.data["kind"], action.data["world"], action.data["name"])
    kind, world, name = key
    if action.kind == "record":
        manifest = desired[key]
        with store.transaction():
            store.record_spec(manifest)
            current = store.get(*key)
            if kind == "Writ" and current and current.phase == CANCELLED:
                store.set_status(key, phase="Pending", reason="Restarted",
                                 message="back in the manifests")
            if kind == "Envoy" and current and current.status.get("retired"):
                store.set_status(key, phase="Pending", reason="Restarted",
                                 message="back in the manifests", retired=None)
            store.event("applied", kind=kind, world=world, name=name,
                        message=action.description, generation=manifest.generation)
    elif action.kind == "orphan":
        with store.transaction():
            store.set_orphaned(key)
            if kind == "World":
                store.set_status(key, phase=ORPHANED, reason="NotInManifests",
                                 message="removed from the manifests; never deleted by apply")
            store.event("orphaned", kind=kind, world=world, name=name,
                        message=action.description)
    elif action.kind == "cancel":
        with store.transaction():
            done = store.set_status(key, phase=CANCELLED, reason="Pruned",
                                    message="removed from the manifests; branch kept",
                                    expect_phases=[p for p in ALL_WRIT_PHASES
                                                   if p not in (CANCELLED, MERGED, FAILED)])
            if done is not None:
                store.event("cancelled", kind=kind, world=world, name=name,
                            message=action.description)
    elif action.kind == "retire":
        with store.transaction():
            store.set_orphaned(key)
            store.set_status(key, reason="Pruned", retired=True,
                             message="removed from the manifests: session stopping; worktree, "
                             "branch and memory kept")
            store.event("retired", kind=kind, world=world, name=name,
                        message=action.description)
    elif action.kind == "forget":
        with store.transaction():
            store.delete(key)
            store.event("pruned", kind=kind, world=world, name=name, message=action.description)
    else:
        raise ValueError(f"not a spec action: {action.kind}")
