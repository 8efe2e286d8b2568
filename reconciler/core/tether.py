"""The tether: an agent's assignment in one plain JSON file (DESIGN section 4).

With its worktree, the tether is all an agent needs: `sol prime` renders it without the
database, the daemon or the forge (invariant 2). It is written atomically (temp file,
fsync, rename, fsync of the directory), so a crash leaves either the old tether or the
new one, never a torn file.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from reconciler.core import schemas
from reconciler.core.durations import format_duration
from reconciler.core.errors import SolError

VERSION = 1
RECOVER = "run `sol apply` to re-cast the assignment from the database"


@dataclass(kw_only=True)
class Tether:
    """One agent's assignment; `generation` is the writ spec hash it was cast for."""

    world: str
    writ: str
    agent: str
    title: str
    description: str
    kind: str
    branch: str
    base: str
    attempt: int
    generation: str
    session: str
    runtime: dict[str, Any] = field(default_factory=dict)
    gates: list[dict[str, Any]] = field(default_factory=list)
    feedback: str | None = None
    created_at: float = field(default_factory=time.time)
    updated_at: float = field(default_factory=time.time)
    version: int = VERSION

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, ensure_ascii=False) + "\n"

    @classmethod
    def from_dict(cls, data: object) -> Tether:
        """Build from parsed JSON checked against schemas/tether.json; unknown keys are
        ignored, bad or missing ones refused with a SolError saying which."""
        return cls(**_checked(data))


KNOWN = frozenset(f.name for f in fields(Tether))
_VALID: dict[Path, str] = {}
"""Per tether file, the last text that passed the schema: a tether is read per agent per
pass and rarely changes, and jsonschema costs several times the read itself."""


def _checked(data: object) -> dict[str, Any]:
    """The known keys of data, after the format version and the schema; SolError says
    what is wrong. The version comes first: a newer format may not fit this schema."""
    if not isinstance(data, dict):
        raise SolError("the tether is not a JSON object")
    version = data.get("version", VERSION)
    if isinstance(version, int) and version > VERSION:
        raise SolError(f"the tether has format version {version}, newer than this sol "
                       f"understands ({VERSION}); upgrade sol")
    found = schemas.findings("tether", data)
    if found:
        raise SolError(found[0].said("the tether", "the tether's "))
    return {k: v for k, v in data.items() if k in KNOWN}


def write(path: Path, tether: Tether) -> None:
    """Replace the tether at path atomically and durably."""
    text = tether.to_json()
    temp: str | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
        temp = None
        _fsync_dir(path.parent)
    except OSError as exc:
        raise SolError(f"cannot write the tether at {path}: {exc.strerror or exc}; "
                       "check the disk and the permissions of that directory") from exc
    finally:
        if temp is not None:
            Path(temp).unlink(missing_ok=True)


def _fsync_dir(directory: Path) -> None:
    """Make a rename or unlink in directory survive a power cut."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read(path: Path) -> Tether:
    """The tether at path; every failure is one SolError naming the file and the fix."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise SolError(f"no tether at {path}: this session has no assignment; "
                       f"{RECOVER}, or run sol prime inside an agent session") from exc
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise SolError(f"cannot read the tether at {path}: {reason}; {RECOVER}") from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SolError(f"the tether at {path} is corrupt (line {exc.lineno}: {exc.msg}); "
                       f"{RECOVER}") from exc
    if _VALID.get(path) == text:  # unchanged since it last passed: skip the schema
        return Tether(**{k: v for k, v in data.items() if k in KNOWN})
    try:
        tether = Tether.from_dict(data)
    except SolError as exc:
        raise SolError(f"the tether at {path} is unusable: {exc.message}; {RECOVER}") from exc
    _VALID[path] = text
    return tether


def clear(path: Path) -> None:
    """Remove the tether; a no-op when there is none."""
    try:
        path.unlink()
    except FileNotFoundError:
        return
    except OSError as exc:
        raise SolError(f"cannot remove the tether at {path}: {exc.strerror}; "
                       "check the permissions of that directory") from exc
    _fsync_dir(path.parent)


def _duration(seconds: object) -> str:
    """600 -> 10m, 90 -> 90s: the manifest's own notation where it fits."""
    if isinstance(seconds, str):
        return seconds
    if not isinstance(seconds, int | float) or isinstance(seconds, bool):
        return "the default"
    return format_duration(int(seconds))


def render(t: Tether, *, worktree: Path | None = None) -> str:
    """The assignment `sol prime` prints: who and where you are, the work, how to finish."""
    lines = [
        f"You are {t.agent}, an agent of sol in world {t.world}.",
        f"Your assignment is writ {t.writ} ({t.kind}), attempt {t.attempt}.",
    ]
    if worktree is not None:
        lines.append(f"Your worktree is {worktree}.")
    lines += [
        "",
        f"Writ:    {t.writ}",
        f"Title:   {t.title}",
        f"Kind:    {t.kind}",
        f"Branch:  {t.branch} (forked from {t.base[:12] or 'the target branch'})",
        f"Attempt: {t.attempt}",
        "",
        "Description:",
        t.description.rstrip("\n"),
        "",
    ]
    if t.kind == "analysis":
        lines.append("This is an analysis writ: nothing is merged and no gates run.")
    elif t.gates:
        lines.append("Before your work lands, the forge runs these gates on it:")
        lines += [f"  - {g.get('name')}: {g.get('run')} (timeout {_duration(g.get('timeout'))})"
                  for g in t.gates]
    else:
        lines.append("The forge runs no gates in this world: your commits land as they are.")
    if t.feedback:
        lines += [
            "",
            "The previous attempt was sent back. What went wrong:",
            t.feedback.rstrip("\n"),
            "",
            f"Your earlier commits are still on {t.branch}: fix the problem, do not restart.",
        ]
    lines += [
        "",
        f"When you are done: commit your work on {t.branch} and run `sol resolve`.",
        'If you are stuck: run `sol escalate "why you are stuck"`.',
    ]
    return "\n".join(lines) + "\n"
