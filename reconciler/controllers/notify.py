"""Event notifications: the `notify` commands and webhooks of sol.yaml, through an outbox.

The sphere config names who hears which events::

    # $SOL_HOME/sol.yaml
    notify:
      - ~/bin/page-me        # failed, escalated, merged, degraded, rate-limited, budget-exceeded
      - command: "notify-send --app-name=sol"
        events: [merged, failed]             # event types as `sol events` shows them
        timeout: 30s                         # default 60s for a command, 10s for a webhook; max 5m
      - webhook: https://hooks.example.org/sol
        events: ["*"]                        # every event (notify-failed only when listed)

A command runs as `shlex.split(command) + ["--", type, message]`, never through a shell,
in SOL_HOME, with SOL_EVENT (the type), SOL_WORLD, SOL_OBJECT (the object's name),
SOL_MESSAGE, SOL_EVENT_JSON (the whole event) and SOL_DELIVERY (the outbox id, the same
on every retry) in its environment; exit 0 means delivered. A webhook gets an HTTP POST
whose body is the event as JSON (headers X-Sol-Event and X-Sol-Delivery); any 2xx means
delivered, redirects are not followed. Every event goes this one way, the sphere's
`degraded` and `recovered` included.

How delivery survives crashes and never blocks: the notifier is its own supervised child
of the prefect, and this reconciler is all it runs. observe reads sol.yaml afresh (so an
edit applies from the next pass; a broken one raises before anything moves), the events
after the cursor (meta `notify-cursor`) and the outbox; plan (pure) decides, in steps:

    redeliver  rows still `sending` were in flight when a notifier died: pending again
    enqueue    the events after the cursor, one row per (event, target) that wants it,
               queued in the same transaction that advances the cursor, so every event
               is queued exactly once however the process dies
    drop       due rows whose target was removed from sol.yaml: dead, one
               `notify-failed` event per target says so
    deliver    the due rows (at most CLAIM), one action for all targets: act marks them
               `sending`, delivers them with one worker thread per target (rows of a
               target in order, each cut at the target's timeout, so a hanging webhook
               never delays a command) and marks each `delivered` the moment it succeeds

A failure records the error and retries the row, and defers the target's other rows,
with backoff from 5 s doubling to 10 min; after 100 attempts (about 16 hours) the row is
`dead` and a `notify-failed` event says so. A delivery is at least once, and exactly
once unless the process dies between the delivery and its record (SOL_DELIVERY lets a
receiver tell). The plan looks again at once after any step, else when the next retry
is due; new events wake the notifier through the prefect.

Crash points for tests: env SOL_NOTIFY_CRASH=enqueue|enqueued|sending|delivered makes
the process exit at once inside the enqueue transaction, after it, after the claim, or
after the first delivery and before its record.
"""

from __future__ import annotations

import dataclasses
import json
import os
import queue
import shlex
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

from loguru import logger

from reconciler.controllers.base import Reconciler, Scope
from reconciler.core.backoff import exponential
from reconciler.core.config import NotifyTarget, load_config
from reconciler.core.locks import flock
from reconciler.core.plan import CREATE, DELETE, UPDATE, Action, Plan
from reconciler.core.store import Event, OutboxRow, Store
from reconciler.drivers.sphere import Sphere

CURSOR = "notify-cursor"
OUTBOX = "outbox"     # the target of every notifier action in a plan
BACKOFF_FIRST, BACKOFF_MAX = 5.0, 600.0   # env SOL_NOTIFY_BACKOFF="FIRST,MAX" (tests)
MAX_ATTEMPTS = 100                        # env SOL_NOTIFY_ATTEMPTS (tests)
CLAIM = 64            # rows one step delivers at most (the rest: the next step, at once)
PASS_BUDGET = 60.0    # seconds after which a worker starts no new delivery this step
OUTPUT_TAIL = 300     # characters of a failed command's output kept as its error
Outcome = tuple[OutboxRow, str | None, bool]  # row, error (None: delivered), attempted


def backoff(attempts: int) -> float:
    """Seconds before the next try of a row that has failed `attempts` times."""
    first, most = BACKOFF_FIRST, BACKOFF_MAX
    override = os.environ.get("SOL_NOTIFY_BACKOFF")
    if override:
        first, most = (float(x) for x in override.split(",", 1))
    return exponential(attempts - 1, start=first, cap=most)


def max_attempts() -> int:
    return int(os.environ.get("SOL_NOTIFY_ATTEMPTS") or MAX_ATTEMPTS)


