"""Recover the store from what is on disk: the target branch is the durable record.

`sol.db` can be lost or rebuilt (its own error message advises `mv sol.db sol.db.broken`).
A rebuilt store knows every writ as Pending again, but the work is not lost and must not
run twice:

- a writ whose `Sol-Writ: <world>/<writ>` trailer is on the target branch has landed:
  it is Merged, whatever the store says (searched from the writ's base when the store
  knows one, so an older writ of the same name never counts);
- a writ whose agent still runs (its tether names the writ and its session is alive) is
  adopted as Working with that agent and session, not cast a second time.

Branches `sol/<writ>` and kept worktrees need nothing here: a cast reuses them.
"""

from __future__ import annotations

from pathlib import Path

from reconciler.core import tether
from reconciler.core.errors import SolError
from reconciler.core.home import session_name
from reconciler.core.model import MERGED, PENDING, WORKING, WorldSpec
from reconciler.core.plan import UPDATE, Action
from reconciler.core.store import Record
from reconciler.drivers import worktrees
from reconciler.drivers.sphere import Sphere
from reconciler.specs.changes import target

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
        out = worktrees.run_git(
            repo, "log", "--first-parent", "--fixed-strings", "--grep=Sol-Writ: ",
            "--format=%H %(trailers:key=Sol-Writ,valueonly,separator=%x2C)", tip,
            what=f"cannot read the history of {branch} in {repo}")[1]
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
    out = worktrees.run_git(
        repo, "log", "--first-parent", "--fixed-strings", f"--grep=Sol-Writ: {world}/{writ}",
        "--format=%H %(trailers:key=Sol-Writ,valueonly,separator=%x2C)", *span,
        what=f"cannot search {branch} for writ {world}/{writ}")[1]
    for line in out.splitlines():
        sha, _, values = line.partition(" ")
        if f"{world}/{writ}" in (v.strip() for v in values.split(",")):
            return sha
    return None


def recover(sphere: Sphere, writs: list[Record], worlds: dict[str, Record],
            sessions: dict[str, bool]) -> list[Action]:
    """Merged for what landed, Working for what still runs (`sessions`: the pass's one
    tmux listing); the actions taken."""
    done: list[Action] = []
    pending: dict[str, list[Record]] = {}
    for writ in writs:
        if writ.phase == PENDING and not writ.orphaned:
            pending.setdefault(writ.world, []).append(writ)
    for world, candidates in sorted(pending.items()):
        record = worlds.get(world)
        repo = sphere.home.repo(world)
        if record is None or not worktrees.is_clone(repo):
            continue
        spec = WorldSpec.from_spec(record.spec)
        try:
            on_target = landed(repo, spec.branch)
        except SolError:
            continue  # the world reconciler reports a broken clone
        running = _running(sphere, world, sessions)
        for writ in candidates:
            action = _merged(sphere, writ, repo, spec, on_target)
            if action is None and writ.name in running:
                action = _adopt(sphere, writ, running[writ.name])
            if action is not None:
                done.append(action)
    return done


def _running(sphere: Sphere, world: str, sessions: dict[str, bool]) -> dict[str, tether.Tether]:
    """Writ -> the tether of a live agent of `world` that works on it (each read once)."""
    base = sphere.home.outposts(world)
    found: dict[str, tether.Tether] = {}
    for path in sorted(base.glob("*/tether.json")) if base.is_dir() else ():
        try:
            t = tether.read(path)
        except SolError:
            continue
        if sessions.get(session_name(world, t.agent)):
            found.setdefault(t.writ, t)
    return found


def _merged(sphere: Sphere, writ: Record, repo: Path, spec: WorldSpec,
            on_target: dict[str, str]) -> Action | None:
    name = f"{writ.world}/{writ.name}"
    commit = on_target.get(name)
    base = str(writ.status.get("base") or "")
    if commit and base:
        commit = landed_commit(repo, spec.branch, writ.world, writ.name, base)
    if not commit:
        return None
    message = (f"already on {spec.branch} as {commit[:12]} (its Sol-Writ trailer): "
               "recorded Merged, not run again")
    if sphere.store.set_status(writ.key, phase=MERGED, reason="RecoveredFromTarget",
                               message=message, expect_version=writ.version,
                               observed_generation=writ.generation,
                               mergeCommit=commit) is None:
        return None
    sphere.store.event("recovered-merged", kind="Writ", world=writ.world, name=writ.name,
                       message=message, commit=commit)
    return Action(UPDATE, "recover-merged", target("Writ", writ.world, writ.name), message,
                  {"world": writ.world, "name": writ.name, "commit": commit})


def _adopt(sphere: Sphere, writ: Record, t: tether.Tether) -> Action | None:
    """A live agent whose tether names this writ keeps working under it."""
    message = f"agent {t.agent} still works on it (session {t.session}): adopted"
    if sphere.store.set_status(
            writ.key, phase=WORKING, reason="Adopted", message=message,
            expect_version=writ.version, agent=t.agent, session=t.session,
            branch=t.branch, base=t.base, attempt=t.attempt, respawns=0) is None:
        return None
    sphere.store.put_agent(writ.world, t.agent, writ=writ.name, session=t.session,
                           runtime=str(t.runtime.get("name") or ""), state="working")
    sphere.store.event("adopted", kind="Writ", world=writ.world, name=writ.name,
                       message=message, agent=t.agent, session=t.session)
    return Action(UPDATE, "adopt", target("Writ", writ.world, writ.name), message,
                  {"world": writ.world, "name": writ.name, "agent": t.agent})
