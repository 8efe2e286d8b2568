"""What every reconciler and command is handed: the layout, the store, the sessions."""

from __future__ import annotations

import copy as _copy
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property

from reconciler.core.config import Config, load_config
from reconciler.core.errors import SolError
from reconciler.core.home import Home
from reconciler.core.model import SessionsSpec
from reconciler.core.store import Store


@dataclass
class Sphere:
    """Everything under one SOL_HOME, opened once per process."""

    home: Home
    store: Store = field(init=False)

    def __post_init__(self) -> None:
        self.store = Store.open(self.home)

    @classmethod
    def from_env(cls) -> Sphere:
        return cls(Home.from_env())

    @cached_property
    def config(self) -> Config:
        return load_config(self.home)

    @cached_property
    def sessions(self):  # noqa: ANN201 - SessionBackend, imported lazily (tmux is optional)
        """Every session, each through its world's backend (routed_sessions.py)."""
        from reconciler.drivers.routed_sessions import RoutedSessions
        from reconciler.drivers.sessions import TmuxSessions

        local = TmuxSessions(self.home.socket_name, hook_file=self.home.run / "tmux-events",
                             launch_dir=self.home.run / "launch")
        return RoutedSessions(local, self._session_specs, self._remote_sessions)

    def _session_specs(self) -> dict[str, SessionsSpec]:
        return {w.name: SessionsSpec.from_spec(w.spec.get("sessions"))
                for w in self.store.list("World")}

    def _remote_sessions(self, spec: SessionsSpec):  # noqa: ANN202 - SessionBackend
        """A world's sessions on a Ray cluster (the optional `ray` extra)."""
        from reconciler.drivers.ray_sessions import RaySessions

        return RaySessions(spec.address, namespace=f"sol-{self.home.socket_name}",
                           socket_name=self.home.socket_name, resources=dict(spec.resources),
                           launch_dir=self.home.run / "launch", state_dir=self.home.run / "ray")

    def reopen(self) -> None:
        """A fresh connection after a failed pass: SQLite opens a file it cannot write
        read-only and keeps it so, so a store that was read-only for a while would stay
        read-only in a long-lived reconciler after it is fixed."""
        try:
            fresh = Store.open(self.home)
        except SolError:
            return  # still broken: keep the old one, the next failure tries again
        self.store.close()
        self.store = fresh

    @contextmanager
    def scratch(self) -> Iterator[Sphere]:
        """This sphere over an in-memory copy of its store: `sol diff` records the
        manifests there and plans every reconciler on it, writing nothing."""
        copy = _copy.copy(self)
        copy.store = self.store.scratch()
        try:
            yield copy
        finally:
            copy.store.close()

    def close(self) -> None:
        self.store.close()
