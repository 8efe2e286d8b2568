"""Budgets: the budget reconciler's plan as a pure function of plain values (time
injected), then end to end with real tmux, git and SQLite: a script agent whose
transcript passes its writ's limit is stopped and escalated with its branch kept; a
world past its daily budget casts and respawns nothing more that day; one `cost` event
per ended attempt."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

from conftest import git, poll
from helpers import store, tmux_sessions, world_yaml, writ_status, writ_yaml, write_specs

from reconciler.controllers import sentinel
from reconciler.controllers.budget import (
    BudgetView,
    Spend,
    WorldBudget,
    WritBudget,
    plan,
)
from reconciler.controllers.consul_plan import Snapshot, why_waiting
from reconciler.core.holds import world_hold
from reconciler.core.home import Home
from reconciler.core.model import FAILED, RESOLVED, WORKING, Limit
from reconciler.core.times import day_bounds, rfc3339
from reconciler.drivers.sessions import TmuxSessions
from reconciler.drivers.sphere import Sphere
from tests.controllers.test_suspension_plan import world as world_record
from tests.controllers.test_suspension_plan import writ as writ_record

NOW = 1_790_000_000.0
START, END = day_bounds(NOW)
SONNET = "claude-sonnet-4-5-20250929"


def writ_budget(name: str = "a", *, phase: str = WORKING, spent: Spend | None = None,
                limit: Limit | None = None, untold: tuple[tuple[int, Spend], ...] = ()
                ) -> WritBudget:
    return WritBudget("shop", name, phase, 3, "s1", 1, 0, limit, "spec.budget.max", spent,
                      untold)


def view(*writs: WritBudget, worlds: tuple[WorldBudget, ...] = (), now: float = NOW
         ) -> BudgetView:
    return BudgetView(now, day_bounds(now)[1], tuple(writs), worlds)


# ---- the plan --------------------------------------------------------------------


def test_a_writ_past_its_limit_is_stopped_and_one_within_it_is_not() -> None:
    over = writ_budget("a", spent=Spend(Decimal("5.01"), 10), limit=Limit(Decimal(5)))
    within = writ_budget("b", spent=Spend(Decimal("4.99"), 10), limit=Limit(Decimal(5)))
    tokens = writ_budget("c", spent=Spend(None, 2_001), limit=Limit(tokens=2_000))
    actions = plan(view(over, within, tokens)).actions
    assert [(a.kind, a.data["writ"]) for a in actions] == [("over-budget", "a"),
                                                          ("over-budget", "c")]
    assert actions[0].data["passed"] == "$5.01 of $5.00"
    assert actions[1].data["passed"] == "2,001 of 2,000 tokens"


def test_an_unpriced_model_is_judged_on_tokens_alone() -> None:
    unpriced = writ_budget("a", spent=Spend(None, 10**9), limit=Limit(Decimal(1)))
    assert plan(view(unpriced)).actions == ()


def test_each_ended_attempt_is_told_once() -> None:
    told = writ_budget("a", phase=RESOLVED, untold=((1, Spend(Decimal("0.5"), 900)),))
    action, = plan(view(told)).actions
    assert (action.kind, action.data["attempt"], action.data["tokens"]) == ("cost", 1, 900)
    assert action.description == "attempt 1 cost $0.50, 900 tokens"


def test_a_world_past_its_day_is_held_until_midnight_and_the_next_day_is_free() -> None:
    limit = Limit(Decimal(10))
    spent = WorldBudget("shop", limit, Spend(Decimal("10.50"), 1), held_until=0.0)
    action, = plan(view(worlds=(spent,))).actions
    assert (action.kind, action.data["until"]) == ("hold-world", END)
    assert action.data["passed"] == "$10.50 of $10.00"
    held = WorldBudget("shop", limit, Spend(Decimal("10.50"), 1), held_until=END)
    result = plan(view(worlds=(held,)))
    assert result.actions == () and result.requeue_after == END - NOW
    # the next day: the spend counted from its midnight is within the limit, the old
    # hold has lapsed, nothing is held or planned
    tomorrow = END + 3600
    fresh = WorldBudget("shop", limit, Spend(Decimal(0), 0), held_until=END)
    result = plan(view(worlds=(fresh,), now=tomorrow))
    assert result.actions == () and result.requeue_after is None
    record = world_record({"budgetHeldUntil": END, "budgetHeld": "$10.50 of $10.00"})
    assert world_hold(record, NOW) is not None and world_hold(record, tomorrow) is None


def test_a_held_world_gives_its_pending_writs_the_reason() -> None:
    record = world_record({"budgetHeldUntil": NOW + 600, "budgetHeld": "$10.50 of $10.00"})
    snapshot = Snapshot(worlds={"shop": record}, writs={}, now=NOW)
    reason = why_waiting(snapshot, writ_record("b"), {})
    assert reason is not None and reason.startswith(
        "world shop spent $10.50 of $10.00 today (spec.budget.perDay): no new agent and no "
        "respawn for 600s")
    assert why_waiting(Snapshot(worlds={"shop": record}, writs={}, now=NOW + 601),
                       writ_record("b"), {}) is None


# ---- end to end ------------------------------------------------------------------


def transcript(home: Home, agent: str, writ: str, *lines: tuple[str, int, float]) -> Path:
    """A Claude Code transcript in the agent's own config dir, as the real CLI writes it:
    one assistant message per (id, output tokens, unix time)."""
    worktree = home.worktree("shop", agent)
    path = (home.outpost("shop", agent) / "claude" / "projects"
            / str(worktree).replace("/", "-") / "0000-session.jsonl")
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as out:
        for ident, output, ts in lines:
            stamp = datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")
            out.write(json.dumps({
                "cwd": str(worktree), "gitBranch": f"sol/{writ}", "type": "assistant",
                "timestamp": stamp, "message": {
                    "id": ident, "model": SONNET, "role": "assistant", "content": [],
                    "usage": {"input_tokens": 0, "output_tokens": output,
                              "cache_creation_input_tokens": 0,
                              "cache_read_input_tokens": 0}}}) + "\n")
    return path


def agent_of(home: Home, writ: str) -> str:
    poll(lambda: (r := writ_status(home, "shop", writ)) and r.phase == WORKING,
         what=f"writ {writ} working")
    return str(writ_status(home, "shop", writ).status["agent"])


def test_a_writ_past_its_max_is_stopped_escalated_and_keeps_its_branch(
        sol_home: Home, repo: Path, tmp_path: Path, sol) -> None:
    steps = "echo start > work.txt && git add work.txt && git commit -qm start && sleep 600"
    specs = write_specs(tmp_path / "specs", world_yaml("shop", repo),
                        writ_yaml("big", "shop", steps, extra="budget: {max: {tokens: 500}}"),
                        writ_yaml("fine", "shop", "sleep 600"))
    sol("apply", "-f", str(specs), check=True)
    big, fine = agent_of(sol_home, "big"), agent_of(sol_home, "fine")
    poll(lambda: git(sol_home.repo("shop"), "log", "-1", "--format=%s", "sol/big") == "start",
         what="the agent's commit")
    transcript(sol_home, big, "big", ("m1", 300, time.time()), ("m2", 201, time.time()))
    transcript(sol_home, fine, "fine", ("m3", 900, time.time()))  # no limit: goes on
    sol("reconcile", "--once", check=True)

    record = writ_status(sol_home, "shop", "big")
    assert (record.phase, record.reason) == (FAILED, "BudgetExceeded")
    assert "spent 501 of 500 tokens (spec.budget.max)" in record.message
    conditions = {c["type"]: c["status"] for c in record.status["conditions"]}
    assert conditions["BudgetExceeded"] == "True" and conditions["Escalated"] == "True"
    poll(lambda: f"sol-shop-{big}" not in tmux_sessions(sol_home), what="session stopped")
    assert git(sol_home.repo("shop"), "log", "-1", "--format=%s", "sol/big") == "start"
    assert sol_home.worktree("shop", big).exists()
    assert writ_status(sol_home, "shop", "fine").phase == WORKING
    s = store(sol_home)
    try:
        kinds = [(e.type, e.name) for e in s.events(types=["failed", "escalated", "cost"])]
    finally:
        s.close()
    assert ("failed", "big") in kinds and ("escalated", "big") in kinds
    assert kinds.count(("cost", "big")) == 1  # its attempt ended: told once
    sol("reconcile", "--once", check=True)
    s = store(sol_home)
    try:
        assert len(s.events(types=["cost"])) == 1
        cost = s.events(types=["cost"])[0]
    finally:
        s.close()
    assert (cost.data["attempt"], cost.data["tokens"]) == (1, 501)
    described = sol("describe", "writ", "big", check=True).stdout
    assert "BudgetExceeded" in described


def test_a_world_past_its_day_casts_and_respawns_nothing_more(
        sol_home: Home, repo: Path, tmp_path: Path, sol) -> None:
    world = world_yaml("shop", repo, extra="budget: {perDay: {tokens: 1000}}\n")
    first = write_specs(tmp_path / "specs", world, writ_yaml("a", "shop", "sleep 600"))
    sol("apply", "-f", str(first), check=True)
    agent = agent_of(sol_home, "a")
    yesterday = day_bounds(time.time())[0] - 3600
    transcript(sol_home, agent, "a", ("old", 50_000, yesterday),  # another day: not counted
               ("m1", 600, time.time()))
    sol("reconcile", "--once", check=True)
    assert writ_status(sol_home, "shop", "a").phase == WORKING  # no perWrit: goes on
    s = store(sol_home)
    try:
        assert s.get("World", "", "shop").status.get("budgetHeldUntil") is None
    finally:
        s.close()

    transcript(sol_home, agent, "a", ("m2", 500, time.time()))
    write_specs(tmp_path / "specs", world, writ_yaml("a", "shop", "sleep 600"),
                writ_yaml("b", "shop", "true"))
    sol("apply", "-f", str(first), check=True)
    sol("reconcile", "--once", check=True)
    b = writ_status(sol_home, "shop", "b")
    assert b.phase == "Pending"
    assert "world shop spent 1,100 of 1,000 tokens today (spec.budget.perDay)" in b.message
    s = store(sol_home)
    try:
        shop = s.get("World", "", "shop")
        assert shop.status["budgetHeldUntil"] == day_bounds(time.time())[1]
        assert len(s.events(types=["budget-exceeded"])) == 1
    finally:
        s.close()
    conditions = {c["type"]: c for c in shop.status.get("conditions") or []}
    assert conditions["BudgetExceeded"]["status"] == "True"
    assert writ_status(sol_home, "shop", "a").phase == WORKING  # a running agent goes on
    status = sol("status").stdout
    assert "today" in status and "1,100 tokens" in status

    # its session dies: no respawn while the world is held
    TmuxSessions(sol_home.socket_name).stop(f"sol-shop-{agent}")
    sol("reconcile", "--once", check=True)
    a = writ_status(sol_home, "shop", "a")
    assert a.phase == WORKING and a.status.get("deadSession") == a.status["session"]
    sphere = Sphere(sol_home)
    try:
        planned = sentinel.RECONCILER.planned(sphere, "shop")
    finally:
        sphere.close()
    assert "respawn" not in [x.kind for x in planned.actions]
    assert "spent 1,100 of 1,000 tokens today" in planned.waiting["writ/shop/a"]
    assert f"sol-shop-{agent}" not in tmux_sessions(sol_home)


def test_the_world_conditions_follow_its_holds() -> None:
    from reconciler.controllers.worlds import hold_changes

    assert hold_changes(world_record(), NOW) == []  # never held: no condition written
    held = world_record({"rateLimitedUntil": NOW + 60, "budgetHeldUntil": END,
                         "budgetHeld": "$10.50 of $10.00"})
    changes = {cause: (state, message) for cause, state, message in hold_changes(held, NOW)}
    assert changes["RateLimited"][0] is True and "until" in changes["RateLimited"][1]
    assert changes["BudgetExceeded"] == (
        True, "spent $10.50 of $10.00 today (spec.budget.perDay); no new agent and no "
        f"respawn until {rfc3339(END)}")
    shown = world_record({**held.status, "conditions": [
        {"type": cause, "status": "True", "message": message}
        for cause, (_, message) in changes.items()]})
    assert hold_changes(shown, NOW) == []  # already says so
    assert [(c, s) for c, s, _ in hold_changes(shown, END + 1)] == [
        ("RateLimited", False), ("BudgetExceeded", False)]  # both ended: cleared
