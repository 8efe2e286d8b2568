"""The session launcher: what every agent session runs first.

`ps` shows every process's argv to every local user, and a tmux server keeps the
command line of each session for its whole life. So a session's environment (API keys
included) and its command never go on tmux's command line: the caster writes them to a
file only the user can read (0600, in a 0700 directory), and the session runs
`python -m reconciler.launcher FILE`, which reads the file, deletes it, and execs the
agent with that environment. Only the path of the file is ever an argument.

This module imports nothing but the standard library: it runs in every session start.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from contextlib import suppress
from pathlib import Path
from typing import NoReturn


def write(path: Path, argv: list[str], env: dict[str, str], cwd: Path) -> None:
    """Write a launch file atomically, readable by the user alone."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path.parent, 0o700)
    data = json.dumps({"argv": argv, "env": env, "cwd": str(cwd)})
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".launch-")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            os.fchmod(handle.fileno(), 0o600)
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with suppress(OSError):
            os.unlink(tmp)
        raise


def command(path: Path) -> list[str]:
    """The argv a session runs: this module with the file's path, nothing secret."""
    return [sys.executable, "-P", "-m", "reconciler.launcher", str(path)]


def main(args: list[str]) -> NoReturn:
    if len(args) != 1:
        print("usage: python -m reconciler.launcher LAUNCH_FILE", file=sys.stderr)
        sys.exit(2)
    path = Path(args[0])
    try:
        spec = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        print(f"sol: cannot read the launch file {path}: {exc}; the session was started "
              "without it, so sol will start it again", file=sys.stderr)
        sys.exit(127)
    with suppress(OSError):
        path.unlink()
    argv, env = list(spec["argv"]), dict(spec["env"])
    try:
        os.chdir(spec["cwd"])
        os.execvpe(argv[0], argv, env)
    except OSError as exc:
        print(f"sol: cannot start {argv[0]}: {exc.strerror or exc}", file=sys.stderr)
        sys.exit(127)


if __name__ == "__main__":
    main(sys.argv[1:])
