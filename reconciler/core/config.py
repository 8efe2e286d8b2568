"""The sphere config (`$SOL_HOME/sol.yaml`): optional knobs with sensible defaults.

The `notify` list is documented in reconciler/controllers/notify.py, which delivers it.
"""

from __future__ import annotations

import hashlib
import os
import re
import shlex
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError

from reconciler.core.durations import parse_seconds
from reconciler.core.errors import SolError
from reconciler.core.home import Home
from reconciler.core.schemas import validate_config

DEFAULT_EVENTS = frozenset({"degraded", "failed", "escalated", "merged", "rate-limited",
                            "budget-exceeded"})
"""What a plain-string `notify` entry is sent: the events a person must act on or hear."""
"""A plain-string entry hears `degraded` from the sentinel itself, at once (degraded.py),
so the outbox sends it the rest only: never the same news twice."""
ALL = "*"
COMMAND_TIMEOUT, WEBHOOK_TIMEOUT, MAX_TIMEOUT = 60.0, 10.0, 300.0
EVENT_RE = re.compile(r"^[a-z][a-z0-9-]*$")


@dataclass(frozen=True)
class NotifyTarget:
    """One `notify` entry: a command or a webhook, the event types it wants, a timeout."""

    kind: str                  # "command" | "webhook"
    address: str               # the command line, or the URL
    events: frozenset[str]     # event types (lowercase), or {"*"}
    timeout: float

    @property
    def key(self) -> str:
        """Names the target in the outbox, logs and events: the same entry is the same
        target. A webhook URL often carries its token (in the path, the query or as a
        user), so it is shown as scheme and host plus a hash of the whole URL."""
        if self.kind != "webhook":
            return f"{self.kind}:{self.address}"
        parts = urlsplit(self.address)
        digest = hashlib.sha256(self.address.encode()).hexdigest()[:8]
        host = parts.hostname or "?"
        port = f":{parts.port}" if parts.port else ""
        return f"webhook:{parts.scheme}://{host}{port}/…#{digest}"

    def wants(self, event_type: str) -> bool:
        """`*` is every event but the notifier's own failures (a failing target must not
        feed itself); list `notify-failed` explicitly to receive those."""
        if event_type in self.events:
            return True
        return ALL in self.events and event_type != "notify-failed"


@dataclass(frozen=True)
class Config:
    fetch_interval: float = 60.0      # seconds between fetches of a world's source
    resync: float = 30.0              # periodic full pass of the daemon
    stale_after: float | None = None  # overrides every world's sentinel.staleAfter
    rate_limit_hold: float = 60.0     # a rate limit whose error names no reset waits this long
    notify_targets: tuple[NotifyTarget, ...] = ()  # every notify entry (notify.py)
    extra: dict[str, Any] = field(default_factory=dict)


def load_config(home: Home) -> Config:
    """Read sol.yaml if present; env SOL_FETCH_INTERVAL etc. override (tests, demo)."""
    raw: dict[str, Any] = {}
    if home.config.exists():
        try:
            raw = YAML(typ="safe").load(home.config.read_text()) or {}
        except (YAMLError, OSError, UnicodeDecodeError) as exc:
            raise SolError(
                f"{home.config}: cannot read the sphere config ({exc}); fix or remove it"
            ) from exc
        if not isinstance(raw, dict):
            raise SolError(f"{home.config}: the sphere config must be a mapping")

    def duration(key: str, env: str, default: float) -> float:
        value = os.environ.get(env) or raw.get(key)
        if value is None:
            return default
        try:
            return parse_seconds(value)
        except ValueError as exc:
            raise SolError(f"{home.config}: {key}: {exc}") from exc

    targets = parse_notify(raw.get("notify"), str(home.config))
    validate_config(raw, home.config)
    return Config(
        fetch_interval=duration("fetchInterval", "SOL_FETCH_INTERVAL", 60.0),
        resync=duration("resync", "SOL_RESYNC", 30.0),
        stale_after=(duration("staleAfter", "SOL_STALE_AFTER", 0.0)
                     if (os.environ.get("SOL_STALE_AFTER") or "staleAfter" in raw) else None),
        rate_limit_hold=duration("rateLimitHold", "SOL_RATE_LIMIT_HOLD", 60.0),
        notify_targets=targets,
        extra=raw,
    )


