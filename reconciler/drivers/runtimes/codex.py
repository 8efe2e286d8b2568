"""Codex, unattended: the CODEX_HOME sol owns for it, its config, its argv.

The interactive CLI shows a ChatGPT sign-in screen with the built-in provider (even with
an API key), asks before trusting a folder, and asks before each command unless told
not to. sol gives every agent of a sphere one `CODEX_HOME` (`$SOL_HOME/codex`, 0700)
whose `config.toml` answers all of that: a provider `sol` that passes the user's
`OPENAI_BASE_URL` through and reads the key from `OPENAI_API_KEY` (in the session's
environment, never a file or an argument), no approvals, no sandbox, no login shell
(it would reset PATH), no update check, no background daemon, and every live worktree
trusted. The user's own `~/.codex` is never read or written.

Codex writes each session's whole environment (API key included) to
`shell_snapshots/` with the process umask, so the session runs under umask 077.
A respawn of the same attempt continues the CLI's own conversation (`codex resume
<id>`), found in the session JSONL whose `cwd` is the worktree; a new attempt starts
a fresh one.

Codex has no hooks, so what Claude's hooks tell the sentinel is read from the tail of
the same rollout (`activity`): a turn starts with a `task_started` event and ends with
`task_complete`, which carries the turn's `error` when the CLI gave up on the API (after
its own retries: a rate limit ends the turn, the TUI stays up and waits for input).
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from reconciler.core.files import write_private
from reconciler.core.locks import flock
from reconciler.drivers.hook import read, write

KICKOFF = ("Begin. Your standing orders and your assignment are in AGENTS.override.md; "
           "`sol prime` prints the assignment again.")
RESUMED = ("Your previous session ended unexpectedly and sol restarted you in the same "
           "worktree. Continue where you left off; `sol prime` prints your assignment.")
DEFAULT_BASE_URL = "https://api.openai.com/v1"
KEY_VAR = "OPENAI_API_KEY"
CONVERSATION = "codex.json"
"""Beside the tether: which writ and attempt the CLI last started for, and when."""
TAIL_BYTES = 64 * 1024
"""How much of a rollout's end `activity` reads: the last turn's events are there."""
RATE_LIMITED = re.compile(r"\b(?:429|529)\b|rate.?limit|too many requests|overloaded"
                          r"|usage.?limit", re.I)
"""An error that means "wait" (the limit resets), not "stuck": 0.171.0 says `exceeded
retry limit, last status: 429 Too Many Requests` with `http_status_code` 429."""


def _quote(value: str) -> str:
    """A TOML basic string (JSON's escapes are TOML's for these)."""
    return json.dumps(value)


def render(base_url: str, worktrees: list[str]) -> str:
    """config.toml's text (pure): the provider passthrough and the trusted worktrees."""
    lines = [
        "# Written by sol for the agents it runs; rewritten on every cast.",
        'model_provider = "sol"',
        'approval_policy = "never"',
        'sandbox_mode = "danger-full-access"',
        "allow_login_shell = false",
        "check_for_update_on_startup = false",
        "",
        "[model_providers.sol]",
        'name = "sol"',
        f"base_url = {_quote(base_url)}",
        'wire_api = "responses"',
        f'env_key = "{KEY_VAR}"',
        "",
        "[features]",
        "daemon_auto_start = false",
    ]
    for path in sorted(set(worktrees)):
        lines += ["", f"[projects.{_quote(path)}]", 'trust_level = "trusted"']
    return "\n".join(lines) + "\n"


