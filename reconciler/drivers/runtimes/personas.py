"""The persona: the standing orders an AI agent reads from the file its CLI loads.

The text is built from the tether alone, so a respawned session gets the same orders.
Title and description are data: they are copied verbatim into a Markdown document
that no shell ever reads.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from reconciler.core.durations import format_duration

if TYPE_CHECKING:
    from reconciler.core.tether import Tether


def _duration(value: Any) -> str:
    """A gate timeout as people write it (`10m`), whatever form the tether keeps."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return format_duration(int(value))
    return str(value)


def _gates(gates: list[dict[str, Any]]) -> str:
    if not gates:
        return ("This world declares no gates. Still run the project's own tests, if it "
                "has any, before you finish.")
    lines = ["Before you finish, run every gate of this world from the top of the "
             "worktree and make it pass. sol runs exactly these after you resolve, and a "
             "failure sends the writ back to you:", ""]
    for gate in gates:
        timeout = gate.get("timeout")
        limit = f" (timeout {_duration(timeout)})" if timeout not in (None, "") else ""
        lines.append(f"- `{gate.get('name', 'gate')}`{limit}:")
        lines.append("")
        lines.extend(_fenced(str(gate.get("run", "")), "sh", indent="  "))
    return "\n".join(lines)


def _fenced(text: str, info: str = "", indent: str = "") -> list[str]:
    """A fence longer than any backtick run inside `text`, so the text cannot close it."""
    longest, run = 0, 0
    for char in text:
        run = run + 1 if char == "`" else 0
        longest = max(longest, run)
    fence = "`" * max(3, longest + 1)
    body = [indent + line for line in text.splitlines()] or [indent]
    return [f"{indent}{fence}{info}", *body, f"{indent}{fence}"]


_COMMIT = re.compile(r"^[0-9a-f]{7,64}$")


def target_branch(tether: Tether, target: str | None = None) -> str | None:
    """The branch the forge lands on: given, kept in the tether, or `base` when it names one."""
    if target:
        return target
    kept = getattr(tether, "target", None)
    if isinstance(kept, str) and kept:
        return kept
    base = tether.base or ""
    return base if base and not _COMMIT.match(base) else None


def persona(tether: Tether, *, target: str | None = None) -> str:
    """The standing orders for the agent of `tether`, as Markdown; `target` names the
    world's target branch when the tether does not."""
    name = target_branch(tether, target)
    shown = f"`{name}`" if name else "of this world"
    analysis = tether.kind == "analysis"
    finish = (
        "This is an analysis writ: write your findings to a file in the worktree "
        "(for example `FINDINGS.md`), commit it, then run `sol resolve`; nothing is merged."
        if analysis else
        "When the work is committed and the gates pass, run `sol resolve`. It queues "
        f"branch `{tether.branch}` for the forge, which lands it on the target branch {shown} "
        "only after the gates pass there too, and it ends this session."
    )
    retry = ""
    if tether.attempt > 1 or tether.feedback:
        retry = (
            f"\nThis is attempt {tether.attempt}. The previous attempt was sent back; "
            "its feedback is in your assignment (run `sol prime` to see it again). "
            "Your earlier commits are still on your branch: build on them.\n"
        )
    sections = [
        f"# sol agent {tether.agent}",
        "",
        f"You are `{tether.agent}`, an agent run by sol, working on writ `{tether.writ}` "
        f"of world `{tether.world}`.",
        retry,
        "## Where you work",
        "",
        "- Work here, in this git worktree (your current directory), and nowhere else.",
        f"- Stay on branch `{tether.branch}`. Do not create, switch or rename branches.",
        f"- Never touch the target branch {shown}: do not check it out, commit to "
        "it, merge into it, reset it or push to it. sol lands your work there.",
        "- Commit as you go, in small steps with clear messages. Work that is not "
        "committed is not landed.",
        "- Do not commit this file; it is excluded from git on purpose.",
        "",
        "## Gates",
        "",
        "An analysis writ runs no gates: nothing of it is merged." if analysis
        else _gates(list(tether.gates or [])),
        "",
        "## Finishing",
        "",
        f"- {finish}",
        '- When you are stuck, run `sol escalate "why"` with one sentence saying why, '
        "and stop. A person will look.",
        "- `sol prime` prints your assignment again, for instance after a restart.",
        "",
        "## Your assignment",
        "",
        "Title:",
        "",
        *_fenced(tether.title, "text"),
        "",
        "Description:",
        "",
        *_fenced(tether.description, "markdown"),
        "",
    ]
    if tether.feedback:
        sections += ["## Why the previous attempt was sent back", "",
                     *_fenced(tether.feedback, "text"), ""]
    return "\n".join(sections)
