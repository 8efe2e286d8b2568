"""Plain values: manifests as applied, their typed specs with defaults, and status."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from reconciler.core.durations import DURATION_RE, parse_duration  # noqa: F401 - re-exported

API_VERSION = "sol/v1"
KINDS = ("World", "Writ", "Caravan", "Envoy")
NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")

# Writ phases (DESIGN section 5).
PENDING, WORKING, RESOLVED, MERGING, MERGED = "Pending", "Working", "Resolved", "Merging", "Merged"
DONE, FAILED, CANCELLED, ORPHANED = "Done", "Failed", "Cancelled", "Orphaned"
TERMINAL = frozenset({MERGED, DONE, FAILED, CANCELLED})
ALL_WRIT_PHASES = (PENDING, WORKING, RESOLVED, MERGING, MERGED, DONE, FAILED, CANCELLED)
# World phases.
READY, ERROR = "Ready", "Error"
# Envoy phases (Pending and Error as above).
RUNNING, SUSPENDED = "Running", "Suspended"


def generation(spec: dict[str, Any]) -> str:
    """The hash of a spec: what a status was computed for."""
    canonical = json.dumps(spec, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:12]


@dataclass(frozen=True)
class Origin:
    """Where a node was written: 1-based line and column."""

    file: str
    line: int
    col: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}"


@dataclass(frozen=True)
class Manifest:
    """One desired object as loaded from a specs directory."""

    kind: str
    name: str
    world: str  # "" for a World
    spec: dict[str, Any]
    origin: Origin = Origin("", 0, 0)

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.kind, self.world, self.name)

    @property
    def generation(self) -> str:
        return generation(self.spec)


@dataclass(frozen=True)
class Runtime:
    name: str = "claude"
    model: str | None = None
    command: str | None = None
    sandboxed: bool = False  # sol runs inside a sandbox: claude may bypass permissions as root

    @classmethod
    def from_spec(cls, spec: dict[str, Any] | None) -> Runtime:
        spec = spec or {}
        return cls(spec.get("name", "claude"), spec.get("model"), spec.get("command"),
                   bool(spec.get("sandboxed", False)))

    def to_dict(self) -> dict[str, Any]:
        """As the tether keeps it."""
        return {"name": self.name, "model": self.model, "command": self.command,
                "sandboxed": self.sandboxed}


@dataclass(frozen=True)
class Gate:
    name: str
    run: str
    timeout: float = 600.0


@dataclass(frozen=True)
class Limit:
    """A spending limit (`spec.budget`): USD, tokens, or both; either passed is passed."""

    usd: Decimal | None = None
    tokens: int | None = None

    @classmethod
    def from_spec(cls, spec: dict[str, Any] | None) -> Limit | None:
        if not spec:
            return None
        usd = spec.get("usd")
        return cls(Decimal(str(usd)) if usd is not None else None,
                   int(spec["tokens"]) if spec.get("tokens") is not None else None)

    def passed(self, usd: Decimal | None, tokens: int) -> str | None:
        """How a spend passes this limit ("$5.12 of $5.00"), None within it. A spend with
        no price (an unpriced model) is judged on tokens alone."""
        if self.usd is not None and usd is not None and usd > self.usd:
            return f"${usd:.2f} of ${self.usd:.2f}"
        if self.tokens is not None and tokens > self.tokens:
            return f"{tokens:,} of {self.tokens:,} tokens"
        return None

    def __str__(self) -> str:
        parts = ([f"${self.usd:.2f}"] if self.usd is not None else []) + (
            [f"{self.tokens:,} tokens"] if self.tokens is not None else [])
        return " or ".join(parts)


@dataclass(frozen=True)
class SessionsSpec:
    """Where a world's agents run: this machine's tmux, or a Ray cluster's nodes."""

    backend: str = "tmux"
    address: str = "auto"
    resources: tuple[tuple[str, float], ...] = ()
    workspace: str = "shared"  # shared: the outpost under SOL_HOME; node: a clone per node
    remote: str = ""           # with node: the repo every node pushes to ("" = the backup)

    @classmethod
    def from_spec(cls, spec: dict[str, Any] | None) -> SessionsSpec:
        spec = spec or {}
        return cls(str(spec.get("backend") or "tmux"), str(spec.get("address") or "auto"),
                   tuple(sorted((str(k), float(v))
                                for k, v in (spec.get("resources") or {}).items())),
                   str(spec.get("workspace") or "shared"), str(spec.get("remote") or ""))

    @property
    def on_nodes(self) -> bool:
        """Agents work in clones on their own nodes, sharing no disk with the daemon."""
        return self.backend != "tmux" and self.workspace == "node"


