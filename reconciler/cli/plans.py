"""Plans for people: one line per object whose desired state changes, with the fields
that change, then what the reconcilers would do, then counts.

`sol diff` and `sol apply` print through here; -o json/yaml keep the actions as data
(an update's field changes are in its `data["changes"]`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from reconciler.core.plan import Action
from reconciler.specs.changes import target

VALUE_WIDTH = 40
"""A shown value longer than this is shortened with an ellipsis."""
CONTEXT = 12
"""Characters kept before the first difference of a long string."""
UNSET = "(unset)"
SPEC_WORDS = {"create": "to create", "change": "to change", "cancel": "to cancel",
              "retire": "to retire", "forget": "to remove", "orphan": "orphaned"}
ALWAYS = ("create", "change", "cancel")


def spec_actions(actions: Sequence[Action]) -> list[Action]:
    """The changes of desired state: the actions no reconciler plans."""
    return [a for a in actions if not a.reconciler]


def show(value: Any, other: Any = None) -> str:
    """A value JSON-quoted on one line, shortened to VALUE_WIDTH with an ellipsis; a long
    string is shown from a little before where it first differs from `other`, so that
    the change is visible."""
    text = json.dumps(value, ensure_ascii=False)
    if len(text) <= VALUE_WIDTH:
        return text
    if not isinstance(value, str):
        return text[:VALUE_WIDTH - 1] + "…"
    inner, room = text[1:-1], VALUE_WIDTH - 3  # two quotes and one ellipsis
    start = 0
    if isinstance(other, str):
        pairs = zip(value, other, strict=False)
        same = next((i for i, (a, b) in enumerate(pairs) if a != b),
                    min(len(value), len(other)))
        start = max(0, len(json.dumps(value[:same], ensure_ascii=False)) - 2 - CONTEXT)
    if not start:
        return f'"{inner[:room]}…"'
    if len(inner) - start <= room:
        return f'"…{inner[-room:]}"'
    return f'"…{inner[start:start + room - 1]}…"'


def change_text(changes: Sequence[dict[str, Any]]) -> str:
    """`title "a" -> "b", priority 2 -> 1`."""
    parts = []
    for change in changes:
        old, new = change.get("old"), change.get("new")
        before = show(old, new) if "old" in change else UNSET
        after = show(new, old) if "new" in change else UNSET
        parts.append(f"{change['path']} {before} -> {after}")
    return ", ".join(parts)


def object_line(action: Action) -> str:
    """`+ writ/shop/x: new writ`, `~ writ/shop/x: title "a" -> "b"`: an update shows its
    field changes, and what else its description says (a re-drive)."""
    changes = action.data.get("changes")
    if not changes:
        return f"{action.op} {action.target}: {action.description}"
    extra = action.description.partition("): ")[2] if action.description.startswith(
        "update spec (") else action.description
    return f"{action.op} {action.target}: {change_text(changes)}" + (
        f"; {extra}" if extra else "")


def reconciler_lines(actions: Sequence[Action]) -> list[str]:
    """The reconcilers' actions as before: sign, target, what, and who plans it."""
    if not actions:
        return []
    width = max(len(a.target) for a in actions)
    return [f"  {a.op} {a.target.ljust(width)}  {a.description}  [{a.reconciler}]"
            for a in actions]


def object_counts(actions: Sequence[Action]) -> dict[str, int]:
    """Objects per change of desired state (one spec action per object), and reconciler
    actions under "actions"."""
    counts = dict.fromkeys(SPEC_WORDS, 0)
    for a in spec_actions(actions):
        kind = ("create" if a.op == "+" else "change") if a.kind == "record" else a.kind
        counts[kind] = counts.get(kind, 0) + 1
    counts["actions"] = len(actions) - len(spec_actions(actions))
    return counts


def object_summary(actions: Sequence[Action]) -> str:
    """`Plan: 1 to create, 1 to change, 0 to cancel, 2 orphaned; 3 reconciler actions.`"""
    counts = object_counts(actions)
    words = [f"{counts[k]} {w}" for k, w in SPEC_WORDS.items() if k in ALWAYS or counts[k]]
    text = "Plan: " + ", ".join(words)
    n = counts["actions"]
    if n:
        text += f"; {n} reconciler action{'s' if n != 1 else ''}"
    return text + "."


def render(actions: Sequence[Action]) -> str:
    """The plan as `sol diff` prints it (not yet made inert: print it with `say`)."""
    if not actions:
        return "No changes. The observed state matches the manifests."
    lines = [f"  {object_line(a)}" for a in spec_actions(actions)]
    rest = [a for a in actions if a.reconciler]
    if lines and rest:
        lines.append("")
    lines += reconciler_lines(rest)
    return "\n".join([*lines, "", object_summary(actions)])


def only_objects(actions: Sequence[Action], objects: Sequence[tuple[str, str, str]]
                 ) -> list[Action]:
    """The actions about `objects` (kind, world, name) alone: the plan of a partial set
    shows its own objects, not what a pass would do elsewhere in the sphere."""
    targets = {target(*key) for key in objects}
    return [a for a in actions if a.target in targets]
