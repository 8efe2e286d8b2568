"""Header lines in an agent's session log, one before each session's output.

An outpost's log collects every session it ever ran (casts, respawns, gate retries, later
writs), so without them `sol logs AGENT` reads as one run-on transcript. The header is
written before the session starts, so tmux's pipe-pane appends the session's output
after it.
"""

from __future__ import annotations

import os
from contextlib import suppress
from pathlib import Path

from reconciler.core.home import private
from reconciler.core.times import rfc3339

MARK = "===="


def header(world: str, writ: str, *, attempt: int, session: str, respawn: int,
           at: float) -> str:
    """`==== writ shop/add-x · attempt 2 · respawn 1 · session 1a2b3c · <RFC 3339> ====`
    (pure; `respawn` 0, a first start, is left out)."""
    parts = [f"writ {world}/{writ}", f"attempt {attempt}"]
    if respawn:
        parts.append(f"respawn {respawn}")
    parts += [f"session {session}", rfc3339(at)]
    return f"{MARK} {' · '.join(parts)} {MARK}"


def append(path: Path, line: str) -> None:
    """Append `line` on a line of its own (the last session may have ended mid-line).

    Best effort: a log that cannot be written is reported by the session start that
    follows, which needs the same file.
    """
    with suppress(OSError):
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
        with os.fdopen(fd, "r+b") as handle:
            size = os.fstat(fd).st_size
            handle.seek(max(0, size - 1))
            lead = b"\n" if size and handle.read(1) != b"\n" else b""
            handle.write(lead + line.encode("utf-8") + b"\n")
        private(path)
