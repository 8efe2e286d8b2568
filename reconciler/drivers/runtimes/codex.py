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
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

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


def find_session(directory: Path, worktree: Path, since: float) -> str | None:
    """The id of the newest CLI session in `worktree` written since `since`, or None."""
    want = str(Path(worktree).absolute())
    found: list[tuple[float, str]] = []
    for path in (directory / "sessions").glob("*/*/*/rollout-*.jsonl"):
        try:
            mtime = path.stat().st_mtime
            if mtime < since:
                continue
            with path.open(encoding="utf-8") as handle:
                meta = json.loads(handle.readline())
        except (OSError, ValueError):
            continue
        payload = meta.get("payload") if isinstance(meta, dict) else None
        if isinstance(payload, dict) and payload.get("cwd") == want and payload.get("id"):
            found.append((mtime, str(payload["id"])))
    return max(found)[1] if found else None


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
