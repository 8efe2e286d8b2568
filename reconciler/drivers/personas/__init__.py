"""Envoy personas: the standing orders of a persistent agent, as plain Markdown files.

sol ships `planner.md` and `engineer.md` beside this module (packaged with the wheel).
A persona named P is the first of `<worktree>/.sol/personas/P.md` (the project's),
`~/.config/sol/personas/P.md` (the user's; `$XDG_CONFIG_HOME` when set) and sol's own,
so a user copies one and changes it. sol writes a station header above it: where the
envoy works, its branch, its memory and the world's gates. (The orders of a writ's
agent are built from its tether instead, in `reconciler/runtimes/personas.py`.)
"""

from __future__ import annotations

import os
from pathlib import Path

from reconciler.core.errors import SolError
from reconciler.core.model import WorldSpec

BUILTIN = Path(__file__).parent


class PersonaError(SolError):
    """A persona that cannot be found or read; `reason` is the envoy's status reason."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def places(persona: str, worktree: Path) -> list[Path]:
    """Where persona `persona` is looked for, first match wins: project, user, sol."""
    config = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return [worktree / ".sol" / "personas" / f"{persona}.md",
            Path(config) / "sol" / "personas" / f"{persona}.md",
            BUILTIN / f"{persona}.md"]


def find(persona: str, worktree: Path) -> tuple[str, Path]:
    """The persona's text and the file it came from; PersonaError naming every place."""
    looked = places(persona, worktree)
    for path in looked:
        try:
            return path.read_text(encoding="utf-8"), path
        except FileNotFoundError:
            continue
        except (OSError, UnicodeDecodeError) as exc:
            raise PersonaError("PersonaUnreadable", f"persona file {path} cannot be read "
                               f"({exc}): fix or remove it") from exc
    shown = ", ".join(str(p) for p in looked[:-1]) + f" and {looked[-1]}"
    raise PersonaError("PersonaNotFound", f"persona {persona!r} not found: looked in {shown}; "
                       "add one of those files or use planner or engineer")


def station(name: str, world: str, spec: WorldSpec, *, worktree: Path, memory: Path,
            base: str, source: str, specs: str) -> str:
    """The header sol writes above the persona: where envoy `world/name` works. `source`
    names the repository checked out, `specs` the specs directory in it ("." = top)."""
    where = "the top of this worktree" if specs == "." else f"`{specs}/` in this worktree"
    lines = [
        f"# sol envoy {name}", "",
        f"You are `{name}`, an envoy of world `{world}`: a persistent agent directed by a "
        "person and kept running by sol. If this session ends, sol starts it again in the "
        "same worktree.", "",
        "## Your station", "",
        f"- Worktree: `{worktree}` (your current directory), a checkout of {source}, on "
        f"branch `envoy/{name}`, cut from `{base}`. Stay on that branch.",
        f"- Target branch of the world: `{spec.branch}`. Never commit to it, reset it or "
        "push it: sol's forge lands work there.",
        f"- Memory: `{memory}` ($SOL_MEMORY), outside the worktree; it survives restarts "
        "and rebuilds. Keep your notes there.",
        f"- Specs directory: {where}, unless the repository keeps its sol manifests "
        "(files with `apiVersion: sol/v1`) elsewhere.",
        "- `sol` on your PATH is the installation that runs you; SOL_HOME is set.",
        "", "Gates of this world (sol runs them, with these timeouts, before anything "
        "lands):" if spec.gates else "This world declares no gates.", "",
    ]
    for gate in spec.gates:  # indented code blocks: no command text can close them
        lines += [f"- `{gate.name}` (timeout {int(gate.timeout)}s):", "",
                  *("      " + line for line in gate.run.splitlines()), ""]
    return "\n".join(lines) + "\n---\n\n"
