"""The session launcher: how an agent's command and environment reach its session.

`ps` shows every process's argv to every local user, and a tmux server keeps the
command line of each session for its whole life. So a session's environment (API keys
included) and its command never go on tmux's command line: the caster writes them to a
shell file only the user can read (0600, in a 0700 directory), and the session runs
`env -i /bin/sh FILE`. The file deletes itself, exports the environment (`export` is a
shell builtin: no process sees it as arguments), changes to the worktree and execs the
agent. `env -i` starts it from an empty environment, so nothing of the tmux server's
own environment (an API key the agent must not see under that name, a stale `SOL_WRIT`)
leaks in. Every value is quoted with `shlex.quote`: data, never shell.

A shell, not a Python launcher: it costs a millisecond per session start, not a Python
start-up competing with the caster for the CPU.
"""

from __future__ import annotations

import os
import re
import shlex
from pathlib import Path

from reconciler.core.files import write_private

_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def script(path: Path, argv: list[str], env: dict[str, str], cwd: Path) -> str:
    """The launch file's text (pure): remove itself, export, cd, exec."""
    lines = [f"rm -f -- {shlex.quote(str(path))}"]
    for key, value in env.items():
        if not _KEY.match(key):
            raise ValueError(f"environment variable {key!r} is not a valid name")
        lines.append(f"export {key}={shlex.quote(value)}")
    lines.append(f"cd -- {shlex.quote(str(cwd))} || exit 127")
    lines.append("exec " + shlex.join(argv))
    return "\n".join(lines) + "\n"


def write(path: Path, argv: list[str], env: dict[str, str], cwd: Path) -> None:
    """Write a launch file atomically, readable by the user alone."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path.parent, 0o700)
    write_private(path, script(path, argv, env, cwd))  # no fsync: read at once


def command(path: Path) -> list[str]:
    """The argv a session runs: an empty environment, a shell, the file's path."""
    return ["env", "-i", "/bin/sh", str(path)]
