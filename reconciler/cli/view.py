"""Commands that show state: get (and its watch), describe, status, events."""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from typing import Any

import click

from reconciler.cli import completion
from reconciler.cli.common import (
    Changes,
    colour,
    console,
    emit,
    output_option,
    say,
    sphere,
    terminal_width,
)
from reconciler.cli.tables import table, widths
from reconciler.core.errors import SolError
from reconciler.core.records import Event
from reconciler.core.store import Record, Store
from reconciler.core.times import rfc3339
from reconciler.drivers.sphere import Sphere

KIND_ALIASES = {
    "world": "World", "worlds": "World",
    "writ": "Writ", "writs": "Writ",
    "caravan": "Caravan", "caravans": "Caravan",
    "envoy": "Envoy", "envoys": "Envoy",
    "agent": "Agent", "agents": "Agent",
    "mr": "MergeRequest", "mrs": "MergeRequest", "mergerequest": "MergeRequest",
}
KIND_WORDS = {"World": "world", "Writ": "writ", "Caravan": "caravan", "Envoy": "envoy",
              "Agent": "agent", "MergeRequest": "mr"}
"""How `-o name` spells each kind: the word `sol get`, `describe` and `wait` take back."""
WATCH_INTERVAL = 0.5
"""Seconds between two looks at the store's files while watching (a stat, no query)."""


def canonical_kind(kind: str) -> str:
    found = KIND_ALIASES.get(kind.lower())
    if found is None:
        raise SolError(f"unknown kind {kind!r}: use worlds, writs, caravans, envoys, agents or "
                       "mrs")
    return found


def split_kind(kind: str, name: str | None) -> tuple[str, str | None]:
    """KIND and NAME, from two words or from one as `-o name` prints it (`writ/shop/x`)."""
    if "/" in kind and name is None:
        word, _, rest = kind.partition("/")
        return canonical_kind(word), rest
    return canonical_kind(kind), name


def ref(obj: dict[str, Any]) -> str:
    """`writ/shop/add-x` (`world/shop` for a world): one object, as `-o name` prints it."""
    md = obj["metadata"]
    where = f"{md['world']}/" if md.get("world") else ""
    return f"{KIND_WORDS[obj['kind']]}/{where}{md['name']}"


def scope(kind: str, name: str | None, world: str | None) -> tuple[str | None, str | None]:
    """The world and short name a NAME (maybe WORLD/NAME) and --world select."""
    if not name:
        return world, None
    prefix, _, short = name.rpartition("/")
    if prefix and kind == "World":
        raise SolError(f"{name!r} is not a world name: worlds are named without a WORLD/ part")
    if prefix and world and prefix != world:
        raise SolError(f"{name!r} is in world {prefix!r} but --world says {world!r}; "
                       "give the world once")
    return prefix or world, short


def _agent_phase(store: Store, world: str, writ: str | None) -> str:
    """Working only while its writ is: an agent of a Failed, Cancelled, Resolved or
    Merged writ shows that phase, not Working."""
    if not writ:
        return "Idle"
    record = store.get("Writ", world, writ)
    return "Working" if record is None or record.phase == "Working" else record.phase


def agent_objects(store: Store, world: str | None = None) -> list[dict[str, Any]]:
    return [{
        "apiVersion": "sol/v1", "kind": "Agent",
        "metadata": {"name": a.name, "world": a.world,
                     "creationTimestamp": rfc3339(a.created_at)},
        "spec": {"runtime": a.runtime},
        "status": {"phase": _agent_phase(store, a.world, a.writ), "writ": a.writ,
                   "session": a.session, "state": a.state},
    } for a in store.agents(world)]


def mr_objects(store: Store, world: str | None = None) -> list[dict[str, Any]]:
    return [{
        "apiVersion": "sol/v1", "kind": "MergeRequest",
        "metadata": {"name": str(m.id), "world": m.world,
                     "creationTimestamp": rfc3339(m.created_at)},
        "spec": {"writ": m.writ, "branch": m.branch, "base": m.base, "agent": m.agent,
                 "attempt": m.attempt, "priority": m.priority},
        "status": {"phase": m.state, "message": m.message, "mergeCommit": m.merge_commit,
                   "created": rfc3339(m.created_at)},
    } for m in store.mrs(world)]


def objects(store: Store, kind: str, name: str | None = None,
            world: str | None = None) -> list[dict[str, Any]]:
    """The objects of a kind in the contract shape; `name` may be WORLD/NAME."""
    world, name = scope(kind, name, world)
    if kind == "Agent":
        found = agent_objects(store, world)
    elif kind == "MergeRequest":
        found = mr_objects(store, world)
    else:
        records = store.list(kind, world if kind != "World" else None)
        found = [r.to_object() for r in records]
    if name:
        found = [o for o in found if o["metadata"]["name"] == name]
    return found


