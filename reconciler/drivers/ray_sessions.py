"""Agent sessions on a Ray cluster: each session a named detached actor that runs the
agent in a tmux session on its own node.

Why an actor per session: a named detached actor outlives the driver that made it (a
daemon that crashes or restarts finds its agents again by name), Ray places it on a
node with the resources asked for, and when its node is lost Ray marks it dead and frees
its name, so the same session can be started again elsewhere. The actor does not run
the agent itself: it drives `TmuxSessions` on its node, so output capture, the launch
file that keeps secrets off command lines, dead panes kept for inspection and
`tmux attach` all work as on one machine. The environment reaches the actor as a call
argument (through Ray's object store), never on a command line.

A tmux server outlives the Ray worker that started it (tmux double-forks). So each
session gets a reaper: a small detached process on the node that waits for the actor's
worker to exit and then stops the session, if it is still the one that worker started.
Without it, an agent whose node's raylet crashed would keep working while its writ is
recast elsewhere.

Every node needs sol (with the `ray` extra) installed: the actor's code is this module.
`ray` is imported (by ray_connect.py) only when a Ray world is driven: it is an
optional extra. With `spec.sessions.workspace: node` the actor also makes the agent's
outpost on its node and carries its requests back (node_workspace.py).
"""

from __future__ import annotations

import json
import os
import select
import shlex
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from reconciler.core.errors import SolError
from reconciler.drivers import node_workspace
from reconciler.drivers.node_workspace import NodeWorkspace, rewrite
from reconciler.drivers.ray_connect import (
    CALL_TIMEOUT,
    bounded,
    connect,
    first_line,
    machine,
    nodes,
)
from reconciler.drivers.sessions import Ending, SessionBackend, TmuxSessions, _check_name

if TYPE_CHECKING:
    from types import ModuleType

START_TIMEOUT = 60.0
"""Seconds a new session's actor may take to be placed and start its tmux session; a
cluster with no node that has the resources asked for would otherwise wait for ever."""

LIST_TIMEOUT = 5.0
"""Seconds `list` waits for all its actors at once; one that has not answered by then
(its node lost, not yet declared dead) counts as not alive."""

START_ATTEMPTS = 3
"""Placements tried for one start when the chosen node turns out lost."""


class _NodeLost(Exception):
    """A new session's actor died with its node before it started."""


class SessionActor:
    """The body of a session's actor (wrapped by `ray.remote` when first used): one
    tmux session on the node the actor runs on."""

    def __init__(self, socket_name: str, launch_dir: str | None) -> None:
        os.environ.pop("TMUX", None)
        os.environ.pop("TMUX_PANE", None)
        self.socket_name = socket_name
        self.tmux = TmuxSessions(socket_name, launch_dir=Path(launch_dir) if launch_dir
                                 else None)
        self.outposts: dict[str, Path] = {}

    def start(self, name: str, argv: list[str], cwd: str, env: dict[str, str],
              log: str, workspace: NodeWorkspace | None = None) -> None:
        """Start the session and its reaper. A live tmux session of this name here is an
        orphan (the actor's name is unique in the cluster, so whoever started it is
        gone): it is replaced. With a `workspace`, the agent's outpost is made on this
        node first and the daemon's paths are rewritten to it."""
        if workspace is not None:
            outpost = node_workspace.prepare(workspace, self.socket_name)
            local, here = workspace.local_outpost, str(outpost)
            argv = [rewrite(arg, local, here) for arg in argv]
            env = {key: rewrite(value, local, here) for key, value in env.items()}
            cwd, log = rewrite(cwd, local, here), str(outpost / "session.log")
            self.outposts[name] = outpost
        if self.tmux.is_alive(name):
            self.tmux.stop(name)
        self.tmux.start(name, argv, cwd=Path(cwd), env=env, log=Path(log))
        pane = self.tmux.pane_pid(name)
        if pane is not None:
            _spawn_reaper(os.getpid(), self.socket_name, name, pane)

    def alive(self, name: str) -> bool:
        return self.tmux.is_alive(name)

    def deliver(self, name: str, files: dict[str, str], local_outpost: str) -> bool:
        """Write files into the session's node outpost (a tether changed by the
        daemon); False when this actor made no node outpost."""
        outpost = self.outposts.get(name)
        if outpost is None:
            return False
        node_workspace.put_files(outpost, files, local_outpost)
        return True

    def collect(self, name: str, tokens: dict[str, str]) -> dict[str, Any]:
        """What the daemon mirrors from the session's node outpost (node_workspace.collect);
        nothing for a session that has none."""
        outpost = self.outposts.get(name)
        if outpost is None:
            return {"files": {}, "appends": {}, "fresh": [], "tokens": tokens, "outpost": ""}
        return node_workspace.collect(outpost, tokens, machine())

    def exists(self, name: str) -> bool:
        return self.tmux.exists(name)

    def recent_output(self, name: str, lines: int) -> str:
        return self.tmux.recent_output(name, lines)

    def ending(self, name: str) -> Ending | None:
        return self.tmux.ending(name)

    def send_text(self, name: str, text: str) -> None:
        self.tmux.send_text(name, text)

    def stop(self, name: str) -> None:
        self.tmux.stop(name)

    def pane_pid(self, name: str) -> int | None:
        return self.tmux.pane_pid(name)

    def where(self) -> dict[str, Any]:
        """The node this session runs on, for `sol status`, `sol doctor` and tests."""
        import ray

        raylet = os.environ.get("RAY_RAYLET_PID", "")
        return {"node_id": ray.get_runtime_context().get_node_id(),
                "node_ip": ray.util.get_node_ip_address(),
                "hostname": socket.gethostname(),
                "raylet_pid": int(raylet) if raylet.isdigit() else None,
                "machine": machine()}


