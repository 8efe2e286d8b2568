"""Event notifications: the `notify` commands and webhooks of sol.yaml, through an outbox.

The sphere config names who hears which events::

    # $SOL_HOME/sol.yaml
    notify:
      - ~/bin/page-me        # failed, escalated, merged; degraded comes from the sentinel
      - command: "notify-send --app-name=sol"
        events: [merged, failed]             # event types as `sol events` shows them
        timeout: 30s                         # default 60s for a command, 10s for a webhook; max 5m
      - webhook: https://hooks.example.org/sol
        events: ["*"]                        # every event (notify-failed only when listed)

A command runs as `shlex.split(command) + [type, message]`, never through a shell, in
SOL_HOME, with SOL_EVENT (the type), SOL_WORLD, SOL_OBJECT (the object's name),
SOL_MESSAGE, SOL_EVENT_JSON (the whole event) and SOL_DELIVERY (the outbox id, the same
on every retry) in its environment; exit 0 means delivered. A webhook gets an HTTP POST
whose body is the event as JSON (headers X-Sol-Event and X-Sol-Delivery); any 2xx means
delivered, redirects are not followed.

How delivery survives crashes and never blocks: the notifier is its own supervised child
of the prefect. A pass first moves the events after the cursor (meta `notify-cursor`)
into the outbox table, one row per (event, target) that wants it, in the same
transaction that advances the cursor, so every event is queued exactly once however the
process dies. It then marks due rows `sending`, delivers them (one worker thread per
target, rows of a target in order, each delivery cut at the target's timeout) and marks
each `delivered` the moment it succeeds. A failure records the error and retries the
row, and defers the target's other rows, with backoff from 5 s doubling to 10 min; after
100 attempts (about 16 hours) the row is `dead` and a `notify-failed` event says so.
Rows still `sending` when a pass starts were in flight when a notifier died: they are
delivered again, so a delivery is at least once and exactly once unless the process
dies between the delivery and its record (SOL_DELIVERY lets a receiver tell). Rows whose
target was removed from sol.yaml are marked dead with a `notify-failed` event.

Crash points for tests: env SOL_NOTIFY_CRASH=enqueue|enqueued|sending|delivered makes
the process exit at once inside the enqueue transaction, after it, after the claim, or
after the first delivery and before its record.
"""

from __future__ import annotations

import json
import os
import queue
import shlex
import signal
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterable
from http.client import HTTPException
from typing import Any

from loguru import logger

from reconciler.core.config import NotifyTarget, load_config
from reconciler.core.locks import flock
from reconciler.core.store import OutboxRow, Store
from reconciler.drivers.sphere import Sphere

CURSOR = "notify-cursor"
BACKOFF_FIRST, BACKOFF_MAX = 5.0, 600.0   # env SOL_NOTIFY_BACKOFF="FIRST,MAX" (tests)
MAX_ATTEMPTS = 100                        # env SOL_NOTIFY_ATTEMPTS (tests)
CLAIM = 64            # rows one pass delivers at most (the rest: the next pass, at once)
PASS_BUDGET = 60.0    # seconds after which a worker starts no new delivery this pass
OUTPUT_TAIL = 300     # characters of a failed command's output kept as its error
Result = tuple[OutboxRow, str | None, bool]  # row, error (None: delivered), attempted


def backoff(attempts: int) -> float:
    """Seconds before the next try of a row that has failed `attempts` times."""
    first, most = BACKOFF_FIRST, BACKOFF_MAX
    override = os.environ.get("SOL_NOTIFY_BACKOFF")
    if override:
        first, most = (float(x) for x in override.split(",", 1))
    return min(first * 2 ** max(0, attempts - 1), most)


def max_attempts() -> int:
    return int(os.environ.get("SOL_NOTIFY_ATTEMPTS") or MAX_ATTEMPTS)


def _crash_point(name: str) -> None:
    """Die here, as a kill -9 would, when a test asks for it."""
    if os.environ.get("SOL_NOTIFY_CRASH") == name:
        os._exit(86)


# ---- the pass ----------------------------------------------------------------------


