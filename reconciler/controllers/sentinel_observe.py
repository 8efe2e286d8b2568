"""What the sentinel looks at for one world, read only: its sessions, the store, each
outpost's tether, log and activity, and its orphan worktrees (a `SentinelView`)."""

from __future__ import annotations

import os
import time

from reconciler.controllers.sentinel_plan import (
    ActivityView,
    OrphanView,
    OutboxView,
    OutpostView,
    SentinelView,
    TetherView,
)
from reconciler.core import degraded, tether
from reconciler.core.errors import SolError
from reconciler.core.holds import world_hold
from reconciler.core.model import WORKING, WorldSpec
from reconciler.core.store import Record
from reconciler.drivers import hook, node_outposts, worktrees
from reconciler.drivers.envoy_names import is_envoy
from reconciler.drivers.outposts import (
    parse_session,
)
from reconciler.drivers.runtimes import codex
from reconciler.drivers.sphere import Sphere


def read_tether(sphere: Sphere, world: str, agent: str) -> tuple[bool, TetherView | None]:
    path = sphere.home.tether(world, agent)
    if not path.exists():
        return False, None
    try:
        t = tether.read(path)
    except SolError:
        return True, None
    name = str(t.runtime.get("name") or "")
    return True, TetherView(t.writ, t.session, float(t.updated_at), hooks=name == "claude",
                            runtime=name)


def _activity(sphere: Sphere, world: str, agent: str) -> ActivityView | None:
    """What the agent's hooks last wrote (`reconciler.drivers.hook`), None without hooks."""
    data = hook.read(sphere.home.outpost(world, agent) / hook.ACTIVITY)
    if data is None or not isinstance(data.get("at"), int | float):
        return None
    return ActivityView(str(data.get("state") or ""), float(data["at"]),
                        str(data.get("session") or ""), str(data.get("error") or ""),
                        str(data.get("message") or ""), hold=sphere.config.rate_limit_hold)


def _codex_activity(sphere: Sphere, world: str, agent: str, view: TetherView,
                    writ: Record | None, on_nodes: bool = False) -> ActivityView | None:
    """A live Codex agent's rollout, read as its hooks would speak (`codex.activity`), but
    only while it matters: rate limited now, or RateLimited still on its writ (so working
    again clears it). Otherwise None: pane silence judges a codex stall, as before."""
    home = sphere.home
    begun = (hook.read(home.outpost(world, agent) / codex.CONVERSATION) or {}).get("since")
    since = view.updated_at
    directory = node_outposts.codex_home(home.outpost(world, agent)) if on_nodes \
        else home.codex_home
    found = codex.activity(directory.absolute(), home.worktree(world, agent), since,
                           min(begun, since) if isinstance(begun, int | float) else since)
    limited = writ is not None and writ.name == view.writ and writ.status.get("rateLimit")
    if found is None or found.at < since or not (found.state == "rate-limited" or limited):
        return None  # (a resumed conversation's last turn may be an earlier session's)
    return ActivityView(found.state, found.at, view.session, found.error, found.message,
                        found.until, polled=True, hold=sphere.config.rate_limit_hold)


def _mirrored(sphere: Sphere, world: str, agent: str) -> tuple[OutboxView, ...]:
    """Bring an agent's node outpost back (its log, activity and outbox); what it asks.
    This writes only the daemon's copy of what the node holds: observation, kept."""
    try:
        found = node_outposts.mirror(sphere, world, agent)
    except (SolError, OSError):
        return ()  # a node that does not answer now: its agent is judged as it is seen
    return tuple(OutboxView(str(r["kind"]), str(r["id"]), str(r["session"]),
                            str(r.get("head") or ""), int(r.get("ahead") or 0),
                            str(r.get("message") or "")) for r in found or ())


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
        outbox = _mirrored(sphere, world, agent) if spec is not None and \
            spec.sessions.on_nodes and agent in sessions else ()
        has_file, view = read_tether(sphere, world, agent)
        row = agents.get(agent)
        alive = sessions.get(agent)
        activity = None
        if alive and view is not None and view.runtime == "codex":
            activity = _codex_activity(sphere, world, agent, view, writs.get(view.writ),
                                       spec is not None and spec.sessions.on_nodes)
        elif alive:
            activity = _activity(sphere, world, agent)
        outposts[agent] = OutpostView(
            agent, has_file, view, alive,
            _mtime(home.agent_log(world, agent)) if alive else None,
            row.writ if row else None, activity, outbox)
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
