"""The sphere config (`$SOL_HOME/sol.yaml`): optional knobs with sensible defaults."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError

from .errors import SolError
from .home import Home
from .model import parse_duration


@dataclass(frozen=True)
class Config:
    fetch_interval: float = 60.0      # seconds between fetches of a world's source
    resync: float = 30.0              # periodic full pass of the daemon
    stale_after: float | None = None  # overrides every world's sentinel.staleAfter
    notify: tuple[str, ...] = ()      # commands run with an event's text (degraded mode, ...)
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
            return float(value) if str(value).replace(".", "", 1).isdigit() else parse_duration(
                str(value))
        except ValueError as exc:
            raise SolError(f"{home.config}: {key}: {exc}") from exc

    notify = raw.get("notify") or ()
    if isinstance(notify, str):
        notify = (notify,)
    return Config(
        fetch_interval=duration("fetchInterval", "SOL_FETCH_INTERVAL", 60.0),
        resync=duration("resync", "SOL_RESYNC", 30.0),
        stale_after=(duration("staleAfter", "SOL_STALE_AFTER", 0.0)
                     if (os.environ.get("SOL_STALE_AFTER") or "staleAfter" in raw) else None),
        notify=tuple(str(n) for n in notify),
        extra=raw,
    )