def trusted(config: Path) -> list[str]:
    """The worktrees a config already trusts."""
    import tomllib

    try:
        data = tomllib.loads(config.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    projects = data.get("projects")
    return [str(p) for p in projects] if isinstance(projects, dict) else []


def seed(directory: Path, *, worktree: Path, env: dict[str, str]) -> None:
    """Make `directory` a CODEX_HOME in which the CLI asks nothing and trusts `worktree`
    (and every other worktree that still exists). Keeps what the CLI wrote there."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(directory, 0o700)
    (directory / "shell_snapshots").mkdir(mode=0o700, exist_ok=True)
    base_url = env.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL
    config = directory / "config.toml"
    with flock(directory / ".config.lock"):  # casts run in parallel
        keep = [p for p in trusted(config) if Path(p).is_dir()]
        text = render(base_url, [*keep, str(Path(worktree).absolute())])
        try:
            if config.read_text(encoding="utf-8") == text:
                return
        except OSError:
            pass
        write_private(config, text)


def session_env(env: dict[str, str], directory: Path) -> dict[str, str]:
    """The CLI's environment: the caller's (the key stays in OPENAI_API_KEY, which the
    launch file exports) and its CODEX_HOME."""
    return {**env, "CODEX_HOME": str(directory)}


def _rollouts(directory: Path, since: float, begun: float) -> Iterator[tuple[float, Path]]:
    """Each rollout written since `since` (its mtime), looking only in the day directories
    (`sessions/YYYY/MM/DD`) from the day before `begun` on: a resumed conversation's file
    stays in the day it began, and the day may be local time."""
    first = datetime.fromtimestamp(max(begun - 86400, 0), UTC).timetuple()[:3]
    root = directory / "sessions"

    def numbered(path: Path) -> list[tuple[int, Path]]:
        try:
            return [(int(p.name), p) for p in path.iterdir() if p.name.isdigit()]
        except OSError:
            return []

    for year, ypath in numbered(root):
        if year < first[0]:
            continue
        for month, mpath in numbered(ypath):
            if (year, month) < first[:2]:
                continue
            for day, dpath in numbered(mpath):
                if (year, month, day) < first:
                    continue
                for path in dpath.glob("rollout-*.jsonl"):
                    try:
                        mtime = path.stat().st_mtime
                    except OSError:
                        continue
                    if mtime >= since:
                        yield mtime, path


def _meta(path: Path) -> dict[str, Any]:
    """The `session_meta` payload on a rollout's first line ({} when unreadable)."""
    try:
        with path.open(encoding="utf-8") as handle:
            meta = json.loads(handle.readline())
    except (OSError, ValueError):
        return {}
    payload = meta.get("payload") if isinstance(meta, dict) else None
    return payload if isinstance(payload, dict) else {}


def rollout(directory: Path, worktree: Path, since: float, begun: float | None = None
            ) -> tuple[Path, str] | None:
    """The newest rollout (and its session id) whose `cwd` is `worktree`, written since
    `since`; `begun` (default `since`) is when its conversation began."""
    want = str(Path(worktree).absolute())
    for _, path in sorted(_rollouts(directory, since, since if begun is None else begun),
                          reverse=True):
        payload = _meta(path)
        if payload.get("cwd") == want and payload.get("id"):
            return path, str(payload["id"])
    return None


def find_session(directory: Path, worktree: Path, since: float) -> str | None:
    """The id of the newest CLI session in `worktree` written since `since`, or None."""
    found = rollout(directory, worktree, since)
    return found[1] if found else None


def resume_id(station: Path, directory: Path, worktree: Path, writ: str,
              attempt: int | str) -> str | None:
    """The conversation to continue when this writ's attempt ran here before; else
    None, and the start of a new one is written down."""
    seen = read(station / CONVERSATION) or {}
    if seen.get("writ") == writ and str(seen.get("attempt")) == str(attempt):
        found = find_session(directory, worktree, float(seen.get("since") or 0) - 1)
        if found:
            return found
    station.mkdir(mode=0o700, parents=True, exist_ok=True)
    write(station / CONVERSATION, {"writ": writ, "attempt": str(attempt), "since": time.time()})
    return None


def argv(model: str | None, *, prompt: str, resume: str | None = None) -> list[str]:
    """The CLI's argv, under umask 077 (see the module docstring). No manifest text is
    shell here: the model and prompt are positional parameters of a fixed script."""
    flags = ["--dangerously-bypass-approvals-and-sandbox",
             *(["-m", model] if model else [])]
    command = ["codex", "resume", *flags, resume] if resume else ["codex", *flags]
    return ["/bin/sh", "-c", 'umask 077 && exec "$@"', "codex", *command, prompt]


# ---- what the agent is doing, from its rollout -------------------------------------


@dataclass(frozen=True)
class Activity:
    """What a rollout's last turn event says (the hooks' word, for a CLI without hooks)."""

    state: str                    # working | idle | rate-limited | error
    at: float                     # the event's timestamp
    error: str = ""               # the HTTP status of a failed turn (else codex's kind)
    message: str = ""
    until: float | None = None    # when the exhausted limit resets, if the rollout says


def _timestamp(value: object) -> float | None:
    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def _find(obj: object, key: str) -> object:
    """The first value of `key` anywhere in nested dicts (codex nests the status in the
    error kind: `{"response_too_many_failed_attempts": {"http_status_code": 429}}`)."""
    if isinstance(obj, dict):
        if key in obj:
            return obj[key]
        for value in obj.values():
            found = _find(value, key)
            if found is not None:
                return found
    return None


def _reset(limits: object) -> float | None:
    """When an exhausted window of a `token_count`'s `rate_limits` resets (epoch s)."""
    if not isinstance(limits, dict):
        return None
    ends = [float(w["resets_at"]) for w in (limits.get("primary"), limits.get("secondary"))
            if isinstance(w, dict) and isinstance(w.get("resets_at"), int | float)
            and float(w.get("used_percent") or 0) >= 100]
    return max(ends) if ends else None


def _ended(error: object, at: float, reset: float | None) -> Activity:
    """The state after a `task_complete`: idle, or its error classified."""
    if not error:
        return Activity("idle", at)
    message = str(error.get("message") or "") if isinstance(error, dict) else str(error)
    info = error.get("codex_error_info") if isinstance(error, dict) else None
    status = _find(info, "http_status_code")
    kind = next(iter(info), "") if isinstance(info, dict) else str(info or "")
    code = str(status) if status is not None else kind or "error"
    limited = RATE_LIMITED.search(f"{code} {kind} {message}") is not None
    return Activity("rate-limited" if limited else "error", at, code, message[:500],
                    reset if limited and reset is not None and reset > at else None)


def state_of(lines: Iterable[bytes | str]) -> Activity | None:
    """Pure: the state the last turn event among these rollout lines leaves the agent in;
    None when there is none. A line that does not parse (the cut first one of a tail, a
    last one still being written) is skipped."""
    state: Activity | None = None
    reset: float | None = None
    for line in lines:
        try:
            obj = json.loads(line)
        except ValueError:
            continue
        if not isinstance(obj, dict) or obj.get("type") != "event_msg" \
                or not isinstance(payload := obj.get("payload"), dict):
            continue
        kind, at = payload.get("type"), _timestamp(obj.get("timestamp"))
        if at is None:
            continue
        if kind == "task_started":
            state = Activity("working", at)
        elif kind == "token_count":
            reset = _reset(payload.get("rate_limits")) or reset
        elif kind == "task_complete":
            state = _ended(payload.get("error"), at, reset)
        elif kind == "turn_aborted":
            state = Activity("idle", at)
    return state


def tail(path: Path, size: int = TAIL_BYTES) -> list[bytes]:
    """The whole lines among the last `size` bytes of a file (the cut first one dropped;
    a last one without its newline yet is kept for `state_of` to skip)."""
    with path.open("rb") as handle:
        end = handle.seek(0, os.SEEK_END)
        start = max(0, end - size)
        handle.seek(start)
        lines = handle.read(end - start).split(b"\n")
    return lines[1:] if start else lines


def activity(directory: Path, worktree: Path, since: float, begun: float | None = None
             ) -> Activity | None:
    """What the Codex session in `worktree` that started at `since` is doing, from the
    tail of its rollout; None before it wrote one. Costs a stat per rollout of the days
    since `begun` (its conversation's start, default `since`) and one read: it runs on
    every sentinel pass, and keeps nothing between passes."""
    found = rollout(directory, worktree, since, begun)
    if found is None:
        return None
    try:
        return state_of(tail(found[0]))
    except OSError:
        return None
