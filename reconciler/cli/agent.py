"""Commands for and about agents: prime, resolve, escalate (inside a session), attach, logs."""

from __future__ import annotations

import os
import time

import click

from reconciler.cli.common import sphere
from reconciler.core.errors import SolError
from reconciler.core.home import Home, session_name
from reconciler.drivers import agent as agent_side


@click.command()
def prime() -> None:
    """Print the assignment of this session, from its tether alone."""
    click.echo(agent_side.prime())


@click.command()
def resolve() -> None:
    """Say the work is done: commit, queue the merge request, end this session."""
    click.echo(agent_side.resolve())


@click.command()
@click.argument("message")
def escalate(message: str) -> None:
    """Ask a human for help with MESSAGE."""
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
@click.argument("agent")
def attach(agent: str) -> None:
    """Join an agent's tmux session (detach with C-b d)."""
    world, name = _locate(agent)
    sp = sphere()
    session = session_name(world, name)
    if not sp.sessions.exists(session):
        raise SolError(f"agent {world}/{name} has no session now; `sol logs {agent}` shows "
                       "what it printed")
    argv = sp.sessions.attach_argv(session)
    env = {k: v for k, v in os.environ.items() if k not in ("TMUX", "TMUX_PANE")}
    os.execvpe(argv[0], argv, env)


@click.command()
@click.argument("agent")
@click.option("-f", "--follow", is_flag=True, help="Keep printing as the log grows.")
def logs(agent: str, follow: bool) -> None:
    """Print an agent's session log."""
    world, name = _locate(agent)
    path = Home.from_env().agent_log(world, name)
    if not path.exists():
        raise SolError(f"agent {world}/{name} has no log yet ({path})")
    with path.open("r", errors="replace") as handle:
        click.echo(handle.read(), nl=False)
        while follow:
            chunk = handle.read()
            if chunk:
                click.echo(chunk, nl=False)
            else:
                time.sleep(0.2)


COMMANDS = [prime, resolve, escalate, attach, logs]
