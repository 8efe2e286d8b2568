"""The standard conditions every object carries (Flux's `Ready`, `Reconciling`, `Stalled`).

They are derived from the phase, reason and message a reconciler writes, in one place
(`Store.set_status` calls `standard_conditions`), so every reconciler keeps them true
without writing them itself: a user or a planner agent tells "not yet" (Reconciling)
from "stuck" (Stalled) from "done" (Ready), and a stale status from a current one by
`observedGeneration`. Other conditions (`Escalated`, the sentinel's `Stalled` of a
silent agent, `RateLimited`) are written by their owners and left alone here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

READY_PHASES = frozenset({"Ready", "Merged", "Done", "Landed", "Running"})
STALLED_PHASES = frozenset({"Failed", "Error"})
RESTING_PHASES = frozenset({"Cancelled", "Suspended", "Drydock", "Orphaned", "Retired"})
"""Neither ready nor stuck, and nothing in progress: waiting for a person."""

BY_PHASE = "phase"
"""`source` of a condition derived here, so a phase-derived Stalled is cleared when the
phase moves on while the sentinel's own Stalled condition is left to the sentinel."""


def standard_conditions(conditions: Sequence[Mapping[str, Any]], *, phase: str, reason: str,
                        message: str, observed_generation: str, now: float
                        ) -> list[dict[str, Any]]:
    """`conditions` with Ready, Reconciling and Stalled set for this phase; a condition's
    lastTransitionTime moves only when its status flips. Pure."""
    ready = phase in READY_PHASES
    stalled = phase in STALLED_PHASES
    wanted = {
        "Ready": (ready, phase if ready else (reason or phase)),
        "Reconciling": (not (ready or stalled or phase in RESTING_PHASES), reason or phase),
        "Stalled": (stalled, reason or phase),
    }
    out = [dict(c) for c in conditions]
    for type_, (state, why) in wanted.items():
        current = next((c for c in out if c.get("type") == type_), None)
        if (type_ == "Stalled" and not stalled and current is not None
                and current.get("source") != BY_PHASE):
            continue  # the sentinel's own Stalled: its owner sets and clears it
        value = "True" if state else "False"
        fields = {"type": type_, "status": value, "reason": why or phase, "message": message,
                  "observedGeneration": observed_generation, "source": BY_PHASE}
        if current is None:
            out.append({**fields, "lastTransitionTime": now})
        else:
            flipped = current.get("status") != value
            current.update(fields)
            if flipped or "lastTransitionTime" not in current:
                current["lastTransitionTime"] = now
    return out


def condition(status: Mapping[str, Any], type_: str) -> Mapping[str, Any] | None:
    """One condition of a status, None when it has none of that type."""
    return next((c for c in status.get("conditions") or () if c.get("type") == type_), None)
