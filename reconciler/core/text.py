"""Text from manifests and agents made inert before a person sees it."""

from __future__ import annotations

import re

CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
"""What a terminal would obey rather than show: C0 but tab and newline, DEL, C1."""


def inert(text: str) -> str:
    """`text` with each control character written out (`\\x1b`), so titles, messages and
    gate output from manifests and agents cannot drive the operator's terminal (OSC 52
    clipboard writes, window titles, clearing the screen). Every human output uses it;
    -o json and -o yaml keep the data as it is."""
    return CONTROL.sub(lambda m: f"\\x{ord(m[0]):02x}", text)
