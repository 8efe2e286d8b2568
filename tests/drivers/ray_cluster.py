"""A real local Ray cluster for tests: a head and one extra node, each a `ray start`
with its own temp dir, on this machine.

Never `ray stop`: it stops every Ray process of the user (another test's cluster, a
user's own). Each node is started with a private marker in its environment, which every
process it spawns inherits (gcs, raylet, workers, and the tmux servers and reapers that
actors start); teardown kills exactly the processes that carry the marker. Each node runs
in a process group of its own, so `kill_node` can take one node down at once, the way a
lost machine goes.

Used by tests/drivers/test_ray_sessions.py and by end-to-end tests of Ray worlds:

    with RayCluster.start() as cluster:
        cluster.address, cluster.head_raylet, cluster.extra_raylet
        cluster.kill_node(cluster.extra_raylet)
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

RAY = Path(sys.executable).parent / "ray"
START_TIMEOUT = 90.0
"""A `ray start` that has not returned by then is killed: a worker node whose head is
unreachable would retry for ever."""

HEALTH_CHECK = {"health_check_period_ms": 1000, "health_check_timeout_ms": 1000,
                "health_check_failure_threshold": 3}
"""The head declares a silent node dead after ~3 s, not Ray's ~15 s: node-loss tests
stay short, with slack for a loaded CI machine that delays a heartbeat."""

EXTRA_RESOURCE = "spare"
"""A custom resource only the extra node has: `resources={"spare": 0.01}` places an
actor there."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _environ(pid: int) -> dict[str, str]:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return {}
    pairs = (item.split(b"=", 1) for item in raw.split(b"\0") if b"=" in item)
    return {k.decode(errors="replace"): v.decode(errors="replace") for k, v in pairs}


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _pids() -> list[int]:
    return [int(entry) for entry in os.listdir("/proc") if entry.isdigit()]


