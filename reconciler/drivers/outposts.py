"""Outposts: cast a writ (outpost name, worktree, tether, persona, session) and release it.

Every step of a cast is undone if a later one fails, so there is never a tether without
a session record nor a session without a tether. Casts in one world are serialised by a
file lock, and capacity is counted from live tmux sessions under that lock, so no path
that casts can exceed it.

`DeathWatch` is how a daemon learns at once that an agent's process (or the tmux server)
has exited, whatever tmux's hooks did.
"""

from __future__ import annotations

import os
import select
import shutil
import threading
import time
import uuid
from contextlib import suppress
from pathlib import Path
from typing import Protocol

from reconciler.core import tether
from reconciler.core.errors import Retry, SolError
from reconciler.core.home import session_name
from reconciler.core.locks import flock
from reconciler.core.model import PENDING, WORKING, Runtime, WorldSpec, WritSpec
from reconciler.core.store import Record
from reconciler.drivers import (
    backup,
    node_outposts,
    node_workspace,
    runtimes,
    session_log,
    worktrees,
)
from reconciler.drivers.envoy_names import is_envoy
from reconciler.drivers.sphere import Sphere

POOL = (
    "vega rigel deneb altair sirius castor pollux spica antares capella arcturus mira "
    "nova lyra orion atlas electra maia merope alcor mizar polaris hadar acrux mimosa "
    "shaula bellatrix alnilam saiph naos wezen adhara izar kochab dubhe merak phecda "
    "alioth alkaid thuban"
).split()


def parse_session(name: str) -> tuple[str, str] | None:
    """`sol-<world>-<agent>` to (world, agent); agent names never hold a hyphen."""
    if not name.startswith("sol-") or name.count("-") < 2:
        return None
    world, _, agent = name[4:].rpartition("-")
    return world, agent


def live_counts(sphere: Sphere) -> dict[str, int]:
    """Live outpost sessions per world, from tmux itself (one tmux call)."""
    return count_live(sphere.sessions.list("sol-"))


def occupied(live: dict[str, int], writs: list[Record]) -> dict[str, int]:
    """Pure: slots in use per world: live sessions, or Working writs if more (a Working
    writ whose session died holds its slot until the sentinel respawns or fails it)."""
    working: dict[str, int] = {}
    for writ in writs:
        if writ.phase == WORKING:
            working[writ.world] = working.get(writ.world, 0) + 1
    return {w: max(live.get(w, 0), working.get(w, 0)) for w in set(live) | set(working)}


def count_live(sessions: dict[str, bool]) -> dict[str, int]:
    """Pure: live outpost sessions per world from a session -> alive map."""
    counts: dict[str, int] = {}
    for name, alive in sessions.items():
        parsed = parse_session(name)
        if alive and parsed and not is_envoy(parsed[1]):
            counts[parsed[0]] = counts.get(parsed[0], 0) + 1
    return counts


def agent_name(sphere: Sphere, world: str, writ: str) -> str:
    """The writ's own outpost if it has one (so its worktree is reused), else the first
    free name of the pool."""
    existing = sphere.store.agent_for(world, writ)
    if existing:
        return existing.name
    repo = sphere.home.repo(world)
    holder = (_holding(sphere.home.outposts(world), f"sol/{writ}")
              if worktrees.read_ref(repo, f"refs/heads/sol/{writ}") else None)  # new: none
    if holder is not None:
        return holder  # a worktree kept from an earlier cast has the branch checked out
    taken = {a.name for a in sphere.store.agents(world) if a.writ}
    taken |= {p.name for p in sphere.home.outposts(world).glob("*")
              if (p / "tether.json").exists() or (p / "worktree").exists()}
    for name in POOL:
        if name not in taken:
            return name
    n = 2
    while True:
        for name in POOL:
            if f"{name}{n}" not in taken:
                return f"{name}{n}"
        n += 1


