"""The sphere at a glance as data: the one view model `sol status`, `sol dashboard` and
its web page all render, so what they say about a writ, a world or the forge is worked
out once (a second copy of the status logic would drift).

`snapshot` reads the store (and the daemon's run files) and returns frozen rows; every
text in them is already inert. `metrics` adds what only the web page plots: writs landed,
gate time and attempts per hour. Nothing here writes.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from reconciler.core.home import Home
from reconciler.core.records import Record
from reconciler.core.store import Store
from reconciler.core.suspension import FORGE, WORLD, WRIT, Suspension, suspension
from reconciler.core.text import inert
from reconciler.core.times import day_bounds, rfc3339
from reconciler.drivers.sphere import Sphere

PHASE_ORDER = ["Pending", "Working", "Resolved", "Merging", "Merged", "Done", "Failed",
               "Cancelled"]
FINISHED = ("Merged", "Done", "Cancelled")
FLAGGED = ("Escalated", "Stalled", "RateLimited", "BudgetExceeded")
EVENTS = 50


@dataclass(frozen=True)
class WritRow:
    world: str
    name: str
    title: str
    phase: str
    message: str
    agent: str
    attempt: int
    created: float
    cost: dict[str, Any] | None = None          # {tokens, usd, unpriced} once known
    flags: tuple[tuple[str, str], ...] = ()     # (condition, message) needing a look
    suspended: tuple[str, ...] = ()
    depends: tuple[str, ...] = ()               # WORLD/NAME of each dependsOn
    node: str = ""                              # the machine its agent runs on, if not this


@dataclass(frozen=True)
class CaravanRow:
    world: str
    name: str
    phase: str
    message: str
    phases: tuple[tuple[str, ...], ...]         # the writs of each phase, in order
    done: tuple[int, ...]                       # how many of each phase are finished


@dataclass(frozen=True)
class QueueRow:
    id: int
    writ: str
    state: str
    attempt: int
    gate: str = ""                              # the gate running for it, if one is
    since: float | None = None                  # when that gate started


@dataclass(frozen=True)
class WorldRow:
    name: str
    phase: str
    message: str
    conditions: tuple[tuple[str, str, str], ...]  # (type, status, message)
    suspended: tuple[str, ...]
    counts: tuple[tuple[str, int], ...]           # (phase, writs) in PHASE_ORDER
    spend: tuple[str, ...]                        # today's spend, a hold in force
    writs: tuple[WritRow, ...]
    caravans: tuple[CaravanRow, ...]
    queue: tuple[QueueRow, ...]
    batch: str = ""


@dataclass(frozen=True)
class EventRow:
    id: int
    at: float
    type: str
    world: str
    name: str
    message: str


@dataclass(frozen=True)
class Board:
    at: float
    daemon: tuple[str, ...]                       # the daemon and its children
    attention: tuple[str, ...]                    # what needs a human (status exits 1)
    notices: tuple[str, ...]                      # specs invalid, degraded, revision
    worlds: tuple[WorldRow, ...]
    events: tuple[EventRow, ...] = field(default=())

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def writs(self) -> list[WritRow]:
        return [w for world in self.worlds for w in world.writs]


def suspensions(record: Record) -> list[Suspension]:
    """What is suspended on this object (a world and its forge, or a writ), and why."""
    kinds = {"World": (WORLD, FORGE), "Writ": (WRIT,)}.get(record.kind, ())
    return [found for what in kinds if (found := suspension(what, record)) is not None]


def snapshot(sphere: Sphere, only: str | None = None, *, events: int = 0,
             costs: bool = True) -> Board:
    """The sphere now; `only` one world, `events` the last N events too."""
    from reconciler.core.degraded import state as degraded_state
    from reconciler.daemon.health import assess, describe_daemon
    from reconciler.daemon.prefect import running

    store, now = sphere.store, time.time()
    health = assess(sphere.home, store, running(sphere.home))
    notices = []
    if notice := store.get_meta("specs_invalid"):
        notices.append(f"specs invalid: {notice}")
    if degraded := degraded_state(store):
        notices.append(f"DEGRADED since {rfc3339(degraded.since)}: {degraded.reason} (agents "
                       "are not respawned; `sol resume` to leave)")
    if revision := store.get_meta("source_revision"):
        source = store.get_meta("source")
        notices.append(f"specs at revision {revision}" + (f" of {source}" if source else ""))
    found = writ_costs(sphere) if costs else {}
    worlds = tuple(_world(sphere, w, found, now) for w in store.list("World")
                   if not only or w.name == only)
    recent = tuple(EventRow(e.id, e.ts, e.type, e.world or "", e.name or "", inert(e.message))
                   for e in store.events(world=only, limit=events)) if events else ()
    daemon = describe_daemon(health, now) + (web_page(sphere.home) if (health.daemon or {})
                                             .get("web") else [])
    return Board(now, tuple(inert(line) for line in daemon),
                 tuple(inert(line) for line in health.attention),
                 tuple(inert(n) for n in notices), worlds, recent)


def web_page(home: Home) -> list[str]:
    """Where the daemon serves the dashboard's web page (`sol up --web`), never its token:
    status output gets pasted into issues and chats."""
    try:
        url = (home.run / "web.url").read_text().strip()
    except OSError:
        return []
    return [f"  web page at {url.split('?', 1)[0]} (its URL with the token is in "
            f"{home.run / 'web.url'})"] if url else []


def _world(sphere: Sphere, world: Record, costs: dict[tuple[str, str], dict[str, Any]],
           now: float) -> WorldRow:
    from reconciler.controllers.forge import queue
    from reconciler.controllers.forge_act import batch_summary

    store, name = sphere.store, world.name
    records = store.list("Writ", name)
    counts = Counter(w.phase for w in records)
    writs = tuple(_writ(w, costs.get((name, w.name))) for w in records)
    gates = _running_gates(sphere, name, records)
    rows = tuple(QueueRow(m.id, m.writ, m.state, m.attempt, *gates.get(m.writ, ("", None)))
                 for m in queue(store, name))
    return WorldRow(
        name, world.phase, inert(world.message),
        tuple((str(c.get("type")), str(c.get("status")), inert(str(c.get("message") or "")))
              for c in world.status.get("conditions") or []),
        tuple(inert(s.notice) for s in suspensions(world)),
        tuple((p, counts[p]) for p in PHASE_ORDER if counts.get(p)),
        tuple(inert(line) for line in _spend(sphere, world, now)),
        writs, tuple(_caravan(c, {w.name: w.phase for w in records})
                     for c in store.list("Caravan", name)),
        rows, inert(batch_summary(store, name)))


def _writ(record: Record, cost: dict[str, Any] | None) -> WritRow:
    from reconciler.core.model import split_ref

    status = record.status
    flags = tuple((str(c["type"]), inert(str(c.get("message") or "")))
                  for c in status.get("conditions") or []
                  if c.get("status") == "True" and c.get("type") in FLAGGED)
    return WritRow(
        record.world, record.name, inert(str(record.spec.get("title") or record.name)),
        record.phase, inert(record.message), str(status.get("agent") or ""),
        int(status.get("attempt") or 0), record.created_at, cost, flags,
        tuple(inert(s.notice) for s in suspensions(record)),
        tuple("/".join(split_ref(str(d), record.world))
              for d in record.spec.get("dependsOn") or ()),
        inert(str(status.get("node") or "")))


def _caravan(record: Record, phases: dict[str, str]) -> CaravanRow:
    from reconciler.core.model import CaravanSpec

    spec = CaravanSpec.from_spec(record.spec)
    return CaravanRow(record.world, record.name, record.phase, inert(record.message),
                      spec.phases, tuple(sum(phases.get(w) in FINISHED for w in phase)
                                         for phase in spec.phases))


def _running_gates(sphere: Sphere, world: str, writs: list[Record]
                   ) -> dict[str, tuple[str, float]]:
    """writ -> (gate, started) for the gates running now: the forge's gate record appears
    when a gate starts and goes when it ends; the writ's message names the gate."""
    from reconciler.controllers.landing import gate_record

    record = gate_record(sphere, world)
    started = [p.stat().st_mtime for p in (record, *record.parent.glob(f"{record.name}.*"))
               if _exists(p) and not p.name.endswith(".tmp")]
    if not started:
        return {}
    found = {}
    for writ in writs:
        if writ.phase == "Merging" and " running" in writ.message:
            gate = writ.message.split(" running", 1)[0].removeprefix("gate ")
            found[writ.name] = (inert(gate), min(started))
    return found


