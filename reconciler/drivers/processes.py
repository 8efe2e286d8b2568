"""Facts about processes, from psutil: one answer to "is this pid running" for the
daemon's pid files and for the worktree driver's half-made clones, and the process tree
of an agent's session, ended with it."""

from __future__ import annotations

import os
from contextlib import suppress

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


def descendants(pid: int) -> list[psutil.Process]:
    """Every process below `pid`, whatever session or process group it moved to (a CLI's
    tool runs in a session of its own, out of reach of the SIGHUP tmux sends), except
    the caller and its ancestors (`sol resolve` stops the session it runs in)."""
    try:
        found = psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []
    mine = {os.getpid()}
    try:
        mine |= {p.pid for p in psutil.Process().parents()}
    except psutil.Error:
        pass
    return [p for p in found if p.pid not in mine]


def end(procs: list[psutil.Process], grace: float = 1.0, *, after: int | None = None
        ) -> None:
    """SIGTERM what is still running of `procs`, SIGKILL what outlives `grace` seconds.
    With `after` (a session's own process), that one is waited for (and killed if it
    outlives `grace`) first: a CLI that sees its tool command die while it still runs
    would go on and ask its model again."""
    if after is not None:
        with suppress(psutil.Error):
            first = psutil.Process(after)
            try:
                first.wait(timeout=grace)
            except psutil.TimeoutExpired:
                first.kill()
    alive = []
    for proc in procs:
        try:
            proc.terminate()
            alive.append(proc)
        except psutil.Error:
            continue
    _, left = psutil.wait_procs(alive, timeout=grace)
    for proc in left:
        with suppress(psutil.Error):
            proc.kill()
