"""The rows of the store as plain values: applied objects with their status, agents,
merge requests, events and outbox entries.

store.py reads and writes them and re-exports them (`from reconciler.core.store import Record`
works); nothing here speaks SQL.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from reconciler.core.model import API_VERSION, Manifest, Origin
from reconciler.core.times import rfc3339


@dataclass(frozen=True)
class Record:
    """One applied object with its status."""

    kind: str
    world: str
    name: str
    spec: dict[str, Any]
    generation: str
    origin: str
    orphaned: bool
    phase: str
    reason: str
    message: str
    observed_generation: str
    status: dict[str, Any]
    version: int
    created_at: float
    updated_at: float

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.kind, self.world, self.name)

    def manifest(self) -> Manifest:
        return Manifest(self.kind, self.name, self.world, self.spec, _origin(self.origin))

    def to_object(self) -> dict[str, Any]:
        """The contract shape of DESIGN section 7, times in RFC 3339 (`readable_times`)."""
        metadata: dict[str, Any] = {"name": self.name}
        if self.world:
            metadata["world"] = self.world
        metadata["creationTimestamp"] = rfc3339(self.created_at)
        status = {
            "phase": self.phase,
            "reason": self.reason,
            "message": self.message,
            "observedGeneration": self.observed_generation,
            "generation": self.generation,
        }
        if self.orphaned:
            status["orphaned"] = True
        status.update(readable_times(self.status))
        return {
            "apiVersion": API_VERSION,
            "kind": self.kind,
            "metadata": metadata,
            "spec": self.spec,
            "status": status,
        }


TIME_KEYS = frozenset({"at", "until", "since", "ts"})
TIME_SUFFIXES = ("At", "Time", "Until", "Before")


def readable_times(value: Any, key: str = "") -> Any:
    """`value` with each epoch-seconds number under a time-named key (lastTransitionTime,
    resolvedAt, rateLimit.until, ...) as an RFC 3339 string, for people and scripts
    (`-o json`, `describe`). The store keeps the numbers, which reconcilers compare; no
    reader of the CLI's output reads them back as numbers."""
    if isinstance(value, dict):
        return {k: readable_times(v, str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [readable_times(v, key) for v in value]
    if (isinstance(value, int | float) and not isinstance(value, bool) and value > 0
            and (key in TIME_KEYS or key.endswith(TIME_SUFFIXES))):
        return rfc3339(value)
    return value


def _origin(text: str) -> Origin:
    parts = text.rsplit(":", 2)
    if len(parts) == 3 and parts[1].isdigit() and parts[2].isdigit():
        return Origin(parts[0], int(parts[1]), int(parts[2]))
    return Origin(text, 0, 0)


@dataclass(frozen=True)
class Agent:
    world: str
    name: str
    writ: str | None
    session: str
    runtime: str
    state: str
    created_at: float
    updated_at: float


@dataclass(frozen=True)
class MergeRequest:
    id: int
    world: str
    writ: str
    branch: str
    base: str
    agent: str
    attempt: int
    priority: int
    state: str
    merge_commit: str
    message: str
    created_at: float
    updated_at: float


@dataclass(frozen=True)
class Event:
    id: int
    ts: float
    type: str
    kind: str
    world: str
    name: str
    message: str
    data: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id, "ts": self.ts, "type": self.type, "kind": self.kind,
            "world": self.world, "name": self.name, "message": self.message, "data": self.data,
        }


@dataclass(frozen=True)
class OutboxRow:
    """One notification: an event for one target, and how its delivery is going."""

    id: int
    target: str
    state: str        # pending | sending | delivered | dead
    attempts: int
    due_at: float
    error: str
    event: Event
