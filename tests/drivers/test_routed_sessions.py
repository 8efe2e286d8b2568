"""The router behind `sphere.sessions`: each session goes to its world's backend. Two
real tmux servers stand for the two backends (a Ray world's backend is tested against a
real Ray cluster in test_ray_sessions.py), so what is checked here is the routing."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import poll

from reconciler.core.errors import SolError
from reconciler.core.home import Home, session_name
from reconciler.core.model import Manifest, SessionsSpec
from reconciler.drivers.routed_sessions import RoutedSessions
from reconciler.drivers.sessions import TmuxSessions
from reconciler.drivers.sphere import Sphere


class Unreachable(TmuxSessions):
    """A backend whose cluster stopped answering: every listing fails."""

    broken = False

    def list(self, prefix: str = "sol-") -> dict[str, bool]:
        if self.broken:
            raise SolError("cannot reach the Ray cluster at 127.0.0.1:1")
        return super().list(prefix)


@pytest.fixture
def routed(sol_home: Home, tmp_path: Path):  # noqa: ANN201 - (sphere, router, local, far)
    sphere = Sphere(sol_home)
    for name, sessions in (("near", None), ("far", {"backend": "ray", "address": "x:1"}),
                           ("far-east", None)):
        spec = {"source": str(tmp_path), **({"sessions": sessions} if sessions else {})}
        sphere.store.record_spec(Manifest("World", name, "", spec), initial_phase="Ready")
    local = TmuxSessions(sol_home.socket_name, launch_dir=sol_home.run / "launch")
    far = Unreachable(f"{sol_home.socket_name}-far", launch_dir=sol_home.run / "launch-far")
    made: list[SessionsSpec] = []

    def remote(spec: SessionsSpec) -> TmuxSessions:
        made.append(spec)
        return far

    router = RoutedSessions(local, sphere._session_specs, remote)
    try:
        yield router, local, far, made
    finally:
        for backend in (local, far):
            backend.kill_server()
        sphere.close()


def test_each_session_runs_on_its_worlds_backend(routed, tmp_path: Path) -> None:
    router, local, far, made = routed
    names = {w: session_name(w, "vega") for w in ("near", "far", "far-east")}
    envoy = session_name("far", "envoy_planner")
    for name in [*names.values(), envoy]:
        router.start(name, ["sh", "-c", "echo up; exec sleep 30"], cwd=tmp_path, env={},
                     log=tmp_path / f"{name}.log")
    # a-b is not a's; an envoy, a planner a person talks to, stays on this machine
    assert set(local.list()) == {names["near"], names["far-east"], envoy}
    router.stop(envoy)
    assert set(far.list()) == {names["far"]}
    assert made == [SessionsSpec("ray", "x:1")]
    assert router.list() == {name: True for name in names.values()}
    poll(lambda: "up" in router.recent_output(names["far"]), timeout=10,
         what="the far session's output through the router")
    router.stop(names["far"])
    assert not router.is_alive(names["far"]) and router.is_alive(names["near"])


def test_an_unreachable_cluster_keeps_its_last_listing(routed, tmp_path: Path) -> None:
    """Its agents are not taken for dead while it does not answer, so nothing is
    respawned twice; the local backend's sessions are listed as usual."""
    router, _, far, _ = routed
    near, remote = session_name("near", "vega"), session_name("far", "rigel")
    for name in (near, remote):
        router.start(name, ["sleep", "30"], cwd=tmp_path, env={}, log=tmp_path / f"{name}.log")
    assert router.list() == {near: True, remote: True}
    far.broken = True
    assert router.list() == {near: True, remote: True}
    router.stop(near)
    assert router.list() == {remote: True}
