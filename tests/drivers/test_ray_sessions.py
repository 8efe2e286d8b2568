"""RaySessions on a real local Ray cluster (a head and one extra node, `ray start` each).

Few tests on purpose: the cluster is the cost (~10 s to start), so the module shares one
and each test walks a whole story. Node loss comes last: it takes the extra node down.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")

from conftest import ROOT, poll  # noqa: E402
from ray_cluster import EXTRA_RESOURCE, RayCluster, free_port  # noqa: E402

from reconciler.core.errors import SolError  # noqa: E402
from reconciler.drivers import ray_connect  # noqa: E402
from reconciler.drivers.ray_sessions import RaySessions, nodes  # noqa: E402
from reconciler.drivers.sessions import Ending, SessionBackend  # noqa: E402

pytestmark = [pytest.mark.ray, pytest.mark.xdist_group("ray")]  # one cluster at a time

SOCKET = "soltest-ray"
SECRET = "s3cr3t-" + uuid.uuid4().hex[:8]


@pytest.fixture(scope="module")
def cluster() -> Iterator[RayCluster]:
    began = time.monotonic()
    with RayCluster.start() as running:
        print(f"\nray cluster up in {time.monotonic() - began:.1f}s {running.timings}")
        try:
            yield running
        finally:
            ray.shutdown()


@pytest.fixture
def sessions(cluster: RayCluster, tmp_path: Path) -> Iterator[RaySessions]:
    backend = RaySessions(cluster.address, f"soltest-{uuid.uuid4().hex[:8]}", SOCKET,
                          launch_dir=tmp_path / "launch")
    yield backend
    backend.kill_server()


def _cmdlines() -> str:
    """Every process's command line on this machine, for the no-secret-on-argv check."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                found.append(Path(f"/proc/{entry}/cmdline").read_bytes().decode(
                    errors="replace"))
            except OSError:
                continue
    return "\n".join(found)


def _output_has(backend: RaySessions, name: str, text: str) -> bool:
    return text in backend.recent_output(name)


def test_a_session_runs_in_an_actor_like_a_tmux_session(
        sessions: RaySessions, cluster: RayCluster, tmp_path: Path) -> None:
    backend: SessionBackend = sessions
    assert backend.list() == {}
    name, log = "sol-w-ray1", tmp_path / "logs" / "ray1.log"
    began = time.monotonic()
    sessions.start(name, ["sh", "-c", 'echo "ready $SOL_SECRET"; cat'], cwd=tmp_path,
                   env={"SOL_SECRET": SECRET}, log=log)
    print(f"\nstart {time.monotonic() - began:.2f}s")
    assert sessions.list("sol-w-") == {name: True}
    assert sessions.is_alive(name) and sessions.exists(name)
    poll(lambda: _output_has(sessions, name, f"ready {SECRET}"), 15, what="ready")
    assert SECRET not in _cmdlines()  # reached the agent through the object store
    assert not list((tmp_path / "launch").iterdir())  # the launch file removed itself

    sessions.send_text(name, "hello")
    poll(lambda: sessions.recent_output(name).count("hello") == 2, 15, what="echo")
    poll(lambda: "hello" in log.read_text(), 15, what="log")

    node = sessions.where(name)
    assert node is not None
    alive = {n["node_id"] for n in nodes(cluster.address)}
    assert node["node_id"] in alive and len(alive) == 2
    assert node["raylet_pid"] in (cluster.head_raylet, cluster.extra_raylet)
    pid = sessions.pane_pid(name)  # both nodes are this machine
    assert pid is not None and Path(f"/proc/{pid}").exists()
    assert sessions.attach_argv(name)[-4:] == ["-L", SOCKET, "attach-session", "-t",
                                               f"={name}"][-4:]
    assert sessions.ending(name) is None

    began = time.monotonic()
    sessions.stop(name)
    print(f"stop {time.monotonic() - began:.2f}s")
    assert name not in sessions.list("sol-")
    assert not sessions.is_alive(name) and not sessions.exists(name)
    poll(lambda: not Path(f"/proc/{pid}").exists(), 10, what="the agent process to end")
    sessions.stop(name)  # idempotent
    assert sessions.ending(name) is None and sessions.pane_pid(name) is None
    with pytest.raises(SolError, match="does not exist"):
        sessions.recent_output(name)
    with pytest.raises(SolError, match="does not exist"):
        sessions.send_text(name, "x")

    # An exited session stays for inspection, and a new start replaces it.
    sessions.start(name, ["sh", "-c", "echo bye; exit 3"], cwd=tmp_path, env={}, log=log)
    poll(lambda: sessions.ending(name) == Ending(status=3), 15, what="exit status")
    assert sessions.list("sol-") == {name: False}
    assert sessions.exists(name) and not sessions.is_alive(name)
    assert "bye" in sessions.recent_output(name)
    sessions.start(name, ["sh", "-c", "echo again; cat"], cwd=tmp_path, env={}, log=log)
    assert sessions.is_alive(name)
    with pytest.raises(SolError, match="already running"):
        sessions.start(name, ["cat"], cwd=tmp_path, env={}, log=log)


