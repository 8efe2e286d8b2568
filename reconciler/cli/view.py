"""Commands that show state: get, describe, status."""

from __future__ import annotations

import sys
import time
from typing import Any

import click
from rich.table import Table

from reconciler.cli.common import cell, console, emit, output_option, say, sphere
from reconciler.core.errors import SolError
from reconciler.core.store import Record, Store

KIND_ALIASES = {
    "world": "World", "worlds": "World",
    "writ": "Writ", "writs": "Writ",
    "caravan": "Caravan", "caravans": "Caravan",
    "envoy": "Envoy", "envoys": "Envoy",
    "agent": "Agent", "agents": "Agent",
    "mr": "MergeRequest", "mrs": "MergeRequest", "mergerequest": "MergeRequest",
}


def canonical_kind(kind: str) -> str:
    found = KIND_ALIASES.get(kind.lower())
    if found is None:
        raise SolError(f"unknown kind {kind!r}: use worlds, writs, caravans, envoys, agents or "
                       "mrs")
    return found


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
        "metadata": {"name": a.name, "world": a.world},
        "spec": {"runtime": a.runtime},
        "status": {"phase": _agent_phase(store, a.world, a.writ), "writ": a.writ,
                   "session": a.session, "state": a.state},
    } for a in store.agents(world)]


def mr_objects(store: Store, world: str | None = None) -> list[dict[str, Any]]:
    return [{
        "apiVersion": "sol/v1", "kind": "MergeRequest",
        "metadata": {"name": str(m.id), "world": m.world},
        "spec": {"writ": m.writ, "branch": m.branch, "base": m.base, "agent": m.agent,
                 "attempt": m.attempt, "priority": m.priority},
        "status": {"phase": m.state, "message": m.message, "mergeCommit": m.merge_commit,
                   "created": m.created_at},
    } for m in store.mrs(world)]


def objects(store: Store, kind: str, name: str | None = None,
            world: str | None = None) -> list[dict[str, Any]]:
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


def _writ_detail(obj: dict[str, Any]) -> str:
    status = obj["status"]
    text = status.get("message") or status.get("reason") or ""
    if status.get("orphaned") and "manifests" not in text:
        text = f"orphaned (not in the manifests); {text}"
    for cond in status.get("conditions", []):
        if cond.get("type") == "Escalated" and cond.get("status") == "True":
            said = cond.get("message", "")
            text = f"ESCALATED: {said}" + (f"; {text}" if text and said not in text else "")
    return text


def table(kind: str, objs: list[dict[str, Any]]) -> Table:
    t = Table(box=None, pad_edge=False, header_style="bold")
    columns = {
        "World": ["NAME", "PHASE", "BRANCH", "SOURCE", "MESSAGE"],
        "Writ": ["WORLD", "NAME", "PHASE", "AGENT", "ATTEMPT", "MESSAGE"],
        "Caravan": ["WORLD", "NAME", "PHASE", "PHASES", "MESSAGE"],
        "Envoy": ["WORLD", "NAME", "PHASE", "PERSONA", "BRANCH", "MESSAGE"],
        "Agent": ["WORLD", "NAME", "PHASE", "WRIT", "SESSION"],
        "MergeRequest": ["WORLD", "ID", "WRIT", "PHASE", "ATTEMPT", "BRANCH", "MESSAGE"],
    }[kind]
    for column in columns:
        t.add_column(column, overflow="fold")
    for o in objs:
        md, spec, st = o["metadata"], o["spec"], o["status"]
        if kind == "World":
            row = [md["name"], st["phase"], spec.get("branch", "main"), spec.get("source", ""),
                   st.get("message", "")]
        elif kind == "Writ":
            row = [md["world"], md["name"], st["phase"], st.get("agent") or "-",
                   str(st.get("attempt", "-")), _writ_detail(o)]
        elif kind == "Caravan":
            phases = " | ".join(", ".join(p) for p in spec.get("phases", []))
            row = [md["world"], md["name"], st["phase"], phases, st.get("message", "")]
        elif kind == "Envoy":
            row = [md["world"], md["name"], st["phase"], spec.get("persona", "-"),
                   st.get("branch") or f"envoy/{md['name']}", st.get("message", "")]
        elif kind == "Agent":
            row = [md["world"], md["name"], st["phase"], st.get("writ") or "-",
                   st.get("session") or "-"]
        else:
            row = [md["world"], md["name"], spec["writ"], st["phase"], str(spec["attempt"]),
                   spec["branch"], st.get("message", "")]
        t.add_row(*map(cell, row))
    return t


