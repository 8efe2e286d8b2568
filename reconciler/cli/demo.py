"""`sol demo`."""

from __future__ import annotations

import sys

import click


@click.command()
@click.option("--timeout", default=170.0, show_default=True, help="Give up after seconds.")
def demo(timeout: float) -> None:
    """Run the bundled example end to end on the scripted runtime.

    \b
    sol demo
    """
    from reconciler.cli.demo_run import run

    sys.exit(run(lambda line: click.echo(line), timeout=timeout))


COMMANDS = [demo]