def _crash_point(name: str) -> None:
    """Die here, as a kill -9 would, when a test asks for it."""
    if os.environ.get("SOL_NOTIFY_CRASH") == name:
        os._exit(86)


# ---- observe and plan --------------------------------------------------------------


@dataclass(frozen=True)
class NotifyView:
    """The targets of sol.yaml, the events after the cursor and the outbox, at `now`."""

    now: float
    targets: tuple[NotifyTarget, ...]
    cursor: int
    events: tuple[Event, ...]       # after the cursor, oldest first
    in_flight: tuple[int, ...]      # rows `sending`: their notifier died mid-delivery
    due: tuple[OutboxRow, ...]      # pending rows due at `now`, oldest first, at most CLAIM
    next_due: float | None          # when the earliest pending row is due


def observe(sphere: Sphere, key: str = "") -> NotifyView:
    """Read sol.yaml, the new events and the outbox; `key` is "" (the whole sphere). A
    notifier holds the delivery lock from claim to record, so a row read `sending` here
    is one whose notifier died, or one another notifier is delivering right now (the
    redeliver step waits for that lock, then finds it recorded)."""
    targets = load_config(sphere.home).notify_targets
    store = sphere.store
    now = time.time()
    cursor = int(store.get_meta(CURSOR) or 0)
    return NotifyView(now, targets, cursor, tuple(store.events(after=cursor)),
                      tuple(r.id for r in store.outbox(["sending"])),
                      tuple(store.outbox(["pending"], due_before=now, limit=CLAIM)),
                      store.outbox_next_due())


def plan(view: NotifyView) -> Plan:
    """Pure: redeliver, enqueue, drop and deliver, each only when there is something to
    do; at once again after any step (queued rows are due, a dead row's event waits to
    be queued), else when the next retry is due."""
    actions: list[Action] = []
    if view.in_flight:
        actions.append(Action(UPDATE, "redeliver", OUTBOX,
                              f"deliver again {len(view.in_flight)} notification(s) in "
                              "flight when a notifier stopped", {"rows": list(view.in_flight)}))
    if view.events:
        rows = [[e.id, t.key] for e in view.events for t in view.targets
                if t.wants(e.type) and e.data.get("target") != t.key]
        actions.append(Action(CREATE, "enqueue", OUTBOX,
                              f"queue {len(rows)} notification(s) of {len(view.events)} new "
                              "event(s)", {"cursor": view.cursor, "last": view.events[-1].id,
                                           "rows": rows}))
    configured = {t.key for t in view.targets}
    batches: dict[str, list[int]] = {}
    gone: dict[str, list[int]] = {}
    for row in view.due:
        (batches if row.target in configured else gone).setdefault(row.target, []).append(
            row.id)
    for key, ids in gone.items():
        actions.append(Action(DELETE, "drop", OUTBOX, f"{len(ids)} notification(s) for "
                              f"{key}: the target was removed from sol.yaml",
                              {"target": key, "rows": ids}))
    if batches:
        count = sum(len(ids) for ids in batches.values())
        actions.append(Action(UPDATE, "deliver", OUTBOX, f"deliver {count} notification(s) "
                              f"to {', '.join(batches)}", {"now": view.now, "rows": batches}))
    if actions:
        return Plan(tuple(actions), 0.0)
    return Plan(requeue_after=None if view.next_due is None
                else max(0.0, view.next_due - view.now))


# ---- act ---------------------------------------------------------------------------


def act(sphere: Sphere, action: Action) -> bool:
    """One step; False when another process did it first (the cursor moved, the rows
    were recorded or claimed)."""
    data = action.data
    if action.kind == "redeliver":
        return _redeliver(sphere, data["rows"])
    if action.kind == "enqueue":
        return _enqueue(sphere.store, data["cursor"], data["last"], data["rows"])
    if action.kind == "drop":
        return _drop(sphere.store, data["target"], data["rows"], str(sphere.home.config))
    if action.kind == "deliver":
        return _deliver(sphere, data["rows"], data["now"]) is not None
    return False


def _lock(sphere: Sphere) -> AbstractContextManager[bool]:
    """Held by a notifier from claiming rows to recording them; waited for, not skipped,
    so rows another notifier is delivering are never taken for stuck ones."""
    return flock(sphere.home.run / "notify.lock")


