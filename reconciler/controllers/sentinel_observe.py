"""What the sentinel looks at for one world, read only: its sessions, the store, each
outpost's tether, log and activity, and its orphan worktrees (a `SentinelView`)."""

from __future__ import annotations

import os
import time

from reconciler.controllers.sentinel_plan import (
    ActivityView,
    OrphanView,
    OutpostView,
    SentinelView,
    TetherView,
)
from reconciler.core import degraded, tether
from reconciler.core.errors import SolError
from reconciler.core.holds import world_hold
from reconciler.core.model import WORKING, WorldSpec
from reconciler.drivers import hook, worktrees
from reconciler.drivers.envoy_names import is_envoy
from reconciler.drivers.outposts import (
    parse_session,
)
from reconciler.drivers.sphere import Sphere


def read_tether(sphere: Sphere, world: str, agent: str) -> tuple[bool, TetherView | None]:
    path = sphere.home.tether(world, agent)
    if not path.exists():
        return False, None
    try:
        t = tether.read(path)
    except SolError:
        return True, None
    return True, TetherView(t.writ, t.session, float(t.updated_at),
                            hooks=t.runtime.get("name") == "claude")


def _activity(sphere: Sphere, world: str, agent: str) -> ActivityView | None:
    """What the agent's hooks last wrote (`reconciler.drivers.hook`), None without hooks."""
    data = hook.read(sphere.home.outpost(world, agent) / hook.ACTIVITY)
    if data is None or not isinstance(data.get("at"), int | float):
        return None
    return ActivityView(str(data.get("state") or ""), float(data["at"]),
                        str(data.get("session") or ""), str(data.get("error") or ""),
                        str(data.get("message") or ""))


def _mtime(path: os.PathLike[str]) -> float | None:
    try:
        return os.stat(path).st_mtime
    except OSError:
        return None


def observe(sphere: Sphere, world: str) -> SentinelView:
    """Read one world's state: its sessions first (one `list-sessions`), then the store (so
    a session `sol resolve` stopped shows its writ resolved), tethers, logs, orphans and
    whether the sphere is degraded."""
    listing = sphere.sessions.list("sol-")
    now = time.time()
    store, home = sphere.store, sphere.home
    record = store.get("World", "", world)
    spec = WorldSpec.from_spec(record.spec) if record is not None else None
    writs = {w.name: w for w in store.list("Writ", world)}
    agents = {a.name: a for a in store.agents(world)}
    sessions: dict[str, bool] = {}
    for name, alive in listing.items():
        parsed = parse_session(name)
        if parsed and parsed[0] == world:
            sessions[parsed[1]] = alive
    names = set(sessions) | {str(w.status["agent"]) for w in writs.values()
                             if w.phase == WORKING and w.status.get("agent")}
    base = home.outposts(world)
    dirs = [p for p in base.iterdir() if p.is_dir()] if base.is_dir() else []
    names |= {p.name for p in dirs if (p / "tether.json").exists()}
    outposts = {}
    for agent in names:
        has_file, view = read_tether(sphere, world, agent)
        row = agents.get(agent)
        outposts[agent] = OutpostView(
            agent, has_file, view, sessions.get(agent),
            _mtime(home.agent_log(world, agent)) if sessions.get(agent) else None,
            row.writ if row else None,
            _activity(sphere, world, agent) if sessions.get(agent) else None)
    live = sum(1 for a, alive in sessions.items() if alive and not is_envoy(a))
    found: list[OrphanView] = []
    if spec is not None:
        found = [orphan_view(sphere, world, spec, p.name) for p in sorted(dirs)
                 if unowned(sphere, world, p.name)]
    return SentinelView(world, spec, writs, outposts, now, live,
                        degraded.state(store) is not None, tuple(found),
                        degraded.exit_at(store), world_hold(record, now))


def unowned(sphere: Sphere, world: str, agent: str) -> bool:
    """A worktree no writ owns (envoys keep theirs without a writ: never ours)."""
    home = sphere.home
    if is_envoy(agent) or not home.worktree(world, agent).exists() \
            or home.tether(world, agent).exists():
        return False
    row = sphere.store.agent(world, agent)
    return row is None or not row.writ


def orphan_view(sphere: Sphere, world: str, spec: WorldSpec, agent: str) -> OrphanView:
    """Ask git whether an unowned worktree's HEAD is on the target (and if it is clean)."""
    repo, path = sphere.home.repo(world), sphere.home.worktree(world, agent)
    try:
        head = worktrees.rev(path, "HEAD")
        merged = head is not None and worktrees.is_merged(repo, head, f"refs/heads/{spec.branch}")
        dirty = worktrees.dirty(path)
    except SolError:
        head, merged, dirty = None, False, True  # not a usable worktree: report, keep
    last = sphere.store.events(world=world, name=agent, types=["orphan-worktree"], limit=1)
    reported = bool(last) and last[-1].data.get("head") == head
    return OrphanView(agent, head, merged, dirty, reported)


# ---- act ---------------------------------------------------------------------------
