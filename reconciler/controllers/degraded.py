"""The degraded reconciler: enters the sphere's degraded mode on a burst of agent deaths
and leaves it after a quiet spell (core/degraded.py holds the state and its rules).

observe reads the stored mode (the last deaths the sentinels recorded, whether
degraded, since when); plan (pure) decides `enter` or `leave`; act writes the new mode
and its event (`degraded` or `recovered`) in one transaction, compare-and-set on what
was observed, so a death or a `sol resume` in between is never overwritten. Nobody is
notified here: the events reach the `notify` targets of sol.yaml through the outbox.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from reconciler.controllers.base import Reconciler, Scope
from reconciler.core import degraded
from reconciler.core.plan import UPDATE, Action, Plan
from reconciler.drivers.sphere import Sphere
from reconciler.specs.changes import target

TARGET = target("Sphere", "", "degraded")


@dataclass(frozen=True)
class DegradedView:
    """The stored mode at `now`."""

    mode: degraded.Mode
    now: float


def observe(sphere: Sphere, key: str = "") -> DegradedView:
    """One meta read; `key` is "" (the whole sphere)."""
    return DegradedView(degraded.load(sphere.store), time.time())


def plan(view: DegradedView) -> Plan:
    """Pure: enter on BURST deaths within WINDOW, leave after QUIET seconds without one;
    look again when the quiet spell would end (a new death wakes the consul anyway)."""
    mode, now = view.mode, view.now
    if mode.active:
        ends = mode.quiet_since + degraded.QUIET
        if now < ends:
            return Plan(requeue_after=ends - now)
        why = (f"no agent session died for {int(degraded.QUIET // 60)} minutes: "
               "respawning resumes")
        return Plan((Action(UPDATE, "leave", TARGET, why, {
            "since": mode.since, "quietSince": mode.quiet_since, "at": now, "why": why}),))
    recent = mode.recent(now)
    if len(recent) < degraded.BURST:
        return Plan()
    who = ", ".join(d.who for d in recent)
    reason = (f"{len(recent)} agent sessions died within {int(degraded.WINDOW)}s ({who}): "
              "respawning stopped until 5 minutes pass without a death or `sol resume`")
    return Plan((Action(UPDATE, "enter", TARGET, reason, {
        "clearedAt": mode.cleared_at, "at": now, "reason": reason, "deaths": len(recent)}),),
        requeue_after=degraded.QUIET)


def act(sphere: Sphere, action: Action) -> bool:
    """Write the transition if the mode is still the one observed: `enter` while not
    degraded and not resumed since; `leave` while degraded since the same moment with
    no death since. False when the sphere moved on (the next plan sees why)."""
    store, data = sphere.store, action.data
    with store.transaction():
        mode = degraded.load(store)
        if action.kind == "enter":
            if mode.active or mode.cleared_at != data["clearedAt"]:
                return False
            degraded.enter(store, data["at"], data["reason"], data["deaths"])
            return True
        if action.kind != "leave" or not mode.active or (
                mode.since, mode.quiet_since) != (data["since"], data["quietSince"]):
            return False
        degraded.leave(store, data["at"], data["why"])
        return True


RECONCILER = Reconciler(name="degraded", scope=Scope.SPHERE, owner="consul",
                        observe=observe, plan=plan, act=act)