def writ_tether(sphere: Sphere, world: Record, writ: Record, agent: str, session: str,
                base: str) -> tether.Tether:
    wspec = WorldSpec.from_spec(world.spec)
    spec = WritSpec.from_spec(writ.spec)
    runtime = runtimes.effective_runtime(wspec, spec)
    now = time.time()
    return tether.Tether(
        world=world.name, writ=writ.name, agent=agent, title=spec.title,
        description=spec.description, kind=spec.kind, branch=f"sol/{writ.name}",
        base=base, attempt=int(writ.status.get("attempt", 1)), generation=writ.generation,
        session=session,
        runtime=runtime.to_dict(),
        gates=[{"name": g.name, "run": g.run, "timeout": g.timeout} for g in wspec.gates],
        feedback=writ.status.get("feedback"), created_at=now, updated_at=now,
    )


def _gitdir(worktree: Path) -> Path | None:
    """The worktree's own git directory, read from its `.git` file (no git process)."""
    try:
        pointer = (worktree / ".git").read_text().strip()
    except OSError:
        return None
    if not pointer.startswith("gitdir: "):
        return None
    return worktree / pointer.removeprefix("gitdir: ")  # absolute, or relative to it


def _holding(outposts: Path, branch: str) -> str | None:
    """The outpost whose worktree has `branch` checked out (git allows one), read from
    each worktree's HEAD file: no git process."""
    want = f"ref: refs/heads/{branch}"
    for station in sorted(outposts.glob("*")) if outposts.is_dir() else ():
        gitdir = _gitdir(station / "worktree")
        try:
            if gitdir is not None and (gitdir / "HEAD").read_text().strip() == want:
                return station.name
        except OSError:
            continue
    return None


def _remake_half_made(sphere: Sphere, world: str, writ: str, worktree: Path) -> None:
    """Remove a worktree that `git worktree add` never finished, so the cast makes it
    again (the branch is kept).

    git locks a new worktree `initializing` until its checkout is done; a cast killed
    meanwhile leaves it so: files missing, maybe no index. An agent started there would
    commit the missing files as deletions. No agent ever worked in it: a session starts
    only after the worktree is made, and every later cast comes through here first.
    """
    gitdir = _gitdir(worktree)
    try:
        if gitdir is None or (gitdir / "locked").read_text().strip() != "initializing":
            return
    except OSError:
        return
    shutil.rmtree(worktree, ignore_errors=True)
    shutil.rmtree(gitdir, ignore_errors=True)
    sphere.store.event("worktree-remade", kind="Writ", world=world, name=writ,
                       message=f"worktree {worktree} was left half made (locked "
                       "initializing) by a cast that was killed: made again from its branch")


def clear_git_locks(worktree: Path, branch: str | None) -> list[Path]:
    """Remove the lock files a git command killed mid-write leaves (the worktree's index
    and HEAD, its branch's ref): every later git command there would fail on them.

    Only for a worktree whose session is not running (cast and respawn make sure, under
    the world's cast lock): nothing of ours can still hold them. No git process: the
    paths are read from the worktree's `.git` file.
    """
    gitdir = _gitdir(worktree)
    if gitdir is None:
        return []
    try:
        common = (gitdir / (gitdir / "commondir").read_text().strip()).resolve()
    except OSError:
        common = gitdir
    removed = []
    locks = [gitdir / "index.lock", gitdir / "HEAD.lock"]
    if branch:
        locks.append(common / "refs" / "heads" / f"{branch}.lock")
    for lock in locks:
        try:
            lock.unlink()
        except OSError:
            continue
        removed.append(lock)
    return removed


def start_session(sphere: Sphere, world: Record, t: tether.Tether, *,
                  absent: bool = False) -> None:
    """Start (or restart) the agent's session from its tether; used by cast and respawn.
    `absent`: the caller saw, under the cast lock, that no session of that name exists."""
    wspec = WorldSpec.from_spec(world.spec)
    runtime = Runtime.from_spec({**t.runtime, "name": t.runtime.get("name")
                                 or wspec.runtime.name}) if t.runtime else wspec.runtime
    log = sphere.home.agent_log(t.world, t.agent)
    writ = sphere.store.get("Writ", t.world, t.writ)  # a respawn has counted itself there
    session_log.append(log, session_log.header(
        t.world, t.writ, attempt=t.attempt, session=t.session, at=time.time(),
        respawn=int(writ.status.get("respawns") or 0) if writ else 0))
    name = session_name(t.world, t.agent)
    if wspec.sessions.on_nodes:  # its outpost is made on its node
        node_outposts.start(sphere, wspec, t, runtime, log=log, absent=absent)
    else:
        _start_here(sphere, wspec, t, runtime, log=log, absent=absent)
    node = sphere.sessions.node(name)
    if node or (writ is not None and writ.status.get("node")):
        sphere.store.set_status(("Writ", t.world, t.writ), node=node or None)


