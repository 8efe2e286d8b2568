"""Private files written atomically: a reader sees the old file or the new, never half.

Launch files, hook state and Codex's config hold secrets or name the user's projects:
each is written 0600 to a temporary file beside it, then renamed over it.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


def write_private(path: Path, text: str, *, durable: bool = False) -> None:
    """Replace `path` with `text`, readable by the user alone; `durable` fsyncs first
    (for state that must survive a crash, not for a file read at once)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}-")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            os.fchmod(handle.fileno(), 0o600)
            handle.write(text)
            if durable:
                handle.flush()
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
