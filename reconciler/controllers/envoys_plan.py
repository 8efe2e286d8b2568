"""The envoys' planner: plain values in, actions out; no tmux, no git, no database.

`envoys.observe` builds the `EnvoysView` of one world, `plan` decides, and the act
functions in `envoys` carry the actions out (DESIGN section 2).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from reconciler.core.backoff import exponential
from reconciler.core.model import ERROR, PENDING, RUNNING, SUSPENDED
from reconciler.core.plan import CREATE, DELETE, NOTE, UPDATE, Action, Plan
from reconciler.core.store import Record
from reconciler.specs.changes import target

BACKOFF_MAX = 60.0
PENDING_RETRY = 1.0  # seconds; an action left over from a pass that raced or failed


def backoff(failures: int) -> float:
    """Seconds before the next start after `failures` quick deaths or failed starts."""
    return exponential(failures - 1, cap=BACKOFF_MAX)


@dataclass(frozen=True)
class EnvoyView:
    record: Record
    world: Record | None
    source_ready: bool       # the world's clone (or the specs repository) is there
    session: bool | None     # None: no session; True: alive; False: dead pane


@dataclass(frozen=True)
class EnvoysView:
    """The envoys of one world as observed, at `now`."""

    world: str
    envoys: tuple[EnvoyView, ...]
    now: float
    degraded: bool = False


def stop_reason(record: Record) -> str | None:
    """Why an envoy must not run (its status reason), None when it should."""
    if record.status.get("retired"):
        return "Pruned"
    return "Suspended" if record.spec.get("suspend") else None


def _act(op: str, kind: str, r: Record, text: str, **data: Any) -> Action:
    return Action(op, kind, target("Envoy", r.world, r.name), text,
                  {"world": r.world, "name": r.name, "version": r.version, **data})


def _wait(r: Record, phase: str, reason: str, message: str) -> list[Action]:
    if (r.phase, r.reason, r.message) == (phase, reason, message):
        return []
    return [_act(NOTE, "wait", r, message, phase=phase, reason=reason, message=message)]


def plan_envoy(v: EnvoyView, now: float, *, is_degraded: bool
               ) -> tuple[list[Action], float | None]:
    """Pure: what one envoy needs, and when to look again (None: on the next event)."""
    r, st = v.record, v.record.status
    why = stop_reason(r)
    if why is not None:
        if v.session is not None or (r.phase, r.reason) != (SUSPENDED, why):
            return [_act(DELETE, "stop", r, f"stop the session ({why.lower()}); worktree, "
                         "branch and memory kept", why=why)], None
        return [], None
    if v.world is None:
        return _wait(r, ERROR, "WorldNotApplied", f"world {r.world} is not applied: apply "
                     "its World manifest"), None
    # A failed start waits out its backoff, unless the spec changed since (a fix).
    due = float(st.get("notBefore") or 0.0) if r.observed_generation == r.generation else 0.0
    if v.session is True:
        if not st.get("sessionId") or not st.get("startedGeneration"):
            return [_act(UPDATE, "adopt", r, "adopt the running session")], None
        if st["startedGeneration"] != r.generation:
            if now < due:
                return [], due  # the restart failed: the old session goes on meanwhile
            return [_act(UPDATE, "restart", r, "spec changed: restart the session (worktree "
                         "and memory kept)")], None
        if r.phase != RUNNING:
            return [_act(UPDATE, "adopt", r, "the session runs: Running")], None
        return [], None
    sid = st.get("sessionId")
    if sid and st.get("deadSession") != sid:
        return [_act(UPDATE, "record-death", r, f"session {sid} died", session=sid)], None
    if not v.source_ready:
        where = "the specs repository" if r.spec.get("specs") else f"the clone of {r.world}"
        return _wait(r, PENDING, "WaitingForSource", f"waiting for {where}"), None
    if is_degraded:
        return _wait(r, PENDING, "Degraded", "not started while the sphere is degraded "
                     "(`sol resume` to resume)"), None
    if now < due:
        return [], due
    kind = "respawn" if sid else "start"
    return [_act(CREATE, kind, r, f"{kind} the session in its worktree")], None


def plan(view: EnvoysView) -> Plan:
    """Pure: every envoy of the world; look again when a backoff ends, or soon when an
    action is planned (a pass that raced leaves it to the next)."""
    actions: list[Action] = []
    wakes: list[float] = []
    for v in sorted(view.envoys, key=lambda v: v.record.name):
        found, wake = plan_envoy(v, view.now, is_degraded=view.degraded)
        actions += found
        wakes += [wake] if wake is not None else []
    if actions:
        return Plan(tuple(actions), PENDING_RETRY)
    return Plan((), max(0.0, min(wakes) - view.now) if wakes else None)