def _start_here(sphere: Sphere, wspec: WorldSpec, t: tether.Tether, runtime: Runtime, *,
                log: Path, absent: bool) -> None:
    """The agent in its outpost under SOL_HOME (this machine, or a shared disk)."""
    worktree = sphere.home.worktree(t.world, t.agent)
    cleared = clear_git_locks(worktree, t.branch)
    if cleared:
        sphere.store.event("git-locks-removed", kind="Writ", world=t.world, name=t.writ,
                           message=f"removed {', '.join(map(str, cleared))}, left by a git "
                           f"command of an earlier session of {t.agent} that was killed",
                           agent=t.agent)
    launch = runtimes.launch(runtime, tether=t, home=sphere.home, agent=t.agent,
                             tether_path=sphere.home.tether(t.world, t.agent),
                             worktree=worktree, target=wspec.branch)
    if launch.exclude:
        worktrees.exclude(worktree, launch.exclude)
    for rel, content in launch.files.items():
        path = worktree / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)
    sphere.sessions.start(session_name(t.world, t.agent), launch.argv, cwd=worktree,
                          env=launch.env, log=log, absent=absent)


def cast_writs(sphere: Sphere, world_name: str, writ_names: list[str]) -> list[SolError]:
    """Cast writs of one world in order under one hold of the world's cast lock.

    Live sessions are counted once under the lock: only casts and respawns add sessions
    and both take this lock, so the count stays true while we hold it. Returns the
    failures (a Retry for each writ beyond capacity).
    """
    failures: list[SolError] = []
    started = 0
    with flock(sphere.home.run / f"cast-{world_name}.lock"):
        world = sphere.store.get("World", "", world_name)
        if world is None:
            return failures
        wspec = WorldSpec.from_spec(world.spec)
        listing = sphere.sessions.list("sol-")
        live = occupied(count_live(listing), sphere.store.list("Writ", world_name)).get(
            world_name, 0)
        for writ_name in writ_names:
            if wspec.max_active and live >= wspec.max_active:
                failures.append(Retry(f"capacity {live}/{wspec.max_active}"))
                continue
            try:
                if _cast_locked(sphere, world, wspec, writ_name, listing):
                    live += 1
                    started += 1
            except SolError as exc:
                failures.append(exc)
    if started:
        _wake_sentinel(sphere, world_name)
    return failures


def _wake_sentinel(sphere: Sphere, world: str) -> None:
    """A new session: the world's sentinel (if a daemon runs one) starts watching it."""
    with suppress(OSError):
        sphere.home.wake_file(f"sentinel-{world}").touch()


