"""The consul: sphere-wide dispatch. It observes the sphere (records, the tmux listing,
tethers, what landed on each target), `consul_plan.plan` decides every step of a pass
(tether refreshes, recoveries, waiting reasons, casts, caravan phases), and `act` carries
out one step at a time, each idempotent and compare-and-set."""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import suppress

from reconciler.controllers import recovery
from reconciler.controllers.base import Reconciler, Scope
from reconciler.controllers.consul_plan import WAITING, SeenTether, View, WritKey, plan
from reconciler.core import tether
from reconciler.core.degraded import state as degraded_state
from reconciler.core.errors import SolError
from reconciler.core.home import session_name
from reconciler.core.model import PENDING, WORKING, WritSpec
from reconciler.core.plan import Action
from reconciler.core.store import Record
from reconciler.drivers.outposts import cast_writs, count_live, occupied, tether_path_for
from reconciler.drivers.sphere import Sphere

NUDGED_RUNTIMES = ("claude", "codex")
"""Runtimes whose live session is told at once that its assignment changed."""


def observe(sphere: Sphere, key: str = "") -> View:
    """Read the sphere for one pass: the store, one tmux listing, the tethers that
    matter and each target's trailers. Writes nothing."""
    store = sphere.store
    degraded = degraded_state(store)
    sessions = sphere.sessions.list("sol-")
    writs = store.list("Writ")
    worlds = {w.name: w for w in store.list("World")}
    landed, running = recovery.observe(sphere, writs, worlds, sessions)
    return View(
        worlds=worlds,
        writs={(w.world, w.name): w for w in writs},
        caravans=tuple(store.list("Caravan")),
        live=occupied(count_live(sessions), writs),
        sessions=sessions,
        degraded=degraded.reason if degraded else None,
        now=time.time(),
        tethers=_changed_tethers(sphere, writs),
        tethered=_tethered(sphere, writs, sessions),
        landed=landed,
        running=running,
        stale_after=sphere.config.stale_after,
    )


def _changed_tethers(sphere: Sphere, writs: list[Record]) -> dict[WritKey, SeenTether]:
    """The tether of each Working writ whose spec changed since it was cast."""
    found: dict[WritKey, SeenTether] = {}
    for writ in writs:
        if writ.phase != WORKING or writ.observed_generation == writ.generation:
            continue
        current = _read_tether(sphere, writ.world, writ.name)
        if current is not None:
            found[(writ.world, writ.name)] = SeenTether(
                current.agent, current.generation, str(current.runtime.get("name") or ""))
    return found


def _read_tether(sphere: Sphere, world: str, writ: str) -> tether.Tether | None:
    path = tether_path_for(sphere, world, writ)
    if path is None or not path.exists():
        return None
    try:
        return tether.read(path)
    except SolError:
        return None


def _tethered(sphere: Sphere, writs: list[Record], sessions: dict[str, bool]
              ) -> frozenset[WritKey]:
    """Working writs whose agent has no live session but a tether file (a stat each)."""
    return frozenset(
        (w.world, w.name) for w in writs
        if w.phase == WORKING and (agent := w.status.get("agent"))
        and not sessions.get(session_name(w.world, agent))
        and sphere.home.tether(w.world, agent).exists())


def act(sphere: Sphere, action: Action) -> bool:
    """Carry out one planned step; False when the world moved on since the plan."""
    return ACTS[action.kind](sphere, action)


def _retether(sphere: Sphere, action: Action) -> bool:
    """Rewrite the tether for the writ's new spec (same session, attempt and branch)."""
    world, name = action.data["world"], action.data["name"]
    writ = sphere.store.get("Writ", world, name)
    if writ is None or writ.phase != WORKING or writ.generation != action.data["generation"]:
        return False
    path = tether_path_for(sphere, world, name)
    current = _read_tether(sphere, world, name)
    if path is None or current is None or current.generation == writ.generation:
        return False
    spec = WritSpec.from_spec(writ.spec)
    current.title, current.description = spec.title, spec.description
    current.generation, current.updated_at = writ.generation, time.time()
    tether.write(path, current)
    with suppress(SolError):  # an agent on its own node reads its copy there
        sphere.sessions.deliver(session_name(world, current.agent),
                                {"tether.json": current.to_json()}, path.parent)
    sphere.store.event("retethered", kind="Writ", world=world, name=name,
                       message=action.description, generation=writ.generation)
    if current.runtime.get("name") in NUDGED_RUNTIMES:
        try:
            sphere.sessions.send_text(session_name(world, current.agent),
                                      "Your assignment changed: run `sol prime` and "
                                      "adjust your work.")
        except SolError:
            pass
    return True


def _recover(sphere: Sphere, action: Action) -> bool:
    """A Working writ whose agent vanished goes back to Pending; its branch is kept and
    it is cast again on it."""
    world, name = action.data["world"], action.data["name"]
    if sphere.store.set_status(
            ("Writ", world, name), phase=PENDING, reason="Recovered",
            expect_version=action.data["version"],
            message="agent gone without session or tether; cast again on its branch",
            session=None) is None:
        return False
    sphere.store.event("recovered", kind="Writ", world=world, name=name,
                       message=action.description)
    return True


def _wait(sphere: Sphere, action: Action) -> bool:
    """Record why a Pending writ waits (its status, no event)."""
    key = ("Writ", action.data["world"], action.data["name"])
    writ = sphere.store.get(*key)
    if writ is None or writ.phase != PENDING or (
            writ.reason, writ.message) == (WAITING, action.description):
        return False
    return sphere.store.set_status(key, reason=WAITING, message=action.description,
                                   expect_phases=[PENDING]) is not None


def _cast(sphere: Sphere, action: Action) -> bool:
    """Cast the writ (the driver takes the world's cast lock, checks it is still Pending
    and counts capacity under it); False when it is not Working after: capacity taken
    meanwhile (the next pass says so), cast failed (the driver recorded why), or gone."""
    world, name = action.data["world"], action.data["name"]
    cast_writs(sphere, world, [name])
    record = sphere.store.get("Writ", world, name)
    return record is not None and record.phase == WORKING


def _caravan(sphere: Sphere, action: Action) -> bool:
    """Set a caravan's phase; an event when the phase itself changes."""
    data = action.data
    caravan = sphere.store.get("Caravan", data["world"], data["name"])
    if caravan is None or caravan.version != data["version"]:
        return False
    if sphere.store.set_status(caravan.key, phase=data["phase"], reason=data["phase"],
                               message=data["message"], expect_version=caravan.version,
                               observed_generation=caravan.generation) is None:
        return False
    if data["phase"] != caravan.phase:
        sphere.store.event(data["phase"].lower(), kind="Caravan", world=caravan.world,
                           name=caravan.name, message=data["message"])
    return True


ACTS: dict[str, Callable[[Sphere, Action], bool]] = {
    "retether": _retether,
    "recover": _recover,
    "recover-merged": recovery.record_merged,
    "adopt": recovery.adopt,
    "wait": _wait,
    "cast": _cast,
    "caravan": _caravan,
}

RECONCILER: Reconciler[View] = Reconciler(name="consul", scope=Scope.SPHERE, owner="consul",
                                          observe=observe, plan=plan, act=act)


def reconcile(sphere: Sphere, *, dry_run: bool = False) -> list[Action]:
    """One dispatch pass (until the pass's next steps are done); `dry_run` only plans."""
    if dry_run:
        return list(RECONCILER.planned(sphere, "").actions)
    return list(RECONCILER.reconcile(sphere, "").actions)
