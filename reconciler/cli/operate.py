"""Commands that operate a running fleet without editing a manifest: retry, suspend, resume.

Each writes one request into the store (a re-drive through core.redrive, or a suspension
override in the object's status, read back through core.suspension) and wakes the daemon;
the reconcilers then act on it as they act on a manifest change. Without a daemon the
request waits for `sol up` or `sol reconcile --once`.
"""

from __future__ import annotations

import time

import click

from reconciler.cli.common import say, sphere
from reconciler.cli.view import find
from reconciler.core import degraded
from reconciler.core.errors import SolError
from reconciler.core.model import CANCELLED, PENDING
from reconciler.core.redrive import RETRYABLE, redrive
from reconciler.core.store import Record, Store
from reconciler.core.suspension import (
    FORGE,
    KINDS,
    STATUS_KEY,
    WORLD,
    WRIT,
    override,
    suspension,
)
from reconciler.core.times import rfc3339
from reconciler.drivers.sphere import Sphere

BY_SUSPEND = "sol suspend"
BY_RETRY = "sol retry"
KIND_WORDS = {"world": WORLD, "worlds": WORLD, "forge": FORGE, "forges": FORGE,
              "writ": WRIT, "writs": WRIT}


def _kind(word: str, allowed: tuple[str, ...], verb: str) -> str:
    found = KIND_WORDS.get(word.lower())
    if found not in allowed:
        raise SolError(f"cannot {verb} {word!r}: name one of {', '.join(allowed)}, like "
                       f"`sol {verb} {allowed[0]} NAME`")
    return found


def find_world(store: Store, name: str) -> Record:
    record = store.get("World", "", name)
    if record is None:
        raise SolError(f"no world named {name!r}; `sol get worlds` lists them")
    return record


def _record(store: Store, what: str, name: str) -> Record:
    return find(store, "Writ", name) if what == WRIT else find_world(store, name)


def _label(what: str, record: Record) -> str:
    return f"{what} {record.world}/{record.name}" if what == WRIT else f"{what} {record.name}"


def wake(sp: Sphere, then: str) -> list[str]:
    """Tell a running daemon to look again now; without one, the line that says how to
    get the work done."""
    from reconciler.daemon.prefect import running
    from reconciler.daemon.watch import touch

    touch(sp.home.run / "wake")
    if running(sp.home) is None:
        return [f"No daemon is running: `sol up` or `sol reconcile --once` {then}."]
    return []


@click.command()
@click.argument("kind")
@click.argument("name")
def retry(kind: str, name: str) -> None:
    """Re-drive a Failed or Cancelled writ: Pending again, attempts counted from 1, on its
    kept branch and worktree, the retry dated in its status (`describe` shows it).

    \b
    Example: sol retry writ shop/add-rate-limit
    """
    _kind(kind, (WRIT,), "retry")
    sp = sphere()
    for line in retry_writ(sp, find(sp.store, "Writ", name)):
        say(line)


def retry_writ(sp: Sphere, writ: Record) -> list[str]:
    """`sol retry writ` (and the dashboard's `r`): re-drive it, wake the daemon, and say
    what happened; a SolError when it cannot be retried."""
    label = f"writ {writ.world}/{writ.name}"
    if writ.orphaned or (writ.phase == CANCELLED and writ.reason == "Pruned"):
        raise SolError(f"{label} is not in the manifests: add it back to the manifests and "
                       "apply, which re-drives it")
    if writ.phase not in RETRYABLE:
        raise SolError(f"{label} is {writ.phase}, not Failed or Cancelled: only a Failed or "
                       "Cancelled writ can be retried")
    done = redrive(sp.store, writ.key, reason="Retried", by=BY_RETRY,
                   expect_version=writ.version,
                   message=f"retried at {rfc3339(time.time())}: cast again on its kept branch "
                           f"sol/{writ.name}, attempts counted afresh")
    if done is None:
        raise SolError(f"{label} changed while retrying it; look at `sol describe writ "
                       f"{writ.world}/{writ.name}` and try again")
    return [f"Retried {label}: Pending again (was {writ.phase}: {writ.reason}), attempts "
            f"counted from 1 on its kept branch sol/{writ.name}.", *wake(sp, "casts it")]


