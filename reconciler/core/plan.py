"""Plans as values: actions computed by pure functions, rendered as text or JSON.

A planner never touches git, tmux or the disk; an executor runs each action and
records it as an event. `sol diff` renders; `sol apply` executes.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

CREATE, UPDATE, DELETE, NOTE = "+", "~", "-", "!"


@dataclass(frozen=True)
class Action:
    """One idempotent step: `op` is the diff sign, `kind` what to do, `target` to what."""

    op: str
    kind: str
    target: str
    description: str
    data: dict[str, Any] = field(default_factory=dict, compare=True, hash=False)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def render_text(actions: list[Action]) -> str:
    """Terraform-like: one line an action, then a summary line."""
    if not actions:
        return "No changes. The observed state matches the manifests."
    width = max(len(a.target) for a in actions)
    lines = [f"  {a.op} {a.target.ljust(width)}  {a.description}" for a in actions]
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
