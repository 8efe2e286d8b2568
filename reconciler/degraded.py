"""Degraded mode: when agent sessions die in a burst, stop respawning and tell someone.

Three or more `session-died` events within 30 s mean something bigger than one agent is
wrong (the tmux server was killed, the disk is full, the runtime is broken): respawning
would only feed the storm. The state lives in the store's meta table (key `degraded`,
JSON), so every process of the sphere (the prefect, each sentinel, `sol status`,
`sol resume`) sees the same answer. It ends after 5 minutes without a death, or on
`sol resume`; deaths from before a resume never count again.

The `notify` commands of the sphere config are run with the reason as their last
argument and in `SOL_EVENT`/`SOL_MESSAGE`, never through a shell, in the background
with a timeout, so a hanging notifier never stalls supervision.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .store import Store

KEY = "degraded"
DIED = "session-died"
BURST = 3             # deaths ...
WINDOW = 30.0         # ... within this many seconds enter Degraded
QUIET = 300.0         # seconds without a death to leave it
NOTIFY_TIMEOUT = 60.0


@dataclass(frozen=True)
class Degraded:
    """The sphere is degraded since `since` (epoch seconds) because of `reason`."""

    since: float
    reason: str


def _load(store: Store) -> dict[str, Any]:
    raw = store.get_meta(KEY)
    try:
        data = json.loads(raw) if raw else {}
    except json.JSONDecodeError:
        data = {}
    return data if isinstance(data, dict) else {}


def state(store: Store) -> Degraded | None:
    """Degraded (since, reason) or None; one meta read, cheap enough for `sol status`."""
    data = _load(store)
    if not data.get("active"):
        return None
    return Degraded(float(data.get("since") or 0.0), str(data.get("reason") or ""))


def record_death(store: Store, *, world: str, writ: str, agent: str, session: str,
                 message: str, **data: Any) -> int:
    """The one event that counts a session's death; the caller records it once per session."""
    return store.event(DIED, kind="Writ", world=world, name=writ, message=message,
                       agent=agent, session=session, **data)


def _deaths(store: Store, count: int) -> list[Any]:
    """The last `count` deaths, newest last."""
    return store.events(types=[DIED], limit=count)


def exit_at(store: Store) -> float | None:
    """When Degraded ends if no session dies before then; None when not degraded."""
    data = _load(store)
    if not data.get("active"):
        return None
    last = _deaths(store, 1)
    latest = max([float(data.get("since") or 0.0), *(e.ts for e in last)])
    return latest + QUIET


def check(store: Store, now: float | None = None, *, notify: Sequence[str] = (),
          log: Path | None = None) -> Degraded | None:
    """Enter Degraded on a burst of deaths, leave it after a quiet spell; the new state.

    The transition is compare-and-set inside one store transaction, so when several
    sentinels check at once exactly one records the event and runs the notifiers.
    """
    now = time.time() if now is None else now
    current = _quick(store, now)
    if current is not False:
        return current
    entered: str | None = None
    with store.transaction():
        data = _load(store)
        cleared = float(data.get("clearedAt") or 0.0)
        if data.get("active"):
            last = _deaths(store, 1)
            latest = max([float(data.get("since") or 0.0), *(e.ts for e in last)])
            if now - latest >= QUIET:
                _leave(store, data, now, f"no agent session died for {int(QUIET // 60)} "
                       "minutes: respawning resumes")
                return None
            return Degraded(float(data.get("since") or 0.0), str(data.get("reason") or ""))
        recent = [e for e in _deaths(store, BURST) if e.ts > cleared and now - e.ts <= WINDOW]
        if len(recent) < BURST:
            return None
        who = ", ".join(f"{e.world}/{e.name}" for e in recent)
        entered = (f"{len(recent)} agent sessions died within {int(WINDOW)}s ({who}): "
                   "respawning stopped until 5 minutes pass without a death or `sol resume`")
        store.set_meta(KEY, json.dumps({"active": True, "since": now, "reason": entered,
                                        "clearedAt": cleared}))
        store.event("degraded", kind="Sphere", message=entered, deaths=len(recent))
    problems = run_notify(notify, "degraded", entered, log=log)
    for problem in problems:
        store.event("notify-failed", kind="Sphere", message=problem)
    return Degraded(now, entered)


def _quick(store: Store, now: float) -> Degraded | None | bool:
    """Without a write lock: the state when no transition is due, else False."""
    data = _load(store)
    if data.get("active"):
        since = float(data.get("since") or 0.0)
        latest = max([since, *(e.ts for e in _deaths(store, 1))])
        return Degraded(since, str(data.get("reason") or "")) if now - latest < QUIET else False
    cleared = float(data.get("clearedAt") or 0.0)
    recent = [e for e in _deaths(store, BURST) if e.ts > cleared and now - e.ts <= WINDOW]
    return None if len(recent) < BURST else False


def _leave(store: Store, data: dict[str, Any], now: float, why: str) -> None:
    store.set_meta(KEY, json.dumps({"active": False, "clearedAt": now,
                                    "lastReason": data.get("reason") or ""}))
    store.event("recovered", kind="Sphere", message=why)


def resume(store: Store, now: float | None = None) -> bool:
    """`sol resume`: leave Degraded now; deaths before this moment never count again.

    Returns whether the sphere was degraded.
    """
    now = time.time() if now is None else now
    with store.transaction():
        data = _load(store)
        if not data.get("active"):
            store.set_meta(KEY, json.dumps({**data, "active": False, "clearedAt": now}))
            return False
        _leave(store, data, now, "resumed by `sol resume`: respawning resumes")
    return True


def run_notify(commands: Sequence[str], event: str, message: str, *,
               log: Path | None = None) -> list[str]:
    """Start each notify command as argv + [message]; never waits for one to finish.

    Returns the problems found before starting (unparsable line, program not found);
    what a started command does is its own business, bounded by NOTIFY_TIMEOUT.
    """
    problems: list[str] = []
    for command in commands:
        try:
            argv = shlex.split(command)
        except ValueError as exc:
            problems.append(f"notify command {command!r} cannot be parsed ({exc}); "
                            "fix its quoting in sol.yaml")
            continue
        if not argv:
            continue
        if shutil.which(argv[0]) is None:
            problems.append(f"notify command {argv[0]} not found; fix notify in sol.yaml")
            continue
        try:
            _spawn([*argv, message], event, message, log)
        except OSError as exc:
            problems.append(f"notify command {argv[0]} could not start: {exc.strerror}")
    return problems


def _spawn(argv: list[str], event: str, message: str, log: Path | None) -> None:
    """Run argv in its own session, bounded by coreutils `timeout` when present (so the
    bound holds even if this process exits first) and reaped by a daemon thread."""
    limiter = shutil.which("timeout")
    if limiter:
        argv = [limiter, "-k", "5", str(int(NOTIFY_TIMEOUT)), *argv]
    env = {**os.environ, "SOL_EVENT": event, "SOL_MESSAGE": message}
    out: Any = subprocess.DEVNULL
    if log is not None:
        log.parent.mkdir(parents=True, exist_ok=True)
        out = log.open("ab")
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, env=env, start_new_session=True)
    finally:
        if out is not subprocess.DEVNULL:
            out.close()

    def reap() -> None:
        try:
            proc.wait(timeout=NOTIFY_TIMEOUT + 10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    threading.Thread(target=reap, name="sol-notify", daemon=True).start()
