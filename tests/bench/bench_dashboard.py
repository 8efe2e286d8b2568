"""Benchmark: the idle CPU of `sol dashboard` with 30 writs (the target: under 2% of a
core), three of them with a live agent session, the first one's pane previewed.

The dashboard runs in a detached tmux session as a user's terminal; its CPU time is read
from /proc/<pid>/stat over IDLE seconds once its first frame is drawn.
Run: `python tests/bench/bench_dashboard.py [N] [IDLE]` (default 30 writs, 10 s).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from conftest import make_repo  # noqa: E402
from helpers import world_yaml, writ_yaml, write_specs  # noqa: E402

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime of the process (fields 14 and 15 of /proc/<pid>/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def tmux(socket: str, *args: str) -> str:
    return subprocess.run(["tmux", "-L", socket, *args], capture_output=True, text=True,
                          check=True).stdout


def wait_for(condition: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.1)


def main(n: int = 30, idle: float = 10.0) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="sol-bench-dash-"))
    os.environ.update({"SOL_HOME": str(tmp / "home"), "TMUX_TMPDIR": str(tmp)})
    for key in ("TMUX", "TMUX_PANE"):
        os.environ.pop(key, None)
    socket = "bench-dashboard"
    sol = [sys.executable, "-m", "reconciler"]
    try:
        source = make_repo(tmp / "source")
        specs = write_specs(tmp / "specs", world_yaml("bench", source, max_active=3),
                            *[writ_yaml(f"w{i:02d}", "bench", "sleep 120") for i in range(n)])
        subprocess.run([*sol, "apply", "-f", str(specs)], check=True, capture_output=True)
        tmux(socket, "new-session", "-d", "-x", "120", "-y", "40", "-s", "dash",
             " ".join([*sol, "dashboard"]))
        pid = int(tmux(socket, "display-message", "-p", "-t", "dash", "#{pane_pid}"))
        last = f"w{n - 1:02d}"
        wait_for(lambda: last in tmux(socket, "capture-pane", "-p", "-t", "dash"), 30,
                 "the first frame")
        time.sleep(2.0)  # let the start-up settle: only the idle loop is measured
        before, start = cpu_seconds(pid), time.monotonic()
        time.sleep(idle)
        used, elapsed = cpu_seconds(pid) - before, time.monotonic() - start
        print(f"sol dashboard, {n} writs (3 agents live), idle {elapsed:.1f}s: "
              f"{100 * used / elapsed:.2f}% of a core (target < 2%)")
    finally:
        subprocess.run(["tmux", "-L", socket, "kill-server"], capture_output=True)
        from reconciler.core.home import Home

        subprocess.run(["tmux", "-L", Home(tmp / "home").socket_name, "kill-server"],
                       capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:2]), *(float(a) for a in sys.argv[2:3]))
