"""The world reconciler: keeps `worlds/<w>/repo` a clone of the world's source, fetched
every `fetchInterval`, and each world's status true to it.

observe reads (is the clone there, its branch's head, when the world was last fetched:
meta `fetched:<w>`); plan (pure) clones what is missing, fetches what is due and marks
Ready a world whose status no longer shows its head (a landing moved the branch); act
clones or fetches and records the outcome (Ready at the head found, or `Error` with
git's message, while the other worlds carry on). See docs/decisions/0002.

It also keeps each world's `Suspended` condition true to `core.suspension` (the world
or its forge suspended by the spec or by `sol suspend`), so a suspension shows the same
in `describe` and `-o json` whichever way it was made, and its `RateLimited` and
`BudgetExceeded` conditions true to `core.holds` (set while a hold lasts, cleared when
it ends: the plan looks again then).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from reconciler.controllers.base import Reconciler, Scope
from reconciler.core.conditions import with_condition
from reconciler.core.errors import SolError
from reconciler.core.holds import CONDITIONS as HOLD_CONDITIONS
from reconciler.core.holds import holds
from reconciler.core.locks import flock
from reconciler.core.model import ERROR, READY, WorldSpec
from reconciler.core.plan import CREATE, NOTE, UPDATE, Action, Plan
from reconciler.core.status import condition
from reconciler.core.store import Record
from reconciler.core.suspension import CONDITION, world_condition
from reconciler.core.times import rfc3339
from reconciler.drivers import backup, worktrees
from reconciler.drivers.sphere import Sphere
from reconciler.specs.changes import target

FETCH_FLOOR = 1.0
"""Seconds a pass waits at least before it looks again for a fetch, so `fetchInterval: 0`
fetches on every pass rather than in a busy loop."""


@dataclass(frozen=True)
class WorldView:
    """One applied world and its clone as observed."""

    record: Record
    cloned: bool
    head: str | None       # the world's branch in the clone; None: missing or no clone
    fetched_at: float      # the last clone or fetch (success or failure); 0: never


@dataclass(frozen=True)
class WorldsView:
    """Every applied world at `now`, and how often their sources are fetched."""

    worlds: tuple[WorldView, ...]
    now: float
    fetch_interval: float


def fetched_key(world: str) -> str:
    """The meta key holding when the world was last cloned or fetched."""
    return f"fetched:{world}"


def observe(sphere: Sphere, key: str = "") -> WorldsView:
    """Read each world's clone and last fetch; `key` is "" (every world)."""
    views = []
    for record in sphere.store.list("World"):
        repo = sphere.home.repo(record.name)
        cloned = worktrees.is_clone(repo)
        views.append(WorldView(record, cloned, _head(repo, record) if cloned else None,
                               float(sphere.store.get_meta(fetched_key(record.name)) or 0)))
    return WorldsView(tuple(views), time.time(), sphere.config.fetch_interval)


def _head(repo: Path, record: Record) -> str | None:
    try:
        return worktrees.rev(repo, f"refs/heads/{WorldSpec.from_spec(record.spec).branch}")
    except SolError:
        return None  # unreadable: a fetch finds out why and says so


def fetch_due(world: WorldView, now: float, interval: float) -> bool:
    """The interval has passed, or the spec changed since the status was written (say,
    another branch: fetched at once), or the branch is missing from the clone and no
    error says why yet."""
    r = world.record
    return (now - world.fetched_at >= interval or r.observed_generation != r.generation
            or (world.head is None and r.phase != ERROR))


def _suspension_change(world: Record) -> str | None:
    """What the `Suspended` condition should become, when it does not say so already."""
    wanted = world_condition(world)
    if wanted is None:
        return None
    state, reason, message = wanted
    found = condition(world.status, CONDITION) or {}
    if (found.get("status"), found.get("reason"), found.get("message")) == (
            str(state), reason, message):
        return None
    return f"condition {CONDITION}={state}: {message}"


