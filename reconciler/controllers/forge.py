"""The forge: each world's merge queue. Merge, run the gates, land or send back.

observe (the world's active merge requests, their writs, the target tip, whether a
writ's `Sol-Writ:` trailer is already on the target), plan (`plan_forge`, pure), act
(one idempotent action at a time, each recorded as an event). Writs go `Resolved` ->
`Merging` -> `Merged`; merge requests `Queued` -> `Merging` -> `Merged`, `SentBack` or
`Failed`. The forge merges in its own detached worktree (`worlds/<w>/forge/worktree`),
never on the target branch, which moves only by compare-and-set once every gate passed.
This module keeps the queue; one merge, and what follows a landing, are in landing.py.

Crash safety: an MR found `Merging` is recovered first (worktree reset, merged again),
and one whose trailer is already on the target is recorded Merged, never merged twice.
Every crash point can be exercised: with `SOL_FORGE_CRASH_AT=<point>` in its
environment the forge calls `os._exit(137)` at that point:

- `before-merge`: MR and writ just marked Merging, nothing merged yet;
- `after-merge`: the merge commit exists in the forge worktree, no gate has run;
- `mid-gate`: a gate has started (it is left running, an orphan the restart kills);
- `after-land`: the target branch moved, the writ is not yet recorded Merged;
- `after-record`: recorded Merged, the writ's worktree and branch not yet removed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reconciler.controllers.landing import CRASH_ENV as CRASH_ENV
from reconciler.controllers.landing import CRASH_POINTS as CRASH_POINTS
from reconciler.controllers.landing import (
    MR_FAILED,
    MR_MERGING,
    QUEUED,
    Merge,
    cleanup,
    gate_record,
    push,
    record_merged,
    reset,
)
from reconciler.controllers.recovery import landed_commit
from reconciler.core.errors import Retry, SolError
from reconciler.core.locks import flock
from reconciler.core.model import MERGED, MERGING, RESOLVED, WorldSpec
from reconciler.core.plan import DELETE, NOTE, UPDATE, Action
from reconciler.core.store import MergeRequest, Record, Store
from reconciler.drivers import gates, worktrees
from reconciler.drivers.sphere import Sphere
from reconciler.specs.changes import target

ACTIVE = (QUEUED, MR_MERGING)


# ---- observe ---------------------------------------------------------------------


@dataclass(frozen=True)
class QueuedMR:
    """An active merge request with what the planner needs of its writ."""

    id: int
    writ: str
    state: str
    priority: int = 2
    created_at: float = 0.0
    writ_phase: str | None = RESOLVED  # None: the writ is not in the store
    writ_kind: str = "code"
    landed: str | None = None  # commit on the target carrying this writ's trailer
    writ_commit: str = ""  # the writ's recorded mergeCommit, if any


@dataclass(frozen=True)
class ForgeSnapshot:
    world: str
    branch: str
    target: str | None  # tip of the target branch; None: no clone or no branch
    mrs: tuple[QueuedMR, ...] = ()
    leftovers: tuple[tuple[str, str], ...] = ()  # (writ, agent) merged but not cleaned up
    unpushed: bool = False  # spec.push and the target has commits the source lacks


def queue(store: Store, world: str) -> list[MergeRequest]:
    """The world's active merge requests in the order the forge takes them."""
    return sorted(store.mrs(world, states=ACTIVE), key=_order)


def _order(mr: MergeRequest | QueuedMR) -> tuple[bool, int, float, int]:
    return (mr.state != MR_MERGING, mr.priority, mr.created_at, mr.id)


