"""Reaching a Ray cluster from sol: one connection per process, every call bounded.

Why bounded: a Ray driver blocks (and, by default, exits its whole process after 60 s)
while the cluster's head is unreachable; sol's daemon must do neither. `ray` is imported
only here and only when a Ray world is driven: it is an optional extra.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from reconciler.core.errors import SolError

if TYPE_CHECKING:
    from types import ModuleType

_T = TypeVar("_T")

CALL_TIMEOUT = 15.0
"""Seconds a call to the cluster (or to an actor, save a session's start) may take."""

CONNECT_TIMEOUT = 5.0
"""Seconds to open a TCP connection to the cluster's address before ray.init."""

KEEP_DRIVER = ("RAY_gcs_rpc_server_reconnect_timeout_s", str(10**9))
"""A Ray driver whose cluster head is unreachable for 60 s exits its whole process:
that would take the sol daemon down with a cluster. So sol's driver waits for ever, and
bounds each call itself (bounded)."""

_CONNECT_LOCK = threading.Lock()
_stuck: list[threading.Thread] = []
"""Calls to the cluster that have not returned: while one hangs, others fail at once
instead of piling up threads."""
_connected: str | None = None
"""The address this process's Ray driver is connected to (Ray allows one per process)."""


def _ray() -> ModuleType:
    try:
        import ray
    except ImportError as exc:
        raise SolError("this world's sessions run on Ray: pip install 'sol[ray]'") from exc
    return ray


def connect(address: str, namespace: str | None = None) -> ModuleType:
    """The `ray` module, connected to `address` (once per process)."""
    global _connected
    ray = _ray()
    with _CONNECT_LOCK:
        if _connected is not None and ray.is_initialized():
            if _connected != address:
                raise SolError(
                    f"this process is already connected to the Ray cluster at {_connected}; "
                    f"it cannot also drive the one at {address} (one cluster per sol process)"
                )
            return ray
        if ray.is_initialized():  # someone else connected (a test, an embedding tool)
            _connected = address
            return ray
        _reachable(address)
        os.environ.setdefault(*KEEP_DRIVER)
        for attempt in range(CLIENT_ATTEMPTS if address.startswith("ray://") else 1):
            try:
                ray.init(address=address, namespace=namespace, log_to_driver=False,
                         logging_level="ERROR", configure_logging=False)
                break
            except ConnectionAbortedError as exc:  # the client server's own start failed
                if attempt == CLIENT_ATTEMPTS - 1:
                    raise _unreachable(address, exc) from exc
                time.sleep(1.0)
            except Exception as exc:  # ConnectionError, ValueError, RuntimeError: "cannot"
                raise _unreachable(address, exc) from exc
        _connected = address
    return ray


CLIENT_ATTEMPTS = 3
"""Tries of a Ray Client connection: the head's client server starts a server process
per connection, and one that dies at its start (seen under load) fails only that try."""


def _unreachable(address: str, exc: BaseException) -> SolError:
    return SolError(f"cannot reach the Ray cluster at {address}: {first_line(exc)}; check "
                    "that it runs (`ray status` on its head) and that `address` in the "
                    "world's spec sessions names it")


def _reachable(address: str) -> None:
    """Fail fast on a host:port (or ray://host:port) nobody listens on: ray.init would
    retry it for minutes, hanging the daemon or `sol doctor`."""
    hostport = address.removeprefix("ray://")
    host, _, port = hostport.rpartition(":")
    if address == "auto" or not host or not port.isdigit():
        return
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT):
            pass
    except OSError as exc:
        raise SolError(
            f"cannot reach the Ray cluster at {address}: {exc.strerror or exc}; check that "
            "it runs (`ray status` on its head) and that `address` in the world's spec "
            "sessions names it"
        ) from exc