def _redeliver(sphere: Sphere, ids: Sequence[int]) -> bool:
    with _lock(sphere):
        moved = sphere.store.outbox_set(ids, "pending", expect="sending")
    if moved:
        logger.warning("{n} notification(s) were in flight when a notifier stopped: "
                       "delivering them again", n=moved)
    return moved > 0


def _enqueue(store: Store, cursor: int, last: int, rows: Sequence[Sequence[Any]]) -> bool:
    """Queue the rows and move the cursor past `last`, in one transaction, unless another
    notifier moved the cursor first."""
    with store.transaction():
        if int(store.get_meta(CURSOR) or 0) != cursor:
            return False
        store.outbox_add([(int(e), str(t)) for e, t in rows], due_at=time.time())
        _crash_point("enqueue")
        store.set_meta(CURSOR, str(last))
    _crash_point("enqueued")
    return True


def _drop(store: Store, key: str, ids: Sequence[int], config: str) -> bool:
    """Rows whose target left sol.yaml: dead, and one event says so."""
    with store.transaction():
        dropped = store.outbox_set(ids, "dead", expect="pending",
                                   error=f"the target was removed from {config}")
        if dropped:
            store.event("notify-failed", kind="Sphere", target=key, dropped=dropped,
                        message=f"{dropped} notification(s) for {key} not delivered: it "
                                f"was removed from {config}")
    return dropped > 0


def _deliver(sphere: Sphere, batches: Mapping[str, Sequence[int]], now: float
             ) -> int | None:
    """Claim the planned rows still pending and due (of targets still in sol.yaml) and
    deliver them, one worker thread per target; each result is recorded as it comes.
    The deliveries attempted; None when no row was left to claim."""
    targets = {t.key: t for t in load_config(sphere.home).notify_targets}
    store = sphere.store
    with _lock(sphere):
        with store.transaction():
            due = {r.id: r for r in store.outbox(["pending"], due_before=now)}
            by_target = {key: [due[i] for i in ids if i in due]
                         for key, ids in batches.items() if key in targets}
            by_target = {key: rows for key, rows in by_target.items() if rows}
            store.outbox_set([r.id for rows in by_target.values() for r in rows], "sending",
                             expect="pending")
        if not by_target:
            return None
        _crash_point("sending")
        results: queue.Queue[Outcome] = queue.Queue()
        deadline = time.monotonic() + PASS_BUDGET
        workers = [threading.Thread(target=_worker, name=f"sol-notify-{n}", daemon=True,
                                    args=(targets[key], rows, results, deadline, sphere))
                   for n, (key, rows) in enumerate(by_target.items())]
        for worker in workers:
            worker.start()
        attempted = 0
        for _ in range(sum(len(rows) for rows in by_target.values())):
            row, error, tried = results.get()
            if tried:
                attempted += 1
                _crash_point("delivered")
            _record(store, targets[row.target], row, error, tried)
        for worker in workers:
            worker.join()
    return attempted


def _worker(target: NotifyTarget, rows: list[OutboxRow], results: queue.Queue[Outcome],
            deadline: float, sphere: Sphere) -> None:
    """Deliver one target's rows in order; after a failure or past the step's budget the
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


RECONCILER = Reconciler(name="notifier", scope=Scope.SPHERE, owner="notifier",
                        observe=observe, plan=plan, act=act)


def pass_once(sphere: Sphere) -> int:
    """One reconcile of the notifier (until the daemon calls RECONCILER); the deliveries
    attempted."""
    attempted = 0

    def counting(sphere: Sphere, action: Action) -> bool:
        nonlocal attempted
        if action.kind != "deliver":
            return act(sphere, action)
        tried = _deliver(sphere, action.data["rows"], action.data["now"])
        attempted += tried or 0
        return tried is not None

    dataclasses.replace(RECONCILER, act=counting).reconcile(sphere)
    return attempted


def requeue_after(sphere: Sphere) -> float | None:
    """Seconds until the notifier has something to do (0: now); None when nothing waits
    for a timer (new events wake the notifier through the prefect)."""
    return RECONCILER.planned(sphere).requeue_after


# ---- one delivery ------------------------------------------------------------------


def deliver(target: NotifyTarget, row: OutboxRow, *, cwd: str | None = None) -> str | None:
    """Deliver one row to its target; None on success, else the error in a few words."""
    if target.kind == "webhook":
        from reconciler.drivers import webhooks  # http: imported by a delivery only

        return webhooks.post(target.address, _event_json(row).encode(), timeout=target.timeout,
                             name=target.key, event=row.event.type, delivery=row.id)
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