@dataclass(frozen=True)
class WorldSpec:
    source: str
    branch: str = "main"
    push: bool = False
    runtime: Runtime = field(default_factory=Runtime)
    max_active: int = 4
    strategy: str = "squash"
    max_attempts: int = 3
    gates: tuple[Gate, ...] = ()
    stall_after: float = 900.0
    max_respawns: int = 3
    stale_after: float = 120.0
    suspend: bool = False
    forge_suspend: bool = False  # the forge starts no new merge; one in progress finishes
    batch_max: int = 8  # spec.forge.batch.max: MRs gated together at most; 1: one at a time
    batch_concurrency: int = 1  # spec.forge.batch.concurrency: prefixes probed at once
    retry_failed_after: float | None = None  # re-drive infrastructure failures after this
    per_writ: Limit | None = None  # spec.budget.perWrit
    per_day: Limit | None = None   # spec.budget.perDay
    sessions: SessionsSpec = field(default_factory=SessionsSpec)

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> WorldSpec:
        forge = spec.get("forge") or {}
        sentinel = spec.get("sentinel") or {}
        budget = spec.get("budget") or {}
        gates = tuple(
            Gate(g["name"], g["run"], parse_duration(g.get("timeout", "10m")))
            for g in forge.get("gates") or ()
        )
        return cls(
            source=spec["source"],
            branch=spec.get("branch", "main"),
            push=bool(spec.get("push", False)),
            runtime=Runtime.from_spec(spec.get("runtime")),
            max_active=int((spec.get("capacity") or {}).get("maxActive", 4)),
            strategy=forge.get("strategy", "squash"),
            max_attempts=int(forge.get("maxAttempts", 3)),
            gates=gates,
            stall_after=parse_duration(sentinel.get("stallAfter", "15m")),
            max_respawns=int(sentinel.get("maxRespawns", 3)),
            stale_after=parse_duration(sentinel.get("staleAfter", "2m")),
            suspend=bool(spec.get("suspend", False)),
            forge_suspend=bool(forge.get("suspend", False)),
            batch_max=int((forge.get("batch") or {}).get("max", 8)),
            batch_concurrency=int((forge.get("batch") or {}).get("concurrency", 1)),
            retry_failed_after=(parse_duration(sentinel["retryFailedAfter"])
                                if sentinel.get("retryFailedAfter") else None),
            per_writ=Limit.from_spec(budget.get("perWrit")),
            per_day=Limit.from_spec(budget.get("perDay")),
            sessions=SessionsSpec.from_spec(spec.get("sessions")),
        )


@dataclass(frozen=True)
class WritSpec:
    title: str
    description: str = ""
    kind: str = "code"
    priority: int = 2
    depends_on: tuple[str, ...] = ()
    runtime: Runtime | None = None
    suspend: bool = False
    budget: Limit | None = None  # spec.budget.max

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> WritSpec:
        return cls(
            title=spec["title"],
            description=spec.get("description", ""),
            kind=spec.get("kind", "code"),
            priority=int(spec.get("priority", 2)),
            depends_on=tuple(spec.get("dependsOn") or ()),
            runtime=Runtime.from_spec(spec["runtime"]) if spec.get("runtime") else None,
            suspend=bool(spec.get("suspend", False)),
            budget=Limit.from_spec((spec.get("budget") or {}).get("max")),
        )


@dataclass(frozen=True)
class CaravanSpec:
    phases: tuple[tuple[str, ...], ...]
    commissioned: bool = True

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> CaravanSpec:
        return cls(
            phases=tuple(tuple(p) for p in spec.get("phases") or ()),
            commissioned=bool(spec.get("commissioned", True)),
        )


@dataclass(frozen=True)
class EnvoySpec:
    """A persistent, human-directed agent: its persona, runtime, and where it works."""

    persona: str
    runtime: Runtime | None = None
    suspend: bool = False
    specs: bool = False              # work on the specs repository, not the world's

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> EnvoySpec:
        return cls(
            persona=spec["persona"],
            runtime=Runtime.from_spec(spec["runtime"]) if spec.get("runtime") else None,
            suspend=bool(spec.get("suspend", False)),
            specs=bool(spec.get("specs", False)),
        )


def split_ref(ref: str, world: str) -> tuple[str, str]:
    """A dependsOn entry (`name` or `other-world/name`) as (world, name)."""
    if "/" in ref:
        other, name = ref.split("/", 1)
        return other, name
    return world, ref
