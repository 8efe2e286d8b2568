"""Reading token usage from what the agents already write: their CLIs' transcripts.

Where: every outpost and envoy has its own Claude Code config dir (`<station>/claude`,
see runtimes/claude.py), so its transcripts are `<station>/claude/projects/**/*.jsonl`.
Codex writes `CODEX_HOME/sessions/YYYY/MM/DD/rollout-*.jsonl`; sol reads both a
station's `codex/sessions` and the sphere's `Home.codex_home/sessions`.

What: a Claude line with `message.usage` is one response (input, output, cache
creation, cache read tokens; `message.model`); the same `message.id` is written on
several lines (one per content block) and again in a resumed conversation, so it is
counted once, first seen wins (as ccusage does). A Codex `token_usage_record` line is
one response (`response_id`, `usage`); its `input_tokens` are the whole prompt, so
input = input - cached - cache written, cacheRead = cached, cacheWrite = written
(`cache_write_input_tokens`, 0 from OpenAI); the model is the last `turn_context`'s.
(Checked against the rollouts codex-cli 0.171.0 writes in tests/drivers/test_codex_real.py.)

How: per file, the offset after the last complete line, with the inode, size and mtime
seen. Unchanged (inode, size, mtime) costs one stat. A partial last line waits for its
newline. A file whose inode changed, that shrank below the offset, or whose byte before
the offset is no longer a newline (rewritten) is read again from 0; the per-id dedupe
of ledger_store makes that count nothing twice.

How much: a pass given a budget (the ledger reconciler's, PASS_BYTES) reads at most that
many bytes across files, smallest backlog first, each file to the last complete line
within what is left; a line longer than what is left is still read whole, so every file
moves on. A file stopped short is recorded with size = offset, which no stat matches, so
the next pass reads on from there. `sync` without a budget (`sol cost`) reads it all.

Attribution: the transcript's cwd (Claude: each line; Codex: `session_meta`) is a
worktree, `home.worktree(world, agent)` or an envoy's, which names the world and agent
(or envoy); else the station the file lives under. The writ is the branch the CLI
records (`gitBranch` / `git.branch`, `sol/<writ>`), else the tether's. The attempt is the
tether's when the ledger first reads the file, kept with the file: a conversation
belongs to one attempt (a new attempt starts a new conversation, a respawn resumes the
same attempt's), and the ledger runs each pass, well within an attempt's life. A file
first read after its attempt ended (the daemon was down across a gate retry) is given
the attempt current then; the writ stays right.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any

from reconciler.core import ledger_store
from reconciler.core.errors import SolError
from reconciler.core.home import Home
from reconciler.core.ledger_store import FileState, Usage
from reconciler.core.store import Store
from reconciler.core.tether import read as read_tether

CLAUDE, CODEX = "claude", "codex"
BRANCH_PREFIX = "sol/"
PASS_BYTES = 32 * 1024 * 1024
"""The most one ledger pass reads (plus at most one long line): 1 GB of transcripts read
at once would hold the consul, and with it dispatch, for 40 s or more; in passes of
~1.5 s (tests/bench/bench_ledger.py) the backlog is read with dispatch running between."""


@dataclass(frozen=True)
class Station:
    """Where an agent lives: an outpost (agent) or an envoy, and its worktree."""

    world: str
    agent: str
    envoy: str
    root: Path
    worktree: Path


@dataclass(frozen=True)
class Seen:
    """A transcript as one stat saw it."""

    path: str
    source: str
    inode: int
    size: int
    mtime_ns: int


def stations(home: Home) -> list[Station]:
    """Every outpost and envoy directory of every world."""
    found: list[Station] = []
    worlds = home.root / "worlds"
    for world in _dirs(worlds):
        for agent in _dirs(home.outposts(world.name)):
            found.append(Station(world.name, agent.name, "", agent,
                                 home.worktree(world.name, agent.name)))
        for envoy in _dirs(world / "envoys"):
            found.append(Station(world.name, "", envoy.name, envoy, envoy / "worktree"))
    return found


def _dirs(path: Path) -> list[Path]:
    try:
        return sorted(Path(e.path) for e in os.scandir(path) if e.is_dir(follow_symlinks=False))
    except OSError:
        return []


def _walk(root: Path, suffix: str, prefix: str = "") -> Iterator[os.DirEntry[str]]:
    """Files under root ending in suffix (and starting with prefix), depth first."""
    try:
        entries = list(os.scandir(root))
    except OSError:
        return
    for entry in entries:
        if entry.is_dir(follow_symlinks=False):
            yield from _walk(Path(entry.path), suffix, prefix)
        elif entry.name.endswith(suffix) and entry.name.startswith(prefix):
            yield entry


def transcripts(home: Home, places: list[Station] | None = None) -> list[Seen]:
    """Every transcript sol's agents wrote, with its stat: the cheap half of a pass."""
    roots: list[tuple[Path, str, str]] = []
    for station in stations(home) if places is None else places:
        roots.append((station.root / "claude" / "projects", CLAUDE, ""))
        roots.append((station.root / "codex" / "sessions", CODEX, "rollout-"))
    roots.append((home.codex_home / "sessions", CODEX, "rollout-"))
    seen: list[Seen] = []
    for root, source, prefix in roots:
        for entry in _walk(root, ".jsonl", prefix):
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            seen.append(Seen(entry.path, source, st.st_ino, st.st_size, st.st_mtime_ns))
    return seen


