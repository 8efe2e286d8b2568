"""The prefect daemon with real processes: `sol up`/`sol down`, kill -9 of the prefect
and of a reconciler, per-world children, `sol reconcile` in the foreground and --once.

Every test stops its daemon in a fixture finalizer, so no daemon outlives a test.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from conftest import poll
from helpers import tmux_sessions, world_yaml, writ_yaml, write_specs

from reconciler.cli.daemon import stop
from reconciler.controllers import degraded as degraded_reconciler
from reconciler.core import degraded
from reconciler.core.home import Home
from reconciler.core.store import Store
from reconciler.daemon.prefect import BACKOFF_MAX, next_backoff
from reconciler.daemon.procs import is_ours, read_pid
from reconciler.drivers.processes import pid_alive
from reconciler.drivers.sphere import Sphere
from reconciler.specs import record as recording
from reconciler.specs.manifests import validate

CLI = ("from reconciler.cli import main; from reconciler.cli.daemon import COMMANDS; "
       "[main.add_command(c) for c in COMMANDS]; main()")
"""The CLI with the daemon commands registered, whether or not cli/__init__ lists them."""

Run = Callable[..., subprocess.CompletedProcess[str]]


def cli_argv(*args: str) -> list[str]:
    return [sys.executable, "-c", CLI, *args]


@contextmanager
def daemon_commands(sol_home: Home, cwd: Path) -> Iterator[Run]:
    """Run daemon commands as a user would; whatever happens, stop the prefect after."""

    def run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(cli_argv(*args), cwd=cwd, capture_output=True, text=True,
                              timeout=timeout)

    try:
        yield run
    finally:
        for path in sol_home.run.glob("*.pid"):
            pid = read_pid(path)
            if pid and is_ours(pid, sol_home):
                os.kill(pid, signal.SIGCONT)  # a test may have stopped one
        stop(sol_home)
        for path in sol_home.run.glob("*.pid"):
            pid = read_pid(path)
            if pid and is_ours(pid, sol_home):
                os.kill(pid, signal.SIGKILL)


@pytest.fixture
def daemon(sol_home: Home, tmp_path: Path) -> Iterator[Run]:
    with daemon_commands(sol_home, tmp_path) as run:
        yield run


def events(home: Home, kind: str) -> list:
    store = Store(home.db)
    try:
        return store.events(types=[kind])
    finally:
        store.close()


def pid_of(home: Home, name: str) -> int | None:
    pid = read_pid(home.run / f"{name}.pid")
    return pid if pid and pid_alive(pid) else None


def live_agent(home: Home) -> str | None:
    return next((name for name, alive in tmux_sessions(home).items()
                 if alive and name.startswith("sol-shop-")), None)


def sleepy_specs(tmp_path: Path, repo: Path, *names: str) -> Path:
    return write_specs(tmp_path / "specs", world_yaml("shop", repo),
                       *(writ_yaml(n, "shop", "sleep 600") for n in names or ("sleepy",)))


def test_backoff_doubles_up_to_a_minute_and_resets_after_good_health() -> None:
    delays, delay = [], 0.0
    for _ in range(9):
        delay = next_backoff(delay, ran_for=0.5)
        delays.append(delay)
    assert delays == [1, 2, 4, 8, 16, 32, 60, 60, 60]
    assert max(delays) == BACKOFF_MAX
    assert next_backoff(60.0, ran_for=120.0) == 1.0


def test_up_twice_then_down_leaves_agent_sessions_running(
        sol_home: Home, repo: Path, tmp_path: Path, daemon: Run) -> None:
    specs = sleepy_specs(tmp_path, repo)
    first = daemon("up", "-f", str(specs))
    assert first.returncode == 0, first.stderr
    pid = read_pid(sol_home.run / "prefect.pid")
    assert pid and pid_alive(pid)
    assert f"pid {pid}" in first.stdout and "prefect.log" in first.stdout
    session = poll(lambda: live_agent(sol_home), what="the writ's agent session")
    children = [poll(lambda n=n: pid_of(sol_home, n), what=n) for n in ("consul", "forge-shop")]

    again = daemon("up", "-f", str(specs))
    assert again.returncode == 0
    assert "already running" in again.stdout and f"pid {pid}" in again.stdout
    elsewhere = daemon("up", "-f", str(tmp_path / "other"))
    assert elsewhere.returncode == 1
    assert "watches" in elsewhere.stderr and "sol down" in elsewhere.stderr

    down = daemon("down")
    assert down.returncode == 0 and f"pid {pid}" in down.stdout
    assert not pid_alive(pid)
    poll(lambda: not any(pid_alive(c) for c in children), timeout=10, what="children gone")
    assert not (sol_home.run / "prefect.pid").exists()
    assert tmux_sessions(sol_home).get(session) is True  # invariant 3
    assert "not running" in daemon("down").stdout


def test_kill_9_of_the_prefect_leaves_agents_running_and_up_works_at_once(
        sol_home: Home, repo: Path, tmp_path: Path, daemon: Run) -> None:
    specs = sleepy_specs(tmp_path, repo)
    assert daemon("up", "-f", str(specs)).returncode == 0
    session = poll(lambda: live_agent(sol_home), what="the writ's agent session")
    consul = poll(lambda: pid_of(sol_home, "consul"), what="consul")
    prefect = read_pid(sol_home.run / "prefect.pid")
    os.kill(prefect, signal.SIGKILL)
    poll(lambda: not pid_alive(consul), timeout=10, what="the orphaned consul to stop")
    assert tmux_sessions(sol_home).get(session) is True

    started = time.monotonic()
    result = daemon("up", "-f", str(specs))
    assert result.returncode == 0, result.stderr
    assert "started" in result.stdout
    print(f"sol up after kill -9 took {time.monotonic() - started:.2f}s")
    assert read_pid(sol_home.run / "prefect.pid") != prefect  # stale pid file overwritten
    poll(lambda: pid_of(sol_home, "consul"), what="a new consul")
    assert tmux_sessions(sol_home).get(session) is True
    assert [a for a in tmux_sessions(sol_home) if a.startswith("sol-shop-")] == [session]


def test_killed_and_hung_reconcilers_are_restarted_and_recorded(
        sol_home: Home, repo: Path, tmp_path: Path, daemon: Run,
        monkeypatch: pytest.MonkeyPatch) -> None:
    # stale after 6 s: long enough that a SIGKILLed child is always seen to exit first,
    # even on two busy test workers
    monkeypatch.setenv("SOL_HEARTBEAT", "1.0")
    specs = write_specs(tmp_path / "specs", world_yaml("shop", repo))
    assert daemon("up", "-f", str(specs)).returncode == 0
    consul = poll(lambda: pid_of(sol_home, "consul"), what="consul")
    os.kill(consul, signal.SIGKILL)
    new = poll(lambda: (pid_of(sol_home, "consul") or consul) != consul and
               pid_of(sol_home, "consul"), timeout=10, what="a restarted consul")
    restarted = poll(lambda: events(sol_home, "restarted"), timeout=5, what="event")
    assert restarted[0].data["child"] == "consul"
    assert restarted[0].data["exit_code"] == -signal.SIGKILL
    assert "SIGKILL" in restarted[0].message

    forge = poll(lambda: pid_of(sol_home, "forge-shop"), what="forge")
    os.kill(forge, signal.SIGSTOP)  # alive but silent: its heartbeat goes stale
    poll(lambda: len(events(sol_home, "restarted")) == 2, timeout=30, what="stale restart")
    stale = events(sol_home, "restarted")[1]
    assert stale.data["child"] == "forge-shop" and "stale heartbeat" in stale.message
    assert not pid_alive(forge)
    assert pid_of(sol_home, "consul") == new  # the others were left alone


def test_world_children_follow_the_worlds_of_the_store(
        sol_home: Home, repo: Path, tmp_path: Path, daemon: Run) -> None:
    assert daemon("up").returncode == 0  # no specs: the store alone is the desired state
    poll(lambda: pid_of(sol_home, "consul"), what="consul")
    assert pid_of(sol_home, "forge-shop") is None
    sphere = Sphere(sol_home)
    try:
        recording.record(sphere, validate([write_specs(tmp_path / "s", world_yaml("shop", repo))]))
        forge = poll(lambda: pid_of(sol_home, "forge-shop"), timeout=10, what="forge-shop")
        sphere.store.delete(("World", "", "shop"))
        poll(lambda: not pid_alive(forge), timeout=15, what="forge-shop stopped")
        assert not events(sol_home, "restarted")
    finally:
        sphere.close()


def test_wakes_reach_the_children_they_concern(
        sol_home: Home, repo: Path, tmp_path: Path, daemon: Run) -> None:
    specs = write_specs(tmp_path / "specs", world_yaml("shop", repo))
    assert daemon("up", "-f", str(specs)).returncode == 0
    consul, forge = sol_home.run / "consul.wake", sol_home.run / "forge-shop.wake"
    poll(lambda: consul.exists() and forge.exists(), what="children watching")

    def stamp(path: Path) -> int:
        return path.stat().st_mtime_ns

    before = {p: stamp(p) for p in (consul, forge)}
    (sol_home.run / "tmux-events").touch()  # what the tmux hooks do when a session dies
    poll(lambda: stamp(consul) != before[consul], timeout=5, what="consul woken")
    assert stamp(forge) == before[forge]  # a death is no news for the forge

    store = Store(sol_home.db)
    try:
        store.add_mr("shop", "ghost", branch="sol/ghost", base="", agent="vega", attempt=1,
                     priority=2)
    finally:
        store.close()
    poll(lambda: stamp(forge) != before[forge], timeout=5, what="forge woken by its queue")
    before = {p: stamp(p) for p in (consul, forge)}
    (sol_home.run / "wake").touch()  # `sol resume` and friends: everyone looks again
    poll(lambda: all(stamp(p) != before[p] for p in before), timeout=5, what="all woken")


def test_a_prefect_that_cannot_start_says_why(sol_home: Home, daemon: Run) -> None:
    sol_home.db.write_bytes(b"this is not a database" * 100)
    result = daemon("up")
    assert result.returncode == 1
    assert "exited at start" in result.stderr and "not a usable sol database" in result.stderr
    assert daemon("down").stdout.strip() == "The prefect is not running."


def test_reconcile_once_runs_one_pass_and_exits(
        sol_home: Home, repo: Path, tmp_path: Path, daemon: Run) -> None:
    specs = sleepy_specs(tmp_path, repo)
    result = daemon("reconcile", "--once", "-f", str(specs))
    assert result.returncode == 0, result.stderr
    assert "cast an agent on sol/sleepy" in result.stdout
    assert live_agent(sol_home)
    assert not (sol_home.run / "prefect.pid").exists()
    again = daemon("reconcile", "--once")
    assert again.returncode == 0 and "no changes" in again.stdout


def test_reconcile_in_the_foreground_stops_on_ctrl_c(
        sol_home: Home, repo: Path, tmp_path: Path, daemon: Run) -> None:
    specs = sleepy_specs(tmp_path, repo)
    proc = subprocess.Popen(cli_argv("reconcile", "-f", str(specs)), cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        session = poll(lambda: live_agent(sol_home), what="the writ's agent session")
        consul = poll(lambda: pid_of(sol_home, "consul"), what="consul")
        refused = daemon("up")
        assert refused.returncode == 0 and "already running" in refused.stdout
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=20) == 0
    finally:
        proc.kill()
    output = proc.stdout.read() if proc.stdout else ""
    assert "ready" in output
    assert not pid_alive(consul)
    assert tmux_sessions(sol_home).get(session) is True


def test_resume_leaves_degraded_mode(sol_home: Home, daemon: Run) -> None:
    store = Store(sol_home.db)
    try:
        for i in range(3):
            degraded.record_death(store, world="shop", writ=f"w{i}", agent="a", session="s",
                                  message="died")
        degraded_reconciler.RECONCILER.reconcile(Sphere(sol_home))
        assert degraded.state(store) is not None
        result = daemon("resume")
        assert result.returncode == 0 and "Resumed" in result.stdout
        assert degraded.state(store) is None
        assert "Not degraded" in daemon("resume").stdout
    finally:
        store.close()


def test_three_ups_at_once_start_one_prefect_and_all_say_so(
        sol_home: Home, repo: Path, tmp_path: Path, daemon: Run) -> None:
    specs = sleepy_specs(tmp_path, repo)
    procs = [subprocess.Popen(cli_argv("up", "-f", str(specs)), cwd=tmp_path,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(3)]
    results = [(p.wait(timeout=60), *p.communicate()) for p in procs]
    assert [code for code, _, _ in results] == [0, 0, 0], results
    said = [out for _, out, _ in results]
    assert sum("Prefect started" in out for out in said) == 1, said
    assert sum("already running" in out for out in said) == 2, said
    pid = pid_of(sol_home, "prefect")
    assert pid and all(f"pid {pid} " in out for out in said), said
