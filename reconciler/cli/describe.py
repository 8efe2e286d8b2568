"""Text renderings of one object (`sol describe`) and of the sphere (`sol status`).

Both return inert text (common.inert): titles, messages and gate output come from
manifests and agents, and must not reach a terminal as escape sequences.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

from reconciler.cli.common import inert
from reconciler.core.records import readable_times
from reconciler.core.store import Record
from reconciler.core.suspension import FORGE, WORLD, WRIT, Suspension, suspension
from reconciler.core.times import day_bounds, rfc3339
from reconciler.drivers.sphere import Sphere

PHASE_ORDER = ["Pending", "Working", "Resolved", "Merging", "Merged", "Done", "Failed",
               "Cancelled"]


def _yaml(data: Any, indent: str = "  ") -> str:
    from reconciler.cli.common import dump_yaml

    return "\n".join(indent + line for line in dump_yaml(data).rstrip().splitlines())


def _cost_line(cost: dict[str, Any]) -> str:
    usd = "no price" if cost.get("usd") is None else f"${cost['usd']:.4f}"
    flagged = " (a model has no price: `sol cost` says which)" if cost.get("unpriced") else ""
    return f"{cost['tokens']:,} tokens, {usd}{flagged}"


def render_describe(sphere: Sphere, record: Record, obj: dict[str, Any]) -> str:
    from reconciler.controllers.forge_act import writ_batch

    status = obj["status"]
    lines = [
        f"Name:        {record.name}",
        *([f"World:       {record.world}"] if record.world else []),
        f"Kind:        {record.kind}",
        f"Phase:       {status['phase']}" + (" (orphaned: not in the manifests)"
                                             if record.orphaned else ""),
        f"Reason:      {status.get('reason') or '-'}",
        f"Message:     {status.get('message') or '-'}",
        f"Generation:  {record.generation} (status observed "
        f"{status.get('observedGeneration') or '-'})",
        f"Source:      {record.origin or '-'}",
        *([f"Cost:        {_cost_line(status['cost'])}"] if status.get("cost") else []),
        *([f"Batch:       {batch}"] if record.kind == "Writ" and (
            batch := writ_batch(sphere.store, record.world, record.name)) else []),
        "Spec:",
        _yaml(record.spec),
    ]
    extra = {k: v for k, v in readable_times(record.status).items()
             if k not in ("conditions", "attempts", "retries")}
    if extra:
        lines += ["Status:", _yaml(extra)]
    conditions = record.status.get("conditions") or []
    if conditions:
        lines.append("Conditions:")
        for cond in conditions:
            since = cond.get("lastTransitionTime")
            lines.append(f"  {cond.get('type')}={cond.get('status')}  {cond.get('reason', '')}:"
                         f" {cond.get('message', '')}"
                         + (f"  (since {rfc3339(since)})"
                            if isinstance(since, int | float) and since else ""))
    attempts = record.status.get("attempts") or []
    if attempts:
        lines.append("Attempts:")
        for a in attempts:
            lines.append(f"  #{a.get('attempt')}: {a.get('outcome', '-')}"
                         f"  {a.get('message', '')}")
            if a.get("log"):
                lines.append(f"      log: {a['log']}")
            for tail in (a.get("tail") or "").splitlines()[-10:]:
                lines.append(f"      | {tail}")
    lines += _retries_and_suspensions(record)
    lines.append("Events:")
    for e in obj.get("events", []):
        lines.append(f"  {e['time']}  {e['type']:<12} {e['message']}")
    if not obj.get("events"):
        lines.append("  (none)")
    return inert("\n".join(lines))


def _suspensions(record: Record) -> list[Suspension]:
    """What is suspended on this object (a world and its forge, or a writ), and why."""
    kinds = {"World": (WORLD, FORGE), "Writ": (WRIT,)}.get(record.kind, ())
    return [found for what in kinds if (found := suspension(what, record)) is not None]


def _retries_and_suspensions(record: Record) -> list[str]:
    """Each re-drive (a spec change, `sol retry`) with when and why, and what holds the
    object suspended until it is resumed."""
    lines = []
    retries = record.status.get("retries") or []
    if retries:
        lines.append("Retries:")
        for r in retries:
            lines.append(f"  {r.get('at', '-')}  by {r.get('by', '-')}: was {r.get('from')} "
                         f"({r.get('reason') or '-'}) after {r.get('attempts', '-')} "
                         f"attempt(s): {r.get('message') or '-'}")
    found = _suspensions(record)
    if found:
        lines.append("Suspended:")
        lines += [f"  {s.notice}" for s in found]
    return lines


def render_status(sphere: Sphere, only: str | None = None) -> str:
    return status_report(sphere, only)[0]


def _spend_lines(sphere: Sphere, world: Record) -> list[str]:
    """Today's spend (local day) against the daily budget, and a hold in force. Nothing
    when no usage was ever recorded: a sphere of script agents reads no price table."""
    from reconciler.core import ledger_store, prices
    from reconciler.core.holds import world_hold
    from reconciler.core.model import WorldSpec

    now = time.time()
    lines = []
    if ledger_store.recorded(sphere.store):
        from reconciler.controllers.budget import Spend

        table = prices.load(sphere.config.extra, str(sphere.home.config))
        spent = Spend(*ledger_store.spend(sphere.store, table, world=world.name,
                                          since=day_bounds(now)[0]))
        limit = WorldSpec.from_spec(world.spec).per_day
        lines.append(f"  spent today: {spent}" + (f" (perDay {limit})" if limit else ""))
    hold = world_hold(world, now)
    if hold is not None:
        lines.append(f"  HELD: {hold.message(world.name, now)}")
    return lines


def status_report(sphere: Sphere, only: str | None = None) -> tuple[str, bool]:
    """The sphere at a glance, and whether a human is needed (`sol status` exits 1)."""
    store = sphere.store
    worlds = [w for w in store.list("World") if not only or w.name == only]
    from reconciler.controllers.forge import queue
    from reconciler.controllers.forge_act import batch_summary
    from reconciler.core.degraded import state as degraded_state
    from reconciler.daemon.health import assess, describe_daemon
    from reconciler.daemon.prefect import running

    health = assess(sphere.home, store, running(sphere.home))
    lines: list[str] = [*describe_daemon(health, time.time())]
    lines += [f"NEEDS ATTENTION: {line}" for line in health.attention]
    notice = store.get_meta("specs_invalid")
    if notice:
        lines.append(f"specs invalid: {notice}")
    degraded = degraded_state(store)
    if degraded:
        lines.append(f"DEGRADED since {rfc3339(degraded.since)}: {degraded.reason} (agents "
                     "are not respawned; `sol resume` to leave)")
    revision = store.get_meta("source_revision")
    if revision:
        source = store.get_meta("source")
        lines.append(f"specs at revision {revision}" + (f" of {source}" if source else ""))
    if not worlds:
        lines.append("No worlds applied yet: write a World manifest and run `sol apply -f PATH`.")
        return inert("\n".join(lines)), bool(health.attention)
    for world in worlds:
        writs = store.list("Writ", world.name)
        counts = Counter(w.phase for w in writs)
        summary = ", ".join(f"{counts[p]} {p}" for p in PHASE_ORDER if counts.get(p))
        lines.append(f"World {world.name}: {world.phase}  {world.message}")
        lines += [f"  {s.notice}" for s in _suspensions(world)]
        lines.append(f"  writs: {summary or 'none'}")
        lines += _spend_lines(sphere, world)
        for writ in writs:
            if writ.phase in ("Merged", "Done", "Cancelled"):
                continue
            agent = writ.status.get("agent")
            where = f" [{agent}]" if agent else ""
            lines.append(f"    {writ.name:<28} {writ.phase:<9}{where} {writ.message}")
            for cond in writ.status.get("conditions") or []:
                if cond.get("status") == "True" and cond.get("type") in ("Escalated",
                                                                          "Stalled"):
                    lines.append(f"      {cond['type'].upper()}: {cond.get('message', '')}")
            lines += [f"      SUSPENDED: {s.notice}" for s in _suspensions(writ)]
        for caravan in store.list("Caravan", world.name):
            lines.append(f"  caravan {caravan.name}: {caravan.phase}  {caravan.message}")
        waiting = queue(store, world.name)
        if waiting:
            lines.append("  forge queue: " + ", ".join(
                f"#{m.id} {m.writ} ({m.state}, attempt {m.attempt})" for m in waiting))
        if batch := batch_summary(store, world.name):
            lines.append(f"  forge {batch}")
    return inert("\n".join(lines)), bool(health.attention)