@click.command()
@click.argument("kind")
@click.argument("name")
def suspend(kind: str, name: str) -> None:
    """Suspend a world (nothing new is dispatched), its forge (no new merge starts; one in
    progress finishes) or a writ (not cast), until `sol resume KIND NAME`.

    \b
    Example: sol suspend forge shop
    """
    what = _kind(kind, KINDS, "suspend")
    for line in suspend_object(sphere(), what, name):
        say(line)


def suspend_object(sp: Sphere, what: str, name: str) -> list[str]:
    """`sol suspend` (and the dashboard's `s`): record the suspension, wake the daemon,
    and say what happened."""
    with sp.store.transaction():
        record = _record(sp.store, what, name)
        label = _label(what, record)
        already = suspension(what, record)
        if already is not None:
            return [f"{label} is already suspended {already.how}: nothing to do."]
        now = rfc3339(time.time())
        sp.store.set_status(record.key, **{STATUS_KEY[what]: override(BY_SUSPEND, now)})
        sp.store.event("suspended", kind=record.kind, world=record.world or record.name,
                       name=record.name, message=f"{label} suspended by {BY_SUSPEND}",
                       what=what, by=BY_SUSPEND)
    lines = [f"Suspended {label} at {now}; `sol resume {what} {name}` to go on."]
    if what == WRIT and record.phase != PENDING:
        lines.append(f"It is {record.phase}: what runs goes on; it is not cast again until "
                     "resumed.")
    return lines + wake(sp, "applies it")


@click.command()
@click.argument("kind", required=False)
@click.argument("name", required=False)
def resume(kind: str | None, name: str | None) -> None:
    """Resume a forge, world or writ suspended by `sol suspend`; with no argument, leave
    Degraded mode now (the sentinels respawn dead agent sessions again).

    \b
    Examples: sol resume forge shop
              sol resume
    """
    if kind is None:
        _leave_degraded()
        return
    what = _kind(kind, KINDS, "resume")
    if name is None:
        raise SolError(f"name the {what} to resume: `sol resume {what} NAME`")
    for line in resume_object(sphere(), what, name):
        say(line)


def resume_object(sp: Sphere, what: str, name: str) -> list[str]:
    """`sol resume KIND NAME` (and the dashboard's `s` on a suspended writ): lift the
    `sol suspend`, wake the daemon, and say what happened; a SolError when the spec
    still suspends it."""
    with sp.store.transaction():
        record = _record(sp.store, what, name)
        label = _label(what, record)
        had = record.status.get(STATUS_KEY[what])
        if had is not None:
            record = sp.store.set_status(record.key, **{STATUS_KEY[what]: None}) or record
            sp.store.event("resumed", kind=record.kind, world=record.world or record.name,
                           name=record.name, message=f"{label} resumed by sol resume",
                           what=what)
        still = suspension(what, record)
    if still is not None and still.by_spec:
        removed = "its `sol suspend` is lifted, but " if had is not None else ""
        where = f" ({record.origin})" if record.origin else ""
        raise SolError(f"{removed}{label} is suspended by its spec{where}: {still.undo}")
    if had is None:
        return [f"{label} is not suspended: nothing to resume."]
    return [f"Resumed {label}.", *wake(sp, "applies it")]


def _leave_degraded() -> None:
    from reconciler.daemon.watch import touch

    sp = sphere()
    state = degraded.state(sp.store)
    if not degraded.resume(sp.store) or state is None:
        click.echo("Not degraded: nothing to resume.")
        return
    touch(sp.home.run / "wake")
    click.echo(f"Resumed: left Degraded mode ({state.reason}).")


COMMANDS = [retry, suspend, resume]
