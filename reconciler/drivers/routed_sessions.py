"""Each session to its world's backend: `sphere.sessions` is this router, so every
reconciler and command keeps calling one SessionBackend while a world whose
`spec.sessions.backend` is `ray` runs its agents on a Ray cluster (drivers/ray_sessions.py)
and the others on this machine's tmux.

A session's world is read from its name (`sol-<world>-<agent>`, core/home.session_name),
matched against the worlds the store knows (the longest name first: `a-b` before `a`).
The worlds' session specs are re-read at most every REFRESH seconds and whenever a name
names a world not seen yet.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from reconciler.core.errors import SolError
from reconciler.core.model import SessionsSpec
from reconciler.drivers.envoy_names import is_envoy
from reconciler.drivers.node_workspace import NodeWorkspace
from reconciler.drivers.sessions import Ending, SessionBackend

REFRESH = 5.0


class RoutedSessions:
    """A SessionBackend that hands each call to the backend of the session's world."""

    def __init__(self, local: SessionBackend, worlds: Callable[[], dict[str, SessionsSpec]],
                 remote: Callable[[SessionsSpec], SessionBackend]) -> None:
        self.local, self._worlds, self._remote = local, worlds, remote
        self._specs: dict[str, SessionsSpec] = {}
        self._read = float("-inf")
        self._backends: dict[SessionsSpec, SessionBackend] = {}
        self._last: dict[tuple[int, str], dict[str, bool]] = {}

    # ---- routing ---------------------------------------------------------------------

    def _refresh(self, force: bool = False) -> dict[str, SessionsSpec]:
        if force or time.monotonic() - self._read > REFRESH:
            self._specs, self._read = self._worlds(), time.monotonic()
        return self._specs

    def spec_of(self, name: str) -> SessionsSpec | None:
        """The session spec of the world session `name` belongs to (None: not a world's);
        a name no known world matches reads the worlds again (one applied since)."""
        found = _match(self._refresh(), name)
        if found is None and time.monotonic() - self._read > 0.5:
            found = _match(self._refresh(force=True), name)
        return found

    def backend(self, name: str) -> SessionBackend:
        """The world's backend; envoys (planners a person talks to, working in the
        daemon's clone) always run on this machine's tmux."""
        spec = self.spec_of(name)
        if spec is None or spec.backend == "tmux" or _is_envoy_session(name):
            return self.local
        return self._for(spec)

    def _for(self, spec: SessionsSpec) -> SessionBackend:
        if spec not in self._backends:
            self._backends[spec] = self._remote(spec)
        return self._backends[spec]

    def _remotes(self) -> list[SessionBackend]:
        """The backend of every world that does not run on local tmux."""
        return [self._for(s) for s in dict.fromkeys(self._refresh().values())
                if s.backend != "tmux"]

    # ---- SessionBackend ----------------------------------------------------------------

    def start(self, name: str, argv: list[str], *, cwd: Path, env: dict[str, str],
              log: Path, absent: bool = False) -> None:
        self.backend(name).start(name, argv, cwd=cwd, env=env, log=log, absent=absent)

    def start_on_node(self, name: str, argv: list[str], *, cwd: Path, env: dict[str, str],
                      log: Path, workspace: NodeWorkspace, absent: bool = False) -> None:
        """Start a session whose agent works in a clone on its node (workspace: node)."""
        backend = self.backend(name)
        if backend is self.local:
            raise SolError(f"session {name}: workspace node needs a backend with nodes "
                           "(spec.sessions.backend: ray)")
        backend.start(name, argv, cwd=cwd, env=env, log=log, absent=absent,  # type: ignore[call-arg]
                      workspace=workspace)

    def collect(self, name: str, tokens: dict[str, str]) -> dict[str, Any] | None:
        """What a node-workspace agent left on its node (None: no such agent there)."""
        backend = self.backend(name)
        found = getattr(backend, "collect", None)
        return found(name, tokens) if backend is not self.local and found else None

    def deliver(self, name: str, files: dict[str, str], local_outpost: Path) -> bool:
        """Files for a node-workspace agent's outpost on its node (a changed tether);
        False for an agent whose outpost is the daemon's own (nothing to carry)."""
        backend = self.backend(name)
        found = getattr(backend, "deliver", None)
        return bool(backend is not self.local and found
                    and found(name, files, str(local_outpost)))

    def stop(self, name: str) -> None:
        self.backend(name).stop(name)

    def is_alive(self, name: str) -> bool:
        return self.backend(name).is_alive(name)

    def exists(self, name: str) -> bool:
        return self.backend(name).exists(name)

    def list(self, prefix: str = "sol-") -> dict[str, bool]:
        """Every backend's sessions. A cluster that does not answer keeps its last
        listing: its agents are not taken for dead (and respawned twice) while it is
        unreachable; their world's casts fail with its error meanwhile."""
        found = dict(self.local.list(prefix))
        for backend in self._remotes():
            try:
                listing = backend.list(prefix)
                self._last[(id(backend), prefix)] = listing
            except SolError:
                listing = self._last.get((id(backend), prefix), {})
            found.update(listing)
        return found

    def recent_output(self, name: str, lines: int = 50) -> str:
        return self.backend(name).recent_output(name, lines)

    def ending(self, name: str) -> Ending | None:
        return self.backend(name).ending(name)

    def send_text(self, name: str, text: str) -> None:
        self.backend(name).send_text(name, text)

    def pane_pid(self, name: str) -> int | None:
        return self.backend(name).pane_pid(name)

    def attach_argv(self, name: str) -> list[str]:
        return self.backend(name).attach_argv(name)

    def node(self, name: str) -> str:
        """The machine a session runs on when that is not this one ("" for tmux here):
        recorded on the writ at each cast, so `sol status` names it without asking."""
        backend = self.backend(name)
        where = getattr(backend, "where", None)
        found = where(name) if backend is not self.local and where is not None else None
        return str(found.get("hostname") or found.get("node_ip") or "") if found else ""

    def kill_server(self) -> None:
        self.local.kill_server()
        for backend in self._backends.values():
            backend.kill_server()


def _match(specs: dict[str, SessionsSpec], name: str) -> SessionsSpec | None:
    for world in sorted(specs, key=len, reverse=True):
        if name.startswith(f"sol-{world}-"):
            return specs[world]
    return None


def _is_envoy_session(name: str) -> bool:
    return is_envoy(name.rpartition("-")[2])