def observe(sphere: Sphere, world: Record) -> ForgeSnapshot:
    """Read-only: the store's view of the queue plus the managed clone's refs."""
    spec = WorldSpec.from_spec(world.spec)
    repo = sphere.home.repo(world.name)
    tip = worktrees.rev(repo, f"refs/heads/{spec.branch}") if worktrees.is_clone(repo) else None
    if tip is None:
        return ForgeSnapshot(world.name, spec.branch, None)
    store = sphere.store
    writs = {w.name: w for w in store.list("Writ", world.name)}
    mrs = []
    for mr in store.mrs(world.name, states=ACTIVE):
        writ = writs.get(mr.writ)
        mrs.append(QueuedMR(
            mr.id, mr.writ, mr.state, mr.priority, mr.created_at,
            writ.phase if writ else None,
            (writ.spec.get("kind") or "code") if writ else "code",
            landed_commit(repo, spec.branch, world.name, mr.writ, mr.base) if writ else None,
            str(writ.status.get("mergeCommit") or "") if writ else "",
        ))
    leftovers = tuple((a.writ, a.name) for a in store.agents(world.name)
                      if a.writ and a.writ in writs and writs[a.writ].phase == MERGED)
    return ForgeSnapshot(world.name, spec.branch, tip, tuple(mrs), leftovers,
                         spec.push and _unpushed(repo, spec.branch))


def _unpushed(repo: Path, branch: str) -> bool:
    local = worktrees.rev(repo, f"refs/heads/{branch}")
    remote = worktrees.rev(repo, f"refs/remotes/origin/{branch}")
    if local is None or local == remote:
        return False
    return remote is None or worktrees.commits_beyond(repo, local, remote) > 0


# ---- plan ------------------------------------------------------------------------


def plan_forge(snap: ForgeSnapshot) -> list[Action]:
    """Pure: what the forge does next in one world, in order.

    Leftover cleanups and a pending push first; then the queue, a `Merging` MR (an
    interrupted merge) before any `Queued` one, then by priority and resolve time. An MR
    whose writ's trailer is already on the target is recorded Merged, not merged again.
    """
    if snap.target is None:
        return []
    w = snap.world
    actions = [Action(DELETE, "cleanup", target("Writ", w, writ),
                      f"remove the worktree of {agent} and branch sol/{writ} (merged)",
                      {"world": w, "writ": writ, "agent": agent})
               for writ, agent in sorted(snap.leftovers)]
    if snap.unpushed:
        actions.append(Action(UPDATE, "push", target("World", "", w),
                              f"push {snap.branch} to the source", {"world": w}))
    newest: dict[str, int] = {}
    for mr in snap.mrs:
        newest[mr.writ] = max(newest.get(mr.writ, 0), mr.id)
    for mr in sorted(snap.mrs, key=_order):
        tgt = target("Writ", w, mr.writ)
        data: dict[str, Any] = {"world": w, "writ": mr.writ, "mr": mr.id}
        if mr.writ_phase is None:
            actions.append(Action(NOTE, "drop", tgt, f"MR #{mr.id}: the writ is gone", data))
        elif mr.writ_kind != "code":
            actions.append(Action(NOTE, "reject", tgt, f"MR #{mr.id}: {mr.writ_kind} writs "
                                  "never enter the forge", data))
        elif newest[mr.writ] != mr.id:
            actions.append(Action(NOTE, "drop", tgt, f"MR #{mr.id}: superseded by MR "
                                  f"#{newest[mr.writ]}", data))
        elif mr.landed or mr.writ_phase == MERGED:
            commit = mr.landed or mr.writ_commit
            actions.append(Action(UPDATE, "record-merged", tgt, f"MR #{mr.id}: already on "
                                  f"{snap.branch} as {commit[:12]}; record it Merged",
                                  {**data, "commit": commit}))
        elif mr.writ_phase not in (RESOLVED, MERGING):
            actions.append(Action(NOTE, "drop", tgt, f"MR #{mr.id}: the writ is "
                                  f"{mr.writ_phase}", data))
        else:
            how = "resume the interrupted merge of" if mr.state == MR_MERGING else "merge"
            actions.append(Action(UPDATE, "merge", tgt, f"MR #{mr.id}: {how} sol/{mr.writ} "
                                  f"onto {snap.branch}, run the gates, land", data))
    return actions


# ---- reconcile -------------------------------------------------------------------


def plan(sphere: Sphere, world: str | None = None) -> list[Action]:
    """What `reconcile` would do now (for `sol diff`); touches nothing."""
    return [a for rec in _worlds(sphere, world) for a in plan_forge(observe(sphere, rec))]


