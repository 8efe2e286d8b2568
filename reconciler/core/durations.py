"""Durations as people write them (`30s`, `10m`, `2h`) and back, in one place.

Manifests, sol.yaml, gate timeouts, personas, tethers and sentinel messages all show or
read durations; one parser and one formatter keep `10m` reading the same everywhere.
"""

from __future__ import annotations

import re

DURATION_RE = re.compile(r"^([0-9]+)(s|m|h)$")
"""The manifest's notation: a whole number and one unit (the schema's pattern too)."""

UNITS = {"h": 3600, "m": 60, "s": 1}


def parse_duration(text: str) -> float:
    """`30s`, `10m`, `2h` to seconds; ValueError (one sentence) otherwise."""
    match = DURATION_RE.match(str(text))
    if not match:
        raise ValueError(f"bad duration {text!r}: use a number and s, m or h, like 30s or 10m")
    return int(match.group(1)) * UNITS[match.group(2)]


def parse_seconds(value: object) -> float:
    """A duration (`30s`, `10m`) or a plain number of seconds (`90`, `1.5`), as sol.yaml
    and environment overrides may give either; ValueError otherwise."""
    text = str(value)
    return float(text) if text.replace(".", "", 1).isdigit() else parse_duration(text)


def format_duration(seconds: float) -> str:
    """600 -> 10m, 7200 -> 2h, 90 -> 90s, 0.5 -> 0.5s: the manifest's notation where it
    fits, so a message quotes a timeout as its manifest wrote it. Pass int(x) to show an
    elapsed time in whole seconds."""
    if seconds != int(seconds):
        return f"{seconds:g}s"
    whole = int(seconds)
    for unit in ("h", "m"):
        size = UNITS[unit]
        if whole >= size and whole % size == 0:
            return f"{whole // size}{unit}"
    return f"{whole}s"
