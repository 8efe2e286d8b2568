"""Report a condition once: a poll or resync that meets the same error again stays
silent, so the event feed and the log show a change, not a heartbeat."""

from __future__ import annotations

from typing import Generic, TypeVar

T = TypeVar("T")


class ReportOnce(Generic[T]):
    """The last thing reported (an error, a tuple of problems, a reason); None: nothing
    is reported now, the all-clear state."""

    def __init__(self) -> None:
        self.last: T | None = None

    def news(self, value: T | None) -> bool:
        """True when `value` differs from the last one reported, which it then becomes:
        report it. False for a repeat: stay silent."""
        if value == self.last:
            return False
        self.last = value
        return True

    def clear(self) -> None:
        """The condition is over: the next report of it is news again."""
        self.last = None
