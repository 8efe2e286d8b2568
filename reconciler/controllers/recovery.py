"""Recover the store from what is on disk: the target branch is the durable record.

`sol.db` can be lost or rebuilt (its own error message advises `mv sol.db sol.db.broken`).
A rebuilt store knows every writ as Pending again, but the work is not lost and must not
run twice:

- a writ whose `Sol-Writ: <world>/<writ>` trailer is on the target branch has landed:
  it is Merged, whatever the store says (searched from the writ's base when the store
  knows one, so an older writ of the same name never counts);
- a writ whose agent still runs (its tether names the writ and its session is alive) is
  adopted as Working with that agent and session, not cast a second time.

Branches `sol/<writ>` and kept worktrees need nothing here: a cast reuses them. These
are steps of the consul: `observe` reads git and the tethers for its View, its plan
decides (`consul_plan.recoveries`), and `record_merged` and `adopt` act.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

from reconciler.controllers.consul_plan import WritKey
from reconciler.core import tether
from reconciler.core.errors import SolError
from reconciler.core.home import session_name
from reconciler.core.model import MERGED, PENDING, WORKING, WorldSpec
from reconciler.core.plan import Action
from reconciler.core.store import Record
from reconciler.drivers import worktrees
from reconciler.drivers.sphere import Sphere
from reconciler.drivers.trailers import landed, landed_commit


def observe(sphere: Sphere, writs: Iterable[Record], worlds: Mapping[str, Record],
            sessions: Mapping[str, bool]
            ) -> tuple[dict[WritKey, str], dict[WritKey, tether.Tether]]:
    """What recovery needs, read only: Pending writs whose trailer is on their world's
    target (-> that commit), and those a live agent still works on (-> its tether);
    `sessions` is the pass's one tmux listing. Worlds without a clone are left out."""
    landed_on: dict[WritKey, str] = {}
    running: dict[WritKey, tether.Tether] = {}
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
        live = _running(sphere, world, sessions)
        for writ in candidates:
            commit = _landed_commit(writ, repo, spec, on_target)
            if commit:
                landed_on[(writ.world, writ.name)] = commit
            if writ.name in live:
                running[(writ.world, writ.name)] = live[writ.name]
    return landed_on, running


def _running(sphere: Sphere, world: str, sessions: Mapping[str, bool]
             ) -> dict[str, tether.Tether]:
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


def _landed_commit(writ: Record, repo: Path, spec: WorldSpec,
                   on_target: dict[str, str]) -> str | None:
    """The target's commit carrying this writ's trailer, searched from the writ's base
    when the store knows one (an older writ of the same name never counts)."""
    commit = on_target.get(f"{writ.world}/{writ.name}")
    base = str(writ.status.get("base") or "")
    if commit and base:
        commit = landed_commit(repo, spec.branch, writ.world, writ.name, base)
    return commit


def record_merged(sphere: Sphere, action: Action) -> bool:
    """Act: a writ found on the target is Merged, unless its record moved on."""
    data = action.data
    key = ("Writ", data["world"], data["name"])
    if sphere.store.set_status(key, phase=MERGED, reason="RecoveredFromTarget",
                               message=action.description, expect_version=data["version"],
                               observed_generation=data["generation"],
                               mergeCommit=data["commit"]) is None:
        return False
    sphere.store.event("recovered-merged", kind="Writ", world=data["world"], name=data["name"],
                       message=action.description, commit=data["commit"])
    return True


def adopt(sphere: Sphere, action: Action) -> bool:
    """Act: a live agent whose tether names this writ keeps working under it."""
    data = action.data
    world, name, agent, session = data["world"], data["name"], data["agent"], data["session"]
    if sphere.store.set_status(
            ("Writ", world, name), phase=WORKING, reason="Adopted",
            message=action.description, expect_version=data["version"], agent=agent,
            session=session, branch=data["branch"], base=data["base"],
            attempt=data["attempt"], respawns=0) is None:
        return False
    sphere.store.put_agent(world, agent, writ=name, session=session, runtime=data["runtime"],
                           state="working")
    sphere.store.event("adopted", kind="Writ", world=world, name=name,
                       message=action.description, agent=agent, session=session)
    return True
