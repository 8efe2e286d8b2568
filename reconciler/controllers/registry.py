"""Every reconciler, in the order a pass runs them: the only list there is.

A pass (`reconcile_once`), `sol diff` (`plan_all`), `sol apply`, the daemon's children
(`children`, `run_owner`), `sol reconcile --once` and the demo are all built from
RECONCILERS. Each reconciler names its owner, the one daemon child that acts for it, so
no two processes ever act for the same reconciler and key. Adding a reconciler is a
module in controllers/ and one line here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

from reconciler.controllers import (
    budget,
    consul,
    degraded,
    envoys,
    forge,
    ledger,
    notify,
    sentinel,
    worlds,
)
from reconciler.controllers.base import AnyReconciler, Result, Scope
from reconciler.core.model import Manifest
from reconciler.core.plan import Action, sooner
from reconciler.drivers import outposts
from reconciler.drivers.sphere import Sphere
from reconciler.specs.changes import execute_spec_action, plan_specs
from reconciler.specs.record import record

RECONCILERS: tuple[AnyReconciler, ...] = (
    worlds.RECONCILER,     # clones, fetches and restores each world's repository
    degraded.RECONCILER,   # enters and leaves the sphere's degraded mode
    ledger.RECONCILER,     # token usage from the agents' transcripts (in the consul)
    budget.RECONCILER,     # spend held to spec.budget; a cost event per attempt
    consul.RECONCILER,     # dispatch, recovery, waiting reasons, caravan phases
    envoys.RECONCILER,     # persistent agents of a world
    sentinel.RECONCILER,   # agent deaths, respawns, stalls, zombies and orphans
    forge.RECONCILER,      # the merge queue: merge, gates, land, push, send back
    notify.RECONCILER,     # deliveries of the event outbox
)

OWNERS: tuple[str, ...] = tuple(dict.fromkeys(r.owner for r in RECONCILERS))
"""The daemon's children, in pass order: a sphere-scope owner is one child, a world-scope
owner one child per world (`sentinel-shop`)."""


OUTSIDE_DIFF = ("notifier", "ledger")
"""Owners or reconcilers `sol diff` leaves out: the notifier delivers events that already
happened and the ledger counts tokens already spent; neither changes anything a user asked
for (and every apply makes events, every agent turn transcript lines)."""


def owned(owner: str) -> tuple[AnyReconciler, ...]:
    return tuple(r for r in RECONCILERS if r.owner == owner)


def scope_of(owner: str) -> Scope:
    scopes = {r.scope for r in owned(owner)}
    if len(scopes) != 1:
        raise ValueError(f"reconcilers of {owner!r} must share one scope, not {scopes}")
    return scopes.pop()


def children(worlds: Iterable[str]) -> list[tuple[str, str]]:
    """(owner, world) of every child the daemon runs; world is "" for a sphere owner."""
    names = list(worlds)
    return [(owner, world) for owner in OWNERS
            for world in ([""] if scope_of(owner) is Scope.SPHERE else names)]


def keys(sphere: Sphere, reconciler: AnyReconciler) -> list[str]:
    """"" for a sphere reconciler; for a world reconciler every world recorded, named by
    an envoy, or with a session (a world the store no longer knows may still have
    sessions to stop and envoys to report on)."""
    if reconciler.scope is Scope.SPHERE:
        return [""]
    names = {w.name for w in sphere.store.list("World")}
    names |= {e.world for e in sphere.store.list("Envoy")}
    names |= {p[0] for p in map(outposts.parse_session, sphere.sessions.list("sol-")) if p}
    return sorted(names)


def run_owner(sphere: Sphere, owner: str, world: str = "") -> Result:
    """One pass of a child: each of its reconcilers, for its key, in registry order."""
    actions: list[Action] = []
    requeue: float | None = None
    for reconciler in owned(owner):
        result = reconciler.reconcile(sphere, world)
        actions += result.actions
        requeue = sooner(requeue, result.requeue_after)
    return Result(tuple(actions), requeue)


def reconcile_once(sphere: Sphere, *, skip: Sequence[str] = ()) -> list[Action]:
    """Every reconciler once for every key, in registry order (owners in `skip` left out);
    the consul once more when a later one changed something (a merge unblocks writs, a
    death frees capacity)."""
    actions: list[Action] = []
    later = False
    for reconciler in RECONCILERS:
        if reconciler.owner in skip:
            continue
        for key in keys(sphere, reconciler):
            done = reconciler.reconcile(sphere, key).actions
            actions += done
            later = later or (bool(done) and reconciler.owner != "consul")
    if later:
        for reconciler in owned("consul"):
            actions += reconciler.reconcile(sphere, "").actions
    return actions


def plan_all(sphere: Sphere, manifests: Sequence[Manifest] | None = None, *,
             prune: bool = False) -> list[Action]:
    """What `sol diff` shows: the spec changes, then what every reconciler would do once
    they are recorded (planned on a scratch copy of the store, so nothing is written)."""
    actions = plan_specs(manifests, sphere.store.list(), prune=prune) if manifests else []
    with sphere.scratch() as scratch:
        desired = {m.key: m for m in manifests or []}
        for action in actions:
            execute_spec_action(scratch.store, action, desired)
        for reconciler in RECONCILERS:
            if reconciler.owner in OUTSIDE_DIFF or reconciler.name in OUTSIDE_DIFF:
                continue
            for key in keys(scratch, reconciler):
                actions += reconciler.planned(scratch, key).actions
    return actions


def apply(sphere: Sphere, manifests: Sequence[Manifest], *, prune: bool = False,
          revision: str | None = None, source: str | None = None,
          check: Callable[[], None] | None = None) -> list[Action]:
    """`sol apply`: record, then one pass (the forge and the notifier left to the daemon)."""
    actions = record(sphere, manifests, prune=prune, revision=revision, source=source,
                     check=check)
    for action in actions:
        if action.kind == "cancel":
            outposts.release(sphere, action.data["world"], action.data["name"],
                             reason="cancelled: removed from the manifests")
    return actions + reconcile_once(sphere, skip=("forge", "notifier"))
