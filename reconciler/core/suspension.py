"""Effective suspension: the manifest's `suspend` OR an operator's override, in one place.

A world, its forge and a writ can each be suspended two ways: declaratively
(`spec.suspend`, `spec.forge.suspend`) or imperatively with `sol suspend KIND NAME`,
which records an override in the object's status (`{"by", "at"}`, as `flux suspend`
marks a resource) until `sol resume KIND NAME` removes it. Every plan (the consul for
worlds and writs, the forge for its queue), `sol status` and `describe` ask the functions
here, so the two ways can never disagree about what is suspended or why.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from reconciler.core.model import WorldSpec, WritSpec
from reconciler.core.records import Record

WORLD, FORGE, WRIT = "world", "forge", "writ"
KINDS = (FORGE, WORLD, WRIT)

STATUS_KEY = {WORLD: "suspended", FORGE: "forgeSuspended", WRIT: "suspended"}
"""Where `sol suspend` records its override in the object's status."""
SPEC_FIELD = {WORLD: "spec.suspend", FORGE: "spec.forge.suspend", WRIT: "spec.suspend"}
"""The manifest field that suspends the same thing declaratively."""
BY_SPEC = "spec"

CONDITION = "Suspended"
"""The World condition that shows a suspended world or forge, whichever way it was."""
REASONS = {WORLD: "WorldSuspended", FORGE: "ForgeSuspended"}


@dataclass(frozen=True)
class Suspension:
    """Why one world, forge or writ is suspended: by its spec, or by an override."""

    what: str        # world | forge | writ
    name: str        # the world's name, or WORLD/NAME for a writ
    by: str          # "spec", or who asked: "sol suspend"
    at: str = ""     # RFC 3339 of the override; "" for the spec

    @property
    def by_spec(self) -> bool:
        return self.by == BY_SPEC

    @property
    def how(self) -> str:
        """`by its spec (spec.forge.suspend: true)` or `by sol suspend at T`."""
        if self.by_spec:
            return f"by its spec ({SPEC_FIELD[self.what]}: true)"
        return f"by {self.by}" + (f" at {self.at}" if self.at else "")

    @property
    def undo(self) -> str:
        """What ends it: the command for an override, the manifest edit for the spec."""
        if self.by_spec:
            return f"set {SPEC_FIELD[self.what]}: false in the manifest and apply"
        return f"`sol resume {self.what} {self.name}`"

    @property
    def message(self) -> str:
        """What a held object says: `world suspended` when its spec says so (the manifest
        shows it), else who, when and the way out, which no manifest shows."""
        if self.by_spec:
            return f"{self.what} suspended"
        return f"{self.what} suspended {self.how}; {self.undo} to go on"

    @property
    def notice(self) -> str:
        """The line `sol status` and `describe` show until it is resumed."""
        return f"{self}; {self.undo} to go on"

    def __str__(self) -> str:
        return f"{self.what} {self.name} suspended {self.how}"


def override(by: str, at: str) -> dict[str, Any]:
    """The status value `sol suspend` records."""
    return {"by": by, "at": at}


def _from_override(what: str, name: str, status: dict[str, Any]) -> Suspension | None:
    found = status.get(STATUS_KEY[what])
    if not isinstance(found, dict):
        return None
    return Suspension(what, name, str(found.get("by") or "sol suspend"), str(found.get("at") or ""))


def world_suspension(world: Record) -> Suspension | None:
    """Whether nothing new is dispatched in this world, and why; None when it may."""
    if WorldSpec.from_spec(world.spec).suspend:
        return Suspension(WORLD, world.name, BY_SPEC)
    return _from_override(WORLD, world.name, world.status)


def forge_suspension(world: Record) -> Suspension | None:
    """Whether this world's forge may start a merge, and why not; None when it may."""
    if WorldSpec.from_spec(world.spec).forge_suspend:
        return Suspension(FORGE, world.name, BY_SPEC)
    return _from_override(FORGE, world.name, world.status)


def writ_suspension(writ: Record) -> Suspension | None:
    """Whether this writ may be cast, and why not; None when it may."""
    name = f"{writ.world}/{writ.name}"
    if WritSpec.from_spec(writ.spec).suspend:
        return Suspension(WRIT, name, BY_SPEC)
    return _from_override(WRIT, name, writ.status)


def suspension(what: str, record: Record) -> Suspension | None:
    """The effective suspension of `what` (world, forge or writ) on its record."""
    return {WORLD: world_suspension, FORGE: forge_suspension, WRIT: writ_suspension}[what](
        record)


def world_condition(world: Record) -> tuple[bool, str, str] | None:
    """The `Suspended` condition a world should carry: (status, reason, message), or None
    when it is not suspended and never was (no condition to write at all)."""
    found = [s for s in (world_suspension(world), forge_suspension(world)) if s is not None]
    if found:
        return True, REASONS[found[0].what], "; ".join(map(str, found))
    had = any(c.get("type") == CONDITION for c in world.status.get("conditions") or ())
    return (False, "Resumed", "neither the world nor its forge is suspended") if had else None
