"""Plans as values: actions computed by pure functions, rendered as text or JSON.

A planner never touches git, tmux or the disk; an executor runs each action and
records it as an event. `sol diff` renders; `sol apply` executes. A `Plan` is what one
reconciler's `plan` returns: the actions, when to look again, and why objects wait.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

CREATE, UPDATE, DELETE, NOTE = "+", "~", "-", "!"


@dataclass(frozen=True)
class Action:
    """One idempotent step: `op` is the diff sign, `kind` what to do, `target` to what,
    `reconciler` who plans and acts it (stamped by the registry)."""

    op: str
    kind: str
    target: str
    description: str
    data: Mapping[str, Any] = field(default_factory=dict, compare=True, hash=False)
    reconciler: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"op": self.op, "kind": self.kind, "target": self.target,
                "description": self.description, "data": dict(self.data),
                "reconciler": self.reconciler}


@dataclass(frozen=True)
class Plan:
    """What one reconciler would do for one key: `requeue_after` is when to look again
    (None: on the next wake or resync; 0: at once, a next step is ready), `waiting` why
    objects that need nothing done now are waiting (target -> reason)."""

    actions: tuple[Action, ...] = ()
    requeue_after: float | None = None
    waiting: Mapping[str, str] = field(default_factory=dict, hash=False)


def sooner(*delays: float | None) -> float | None:
    """The earliest of some requeue delays, None when none is set."""
    known = [d for d in delays if d is not None]
    return min(known) if known else None


def render_text(actions: list[Action]) -> str:
    """Terraform-like: one line an action (with the reconciler that plans it), then a
    summary line."""
    if not actions:
        return "No changes. The observed state matches the manifests."
    width = max(len(a.target) for a in actions)
    lines = [f"  {a.op} {a.target.ljust(width)}  {a.description}"
             + (f"  [{a.reconciler}]" if a.reconciler else "") for a in actions]
    lines.append("")
    lines.append(summary(actions))
    return "\n".join(lines)


def summary(actions: list[Action]) -> str:
    counts = {op: sum(1 for a in actions if a.op == op) for op in (CREATE, UPDATE, DELETE, NOTE)}
    text = (
        f"Plan: {counts[CREATE]} to create, {counts[UPDATE]} to change, "
        f"{counts[DELETE]} to delete"
    )
    if counts[NOTE]:
        text += f", {counts[NOTE]} to report"
    return text + "."
