"""Agent sessions: the one interface sol uses to run agents, and its tmux backend.

This is the only module that speaks tmux. Every session lives on the tmux server owned
by one SOL_HOME (`tmux -L <Home.socket_name>`), never on the user's default server, and
every tmux client we run has TMUX and TMUX_PANE removed from its environment so nothing
of the caller's own tmux leaks in.

Nothing secret on a command line: the agent's argv and environment go to a 0600 launch
shell file (`reconciler.drivers.launcher`) that deletes itself before it execs the agent, so tmux's
command line (kept by the server for the session's life, and shown by `ps`) holds only
that file's path. Text typed into a session goes through a tmux paste buffer loaded from
stdin, never through send-keys arguments.

Quoting, in one place: the launcher's argv is joined with `shlex.join` and run by
`/bin/sh -c exec ...` (tmux execs a multi-argument command directly, so the user's
login shell never parses it); every free-form tmux argument goes through `_arg`
(tmux's client splits commands on an argument that ends in `;`); arguments tmux expands
as formats go through `_literal_format` (and pipe-pane's also through strftime).
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:  # libtmux is imported when a session is first driven, not by every
    from libtmux.common import tmux_cmd  # `sol` command that merely names one

from reconciler.core.errors import SolError
from reconciler.core.home import private
from reconciler.drivers import launcher
from reconciler.drivers.processes import descendants, end, end_marked, session_mark

HISTORY_LIMIT = 100_000
"""Scrollback lines kept per pane, so recent_output and `sol attach` see long runs."""

WIDTH, HEIGHT = 200, 50
"""Size of a detached session: wide enough that agent output is not wrapped to bits."""

PASTE_SETTLE = 0.3
"""Seconds between a paste and its Enter: a TUI that reads a paste in several reads
would otherwise take the Enter as part of the paste."""

_STATE = ("#{pid}\t#{pane_dead}\t#{pane_dead_time}\t#{pane_pid}\t#{pane_dead_status}"
          "\t#{pane_dead_signal}")
"""One pane's state in one format: server pid, dead, when tmux saw the exit, pane pid,
and how the process ended (exit status, or the signal that killed it)."""

DEAD_NOTICE = "Pane is dead"
"""The line remain-on-exit adds below a dead pane's output: `Pane is dead (signal 9, ...)`."""

_RESTART_BACKOFF = (0.01, 0.02, 0.05, 0.1, 0.2, 0.4, 0.8)
"""Waits before retrying a start that met the server on its way out (see start)."""

_NAME = re.compile(r"^[A-Za-z0-9_-]+$")
_ENV_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_LEAKY = ("TMUX", "TMUX_PANE")
_ENV_LOCK = threading.Lock()


@dataclass(frozen=True)
class Ending:
    """How a session's process ended, as tmux recorded it: `status 1` or `signal 9`."""

    status: int | None = None
    signal: int | None = None
    lost: str = ""  # the machine it ran on went away with it (a remote backend's node)

    def __str__(self) -> str:
        if self.lost:
            return f"its node {self.lost} was lost"
        return f"signal {self.signal}" if self.signal is not None else f"status {self.status}"


def last_words(output: str) -> str:
    """The last non-blank line a session's program printed, from captured pane text:
    tmux's own dead-pane notice below it is not the program's."""
    for line in reversed(output.splitlines()):
        if line.strip() and not line.startswith(DEAD_NOTICE):
            return line.strip()
    return ""