def render_table(kind: str, objs: list[dict[str, Any]]) -> str:
    """The table as plain text (for callers that print lines, like the demo)."""
    from io import StringIO

    from rich.console import Console

    buffer = StringIO()
    Console(file=buffer, width=120, highlight=False, soft_wrap=True).print(
        table(kind, objs, width=120))
    return buffer.getvalue().rstrip()


@click.command()
@click.argument("kind", shell_complete=completion.kinds)
@click.argument("name", required=False, shell_complete=completion.object_names)
@click.option("--world", "-W", help="Only objects of this world (or name one WORLD/NAME).")
@click.option("--watch", "-w", is_flag=True,
              help="After the listing, print each object again when it changes (Ctrl-C "
                   "stops).")
@output_option(more=("wide", "name"))
def get(kind: str, name: str | None, world: str | None, watch: bool, output: str) -> None:
    """List worlds, writs, caravans, envoys, agents or mrs.

    \b
    sol get writs                    the table; -o wide adds columns
    sol get writ shop/add-x -o yaml  one writ, as WORLD/NAME
    sol get writs -W shop -w         watch one world's writs change
    sol get writs -o name            writ/shop/add-x, one a line, for shell loops
    """
    kind, name = split_kind(kind, name)
    sp = sphere()
    store = sp.store
    changes = Changes(store)
    changes()  # before the first read: a change made while it is printed is seen after
    objs = objects(store, kind, name, world)
    if kind == "Writ" and output in ("wide", "json", "yaml"):  # the plain table has no
        from reconciler.cli.cost import attach_costs  # cost column: it skips sol.yaml

        attach_costs(sp, objs)
    if name and not objs:
        raise SolError(f"no {kind.lower()} named {name!r}; `sol get {kind.lower()}s` lists them")
    show = Listing(kind, output, stream=watch)
    if not objs and not watch and output in ("table", "wide"):
        click.echo(f"No {kind.lower()}s.")
        return
    show(objs)
    if watch:
        _watch(lambda: objects(store, kind, name, world), changes, show, objs)


class Listing:
    """Prints objects in one output format: a table (later rows lined up under the first
    listing, headed when there was none), names, or json/yaml. `stream` (a watch) prints
    json as one object a line and yaml as one document each."""

    def __init__(self, kind: str, output: str, stream: bool = False) -> None:
        self.kind, self.output, self.stream = kind, output, stream
        self.sizes: list[int] | None = None

    def __call__(self, objs: list[dict[str, Any]]) -> None:
        if self.output == "name":
            for obj in objs:
                click.echo(ref(obj))
        elif self.output in ("json", "yaml") and not self.stream:
            emit(objs, self.output)
        elif self.output == "json":
            for obj in objs:
                click.echo(json.dumps(obj, default=str))
        elif self.output == "yaml":
            for obj in objs:
                click.echo("---")
                emit(obj, "yaml")
        elif objs:
            wide = self.output == "wide"
            console().print(table(self.kind, objs, wide=wide, colour=colour(),
                                  width=terminal_width(), header=self.sizes is None,
                                  sizes=self.sizes))
            now = widths(self.kind, objs, wide)
            self.sizes = now if self.sizes is None else [
                max(a, b) for a, b in zip(self.sizes, now, strict=True)]


def _watch(read: Callable[[], list[dict[str, Any]]], changes: Changes,
           show: Callable[[list[dict[str, Any]]], None], first: list[dict[str, Any]]) -> None:
    """Print each object again whenever it changes, until Ctrl-C (exit 0, quietly). The
    store is read only when its files changed, so an idle watch costs a stat or two."""

    def key(obj: dict[str, Any]) -> tuple[str, str]:
        return (obj["metadata"].get("world", ""), obj["metadata"]["name"])

    def signature(obj: dict[str, Any]) -> str:
        return json.dumps(obj, sort_keys=True, default=str)

    seen = {key(o): signature(o) for o in first}
    try:
        while True:
            time.sleep(WATCH_INTERVAL)
            if not changes():
                continue
            now = read()
            changed = [o for o in now if seen.get(key(o)) != signature(o)]
            seen = {key(o): signature(o) for o in now}
            if changed:
                show(changed)
    except KeyboardInterrupt:
        return
    except BrokenPipeError:  # `sol get writs -w | head`: the reader left, so do we
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def find(store: Store, kind: str, name: str) -> Record:
    """One applied object by NAME or WORLD/NAME; one sentence when unknown or ambiguous."""
    world, short = scope(kind, name, None)
    matches = [r for r in store.list(kind) if r.name == short and (not world or r.world == world)]
    if not matches:
        raise SolError(f"no {kind.lower()} named {name!r}; `sol get {kind.lower()}s` lists them")
    if len(matches) > 1:
        names = ", ".join(f"{r.world}/{r.name}" for r in matches)
        raise SolError(f"{name!r} is ambiguous ({names}); name it as WORLD/NAME")
    return matches[0]


