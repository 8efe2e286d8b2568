"""Degraded mode: when agent sessions die in a burst, stop respawning and tell someone.

Three or more `session-died` events within 30 s mean something bigger than one agent is
wrong (the tmux server was killed, the disk is full, the runtime is broken): respawning
would only feed the storm. The state lives in the store's meta table (key `degraded`,
JSON), so every process of the sphere (the prefect, each sentinel, `sol status`,
`sol resume`) sees the same answer. It ends after 5 minutes without a death, or on
`sol resume`; deaths from before a resume never count again.

This module is the state: how it is read (`load`, `state`, `exit_at`), the sentinel's
record of a death, `sol resume`, and the two writes of a transition (`enter`, `leave`).
When to enter or leave is decided by the `degraded` reconciler
(controllers/degraded.py); the `degraded` and `recovered` events it records reach the
`notify` targets of sol.yaml through the outbox, like every other event.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from reconciler.core.store import Store

KEY = "degraded"
DIED = "session-died"
BURST = 3             # deaths ...
WINDOW = 30.0         # ... within this many seconds enter Degraded
QUIET = 300.0         # seconds without a death to leave it


@dataclass(frozen=True)
class Degraded:
    """The sphere is degraded since `since` (epoch seconds) because of `reason`."""

    since: float
    reason: str


@dataclass(frozen=True)
class Death:
    """One counted death: when, and whose (`world/writ`)."""

    ts: float
    who: str


@dataclass(frozen=True)
class Mode:
    """The stored state, parsed: whether degraded (since when, why), when it was last
    left or resumed (`cleared_at`), and the last BURST deaths counted since then."""

    active: bool = False
    since: float = 0.0
    reason: str = ""
    cleared_at: float = 0.0
    deaths: tuple[Death, ...] = ()

    @property
    def quiet_since(self) -> float:
        """The moment the quiet spell that ends Degraded started: the last death or entry."""
        return max([self.since, *(d.ts for d in self.deaths)])

    def recent(self, now: float) -> tuple[Death, ...]:
        """The counted deaths within WINDOW of `now`, oldest first."""
        return tuple(d for d in self.deaths if now - d.ts <= WINDOW)


def _data(store: Store) -> dict[str, Any]:
    raw = store.get_meta(KEY)
    try:
        data = json.loads(raw) if raw else {}
    except json.JSONDecodeError:
        data = {}
    return data if isinstance(data, dict) else {}


def load(store: Store) -> Mode:
    """The stored state; one meta read. Deaths from before the last exit are left out
    (they never count again); a death without a time counts from the epoch."""
    data = _data(store)
    cleared = float(data.get("clearedAt") or 0.0)
    deaths = (Death(float(d.get("ts") or 0.0), str(d.get("who") or ""))
              for d in data.get("deaths") or [] if isinstance(d, dict))
    return Mode(bool(data.get("active")), float(data.get("since") or 0.0),
                str(data.get("reason") or ""), cleared,
                tuple(d for d in deaths if d.ts > cleared))


def state(store: Store) -> Degraded | None:
    """Degraded (since, reason) or None; one meta read, cheap enough for `sol status`."""
    mode = load(store)
    return Degraded(mode.since, mode.reason) if mode.active else None


def exit_at(store: Store) -> float | None:
    """When Degraded ends if no session dies before then; None when not degraded."""
    mode = load(store)
    return mode.quiet_since + QUIET if mode.active else None


def record_death(store: Store, *, world: str, writ: str, agent: str, session: str,
                 message: str, counted: bool = True, **data: Any) -> int:
    """Count one session's death: its event, and its time in the meta ring of the last
    BURST deaths (so deciding costs one meta read however long the event feed grows).
    The caller records each session's death once. Not `counted`: a death whose cause is
    known and not the agents' (a lost node takes all its agents at once)."""
    with store.transaction():
        stored = _data(store)
        if counted:
            ring = [*(stored.get("deaths") or []), {"ts": time.time(),
                                                    "who": f"{world}/{writ}"}]
            store.set_meta(KEY, json.dumps({**stored, "deaths": ring[-BURST:]}))
        return store.event(DIED, kind="Writ", world=world, name=writ, message=message,
                           agent=agent, session=session, **data)


def enter(store: Store, now: float, reason: str, deaths: int) -> None:
    """Write Degraded since `now` and its `degraded` event, in one transaction (the
    caller has checked, in that transaction, that the sphere is not degraded)."""
    with store.transaction():
        store.set_meta(KEY, json.dumps({**_data(store), "active": True, "since": now,
                                        "reason": reason}))
        store.event("degraded", kind="Sphere", message=reason, deaths=deaths)


def leave(store: Store, now: float, why: str) -> None:
    """Write the end of Degraded and its `recovered` event; deaths up to `now` never
    count again."""
    with store.transaction():
        store.set_meta(KEY, json.dumps({"active": False, "clearedAt": now,
                                        "lastReason": _data(store).get("reason") or ""}))
        store.event("recovered", kind="Sphere", message=why)


def resume(store: Store, now: float | None = None) -> bool:
    """`sol resume`: leave Degraded now; deaths before this moment never count again.

    Returns whether the sphere was degraded.
    """
    now = time.time() if now is None else now
    with store.transaction():
        if not load(store).active:
            store.set_meta(KEY, json.dumps({**_data(store), "active": False, "clearedAt": now}))
            return False
        leave(store, now, "resumed by `sol resume`: respawning resumes")
    return True