def unchanged(seen: Seen, state: FileState | None) -> bool:
    """Nothing new to read: same file, same size, same mtime as when last read."""
    return state is not None and (state.inode, state.size, state.mtime_ns) == (
        seen.inode, seen.size, seen.mtime_ns)


# ---- reading one file ----------------------------------------------------------------


def _timestamp(value: Any, default: float) -> float:
    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return default


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


class Attribution:
    """Maps a transcript's cwd and branch to world, writ, attempt, agent and envoy."""

    def __init__(self, home: Home, places: list[Station]) -> None:
        self.home = home
        self.by_worktree = sorted(((str(s.worktree), s) for s in places),
                                  key=lambda p: -len(p[0]))
        self.by_root = {str(s.root): s for s in places}

    def station(self, cwd: str, path: str) -> Station | None:
        for worktree, station in self.by_worktree:
            if cwd == worktree or cwd.startswith(worktree + os.sep):
                return station
        for root, station in self.by_root.items():
            if path.startswith(root + os.sep):
                return station
        return None

    def tether_of(self, station: Station) -> tuple[str, int | None]:
        """The writ and attempt the station's tether holds now ("" and None if none)."""
        if not station.agent:
            return "", None
        try:
            tether = read_tether(self.home.tether(station.world, station.agent))
        except SolError:
            return "", None
        return tether.writ, tether.attempt

    def stamp(self, usage: Usage, cwd: str, branch: str, context: dict[str, Any]) -> Usage:
        """The usage with its attribution; the first sight of a file fixes its attempt."""
        station = self.station(cwd, usage.file)
        if station is None:
            return usage
        if "attempt" not in context:
            context["writ"], context["attempt"] = self.tether_of(station)
        writ = branch[len(BRANCH_PREFIX):] if branch.startswith(BRANCH_PREFIX) else ""
        if not writ and station.agent:
            writ = str(context.get("writ") or "")
        attempt = context.get("attempt") if writ and writ == context.get("writ") else None
        return replace(usage, world=station.world, agent=station.agent, envoy=station.envoy,
                       writ=writ, attempt=attempt)


def _claude(obj: dict[str, Any], path: str, now: float, who: Attribution,
            context: dict[str, Any]) -> Usage | None:
    message = obj.get("message")
    if not isinstance(message, dict) or not isinstance(message.get("usage"), dict):
        return None
    usage = message["usage"]
    ident = message.get("id") or obj.get("uuid")
    if not ident or not isinstance(usage.get("input_tokens"), int):
        return None
    record = Usage(CLAUDE, str(ident), _timestamp(obj.get("timestamp"), now),
                   str(message.get("model") or ""), input=_int(usage.get("input_tokens")),
                   output=_int(usage.get("output_tokens")),
                   cache_write=_int(usage.get("cache_creation_input_tokens")),
                   cache_read=_int(usage.get("cache_read_input_tokens")), file=path)
    return who.stamp(record, str(obj.get("cwd") or ""), str(obj.get("gitBranch") or ""),
                     context)


