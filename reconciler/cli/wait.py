"""`sol wait`: block until objects meet a condition, as `kubectl wait` does, so a script
can run `sol apply` and then wait for the work to land.

It reads the store only when its files changed (common.Changes), and gives up at once on
a writ that ended in a phase it can no longer leave for the one wanted: an overnight
script does not sit out its timeout on a Failed writ.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import click

from reconciler.cli.common import Changes, sphere
from reconciler.cli.view import KIND_WORDS, canonical_kind, objects, ref, split_kind
from reconciler.core.durations import format_duration, parse_duration
from reconciler.core.errors import SolError
from reconciler.core.model import TERMINAL
from reconciler.core.store import Store

POLL = 0.5
"""Seconds between two looks at the store's files (a stat; rows are read on a change)."""
STATUSES = {"true": "True", "false": "False", "unknown": "Unknown"}


@dataclass(frozen=True)
class Want:
    """One `--for`: `phase=Merged`, or `condition=Ready` (`=False` to wait for False)."""

    field: str
    value: str
    status: str = "True"

    @classmethod
    def parse(cls, text: str) -> Want:
        field, _, rest = text.partition("=")
        if field == "phase" and rest and "=" not in rest:
            return cls("phase", rest)
        if field == "condition" and rest:
            kind, _, status = rest.partition("=")
            if kind and (not status or status.lower() in STATUSES):
                return cls("condition", kind, STATUSES[(status or "true").lower()])
        raise SolError(f"--for {text!r} is not a condition sol can wait for: use "
                       "phase=PHASE (like phase=Merged) or condition=TYPE[=True|False]")

    def met(self, obj: dict[str, Any]) -> bool:
        status = obj["status"]
        if self.field == "phase":
            return str(status.get("phase", "")).lower() == self.value.lower()
        return any(str(c.get("type", "")).lower() == self.value.lower()
                   and c.get("status") == self.status for c in status.get("conditions") or [])

    def __str__(self) -> str:
        if self.field == "phase":
            return f"phase={self.value}"
        return f"condition={self.value}" + ("" if self.status == "True" else f"={self.status}")


def _targets(kind: str, names: tuple[str, ...]) -> list[tuple[str, str]]:
    """(KIND, NAME) pairs from `KIND NAME...` or from `KIND/WORLD/NAME...` words (what
    `sol get -o name` prints)."""
    if "/" in kind:
        pairs = [split_kind(word, None) for word in (kind, *names)]
        return [(k, n) for k, n in pairs if n]
    if not names:
        word = KIND_WORDS[canonical_kind(kind)]
        raise SolError(f"sol wait needs the objects to wait for: `sol wait {word} NAME... "
                       "--for phase=Merged`")
    return [(canonical_kind(kind), name) for name in names]


def _one(store: Store, kind: str, name: str, world: str | None) -> dict[str, Any]:
    found = objects(store, kind, name, world)
    word = KIND_WORDS[kind]
    if not found:
        raise SolError(f"no {word} named {name!r}; `sol get {word}s` lists them")
    if len(found) > 1:
        raise SolError(f"{name!r} is ambiguous ({', '.join(map(ref, found))}); name it as "
                       "WORLD/NAME")
    return found[0]


def _state(obj: dict[str, Any], wants: list[Want]) -> str:
    """What an object is now, as the timeout message says it."""
    conditions = [w for w in wants if w.field == "condition"]
    shown = {str(c.get("type", "")).lower(): f"{c.get('type')}={c.get('status')}"
             for c in obj["status"].get("conditions") or []}
    said = [shown.get(w.value.lower(), f"no {w.value} condition") for w in conditions]
    return f"{ref(obj)} is {obj['status'].get('phase')}" + (
        f" ({', '.join(said)})" if said else "")


def _hopeless(obj: dict[str, Any], wants: list[Want]) -> str | None:
    """Why this object can never meet `wants`: a writ ended in another phase."""
    phase = obj["status"].get("phase")
    wanted = [w for w in wants if w.field == "phase" and not w.met(obj)]
    if obj["kind"] != "Writ" or phase not in TERMINAL or not wanted:
        return None
    why = obj["status"].get("message") or obj["status"].get("reason") or ""
    return (f"{ref(obj)} is {phase}{f' ({why})' if why else ''} and will not become "
            f"{wanted[0].value} by itself; `sol describe {ref(obj)}` says why")


@click.command()
@click.argument("kind")
@click.argument("names", nargs=-1)
@click.option("--for", "conditions", multiple=True, metavar="CONDITION",
              help="phase=PHASE or condition=TYPE[=True|False]; repeat to want all.")
@click.option("--timeout", default="30s", show_default=True,
              help="How long to wait, as manifests write durations (30s, 10m, 2h).")
@click.option("--world", "-W", help="The world of the NAMEs (or write WORLD/NAME).")
def wait(kind: str, names: tuple[str, ...], conditions: tuple[str, ...], timeout: str,
         world: str | None) -> None:
    """Wait until every named object meets each --for: exit 0, or 1 on timeout.

    A writ that ends Failed or Cancelled (or Merged, waiting for Failed) fails the wait
    at once: it will not get there by itself.

    \b
    sol wait writ add-x add-y --for phase=Merged --timeout 30m
    sol wait world shop --for condition=Ready
    sol wait $(sol get writs -W shop -o name) --for phase=Merged --timeout 2h
    """
    targets = _targets(kind, names)
    if not conditions:
        raise SolError("sol wait needs --for: phase=PHASE (like phase=Merged) or "
                       "condition=TYPE")
    wants = [Want.parse(text) for text in conditions]
    try:
        seconds = parse_duration(timeout)
    except ValueError as exc:
        raise SolError(f"--timeout: {exc}") from None
    store = sphere().store
    changes = Changes(store)
    changes()  # before the first read, so a change made during it is seen
    # each object once by its full name: a WORLD/NAME a later read cannot mistake
    pinned = [(k, f"{o['metadata']['world']}/{o['metadata']['name']}"
               if o["metadata"].get("world") else o["metadata"]["name"])
              for k, n in targets for o in [_one(store, k, n, world)]]
    deadline = time.monotonic() + seconds
    current = [_one(store, k, n, None) for k, n in pinned]
    while True:
        for obj in current:
            why = _hopeless(obj, wants)
            if why:
                raise SolError(why)
        waiting = [o for o in current if not all(w.met(o) for w in wants)]
        if not waiting:
            for obj in current:
                click.echo(f"{ref(obj)} condition met")
            return
        left = deadline - time.monotonic()
        if left <= 0:
            raise SolError(f"timed out after {format_duration(seconds)} waiting for "
                           f"{' and '.join(map(str, wants))}: "
                           f"{'; '.join(_state(o, wants) for o in waiting)}")
        time.sleep(min(POLL, left))
        if changes():
            current = [_one(store, k, n, None) for k, n in pinned]


COMMANDS = [wait]