def render_table(kind: str, objs: list[dict[str, Any]]) -> str:
    """The table as plain text (for callers that print lines, like the demo)."""
    from io import StringIO

    from rich.console import Console

    buffer = StringIO()
    Console(file=buffer, width=120, highlight=False, soft_wrap=True).print(table(kind, objs))
    return buffer.getvalue().rstrip()


@click.command()
@click.argument("kind")
@click.argument("name", required=False)
@click.option("--world", "-w", help="Only objects of this world.")
@output_option()
def get(kind: str, name: str | None, world: str | None, output: str) -> None:
    """List worlds, writs, caravans, envoys, agents or mrs."""
    kind = canonical_kind(kind)
    sp = sphere()
    objs = objects(sp.store, kind, name, world)
    if name and not objs:
        raise SolError(f"no {kind.lower()} named {name!r}; `sol get {kind.lower()}s` lists them")
    if output != "table":
        emit(objs, output)
        return
    if not objs:
        click.echo(f"No {kind.lower()}s.")
        return
    console().print(table(kind, objs))


def _find(store: Store, kind: str, name: str) -> Record:
    world, _, short = name.rpartition("/")
    matches = [r for r in store.list(kind) if r.name == short and (not world or r.world == world)]
    if not matches:
        raise SolError(f"no {kind.lower()} named {name!r}; `sol get {kind.lower()}s` lists them")
    if len(matches) > 1:
        names = ", ".join(f"{r.world}/{r.name}" for r in matches)
        raise SolError(f"{name!r} is ambiguous ({names}); name it as WORLD/NAME")
    return matches[0]


@click.command()
@click.argument("kind")
@click.argument("name")
@output_option()
def describe(kind: str, name: str, output: str) -> None:
    """One object: spec, status, conditions, recent events."""
    kind = canonical_kind(kind)
    sp = sphere()
    if kind in ("Agent", "MergeRequest"):
        objs = objects(sp.store, kind, name.rpartition("/")[2])
        if not objs:
            raise SolError(f"no {kind.lower()} named {name!r}")
        emit(objs[0], "yaml" if output == "table" else output)
        return
    record = _find(sp.store, kind, name)
    obj = record.to_object()
    events = sp.store.events(world=record.world or record.name, name=record.name, limit=20)
    obj["events"] = [
        {"time": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(e.ts)), "type": e.type,
         "message": e.message} for e in events
    ]
    if output != "table":
        emit(obj, output)
        return
    from reconciler.cli.describe import render_describe

    click.echo(render_describe(sp, record, obj))  # already inert


@click.command()
@click.argument("world", required=False)
def status(world: str | None) -> None:
    """The sphere at a glance."""
    from reconciler.cli.describe import status_report

    text, needs_attention = status_report(sphere(), world)
    click.echo(text)  # already inert
    if needs_attention:
        sys.exit(1)  # a human is needed: scripts and monitors can tell


@click.command()
@click.option("-f", "--follow", is_flag=True, help="Keep printing new events.")
@click.option("--world", "-w", help="Only events of this world.")
@click.option("--writ", help="Only events of this writ (or other object) name.")
@click.option("-n", "--limit", default=50, show_default=True, help="How many past events.")
@click.option("-o", "--output", type=click.Choice(["text", "json", "yaml"]), default="text",
              help="json: one object a line; yaml: one list item an event (both stream).")
def events(follow: bool, world: str | None, writ: str | None, limit: int,
           output: str) -> None:
    """The event feed: cast, resolve, gates, merges, escalations, restarts."""
    import json as jsonlib

    sp = sphere()
    last = 0
    batch = sp.store.events(world=world, name=writ, limit=limit)
    while True:
        for e in batch:
            last = max(last, e.id)
            if output == "json":
                click.echo(jsonlib.dumps(e.to_dict(), default=str))
            elif output == "yaml":
                emit([e.to_dict()], "yaml")  # list items: the whole stream is one list
            else:
                when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(e.ts))
                where = (f"{e.world}/{e.name}" if e.world and e.name and e.name != e.world
                         else e.world or e.name)
                again = (f" (x{e.data['count']}, last "
                         f"{time.strftime('%H:%M:%S', time.localtime(e.data['lastSeen']))})"
                         if int(e.data.get("count") or 1) > 1 else "")
                say(f"{when}  {e.type:<14} {where:<28} {e.message}{again}")
        if not follow:
            return
        time.sleep(0.5)
        batch = sp.store.events(after=last, world=world, name=writ)


COMMANDS = [get, describe, status, events]
