"""Facts about processes, from psutil: one answer to "is this pid running" for the
daemon's pid files and for the worktree driver's half-made clones."""

from __future__ import annotations

import psutil


def pid_alive(pid: int) -> bool:
    """Running (a zombie no one has reaped yet counts as gone; one we may not inspect
    counts as running)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return True
