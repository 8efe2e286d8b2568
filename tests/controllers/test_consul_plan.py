"""The consul's plan, as a pure function of plain values (no tmux, no git): dispatch
readiness and order, waiting reasons, tether refreshes, recoveries, caravan phases."""

from __future__ import annotations

import dataclasses
import time

from reconciler.controllers.consul_plan import (
    SeenTether,
    Snapshot,
    View,
    caravan_phase,
    plan,
    plan_dispatch,
    stale_writs,
)
from reconciler.core.store import Record
from reconciler.core.tether import Tether


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
    broken = dataclasses.replace(world(), phase="Error", message="cannot clone")
    assert "not ready" in plan_dispatch(snap(writ("a"), worlds=[broken])).waiting[("shop", "a")]


def test_only_pending_writs_are_candidates_and_orphans_wait() -> None:
    orphan = rec("Writ", "shop", "o", {"title": "o"}, orphaned=True)
    d = plan_dispatch(snap(writ("w", phase="Working"), orphan))
    assert names(d) == []
    assert "not in the manifests" in d.waiting[("shop", "o")]


def test_caravan_phases_drydock_open_landed() -> None:
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
    old = dataclasses.replace(writ("old", phase="Working"), updated_at=time.time() - 600)
    fresh = writ("fresh", phase="Working")
    tethered = dataclasses.replace(writ("tethered", phase="Working"),
                                   updated_at=time.time() - 600)
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


# ---- the whole pass: plan(View) ----------------------------------------------------

NOW = 1_000_000.0


def view(*writs: Record, worlds=None, caravans=(), live=None, **seen) -> View:
    return View(worlds={w.name: w for w in (worlds or [world()])},
                writs={(w.world, w.name): w for w in writs}, caravans=tuple(caravans),
                live=live or {}, now=NOW, **seen)


def waits(name: str, reason: str, **spec) -> Record:
    return dataclasses.replace(writ(name, **spec), reason="Waiting", message=reason)


def working(name: str, agent: str = "vega", **fields) -> Record:
    return dataclasses.replace(writ(name, phase="Working"), **{
        "observed_generation": "g", "status": {"agent": agent}, "updated_at": NOW, **fields})


def steps(p) -> list[tuple[str, str, str]]:
    return [(a.op, a.kind, a.target) for a in p.actions]


def test_a_settled_sphere_plans_nothing_and_says_why_each_writ_waits() -> None:
    caravan = rec("Caravan", "shop", "auth", {"commissioned": True, "phases": [["a"], ["b"]]})
    caravan = dataclasses.replace(caravan, phase="Open", message="phase 1/2: 0/1 landed")
    p = plan(view(working("a"), waits("b", "waiting for a (caravan auth phase 0)"),
                  caravans=[caravan], sessions={"sol-shop-vega": True}, live={"shop": 1}))
    assert p.actions == () and p.requeue_after is None
    assert p.waiting == {"writ/shop/b": "waiting for a (caravan auth phase 0)"}


def test_a_waiting_reason_is_written_only_when_it_changed() -> None:
    p = plan(view(writ("a"), waits("b", "waiting for a", dependsOn=["a"]),
                  writ("c", dependsOn=["a"]),
                  waits("d", "an older reason", dependsOn=["a"]),
                  worlds=[world(capacity={"maxActive": 1})]))
    assert steps(p) == [("!", "wait", "writ/shop/c"), ("!", "wait", "writ/shop/d"),
                        ("+", "cast", "writ/shop/a")]
    assert [a.description for a in p.actions][:2] == ["waiting for a", "waiting for a"]
    assert p.waiting == {f"writ/shop/{n}": "waiting for a" for n in "bcd"}
    full = plan(view(writ("a"), writ("b"), worlds=[world(capacity={"maxActive": 1})]))
    assert [(a.kind, a.description) for a in full.actions] == [
        ("wait", "capacity 1/1"), ("cast", "cast an agent on sol/a (attempt 1)")]


def test_each_ready_writ_is_one_cast_with_its_attempt() -> None:
    again = dataclasses.replace(writ("b"), status={"attempt": 3})
    p = plan(view(writ("a"), again))
    assert [(a.target, a.description, dict(a.data)) for a in p.actions] == [
        ("writ/shop/a", "cast an agent on sol/a (attempt 1)", {"world": "shop", "name": "a"}),
        ("writ/shop/b", "cast an agent on sol/b (attempt 3)", {"world": "shop", "name": "b"})]


