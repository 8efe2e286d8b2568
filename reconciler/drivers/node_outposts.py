"""Casting an agent whose outpost is made on its node (`spec.sessions.workspace: node`,
node_workspace.py): the daemon's half of it, beside outposts.py's local cast."""

from __future__ import annotations

import time
from typing import Any

from reconciler.core import tether
from reconciler.core.errors import SolError
from reconciler.core.home import session_name
from reconciler.core.model import Runtime, WorldSpec
from reconciler.drivers import node_workspace, runtimes, session_log
from reconciler.drivers.sphere import Sphere

NODE_RUNTIMES = ("script", "command")
"""Runtimes an agent in a node workspace can run: claude and codex keep config,
transcripts and hooks in the daemon's outpost, which such a node does not see."""


def check_runtime(runtime: Runtime) -> None:
    if runtime.name not in NODE_RUNTIMES:
        raise SolError(f"runtime {runtime.name} cannot run in a node workspace yet "
                       f"(spec.sessions.workspace: node runs {' and '.join(NODE_RUNTIMES)}); "
                       "use workspace: shared, with SOL_HOME on a disk every node sees")


def start(sphere: Sphere, wspec: WorldSpec, t: tether.Tether, runtime: Runtime,
                   *, absent: bool) -> None:
    """Start an agent whose outpost is made on its node (node_workspace.py): the tether
    and launch files travel with the start call; its resolve and escalate come back
    through its outbox, its output through the sentinel's mirror."""
    check_runtime(runtime)
    home, outpost = sphere.home, sphere.home.outpost(t.world, t.agent)
    worktree = outpost / "worktree"
    launch = runtimes.launch(runtime, tether=t, home=home, agent=t.agent,
                             tether_path=home.tether(t.world, t.agent), worktree=worktree,
                             target=wspec.branch)
    env = {**launch.env, "SOL_HOME": str(outpost / "home"),
           "SOL_OUTBOX": str(outpost / node_workspace.OUTBOX),
           "SOL_WORKTREE": str(worktree)}
    files = {"tether.json": t.to_json(),
             **{f"worktree/{rel}": text for rel, text in launch.files.items()}}
    repo = home.repo(t.world)
    workspace = node_workspace.NodeWorkspace(
        t.world, t.agent, node_workspace.remote_of(repo, wspec.sessions.remote), t.branch,
        str(outpost), files, tuple(launch.exclude))
    log = home.agent_log(t.world, t.agent)
    writ = sphere.store.get("Writ", t.world, t.writ)
    session_log.append(log, session_log.header(
        t.world, t.writ, attempt=t.attempt, session=t.session, at=time.time(),
        respawn=int(writ.status.get("respawns") or 0) if writ else 0))
    name = session_name(t.world, t.agent)
    sphere.sessions.start_on_node(name, launch.argv, cwd=worktree, env=env, log=log,
                                  workspace=workspace, absent=absent)
    node = sphere.sessions.node(name)
    if node or (writ is not None and writ.status.get("node")):
        sphere.store.set_status(("Writ", t.world, t.writ), node=node or None)


def mirror(sphere: Sphere, world: str, agent: str) -> list[dict[str, Any]] | None:
    """Bring back what an agent on its node left there: its log (appended to the
    daemon's copy, so `sol logs` and pane-silence stall detection see it), its hooks'
    activity, and its outbox requests (returned, oldest first). None when its actor is
    gone (its node lost): nothing new to bring."""
    outpost = sphere.home.outpost(world, agent)
    token_file = outpost / node_workspace.LOG_TOKEN
    try:
        token = token_file.read_text()
    except OSError:
        token = ""
    found = sphere.sessions.collect(session_name(world, agent), token)
    if found is None:
        return None
    chunk = found.get("log") or b""
    if chunk:
        log = sphere.home.agent_log(world, agent)
        log.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        with log.open("ab") as handle:
            handle.write(chunk)
    if found.get("token") and found["token"] != token:
        outpost.mkdir(mode=0o700, parents=True, exist_ok=True)
        node_workspace.write_private(token_file, str(found["token"]))
    files = dict(found.get("files") or {})
    for rel in node_workspace.COLLECTED:
        if rel in files:
            path = outpost / rel
            if not path.exists() or path.read_text(errors="replace") != files[rel]:
                node_workspace.write_private(path, files[rel])
    return node_workspace.parse_outbox(files)