def _cast_locked(sphere: Sphere, world: Record, wspec: WorldSpec, writ_name: str,
                 listing: dict[str, bool]) -> bool:
    """One cast, the world's cast lock held; True if a session was started."""
    store = sphere.store
    world_name = world.name
    key = ("Writ", world_name, writ_name)
    writ = store.get(*key)
    if writ is None or writ.phase != PENDING:
        return False
    runtime = runtimes.effective_runtime(wspec, WritSpec.from_spec(writ.spec))
    try:
        runtimes.check(runtime)
    except SolError as exc:
        _fail(sphere, writ, exc.message)
        raise
    agent = agent_name(sphere, world_name, writ_name)
    session = uuid.uuid4().hex[:12]
    attempt = int(writ.status.get("attempt", 1))
    claimed = store.set_status(
        key, phase=WORKING, reason="Cast", message=f"agent {agent} working",
        observed_generation=writ.generation, expect_version=writ.version, agent=agent,
        branch=f"sol/{writ_name}",
        session=session, attempt=attempt, respawns=0,
    )
    if claimed is None:
        return False  # another process cast it first
    made: list[str] = []
    try:
        store.put_agent(world_name, agent, writ=writ_name, session=session,
                        runtime=runtime.name, state="working")
        made.append("agent")
        repo = sphere.home.repo(world_name)
        worktree = sphere.home.worktree(world_name, agent)
        if wspec.sessions.on_nodes:  # the worktree is a clone on the agent's node
            base = node_workspace.publish_branch(
                repo, node_workspace.remote_of(repo, wspec.sessions.remote),
                f"sol/{writ_name}", wspec.branch)
        else:
            _remake_half_made(sphere, world_name, writ_name, worktree)
            existed = worktree.exists()
            backup.ensure(repo)  # from the first commit on, the agent's work is kept twice
            base = worktrees.add_worktree(repo, worktree, f"sol/{writ_name}",
                                          f"refs/heads/{wspec.branch}")
            if not existed:
                made.append("worktree")
        t = writ_tether(sphere, world, claimed, agent, session, base)
        tether.write(sphere.home.tether(world_name, agent), t)
        made.append("tether")
        start_session(sphere, world, t,
                      absent=session_name(world_name, agent) not in listing)
    except (SolError, OSError) as exc:
        message = getattr(exc, "message", None) or str(exc)
        _undo(sphere, world_name, agent, writ_name, made)
        store.set_status(key, phase=PENDING, reason="CastFailed",
                         message=f"cast failed: {message}", expect_phases=[WORKING],
                         agent=None, session=None)
        if (writ.reason, writ.message) != ("CastFailed", f"cast failed: {message}"):
            store.event("cast-failed", kind="Writ", world=world_name, name=writ_name,
                        message=message)  # once per cause, not once per pass
        raise SolError(f"cannot cast writ {world_name}/{writ_name}: {message}") from exc
    store.set_status(key, base=base)
    store.event("cast", kind="Writ", world=world_name, name=writ_name,
                message=f"agent {agent} on sol/{writ_name} (attempt {attempt})",
                agent=agent, session=session, attempt=attempt)
    return True


def _fail(sphere: Sphere, writ: Record, message: str) -> None:
    if writ.message != message:
        sphere.store.set_status(writ.key, reason="CastFailed", message=message,
                                expect_phases=[PENDING])
        sphere.store.event("cast-failed", kind="Writ", world=writ.world, name=writ.name,
                           message=message)


def _undo(sphere: Sphere, world: str, agent: str, writ: str, made: list[str]) -> None:
    """Reverse a half-made cast, newest step first; the branch is always kept. Never
    raises: a backend that cannot be reached (a Ray cluster down) must not keep the
    writ from going back to Pending with its reason; a session it half started was
    ended by its own start."""
    with suppress(SolError):
        sphere.sessions.stop(session_name(world, agent))
    if "tether" in made:
        tether.clear(sphere.home.tether(world, agent))
    if "worktree" in made:
        try:
            worktrees.remove_worktree(sphere.home.repo(world), sphere.home.worktree(world, agent),
                                      force=True)
        except SolError:
            pass
    if "agent" in made:
        sphere.store.free_agent(world, agent)


def release(sphere: Sphere, world: str, writ: str, *, reason: str) -> None:
    """Stop a writ's session and clear its tether; worktree and branch are kept."""
    agent = sphere.store.agent_for(world, writ)
    if agent is None:
        return
    sphere.sessions.stop(session_name(world, agent.name))
    tether.clear(sphere.home.tether(world, agent.name))
    sphere.store.put_agent(world, agent.name, writ=writ, session="", runtime=agent.runtime,
                           state="stopped")
    sphere.store.event("released", kind="Writ", world=world, name=writ, message=reason,
                       agent=agent.name)


def tether_path_for(sphere: Sphere, world: str, writ: str) -> Path | None:
    agent = sphere.store.agent_for(world, writ)
    return sphere.home.tether(world, agent.name) if agent else None


