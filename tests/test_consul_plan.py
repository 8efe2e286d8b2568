"""Dispatch readiness and order, as a pure function of plain values (no tmux, no git)."""

from __future__ import annotations

import time

from reconciler.controllers.consul import Snapshot, plan_dispatch
from reconciler.core.store import Record


def rec(kind: str, world: str, name: str, spec: dict, phase: str = "Pending",
        orphaned: bool = False) -> Record:
    now = time.time()
    return Record(kind, world, name, spec, "g", "", orphaned, phase, "", "", "", {}, 0, now, now)


def world(name: str = "shop", **spec) -> Record:
    return rec("World", "", name, {"source": "/s", **spec}, phase="Ready")


def writ(name: str, phase: str = "Pending", **spec) -> Record:
    return rec("Writ", "shop", name, {"title": name, **spec}, phase=phase)


def snap(*writs: Record, worlds=None, caravans=(), live=None) -> Snapshot:
    return Snapshot(worlds={w.name: w for w in (worlds or [world()])},
                    writs={(w.world, w.name): w for w in writs}, caravans=tuple(caravans),
                    live=live or {})


def names(dispatch) -> list[str]:
    return [w.name for w in dispatch.ready]


def test_order_is_priority_then_caravan_phase_then_name() -> None:
    d = plan_dispatch(snap(writ("b"), writ("a"), writ("z", priority=1), writ("c", priority=3)))
    assert names(d) == ["z", "a", "b", "c"]


def test_dependency_waits_until_merged_not_just_resolved() -> None:
    for phase in ("Pending", "Working", "Resolved", "Merging"):
        d = plan_dispatch(snap(writ("base", phase=phase), writ("dep", dependsOn=["base"])))
        assert "dep" not in names(d)
        assert d.waiting[("shop", "dep")].startswith("waiting for base")
    d = plan_dispatch(snap(writ("base", phase="Merged"), writ("dep", dependsOn=["base"])))
    assert names(d) == ["dep"]


def test_analysis_dependency_is_finished_when_done() -> None:
    d = plan_dispatch(snap(writ("look", phase="Done", kind="analysis"),
                           writ("act", dependsOn=["look"])))
    assert names(d) == ["act"]


def test_cross_world_dependency() -> None:
    other = rec("Writ", "lib", "core", {"title": "c"}, phase="Working")
    d = plan_dispatch(snap(writ("use", dependsOn=["lib/core"]), other,
                           worlds=[world(), world("lib")]))
    assert d.waiting[("shop", "use")] == "waiting for lib/core (Working)"


def test_caravan_drydock_and_phases() -> None:
    caravan = rec("Caravan", "shop", "auth", {"commissioned": False,
                                              "phases": [["a", "b"], ["c"]]})
    d = plan_dispatch(snap(writ("a"), writ("b"), writ("c"), caravans=[caravan]))
    assert names(d) == []
    assert d.waiting[("shop", "a")] == "caravan auth is in drydock"
    caravan.spec["commissioned"] = True
    d = plan_dispatch(snap(writ("a"), writ("b", phase="Merged"), writ("c"), caravans=[caravan]))
    assert names(d) == ["a"]
    assert d.waiting[("shop", "c")].startswith("waiting for a (caravan auth phase 0)")
    d = plan_dispatch(snap(writ("a", phase="Merged"), writ("b", phase="Merged"), writ("c"),
                           caravans=[caravan]))
    assert names(d) == ["c"]


def test_capacity_counts_live_sessions() -> None:
    writs = [writ(n) for n in "abcdef"]
    d = plan_dispatch(snap(*writs, worlds=[world(capacity={"maxActive": 2})],
                           live={"shop": 1}))
    assert names(d) == ["a"]
    assert d.waiting[("shop", "b")] == "capacity 2/2"
    unlimited = plan_dispatch(snap(*writs, worlds=[world(capacity={"maxActive": 0})],
                                   live={"shop": 50}))
    assert len(unlimited.ready) == 6


def test_suspended_world_and_writ_and_not_ready_world() -> None:
    assert plan_dispatch(snap(writ("a"), worlds=[world(suspend=True)])).waiting[
        ("shop", "a")] == "world suspended"
    assert plan_dispatch(snap(writ("a", suspend=True))).waiting[("shop", "a")] == \
        "writ suspended"
    broken = world()
    broken.phase, broken.message = "Error", "cannot clone"
    assert "not ready" in plan_dispatch(snap(writ("a"), worlds=[broken])).waiting[("shop", "a")]


def test_only_pending_writs_are_candidates_and_orphans_wait() -> None:
    orphan = rec("Writ", "shop", "o", {"title": "o"}, orphaned=True)
    d = plan_dispatch(snap(writ("w", phase="Working"), orphan))
    assert names(d) == []
    assert "not in the manifests" in d.waiting[("shop", "o")]


def test_caravan_phases_drydock_open_landed() -> None:
    from reconciler.controllers.consul import caravan_phase

    caravan = rec("Caravan", "shop", "auth", {"commissioned": False, "phases": [["a"], ["b"]]})
    writs = {("shop", "a"): writ("a"), ("shop", "b"): writ("b")}
    assert caravan_phase(caravan, writs)[0] == "Drydock"
    caravan.spec["commissioned"] = True
    assert caravan_phase(caravan, writs) == ("Open", "phase 1/2: 0/1 landed")
    writs[("shop", "a")] = writ("a", phase="Merged")
    assert caravan_phase(caravan, writs) == ("Open", "phase 2/2: 0/1 landed")
    writs[("shop", "b")] = writ("b", phase="Done", kind="analysis")
    assert caravan_phase(caravan, writs)[0] == "Landed"


def test_stale_writs_need_no_tether_no_session_and_age() -> None:
    from reconciler.controllers.consul import stale_writs

    old = writ("old", phase="Working")
    object.__setattr__(old, "updated_at", time.time() - 600)
    fresh = writ("fresh", phase="Working")
    tethered = writ("tethered", phase="Working")
    object.__setattr__(tethered, "updated_at", time.time() - 600)
    s = snap(old, fresh, tethered)
    has = {("shop", "tethered"): True}
    assert [w.name for w in stale_writs(s, has, time.time(), 60)] == ["old"]


def test_a_degraded_sphere_casts_nothing() -> None:
    s = Snapshot(worlds={"shop": world()}, writs={("shop", "a"): writ("a")},
                 degraded="3 deaths in 30s")
    d = plan_dispatch(s)
    assert names(d) == [] and "degraded" in d.waiting[("shop", "a")]


def test_working_writs_hold_their_slots_even_without_a_live_session() -> None:
    from reconciler.drivers.outposts import occupied

    writs = [writ("a", phase="Working"), writ("b", phase="Working"), writ("c")]
    assert occupied({"shop": 1}, writs) == {"shop": 2}
    d = plan_dispatch(snap(*writs, worlds=[world(capacity={"maxActive": 2})],
                           live=occupied({"shop": 1}, writs)))
    assert names(d) == [] and d.waiting[("shop", "c")] == "capacity 2/2"
