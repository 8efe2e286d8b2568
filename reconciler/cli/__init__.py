"""The `sol` command: thin. Parse, call, render, and map errors to exit codes.

No traceback reaches a user for their own mistake: every SolError is printed as one
sentence on stderr and becomes exit 1 (or the code it carries).
"""

from __future__ import annotations

import os
import sys
from typing import Any

import click

from reconciler.core.errors import SolError


class SolGroup(click.Group):
    """Renders SolError once, at the edge; usage errors exit 1, since 2 means "changes"."""

    def main(self, *args: Any, **kwargs: Any) -> Any:
        kwargs["standalone_mode"] = False
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


def _register() -> None:
    """The commands, listed explicitly (no registration by import side effect)."""
    from reconciler.cli import admin, agent, daemon, demo, specs, view

    for module in (admin, agent, daemon, demo, specs, view):
        for command in module.COMMANDS:
            main.add_command(command)


_register()
