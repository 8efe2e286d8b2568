"""The one shape of every reconciler: observe, plan (pure), act.

    observe(sphere, key) -> View     read everything needed afresh (key: a world's name,
                                     or "" for a sphere-wide reconciler); no side effect
    plan(View) -> Plan               pure: actions, requeue_after, waiting reasons
    act(sphere, action) -> bool      one idempotent step; False when it found nothing to
                                     do (the world moved on since the observation)

`Reconciler.reconcile` runs the three and, while a plan asks to look again at once
(requeue_after == 0, a next step such as the forge's gate after its merge), runs them
again, so a multi-step change resumes at its step after a crash: the step's state is in
the store, not in the process. The registry (registry.py) lists every reconciler, and a
pass, `sol diff`, the daemon's children and the demo are all built from that one list.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Generic, TypeVar

from reconciler.core.plan import Action, Plan
from reconciler.drivers.sphere import Sphere

View = TypeVar("View")

MAX_STEPS = 64
"""Immediate requeues one `reconcile` follows before it leaves the rest to the next pass."""


class Scope(StrEnum):
    """What a reconciler's key names: the whole sphere, or one world."""

    SPHERE = "sphere"
    WORLD = "world"


@dataclass(frozen=True)
class Result:
    """What a reconcile did, and when to look again (None: on a wake or the resync)."""

    actions: tuple[Action, ...] = ()
    requeue_after: float | None = None


@dataclass(frozen=True)
class Reconciler(Generic[View]):
    """One reconciler: its name (shown beside each action in `sol diff`), its scope, and
    `owner`, the daemon child that runs it (`consul`, `notifier`, or per world
    `sentinel-<world>`, `forge-<world>`): exactly one process acts for each."""

    name: str
    scope: Scope
    owner: str
    observe: Callable[[Sphere, str], View]
    plan: Callable[[View], Plan]
    act: Callable[[Sphere, Action], bool]

    def planned(self, sphere: Sphere, key: str = "") -> Plan:
        """Observe and plan, acting on nothing: what `sol diff` shows."""
        plan = self.plan(self.observe(sphere, key))
        return dataclasses.replace(plan, actions=tuple(
            a if a.reconciler else dataclasses.replace(a, reconciler=self.name)
            for a in plan.actions))

    def reconcile(self, sphere: Sphere, key: str = "") -> Result:
        """Observe, plan, act; again at once while the plan has a next step ready."""
        done: list[Action] = []
        for _ in range(MAX_STEPS):
            plan = self.planned(sphere, key)
            acted = [a for a in plan.actions if self.act(sphere, a)]
            done += acted
            if not acted and plan.requeue_after == 0:
                return Result(tuple(done), None)  # a step was refused (a lock, an error):
                # the next wake or resync tries again, never a spin
            if plan.requeue_after != 0:
                return Result(tuple(done), plan.requeue_after)
        return Result(tuple(done), 0.0)


AnyReconciler = Reconciler[Any]