@click.command()
@click.argument("kind", shell_complete=completion.kinds)
@click.argument("name", required=False, shell_complete=completion.object_names)
@output_option()
def describe(kind: str, name: str | None, output: str) -> None:
    """One object: spec, status, conditions, recent events.

    \b
    sol describe writ add-x          (or shop/add-x, or writ/shop/add-x)
    """
    kind, name = split_kind(kind, name)
    if not name:
        raise SolError(f"sol describe needs a name: `sol describe {KIND_WORDS[kind]} NAME` "
                       f"(`sol get {KIND_WORDS[kind]}s -o name` lists them)")
    sp = sphere()
    if kind in ("Agent", "MergeRequest"):
        objs = objects(sp.store, kind, name)
        if not objs:
            raise SolError(f"no {kind.lower()} named {name!r}")
        if len(objs) > 1:
            raise SolError(f"{name!r} is ambiguous ({', '.join(map(ref, objs))}); name it as "
                           "WORLD/NAME")
        emit(objs[0], "yaml" if output == "table" else output)
        return
    record = find(sp.store, kind, name)
    obj = described(sp, record)
    if output != "table":
        emit(obj, output)
        return
    from reconciler.cli.describe import render_describe

    click.echo(render_describe(sp, record, obj))  # already inert


def described(sp: Sphere, record: Record) -> dict[str, Any]:
    """The object `sol describe` shows (and the dashboard's enter): the contract shape,
    a writ's cost, its last 20 events."""
    obj = record.to_object()
    if record.kind == "Writ":
        from reconciler.cli.cost import attach_costs

        attach_costs(sp, [obj])
    events = sp.store.events(world=record.world or record.name, name=record.name, limit=20)
    obj["events"] = [{"time": rfc3339(e.ts), "type": e.type, "message": e.message}
                     for e in events]
    return obj


@click.command()
@click.argument("world", required=False)
def status(world: str | None) -> None:
    """The sphere at a glance.

    \b
    sol status                       # exit 1 when a human is needed
    sol status shop
    """
    from reconciler.cli.describe import status_report

    text, needs_attention = status_report(sphere(), world)
    click.echo(text)  # already inert
    if needs_attention:
        sys.exit(1)  # a human is needed: scripts and monitors can tell


@click.command()
@click.option("-f", "--follow", "-w", "--watch", "follow", is_flag=True,
              help="Keep printing new events.")
@click.option("--world", "-W", help="Only events of this world.")
@click.option("--writ", help="Only events of this writ (or other object) name.")
@click.option("-n", "--limit", default=50, show_default=True, help="How many past events.")
@click.option("-o", "--output", type=click.Choice(["text", "json", "yaml"]), default="text",
              help="json: one object a line; yaml: one list item an event (both stream).")
def events(follow: bool, world: str | None, writ: str | None, limit: int,
           output: str) -> None:
    """The event feed: cast, resolve, gates, merges, escalations, restarts.

    \b
    sol events -f -W shop            follow one world's events
    sol events --writ add-x -o json  one writ's events, one JSON object a line
    """
    sp = sphere()
    last = 0
    batch = sp.store.events(world=world, name=writ, limit=limit)
    try:
        while True:
            for e in batch:
                last = max(last, e.id)
                if output == "text":
                    say(_event_line(e))
                    continue
                # `ts` and `data` stay as recorded (the webhooks' payload); `time` reads
                data = {**e.to_dict(), "time": rfc3339(e.ts)}
                if output == "json":
                    click.echo(json.dumps(data, default=str))
                else:
                    emit([data], "yaml")  # list items: the whole stream is one list
            if not follow:
                return
            time.sleep(0.5)
            batch = sp.store.events(after=last, world=world, name=writ)
    except KeyboardInterrupt:
        return  # Ctrl-C ends a follow; nothing went wrong


def _event_line(e: Event) -> str:
    """One event as text: when, type, object, message, and how often it repeated."""
    where = (f"{e.world}/{e.name}" if e.world and e.name and e.name != e.world
             else e.world or e.name)
    again = (f" (x{e.data['count']}, last {rfc3339(e.data['lastSeen'])})"
             if int(e.data.get("count") or 1) > 1 else "")
    return f"{rfc3339(e.ts)}  {e.type:<14} {where:<28} {e.message}{again}"


COMMANDS = [get, describe, status, events]
