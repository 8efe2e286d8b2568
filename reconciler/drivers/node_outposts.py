"""Casting an agent whose outpost is made on its node (`spec.sessions.workspace: node`,
node_workspace.py): the daemon's half of it, beside outposts.py's local cast."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from reconciler.core import tether
from reconciler.core.files import write_private
from reconciler.core.home import session_name
from reconciler.core.model import Runtime, WorldSpec
from reconciler.drivers import hook, node_workspace, runtimes
from reconciler.drivers.sphere import Sphere


def start(sphere: Sphere, wspec: WorldSpec, t: tether.Tether, runtime: Runtime, *,
          log: Path, absent: bool) -> None:
    """Start an agent whose outpost is made on its node (node_workspace.py): the tether
    and launch files travel with the start call; its resolve and escalate come back
    through its outbox, its output through the sentinel's mirror."""
    home, outpost = sphere.home, sphere.home.outpost(t.world, t.agent)
    worktree = outpost / "worktree"
    launch = runtimes.launch(runtime, tether=t, home=home, agent=t.agent,
                             tether_path=home.tether(t.world, t.agent), worktree=worktree,
                             target=wspec.branch, codex_home=codex_home(outpost))
    env = {**launch.env, "SOL_HOME": str(outpost / "home"),
           "SOL_OUTBOX": str(outpost / node_workspace.OUTBOX),
           "SOL_WORKTREE": str(worktree)}
    files = {**_station_files(outpost), "tether.json": t.to_json(),
             **{f"worktree/{rel}": text for rel, text in launch.files.items()}}
    repo = home.repo(t.world)
    workspace = node_workspace.NodeWorkspace(
        t.world, t.agent, node_workspace.remote_of(repo, wspec.sessions.remote), t.branch,
        str(outpost), files, tuple(launch.exclude))
    sphere.sessions.start_on_node(session_name(t.world, t.agent), launch.argv, cwd=worktree,
                                  env=env, log=log, workspace=workspace, absent=absent)


def codex_home(outpost: Path) -> Path:
    """An agent's own CODEX_HOME when it works on its node: the sphere's is not there."""
    return outpost / "codex"


def _station_files(outpost: Path) -> dict[str, str]:
    """The daemon's outpost as the node needs it: the CLI's config the launch seeded,
    and what earlier sessions mirrored back (transcripts, so a conversation resumes on
    any node). The worktree, scratch and the mirror's own state stay here."""
    files: dict[str, str] = {}
    for path in sorted(outpost.rglob("*")):
        rel = path.relative_to(outpost)
        if rel.parts[0] in node_workspace.STAYS or not path.is_file() or path.is_symlink():
            continue
        try:
            files[str(rel)] = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue  # not text: the CLI makes it again if it needs it
    return files


def mirror(sphere: Sphere, world: str, agent: str) -> list[dict[str, Any]] | None:
    """Bring back what an agent on its node left there, into the daemon's outpost as if
    it had worked here: its session log (appended to the daemon's copy, for `sol logs`
    and pane-silence stall detection), its hooks' state, its CLI's transcripts (for the
    ledger and budgets), the node's paths in them rewritten to the daemon's. Returns its
    outbox requests, oldest first; None when its actor is gone (its node lost)."""
    outpost = sphere.home.outpost(world, agent)
    state_file = outpost / node_workspace.MIRROR_STATE
    state = hook.read(state_file) or {}
    tokens = state.get("tokens") if isinstance(state.get("tokens"), dict) else {}
    found = sphere.sessions.collect(session_name(world, agent), tokens)
    if found is None:
        return None
    node, local = str(found.get("outpost") or ""), str(outpost)
    for rel, chunk in (found.get("appends") or {}).items():
        if rel == node_workspace.SESSION_LOG:
            path, data = sphere.home.agent_log(world, agent), chunk
        else:
            path = (outpost / node_workspace.rewrite(rel, node, local)).resolve()
            if outpost.resolve() not in path.parents:
                continue  # not a file of the outpost: nothing of ours to mirror
            data = node_workspace.rewrite(chunk.decode("utf-8", "replace"), node,
                                          local).encode()
        fresh = rel in (found.get("fresh") or ()) and rel != node_workspace.SESSION_LOG
        _append(path, data, fresh=fresh)
    files = dict(found.get("files") or {})
    for rel in node_workspace.WHOLE:
        if rel in files:
            text = node_workspace.rewrite(files[rel], node, local)
            path = outpost / rel
            if not path.exists() or path.read_text(errors="replace") != text:
                write_private(path, text)
    if found.get("tokens") != tokens:  # after the appends: a crash between repeats a
        # chunk (the ledger counts each message once), it never loses one
        hook.write(state_file, {"tokens": found.get("tokens") or {}})
    return node_workspace.parse_outbox(files)


def _append(path: Path, data: bytes, *, fresh: bool) -> None:
    """Add `data` to a mirrored file (0600, like everything under SOL_HOME); `fresh`
    starts it over (the node's file is another one now)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if fresh else os.O_APPEND)
    fd = os.open(path, flags, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
