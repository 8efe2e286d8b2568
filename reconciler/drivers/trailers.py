"""Which writs landed on a target branch: the `Sol-Writ: <world>/<writ>` trailers of its
first-parent history, the durable record of what the forge landed (so a rebuilt store,
the consul's recovery and the forge's crash resume all read the same answer)."""

from __future__ import annotations

from pathlib import Path

from reconciler.drivers import git, worktrees

_TRAILERS: dict[Path, tuple[str, dict[str, str]]] = {}
"""repo -> (target tip, {"world/writ": commit}): a tip never changes its history."""


def landed(repo: Path, branch: str) -> dict[str, str]:
    """Every `Sol-Writ:` trailer on the first-parent history of `branch`, newest first
    wins; one git process per new tip of the target."""
    tip = worktrees.rev(repo, f"refs/heads/{branch}")
    if tip is None:
        return {}
    cached = _TRAILERS.get(repo)
    if cached is None or cached[0] != tip:
        out = git.run(
            repo, "log", "--first-parent", "--fixed-strings", "--grep=Sol-Writ: ",
            "--format=%H %(trailers:key=Sol-Writ,valueonly,separator=%x2C)", tip,
            what=f"cannot read the history of {branch} in {repo}").out
        found: dict[str, str] = {}
        for line in out.splitlines():
            sha, _, values = line.partition(" ")
            for value in values.split(","):
                found.setdefault(value.strip(), sha)
        cached = _TRAILERS[repo] = (tip, found)
    return cached[1]


def landed_commit(repo: Path, branch: str, world: str, writ: str, base: str = "") -> str | None:
    """The first-parent commit of the target whose `Sol-Writ:` trailer names this writ.

    Searched from the writ's base on, so an older writ of the same name never counts.
    """
    tip = f"refs/heads/{branch}"
    span = [f"{base}..{tip}"] if base and worktrees.rev(repo, base) else [tip]
    out = git.run(
        repo, "log", "--first-parent", "--fixed-strings", f"--grep=Sol-Writ: {world}/{writ}",
        "--format=%H %(trailers:key=Sol-Writ,valueonly,separator=%x2C)", *span,
        what=f"cannot search {branch} for writ {world}/{writ}").out
    for line in out.splitlines():
        sha, _, values = line.partition(" ")
        if f"{world}/{writ}" in (v.strip() for v in values.split(",")):
            return sha
    return None