class SessionBackend(Protocol):
    """What the reconcilers need from a session engine; tmux is the first backend."""

    def start(self, name: str, argv: list[str], *, cwd: Path, env: dict[str, str],
              log: Path, absent: bool = False) -> None:
        """Run argv in a new detached session; all its output is appended to `log`."""
        ...

    def stop(self, name: str) -> None:
        """End the session; idempotent, no error if it is absent."""
        ...

    def is_alive(self, name: str) -> bool:
        """The session exists and its process has not exited."""
        ...

    def exists(self, name: str) -> bool:
        """The session exists, possibly with a dead process kept for inspection."""
        ...

    def list(self, prefix: str = "sol-") -> dict[str, bool]:
        """Every session whose name starts with prefix, mapped to alive; one cheap call."""
        ...

    def recent_output(self, name: str, lines: int = 50) -> str:
        """The last lines the session printed, also after its process exited."""
        ...

    def ending(self, name: str) -> Ending | None:
        """How the session's process ended; None while it runs, when there is no session,
        or when the exit is not recorded (yet)."""
        ...

    def send_text(self, name: str, text: str) -> None:
        """Type text literally into the session, then Enter."""
        ...

    def pane_pid(self, name: str) -> int | None:
        """The pid of the session's process, None if absent or exited."""
        ...

    def attach_argv(self, name: str) -> list[str]:
        """The argv a CLI execs to join the session interactively."""
        ...

    def kill_server(self) -> None:
        """End every session of this sphere at once (tests, full teardown)."""
        ...


def _arg(value: str) -> str:
    """Protect one argv element from tmux's client, which ends a command at a trailing ';'.

    tmux turns a trailing `\\;` back into `;`, so `a;` is passed as `a\\;`.
    """
    return value[:-1] + "\\;" if value.endswith(";") else value


def _literal_format(value: str) -> str:
    """Text that tmux format-expands (cwd, run-shell, pipe-pane) but must keep verbatim."""
    return value.replace("#", "##")


def _tmux_quoted(value: str) -> str:
    """value as one double-quoted word of tmux's command language (for set-hook)."""
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("$", "\\$")
    return f'"{escaped}"'


def _not_running(stderr: str) -> bool:
    """tmux's ways of saying the server (and so every session) is not there."""
    return (
        "no server running" in stderr
        or "server exited" in stderr
        or ("error connecting to" in stderr and "No such file or directory" in stderr)
    )


def _server_exiting(result: tmux_cmd) -> bool:
    """tmux exits with its last session; a client that connects meanwhile gets this."""
    return any("server exited unexpectedly" in line for line in result.stderr)


def _absent(stderr: str) -> bool:
    return (_not_running(stderr) or "can't find session" in stderr
            or "no current target" in stderr)


@contextmanager
def _clean_tmux_env() -> Iterator[None]:
    """Hide TMUX/TMUX_PANE from the tmux client (libtmux runs it with os.environ).

    Only touches os.environ when sol itself runs inside tmux, and puts them back after.
    """
    if not any(key in os.environ for key in _LEAKY):
        yield
        return
    with _ENV_LOCK:
        saved = {key: os.environ.pop(key) for key in _LEAKY if key in os.environ}
        try:
            yield
        finally:
            os.environ.update(saved)


