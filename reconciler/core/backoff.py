"""Exponential backoff, in one place: respawns, envoy restarts, notification retries,
failed passes and child restarts all wait `start * factor ** n` seconds, up to a cap.

No jitter: a delay is part of a pure plan (and of its messages), so it must be the same
for the same inputs.
"""

from __future__ import annotations

import math


def exponential(attempt: int, *, start: float = 1.0, factor: float = 2.0,
                cap: float = 60.0) -> float:
    """Seconds to wait before try number `attempt` (0 for the first wait): `start`, then
    times `factor` each attempt, never more than `cap`. A negative attempt waits `start`;
    a huge one waits `cap` (no float overflow after a thousand failures)."""
    n = max(0, attempt)
    if start >= cap:
        return cap
    if start <= 0 or factor <= 1.0:
        return start
    if n >= math.log(cap / start, factor):
        return cap
    return min(cap, start * factor ** n)
