"""Text renderings of one object (`sol describe`) and of the sphere (`sol status`).

Both return inert text (common.inert): titles, messages and gate output come from
manifests and agents, and must not reach a terminal as escape sequences.
"""

from __future__ import annotations

from typing import Any

from reconciler.cli.common import inert
from reconciler.core.records import readable_times
from reconciler.core.store import Record
from reconciler.core.times import rfc3339
from reconciler.daemon.board import FINISHED, Board, snapshot, suspensions
from reconciler.drivers.sphere import Sphere


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
    found = suspensions(record)
    if found:
        lines.append("Suspended:")
        lines += [f"  {s.notice}" for s in found]
    return lines


def render_status(sphere: Sphere, only: str | None = None) -> str:
    return status_report(sphere, only)[0]


def status_report(sphere: Sphere, only: str | None = None) -> tuple[str, bool]:
    """The sphere at a glance, and whether a human is needed (`sol status` exits 1)."""
    board = snapshot(sphere, only)
    return status_text(board), bool(board.attention)


def status_text(board: Board) -> str:
    """`sol status`: the board as lines (its texts are inert already)."""
    lines: list[str] = [*board.daemon]
    lines += [f"NEEDS ATTENTION: {line}" for line in board.attention]
    lines += board.notices
    if not board.worlds:
        lines.append("No worlds applied yet: write a World manifest and run `sol apply -f PATH`.")
    for world in board.worlds:
        summary = ", ".join(f"{n} {phase}" for phase, n in world.counts)
        lines.append(f"World {world.name}: {world.phase}  {world.message}")
        lines += [f"  {notice}" for notice in world.suspended]
        lines.append(f"  writs: {summary or 'none'}")
        lines += [f"  {line}" for line in world.spend]
        for writ in world.writs:
            if writ.phase in FINISHED:
                continue
            where = f" [{writ.agent}{'@' + writ.node if writ.node else ''}]" if writ.agent else ""
            lines.append(f"    {writ.name:<28} {writ.phase:<9}{where} {writ.message}")
            lines += [f"      {kind.upper()}: {message}" for kind, message in writ.flags
                      if kind in ("Escalated", "Stalled")]
            lines += [f"      SUSPENDED: {notice}" for notice in writ.suspended]
        for caravan in world.caravans:
            lines.append(f"  caravan {caravan.name}: {caravan.phase}  {caravan.message}")
        if world.queue:
            lines.append("  forge queue: " + ", ".join(
                f"#{m.id} {m.writ} ({m.state}, attempt {m.attempt})" for m in world.queue))
        if world.batch:
            lines.append(f"  forge {world.batch}")
    return "\n".join(lines)