def test_sessions_outlive_their_driver_and_their_node(
        sessions: RaySessions, cluster: RayCluster, tmp_path: Path) -> None:
    # A driver that starts a session and exits, as a daemon that crashes. It reaches
    # the cluster through Ray Client (ray://), as a daemon on a machine outside it does.
    name = "sol-w-kept"
    script = (
        "import sys\nfrom pathlib import Path\n"
        "from reconciler.drivers.ray_sessions import RaySessions\n"
        "s = RaySessions(sys.argv[1], sys.argv[2], sys.argv[3], "
        "launch_dir=Path(sys.argv[5]) / 'launch')\n"
        "s.start(sys.argv[4], ['sh', '-c', 'echo up; cat'], cwd=Path(sys.argv[5]), env={}, "
        "log=Path(sys.argv[5]) / 'kept.log')\n"
        "print('listed', s.list('sol-w-kept'), 'on', s.where(sys.argv[4])['hostname'])\n")
    began = time.monotonic()
    done = subprocess.run([sys.executable, "-c", script, cluster.client_address,
                           sessions.namespace, SOCKET, name, str(tmp_path)],
                          timeout=90, cwd=ROOT, capture_output=True, text=True,
                          env={k: v for k, v in os.environ.items() if not k.startswith("RAY_")})
    assert done.returncode == 0 and f"listed {{'{name}': True}} on " in done.stdout, \
        done.stdout + done.stderr[-3000:]
    print(f"\ndriver (Ray Client) that started a session and exited: "
          f"{time.monotonic() - began:.1f}s")
    found = RaySessions(cluster.address, sessions.namespace, SOCKET,
                        launch_dir=tmp_path / "launch")
    assert found.is_alive(name)
    poll(lambda: _output_has(found, name, "up"), 15, what="output of the kept session")
    found.stop(name)

    # The node of a session is lost: the actor is dead, its name free, its agent ended.
    name = "sol-w-lost"
    spare = RaySessions(cluster.address, sessions.namespace, SOCKET,
                        resources={EXTRA_RESOURCE: 0.01}, launch_dir=tmp_path / "launch")
    spare.start(name, ["sh", "-c", "echo there; cat"], cwd=tmp_path, env={},
                log=tmp_path / "lost.log")
    node = spare.where(name)
    assert node is not None and node["raylet_pid"] == cluster.extra_raylet
    pid = spare.pane_pid(name)
    assert pid is not None
    began = time.monotonic()
    cluster.kill_node(cluster.extra_raylet)
    poll(lambda: not sessions.is_alive(name), 40, interval=0.5, what="the lost node's session")
    print(f"node loss seen in {time.monotonic() - began:.1f}s")
    assert not sessions.list("sol-").get(name)
    # The reaper ends the orphaned agent: its tmux server outlived the node's raylet.
    poll(lambda: not Path(f"/proc/{pid}").exists(), 15, what="the orphaned agent to end")
    print(f"orphan reaped after {time.monotonic() - began:.1f}s")

    began = time.monotonic()
    sessions.start(name, ["sh", "-c", "echo here; cat"], cwd=tmp_path, env={},
                   log=tmp_path / "lost.log")
    print(f"started again in {time.monotonic() - began:.1f}s")
    node = sessions.where(name)
    assert node is not None and node["raylet_pid"] == cluster.head_raylet
    assert sessions.is_alive(name)
    poll(lambda: _output_has(sessions, name, "here"), 15, what="output on the head node")


def test_no_ray_and_no_cluster_are_sol_errors_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    began = time.monotonic()
    with pytest.raises(SolError, match="cannot reach the Ray cluster at 127.0.0.1"):
        ray_connect._reachable(f"127.0.0.1:{free_port()}")
    with pytest.raises(SolError, match="cannot reach|already connected to the Ray cluster"):
        nodes(f"127.0.0.1:{free_port()}")  # "already": this process drives a test cluster
    assert time.monotonic() - began < 5
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(SolError, match=r"pip install 'sol\[ray\]'"):
        RaySessions("auto", "n", SOCKET).list()