@dataclass
class RayCluster:
    """A head node and one extra node (with the `spare` resource) on loopback."""

    address: str
    root: Path
    marker: str
    tmux_dir: Path
    client_port: int = 0
    """The head's Ray Client server (`ray://`), for a driver outside the cluster."""
    head_raylet: int = 0
    extra_raylet: int = 0
    timings: dict[str, float] = field(default_factory=dict)
    sessions: dict[str, int] = field(default_factory=dict)
    """Each node's process session (its `ray start` ran as a session leader)."""

    @classmethod
    def start(cls, num_cpus: int = 2) -> RayCluster:
        """Head, then the extra node; raises (after cleaning up) if either fails."""
        root = Path(tempfile.mkdtemp(prefix="solray-", dir="/tmp"))
        port = free_port()
        cluster = cls(address=f"127.0.0.1:{port}", root=root, marker=uuid.uuid4().hex,
                      tmux_dir=root / "tmux", client_port=free_port())
        cluster.tmux_dir.mkdir()
        try:
            # Both at once: the extra node waits for the head's GCS by itself, and the
            # two start-ups (each mostly Python imports) overlap.
            began = time.monotonic()
            head = cluster._ray_start(
                "head", "--head", "--port", str(port), "--num-cpus", str(num_cpus),
                "--ray-client-server-port", str(cluster.client_port),
                "--disable-usage-stats", "--include-dashboard=false",
                "--system-config", json.dumps(HEALTH_CHECK))
            extra = cluster._ray_start(
                "extra", "--address", cluster.address, "--num-cpus", str(num_cpus),
                "--resources", json.dumps({EXTRA_RESOURCE: 1}))
            cluster._wait("head", head)
            cluster.timings["head"] = time.monotonic() - began
            cluster._wait("extra", extra)
            cluster.timings["extra"] = time.monotonic() - began
            cluster.head_raylet = cluster._raylet("head")
            cluster.extra_raylet = cluster._raylet("extra")
        except BaseException:
            cluster.stop()
            raise
        return cluster

    def add_node(self, node: str, resources: dict[str, float], num_cpus: int = 1) -> int:
        """One more node (a machine joining); its raylet's pid."""
        self._wait(node, self._ray_start(node, "--address", self.address, "--num-cpus",
                                         str(num_cpus), "--resources", json.dumps(resources)))
        return self._raylet(node)

    def env(self, node: str) -> dict[str, str]:
        """A node's private environment: no RAY_* or TMUX of the caller, its own tmux
        directory, and the marker teardown finds its processes by."""
        env = {k: v for k, v in os.environ.items()
               if not k.startswith("RAY_") and k not in ("TMUX", "TMUX_PANE")}
        env.update(SOL_TEST_RAY_CLUSTER=self.marker, SOL_TEST_RAY_NODE=node,
                   TMUX_TMPDIR=str(self.tmux_dir), RAY_USAGE_STATS_ENABLED="0",
                   SOL_NODE_ROOT=str(self.node_root(node)))
        return env

    @property
    def client_address(self) -> str:
        return f"ray://127.0.0.1:{self.client_port}"

    def node_root(self, node: str) -> Path:
        """Where a node keeps agents' outposts in a node workspace: its own disk."""
        return self.root / f"{node}-disk"

    def _ray_start(self, node: str, *args: str) -> subprocess.Popen[str]:
        temp = self.root / node
        temp.mkdir()
        command = [str(RAY), "start", "--temp-dir", str(temp), *args]
        proc = subprocess.Popen(command, env=self.env(node), start_new_session=True,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.sessions[node] = proc.pid
        return proc

    def _wait(self, node: str, proc: subprocess.Popen[str]) -> None:
        try:
            out, _ = proc.communicate(timeout=START_TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            raise RuntimeError(f"ray start of the {node} node did not return in "
                               f"{START_TIMEOUT}s") from None
        if proc.returncode != 0:
            raise RuntimeError(f"ray start of the {node} node failed:\n{out}")

    def processes(self, node: str | None = None) -> list[int]:
        """Every live process of this cluster (of one node if named): by marker, or by
        the node's process session for those whose environment is gone from /proc (Ray's
        agents set a long process title over it)."""
        sessions = {sid for name, sid in self.sessions.items() if node in (None, name)}
        found = []
        for pid in _pids():
            env = _environ(pid)
            if (env.get("SOL_TEST_RAY_CLUSTER") == self.marker and (
                    node is None or env.get("SOL_TEST_RAY_NODE") == node)) or (
                    _stat(pid)[1] in sessions and pid != os.getpid()):
                found.append(pid)
        return found

    def _raylet(self, node: str) -> int:
        pids = [pid for pid in self.processes(node) if _comm(pid) == "raylet"]
        if len(pids) != 1:
            raise RuntimeError(f"expected one raylet on the {node} node, found {pids}")
        return pids[0]

    def kill_node(self, raylet_pid: int) -> None:
        """Lose a node at once: SIGKILL its raylet and the process group it runs in
        (the node's other daemons and its workers). What it double-forked (a tmux
        server) lives on, as on a machine whose raylet crashed."""
        group = os.getpgid(raylet_pid)
        os.kill(raylet_pid, signal.SIGKILL)
        if group != os.getpgid(0):
            os.killpg(group, signal.SIGKILL)

    def stop(self) -> None:
        """Kill every process of the cluster by pid (extra node first, so no worker is
        left retrying a dead head) and remove its directories. This process's own Ray
        driver, if it connected, is shut down first: its threads, left listening to a
        dead cluster, crash the process later (seen as a segfault in another test)."""
        if "ray" in sys.modules:
            sys.modules["ray"].shutdown()
        for node in (*[n for n in self.sessions if n != "head"], "head", None):
            deadline = time.monotonic() + 10
            while (pids := [pid for pid in self.processes(node)
                            if _stat(pid)[0] not in ("Z", "")]):
                for pid in pids:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                if time.monotonic() > deadline:
                    raise RuntimeError(f"Ray processes {pids} outlived SIGKILL")
                time.sleep(0.05)
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> RayCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _stat(pid: int) -> tuple[str, int]:
    """(one-letter state, session id) of a process; ('', 0) when it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return "", 0
    fields = stat.rpartition(")")[2].split()
    return fields[0], int(fields[3])