def reconcile(sphere: Sphere, world: str | None = None, *,
              max_merges: int | None = None) -> list[Action]:
    """Process the queue of every world (or one), at most `max_merges` merges in all.

    A world whose forge lock is held by another process is skipped. An error in one
    world stops that world's pass (the MR is retried next pass); others carry on.
    """
    done: list[Action] = []
    budget = max_merges
    for rec in _worlds(sphere, world):
        with flock(sphere.home.run / f"forge-{rec.name}.lock", blocking=False) as held:
            if not held:
                continue
            gates.kill_leftover(gate_record(sphere, rec.name))
            _clear_stale_locks(sphere, rec.name)
            for action in plan_forge(observe(sphere, rec)):
                if action.kind == "merge":
                    if budget is not None and budget <= 0:
                        break
                    budget = None if budget is None else budget - 1
                try:
                    act(sphere, action)
                except SolError as exc:
                    sphere.store.event("forge-error", kind="World", world=rec.name,
                                       name=rec.name, message=f"{action.target}: {exc.message}",
                                       retry=isinstance(exc, Retry))
                    break
                done.append(action)
    return done


def _clear_stale_locks(sphere: Sphere, world: str) -> None:
    """A forge killed inside git leaves index.lock in its worktree, and every later reset
    would fail on it. We hold the world's forge lock, so no git of ours is running there.
    """
    from reconciler.drivers.outposts import clear_git_locks

    removed = clear_git_locks(sphere.home.forge_worktree(world), None)
    if removed:
        sphere.store.event("git-locks-removed", kind="World", world=world, name=world,
                           message="removed " + ", ".join(p.name for p in removed)
                           + " left in the forge worktree by a killed git")


def _worlds(sphere: Sphere, world: str | None) -> list[Record]:
    records = [w for w in sphere.store.list("World") if world is None or w.name == world]
    if world is not None and not records:
        raise SolError(f"world {world} is not applied; apply its manifest first")
    return records


def act(sphere: Sphere, action: Action) -> None:
    """Run one forge action; each is idempotent and re-reads what it acts on."""
    w = action.data["world"]
    world = sphere.store.get("World", "", w)
    if world is None:
        return
    spec = WorldSpec.from_spec(world.spec)
    if action.kind == "cleanup":
        cleanup(sphere, w, spec, action.data["writ"])
    elif action.kind == "push":
        if _unpushed(sphere.home.repo(w), spec.branch):
            push(sphere, world, spec)
    elif action.kind == "record-merged":
        mr = _mr(sphere.store, action)
        if mr is not None:
            record_merged(sphere, w, mr, action.data["commit"],
                          f"found on {spec.branch} as {action.data['commit'][:12]}")
            cleanup(sphere, w, spec, mr.writ)
            wt, tip = sphere.home.forge_worktree(w), worktrees.rev(sphere.home.repo(w),
                                                                   f"refs/heads/{spec.branch}")
            if (wt / ".git").is_file() and tip:
                reset(wt, tip)
    elif action.kind in ("drop", "reject"):
        _close(sphere.store, action)
    elif action.kind == "merge":
        mr = _mr(sphere.store, action)
        if mr is not None:
            Merge(sphere, w, spec, mr).run()
    else:
        raise ValueError(f"not a forge action: {action.kind}")


def _mr(store: Store, action: Action) -> MergeRequest | None:
    """The action's MR if it is still active."""
    found = store.mrs(action.data["world"], states=ACTIVE, writ=action.data["writ"])
    return next((m for m in found if m.id == action.data["mr"]), None)


def _close(store: Store, action: Action) -> None:
    """An MR that must not merge: Failed, with the reason, the writ left as it is."""
    with store.transaction():
        mr = _mr(store, action)
        if mr is None:
            return
        store.update_mr(mr.id, expect_state=mr.state, state=MR_FAILED,
                        message=action.description)
        store.event("rejected" if action.kind == "reject" else "dropped", kind="Writ",
                    world=mr.world, name=mr.writ, message=action.description, mr=mr.id)