def pass_once(sphere: Sphere) -> int:
    """Queue new events for their targets, then deliver what is due; the deliveries
    attempted. sol.yaml is read afresh, so an edit applies from the next pass; a broken
    sol.yaml raises SolError before anything moves, so nothing is queued without it."""
    with flock(sphere.home.run / "notify.lock", blocking=False) as held:
        if not held:
            return 0  # another process is delivering; it finishes what is due
        targets = {t.key: t for t in load_config(sphere.home).notify_targets}
        store = sphere.store
        _recover(store)
        enqueue(store, targets.values())
        return _deliver(sphere, targets)


def requeue_after(sphere: Sphere) -> float | None:
    """Seconds until a retry is due (0: events wait to be queued); None when nothing waits
    for a timer (new events wake the notifier through the prefect)."""
    store = sphere.store
    if store.last_event_id() > int(store.get_meta(CURSOR) or 0):
        return 0.0
    due = store.outbox_next_due()
    return None if due is None else max(0.0, due - time.time())


def enqueue(store: Store, targets: Iterable[NotifyTarget]) -> int:
    """Move the events after the cursor into the outbox; the number of rows queued."""
    cursor = int(store.get_meta(CURSOR) or 0)
    events = store.events(after=cursor)
    if not events:
        return 0
    wanted = list(targets)
    rows = [(e.id, t.key) for e in events for t in wanted
            if t.wants(e.type) and e.data.get("target") != t.key]
    with store.transaction():
        if int(store.get_meta(CURSOR) or 0) != cursor:
            return 0  # another pass moved it first
        added = store.outbox_add(rows, due_at=time.time())
        _crash_point("enqueue")
        store.set_meta(CURSOR, str(events[-1].id))
    _crash_point("enqueued")
    return added


def _recover(store: Store) -> None:
    """Rows left `sending` by a notifier that died mid-delivery go out again."""
    stuck = [r.id for r in store.outbox(["sending"])]
    if stuck:
        store.outbox_set(stuck, "pending", expect="sending")
        logger.warning("{n} notification(s) were in flight when a notifier stopped: "
                       "delivering them again", n=len(stuck))


def _deliver(sphere: Sphere, targets: dict[str, NotifyTarget]) -> int:
    store = sphere.store
    rows = store.outbox_claim(time.time(), CLAIM)
    if not rows:
        return 0
    _crash_point("sending")
    _drop_orphans(store, [r for r in rows if r.target not in targets], str(sphere.home.config))
    by_target: dict[str, list[OutboxRow]] = {}
    for row in rows:
        if row.target in targets:
            by_target.setdefault(row.target, []).append(row)
    results: queue.Queue[Result] = queue.Queue()
    deadline = time.monotonic() + PASS_BUDGET
    workers = [threading.Thread(target=_worker, name=f"sol-notify-{n}", daemon=True,
                                args=(targets[key], batch, results, deadline, sphere))
               for n, (key, batch) in enumerate(by_target.items())]
    for worker in workers:
        worker.start()
    attempted = 0
    for _ in range(sum(len(batch) for batch in by_target.values())):
        row, error, tried = results.get()
        attempted += tried
        if tried:
            _crash_point("delivered")
        _record(store, targets[row.target], row, error, tried)
    for worker in workers:
        worker.join()
    return attempted


def _worker(target: NotifyTarget, rows: list[OutboxRow], results: queue.Queue[Result],
            deadline: float, sphere: Sphere) -> None:
    """Deliver one target's rows in order; after a failure or past the pass budget the
    rest are handed back untried. Touches no store: SQLite stays in the main thread."""
    failed = False
    for row in rows:
        if failed or time.monotonic() > deadline:
            results.put((row, None, False))
            continue
        try:
            error = deliver(target, row, cwd=str(sphere.home.root))
        except Exception as exc:  # a bug must not leave the row unrecorded
            error = f"{type(exc).__name__}: {exc}"
        failed = error is not None
        results.put((row, error, True))


