"""The budget reconciler: what agents spend, held to `spec.budget`, and told per attempt.

Desired state: no Working writ past its limit (`spec.budget.max`, else the world's
`budget.perWrit`, counted since its cast or last retry), no world casting or respawning
past `budget.perDay` (a local calendar day), and one `cost` event per attempt that
ended. observe reads the ledger's usage (ledger_store: one grouped query, so a sphere
whose agents write no transcripts costs one query a pass), plan (pure) decides, act
stops a writ (its session and tether; branch and worktree kept, Failed with reason
BudgetExceeded and escalated, so `sol retry` or a raised limit re-drives it), holds a
world until midnight (`core.holds`: the consul and the sentinel read the hold), or
records a `cost` event. It runs in the consul just after the ledger pass, so the spend
it judges is as fresh as the transcripts.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from decimal import Decimal

from reconciler.controllers.base import Reconciler, Scope
from reconciler.core import ledger_store, prices
from reconciler.core.conditions import escalate, with_condition
from reconciler.core.holds import BUDGET_EXCEEDED
from reconciler.core.locks import flock
from reconciler.core.model import (
    CANCELLED,
    DONE,
    FAILED,
    MERGED,
    MERGING,
    RESOLVED,
    WORKING,
    Limit,
    WorldSpec,
    WritSpec,
)
from reconciler.core.plan import NOTE, UPDATE, Action, Plan, sooner
from reconciler.core.records import Record
from reconciler.core.store import Store
from reconciler.core.times import day_bounds, parse_rfc3339, rfc3339
from reconciler.drivers.outposts import release
from reconciler.drivers.sphere import Sphere
from reconciler.specs.changes import target

ENDED = frozenset({RESOLVED, MERGING, MERGED, DONE, FAILED, CANCELLED})
"""Phases in which the writ's current attempt has ended (no agent works on it)."""
COSTED = "costed:"
"""Meta key prefix: `costed:<world>/<writ>` = `<retries>:<attempt>`, the last attempt told."""


@dataclass(frozen=True)
class Spend:
    usd: Decimal | None
    tokens: int

    def __str__(self) -> str:
        money = f"${self.usd:.2f}, " if self.usd is not None else ""
        return f"{money}{self.tokens:,} tokens"


@dataclass(frozen=True)
class WritBudget:
    """A writ with usage: its state, its limit, what it spent since its cast or retry,
    and what each of its ended, untold attempts cost."""

    world: str
    name: str
    phase: str
    version: int
    session: str | None
    attempt: int
    retries: int
    limit: Limit | None
    limit_from: str                    # spec.budget.max | the world's spec.budget.perWrit
    spent: Spend | None                # None: not Working, not judged
    untold: tuple[tuple[int, Spend], ...] = ()


@dataclass(frozen=True)
class WorldBudget:
    name: str
    per_day: Limit | None
    today: Spend | None
    held_until: float


@dataclass(frozen=True)
class BudgetView:
    now: float
    day_end: float                     # the next local midnight: when perDay's window rolls
    writs: tuple[WritBudget, ...]
    worlds: tuple[WorldBudget, ...]


def _since(writ: Record) -> float:
    """When the writ's budget window began: its last retry (a retry grants a fresh budget)."""
    retries = writ.status.get("retries") or []
    try:
        return parse_rfc3339(str(retries[-1]["at"])) if retries else 0.0
    except (ValueError, KeyError, TypeError):
        return 0.0


def observe(sphere: Sphere, key: str = "") -> BudgetView:
    now = time.time()
    start, end = day_bounds(now)
    store = sphere.store
    worlds = {w.name: w for w in store.list("World")}
    specs = {name: WorldSpec.from_spec(w.spec) for name, w in worlds.items()}
    table = None
    if any(s.per_day or s.per_writ for s in specs.values()) or ledger_store.recorded(store):
        table = prices.load(sphere.config.extra, str(sphere.home.config))
    world_views = []
    for name, spec in sorted(specs.items()):
        today = None
        if spec.per_day is not None and table is not None:
            today = Spend(*ledger_store.spend(store, table, world=name, since=start))
        world_views.append(WorldBudget(name, spec.per_day, today,
                                       float(worlds[name].status.get("budgetHeldUntil") or 0)))
    found: dict[tuple[str, str], list[int]] = {}
    for world, writ, attempt in ledger_store.attempts(store) if table is not None else ():
        found.setdefault((world, writ), []).append(attempt)
    told = ledger_store.marks(store, COSTED)
    writs = []
    for (world, name), numbers in sorted(found.items()):
        record = store.get("Writ", world, name)
        spec = specs.get(world)
        if record is None or spec is None or table is None:
            continue
        writs.append(_writ_budget(store, table, record, spec, numbers, told.get(f"{world}/{name}")))
    return BudgetView(now, end, tuple(writs), tuple(world_views))


def _writ_budget(store: Store, table: prices.Prices, record: Record,
                 world: WorldSpec, numbers: list[int], told: str | None) -> WritBudget:
    spec = WritSpec.from_spec(record.spec)
    limit, where = ((spec.budget, "spec.budget.max") if spec.budget is not None
                    else (world.per_writ, f"world {record.world}'s spec.budget.perWrit"))
    since = _since(record)
    retries = len(record.status.get("retries") or [])
    attempt = int(record.status.get("attempt") or 1)
    spent = None
    if record.phase == WORKING and limit is not None:
        spent = Spend(*ledger_store.spend(store, table, world=record.world, writ=record.name,
                                          since=since))
    last_told = 0
    if told and told.split(":")[0] == str(retries):
        last_told = int(told.split(":")[1])
    ended = [n for n in numbers if last_told < n < attempt
             or (n == attempt and record.phase in ENDED)]
    untold = tuple((n, Spend(*ledger_store.spend(store, table, world=record.world,
                                                 writ=record.name, attempt=n, since=since)))
                   for n in ended)
    return WritBudget(record.world, record.name, record.phase, record.version,
                      record.status.get("session"), attempt, retries, limit, where, spent,
                      untold)


