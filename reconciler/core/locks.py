"""Advisory file locks under run/: serialise work that two processes might both start."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def flock(path: Path, *, blocking: bool = True) -> Iterator[bool]:
    """Hold an exclusive lock on `path`; yields False (without waiting) if `blocking` is
    off and another process holds it. The lock dies with the process, never stale."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)