def _record(store: Store, target: NotifyTarget, row: OutboxRow, error: str | None,
            tried: bool) -> None:
    """Write down one result right away: delivered, retry later, dead, or untried."""
    event = row.event
    what = f"{event.type} #{event.id}"
    if not tried:
        store.outbox_set([row.id], "pending", expect="sending")
        return
    if error is None:
        store.outbox_set([row.id], "delivered", expect="sending", error="", attempted=True)
        logger.info("notified {target} of {what}", target=target.key, what=what)
        return
    attempts = row.attempts + 1
    if attempts >= max_attempts():
        with store.transaction():
            store.outbox_set([row.id], "dead", expect="sending", error=error, attempted=True)
            store.event("notify-failed", kind=event.kind, world=event.world, name=event.name,
                        message=f"gave up notifying {target.key} of {what} after {attempts} "
                                f"attempts: {error}",
                        target=target.key, event_id=event.id, attempts=attempts, error=error)
        logger.error("gave up notifying {target} of {what}: {err}", target=target.key,
                     what=what, err=error)
        return
    due = time.time() + backoff(attempts)
    with store.transaction():
        store.outbox_set([row.id], "pending", expect="sending", due_at=due, error=error,
                         attempted=True)
        store.outbox_defer(target.key, due)
    logger.warning("notifying {target} of {what} failed (attempt {n}): {err}; retry in "
                   "{wait:.0f}s", target=target.key, what=what, n=attempts, err=error,
                   wait=due - time.time())


def _drop_orphans(store: Store, rows: list[OutboxRow], config: str) -> None:
    """Rows whose target left sol.yaml: dead, and one event per target says so."""
    by_target: dict[str, list[OutboxRow]] = {}
    for row in rows:
        by_target.setdefault(row.target, []).append(row)
    for key, batch in by_target.items():
        with store.transaction():
            store.outbox_set([r.id for r in batch], "dead", expect="sending",
                             error=f"the target was removed from {config}")
            store.event("notify-failed", kind="Sphere", target=key, dropped=len(batch),
                        message=f"{len(batch)} notification(s) for {key} not delivered: it "
                                f"was removed from {config}")


# ---- one delivery ------------------------------------------------------------------


def deliver(target: NotifyTarget, row: OutboxRow, *, cwd: str | None = None) -> str | None:
    """Deliver one row to its target; None on success, else the error in a few words."""
    if target.kind == "webhook":
        return _post(target, row)
    return _run(target, row, cwd)


def _event_json(row: OutboxRow) -> str:
    return json.dumps(row.event.to_dict(), default=str)


def _run(target: NotifyTarget, row: OutboxRow, cwd: str | None) -> str | None:
    """The command with the event as arguments and environment, in its own process
    group, killed with that group at the timeout; output to a file, never a pipe a
    stray grandchild could hold open."""
    event = row.event
    argv = shlex.split(target.address)
    argv[0] = os.path.expanduser(argv[0])
    env = {**os.environ, "SOL_EVENT": event.type, "SOL_WORLD": event.world,
           "SOL_OBJECT": event.name, "SOL_MESSAGE": event.message,
           "SOL_EVENT_JSON": _event_json(row), "SOL_DELIVERY": str(row.id)}
    with tempfile.TemporaryFile() as out:
        try:
            proc = subprocess.Popen([*argv, "--", event.type, event.message], cwd=cwd, env=env,
                                    stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        except OSError as exc:
            return f"cannot start {argv[0]}: {exc.strerror or exc}"
        try:
            code = proc.wait(timeout=target.timeout)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()
            return f"timed out after {target.timeout:g}s"
        if code == 0:
            return None
        out.seek(0)
        tail = out.read().decode(errors="replace").strip()[-OUTPUT_TAIL:]
        return f"exit code {code}" + (f": {tail}" if tail else "")


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A webhook that redirects has moved: say so rather than POST somewhere else."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_OPENER = urllib.request.build_opener(_NoRedirect)


def _post(target: NotifyTarget, row: OutboxRow) -> str | None:
    request = urllib.request.Request(
        target.address, data=_event_json(row).encode(), method="POST",
        headers={"Content-Type": "application/json", "User-Agent": "sol-notify",
                 "X-Sol-Event": row.event.type, "X-Sol-Delivery": str(row.id)})
    try:
        with _OPENER.open(request, timeout=target.timeout) as response:
            status = response.status
            response.read(65536)
    except urllib.error.HTTPError as exc:
        return f"HTTP {exc.code} {exc.reason}"
    except urllib.error.URLError as exc:
        return f"cannot reach {target.key}: {exc.reason}"
    except TimeoutError:
        return f"no answer within {target.timeout:g}s"
    except (OSError, HTTPException) as exc:
        return f"{type(exc).__name__}: {exc}"
    return None if 200 <= status < 300 else f"HTTP {status}"