def _exists(path: Path) -> bool:
    try:
        return path.is_file()
    except OSError:
        return False


def _spend(sphere: Sphere, world: Record, now: float) -> list[str]:
    """Today's spend (local day) against the daily budget, and a hold in force. Nothing
    when no usage was ever recorded: a sphere of script agents reads no price table."""
    from reconciler.core import ledger_store, prices
    from reconciler.core.holds import world_hold
    from reconciler.core.model import WorldSpec

    lines = []
    if ledger_store.recorded(sphere.store):
        from reconciler.controllers.budget import Spend

        table = prices.load(sphere.config.extra, str(sphere.home.config))
        spent = Spend(*ledger_store.spend(sphere.store, table, world=world.name,
                                          since=day_bounds(now)[0]))
        limit = WorldSpec.from_spec(world.spec).per_day
        lines.append(f"spent today: {spent}" + (f" (perDay {limit})" if limit else ""))
    hold = world_hold(world, now)
    if hold is not None:
        lines.append(f"HELD: {hold.message(world.name, now)}")
    return lines


def writ_costs(sphere: Sphere) -> dict[tuple[str, str], dict[str, Any]]:
    """Per (world, writ): {tokens, usd, unpriced} as recorded so far; nothing read when
    nothing was ever spent (no price table or sol.yaml to load)."""
    from reconciler.core import ledger_store, prices

    if not ledger_store.recorded(sphere.store):
        return {}
    table = prices.load(sphere.config.extra, str(sphere.home.config))
    items, _ = ledger_store.costs(sphere.store, table, by="writ")
    return {(i["world"], i["writ"]): {"tokens": i["tokens"]["total"],
                                      "usd": None if i["usd"] is None else float(i["usd"]),
                                      "unpriced": bool(i["unpriced"])}
            for i in items if i.get("writ")}


def metrics(store: Store, now: float, hours: int = 24, world: str | None = None
            ) -> dict[str, Any]:
    """Per hour over the last `hours`: writs landed, gate seconds, attempts sent back."""
    start = (int(now) // 3600 - hours + 1) * 3600
    landed, gate, back = [0] * hours, [0.0] * hours, [0] * hours
    for e in store.events(world=world, since=start, types=["merged", "gate-passed",
                                                           "gate-failed", "sent-back"]):
        slot = int(e.ts - start) // 3600
        if not 0 <= slot < hours:
            continue
        if e.type == "merged":
            landed[slot] += 1
        elif e.type == "sent-back":
            back[slot] += 1
        else:
            gate[slot] += float(e.data.get("seconds") or 0.0)
    return {"start": start, "hours": hours, "landed": landed,
            "gateSeconds": [round(g, 1) for g in gate], "sentBack": back}
