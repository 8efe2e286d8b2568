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


MARK = "SOL_SESSION"
"""The variable every agent process inherits from its session's launch (the sol session
id): what finds a tool command started after the session's tree was listed."""


def session_mark(pid: int) -> str | None:
    """The sol session id in a session process's environment, None without one."""
    with suppress(psutil.Error):
        value = psutil.Process(pid).environ().get(MARK)
        return value or None
    return None


def marked(mark: str) -> list[psutil.Process]:
    """Every process (but this one and its ancestors) whose environment carries the
    session id `mark`: what a session left running, wherever it was re-parented. Reads
    /proc's environ files raw where there is /proc (a stop must stay cheap with many
    processes), else asks psutil."""
    mine = {os.getpid()}
    with suppress(psutil.Error):
        mine |= {p.pid for p in psutil.Process().parents()}
    needle = f"{MARK}={mark}".encode()
    found = []
    for pid in psutil.pids():
        if pid in mine:
            continue
        try:
            with open(f"/proc/{pid}/environ", "rb") as handle:
                carries = needle in handle.read().split(b"\0")
        except FileNotFoundError:
            carries = _carries(pid, mark)  # no such process now, or no /proc at all
        except OSError:
            continue  # another user's, or gone
        if carries:
            with suppress(psutil.Error):
                found.append(psutil.Process(pid))
    return found


def _carries(pid: int, mark: str) -> bool:
    with suppress(psutil.Error):
        return psutil.Process(pid).environ().get(MARK) == mark
    return False


def end_marked(mark: str, rounds: int = 3) -> None:
    """End what carries the session id `mark`; again while a round finds more (a shell
    being ended may still have started one)."""
    for _ in range(rounds):
        left = marked(mark)
        if not left:
            return
        end(left)

