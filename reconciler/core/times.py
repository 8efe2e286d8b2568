"""Times as sol shows them: RFC 3339 everywhere a moment is printed, and kubectl's AGE.

One formatter keeps `sol get`, `describe`, `events`, `status` and the records written into
status (a retry request, a suspension) reading the same, in the operator's local zone
with its offset, so a time pasted into a ticket means one instant.
"""

from __future__ import annotations

import time
from datetime import datetime, timedelta


def rfc3339(ts: float) -> str:
    """1764770000.5 -> `2025-12-03T14:53:20+00:00` (local time, whole seconds, offset)."""
    return datetime.fromtimestamp(int(ts)).astimezone().isoformat()


def parse_rfc3339(text: str) -> float:
    """The inverse of `rfc3339` (any ISO 8601 with an offset); ValueError otherwise."""
    parsed = datetime.fromisoformat(text)
    if parsed.tzinfo is None:
        raise ValueError(f"{text!r} has no UTC offset")
    return parsed.timestamp()


def age(ts: float | None, now: float | None = None) -> str:
    """kubectl's AGE: `45s`, `12m`, `3h`, `2d4h`, `40d`; `-` when unknown."""
    if not ts:
        return "-"
    seconds = max(0, int((time.time() if now is None else now) - ts))
    if seconds < 120:
        return f"{seconds}s"
    minutes = seconds // 60
    if minutes < 120:
        return f"{minutes}m"
    hours = minutes // 60
    if hours < 48:
        return f"{hours}h"
    days = hours // 24
    return f"{days}d{hours % 24}h" if days < 8 and hours % 24 else f"{days}d"


def day_bounds(now: float) -> tuple[float, float]:
    """The local calendar day holding `now` (what `perDay` budgets and `sol cost --by day`
    count in): its first second and the next midnight."""
    day = datetime.fromtimestamp(now).date()
    start = datetime.combine(day, datetime.min.time())
    return start.timestamp(), (start + timedelta(days=1)).timestamp()
