"""Recording desired state: a pure plan from manifests to the store, and its execution.

Invariant 1: an empty or unreadable specs directory never prunes anything, and only
`--prune` cancels; without it an object missing from the manifests is reported as
orphaned and keeps running. Pruning an envoy only retires it: its record stays (status
`retired`), the envoy reconciler stops its session, and its worktree, branch and memory
are kept; back in the manifests it starts again.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

from reconciler.core.errors import SolError
from reconciler.core.model import ALL_WRIT_PHASES, CANCELLED, FAILED, MERGED, ORPHANED, Manifest
from reconciler.core.plan import CREATE, DELETE, NOTE, UPDATE, Action
from reconciler.core.redrive import RETRYABLE, redrive
from reconciler.core.store import Record, Store

KIND_ORDER = {"World": 0, "Writ": 1, "Caravan": 2, "Envoy": 3}

REVISION_META = "source_revision"
"""The commit the desired state was last recorded from (`sol status` shows it)."""
SOURCE_META = "source"
"""The git source (`git+REPO@REF#DIR`) that commit was read from."""


def target(kind: str, world: str, name: str) -> str:
    """How an object is named in plans and events: `writ/shop/add-x`, `world/shop`."""
    return f"{kind.lower()}/{world}/{name}" if world else f"{kind.lower()}/{name}"


PARTIAL_PRUNE = ("these manifests define no World, so they are only part of the specs: "
                 "--prune needs the whole specs directory (`sol apply -f SPECS --prune`)")


def is_partial(desired: Sequence[Manifest]) -> bool:
    """A set with no World document is part of the specs (like `kubectl apply -f one.yaml`):
    recording it touches only its own objects."""
    return bool(desired) and not any(m.kind == "World" for m in desired)


def plan_specs(
    desired: Sequence[Manifest], recorded: Iterable[Record], *, prune: bool = False,
    partial: bool | None = None,
) -> list[Action]:
    """Actions that make the store's desired state equal to `desired`.

    Pure: it sees only values. With no desired documents at all it plans nothing,
    so an empty specs directory can never orphan or prune anything. A `partial` set
    (default: `is_partial`) creates and updates its objects and leaves every other
    recorded object alone; it cannot be pruned with (SolError), since what it lacks is
    not known to be removed. An update carries its field changes in `data["changes"]`.
    """
    actions: list[Action] = []
    if not desired:
        return actions
    partial = is_partial(desired) if partial is None else partial
    if prune and partial:
        raise SolError(PARTIAL_PRUNE)
    recorded_by_key = {r.key: r for r in recorded}
    wanted = {m.key for m in desired}
    for m in sorted(desired, key=lambda m: (KIND_ORDER[m.kind], m.world, m.name)):
        data: dict[str, Any] = {"kind": m.kind, "world": m.world, "name": m.name}
        tgt = target(m.kind, m.world, m.name)
        old = recorded_by_key.get(m.key)
        if old is not None and old.generation != m.generation:
            data["changes"] = field_changes(old.spec, m.spec)
        if old is None:
            actions.append(Action(CREATE, "record", tgt, f"new {m.kind.lower()}", data))
        elif old.orphaned:
            actions.append(Action(UPDATE, "record", tgt, "back in the manifests: adopt it", data))
        elif old.generation != m.generation:
            redrive_it = (f": re-drive the {old.phase} writ"
                          if m.kind == "Writ" and old.phase in RETRYABLE else "")
            actions.append(Action(
                UPDATE, "record", tgt,
                f"update spec (generation {old.generation} -> {m.generation}){redrive_it}",
                data,
            ))
        elif m.kind == "Writ" and old.phase == CANCELLED:
            actions.append(Action(UPDATE, "record", tgt, "back in the manifests: restart", data))
        elif m.kind == "Envoy" and old.status.get("retired"):
            actions.append(Action(UPDATE, "record", tgt, "back in the manifests: start", data))
    if partial:
        return actions
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


def field_changes(old: Any, new: Any, path: str = "") -> list[dict[str, Any]]:
    """What differs between a recorded spec and a manifest's, field by field: each change
    is `{"path", "old", "new"}` with a dotted path (`forge.gates[0].run`), "old" or "new"
    left out where the field is unset. Lists of the same length holding mappings or lists
    are compared item by item; any other list changes whole. Pure."""
    if isinstance(old, dict) and isinstance(new, dict):
        changes = []
        for key in [*new, *(k for k in old if k not in new)]:
            at = f"{path}.{key}" if path else str(key)
            if key not in old:
                changes.append({"path": at, "new": new[key]})
            elif key not in new:
                changes.append({"path": at, "old": old[key]})
            else:
                changes += field_changes(old[key], new[key], at)
        return changes
    if (isinstance(old, list) and isinstance(new, list) and len(old) == len(new)
            and any(isinstance(v, dict | list) for v in [*old, *new])):
        return [c for i, (a, b) in enumerate(zip(old, new, strict=True))
                for c in field_changes(a, b, f"{path}[{i}]")]
    if _canonical(old) == _canonical(new):
        return []
    return [{"path": path, "old": old, "new": new}]


def _canonical(value: Any) -> str:
    """Equal as data (and as the generation hash sees it): 1 and true differ."""
    return json.dumps(value, sort_keys=True)


def _redrive_recorded(store: Store, before: Record, manifest: Manifest) -> None:
    """A Failed or Cancelled writ whose spec changed (a new generation) is Pending again,
    and so is a Cancelled one back in the manifests: through core.redrive, as a retry."""
    old, new = before.generation, manifest.generation
    if before.phase in RETRYABLE and not before.orphaned and old != new:
        redrive(store, before.key, reason="SpecChanged", by=f"spec generation {old} -> {new}",
                message=f"spec changed (generation {old} -> {new}): cast again on its kept "
                        "branch, attempts counted afresh")
    elif before.phase == CANCELLED:
        redrive(store, before.key, reason="Restarted", by="back in the manifests",
                message="cast again on its kept branch, attempts counted afresh")


def execute_spec_action(store: Store, action: Action, desired: dict[tuple, Manifest]) -> None:
    """Run one recording action; each is idempotent and recorded as an event."""
    key = (action.data["kind"], action.data["world"], action.data["name"])
    kind, world, name = key
    if action.kind == "record":
        manifest = desired[key]
        with store.transaction():
            before = store.get(*key)
            store.record_spec(manifest)
            if kind == "Writ" and before is not None:
                _redrive_recorded(store, before, manifest)
            current = store.get(*key)
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
