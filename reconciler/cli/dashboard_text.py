"""The dashboard's texts, from the board (daemon/board.py): a writ as table cells, the
worlds pane, the events pane, and how rows are sorted and filtered. Pure functions of the
board and the clock; every string in the board is inert already, and every text here is
a rich Text, never markup (a `[red]` in a title is shown as written).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from rich.text import Text

from reconciler.cli.tables import PHASE_STYLES
from reconciler.core.times import age
from reconciler.daemon.board import PHASE_ORDER, Board, WorldRow, WritRow

COLUMNS = (("name", "NAME"), ("phase", "PHASE"), ("agent", "AGENT"), ("attempt", "ATT"),
           ("age", "AGE"), ("cost", "COST"), ("message", "MESSAGE"))
SORTS = ("name", "phase", "agent", "attempt", "age", "cost")
"""What `o` cycles through and a column click picks."""
MESSAGE_WIDTH = 90
GOOD_WHEN_TRUE = ("Ready", "Pushed")
"""World conditions that are news when not True; any other is news when True
(Suspended, RateLimited, BudgetExceeded): the worlds pane shows only the news."""

HELP = """\
Keys
  up/down      select a writ
  enter        describe the selected writ (as `sol describe writ`)
  a            attach to its agent's session (detach with C-b d to come back)
  l            its agent's session log (as `sol logs`)
  r            retry it (a Failed or Cancelled writ, as `sol retry writ`)
  s            suspend it, or resume it when suspended (`sol suspend|resume writ`)
  /            filter the writs by any text shown (enter keeps it, escape clears it)
  o            sort by the next of: name, phase, agent, attempt, age, cost
               (or click a column's header; again to reverse)
  ?            this help
  q            quit
"""


def phase_text(phase: str) -> Text:
    return Text(phase, style=PHASE_STYLES.get(phase, ""))


def cost_text(cost: dict[str, Any] | None) -> str:
    if not cost:
        return "-"
    if cost.get("usd") is None:
        return f"{cost['tokens']:,}t" + ("*" if cost.get("unpriced") else "")
    return f"${cost['usd']:.2f}" + ("*" if cost.get("unpriced") else "")


def writ_cells(writ: WritRow, now: float, qualified: bool) -> tuple[Text, ...]:
    """One writ as the table's cells; `qualified` names it WORLD/NAME (several worlds)."""
    phase = phase_text(writ.phase)
    if writ.suspended:
        phase.append(" (susp)", style="dim")
    message = writ.message
    flags = [f"{kind.upper()}: {said}" for kind, said in writ.flags]
    if flags:
        phase.append(" !", style="bold red")
        message = "; ".join([*flags, message] if message else flags)
    if len(message) > MESSAGE_WIDTH:
        message = message[:MESSAGE_WIDTH - 1] + "…"
    return (Text(f"{writ.world}/{writ.name}" if qualified else writ.name), phase,
            Text(writ.agent or "-"), Text(str(writ.attempt or "-")),
            Text(age(writ.created, now)), Text(cost_text(writ.cost)), Text(message))


def sort_key(by: str) -> Callable[[WritRow], Any]:
    order = {p: i for i, p in enumerate(PHASE_ORDER)}
    return {
        "name": lambda w: (w.world, w.name),
        "phase": lambda w: (order.get(w.phase, len(order)), w.world, w.name),
        "agent": lambda w: (not w.agent, w.agent, w.world, w.name),
        "attempt": lambda w: (w.attempt, w.world, w.name),
        "age": lambda w: (w.created, w.world, w.name),
        "cost": lambda w: (((w.cost or {}).get("usd") or 0.0, (w.cost or {}).get("tokens") or 0),
                           w.world, w.name),
    }[by]


def matches(writ: WritRow, needle: str) -> bool:
    if not needle:
        return True
    hay = " ".join((writ.world, writ.name, writ.title, writ.phase, writ.agent, writ.message,
                    *(m for _, m in writ.flags))).lower()
    return all(word in hay for word in needle.lower().split())


def bar(done: int, total: int, width: int = 10) -> Text:
    filled = round(width * done / total) if total else width
    text = Text("━" * filled, style="green")
    text.append("━" * (width - filled), style="dim")
    return text


def worlds_text(board: Board, now: float) -> Text:
    """The header of the board: what needs a human, each world with its conditions,
    spend, caravans (a bar per phase) and forge queue (the running gate and for how
    long), then the daemon's health."""
    text = Text()
    for line in board.attention:
        text.append(f"NEEDS ATTENTION: {line}\n", style="bold red")
    for line in board.notices:
        text.append(line + "\n", style="yellow")
    if not board.worlds:
        text.append("No worlds applied yet: write a World manifest and run "
                    "`sol apply -f PATH`.\n")
    for world in board.worlds:
        _world_text(text, world, now)
    for line in board.daemon:  # last: in 80x24 what needs a human and the worlds show
        text.append(line + "\n", style="dim")
    text.rstrip()
    return text


def _world_text(text: Text, world: WorldRow, now: float) -> None:
    text.append("World ", style="bold")
    text.append(world.name, style="bold")
    text.append("  ")
    text.append_text(phase_text(world.phase))
    text.append(f"  {world.message}\n")
    off = [f"{kind}={status}" + (f" ({said})" if said else "")
           for kind, status, said in world.conditions
           if (status != "True") == (kind in GOOD_WHEN_TRUE)]
    if off:
        text.append("  conditions: " + "; ".join(off) + "\n", style="yellow")
    for line in (*world.suspended, *world.spend):
        text.append(f"  {line}\n")
    counts = ", ".join(f"{n} {phase}" for phase, n in world.counts) or "none"
    text.append(f"  writs: {counts}\n")
    for caravan in world.caravans:
        text.append(f"  caravan {caravan.name} ")
        text.append_text(phase_text(caravan.phase))
        for i, (names, done) in enumerate(zip(caravan.phases, caravan.done, strict=True)):
            text.append(f"  {i + 1}: ")
            text.append_text(bar(done, len(names), 6))
            text.append(f" {done}/{len(names)}")
        text.append("\n")
    for mr in world.queue:
        text.append(f"  forge #{mr.id} {mr.writ} ({mr.state}, attempt {mr.attempt})")
        if mr.gate:
            elapsed = f" for {age(mr.since, now)}" if mr.since else ""
            text.append(f" gate {mr.gate} running{elapsed}", style="cyan")
        text.append("\n")
    if world.batch:
        text.append(f"  forge {world.batch}\n")


def events_text(board: Board) -> Text:
    text = Text()
    for e in board.events:
        where = f"{e.world}/{e.name}" if e.name and e.name != e.world else e.world
        text.append(time.strftime("%H:%M:%S ", time.localtime(e.at)), style="dim")
        text.append(f"{e.type} ", style="bold")
        text.append(f"{where} {e.message}\n")
    text.rstrip()
    return text or Text("(no events yet)", style="dim")
