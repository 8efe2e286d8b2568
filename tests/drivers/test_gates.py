"""gates.py with real processes: exit codes, logs, timeouts that kill the whole group."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT, poll
from helpers import gone

from reconciler.drivers import gates
from reconciler.drivers.gates import format_duration, kill_leftover, read_tail, run_gate


def env(**extra: str) -> dict[str, str]:
    return {**os.environ, **extra}


@pytest.mark.parametrize("seconds,text", [(30, "30s"), (600, "10m"), (7200, "2h"),
                                          (90, "90s"), (2, "2s"), (0.5, "0.5s")])
def test_durations_read_like_the_manifest(seconds: float, text: str):
    assert format_duration(seconds) == text


def test_a_passing_gate_logs_its_output_and_environment(tmp_path: Path):
    log = tmp_path / "logs" / "g.log"
    result = run_gate("unit", 'echo "hello $SOL_WRIT"; echo oops >&2', cwd=tmp_path, log=log,
                      timeout=30, env=env(SOL_WRIT="add-x"))
    assert result.passed and result.exit_code == 0 and not result.timed_out
    assert result.tail == "hello add-x\noops"
    text = log.read_text()
    assert "hello add-x" in text and "oops" in text and "# exit code 0" in text
    assert result.summary.startswith("gate unit passed")


def test_exit_code_zero_is_the_only_pass(tmp_path: Path):
    result = run_gate("unit", "echo broken; exit 3", cwd=tmp_path, log=tmp_path / "g.log",
                      timeout=30, env=env())
    assert not result.passed and result.exit_code == 3
    assert result.summary == "gate unit failed with exit code 3"
    assert result.tail == "broken"


def test_the_gate_runs_in_its_cwd_without_a_shell_around_its_name(tmp_path: Path):
    (tmp_path / "marker").write_text("x")
    result = run_gate("has-marker", "test -f marker && pwd", cwd=tmp_path,
                      log=tmp_path / "l" / "g.log", timeout=30, env=env())
    assert result.passed and result.tail == str(tmp_path)


def test_tail_keeps_the_last_lines(tmp_path: Path):
    result = run_gate("many", "seq 1 500", cwd=tmp_path, log=tmp_path / "g.log", timeout=30,
                      env=env(), tail_lines=200)
    lines = result.tail.splitlines()
    assert len(lines) == 200 and lines[0] == "301" and lines[-1] == "500"
    assert read_tail(tmp_path / "g.log", 3, start=0).splitlines()[-1].startswith("# exit")


def test_a_hanging_gate_is_killed_with_its_children_at_its_timeout(tmp_path: Path):
    pidfile = tmp_path / "child.pid"
    started = time.monotonic()
    result = run_gate("hang", f"sleep 300 & echo $! > {pidfile}; wait", cwd=tmp_path,
                      log=tmp_path / "g.log", timeout=1, env=env())
    elapsed = time.monotonic() - started
    assert result.timed_out and not result.passed and result.exit_code is None
    assert result.summary == "gate hang timed out after 1s (killed, no exit code)"
    assert 1 <= elapsed < 1 + gates.KILL_GRACE
    child = int(pidfile.read_text())
    poll(lambda: gone(child), timeout=5, what="the gate's background child to die")
    assert "# timed out after 1s" in (tmp_path / "g.log").read_text()


def test_a_gate_that_ignores_sigterm_is_killed_after_the_grace(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(gates, "KILL_GRACE", 0.5)
    pidfile = tmp_path / "pid"
    result = run_gate("stubborn", f"trap '' TERM; echo $$ > {pidfile}; while :; do sleep 0.1; "
                      "done", cwd=tmp_path, log=tmp_path / "g.log", timeout=1, env=env())
    assert result.timed_out
    poll(lambda: gone(int(pidfile.read_text())), timeout=5, what="the stubborn gate to die")


def test_background_processes_left_by_a_finished_gate_are_ended(tmp_path: Path):
    pidfile = tmp_path / "child.pid"
    result = run_gate("leaky", f"sleep 300 & echo $! > {pidfile}; exit 0", cwd=tmp_path,
                      log=tmp_path / "g.log", timeout=30, env=env())
    assert result.passed
    poll(lambda: gone(int(pidfile.read_text())), timeout=5, what="the leftover child to die")


def test_a_gate_in_a_missing_directory_fails_without_a_traceback(tmp_path: Path):
    result = run_gate("nowhere", "true", cwd=tmp_path / "missing", log=tmp_path / "g.log",
                      timeout=5, env=env())
    assert not result.passed and result.exit_code is None
    assert "cannot start" in result.tail


def test_the_group_of_a_dead_runner_is_killed_on_the_next_start(tmp_path: Path):
    """A runner killed mid-gate (kill -9) leaves its gate running; kill_leftover ends it."""
    record = tmp_path / "run" / "forge-shop.gate"
    pidfile = tmp_path / "child.pid"
    script = (
        "import sys, os\n"
        "from pathlib import Path\n"
        "from reconciler.drivers.gates import run_gate\n"
        f"run_gate('hang', 'sleep 300 & echo $! > {pidfile}; wait', cwd=Path({str(tmp_path)!r}),"
        f" log=Path({str(tmp_path / 'g.log')!r}), timeout=300, env=dict(os.environ),"
        f" record=Path({str(record)!r}), on_start=lambda pid: os._exit(137))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 137, done.stderr
    poll(lambda: pidfile.exists() and pidfile.read_text().strip(), timeout=10,
         what="the orphaned gate to start its child")
    child = int(pidfile.read_text())
    assert not gone(child)
    assert record.exists()
    assert kill_leftover(record) is True
    poll(lambda: gone(child), timeout=10, what="the orphaned gate's child to die")
    assert not record.exists()
    assert kill_leftover(record) is False


def test_a_stale_record_never_signals_an_unrelated_process(tmp_path: Path):
    """A record naming a live process without our token (a reused pid) is dropped."""
    other = subprocess.Popen(["sleep", "30"], start_new_session=True)
    try:
        record = tmp_path / "forge-shop.gate"
        record.write_text(f'{{"pgid": {other.pid}, "token": "not-its-token"}}')
        assert kill_leftover(record) is False
        assert other.poll() is None and not record.exists()
        record.write_text("garbage")
        assert kill_leftover(record) is False and not record.exists()
    finally:
        other.kill()
        other.wait()
