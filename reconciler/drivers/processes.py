"""Facts about processes, from psutil: one answer to "is this pid running" for the
daemon's pid files and for the worktree driver's half-made clones, and the process tree
of an agent's session, ended with it."""

from __future__ import annotations

import os

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


def end(procs: list[psutil.Process], grace: float = 1.0) -> None:
    """SIGTERM what is still running of `procs`, SIGKILL what outlives `grace` seconds."""
    alive = []
    for proc in procs:
        try:
            proc.terminate()
            alive.append(proc)
        except psutil.Error:
            continue
    _, left = psutil.wait_procs(alive, timeout=grace)
    for proc in left:
        try:
            proc.kill()
        except psutil.Error:
            continue
