"""Claude Code, unattended: the config directory sol owns for it, its hooks, its argv.

The interactive CLI stops at a dialog (onboarding, API-key approval, bypass mode,
folder trust) unless its config already holds the answers. sol gives each outpost and
envoy a config directory of its own (`CLAUDE_CONFIG_DIR`), seeded with those answers
and with trust for that one worktree, and a `settings.json` whose hooks tell sol what
the agent is doing (see `reconciler.drivers.hook`). The user's own `~/.claude*` is only read,
never written: their settings come from `$SOL_HOME/claude/settings.json` if they put
one there, their login from `~/.claude/.credentials.json` when no key is in the
environment.

The first prompt is never an argument (`ps` shows every argv): the assignment is in
`CLAUDE.local.md`, which the CLI loads, and the SessionStart hook prints `sol prime`.
The argument is a fixed sentence that tells the agent to begin.
"""

from __future__ import annotations

import os
import shlex
import shutil
import sys
from pathlib import Path
from typing import Any

from reconciler.drivers.hook import read, write

KICKOFF = ("Begin. Your standing orders and your assignment are in CLAUDE.local.md; "
           "`sol prime` prints the assignment again.")
RESUMED = ("Your previous session ended unexpectedly and sol restarted you in the same "
           "worktree. Continue where you left off; `sol prime` prints your assignment.")
ENVOY_KICKOFF = ("Read your standing orders in CLAUDE.local.md and your notes in $SOL_MEMORY "
                 "(notes.md, if it exists), then tell the person you are ready and wait "
                 "for their instructions.")

HOOK_EVENTS = ("SessionStart", "UserPromptSubmit", "Stop", "StopFailure", "Notification")
"""What sol listens to: a session begins, a turn begins, ends, fails, or waits."""

KEY_VAR = "SOL_ANTHROPIC_API_KEY"
"""Where the CLI's environment keeps the key for its `apiKeyHelper`."""

FIXED_ENV = {
    "DISABLE_AUTOUPDATER": "1",                      # a pinned CLI stays pinned
    "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",  # no telemetry or update checks
    "DISABLE_ERROR_REPORTING": "1",
}


def config_dir(station: Path) -> Path:
    """The CLI's config directory of one outpost or envoy (beside its worktree)."""
    return station / "claude"


def user_settings(home_root: Path) -> Path:
    """Where a user puts settings every agent's `settings.json` starts from."""
    return home_root / "claude" / "settings.json"


def root_refusal(sandboxed: bool) -> str | None:
    """Why claude would refuse to start here, or None."""
    if sandboxed or not hasattr(os, "geteuid") or os.geteuid() != 0:
        return None
    return ("claude refuses --dangerously-skip-permissions as root: run sol as a normal "
            "user, or, if sol runs inside a sandbox (a container or VM of its own), set "
            "`runtime: {name: claude, sandboxed: true}` on the world or writ")


def hook_command() -> str:
    """The command each hook runs: sol's own interpreter, so no PATH look-up and no
    click start-up on every turn."""
    return shlex.join([sys.executable, "-P", "-m", "reconciler.drivers.hook"])


def settings(home_root: Path, *, key_helper: bool) -> dict[str, Any]:
    """The user's settings (if any) with bypass mode accepted, sol's hooks added after
    their own and, when sol passes the API key, the helper that hands it over."""
    data = read(user_settings(home_root)) or {}
    data["skipDangerousModePermissionPrompt"] = True
    if key_helper and not data.get("apiKeyHelper"):
        data["apiKeyHelper"] = f'printf %s "${KEY_VAR}"'
    hooks = data.get("hooks") if isinstance(data.get("hooks"), dict) else {}
    entry = {"hooks": [{"type": "command", "command": hook_command(), "timeout": 60}]}
    for event in HOOK_EVENTS:
        existing = hooks.get(event) if isinstance(hooks.get(event), list) else []
        hooks[event] = [*existing, entry]
    data["hooks"] = hooks
    return data


def seed(directory: Path, *, worktree: Path, home_root: Path, env: dict[str, str]) -> None:
    """Make `directory` a config in which the CLI asks nothing: onboarding done, bypass
    mode accepted, `worktree` trusted, and the API key handed over by `apiKeyHelper`
    (a key in the CLI's own environment needs an approval that would be stored in its
    config; through the helper it is stored nowhere). Keeps what the CLI itself wrote
    there (its conversations and state) across restarts."""
    config = directory / ".claude.json"
    data = read(config) or {}
    data.update({"hasCompletedOnboarding": True, "bypassPermissionsModeAccepted": True,
                 "autoUpdates": False})
    projects = data.get("projects") if isinstance(data.get("projects"), dict) else {}
    project = projects.get(str(worktree)) if isinstance(projects.get(str(worktree)), dict) \
        else {}
    project.update({"hasTrustDialogAccepted": True, "hasCompletedProjectOnboarding": True})
    projects[str(worktree)] = project
    data["projects"] = projects
    write(config, data)
    write(directory / "settings.json",
                settings(home_root, key_helper=bool(env.get("ANTHROPIC_API_KEY"))))
    _carry_login(directory, env)


def _carry_login(directory: Path, env: dict[str, str]) -> None:
    """Without a key or token in the environment, use the user's own login (a copy)."""
    if env.get("ANTHROPIC_API_KEY") or env.get("CLAUDE_CODE_OAUTH_TOKEN") \
            or env.get("ANTHROPIC_AUTH_TOKEN"):
        return
    mine = Path(env.get("HOME") or Path.home()) / ".claude" / ".credentials.json"
    target = directory / ".credentials.json"
    if mine.is_file():
        try:
            shutil.copyfile(mine, target)
            target.chmod(0o600)
        except OSError:
            pass


def session_env(env: dict[str, str], directory: Path, *, sandboxed: bool) -> dict[str, str]:
    """The CLI's environment: the caller's, its own config dir, no outward traffic; the
    API key under another name, for `apiKeyHelper` (see seed); and a temporary directory
    of its own beside the config (0700): the CLI's scratch files (each Bash call's cwd
    file, tool outputs) name the user's projects and hold command output, and /tmp is
    readable by every local user."""
    scratch = directory.parent / "tmp"
    scratch.mkdir(mode=0o700, parents=True, exist_ok=True)
    out = {**env, **FIXED_ENV, "CLAUDE_CONFIG_DIR": str(directory), "TMPDIR": str(scratch)}
    key = out.pop("ANTHROPIC_API_KEY", "")
    if key:
        out[KEY_VAR] = key
    if sandboxed:
        out["IS_SANDBOX"] = "1"
    return out


def argv(model: str | None, *, prompt: str, resume: str | None = None) -> list[str]:
    """The CLI's argv; `resume` continues that conversation (a respawn after a crash)."""
    return ["claude", "--dangerously-skip-permissions",
            *(["--model", model] if model else []),
            *(["--resume", resume] if resume else []),
            prompt]
