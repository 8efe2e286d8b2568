"""The OS side of sol's own processes: pid files, liveness, logs, stopping, dying together.

Shared by the prefect (which supervises), its children (which are supervised) and the
CLI (`sol up`/`sol down`), so each of these questions has one answer: is this pid
running, is it one of ours, how is it stopped. Process facts come from psutil, not from
reading /proc by hand.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from loguru import logger

from reconciler.core.home import Home
from reconciler.core.locks import flock

STOP_GRACE = 10.0       # seconds a child (or the prefect) gets to exit after SIGTERM


def setup_logging(path: Path, *, console: bool = False) -> None:
    """JSON lines (one writer per file, so rotation is safe), plus stderr in foreground."""
    logger.remove()
    # watchdog logs an error when a watched directory is deleted: expected here
    logging.getLogger("watchdog.observers.inotify").setLevel(logging.CRITICAL)
    os.umask(0o077)  # a daemon's logs and files are the user's alone
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    logger.add(path, serialize=True, level="INFO", rotation="10 MB", retention=3)
    if console:
        logger.add(sys.stderr, level="INFO", format="{time:HH:mm:ss} {message}")


def read_pid(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def is_ours(pid: int, home: Home) -> bool:
    """The pid runs `reconciler.daemon.prefect` (or the web child, `reconciler.daemon.web`)
    in this SOL_HOME (guards against pid reuse): the daemon and its children all run with
    SOL_HOME as their working directory."""
    import psutil  # on first use: most commands never look at a pid

    try:
        process = psutil.Process(pid)
        argv, cwd = process.cmdline(), process.cwd()
    except psutil.Error:  # gone, a zombie, or another user's
        return False
    ours = "reconciler.daemon.prefect" in argv or "reconciler.daemon.web" in argv
    return ours and Path(cwd) == home.root.resolve()


def kill_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL a child and what it started in its process group (git, a hung helper);
    agents live under tmux's own session and are never in it."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError):
        proc.kill()
    proc.wait()


def die_with_parent() -> None:
    """Ask Linux for SIGTERM when the prefect dies; elsewhere the loop checks getppid."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def wait_unlocked(path: Path, timeout: float) -> bool:
    """Poll (shutdown only) until nobody holds the lock at `path`, or `timeout` passes."""
    deadline = time.monotonic() + timeout
    while True:
        with flock(path, blocking=False) as free:
            if free:
                return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
