"""One reconcile pass: record the manifests, then run each reconciler's observe/plan/act."""

from __future__ import annotations

import time
from collections.abc import Sequence

from . import consul, outposts, worlds
from .locks import flock
from .model import Manifest
from .plan import Action
from .specs import execute_spec_action, plan_specs
from .sphere import Sphere
from .store import Record


def overlay(records: Sequence[Record], manifests: Sequence[Manifest]) -> list[Record]:
    """The store's records as they would be once `manifests` are recorded (for diff)."""
    wanted = {m.key for m in manifests}
    by_key = {r.key: (r if not wanted or r.key in wanted else
                      Record(**{**r.__dict__, "orphaned": True})) for r in records}
    now = time.time()
    for m in manifests:
        old = by_key.get(m.key)
        if old is None:
            by_key[m.key] = Record(m.kind, m.world, m.name, m.spec, m.generation, str(m.origin),
                                   False, "Pending", "", "", "", {}, 0, now, now)
        else:
            by_key[m.key] = Record(**{**old.__dict__, "spec": m.spec,
                                      "generation": m.generation, "orphaned": False})
    return list(by_key.values())


def plan_all(sphere: Sphere, manifests: Sequence[Manifest] | None, *, prune: bool = False
             ) -> list[Action]:
    """What `sol diff` shows: the spec changes, then what the reconcilers would do."""
    records = sphere.store.list()
    actions = plan_specs(manifests, records, prune=prune) if manifests else []
    desired = overlay(records, manifests or [])
    world_records = [r for r in desired if r.kind == "World"]
    observed = worlds.observe(sphere, world_records, refresh=False)
    actions += worlds.plan_worlds(world_records, observed)
    snap = consul.Snapshot(
        worlds={r.name: r for r in world_records},
        writs={(r.world, r.name): r for r in desired if r.kind == "Writ"},
        caravans=tuple(r for r in desired if r.kind == "Caravan"),
        live=outposts.occupied(outposts.live_counts(sphere),
                               [r for r in desired if r.kind == "Writ"]),
    )
    actions += consul.cast_actions(consul.plan_dispatch(snap))
    return actions


def record(sphere: Sphere, manifests: Sequence[Manifest], *, prune: bool = False
           ) -> list[Action]:
    """Record the desired state; serialised so two applies never interleave their plans."""
    with flock(sphere.home.run / "apply.lock"):
        actions = plan_specs(manifests, sphere.store.list(), prune=prune)
        desired = {m.key: m for m in manifests}
        for action in actions:
            execute_spec_action(sphere.store, action, desired)
    return actions


def reconcile_once(sphere: Sphere, *, forge: bool = True) -> list[Action]:
    """Every reconciler that exists, once, in dependency order."""
    actions = worlds.reconcile(sphere)
    actions += consul.reconcile(sphere)
    if forge:
        from . import forge as forge_reconciler

        actions += forge_reconciler.reconcile(sphere)
        actions += consul.reconcile(sphere)  # writs sent back or unblocked by a merge
    return actions


def apply(sphere: Sphere, manifests: Sequence[Manifest], *, prune: bool = False
          ) -> list[Action]:
    """`sol apply`: record, then one pass (dispatch included, the forge left to the loop)."""
    actions = record(sphere, manifests, prune=prune)
    for action in actions:
        if action.kind == "cancel":
            outposts.release(sphere, action.data["world"], action.data["name"],
                             reason="cancelled: removed from the manifests")
    actions += reconcile_once(sphere, forge=False)
    return actions