def bounded(call: Callable[[], _T], what: str, address: str,
             timeout: float = CALL_TIMEOUT) -> _T:
    """call() with a deadline, for Ray calls that take none (they go to the cluster's
    head and block while it is unreachable). It runs in a daemon thread; one that does
    not return is left behind and makes the next calls fail at once until it does."""
    _stuck[:] = [thread for thread in _stuck if thread.is_alive()]
    if _stuck:
        raise SolError(f"{what}: the Ray cluster at {address} has not answered an earlier "
                       "call yet; check it with `sol doctor`")
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["value"] = call()
        except BaseException as exc:  # handed to the caller's thread
            box["error"] = exc

    thread = threading.Thread(target=run, name="sol-ray-call", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        _stuck.append(thread)
        raise SolError(f"{what}: no answer from the Ray cluster at {address} in "
                       f"{timeout:g}s; check it with `sol doctor`")
    if "error" in box:
        raise box["error"]
    return box["value"]


def nodes(address: str) -> list[dict[str, Any]]:
    """The cluster's alive nodes with their resources (for `sol doctor`), or a SolError
    saying why the cluster cannot be reached."""
    ray = connect(address)
    try:
        found = bounded(ray.nodes, "listing the cluster's nodes", address)
    except SolError:
        raise
    except Exception as exc:
        raise SolError(f"cannot list the nodes of the Ray cluster at {address}: "
                       f"{first_line(exc)}") from exc
    return [{"node_id": node["NodeID"], "node_ip": node["NodeManagerAddress"],
             "hostname": node.get("NodeManagerHostname", ""),
             "resources": dict(node.get("Resources", {}))}
            for node in found if node.get("Alive")]


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def machine() -> str:
    """What makes a pid mean the same process: one kernel boot and one pid namespace."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        pidns = os.readlink("/proc/self/ns/pid")
    except OSError:
        return socket.gethostname()
    return f"{boot}/{pidns}"


PROBE_TIMEOUT = 20.0
"""Seconds `sol doctor` waits for every node's answer at once."""


def _probe_here(python: str, remote: str | None, shared: str | None) -> tuple[bool, str]:
    """On one node: can an agent start here (sol's Python) and reach its work (the
    world's remote with node workspaces, SOL_HOME's outposts with shared ones)?"""
    import subprocess

    if not Path(python).exists():
        return False, f"no {python} here: install sol at the same path as on the daemon's machine"
    if shared is not None:
        if not Path(shared).is_dir():
            return False, (f"does not see {shared}: put SOL_HOME on a disk every node "
                           "mounts at the same path, or set spec.sessions.workspace: node")
        return True, f"sees {shared}"
    try:
        done = subprocess.run(["git", "ls-remote", "--heads", str(remote)],
                              capture_output=True, text=True, timeout=10,
                              stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return False, f"git ls-remote {remote}: {exc}"
    if done.returncode != 0:
        said = (done.stderr.strip().splitlines() or ["failed"])[-1]
        return False, f"cannot reach the remote {remote}: {said}"
    return True, f"reaches {remote}"


def probe(address: str, python: str, *, remote: str | None = None,
          shared: str | None = None) -> list[tuple[str, bool, str]]:
    """Ask every alive node whether an agent could work there (_probe_here): (node, ok,
    detail), one row per node, each answer bounded."""
    ray = connect(address)
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    alive = nodes(address)
    task = ray.remote(num_cpus=0)(_probe_here)
    refs = {task.options(scheduling_strategy=NodeAffinitySchedulingStrategy(
        node["node_id"], soft=False)).remote(python, remote, shared): node for node in alive}
    ready, _ = ray.wait(list(refs), num_returns=len(refs), timeout=PROBE_TIMEOUT)
    rows = []
    for ref, node in refs.items():
        name = node["hostname"] or node["node_ip"]
        if ref not in ready:
            rows.append((name, False, f"no answer in {PROBE_TIMEOUT:g}s"))
            continue
        try:
            ok, detail = ray.get(ref, timeout=0)
        except Exception as exc:  # noqa: BLE001 - the node's failure, as a row
            ok, detail = False, first_line(exc)
        rows.append((name, ok, detail))
    return rows
