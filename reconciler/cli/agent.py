"""Commands for and about agents: prime, resolve, escalate (inside a session), attach, logs."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import click
from click.shell_completion import CompletionItem

from reconciler.cli import completion
from reconciler.cli.common import inert, partial_sequence, readable, sphere
from reconciler.core.errors import SolError
from reconciler.core.home import Home, session_name
from reconciler.core.times import rfc3339
from reconciler.drivers import agent as agent_side
from reconciler.drivers.sphere import Sphere


@click.command()
def prime() -> None:
    """Print the assignment of this session, from its tether alone.

    \b
    sol prime                        # inside an agent's session
    """
    click.echo(agent_side.prime())


@click.command()
def resolve() -> None:
    """Say the work is done: commit, queue the merge request, end this session.

    \b
    git commit -am 'Add x' && sol resolve
    """
    click.echo(agent_side.resolve())


@click.command()
@click.argument("message")
def escalate(message: str) -> None:
    """Ask a human for help with MESSAGE.

    \b
    sol escalate "the spec contradicts the tests in api/test_x.py"
    """
    click.echo(agent_side.escalate(message))


def _locate(name: str) -> tuple[str, str]:
    """AGENT or WORLD/AGENT to (world, agent)."""
    sp = sphere()
    world, _, agent = name.rpartition("/")
    found = [a for a in sp.store.agents(world or None) if a.name == agent]
    if not found:
        raise SolError(f"no agent named {name!r}; `sol get agents` lists them")
    if len(found) > 1:
        raise SolError(f"agent {name!r} exists in several worlds; name it as WORLD/AGENT")
    return found[0].world, found[0].name


@click.command()
@click.argument("agent", shell_complete=completion.agent_names)
def attach(agent: str) -> None:
    """Join an agent's tmux session (detach with C-b d).

    \b
    sol attach vega                  # or WORLD/AGENT: sol attach shop/vega
    """
    world, name = _locate(agent)
    argv, env = attach_command(sphere(), world, name)
    os.execvpe(argv[0], argv, env)


def attach_command(sp: Sphere, world: str, agent: str) -> tuple[list[str], dict[str, str]]:
    """The argv and environment that join an agent's session: `sol attach` execs them,
    the dashboard runs them while it is suspended. A SolError when there is no session."""
    session = session_name(world, agent)
    if not sp.sessions.exists(session):
        raise SolError(f"agent {world}/{agent} has no session now; `sol logs {world}/{agent}` "
                       "shows what it printed")
    env = {k: v for k, v in os.environ.items() if k not in ("TMUX", "TMUX_PANE")}
    return sp.sessions.attach_argv(session), env


def log_tail(path: Path, size: int = 64 * 1024) -> str:
    """The last `size` bytes of an agent's session log as `sol logs` prints it: terminal
    sequences dropped, control characters inert (the dashboard's `l`)."""
    try:
        with path.open("rb") as handle:
            handle.seek(max(0, path.stat().st_size - size))
            data = handle.read()
    except OSError as exc:
        raise SolError(f"cannot read the log {path}: {exc.strerror or exc}") from exc
    text = data.decode("utf-8", "replace")
    if len(data) == size:  # cut mid-line (or mid-sequence): start at the next line
        text = text.partition("\n")[2]
    return readable(text)


DAEMON_LOGS = {"prefect": False, "consul": False, "notifier": False, "sentinel": True,
               "forge": True}
"""The daemon's processes `sol logs` reads, and whether each runs per world (its log is
then `forge-<world>.log`); the prefect and the registry's owners, a test checks."""


def _log_names(ctx: click.Context, param: click.Parameter,
               incomplete: str) -> list[CompletionItem]:
    """What `sol logs` reads: the daemon's processes, then agents."""
    daemon = [CompletionItem(name) for name in DAEMON_LOGS if name.startswith(incomplete)]
    return daemon + completion.agent_names(ctx, param, incomplete)


@click.command()
@click.argument("name", shell_complete=_log_names)
@click.option("--world", "-W", shell_complete=completion.world_names,
              help="The world of a per-world log (forge, sentinel) or of the agent.")
@click.option("-f", "--follow", is_flag=True, help="Keep printing as the log grows.")
@click.option("-o", "--output", type=click.Choice(["text", "json"]), default="text",
              show_default=True, help="Daemon logs only: json prints the raw JSON lines.")
@click.option("--raw", is_flag=True, help="An agent's log as its terminal drew it, escape "
              "sequences included (for `less -R`); by default they are dropped.")
def logs(name: str, world: str | None, follow: bool, output: str, raw: bool) -> None:
    """Print an agent's session log, or a log of the daemon.

    NAME is an agent (AGENT or WORLD/AGENT), whose log has a `==== writ ... ====` line
    before each session; or prefect, consul, notifier, sentinel or forge, the daemon's
    own processes (sentinel and forge run per world: --world W when there are several).
    An agent named like one of those is reached as WORLD/AGENT.

    \b
    sol logs vega -f                 # an agent's session log, followed
    sol logs forge -W shop           # the forge's daemon log, readable
    sol logs prefect -o json         # the raw JSON lines
    """
    if "/" not in name and name in DAEMON_LOGS:
        _daemon_log(name, world, follow, output)
        return
    if output != "text":
        raise SolError(f"-o {output} is for the daemon's logs; the log of agent {name} is "
                       "its session's raw output: drop -o")
    if world and "/" not in name:
        name = f"{world}/{name}"
    world, agent = _locate(name)
    path = Home.from_env().agent_log(world, agent)
    if not path.exists():
        raise SolError(f"agent {world}/{agent} has no log yet ({path})")
    held = ""
    for chunk in _chunks(path, follow):
        if raw:
            click.echo(chunk, nl=False, color=True)  # as drawn, even into a pipe
            continue
        text = held + chunk
        cut = partial_sequence(text) if follow else len(text)
        held = text[cut:]
        click.echo(readable(text[:cut]), nl=False)
    if held:
        click.echo(readable(held), nl=False)


def _daemon_log(component: str, world: str | None, follow: bool, output: str) -> None:
    """The component's JSON-lines log (loguru's, rotated files first), one line per record
    in loguru's text layout, or the raw lines with -o json."""
    logs_dir = Home.from_env().logs
    if not DAEMON_LOGS[component]:
        if world:
            raise SolError(f"the {component} is one for the whole sphere: drop --world {world}")
        child = component
    else:
        child = f"{component}-{world or _only_world(logs_dir, component)}"
    current = logs_dir / f"{child}.log"
    if not current.exists():
        raise SolError(f"no {child} log yet ({current}): the daemon writes it once `sol up` "
                       "runs")
    rest = ""
    for chunk in _chunks(current, follow, rotated=f"{child}.*.log"):
        *lines, rest = (rest + chunk).split("\n")
        for line in lines:
            if line.strip():
                click.echo(line if output == "json" else render(line, child))
    if rest.strip():  # a last record still being written
        click.echo(rest if output == "json" else render(rest, child))


def _only_world(logs_dir: Path, component: str) -> str:
    """The world whose `component` log there is, when there is exactly one."""
    worlds = sorted(p.stem.removeprefix(f"{component}-")
                    for p in logs_dir.glob(f"{component}-*.log") if "." not in p.stem)
    if len(worlds) == 1:
        return worlds[0]
    if not worlds:
        raise SolError(f"no {component} log yet in {logs_dir}: the daemon writes one per "
                       "world once `sol up` runs")
    raise SolError(f"the {component} runs per world: pass --world with one of "
                   f"{', '.join(worlds)}")


def render(line: str, component: str) -> str:
    """One loguru JSON record as `TIME | LEVEL | component | message` (RFC 3339 time,
    control characters made visible), its traceback below; a line that is not one, as is."""
    try:
        data = json.loads(line)
        record = data["record"]
        when, level = rfc3339(float(record["time"]["timestamp"])), record["level"]["name"]
        text = f"{when} | {level:<8} | {component} | {record['message']}"
        if record.get("exception"):
            text += "\n" + str(data.get("text", "")).partition("\n")[2].rstrip("\n")
    except (ValueError, KeyError, TypeError):
        text = line
    return inert(text)


def _chunks(path: Path, follow: bool, rotated: str = "") -> Iterator[str]:
    """The text of `path`, after that of its rotated files (a glob beside it, oldest name
    first); following, then what it grows by. When loguru rotates it, the old file is read
    out, then any rotated meanwhile, then the new one: no record is skipped or repeated."""
    seen: set[int] = set()
    yield from _unseen(path, rotated, seen)
    handle = path.open("r", encoding="utf-8", errors="replace")
    seen.add(os.fstat(handle.fileno()).st_ino)
    try:
        while True:
            chunk = handle.read()
            if chunk:
                yield chunk
            elif not follow:
                return
            elif _replaced(path, handle.fileno()):
                handle.close()
                yield from _unseen(path, rotated, seen)
                handle = path.open("r", encoding="utf-8", errors="replace")
                seen.add(os.fstat(handle.fileno()).st_ino)
            else:
                time.sleep(0.2)
    finally:
        handle.close()


def _unseen(path: Path, rotated: str, seen: set[int]) -> Iterator[str]:
    """The whole text of each rotated file not read yet (`seen` holds inodes)."""
    for old in sorted(path.parent.glob(rotated)) if rotated else ():
        try:
            with old.open("r", encoding="utf-8", errors="replace") as handle:
                inode = os.fstat(handle.fileno()).st_ino
                if inode not in seen:
                    seen.add(inode)
                    yield handle.read()
        except OSError:
            continue


def _replaced(path: Path, fd: int) -> bool:
    """`path` now names another file than the one open (and that file exists)."""
    try:
        return os.stat(path).st_ino != os.fstat(fd).st_ino
    except OSError:
        return False


COMMANDS = [prime, resolve, escalate, attach, logs]