def tmux_version() -> tuple[int, int] | None:
    """(major, minor) of the installed tmux, None if missing or unreadable (sol doctor)."""
    binary = shutil.which("tmux")
    if binary is None:
        return None
    try:
        out = subprocess.run([binary, "-V"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.search(r"(\d+)\.(\d+)", out.stdout)
    return (int(match.group(1)), int(match.group(2))) if match else None


class TmuxSessions(SessionBackend):
    """Agent sessions on the private tmux server of one SOL_HOME.

    Each session has one window with `remain-on-exit on`: a process that exits (or is
    killed) leaves a dead pane with its output, so the sentinel can tell "died" from
    "never existed" and show why. Every byte the pane prints is appended to the log
    passed to start(), so that file's mtime is the time of the last output: the
    sentinel uses it for stall detection without asking tmux anything.

    With hook_file, tmux touches that file whenever a pane dies or a session closes,
    so a daemon watching it learns of deaths without polling. The hook is a wake-up,
    not the truth: on some tmux builds a death reaches the hook only once sol next
    looks at the session (see _state), so a daemon keeps its periodic resync.
    """

    def __init__(self, socket_name: str, hook_file: Path | None = None,
                 launch_dir: Path | None = None) -> None:
        self.socket_name = socket_name
        self.hook_file = hook_file
        self.launch_dir = launch_dir or Path(tempfile.gettempdir()) / (
            f"sol-launch-{os.getuid()}-{socket_name}")
        import libtmux

        self._server = libtmux.Server(socket_name=socket_name)

    def _run(self, *args: str) -> tmux_cmd:
        """One tmux invocation on our server (args may chain commands with ';')."""
        from libtmux.exc import TmuxCommandNotFound

        try:
            with _clean_tmux_env():
                return self._server.cmd(*args)
        except TmuxCommandNotFound as exc:
            raise SolError(
                "tmux is not installed or not on PATH; install tmux 3.2 or newer "
                "and check with `sol doctor`"
            ) from exc
        except OSError as exc:
            raise SolError(f"cannot run tmux: {exc}; check with `sol doctor`") from exc

    def _failed(self, action: str, result: tmux_cmd) -> SolError:
        detail = " ".join(result.stderr) or f"exit status {result.returncode}"
        return SolError(
            f"tmux could not {action} on server {self.socket_name}: {detail}; "
            "check tmux with `sol doctor`"
        )

    def _pane(self, name: str) -> tuple[bool, int, Ending | None] | None:
        """(dead, pid, ending) of the session's pane in one call, None if there is no
        session."""
        result = self._run("list-panes", "-t", _target(name), "-F", _STATE)
        if result.returncode != 0:
            if _absent(" ".join(result.stderr)):
                return None
            raise self._failed(f"inspect session {name}", result)
        fields = (result.stdout[0] if result.stdout else "").split("\t")
        return self._state(fields) if len(fields) >= 6 else None

    def _state(self, fields: list[str]) -> tuple[bool, int, Ending | None]:
        """(dead, pane pid, ending) from a _STATE line, reaping a death tmux has not
        processed.

        tmux builds linked with libutempter (Debian, Ubuntu) can miss a pane's SIGCHLD
        (tmux/tmux#311, #4559): the pane reads as dead (its pty closed) but tmux never
        reaps it, so it records no exit status and fires no pane-died hook. A dead pane
        without a dead time is that case (or one tmux is about to handle); a SIGCHLD to
        the server makes it reap and fire the hook. It costs a signal, no process.
        """
        server_pid, dead, dead_time, pane_pid, status, signum = fields[:6]
        if dead == "1" and not dead_time and server_pid.isdigit():
            with suppress(OSError):
                os.kill(int(server_pid), signal.SIGCHLD)
        ending = (Ending(signal=int(signum)) if signum.isdigit() else
                  Ending(status=int(status)) if status.isdigit() else None)
        return dead == "1", int(pane_pid) if pane_pid.isdigit() else 0, ending

    def start(self, name: str, argv: list[str], *, cwd: Path, env: dict[str, str],
              log: Path, absent: bool = False) -> None:
        """Start argv detached in session `name`, replacing a dead session of that name.

        Options, output pipe and hooks are set in the same tmux invocation as
        new-session: tmux runs them before it handles the child's exit, so even a
        command that exits at once leaves a dead pane and a log. (tmux 3.3 can still
        drop what a process prints in the last milliseconds before it exits, a
        pty race seen about once in 150 instant exits.)

        Replacing the only (dead) session, or starting right after kill_server, can
        meet the old server while it exits; that start is retried briefly.
        """
        _check_name(name)
        if not argv or not all(isinstance(part, str) for part in argv):
            raise SolError(f"session {name} needs a command (a non-empty list of strings)")
        bad = [key for key in env if not _ENV_KEY.match(key)]
        if bad:
            raise SolError(
                f"session {name} cannot take environment variable {bad[0]!r}; "
                "use letters, digits and underscores"
            )
        if not cwd.is_dir():
            raise SolError(f"session {name} cannot start in {cwd}: no such directory")
        try:
            log.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            log.touch(mode=0o600)
            private(log)
        except OSError as exc:
            raise SolError(f"cannot create log directory {log.parent}: {exc.strerror}") from exc
        # `absent`: the caller listed the sessions under a lock that every starter takes,
        # so it knows there is none of this name: one tmux call fewer per cast.
        pane = None if absent else self._pane(name)
        if pane is not None:
            if not pane[0]:
                raise SolError(
                    f"session {name} is already running; stop it before starting it again"
                )
            self.stop(name)
        target = _target(name)
        pipe = _literal_format("cat >> " + shlex.quote(str(log))).replace("%", "%%")
        args = ["set-option", "-g", "history-limit", str(HISTORY_LIMIT), ";",
                "new-session", "-d", "-s", name, "-x", str(WIDTH), "-y", str(HEIGHT),
                "-c", _arg(_literal_format(str(cwd.absolute())))]
        launch_file = self.launch_dir / f"{name}.json"
        launcher.write(launch_file, argv,
                       {k: v for k, v in env.items() if k not in _LEAKY}, cwd.absolute())
        args += ["/bin/sh", "-c", _arg("exec " + shlex.join(launcher.command(launch_file))),
                 ";",
                 "set-option", "-w", "-t", target, "remain-on-exit", "on", ";",
                 "pipe-pane", "-o", "-t", target, _arg(pipe)]
        args += self._hook_args()
        result = self._run(*args)
        for delay in _RESTART_BACKOFF:
            if result.returncode == 0 or not _server_exiting(result):
                break
            time.sleep(delay)
            result = self._run(*args)
        if result.returncode != 0:
            with suppress(OSError):
                launch_file.unlink()
            if any("duplicate session" in line for line in result.stderr):
                raise SolError(
                    f"session {name} is already running; stop it before starting it again"
                )
            raise self._failed(f"start session {name}", result)

    def _hook_args(self) -> list[str]:
        """Chained set-hook commands; set-hook replaces index 0, so repeating is harmless.

        Riding on every new-session costs no extra tmux call and re-arms a server that
        exited (tmux ends with its last session) and was started again.
        """
        if self.hook_file is None:
            return []
        touch = _literal_format("touch " + shlex.quote(str(self.hook_file)))
        command = _arg("run-shell -b " + _tmux_quoted(touch))
        return [";", "set-hook", "-g", "pane-died", command,
                ";", "set-hook", "-g", "session-closed", command]

    def stop(self, name: str) -> None:
        """kill-session, then whatever the session's process started that outlived it:
        a CLI's tool commands run in sessions of their own and would go on working in
        the worktree of a writ that was stopped."""
        _check_name(name)
        pid = self.pane_pid(name)
        tree = descendants(pid) if pid else []
        mark = session_mark(pid) if pid else None
        result = self._run("kill-session", "-t", f"={name}")
        if result.returncode != 0 and not _absent(" ".join(result.stderr)):
            raise self._failed(f"stop session {name}", result)
        if tree:
            end(tree, after=pid)
        if mark:  # a tool command started after the tree was listed, re-parented since
            end_marked(mark)

    def is_alive(self, name: str) -> bool:
        _check_name(name)
        pane = self._pane(name)
        return pane is not None and not pane[0]

    def exists(self, name: str) -> bool:
        _check_name(name)
        return self._pane(name) is not None

    def list(self, prefix: str = "sol-") -> dict[str, bool]:
        """One `list-sessions` call: the sentinel runs this often and idle must be cheap."""
        result = self._run("list-sessions", "-F", _STATE + "\t#{session_name}")
        if result.returncode != 0:
            if _not_running(" ".join(result.stderr)):
                return {}
            raise self._failed("list sessions", result)
        sessions: dict[str, bool] = {}
        for line in result.stdout:
            fields = line.split("\t", 6)
            if len(fields) == 7 and fields[6].startswith(prefix):
                sessions[fields[6]] = not self._state(fields)[0]
        return sessions

    def recent_output(self, name: str, lines: int = 50) -> str:
        """The last `lines` non-trailing-blank lines of the pane, dead or alive."""
        _check_name(name)
        if lines < 1:
            return ""
        result = self._run("capture-pane", "-p", "-J", "-t", _target(name), "-S", f"-{lines}")
        if result.returncode != 0:
            if _absent(" ".join(result.stderr)):
                raise SolError(f"session {name} does not exist; its log may still be on disk")
            raise self._failed(f"read session {name}", result)
        text = [line.rstrip() for line in result.stdout]
        while text and not text[-1]:
            text.pop()
        return "\n".join(text[-lines:])

    def ending(self, name: str) -> Ending | None:
        """From tmux's own record of the exit (#{pane_dead_status}, #{pane_dead_signal}),
        not from the notice it prints into the pane."""
        _check_name(name)
        pane = self._pane(name)
        return pane[2] if pane is not None and pane[0] else None

    def send_text(self, name: str, text: str) -> None:
        """Paste text into the session, then press Enter.

        The text reaches tmux on stdin (`load-buffer -`), never as an argument, and is
        pasted bracketed (`paste-buffer -p`) when the program asked for it, so a TUI takes
        newlines in it as text and the Enter that follows as "submit".
        """
        _check_name(name)
        pane = self._pane(name)
        if pane is None:
            raise SolError(f"session {name} does not exist; cannot send it text")
        if pane[0]:
            raise SolError(f"session {name} has exited; cannot send it text")
        target, buffer = _target(name), f"sol-send-{name}"
        if text:
            loaded = self._stdin(text, "load-buffer", "-b", buffer, "-")
            if loaded.returncode != 0:
                raise SolError(f"tmux could not load text for session {name}: "
                               f"{loaded.stderr.strip() or loaded.returncode}")
            result = self._run("paste-buffer", "-d", "-p", "-b", buffer, "-t", target)
            if result.returncode != 0:
                raise self._failed(f"send text to session {name}", result)
            time.sleep(PASTE_SETTLE)
        result = self._run("send-keys", "-t", target, "Enter")
        if result.returncode != 0:
            raise self._failed(f"send text to session {name}", result)

    def _stdin(self, text: str, *args: str) -> subprocess.CompletedProcess[str]:
        """One tmux command that reads `text` on stdin (libtmux passes no stdin)."""
        binary = shutil.which("tmux")
        if binary is None:
            raise SolError("tmux is not installed or not on PATH; install tmux 3.2 or newer")
        env = {k: v for k, v in os.environ.items() if k not in _LEAKY}
        try:
            return subprocess.run([binary, "-L", self.socket_name, *args], input=text,
                                  capture_output=True, text=True, env=env, timeout=30)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise SolError(f"cannot run tmux: {exc}; check with `sol doctor`") from exc

    def pane_pid(self, name: str) -> int | None:
        _check_name(name)
        pane = self._pane(name)
        return None if pane is None or pane[0] or not pane[1] else pane[1]

    def attach_argv(self, name: str) -> list[str]:
        """`tmux attach` on our server; TMUX is unset so it also works from inside tmux."""
        _check_name(name)
        binary = shutil.which("tmux")
        if binary is None:
            raise SolError("tmux is not installed or not on PATH; install tmux 3.2 or newer")
        return ["env", "-u", "TMUX", "-u", "TMUX_PANE", binary, "-L", self.socket_name,
                "attach-session", "-t", f"={name}"]

    def kill_server(self) -> None:
        result = self._run("kill-server")
        if result.returncode != 0 and not _not_running(" ".join(result.stderr)):
            raise self._failed("kill the server", result)


def _target(name: str) -> str:
    """The exact-match target of a session's pane: a bare name would also match prefixes."""
    return f"={name}:"


def _check_name(name: str) -> None:
    if not _NAME.match(name):
        raise SolError(
            f"session name {name!r} is not valid; use letters, digits, '-' and '_'"
        )