def test_a_changed_spec_rewrites_the_tether_until_it_carries_the_generation() -> None:
    changed = working("a", generation="g2")
    alive = {"sol-shop-vega": True}
    old = {("shop", "a"): SeenTether("vega", "g", "claude")}
    p = plan(view(changed, sessions=alive, tethers=old))
    assert steps(p) == [("~", "retether", "writ/shop/a")]
    assert p.actions[0].description == "spec changed: tether updated to generation g2"
    assert p.actions[0].data["generation"] == "g2"
    new = {("shop", "a"): SeenTether("vega", "g2", "claude")}
    assert plan(view(changed, sessions=alive, tethers=new)).actions == ()
    assert plan(view(working("a"), sessions=alive, tethers=old)).actions == ()


def test_a_vanished_agent_is_recovered_first_and_dispatch_looks_again_at_once() -> None:
    gone = working("a", updated_at=NOW - 600, version=7)
    p = plan(view(gone, writ("b")))
    assert steps(p) == [("~", "recover", "writ/shop/a")]
    assert p.actions[0].data["version"] == 7 and p.requeue_after == 0
    assert p.actions[0].description == "agent gone: back to Pending, branch kept"
    assert plan(view(gone, writ("b"), tethered=frozenset({("shop", "a")}))).actions == (
        plan(view(writ("b"))).actions)
    assert steps(plan(view(gone, sessions={"sol-shop-vega": True}))) == []
    assert steps(plan(view(working("a", updated_at=NOW - 30), stale_after=10.0))) == [
        ("~", "recover", "writ/shop/a")]


def test_landed_writs_are_merged_and_running_ones_adopted_never_cast() -> None:
    commit = "c" * 40
    agent = Tether(world="shop", writ="b", agent="rigel", title="b", description="",
                   kind="code", branch="sol/b", base="f" * 40, attempt=2, generation="g",
                   session="s1", runtime={"name": "script"})
    orphan = dataclasses.replace(writ("d"), orphaned=True)
    p = plan(view(writ("a"), writ("b"), writ("c"), orphan,
                  landed={("shop", "a"): commit, ("shop", "c"): commit,
                          ("shop", "d"): commit},
                  running={("shop", "b"): agent, ("shop", "c"): agent}))
    assert steps(p) == [("~", "recover-merged", "writ/shop/a"), ("~", "adopt", "writ/shop/b"),
                        ("~", "recover-merged", "writ/shop/c")]
    merged, adopted = p.actions[0], p.actions[1]
    assert merged.description == (f"already on main as {commit[:12]} (its Sol-Writ "
                                  "trailer): recorded Merged, not run again")
    assert merged.data["commit"] == commit
    assert adopted.description == "agent rigel still works on it (session s1): adopted"
    assert {k: adopted.data[k] for k in ("agent", "session", "branch", "attempt", "runtime")} \
        == {"agent": "rigel", "session": "s1", "branch": "sol/b", "attempt": 2,
            "runtime": "script"}
    assert p.requeue_after == 0


def test_a_caravan_phase_is_set_when_it_changes() -> None:
    caravan = rec("Caravan", "shop", "auth", {"commissioned": False, "phases": [["a"]]})
    p = plan(view(waits("a", "caravan auth is in drydock"), caravans=[caravan]))
    assert steps(p) == [("~", "caravan", "caravan/shop/auth")]
    assert p.actions[0].description == (
        "Drydock: planned; nothing is dispatched until commissioned")
    assert p.actions[0].data["phase"] == "Drydock"
    drydock = dataclasses.replace(caravan, phase="Drydock", message=p.actions[0].data["message"])
    assert plan(view(waits("a", "caravan auth is in drydock"), caravans=[drydock])).actions == ()


def test_it_looks_again_when_a_rate_limit_ends_or_an_agent_would_turn_stale() -> None:
    held = dataclasses.replace(world(), status={"rateLimitedUntil": NOW + 40})
    p = plan(view(writ("a"), worlds=[held]))
    assert p.requeue_after == 40 and "rate limited" in p.waiting["writ/shop/a"]
    p = plan(view(working("a", updated_at=NOW - 10), stale_after=60.0))
    assert p.actions == () and p.requeue_after == 50


def test_a_degraded_sphere_plans_no_cast_only_reasons() -> None:
    p = plan(view(writ("a"), degraded="3 deaths in 30s"))
    assert steps(p) == [("!", "wait", "writ/shop/a")]
    assert "sol resume" in p.waiting["writ/shop/a"]
