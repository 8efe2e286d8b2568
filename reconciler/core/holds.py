"""What holds a world's new casts and respawns for a while: a rate limit or its daily budget.

Two owners write a hold into the World's status: the sentinel when an agent hits the
model API's rate limit (`rateLimitedUntil`, the reset time), the budget reconciler when
the world passes `spec.budget.perDay` (`budgetHeldUntil`, the next local midnight, and
`budgetHeld`, what was spent). The consul (casts), the sentinel (respawns), the world
reconciler (the World's `RateLimited` / `BudgetExceeded` conditions), `sol status` and
`describe` all ask `world_hold`, so they agree on whether, why and until when.
Running agents are never stopped by a hold: they go on and finish.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from reconciler.core.records import Record
from reconciler.core.times import rfc3339

RATE_LIMITED, BUDGET_EXCEEDED = "RateLimited", "BudgetExceeded"
CONDITIONS = (RATE_LIMITED, BUDGET_EXCEEDED)
"""The World conditions that show a hold, named by its cause."""


@dataclass(frozen=True)
class Hold:
    """One cause holding a world: its condition type, until when, and why."""

    cause: str       # RateLimited | BudgetExceeded
    until: float
    why: str

    def message(self, world: str, now: float) -> str:
        """What a held writ and the World's condition say."""
        left = max(0, int(self.until - now))
        return (f"world {world} {self.why}: no new agent and no respawn for {left}s "
                f"(until {rfc3339(self.until)})")


def holds(status: dict[str, Any], now: float) -> list[Hold]:
    """Every hold in a World's status still in force at `now`, soonest end first."""
    found = []
    limited = float(status.get("rateLimitedUntil") or 0.0)
    if limited > now:
        found.append(Hold(RATE_LIMITED, limited,
                          "is rate limited by the model API (until its limit resets)"))
    budget = float(status.get("budgetHeldUntil") or 0.0)
    if budget > now:
        spent = status.get("budgetHeld") or "its daily budget"
        found.append(Hold(BUDGET_EXCEEDED, budget,
                          f"spent {spent} today (spec.budget.perDay)"))
    return sorted(found, key=lambda h: h.until)


def world_hold(world: Record | None, now: float) -> Hold | None:
    """The hold that ends last (the one that matters to a waiting writ), or None."""
    found = holds(world.status, now) if world is not None else []
    return found[-1] if found else None
