"""The `sol` command: thin. Parse, call, render, and map errors to exit codes.

No traceback reaches a user for their own mistake: every SolError is printed as one
sentence on stderr and becomes exit 1 (or the code it carries).
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any

import click

from reconciler.core.errors import SolError

AGENT_COMMANDS = ("prime", "resolve", "escalate")
"""Run by agents inside their session (the persona tells them to), not by people."""
AGENT_SECTION = "Commands used by agents inside their session"


class SolGroup(click.Group):
    """Renders SolError once, at the edge; usage errors exit 1, since 2 means "changes"."""

    def main(self, *args: Any, **kwargs: Any) -> Any:
        kwargs["standalone_mode"] = False
        kwargs.setdefault("complete_var", "_SOL_COMPLETE")
        kwargs.setdefault("prog_name", "sol")  # usage reads `sol ...`, even via python -m
        try:
            return super().main(*args, **kwargs)
        except click.exceptions.NoArgsIsHelpError as exc:
            click.echo(exc.ctx.get_help() if exc.ctx else str(exc))
            sys.exit(0)
        except click.UsageError as exc:
            exc.show()
            sys.exit(1)
        except click.exceptions.Abort:
            click.echo("aborted", err=True)
            sys.exit(1)

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*COMMANDS, *self.commands})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        """Import the command's module on first use."""
        if cmd_name not in self.commands and cmd_name in COMMANDS:
            module = importlib.import_module(f"reconciler.cli.{COMMANDS[cmd_name]}")
            for command in module.COMMANDS:
                self.add_command(command)
        return self.commands.get(cmd_name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """Two lists: what people run, and what agents run inside their sessions."""
        found = [(name, self.get_command(ctx, name)) for name in self.list_commands(ctx)]
        shown = [(name, cmd) for name, cmd in found if cmd is not None and not cmd.hidden]
        if not shown:
            return
        width = max(len(name) for name, _ in shown)  # one column for both lists
        limit = formatter.width - 6 - width
        for title, agents in (("Commands", False), (AGENT_SECTION, True)):
            rows = [(name.ljust(width), cmd.get_short_help_str(limit)) for name, cmd in shown
                    if (name in AGENT_COMMANDS) == agents]
            if rows:
                with formatter.section(title):
                    formatter.write_dl(rows)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except SolError as exc:
            click.echo(f"error: {exc.message}" if "\n" not in exc.message else exc.message,
                       err=True)
            sys.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)


@click.group(cls=SolGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="sol", prog_name="sol")
def main() -> None:
    """sol: run many AI coding agents on one git repository and land their work safely."""
    # Everything sol makes (and the tmux server and agents it starts inherit this) is the
    # user's alone: the sphere holds API keys in agents' environments and transcripts.
    os.umask(0o077)


COMMANDS: dict[str, str] = {
    "init": "admin", "doctor": "admin",
    "prime": "agent", "resolve": "agent", "escalate": "agent", "attach": "agent",
    "logs": "agent",
    "completion": "completion", "cost": "cost", "create": "create",
    "dashboard": "dashboard",
    "up": "daemon", "down": "daemon", "reconcile": "daemon", "demo": "demo",
    "retry": "operate", "suspend": "operate", "resume": "operate",
    "validate": "specs", "schema": "specs", "diff": "specs", "apply": "specs",
    "get": "view", "describe": "view", "status": "view", "events": "view", "wait": "wait",
}
"""Every command and the module that defines it, listed explicitly (no registration by
import side effect). A module is imported only when one of its commands runs (or for
`--help`): `sol get` does not pay for jsonschema, the registry and the git source code."""