def _entries(value: Any) -> list[Any]:
    if value is None:
        return []
    return [value] if isinstance(value, (str, dict)) else value


def parse_notify(value: Any, where: str) -> tuple[NotifyTarget, ...]:
    """The `notify` list as targets; SolError (one sentence naming the entry) otherwise."""
    if value is not None and not isinstance(value, (str, dict, list)):
        raise SolError(f"{where}: notify must be a list of commands or of mappings with "
                       "`command` or `webhook`")
    targets: dict[str, NotifyTarget] = {}
    for index, entry in enumerate(_entries(value)):
        target = _target(entry, f"{where}: notify entry {index + 1}")
        if target.key in targets:
            raise SolError(f"{where}: notify entry {index + 1} repeats {target.address!r}; "
                           "list each command or webhook once, with all its events")
        targets[target.key] = target
    return tuple(targets.values())


def _target(entry: Any, name: str) -> NotifyTarget:
    if isinstance(entry, str):
        return NotifyTarget("command", _command(entry, name), DEFAULT_EVENTS, COMMAND_TIMEOUT)
    if not isinstance(entry, dict):
        raise SolError(f"{name} ({entry!r}) must be a command string or a mapping with "
                       "`command` or `webhook`")
    unknown = sorted(set(entry) - {"command", "webhook", "events", "timeout"})
    if unknown:
        raise SolError(f"{name} has unknown key(s) {', '.join(unknown)}: use command or "
                       "webhook, events and timeout")
    if ("command" in entry) == ("webhook" in entry):
        raise SolError(f"{name} must have exactly one of `command` or `webhook`")
    if "command" in entry:
        kind, address = "command", _command(entry["command"], name)
        default = COMMAND_TIMEOUT
    else:
        kind, address, default = "webhook", _url(entry["webhook"], name), WEBHOOK_TIMEOUT
    return NotifyTarget(kind, address, _events(entry.get("events"), name),
                        _timeout(entry.get("timeout"), default, name))


def _command(value: Any, name: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise SolError(f"{name}: the command must be a non-empty string")
    try:
        shlex.split(value)
    except ValueError as exc:
        raise SolError(f"{name}: the command {value!r} cannot be parsed ({exc}); fix its "
                       "quoting") from exc
    return value


def _url(value: Any, name: str) -> str:
    parts = urlsplit(value) if isinstance(value, str) else None
    if parts is None or parts.scheme not in ("http", "https") or not parts.netloc:
        raise SolError(f"{name}: the webhook {value!r} must be an http:// or https:// URL")
    return str(value)


def _events(value: Any, name: str) -> frozenset[str]:
    if value is None:
        return DEFAULT_EVENTS
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value:
        raise SolError(f"{name}: events must be a non-empty list of event types, like "
                       "[merged, failed], or [\"*\"] for all")
    events = {str(v).strip().lower() for v in value}
    bad = sorted(e for e in events if e != ALL and not EVENT_RE.match(e))
    if bad:
        raise SolError(f"{name}: {bad[0]!r} is not an event type; use names as "
                       "`sol events` shows them (merged, failed, escalated, ...) or \"*\"")
    return frozenset(events)


def _timeout(value: Any, default: float, name: str) -> float:
    if value is None:
        return default
    try:
        seconds = parse_seconds(value)
    except ValueError as exc:
        raise SolError(f"{name}: timeout: {exc}") from exc
    if not 0 < seconds <= MAX_TIMEOUT:
        raise SolError(f"{name}: timeout must be more than 0 and at most 5m")
    return seconds
