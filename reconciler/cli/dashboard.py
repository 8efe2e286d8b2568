"""`sol dashboard`: the board `sol status` prints, live in the terminal (a Textual app,
dashboard_app.py), or with --web as a small read-only local web page (daemon/web.py)."""

from __future__ import annotations

import shutil
import sys

import click

from reconciler.cli import completion
from reconciler.core.errors import SolError
from reconciler.core.home import Home

MIN_WIDTH, MIN_HEIGHT = 60, 16
"""Below this the table has no room for a row worth reading."""


@click.command()
@click.option("--world", "-W", shell_complete=completion.world_names,
              help="Only this world.")
@click.option("--web", "address", metavar="HOST:PORT",
              help="Serve the board as a read-only web page at HOST:PORT instead (port 0 "
                   "picks one); the URL with its token is printed.")
@click.option("--allow-remote", is_flag=True,
              help="With --web: allow a non-loopback address (anyone who can reach it and "
                   "has the token sees the board).")
def dashboard(world: str | None, address: str | None, allow_remote: bool) -> None:
    """The sphere live: worlds, caravans, writs, the forge queue, events and the selected
    agent's pane. Keys act on the selected writ: enter describe, a attach, l logs, r retry,
    s suspend/resume, / filter, o sort, ? help, q quit.

    \b
    sol dashboard                    # in the terminal (80x24 and up)
    sol dashboard -W shop
    sol dashboard --web 127.0.0.1:8765
    """
    home = Home.from_env()
    if not home.db.is_file():
        raise SolError(f"no sphere at {home.root} yet: run `sol init`, then `sol apply -f "
                       "PATH` with your manifests")
    if address is not None:
        from reconciler.daemon.web import serve

        serve(home, address, allow_remote=allow_remote,
              ready=lambda url: click.echo(f"Serving the dashboard at {url} (Ctrl-C stops)"))
        return
    if allow_remote:
        raise SolError("--allow-remote goes with --web HOST:PORT")
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        raise SolError("sol dashboard needs a terminal; `sol status` prints the same board "
                       "as text, `sol dashboard --web 127.0.0.1:0` serves it as a page")
    size = shutil.get_terminal_size()
    if size.columns < MIN_WIDTH or size.lines < MIN_HEIGHT:
        raise SolError(f"the terminal is {size.columns}x{size.lines}; sol dashboard needs "
                       f"{MIN_WIDTH}x{MIN_HEIGHT} or more (80x24 is fine)")
    from reconciler.cli.dashboard_app import Dashboard
    from reconciler.drivers.sphere import Sphere

    sphere = Sphere(home)
    if world and sphere.store.get("World", "", world) is None:
        raise SolError(f"no world named {world!r}; `sol get worlds` lists them")
    try:
        Dashboard(sphere, world).run()
    finally:
        sphere.close()


COMMANDS = [dashboard]
