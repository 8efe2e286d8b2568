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

from reconciler.core.store import Store

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
    """Count one session's death: its event, and its time in the meta ring of the last
    BURST deaths (so checking costs one meta read however long the event feed grows).
    The caller records each session's death once."""
    with store.transaction():
        state = _load(store)
        ring = [*(state.get("deaths") or []), {"ts": time.time(), "who": f"{world}/{writ}"}]
        store.set_meta(KEY, json.dumps({**state, "deaths": ring[-BURST:]}))
        return store.event(DIED, kind="Writ", world=world, name=writ, message=message,
                           agent=agent, session=session, **data)


def _deaths(data: dict[str, Any]) -> list[dict[str, Any]]:
    """The last BURST deaths, oldest first, ignoring those before the last exit."""
    cleared = float(data.get("clearedAt") or 0.0)
    return [d for d in data.get("deaths") or [] if float(d.get("ts") or 0.0) > cleared]


def _latest(data: dict[str, Any]) -> float:
    """The moment the quiet spell that ends Degraded started: the last death or entry."""
    return max([float(data.get("since") or 0.0),
                *(float(d["ts"]) for d in data.get("deaths") or [])])


def exit_at(store: Store) -> float | None:
    """When Degraded ends if no session dies before then; None when not degraded."""
    data = _load(store)
    return _latest(data) + QUIET if data.get("active") else None


def _due(data: dict[str, Any], now: float) -> bool:
    """Whether a transition (enter or leave) is due."""
    if data.get("active"):
        return now - _latest(data) >= QUIET
    return len([d for d in _deaths(data) if now - float(d["ts"]) <= WINDOW]) >= BURST


def check(store: Store, now: float | None = None, *, notify: Sequence[str] = (),
          log: Path | None = None) -> Degraded | None:
    """Enter Degraded on a burst of deaths, leave it after a quiet spell; the new state.

    The transition is compare-and-set inside one store transaction, so when several
    sentinels check at once exactly one records the event and runs the notifiers.
    """
    now = time.time() if now is None else now
    if not _due(_load(store), now):
        return state(store)
    with store.transaction():
        data = _load(store)
        if not _due(data, now):
            return state(store)
        if data.get("active"):
            _leave(store, data, now, f"no agent session died for {int(QUIET // 60)} "
                   "minutes: respawning resumes")
            return None
        recent = [d for d in _deaths(data) if now - float(d["ts"]) <= WINDOW]
        who = ", ".join(str(d.get("who")) for d in recent)
        entered = (f"{len(recent)} agent sessions died within {int(WINDOW)}s ({who}): "
                   "respawning stopped until 5 minutes pass without a death or `sol resume`")
        store.set_meta(KEY, json.dumps({**data, "active": True, "since": now,
                                        "reason": entered}))
        store.event("degraded", kind="Sphere", message=entered, deaths=len(recent))
    problems = run_notify(notify, "degraded", entered, log=log)
    for problem in problems:
        store.event("notify-failed", kind="Sphere", message=problem)
    return Degraded(now, entered)


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