class DeathWatch:
    """Touches `wake` (run/tmux-events, as tmux's hooks do) the moment an agent's pane
    process or the tmux server exits.

    The pane-died hook alone is not enough: a tmux linked with libutempter misses some
    SIGCHLDs and fires nothing until someone looks (from 4 to 15 kills in 20 in
    tests/bench/bench_supervision.py; the daemon then waited for its 30 s resync), and
    kill-server or a kill -9 of the server fires no hook at all. A pidfd becomes readable when its
    process exits, so one thread blocked in poll() learns of every exit: no polling, and
    one tmux call per new session to learn its pid. Linux only (os.pidfd_open);
    elsewhere the hooks and the resync remain.
    """

    SERVER = ""  # the key of the tmux server among the watched sessions

    def __init__(self, wake: Path) -> None:
        self.wake = wake
        self._lock = threading.Lock()
        self._fds: dict[int, str] = {}              # pidfd -> session name
        self._pids: dict[str, tuple[int, bool]] = {}  # session -> (pid, exited)
        self._read, self._write = os.pipe()
        self._thread: threading.Thread | None = None

    def watch(self, sessions: SessionsLike, listing: dict[str, bool]) -> None:
        """Watch every live session of `listing` (and their server) not watched yet."""
        with self._lock:
            known = dict(self._pids)
            for name, (_, exited) in known.items():
                if exited and name != self.SERVER and not listing.get(name):
                    del self._pids[name]  # dead or gone: watch its next session afresh
        added = 0
        for name, alive in listing.items():
            entry = known.get(name)
            if not alive or (entry is not None and not entry[1]):
                continue
            try:
                pid = sessions.pane_pid(name)
            except SolError:
                continue
            if not pid or (entry is not None and entry[0] == pid):
                continue  # exited, yet tmux still shows it alive: never re-armed in a loop
            added += self._add(name, pid)
            server = self._pids.get(self.SERVER)
            if server is None or server[1]:
                parent = _parent(pid)
                if parent and _is_tmux(parent):
                    self._add(self.SERVER, parent)
        if added:
            self._start()
            with suppress(OSError):
                os.write(self._write, b"!")  # poll the new pidfds too

    def _add(self, name: str, pid: int) -> int:
        try:
            fd = os.pidfd_open(pid)
        except (OSError, AttributeError):
            return 0
        with self._lock:
            self._fds[fd] = name
            self._pids[name] = (pid, False)
        return 1

    def _start(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._run, daemon=True,
                                            name="sol-death-watch")
            self._thread.start()

    def _run(self) -> None:
        while True:
            poller = select.poll()
            poller.register(self._read, select.POLLIN)
            with self._lock:
                for fd in self._fds:
                    poller.register(fd, select.POLLIN)
            exited = False
            for fd, _ in poller.poll():
                if fd == self._read:
                    with suppress(OSError):
                        os.read(self._read, 4096)
                    continue
                with self._lock:
                    name = self._fds.pop(fd, None)
                    if name is not None and name in self._pids:
                        self._pids[name] = (self._pids[name][0], True)
                os.close(fd)
                exited = True
            if exited:
                with suppress(OSError):
                    self.wake.touch()


class SessionsLike(Protocol):
    def pane_pid(self, name: str) -> int | None: ...


def _parent(pid: int) -> int | None:
    """The parent of an agent's pane process: the tmux server."""
    import psutil  # on first use: most commands never ask about a process

    try:
        return psutil.Process(pid).ppid()
    except psutil.Error:
        return None


def _is_tmux(pid: int) -> bool:
    import psutil  # on first use: most commands never ask about a process

    try:
        return psutil.Process(pid).name().startswith("tmux")
    except psutil.Error:
        return False


_WATCHES: dict[Path, DeathWatch] = {}


def watch_deaths(sphere: Sphere, listing: dict[str, bool]) -> None:
    """Arm this process's DeathWatch of the sphere on the live sessions of `listing`
    (the daemon's sentinel calls it after each pass, before it sleeps)."""
    wake = sphere.home.run / "tmux-events"
    watch = _WATCHES.get(wake)
    if watch is None:
        watch = _WATCHES[wake] = DeathWatch(wake)
    watch.watch(sphere.sessions, listing)
