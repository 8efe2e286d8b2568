"""Commands about the daemon: up, down, reconcile (`sol resume` is in operate.py).

`sol up` is idempotent: when the prefect already runs it says so (pid, log) and exits 0,
or 1 if that prefect watches other paths than the ones asked for (stop it first).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click

from reconciler.cli.common import git_source, load_specs, specs_option, sphere
from reconciler.core.errors import SolError
from reconciler.core.home import Home
from reconciler.core.plan import summary
from reconciler.daemon.procs import STOP_GRACE, is_ours, read_pid, wait_unlocked
from reconciler.drivers.processes import pid_alive
from reconciler.specs.sources import PREFIX, find, is_git, poll_interval


def start_detached(home: Home, paths: Sequence[Path | str], timeout: float = 30.0, *,
                   web: Sequence[str] = ()) -> dict[str, Any]:
    """Start the prefect in its own session, stdio to logs/prefect.out; return its ready
    info (pid, paths, log) once it reports ready. `web` is ADDR [--allow-remote] of the
    web page child."""
    from reconciler.daemon.prefect import ALREADY_RUNNING, already_running, child_env, running

    home.init()
    if running(home) is None:  # never the ready file of a prefect that just won a race
        with contextlib.suppress(OSError):
            (home.run / "prefect.ready").unlink()  # left by a prefect that was killed
    with open(home.logs / "prefect.out", "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "reconciler.daemon.prefect", "daemon",
             *(["--web", *web] if web else []), *map(str, paths)],
            cwd=home.root, env=child_env(home), stdin=subprocess.DEVNULL, stdout=out,
            stderr=out, start_new_session=True, close_fds=True)
    deadline = time.monotonic() + timeout
    while True:
        try:
            info = json.loads((home.run / "prefect.ready").read_text())
        except (OSError, ValueError):
            info = {}
        if info.get("pid") == proc.pid:
            return info
        code = proc.poll()
        if code == ALREADY_RUNNING:
            raise LostRace(already_running(home))
        if code is not None:
            raise SolError(f"the prefect exited at start with code {code}: "
                           f"{_tail(home.logs / 'prefect.out')}; see {home.logs}")
        if time.monotonic() > deadline:
            raise SolError(f"the prefect (pid {proc.pid}) did not report ready within "
                           f"{timeout:g}s; see {home.logs / 'prefect.log'}")
        time.sleep(0.05)


class LostRace(SolError):
    """Another `sol up` started the prefect between our look and our start."""


def _tail(path: Path) -> str:
    try:
        lines = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return "no output"
    return lines[-1] if lines else "no output"


def stop(home: Home, timeout: float = STOP_GRACE + 5) -> int | None:
    """Stop the prefect and its reconcilers, never the agents; the pid stopped, or None.

    SIGTERM first (it stops its children itself); after `timeout`, SIGKILL it and every
    reconciler whose pid file is still there. Done when its lock is free.
    """
    from reconciler.daemon.prefect import running

    lock = home.run / "prefect.lock"
    info = running(home)
    if info is None:
        for name in ("prefect.pid", "prefect.ready"):
            with contextlib.suppress(OSError):
                (home.run / name).unlink()
        return None
    pid = info.get("pid") or read_pid(home.run / "prefect.pid")
    if pid and is_ours(pid, home):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    if wait_unlocked(lock, timeout) and (not pid or _wait_gone(pid, 5.0)):
        return pid
    for path in [home.run / "prefect.pid", *home.run.glob("*.pid")]:
        other = read_pid(path)
        if other and is_ours(other, home):
            with contextlib.suppress(ProcessLookupError):
                os.kill(other, signal.SIGKILL)
    if not wait_unlocked(lock, 5.0):
        raise SolError(f"the prefect (pid {pid}) did not stop; check `ps` for "
                       f"reconciler.daemon.prefect and its log {home.logs / 'prefect.log'}")
    return pid


def _wait_gone(pid: int, timeout: float) -> bool:
    """The lock is freed a moment before the process ends: wait for the end too."""
    deadline = time.monotonic() + timeout
    while pid_alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def watch_paths(paths: tuple[str, ...]) -> list[Path | str]:
    """-f PATH.., else $SOL_SPECS or ./specs if it exists, else nothing to watch. A git
    source is kept as one value with its repository made absolute (the daemon's cwd is
    SOL_HOME), for the prefect to poll."""
    given = list(paths) or [os.environ.get("SOL_SPECS") or "specs"]
    git = git_source(given)
    if git is not None:
        return [str(git)]  # not a Path: that would collapse the // of a URL
    if paths:
        return [Path(p).absolute() for p in paths]
    default = Path(given[0])
    return [default.absolute()] if default.exists() else []


def _meaning(value: str) -> str:
    """What a watched value means: the prefect may have made a git source look like a path
    below its cwd (`/cwd/git+...`, a URL's // collapsed), so undo that."""
    at = 0 if is_git(value) else value.find(f"/{PREFIX}") + 1
    if at or is_git(value):
        source = find(value[at:])
        return str(source) if source else value
    return str(Path(value))


def _same(watched: list[str], wanted: Sequence[Path | str]) -> bool:
    return [_meaning(w) for w in watched] == [_meaning(str(w)) for w in wanted]


def _wait_ready(home: Home, timeout: float = 30.0) -> dict[str, Any]:
    """The running prefect's ready info, once it has written it."""
    from reconciler.daemon.prefect import running

    deadline = time.monotonic() + timeout
    while True:
        info = running(home) or {}
        if "paths" in info or time.monotonic() > deadline:
            return info
        time.sleep(0.05)


def _where(home: Home, info: dict[str, Any]) -> str:
    return (f"pid {info.get('pid') or '?'} in {home.run / 'prefect.pid'}, "
            f"log {home.logs / 'prefect.log'}")


WEB_WAIT = 15.0     # seconds `sol up --web` waits for the page to answer


def _web_url(home: Home, timeout: float) -> str:
    """The web child's URL (token included) once it has written run/web.url."""
    from reconciler.daemon.web import URL_FILE

    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(OSError):
            if url := (home.run / URL_FILE).read_text().strip():
                return url
        if time.monotonic() > deadline:
            raise SolError(f"the prefect runs, but its web page did not come up within "
                           f"{timeout:g}s; see {home.logs / 'web.log'}")
        time.sleep(0.05)


@click.command()
@specs_option()
@click.option("--web", "web", metavar="ADDR",
              help="Also serve the dashboard as a read-only web page on HOST:PORT "
                   "(port 0 picks one); the URL with its token is printed.")
@click.option("--allow-remote", is_flag=True,
              help="Let --web bind an address other machines can reach.")
def up(paths: tuple[str, ...], web: str | None, allow_remote: bool) -> None:
    """Start the prefect daemon: it runs the reconcilers and applies PATH as it changes.

    Already running: says so (pid, log) and exits 0, or 1 if it watches other paths.

    \b
    sol up -f specs                   # watch ./specs
    sol up -f git+https://example.org/org/plans.git@main#specs
    sol up --web 127.0.0.1:8080       # and the dashboard's web page
    """
    from reconciler.daemon.prefect import running
    from reconciler.daemon.web import URL_FILE, parse_address

    home = Home.from_env()
    home.init()
    wanted = watch_paths(paths)
    if allow_remote and not web:
        raise SolError("--allow-remote goes with --web ADDR")
    if web:
        parse_address(web, allow_remote=allow_remote)  # refused here, not in the child
    info = running(home)
    if info is not None:
        if "paths" not in info:
            info = _wait_ready(home)  # it is starting: compare with what it will watch
        click.echo(f"The prefect is already running ({_where(home, info)}).")
        if web and not info.get("web"):
            raise SolError("the running prefect serves no web page; run `sol down`, then "
                           f"`sol up --web {web}`")
        if web:
            click.echo(f"Dashboard: {_web_url(home, WEB_WAIT)}")
        watched = [str(p) for p in info.get("paths") or []]
        if paths and not _same(watched, wanted):
            shown = ", ".join(map(_meaning, watched)) or "nothing"
            raise SolError(f"the running prefect watches {shown}, not "
                           f"{', '.join(map(str, wanted))}; run `sol down`, then `sol up` again")
        return
    for path in wanted:
        if not is_git(path) and not Path(path).exists():
            click.echo(f"warning: {path} does not exist yet; the prefect applies it once it "
                       "appears", err=True)
    if web:
        with contextlib.suppress(OSError):
            (home.run / URL_FILE).unlink()  # left by a web child that was killed
    try:
        info = start_detached(home, wanted, web=[web, *(["--allow-remote"] if allow_remote
                                                        else [])] if web else ())
    except LostRace:
        # Several `sol up` at once: one prefect wins, the others found it running.
        found = _wait_ready(home)
        click.echo(f"The prefect is already running ({_where(home, found)}).")
        return
    click.echo(f"Prefect started ({_where(home, info)}).")
    if web:
        click.echo(f"Dashboard: {_web_url(home, WEB_WAIT)} (read-only; the token is also "
                   f"in {home.run / URL_FILE})")
    if wanted and is_git(wanted[0]):
        click.echo(f"Polling {wanted[0]} every {poll_interval():g}s.")
        return
    click.echo(f"Watching {', '.join(map(str, wanted))}." if wanted else
               "Watching no specs directory (none given and no ./specs): "
               "change desired state with `sol apply -f PATH`.")


@click.command()
def down() -> None:
    """Stop the prefect and its reconcilers; agent sessions keep running.

    \b
    sol down                         # agents keep working
    """
    home = Home.from_env()
    pid = stop(home)
    if pid is None:
        click.echo("The prefect is not running.")
        return
    click.echo(f"Prefect stopped (pid {pid}); agent sessions keep running.")


@click.command()
@specs_option()
@click.option("--once", is_flag=True, help="One pass of every reconciler, then exit.")
def reconcile(paths: tuple[str, ...], once: bool) -> None:
    """Run the reconcile loop in the foreground (Ctrl-C stops it).

    \b
    sol reconcile --once -f specs    # one pass, then exit
    """
    from reconciler.daemon import prefect
    from reconciler.daemon.prefect import already_running, running

    if once:
        sp = sphere()
        if paths:
            from reconciler.specs.record import record

            specs = load_specs(paths)
            record(sp, specs.manifests, revision=specs.commit,
                   source=specs.source if specs.git else None)
        actions = prefect.run_once(sp)
        for action in actions:
            click.echo(f"  {action.op} {action.target}  {action.description}")
        click.echo(f"Reconciled. {summary(actions)}" if actions else "Reconciled: no changes.")
        return
    home = Home.from_env()
    home.init()
    if running(home) is not None:
        raise SolError(already_running(home))
    prefect.Prefect(home, watch_paths(paths), foreground=True).run()


COMMANDS = [up, down, reconcile]
