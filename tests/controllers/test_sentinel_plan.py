"""The sentinel's planner with plain values: no tmux, no git, no database."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from reconciler.controllers.sentinel_plan import (
    HOOK_GRACE,
    PENDING_RETRY,
    RATE_LIMIT_HOLD,
    ActivityView,
    OrphanView,
    OutpostView,
    SentinelView,
    TetherView,
    backoff,
    echo_grace,
)
from reconciler.controllers.sentinel_plan import plan as plan_sentinel
from reconciler.core.model import CANCELLED, DONE, FAILED, MERGED, RESOLVED, WORKING, WorldSpec
from reconciler.core.store import Record

W = "shop"
NOW = 10_000.0
SPEC = WorldSpec(source="/src", stall_after=60.0, max_respawns=3, max_active=4)


def writ(name: str = "a", phase: str = WORKING, *, agent: str = "vega", session: str = "s1",
         updated_at: float = 0.0, **status: Any) -> Record:
    return Record("Writ", W, name, {"title": name}, "g1", "", False, phase, "", "", "g1",
                  {"agent": agent, "session": session, **status}, 1, 0.0, updated_at)


def outpost(agent: str = "vega", *, writ_name: str = "a", session: bool | None = True,
            tether_session: str = "s1", started: float = NOW - 5, last_output: float | None = None,
            tether: bool = True, row_writ: str | None = "a") -> OutpostView:
    view = TetherView(writ_name, tether_session, started) if tether else None
    return OutpostView(agent, tether, view, session, last_output, row_writ)


def view(writs: list[Record], outposts: list[OutpostView], *, now: float = NOW,
         spec: WorldSpec | None = SPEC, live: int | None = None, degraded: bool = False,
         orphans: tuple[OrphanView, ...] = ()) -> SentinelView:
    if live is None:
        live = sum(1 for o in outposts if o.session)
    return SentinelView(W, spec, {w.name: w for w in writs},
                        {o.agent: o for o in outposts}, now, live, degraded, orphans)


def kinds(v: SentinelView) -> list[str]:
    return [a.kind for a in plan_sentinel(v).actions]


# ---- deaths, backoff, the respawn limit -----------------------------------------------


def test_a_dead_session_with_its_tether_is_recorded_once_then_respawned_after_backoff() -> None:
    dead = outpost(session=False)
    assert kinds(view([writ()], [dead])) == ["record-death"]
    missing = outpost(session=None)
    assert kinds(view([writ()], [missing])) == ["record-death"]
    recorded = writ(deadSession="s1", lastDeath=NOW - 0.5, respawns=0)
    plan = plan_sentinel(view([recorded], [dead]))
    assert plan.actions == () and plan.requeue_after == 0.5
    assert "backoff" in plan.waiting["writ/shop/a"]
    due = writ(deadSession="s1", lastDeath=NOW - 1.0, respawns=0)
    [action] = plan_sentinel(view([due], [dead])).actions
    assert action.kind == "respawn" and action.data["session"] == "s1"


def test_backoff_doubles_from_one_second_up_to_a_minute() -> None:
    assert [backoff(n) for n in range(8)] == [1, 2, 4, 8, 16, 32, 60, 60]
    second = writ(deadSession="s1", lastDeath=NOW - 3.9, respawns=2)
    plan = plan_sentinel(view([second], [outpost(session=False)]))
    assert plan.actions == () and abs(plan.requeue_after - 0.1) < 1e-9


@given(respawns=st.integers(0, 20), elapsed=st.floats(0, 120))
def test_respawn_is_planned_exactly_when_the_backoff_has_passed(respawns: int,
                                                                elapsed: float) -> None:
    spec = WorldSpec(source="/src", max_respawns=100)
    w = writ(deadSession="s1", lastDeath=NOW - elapsed, respawns=respawns)
    got = kinds(view([w], [outpost(session=False)], spec=spec))
    assert got == (["respawn"] if elapsed >= backoff(respawns) else [])


def test_after_max_respawns_the_next_death_fails_the_writ() -> None:
    spent = writ(deadSession="s1", lastDeath=NOW - 100, respawns=3)
    [action] = plan_sentinel(view([spent], [outpost(session=False)])).actions
    assert action.kind == "fail" and action.data["respawns"] == 3
    zero = WorldSpec(source="/src", max_respawns=0)
    first = writ(deadSession="s1", lastDeath=NOW, respawns=0)
    assert kinds(view([first], [outpost(session=False)], spec=zero)) == ["fail"]


def test_a_new_session_after_a_respawn_is_a_new_death() -> None:
    respawned = writ(session="s2", deadSession="s1", lastDeath=NOW - 9, respawns=1)
    dead = outpost(session=False, tether_session="s2")
    assert kinds(view([respawned], [dead])) == ["record-death"]


def test_degraded_holds_every_respawn_but_still_records_and_fails() -> None:
    waiting = writ("a", deadSession="s1", lastDeath=NOW - 100, respawns=0)
    fresh = writ("b", agent="rigel", session="s9")
    spent = writ("c", agent="deneb", session="s5", deadSession="s5", respawns=3)
    outs = [outpost(session=False), outpost("rigel", writ_name="b", session=False,
                                            tether_session="s9"),
            outpost("deneb", writ_name="c", session=False, tether_session="s5")]
    plan = plan_sentinel(view([waiting, fresh, spent], outs, degraded=True))
    assert [(a.kind, a.data["writ"]) for a in plan.actions] == [("record-death", "b"),
                                                                 ("fail", "c")]
    assert "degraded" in plan.waiting["writ/shop/a"]


def test_capacity_bounds_respawns_in_one_pass() -> None:
    spec = WorldSpec(source="/src", max_active=2)
    dead = [writ(n, agent=f"x{n}", session=f"s{n}", deadSession=f"s{n}", lastDeath=0.0)
            for n in "abc"]
    outs = [outpost(f"x{n}", writ_name=n, session=False, tether_session=f"s{n}")
            for n in "abc"]
    busy = outpost("other", writ_name="z", tether_session="sz", last_output=NOW)
    plan = plan_sentinel(view(dead, [*outs, busy], spec=spec, live=1))
    assert kinds(view(dead, [*outs, busy], spec=spec, live=1)) == ["respawn"]
    assert plan.waiting == {"writ/shop/b": "capacity 2/2", "writ/shop/c": "capacity 2/2"}
    unlimited = WorldSpec(source="/src", max_active=0)
    assert kinds(view(dead, outs, spec=unlimited, live=50)) == ["respawn"] * 3


def test_planned_actions_look_again_soon_and_the_end_of_degraded_is_a_deadline() -> None:
    plan = plan_sentinel(view([writ()], [outpost(session=False)]))
    assert [a.kind for a in plan.actions] == ["record-death"]
    assert plan.requeue_after == PENDING_RETRY  # raced or failed: again soon, not at once
    held = writ(deadSession="s1", lastDeath=NOW - 100, respawns=0)
    degraded = replace(view([held], [outpost(session=False)], degraded=True),
                       degraded_exit=NOW + 200)
    plan = plan_sentinel(degraded)
    assert plan.actions == () and plan.requeue_after == 200
    late = replace(degraded, degraded_exit=NOW - 1)  # not left yet: look again soon
    assert plan_sentinel(late).requeue_after == PENDING_RETRY


@given(live=st.integers(0, 6), limit=st.integers(0, 5), dead=st.integers(0, 6))
def test_respawns_never_exceed_capacity(live: int, limit: int, dead: int) -> None:
    spec = WorldSpec(source="/src", max_active=limit)
    writs = [writ(f"w{i}", agent=f"x{i}", session=f"s{i}", deadSession=f"s{i}", lastDeath=0.0)
             for i in range(dead)]
    outs = [outpost(f"x{i}", writ_name=f"w{i}", session=False, tether_session=f"s{i}")
            for i in range(dead)]
    respawned = kinds(view(writs, outs, spec=spec, live=live)).count("respawn")
    assert respawned == (dead if limit == 0 else min(dead, max(0, limit - live)))


def test_no_tether_or_another_writs_tether_is_not_a_death() -> None:
    assert kinds(view([writ()], [outpost(session=False, tether=False, row_writ="a")])) == [
        "stop-zombie"]
    assert kinds(view([writ()], [outpost(session=None, tether=False)])) == []
    other = outpost(session=None, writ_name="b")
    assert kinds(view([writ()], [other])) == []
    for phase in (RESOLVED, FAILED):
        assert "record-death" not in kinds(view([writ(phase=phase)], [outpost(session=None)]))


# ---- stalls -----------------------------------------------------------------------


def test_silence_gets_one_nudge_then_stalled_then_nothing_more() -> None:
    quiet = outpost(started=NOW - 100, last_output=NOW - 61)
    assert kinds(view([writ()], [quiet])) == ["nudge"]
    talking = outpost(started=NOW - 100, last_output=NOW - 10)
    plan = plan_sentinel(view([writ()], [talking]))
    assert plan.actions == () and plan.requeue_after == 50
    fresh_session = outpost(started=NOW - 10, last_output=NOW - 500)
    assert plan_sentinel(view([writ()], [fresh_session])).requeue_after == 50
    nudged = writ(nudge={"session": "s1", "at": NOW - 30})
    echo = outpost(started=NOW - 200, last_output=NOW - 30 + 0.2)  # the nudge's own echo
    plan = plan_sentinel(view([nudged], [echo]))
    assert plan.actions == () and plan.requeue_after == 30
    late = writ(nudge={"session": "s1", "at": NOW - 60})
    late_echo = outpost(started=NOW - 200, last_output=NOW - 60 + 0.2)
    assert kinds(view([late], [late_echo])) == ["stall"]
    stalled = writ(nudge={"session": "s1", "at": NOW - 600, "stalled": True})
    plan = plan_sentinel(view([stalled], [outpost(started=NOW - 900, last_output=NOW - 599)]))
    assert plan.actions == () and plan.requeue_after is None


def test_output_after_the_nudge_clears_it_and_a_stale_nudge_is_ignored() -> None:
    nudged = writ(nudge={"session": "s1", "at": NOW - 30, "stalled": True},
                  conditions=[{"type": "Stalled", "status": "True"}])
    spoke = outpost(started=NOW - 200, last_output=NOW - 30 + echo_grace(60) + 1)
    assert kinds(view([nudged], [spoke])) == ["unstall"]
    old = writ(session="s2", nudge={"session": "s1", "at": NOW - 9000})
    assert kinds(view([old], [outpost(tether_session="s2", last_output=NOW - 1)])) == []
    leftover = writ(session="s2", conditions=[{"type": "Stalled", "status": "True"}])
    assert kinds(view([leftover], [outpost(tether_session="s2", last_output=NOW)])) == [
        "unstall"]


def test_stall_after_zero_turns_stall_detection_off() -> None:
    off = WorldSpec(source="/src", stall_after=0)
    quiet = outpost(started=0.0, last_output=0.0)
    assert kinds(view([writ()], [quiet], spec=off)) == []
    assert plan_sentinel(view([writ()], [quiet], spec=off)).requeue_after is None


def test_echo_grace_scales_with_stall_after() -> None:
    assert echo_grace(2) == 1.0 and echo_grace(6) == 3.0 and echo_grace(900) == 10.0


# ---- zombies ----------------------------------------------------------------------


def test_sessions_without_tether_or_of_ended_writs_are_zombies() -> None:
    ghost = outpost("ghost", tether=False, row_writ=None)
    [action] = plan_sentinel(view([], [ghost])).actions
    assert (action.kind, action.data["why"]) == ("stop-zombie", "no tether")
    assert action.target == "session/sol-shop-ghost"
    for phase in (MERGED, CANCELLED, FAILED, DONE):
        got = plan_sentinel(view([writ(phase=phase)], [outpost()])).actions
        assert [(a.kind, a.data["why"]) for a in got] == [
            ("stop-zombie", f"writ a is {phase}")]
    assert kinds(view([writ(phase=RESOLVED)], [outpost()])) == []
    envoy = outpost("envoy1", tether=False, row_writ=None)
    assert kinds(view([], [envoy])) == []
    unreadable = OutpostView("vega", True, None, True, None, "a")
    assert kinds(view([writ()], [unreadable])) == []
    assert kinds(view([], [ghost], spec=None)) == ["stop-zombie"]


def test_a_session_whose_writ_just_resolved_gets_a_grace_to_stop_itself() -> None:
    resolving = writ(phase=RESOLVED, updated_at=NOW - 1)
    ending = outpost(tether=False, row_writ="a")
    plan = plan_sentinel(view([resolving], [ending]))
    assert plan.actions == () and plan.requeue_after == 5 - 1
    later = writ(phase=RESOLVED, updated_at=NOW - 6)
    assert kinds(view([later], [ending])) == ["stop-zombie"]
    dead = outpost(session=False, tether=False, row_writ="a")
    assert kinds(view([resolving], [dead])) == ["stop-zombie"]


# ---- orphans ----------------------------------------------------------------------


def test_orphan_worktrees_are_removed_only_when_merged_and_clean_and_reported_once() -> None:
    def orphan(agent: str, merged: bool, dirty: bool, reported: bool) -> OrphanView:
        return OrphanView(agent, f"h-{agent}", merged, dirty, reported)

    plan = plan_sentinel(view([], [], orphans=(
        orphan("a1", True, False, False), orphan("a2", False, False, False),
        orphan("a3", True, True, False), orphan("a4", False, False, True))))
    assert [(a.kind, a.data["agent"]) for a in plan.actions] == [
        ("remove-orphan", "a1"), ("report-orphan", "a2"), ("report-orphan", "a3")]
    assert plan.actions[0].op == "-" and plan.actions[1].op == "!"


# ---- agents whose CLI reports through hooks (claude) ---------------------------------


def hooked(state: str, at: float, *, session: str = "s1", message: str = "") -> OutpostView:
    """An outpost whose hooks last said `state` at `at`; its pane silent for an hour."""
    base = outpost(last_output=NOW - 3600, started=NOW - 3600)
    return replace(base, activity=ActivityView(state, at, session, "", message))


def test_a_turn_in_progress_is_never_nudged_however_silent_its_pane() -> None:
    plan = plan_sentinel(view([writ()], [hooked("working", NOW - 3600)]))
    assert plan.actions == () and plan.requeue_after is None


def test_a_turn_that_ended_without_resolve_is_nudged_after_stall_after() -> None:
    plan = plan_sentinel(view([writ()], [hooked("idle", NOW - 30)]))
    assert plan.actions == () and plan.requeue_after == 30
    [action] = plan_sentinel(view([writ()], [hooked("idle", NOW - 60)])).actions
    assert action.kind == "nudge" and action.data["hooks"] is True


def test_after_a_nudge_a_second_idle_turn_is_stalled_and_new_work_unstalls() -> None:
    nudged = writ(nudge={"session": "s1", "at": NOW - 50})
    plan = plan_sentinel(view([nudged], [hooked("idle", NOW - 40)]))
    assert plan.actions == () and plan.requeue_after == 20  # from the later of the two
    assert kinds(view([nudged], [hooked("idle", NOW - 70)])) == []  # answered: wait
    late = writ(nudge={"session": "s1", "at": NOW - 61})
    assert kinds(view([late], [hooked("idle", NOW - 100)])) == ["stall"]
    stalled = writ(nudge={"session": "s1", "at": NOW - 61, "stalled": True,
                          "stalledAt": NOW - 1},
                   conditions=[{"type": "Stalled", "status": "True"}])
    assert kinds(view([stalled], [hooked("idle", NOW - 100)])) == []
    assert kinds(view([stalled], [hooked("working", NOW)])) == ["unstall"]


def test_hooks_of_an_earlier_session_are_not_believed() -> None:
    stale = hooked("working", NOW, session="s0")  # the pane is the judge again
    assert kinds(view([writ()], [stale])) == ["nudge"]


def test_a_rate_limit_holds_then_tells_the_agent_to_go_on_never_nudging() -> None:
    said = "API Error: Request rejected (429) · retry after 30s"
    limited = hooked("rate-limited", NOW - 5, message=said)
    [action] = plan_sentinel(view([writ()], [limited])).actions
    assert action.kind == "rate-limited" and action.data["until"] == NOW + 25
    seen = writ(rateLimit={"at": NOW - 5, "until": NOW + 25})
    plan = plan_sentinel(view([seen], [limited], now=NOW + 10))
    assert plan.actions == () and plan.requeue_after == 25 - 10
    assert kinds(view([seen], [limited], now=NOW + 25)) == ["rate-limit-over"]
    told = writ(rateLimit={"at": NOW - 5, "until": NOW + 25, "sentAt": NOW + 25})
    assert kinds(view([told], [limited], now=NOW + 30)) == []
    assert kinds(view([told], [hooked("working", NOW + 31)], now=NOW + 32)) == [
        "rate-limit-cleared"]
    plain = hooked("rate-limited", NOW - 5, message="API Error: 529 Overloaded.")
    assert plan_sentinel(view([writ()], [plain])).actions[0].data["until"] == (
        NOW - 5 + RATE_LIMIT_HOLD)


def test_a_hooked_agent_whose_hooks_have_not_spoken_gets_a_start_up_grace() -> None:
    quiet = outpost(last_output=NOW - 100, started=NOW - 100)
    hooked_tether = replace(quiet, tether=replace(quiet.tether, hooks=True))
    assert kinds(view([writ()], [quiet])) == ["nudge"]
    plan = plan_sentinel(view([writ()], [hooked_tether]))
    assert plan.actions == () and plan.requeue_after == HOOK_GRACE - 100


def test_agents_on_other_machines_are_looked_at_every_few_seconds() -> None:
    """A death on a Ray node wakes no local death watch: the world's sentinel polls."""
    from reconciler.controllers.sentinel_plan import REMOTE_POLL
    from reconciler.core.model import SessionsSpec

    remote = replace(SPEC, stall_after=0.0, sessions=SessionsSpec("ray", "127.0.0.1:6379"))
    assert plan_sentinel(view([writ()], [outpost()], spec=remote)).requeue_after == REMOTE_POLL
    assert plan_sentinel(view([writ()], [outpost()], spec=replace(remote, sessions=SessionsSpec()))
                ).requeue_after is None


