"""Re-driving a Failed or Cancelled writ: one transition, whoever asks for it.

A spec edit (a new generation), `sol retry writ NAME` and the sentinel's
`retryFailedAfter` all call `redrive`, so a retried writ looks the same whatever asked:
Pending again, attempts and respawns counted afresh, its branch `sol/<writ>` and
worktree kept (the next cast reuses them), and its history kept: the earlier attempts
stay in `status.attempts` and each retry is a dated entry in `status.retries`, like
the `restartedAt` annotation of `kubectl rollout restart`.
"""

from __future__ import annotations

import time
from typing import Any

from reconciler.core.conditions import with_condition
from reconciler.core.model import CANCELLED, FAILED, PENDING
from reconciler.core.records import Record
from reconciler.core.store import Store
from reconciler.core.times import rfc3339

RETRYABLE = (FAILED, CANCELLED)
FORGET = ("session", "deadSession", "lastDeath", "lastOutput", "nudge", "respawnedAt",
          "resolvedAt", "rateLimit", "rateLimitedUntil")
"""Status keys that belong to the attempts that ended; the next cast sets its own."""
LIFTED = ("Escalated", "BudgetExceeded")
"""Conditions a re-drive sets False: the person it called for has answered (a retry
grants a fresh budget: spend counts from the retry)."""


def redrive(store: Store, key: tuple[str, str, str], *, reason: str, message: str, by: str,
            expect_version: int | None = None) -> Record | None:
    """Make a Failed or Cancelled writ Pending again; None when it is not (any more) one of
    those, so a retry that raced another transition changes nothing. Recorded as an event
    `retried` on the writ."""
    with store.transaction():
        writ = store.get(*key)
        if writ is None or writ.phase not in RETRYABLE:
            return None
        if expect_version is not None and writ.version != expect_version:
            return None
        now = time.time()
        entry: dict[str, Any] = {
            "at": rfc3339(now), "by": by, "from": writ.phase, "reason": writ.reason,
            "message": writ.message, "attempts": int(writ.status.get("attempt") or 1),
        }
        conditions = writ.status.get("conditions") or []
        for lifted in LIFTED:
            if any(c.get("type") == lifted and c.get("status") == "True" for c in conditions):
                conditions = with_condition({"conditions": conditions}, lifted, False, reason,
                                            f"re-driven: {message}")
        done = store.set_status(
            key, phase=PENDING, reason=reason, message=message, expect_phases=RETRYABLE,
            attempt=1, respawns=0, retries=[*(writ.status.get("retries") or []), entry],
            conditions=conditions, **{name: None for name in FORGET},
        )
        if done is not None:
            store.event("retried", kind="Writ", world=key[1], name=key[2],
                        message=f"{by}: {message} (was {writ.phase}: {writ.reason})",
                        by=by, previous=writ.phase)
        return done