def _spawn_reaper(worker: int, socket_name: str, name: str, pane: int) -> None:
    """A detached `python -m reconciler.drivers.ray_sessions reap ...` that outlives the
    worker (setsid -f: Ray ends a worker's own children with it, not a re-parented one).
    It imports sol from where this worker did."""
    argv = [sys.executable, "-m", "reconciler.drivers.ray_sessions", "reap", str(worker),
            socket_name, name, str(pane)]
    package_root = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        filter(None, [package_root, os.environ.get("PYTHONPATH")]))}
    quiet: dict[str, Any] = {"stdin": subprocess.DEVNULL, "stdout": subprocess.DEVNULL,
                             "stderr": subprocess.DEVNULL, "close_fds": True, "env": env}
    try:
        subprocess.run(["setsid", "-f", *argv], check=False, timeout=CALL_TIMEOUT, **quiet)
    except FileNotFoundError:  # no util-linux setsid (macOS): a new session at least
        subprocess.Popen(argv, start_new_session=True, **quiet)


def reap(worker: int, socket_name: str, name: str, pane: int) -> None:
    """Wait for the actor's worker process to exit, then stop its session if the pane is
    still the one that worker started (not a session started afresh under that name)."""
    try:
        fd = os.pidfd_open(worker)
    except (OSError, AttributeError):
        fd = None
        while _running(worker):
            time.sleep(1.0)
    if fd is not None:
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        poller.poll()
        os.close(fd)
    os.environ.pop("TMUX", None)
    tmux = TmuxSessions(socket_name)
    if tmux.pane_pid(name) == pane:
        tmux.stop(name)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RaySessions(SessionBackend):
    """Sessions as named detached actors in one Ray namespace (one per sphere)."""

    def __init__(self, address: str, namespace: str, socket_name: str,
                 resources: dict[str, float] | None = None,
                 launch_dir: Path | None = None, state_dir: Path | None = None) -> None:
        self.address = address
        self.state_dir = state_dir  # where each session's node is noted, for `ending`
        self.namespace = namespace
        self.socket_name = socket_name
        self.resources = dict(resources or {})
        self.launch_dir = launch_dir
        self._actor_class: Any = None
        self._machines: dict[str, str] = {}

    # -- plumbing ------------------------------------------------------------------

    def _connect(self) -> ModuleType:
        return connect(self.address, self.namespace)

    def _get(self, refs: Any, what: str, timeout: float = CALL_TIMEOUT) -> Any:
        """ray.get with a deadline; an error raised in the actor comes back as itself.
        A dead actor's RayActorError passes through for the caller to judge."""
        ray = self._connect()
        from ray.exceptions import GetTimeoutError, RayTaskError

        try:
            return ray.get(refs, timeout=timeout)
        except RayTaskError as exc:
            cause = getattr(exc, "cause", None)
            if isinstance(cause, SolError):
                raise SolError(cause.message) from None
            raise SolError(f"{what} failed on the Ray cluster at {self.address}: "
                           f"{first_line(cause or exc)}") from exc
        except GetTimeoutError as exc:
            raise SolError(f"{what}: no answer from the Ray cluster at {self.address} in "
                           f"{timeout:g}s; check it with `sol doctor`") from exc

    def _actor(self, name: str) -> Any | None:
        """The session's actor handle, None if there is none (never started, stopped,
        or dead: Ray frees a dead detached actor's name)."""
        ray = self._connect()
        try:
            return bounded(lambda: ray.get_actor(name, namespace=self.namespace),
                            f"looking up session {name}", self.address)
        except ValueError:
            return None
        except SolError:
            raise
        except Exception as exc:
            raise SolError(f"cannot look up session {name} on the Ray cluster at "
                           f"{self.address}: {first_line(exc)}") from exc

    def _ask(self, name: str, method: str, *args: Any) -> tuple[bool, Any]:
        """(True, result) of one actor method; (False, None) when the actor is missing
        or dead, so callers can treat "no actor" as "no session"."""
        from ray.exceptions import RayActorError

        handle = self._actor(name)
        if handle is None:
            return False, None
        try:
            return True, self._get(getattr(handle, method).remote(*args),
                                   f"session {name}")
        except RayActorError:
            return False, None

    def _options(self) -> dict[str, Any]:
        """Ray's actor options from the world's `resources` (CPU, GPU, memory, custom)."""
        custom = dict(self.resources)
        options: dict[str, Any] = {"num_cpus": custom.pop("CPU", custom.pop("num_cpus", 0))}
        gpus = custom.pop("GPU", custom.pop("num_gpus", None))
        if gpus is not None:
            options["num_gpus"] = gpus
        memory = custom.pop("memory", None)
        if memory is not None:
            options["memory"] = memory
        if custom:
            options["resources"] = custom
        return options

    def _remote_class(self) -> Any:
        if self._actor_class is None:
            self._actor_class = self._connect().remote(SessionActor)
        return self._actor_class

    # -- SessionBackend ------------------------------------------------------------

    def start(self, name: str, argv: list[str], *, cwd: Path, env: dict[str, str],
              log: Path, absent: bool = False, workspace: NodeWorkspace | None = None
              ) -> None:
        """Create the session's actor and start the command in tmux on its node. An
        actor of that name whose session is not alive (exited, or its node not
        answering) is killed first, as TmuxSessions replaces a dead session. With a
        `workspace`, the agent works in a clone on that node (node_workspace.py)."""
        _check_name(name)
        if not absent:
            handle = self._actor(name)
            if handle is not None:
                if self._alive_all({name: handle}).get(name):
                    raise SolError(
                        f"session {name} is already running; stop it before starting it again")
                self._end(name, handle)
        deadline = time.monotonic() + START_TIMEOUT
        for attempt in range(START_ATTEMPTS):
            try:
                self._create(name, argv, cwd, env, log, deadline - time.monotonic(),
                             workspace)
                self._note_node(name)
                return
            except _NodeLost as exc:
                if attempt == START_ATTEMPTS - 1 or time.monotonic() > deadline:
                    raise SolError(
                        f"session {name} could not start on the Ray cluster at "
                        f"{self.address}: its node was lost {START_ATTEMPTS} times "
                        f"({first_line(exc.__cause__ or exc)}); check it with `sol doctor`"
                    ) from exc

    def _create(self, name: str, argv: list[str], cwd: Path, env: dict[str, str],
                log: Path, timeout: float, workspace: NodeWorkspace | None = None) -> None:
        """One actor and its start call; _NodeLost when Ray placed it on a node that was
        dying (a node lost seconds ago is still taken for alive until its heartbeats
        are missed), so start can place it again."""
        self._connect()
        from ray.exceptions import GetTimeoutError, RayActorError

        options = self._options()
        actor = self._remote_class().options(
            name=name, namespace=self.namespace, lifetime="detached", max_restarts=0,
            **options)
        launch_dir = str(self.launch_dir) if self.launch_dir else None
        try:
            handle = bounded(lambda: actor.remote(self.socket_name, launch_dir),
                              f"creating session {name}", self.address)
        except ValueError as exc:
            raise SolError(f"session {name} is already running on the Ray cluster at "
                           f"{self.address}; stop it before starting it again") from exc
        try:
            self._get(handle.start.remote(name, list(argv), str(cwd), dict(env), str(log),
                                          workspace),
                      f"starting session {name}", timeout=max(timeout, 1.0))
        except BaseException as exc:
            self._kill(handle, name)
            if isinstance(exc.__cause__, GetTimeoutError):
                raise SolError(
                    f"session {name} was not placed on the Ray cluster at {self.address} "
                    f"in {START_TIMEOUT:g}s: does a node have the resources {options} "
                    "free? (`sol doctor` lists them)") from exc
            if isinstance(exc, RayActorError) and not exc.actor_init_failed:
                raise _NodeLost() from exc
            if isinstance(exc, RayActorError):
                raise SolError(
                    f"session {name} could not start on the Ray cluster at {self.address}: "
                    f"{first_line(exc)}; every node needs sol installed "
                    "(pip install 'sol[ray]')") from exc
            raise

    def _alive_all(self, handles: dict[str, Any]) -> dict[str, bool]:
        """Ask every actor at once; one that errs or has not answered by the deadline
        (its node lost) is not alive."""
        ray = self._connect()
        refs = {handle.alive.remote(name): name for name, handle in handles.items()}
        alive = dict.fromkeys(handles, False)
        if not refs:
            return alive
        ready, _ = ray.wait(list(refs), num_returns=len(refs), timeout=LIST_TIMEOUT)
        for ref in ready:
            try:
                alive[refs[ref]] = bool(ray.get(ref, timeout=0))
            except Exception:  # a dead actor, a tmux error there: not alive
                alive[refs[ref]] = False
        return alive

    def _end(self, name: str, handle: Any) -> None:
        """Stop the session through its actor (if it answers), then kill the actor."""
        ray = self._connect()
        ready, _ = ray.wait([handle.stop.remote(name)], timeout=CALL_TIMEOUT)
        for ref in ready:
            try:
                ray.get(ref, timeout=0)
            except Exception:  # an actor already dead has nothing left to stop
                pass
        self._kill(handle, name)

    def _kill(self, handle: Any, name: str) -> None:
        ray = self._connect()
        bounded(lambda: ray.kill(handle, no_restart=True), f"ending session {name}",
                 self.address)

    def stop(self, name: str) -> None:
        _check_name(name)
        handle = self._actor(name)
        if handle is not None:
            self._end(name, handle)

    def is_alive(self, name: str) -> bool:
        _check_name(name)
        handle = self._actor(name)
        return handle is not None and self._alive_all({name: handle})[name]

    def exists(self, name: str) -> bool:
        _check_name(name)
        return bool(self._ask(name, "exists", name)[1])

    def list(self, prefix: str = "sol-") -> dict[str, bool]:
        ray = self._connect()
        try:
            named = bounded(lambda: ray.util.list_named_actors(all_namespaces=True),
                             "listing sessions", self.address)
        except SolError:
            raise
        except Exception as exc:
            raise SolError(f"cannot list sessions on the Ray cluster at {self.address}: "
                           f"{first_line(exc)}") from exc
        names = [entry["name"] for entry in named
                 if entry.get("namespace") == self.namespace
                 and entry["name"].startswith(prefix)]
        handles = {}
        for name in names:
            handle = self._actor(name)
            if handle is not None:
                handles[name] = handle
        return self._alive_all(handles)

    def recent_output(self, name: str, lines: int = 50) -> str:
        _check_name(name)
        found, text = self._ask(name, "recent_output", name, lines)
        if not found:
            raise SolError(f"session {name} does not exist; its log may still be on disk")
        return text

    def ending(self, name: str) -> Ending | None:
        """As tmux recorded it; for a session whose actor is gone because its node was
        lost, `Ending(lost=NODE)`: a lost machine is its own cause, not the agent's."""
        _check_name(name)
        found, ending = self._ask(name, "ending", name)
        if found:
            return ending
        noted = self._noted_node(name)
        if noted is None:
            return None
        try:
            alive = {n["node_id"] for n in nodes(self.address)}
        except SolError:
            return None
        return None if noted["node_id"] in alive else Ending(lost=noted["hostname"])

    def _note_node(self, name: str) -> None:
        """Keep the node a session was placed on: once its actor is gone, only this
        tells a lost node from an agent that exited."""
        if self.state_dir is None:
            return
        where = self.where(name)
        if not where:
            return
        self.state_dir.mkdir(parents=True, exist_ok=True)
        record = self.state_dir / f"{name}.json"
        temp = record.with_name(f".{record.name}.tmp")
        temp.write_text(json.dumps({"node_id": where["node_id"],
                                    "hostname": where.get("hostname") or where["node_ip"]}))
        temp.replace(record)

    def _noted_node(self, name: str) -> dict[str, str] | None:
        if self.state_dir is None:
            return None
        try:
            data = json.loads((self.state_dir / f"{name}.json").read_text())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) and data.get("node_id") else None

    def collect(self, name: str, tokens: dict[str, str]) -> dict[str, Any] | None:
        """What the agent left in its node outpost (node_workspace.collect), past
        `tokens`; None when its actor is gone."""
        _check_name(name)
        found, result = self._ask(name, "collect", name, tokens)
        return result if found else None

    def deliver(self, name: str, files: dict[str, str], local_outpost: str) -> bool:
        """Files for the session's node outpost (node_workspace.put_files); False when
        its actor is gone or keeps no node outpost."""
        _check_name(name)
        found, done = self._ask(name, "deliver", name, files, local_outpost)
        return bool(found and done)

    def send_text(self, name: str, text: str) -> None:
        _check_name(name)
        found, _ = self._ask(name, "send_text", name, text)
        if not found:
            raise SolError(f"session {name} does not exist; cannot send it text")

    def where(self, name: str) -> dict[str, Any] | None:
        """The node of the session's actor (node_id, node_ip, hostname, raylet_pid),
        None if there is no such session."""
        _check_name(name)
        return self._ask(name, "where")[1]

    def pane_pid(self, name: str) -> int | None:
        """The pid on the actor's node; None when that node is not this machine (pids
        of another machine mean nothing to the local death watch)."""
        handle = self._actor(name)
        if handle is None:
            return None
        key = handle._actor_id.hex()
        if key not in self._machines:
            node = self.where(name)
            if node is None:
                return None
            self._machines[key] = node["machine"]
        if self._machines[key] != machine():
            return None
        return self._ask(name, "pane_pid", name)[1]

    def attach_argv(self, name: str) -> list[str]:
        """tmux attach on the actor's node: directly here, over `ssh -t` elsewhere."""
        node = self.where(name)
        if node is None:
            raise SolError(f"session {name} does not exist; nothing to attach to")
        tmux = ["env", "-u", "TMUX", "-u", "TMUX_PANE", "tmux", "-L", self.socket_name,
                "attach-session", "-t", f"={name}"]
        if node.get("machine") == machine():
            return tmux
        return ["ssh", "-t", str(node["node_ip"]), shlex.join(tmux)]

    def kill_server(self) -> None:
        """Stop every session of the namespace and kill its actors."""
        for name in self.list(prefix=""):
            handle = self._actor(name)
            if handle is not None:
                self._end(name, handle)


if __name__ == "__main__" and len(sys.argv) == 6 and sys.argv[1] == "reap":
    reap(int(sys.argv[2]), sys.argv[3], sys.argv[4], int(sys.argv[5]))