def _codex(obj: dict[str, Any], path: str, now: float, who: Attribution,
           context: dict[str, Any]) -> Usage | None:
    kind, payload = obj.get("type"), obj.get("payload")
    if not isinstance(payload, dict):
        return None
    if kind == "session_meta":
        git = payload.get("git") if isinstance(payload.get("git"), dict) else {}
        context["cwd"] = str(payload.get("cwd") or "")
        context["branch"] = str(git.get("branch") or "")
    elif kind == "turn_context":
        context["model"] = str(payload.get("model") or context.get("model") or "")
        context["cwd"] = str(payload.get("cwd") or context.get("cwd") or "")
    elif kind == "token_usage_record":
        usage = payload.get("usage") if isinstance(payload.get("usage"), dict) else None
        ident = payload.get("response_id") or obj.get("response_id")
        if usage is None or not ident:
            return None
        cached = _int(usage.get("cached_input_tokens"))
        written = _int(usage.get("cache_write_input_tokens"))
        record = Usage(CODEX, str(ident), _timestamp(obj.get("timestamp"), now),
                       str(payload.get("model") or context.get("model") or ""),
                       input=max(0, _int(usage.get("input_tokens")) - cached - written),
                       output=_int(usage.get("output_tokens")), cache_write=written,
                       cache_read=cached, file=path)
        return who.stamp(record, str(context.get("cwd") or ""),
                         str(context.get("branch") or ""), context)
    return None


PARSERS = {CLAUDE: (_claude, b'"usage"'), CODEX: (_codex, b'"type"')}


def read(store: Store, who: Attribution, seen: Seen, state: FileState | None,
         now: float, limit: int | None = None) -> int | None:
    """Read what `seen` holds past `state` (at most `limit` bytes, to a line end, or one
    whole line when the first is longer) and record it; returns the bytes read, None if
    another reader recorded this file first (it is looked at again on the next pass)."""
    start = 0
    context: dict[str, Any] = {}
    if state is not None and state.inode == seen.inode and state.offset <= seen.size:
        start, context = state.offset, dict(state.context)
    elif state is not None:
        context = {k: v for k, v in state.context.items() if k in ("writ", "attempt")}
    try:
        with open(seen.path, "rb") as handle:
            st = os.fstat(handle.fileno())  # before reading: what is appended later is
            if start:                       # seen as a change on the next pass
                handle.seek(start - 1)
                if handle.read(1) != b"\n":  # rewritten under us: read it all again
                    start = 0
                    context = {k: v for k, v in context.items() if k in ("writ", "attempt")}
                    handle.seek(0)
            data = handle.read() if limit is None else handle.read(max(1, limit))
            if limit is not None and len(data) >= limit and b"\n" not in data:
                data += handle.readline()  # one line longer than the share: read it whole
    except OSError:
        return None
    end = data.rfind(b"\n") + 1
    parse, needle = PARSERS[seen.source]
    records: list[Usage] = []
    for line in data[:end].split(b"\n"):
        if needle not in line:
            continue
        try:
            obj = json.loads(line)
        except ValueError:
            continue  # a line the CLI garbled: skipped, never retried
        if isinstance(obj, dict):
            record = parse(obj, seen.path, now, who, context)
            if record is not None:
                records.append(record)
    short = start + len(data) < st.st_size  # stopped by the limit: size = offset, so the
    size = start + end if short else st.st_size  # next stat differs and it reads on
    new = FileState(seen.path, seen.source, st.st_ino, size, st.st_mtime_ns, start + end,
                    context)
    expect = state.offset if state is not None else None
    return len(data) if ledger_store.advance(store, new, expect, records) else None


def backlog(seen: Seen, state: FileState | None) -> int:
    """Bytes of `seen` not read yet (all of it when it is new or was replaced)."""
    if state is None or state.inode != seen.inode or state.offset > seen.size:
        return seen.size
    return seen.size - state.offset


def sync(home: Home, store: Store, now: float, only: set[str] | None = None,
         budget: int | None = None) -> int:
    """Read every transcript that changed since it was last read (or those in `only`),
    at most `budget` bytes in all (None: everything); returns how many files were read.
    Smallest backlog first: an agent's few new lines are counted at once even while a
    large backlog is read over several passes."""
    places = stations(home)
    who = Attribution(home, places)
    known = ledger_store.files(store)
    changed = [s for s in transcripts(home, places)
               if (only is None or s.path in only) and not unchanged(s, known.get(s.path))]
    changed.sort(key=lambda s: backlog(s, known.get(s.path)))
    done = 0
    left = budget
    for seen in changed:
        if left is not None and left <= 0:
            break
        got = read(store, who, seen, known.get(seen.path), now, left)
        if got is not None:
            done += 1
            left = None if left is None else left - got
    return done