def plan(view: BudgetView) -> Plan:
    """Pure: stop each Working writ past its limit, hold each world past its day's
    budget until the window rolls, and tell each ended attempt's cost once."""
    actions: list[Action] = []
    for w in view.writs:
        where = target("Writ", w.world, w.name)
        data = {"world": w.world, "writ": w.name}
        passed = w.limit.passed(w.spent.usd, w.spent.tokens) if w.limit and w.spent else None
        if passed:
            actions.append(Action(UPDATE, "over-budget", where,
                                  f"spent {passed} ({w.limit_from}): stop the agent, "
                                  "Failed, escalate; branch kept",
                                  {**data, "version": w.version, "session": w.session,
                                   "passed": passed, "limit": w.limit_from}))
        for number, spent in w.untold:
            actions.append(Action(NOTE, "cost", where, f"attempt {number} cost {spent}",
                                  {**data, "attempt": number, "retries": w.retries,
                                   "usd": None if spent.usd is None else str(spent.usd),
                                   "tokens": spent.tokens}))
    wakes: list[float | None] = []
    for world in view.worlds:
        if world.per_day is None or world.today is None:
            continue
        passed = world.per_day.passed(world.today.usd, world.today.tokens)
        if passed and world.held_until < view.day_end:
            actions.append(Action(UPDATE, "hold-world", target("World", "", world.name),
                                  f"spent {passed} today (spec.budget.perDay): no new agent "
                                  f"and no respawn until {rfc3339(view.day_end)}",
                                  {"world": world.name, "until": view.day_end,
                                   "passed": passed}))
        if world.held_until > view.now:
            wakes.append(world.held_until - view.now)
    return Plan(tuple(actions), sooner(*wakes))


def act(sphere: Sphere, action: Action) -> bool:
    return {"over-budget": _stop, "hold-world": _hold, "cost": _tell}[action.kind](
        sphere, action)


def _stop(sphere: Sphere, action: Action) -> bool:
    """Stop the writ's agent under the world's cast lock (no respawn can race it): its
    session and tether go, its branch and worktree stay; Failed, escalated."""
    d, store = action.data, sphere.store
    world, name = d["world"], d["writ"]
    with flock(sphere.home.run / f"cast-{world}.lock"):
        writ = store.get("Writ", world, name)
        if writ is None or writ.phase != WORKING or writ.version != d["version"]:
            return False
        agent = store.agent_for(world, name)
        message = (f"spent {d['passed']} ({d['limit']}): agent "
                   f"{agent.name if agent else '?'} stopped; branch sol/{name} and its "
                   "worktree kept. Raise the limit or `sol retry writ` to go on")
        with store.transaction():  # Failed and escalated at once: no reader sees half
            done = store.set_status(writ.key, phase=FAILED, reason=BUDGET_EXCEEDED,
                                    message=message, expect_version=writ.version,
                                    session=None, failedAt=time.time(),
                                    conditions=with_condition(writ.status, BUDGET_EXCEEDED,
                                                              True, BUDGET_EXCEEDED, message))
            if done is None:
                return False
            escalate(store, world, name, message, source="Budget")
            store.event("failed", kind="Writ", world=world, name=name, message=message,
                        reason=BUDGET_EXCEEDED)
        release(sphere, world, name, reason=f"over budget: {d['passed']}; work kept")
        if agent is not None:
            store.put_agent(world, agent.name, writ=name, runtime=agent.runtime,
                            state="failed")
    return True


def _hold(sphere: Sphere, action: Action) -> bool:
    """Hold the world's casts and respawns until the window rolls; one event says so."""
    d, store = action.data, sphere.store
    with store.transaction():
        world = store.get("World", "", d["world"])
        if world is None or float(world.status.get("budgetHeldUntil") or 0) >= d["until"]:
            return False
        store.set_status(world.key, budgetHeldUntil=d["until"], budgetHeld=d["passed"])
        store.event("budget-exceeded", kind="World", world=d["world"], name=d["world"],
                    message=action.description, until=d["until"])
    return True


def _tell(sphere: Sphere, action: Action) -> bool:
    """One `cost` event per attempt: the mark moves in the same transaction."""
    d, store = action.data, sphere.store
    key, mark = f"{COSTED}{d['world']}/{d['writ']}", f"{d['retries']}:{d['attempt']}"
    with store.transaction():
        told = store.get_meta(key)
        if told is not None and told.split(":")[0] == str(d["retries"]) \
                and int(told.split(":")[1]) >= d["attempt"]:
            return False
        store.set_meta(key, mark)
        store.event("cost", kind="Writ", world=d["world"], name=d["writ"],
                    message=action.description, attempt=d["attempt"], usd=d["usd"],
                    tokens=d["tokens"])
    return True


RECONCILER = Reconciler(name="budget", scope=Scope.SPHERE, owner="consul",
                        observe=observe, plan=plan, act=act)
