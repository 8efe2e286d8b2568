"""Commands about the sphere itself: init, doctor."""

from __future__ import annotations

import os
import sqlite3
import sys
import tempfile

import click
from rich.table import Table

from reconciler.cli.common import console
from reconciler.core.errors import SolError
from reconciler.core.home import Home
from reconciler.core.model import Runtime, SessionsSpec
from reconciler.drivers import git


@click.command()
def init() -> None:
    """Create SOL_HOME.

    \b
    sol init                         # SOL_HOME (default ~/sol, or $SOL_HOME)
    """
    home = Home.from_env()
    home.init()
    from reconciler.core.store import Store

    Store.open(home).close()
    click.echo(f"SOL_HOME ready at {home.root}")


def _check_git() -> tuple[bool, str]:
    found = git.version()
    return (True, found) if found else (False, "git not found on PATH: install git")


def _check_tmux() -> tuple[bool, str]:
    from reconciler.drivers.sessions import tmux_version

    version = tmux_version()
    if version is None:
        return False, "tmux not found on PATH: install tmux 3.2 or newer (apt-get install tmux)"
    if version < (3, 2):
        return False, f"tmux {version[0]}.{version[1]} is too old: sol needs 3.2 or newer"
    return True, f"tmux {version[0]}.{version[1]}"


def _check_wal() -> tuple[bool, str]:
    with tempfile.TemporaryDirectory() as tmp:
        db = sqlite3.connect(os.path.join(tmp, "t.db"))
        mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        db.close()
    ok = mode.lower() == "wal"
    return ok, f"SQLite {sqlite3.sqlite_version}, journal mode {mode}"


def _check_home(home: Home) -> tuple[bool, str]:
    try:
        home.init()
        probe = home.root / ".doctor-probe"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        return False, f"{home.root} is not writable ({exc.strerror}): set SOL_HOME elsewhere"
    except SolError as exc:
        return False, exc.message
    return True, str(home.root)


def _store_checks(home: Home) -> list[tuple[str, bool, str]]:
    """The store, read whole (a damaged page fails here, not in some later command), then
    the runtimes its worlds and writs use. A missing store is not made: apply makes it."""
    if not home.db.exists():
        return []
    from reconciler.core.store import Store
    from reconciler.drivers.runtimes import check

    try:
        store = Store(home.db)
    except SolError as exc:
        return [("database", False, exc.message)]
    try:
        store.verify()
        worlds = store.list("World")
        specs = [w.spec.get("runtime") for w in worlds]
        clusters = sorted({str((w.spec.get("sessions") or {}).get("address") or "auto")
                           for w in worlds
                           if (w.spec.get("sessions") or {}).get("backend") == "ray"})
        on_ray = {w.name: SessionsSpec.from_spec(w.spec.get("sessions")) for w in worlds
                  if SessionsSpec.from_spec(w.spec.get("sessions")).backend == "ray"}
        specs += [w.spec["runtime"] for w in store.list("Writ") if w.spec.get("runtime")]
    except SolError as exc:
        return [("database", False, exc.message)]
    finally:
        store.close()
    seen: dict[str, Runtime] = {}
    for spec in specs:
        runtime = Runtime.from_spec(spec)
        # claude as root runs only sandboxed: each setting is its own check
        seen.setdefault(runtime.name + (" (sandboxed)" if runtime.sandboxed else ""), runtime)
    rows = [("database", True, str(home.db))]
    for name, runtime in sorted(seen.items()):
        try:
            check(runtime)
            rows.append((f"runtime {name}", True, "found"))
        except Exception as exc:  # noqa: BLE001 - reported as a row, never raised
            rows.append((f"runtime {name}", False, getattr(exc, "message", str(exc))))
    rows += [_ray_check(address) for address in clusters]
    for world, sessions in sorted(on_ray.items()):
        rows += _node_checks(home, world, sessions)
    return rows


def _ray_check(address: str) -> tuple[str, bool, str]:
    """A Ray cluster a world's agents run on: reachable, with its alive nodes."""
    from reconciler.drivers.ray_connect import nodes

    try:
        alive = nodes(address)
    except SolError as exc:
        return f"ray {address}", False, exc.message
    if not alive:
        return f"ray {address}", False, "no alive node: agents cannot be placed"
    shown = ", ".join(f"{n['hostname'] or n['node_ip']} ({n['resources'].get('CPU', 0):g} CPU)"
                      for n in alive)
    return f"ray {address}", True, f"{len(alive)} node(s) alive: {shown}"


def _node_checks(home: Home, world: str, sessions: SessionsSpec) -> list[tuple[str, bool, str]]:
    """Each node of a Ray world must run sol's Python and reach the agents' work: the
    world's remote (workspace: node) or SOL_HOME at the same path (shared), or its
    agents fail there."""
    from reconciler.drivers.node_workspace import remote_of
    from reconciler.drivers.ray_connect import probe

    try:
        if sessions.on_nodes:
            remote = remote_of(home.repo(world), sessions.remote, make=False)
            found = probe(sessions.address, sys.executable, remote=remote)
        else:
            found = probe(sessions.address, sys.executable,
                          shared=str(home.outposts(world).absolute()))
    except SolError as exc:
        return [(f"nodes of {world}", False, exc.message)]
    return [(f"node {name} ({world})", ok, detail) for name, ok, detail in found]


@click.command()
def doctor() -> None:
    """Check git, tmux, SQLite, SOL_HOME, the store, the runtimes the applied worlds use and
    the Ray clusters their agents run on.

    \b
    sol doctor                       # exit 1 when a check fails
    """
    home = Home.from_env()
    rows = [("git", *_check_git()), ("tmux", *_check_tmux()), ("sqlite", *_check_wal()),
            ("SOL_HOME", *_check_home(home))]
    rows += _store_checks(home)
    table = Table(box=None, header_style="bold")
    for column in ("CHECK", "OK", "DETAIL"):
        table.add_column(column)
    for name, ok, detail in rows:
        table.add_row(name, "ok" if ok else "FAIL", detail)
    console().print(table)
    sys.exit(0 if all(ok for _, ok, _ in rows) else 1)


COMMANDS = [init, doctor]