# ---- requests an agent left on its node (workspace: node) ------------------------------


def test_a_resolve_from_its_node_is_applied_and_its_ended_session_is_no_death() -> None:
    from reconciler.controllers.sentinel_plan import OutboxView

    asked = OutboxView("resolve", "r1", "s1", head="abc123", ahead=2)
    done = replace(outpost(session=False), outbox=(asked,))
    [action] = plan_sentinel(view([writ()], [done])).actions
    assert action.kind == "resolve-from-node"
    assert action.data["head"] == "abc123" and action.data["ahead"] == 2
    # Without the request the same dead session is a death.
    assert kinds(view([writ()], [outpost(session=False)])) == ["record-death"]


def test_a_request_of_an_earlier_session_is_stale_and_ignored() -> None:
    from reconciler.controllers.sentinel_plan import OutboxView

    stale = OutboxView("resolve", "r1", "s0", head="abc123")
    assert kinds(view([writ()], [replace(outpost(session=False), outbox=(stale,))])) == [
        "record-death"]


def test_an_escalation_from_its_node_is_recorded_once() -> None:
    from reconciler.controllers.sentinel_plan import OutboxView

    asked = OutboxView("escalate", "e1", "s1", message="the spec contradicts the tests")
    live = replace(outpost(last_output=NOW), outbox=(asked,))
    [action] = plan_sentinel(view([writ()], [live])).actions
    assert action.kind == "escalate-from-node" and "contradicts" in action.data["message"]
    assert kinds(view([writ(nodeRequests=["e1"])], [live])) == []
