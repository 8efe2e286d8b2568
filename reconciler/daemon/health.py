"""The sphere's health as `sol status` shows it: the daemon and its children, the disk
and the store, and whether a human is needed.

Status reads what is true now (the file system, the prefect's lock, each child's last
pass) rather than what a reconciler last wrote, so a full disk, a read-only store or a
stopped daemon shows at once, and stops showing once fixed, without anyone recording it.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reconciler.core.home import Home

LOW_SPACE = 1 << 20
"""Free bytes under which the disk of SOL_HOME counts as full: SQLite, git and the logs
all fail there first."""

QUEUED = frozenset({"Pending", "Working", "Resolved", "Merging"})


def record_pass(path: Path, *, ok: bool, failures: int, error: str = "") -> None:
    """A child's last pass, for `sol status`; best effort (a full disk must not stop it)."""
    data = {"pid": os.getpid(), "at": time.time(), "ok": ok, "failures": failures,
            "error": error[:500]}
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_text(json.dumps(data))
        os.replace(tmp, path)
    except OSError:
        pass


@dataclass(frozen=True)
class ChildHealth:
    name: str
    at: float
    ok: bool
    failures: int
    error: str


@dataclass(frozen=True)
class Health:
    """What `sol status` says about the sphere beyond its objects."""

    daemon: dict[str, Any] | None               # the prefect's ready info, None if down
    children: tuple[ChildHealth, ...] = ()
    conditions: tuple[str, ...] = ()            # disk full, store read-only, ...
    attention: tuple[str, ...] = field(default=())


def disk(home: Home) -> list[str]:
    """Sphere conditions of the file system SOL_HOME lives on."""
    found = []
    try:
        fs = os.statvfs(home.root)
    except OSError as exc:
        return [f"SOL_HOME {home.root} cannot be read: {exc.strerror}"]
    free = fs.f_bavail * fs.f_frsize
    try:
        db_flags = os.statvfs(home.db).f_flag if home.db.exists() else 0
    except OSError:
        db_flags = 0
    if (fs.f_flag | db_flags) & os.ST_RDONLY:
        found.append(f"STORE READ-ONLY: {home.db} is on a read-only file system; nothing "
                     "can be recorded until it is writable again")
    elif home.db.exists() and os.geteuid() != 0 and not os.access(home.db, os.W_OK):
        found.append(f"STORE READ-ONLY: {home.db} is not writable; fix its permissions")
    if free < LOW_SPACE:
        found.append(f"DISK FULL: {free // 1024} KiB free where {home.root} lives; agents, "
                     "the forge and the store fail until space is freed")
    return found


def children(home: Home) -> tuple[ChildHealth, ...]:
    found = []
    for path in sorted(home.run.glob("*.pass")):
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        found.append(ChildHealth(path.stem, float(data.get("at") or 0.0),
                                 bool(data.get("ok")), int(data.get("failures") or 0),
                                 str(data.get("error") or "")))
    return tuple(found)


def assess(home: Home, store: Any, daemon: dict[str, Any] | None) -> Health:
    """The sphere's health now; `attention` lists what needs a human (status exits 1)."""
    from reconciler.core.degraded import state as degraded_state

    conditions = tuple(disk(home))
    found = children(home) if daemon is not None else ()
    attention = list(conditions)
    writs = store.list("Writ")
    suspended = {w.name for w in store.list("World") if w.spec.get("suspend")}
    queued = [w for w in writs if w.phase in QUEUED and not w.orphaned
              and not w.spec.get("suspend") and w.world not in suspended]
    if daemon is None and queued:
        attention.append(f"no daemon is running and {len(queued)} writ(s) wait for it: "
                         "run `sol up -f SPECS`, or `sol reconcile --once` for one pass")
    for child in found:
        if not child.ok:
            attention.append(f"reconciler {child.name} is failing ({child.failures} pass(es) "
                             f"in a row): {child.error}")
    degraded = degraded_state(store)
    if degraded is not None:
        attention.append(f"the sphere is degraded: {degraded.reason}; `sol resume` to go on")
    failed = [f"{w.world}/{w.name}" for w in writs if w.phase == "Failed"]
    if failed:
        attention.append(f"{len(failed)} writ(s) Failed: {', '.join(failed)}")
    escalated = [f"{w.world}/{w.name}" for w in writs if w.phase not in ("Merged", "Cancelled")
                 and any(c.get("type") == "Escalated" and c.get("status") == "True"
                         for c in w.status.get("conditions") or [])]
    if escalated:
        attention.append(f"{len(escalated)} writ(s) escalated: {', '.join(escalated)}")
    return Health(daemon, found, conditions, tuple(attention))


def describe_daemon(health: Health, now: float) -> list[str]:
    """The daemon's lines of `sol status`."""
    if health.daemon is None:
        return ["daemon: not running"]
    lines = [f"daemon: running (pid {health.daemon.get('pid', '?')})"]
    for child in health.children:
        ago = max(0.0, now - child.at)
        state = "ok" if child.ok else f"FAILING x{child.failures}: {child.error}"
        lines.append(f"  {child.name:<22} last pass {ago:.0f}s ago, {state}")
    return lines