def hold_changes(world: Record, now: float) -> list[tuple[str, bool, str]]:
    """The hold conditions (RateLimited, BudgetExceeded) that do not say yet what
    `core.holds` says now: (type, state, message) to write. A condition never set
    stays unset while its cause is absent."""
    current = {h.cause: h for h in holds(world.status, now)}
    changes = []
    for cause in HOLD_CONDITIONS:
        hold = current.get(cause)
        found = condition(world.status, cause)
        if hold is not None:
            message = f"{hold.why}; no new agent and no respawn until {rfc3339(hold.until)}"
            if (found or {}).get("status") != "True" or found.get("message") != message:
                changes.append((cause, True, message))
        elif found is not None and found.get("status") == "True":
            changes.append((cause, False, "the hold has ended"))
    return changes


def ready_message(branch: str, head: str) -> str:
    return f"{branch} at {head[:12]}"


def plan(view: WorldsView) -> Plan:
    """Pure: per applied, non-orphaned world, a clone when it is missing, else a fetch
    when due, else a Ready status when the status does not show the branch's head (an
    `Error` stays until the next fetch tries again). Look again when the next fetch is
    due; a clone that failed is tried again on the next pass."""
    actions: list[Action] = []
    next_fetch: list[float] = []
    for world in sorted(view.worlds, key=lambda w: w.record.name):
        r = world.record
        if r.orphaned:
            continue
        spec = WorldSpec.from_spec(r.spec)
        where = target("World", "", r.name)
        if not world.cloned:
            actions.append(Action(CREATE, "clone", where,
                                  f"clone {spec.source} (branch {spec.branch})",
                                  {"world": r.name}))
        elif fetch_due(world, view.now, view.fetch_interval):
            actions.append(Action(UPDATE, "fetch", where,
                                  f"fetch {spec.branch} from {spec.source}", {"world": r.name}))
            next_fetch.append(view.now + view.fetch_interval)
        else:
            next_fetch.append(world.fetched_at + view.fetch_interval)
            head = world.head or ""
            wanted = (READY, "Cloned", ready_message(spec.branch, head), r.generation, head)
            if r.phase != ERROR and wanted != (r.phase, r.reason, r.message,
                                               r.observed_generation, r.status.get("head")):
                actions.append(Action(UPDATE, "ready", where,
                                      f"status Ready: {ready_message(spec.branch, head)}",
                                      {"world": r.name, "head": head, "version": r.version}))
        suspended = _suspension_change(r)
        if suspended is not None:
            actions.append(Action(NOTE, "suspended", where, suspended, {"world": r.name}))
        for cause, state, message in hold_changes(r, view.now):
            actions.append(Action(NOTE, "hold", where, f"condition {cause}={state}: {message}",
                                  {"world": r.name}))
        next_fetch += [h.until for h in holds(r.status, view.now)]
    requeue = max(FETCH_FLOOR, min(next_fetch) - view.now) if next_fetch else None
    return Plan(tuple(actions), requeue)


def act(sphere: Sphere, action: Action) -> bool:
    """One world action; False when the world is gone, orphaned, already cloned, or its
    status moved since it was observed."""
    name = action.data["world"]
    world = sphere.store.get("World", "", name)
    if world is None or world.orphaned:
        return False
    if action.kind == "clone":
        return _clone(sphere, world, action.description)
    if action.kind == "fetch":
        _fetch(sphere, world)
        return True
    if action.kind == "ready":
        return _set_ready(sphere, world, action.data["head"],
                          expect_version=action.data["version"])
    if action.kind == "suspended":
        return _set_suspended(sphere, world.key)
    if action.kind == "hold":
        return _set_holds(sphere, world.key)
    return False


def _set_holds(sphere: Sphere, key: tuple[str, str, str]) -> bool:
    """The hold conditions as the world reads now; False when they already say so."""
    with sphere.store.transaction():
        world = sphere.store.get(*key)
        changes = hold_changes(world, time.time()) if world is not None else []
        if world is None or not changes:
            return False
        status = dict(world.status)
        for cause, state, message in changes:
            status["conditions"] = with_condition(status, cause, state, cause if state
                                                  else "HoldEnded", message)
        return sphere.store.set_status(key, conditions=status["conditions"]) is not None


