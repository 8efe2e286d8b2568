"""Status conditions (Flux/Kubernetes style) and escalations, shared by every reconciler."""

from __future__ import annotations

import time
from typing import Any

from reconciler.core.store import Store


def with_condition(status: dict[str, Any], type: str, state: bool, reason: str,
                   message: str) -> list[dict[str, Any]]:
    """The status's conditions with `type` set; the transition time moves only on change."""
    conditions = [dict(c) for c in status.get("conditions") or []]
    value = "True" if state else "False"
    for cond in conditions:
        if cond.get("type") == type:
            if cond.get("status") != value:
                cond["lastTransitionTime"] = time.time()
            cond.update(status=value, reason=reason, message=message)
            cond.pop("source", None)  # its owner's now, no longer derived from the phase
            return conditions
    conditions.append({"type": type, "status": value, "reason": reason, "message": message,
                       "lastTransitionTime": time.time()})
    return conditions


def set_condition(store: Store, key: tuple[str, str, str], type: str, state: bool,
                  reason: str, message: str) -> None:
    with store.transaction():
        record = store.get(*key)
        if record is None:
            return
        store.set_status(key, conditions=with_condition(record.status, type, state, reason,
                                                        message))


def escalate(store: Store, world: str, writ: str, message: str, *, source: str) -> None:
    """Record that a human is needed: condition Escalated on the writ, and an event."""
    with store.transaction():
        set_condition(store, ("Writ", world, writ), "Escalated", True, source, message)
        store.event("escalated", kind="Writ", world=world, name=writ, message=message,
                    source=source)
