"""Degraded mode as a reconciler: the plan on plain values, and its acts on a real store
(compare-and-set against a death or a `sol resume` that came in between)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import replace

import pytest

from reconciler.controllers import degraded as reconciler
from reconciler.controllers.degraded import DegradedView, plan
from reconciler.core import degraded
from reconciler.core.degraded import Death, Mode
from reconciler.core.home import Home
from reconciler.core.plan import UPDATE
from reconciler.drivers.sphere import Sphere

NOW = 1_000_000.0


def deaths(*ages: float) -> tuple[Death, ...]:
    return tuple(Death(NOW - age, f"shop/{chr(ord('a') + n)}") for n, age in enumerate(ages))


def test_fewer_than_a_burst_plans_nothing_and_waits_for_the_next_death() -> None:
    result = plan(DegradedView(Mode(deaths=deaths(5, 1)), NOW))
    assert result.actions == () and result.requeue_after is None


def test_three_deaths_within_thirty_seconds_enter() -> None:
    result = plan(DegradedView(Mode(cleared_at=12.0, deaths=deaths(30, 10, 0)), NOW))
    [enter] = result.actions
    assert (enter.op, enter.kind, enter.target) == (UPDATE, "enter", "sphere/degraded")
    assert enter.description.startswith("3 agent sessions died within 30s (shop/a, shop/b, "
                                        "shop/c): respawning stopped")
    assert enter.data == {"clearedAt": 12.0, "at": NOW, "reason": enter.description,
                          "deaths": 3}
    assert result.requeue_after == degraded.QUIET


def test_three_deaths_spread_over_more_than_the_window_do_not() -> None:
    assert plan(DegradedView(Mode(deaths=deaths(31, 10, 0)), NOW)).actions == ()


def test_degraded_waits_for_five_quiet_minutes_then_leaves() -> None:
    mode = Mode(active=True, since=NOW - 200, reason="burst", deaths=deaths(250, 100))
    waiting = plan(DegradedView(mode, NOW))
    assert waiting.actions == () and waiting.requeue_after == 200.0  # from the last death
    later = NOW + 200
    [leave] = plan(DegradedView(mode, later)).actions
    assert (leave.op, leave.kind, leave.target) == (UPDATE, "leave", "sphere/degraded")
    assert leave.description == "no agent session died for 5 minutes: respawning resumes"
    assert leave.data == {"since": NOW - 200, "quietSince": NOW - 100, "at": later,
                          "why": leave.description}


def test_the_plan_is_pure() -> None:
    view = DegradedView(Mode(deaths=deaths(3, 2, 1)), NOW)
    assert plan(view) == plan(view)


# ---- on a real store -----------------------------------------------------------------


@pytest.fixture
def sphere(sol_home: Home) -> Iterator[Sphere]:
    sp = Sphere(sol_home)
    yield sp
    sp.close()


def die(sphere: Sphere, writ: str) -> None:
    degraded.record_death(sphere.store, world="shop", writ=writ, agent="vega",
                          session=f"s-{writ}", message="died")


def step(sphere: Sphere, now: float) -> list[str]:
    """One observe/plan/act at `now`: the kinds of the actions carried out."""
    result = plan(replace(reconciler.observe(sphere), now=now))
    return [a.kind for a in result.actions if reconciler.act(sphere, a)]


def test_enters_on_a_burst_leaves_after_five_quiet_minutes_and_once_only(
        sphere: Sphere) -> None:
    store = sphere.store
    die(sphere, "a")
    die(sphere, "b")
    now = time.time()
    assert step(sphere, now) == [] and step(sphere, now + 31) == []
    die(sphere, "c")
    assert step(sphere, now + 31) == []  # three, but spread over more than 30s
    die(sphere, "d")
    die(sphere, "e")
    assert step(sphere, time.time()) == ["enter"]
    entered = degraded.state(store)
    assert entered is not None and "(shop/c, shop/d, shop/e)" in entered.reason
    assert step(sphere, time.time()) == [] and degraded.state(store) == entered
    [event] = store.events(types=["degraded"])
    assert (event.kind, event.message, event.data) == ("Sphere", entered.reason, {"deaths": 3})
    leave = degraded.exit_at(store)
    assert leave == max(store.events(types=["session-died"])[-1].ts, entered.since) + 300
    assert step(sphere, leave - 1) == [] and degraded.state(store) is not None
    assert step(sphere, leave) == ["leave"] and degraded.state(store) is None
    [recovered] = store.events(types=["recovered"])
    assert "5 minutes" in recovered.message
    assert step(sphere, time.time()) == []  # old deaths never count again
    assert degraded.resume(store) is False


def test_a_resume_or_a_death_in_between_wins_over_the_planned_step(sphere: Sphere) -> None:
    for writ in "abc":
        die(sphere, writ)
    [enter] = reconciler.RECONCILER.planned(sphere).actions
    assert degraded.resume(sphere.store) is False  # not degraded yet, but resumed
    assert reconciler.act(sphere, enter) is False
    assert degraded.state(sphere.store) is None
    assert reconciler.RECONCILER.planned(sphere).actions == ()  # those deaths are forgiven

    for writ in "def":
        die(sphere, writ)
    assert [a.kind for a in reconciler.RECONCILER.reconcile(sphere).actions] == ["enter"]
    later = (degraded.exit_at(sphere.store) or 0) + 1
    [leave] = plan(replace(reconciler.observe(sphere), now=later)).actions
    die(sphere, "g")  # the quiet spell is broken before the leave is written
    assert reconciler.act(sphere, leave) is False
    assert degraded.state(sphere.store) is not None
    assert len(sphere.store.events(types=["recovered"])) == 0


def test_sol_resume_leaves_at_once(sphere: Sphere) -> None:
    for writ in "abc":
        die(sphere, writ)
    reconciler.RECONCILER.reconcile(sphere)
    assert degraded.resume(sphere.store) is True
    assert degraded.state(sphere.store) is None
    assert "sol resume" in sphere.store.events(types=["recovered"])[0].message
    assert reconciler.RECONCILER.planned(sphere).actions == ()


def test_deaths_of_a_lost_node_are_told_but_never_make_a_burst(sphere: Sphere) -> None:
    """A lost Ray node takes all its agents at once: their deaths are recorded, with the
    node, and the sentinel casts them again elsewhere; the sphere does not degrade."""
    now = time.time()
    for writ in ("a", "b", "c", "d"):
        degraded.record_death(sphere.store, world="shop", writ=writ, agent="vega",
                              session=f"s-{writ}", message="died (its node n2 was lost)",
                              counted=False, nodeLost="n2")
    assert step(sphere, now) == []
    assert degraded.state(sphere.store) is None
    died = sphere.store.events(types=[degraded.DIED])
    assert len(died) == 4 and {e.data["nodeLost"] for e in died} == {"n2"}
    for writ in ("e", "f", "g"):
        die(sphere, writ)
    assert step(sphere, now) == ["enter"]  # agents dying by themselves still do