def _set_suspended(sphere: Sphere, key: tuple[str, str, str]) -> bool:
    """The `Suspended` condition as the world reads now (not as planned: a resume may
    have come since); False when it already says so."""
    with sphere.store.transaction():
        world = sphere.store.get(*key)
        if world is None or _suspension_change(world) is None:
            return False
        state, reason, message = world_condition(world) or (False, "", "")
        return sphere.store.set_status(key, conditions=with_condition(
            world.status, CONDITION, state, reason, message)) is not None


def _clone(sphere: Sphere, world: Record, description: str) -> bool:
    """Clone the source; restore agents' work from the backup into a clone made again."""
    spec = WorldSpec.from_spec(world.spec)
    repo = sphere.home.repo(world.name)
    with flock(sphere.home.run / f"world-{world.name}.lock"):
        if worktrees.is_clone(repo):
            return False
        try:
            worktrees.clone(spec.source, repo, spec.branch)
        except SolError as exc:
            _set_error(sphere, world, exc.message)
            return True
    sphere.store.set_meta(fetched_key(world.name), str(time.time()))
    sphere.store.event("cloned", kind="World", world=world.name, name=world.name,
                       message=description)
    _restore(sphere, world.name, repo, spec.branch)
    _set_ready(sphere, world, worktrees.rev(repo, f"refs/heads/{spec.branch}") or "")
    return True


def _fetch(sphere: Sphere, world: Record) -> None:
    """Fetch and record the outcome; a failure, too, waits for the next interval (the
    error is in the status meanwhile), so a source that is down is not hammered."""
    spec = WorldSpec.from_spec(world.spec)
    try:
        head, error = worktrees.fetch(sphere.home.repo(world.name), spec.branch), None
    except SolError as exc:
        head, error = "", exc.message
    sphere.store.set_meta(fetched_key(world.name), str(time.time()))
    if error is None:
        _set_ready(sphere, world, head)
    else:
        _set_error(sphere, world, error)


def _set_ready(sphere: Sphere, world: Record, head: str, *,
               expect_version: int | None = None) -> bool:
    spec = WorldSpec.from_spec(world.spec)
    return sphere.store.set_status(
        world.key, phase=READY, reason="Cloned", message=ready_message(spec.branch, head),
        observed_generation=world.generation, head=head, expect_version=expect_version,
    ) is not None


def _set_error(sphere: Sphere, world: Record, message: str) -> None:
    """The error in the status; an event only when it is news (not on every retry)."""
    with sphere.store.transaction():
        before = sphere.store.get(*world.key)
        sphere.store.set_status(world.key, phase=ERROR, reason="GitError", message=message,
                                observed_generation=world.generation)
        if before is None or before.phase != ERROR or before.message != message:
            sphere.store.event("error", kind="World", world=world.name, name=world.name,
                               message=message)


def _restore(sphere: Sphere, world: str, repo: Path, branch: str) -> None:
    """A clone made again: agents' branches (and landed, unpushed work) come back from
    the backup, and worktrees that lived in the old clone are re-attached in place."""
    try:
        restored = backup.restore(repo, branch)
        stations = [(sphere.home.worktree(world, a.name), f"sol/{a.writ}")
                    for a in sphere.store.agents(world) if a.writ]
        envoys = sphere.home.world_dir(world) / "envoys"
        stations += [(d / "worktree", f"envoy/{d.name}")
                     for d in sorted(envoys.iterdir()) if d.is_dir()] if envoys.is_dir() else []
        reattached = [str(path) for path, ref in stations if backup.reattach(repo, path, ref)]
    except SolError as exc:
        sphere.store.event("restore-failed", kind="World", world=world, name=world,
                           message=f"cannot restore agents' work from the backup: {exc.message}")
        return
    if restored or reattached:
        sphere.store.event(
            "restored", kind="World", world=world, name=world,
            message=f"from the backup: branches {', '.join(restored) or 'none'}; "
                    f"worktrees re-attached: {', '.join(reattached) or 'none'}")


RECONCILER = Reconciler(name="worlds", scope=Scope.SPHERE, owner="consul",
                        observe=observe, plan=plan, act=act)


def reconcile(sphere: Sphere) -> list[Action]:
    """One pass over every applied world (until the registry calls RECONCILER)."""
    return list(RECONCILER.reconcile(sphere).actions)
