"""The forge: each world's merge queue. Merge, run the gates, land or send back.

observe (the world's active merge requests, their writs, the head MR's progress and
whether its writ's `Sol-Writ:` trailer is already on the target, the target tip), plan
(forge_plan.py, pure: the head MR's next step), act (one step under the world's forge
lock, each recorded as events; the steps are in landing.py). Writs go `Resolved` ->
`Merging` -> `Merged`; merge requests `Queued` -> `Merging` -> `Merged`, `SentBack` or
`Failed`. The forge merges in its own detached worktree (`worlds/<w>/forge/worktree`),
never on the target branch, which moves only by compare-and-set once every gate passed.
With two or more fresh MRs queued (and `spec.forge.batch.max` > 1) they merge as a batch
(forge_act.py, docs/decisions/0012-forge-batches.md): a chain of squash commits gated
once, bisected on a failure; the crash points below apply to its steps too.

Crash safety: each step leaves its outcome in the MR's row, so a restarted forge goes on
at the step after the last one finished: a gate cut short runs again (with the gates
before it) on a clean checkout of the same merge commit, a landing found on the target is
recorded Merged, never merged twice, and only a commit every gate passed on ever lands.
Every crash point can be exercised: with `SOL_FORGE_CRASH_AT=<point>` in its
environment the forge calls `os._exit(137)` at that point:

- `before-merge`: MR and writ just marked Merging, nothing merged yet;
- `after-merge`: the merge commit exists in the managed clone, no gate has run;
- `mid-gate`: a gate has started (it is left running, an orphan the restart kills);
- `after-land`: the target branch moved, the writ is not yet recorded Merged;
- `after-record`: recorded Merged, the writ's worktree and branch not yet removed.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

from reconciler.controllers import forge_act
from reconciler.controllers.base import Reconciler, Scope
from reconciler.controllers.forge_act import batch_size, batch_view
from reconciler.controllers.forge_plan import (
    ACTIVE,
    DONE_STEPS,
    FORGE_SUSPENDED,
    MR_FAILED,
    QUEUED,
    ForgeView,
    QueuedMR,
    order,
    plan,
    triage,
)
from reconciler.controllers.landing import CRASH_ENV as CRASH_ENV
from reconciler.controllers.landing import CRASH_POINTS as CRASH_POINTS
from reconciler.controllers.landing import (
    Merge,
    crash_point,
    gate_record,
    push,
    record_merged,
    reset,
)
from reconciler.core import tether
from reconciler.core.errors import Retry, SolError
from reconciler.core.home import session_name
from reconciler.core.locks import flock
from reconciler.core.model import MERGED, MERGING, RESOLVED, WorldSpec
from reconciler.core.plan import Action
from reconciler.core.store import MergeRequest, Record, Store
from reconciler.core.suspension import forge_suspension
from reconciler.drivers import gates, node_workspace, worktrees
from reconciler.drivers.sphere import Sphere
from reconciler.drivers.trailers import landed_commit

_TRAILERS: dict[Path, tuple[str, dict[tuple[str, str], str | None]]] = {}
"""repo -> (target tip, {(writ, base): landed commit}): a tip never changes its history,
so each writ's trailer is searched once per tip, not once per step."""


# ---- observe ---------------------------------------------------------------------


def queue(store: Store, world: str) -> list[MergeRequest]:
    """The world's active merge requests in the order the forge takes them."""
    return sorted(store.mrs(world, states=ACTIVE), key=order)


def observe(sphere: Sphere, key: str) -> ForgeView:
    """Read-only: the store's view of the queue plus the managed clone's refs."""
    store = sphere.store
    world = store.get("World", "", key)
    if world is None:
        return ForgeView(key, "", None)
    spec = WorldSpec.from_spec(world.spec)
    repo = sphere.home.repo(key)
    tip = worktrees.rev(repo, f"refs/heads/{spec.branch}") if worktrees.is_clone(repo) else None
    if tip is None:
        return ForgeView(key, spec.branch, None)
    rows = store.mrs(key, states=ACTIVE)
    held = [(a.writ, a.name) for a in store.agents(key) if a.writ]
    writs = {name: store.get("Writ", key, name)  # the queue's and the agents', not history
             for name in {mr.writ for mr in rows} | {writ for writ, _ in held}}
    mrs = tuple(_queued(store, mr, writs[mr.writ]) for mr in rows)
    found = _landed(repo, spec.branch, tip, key, mrs, {mr.id: mr.base for mr in rows})
    leftovers = tuple((writ, agent) for writ, agent in held
                      if (record := writs[writ]) is not None and record.phase == MERGED)
    return ForgeView(key, spec.branch, tip, tuple(replace(m, landed=found.get(m.id))
                                                  for m in mrs),
                     leftovers, spec.push and _unpushed(repo, spec.branch),
                     tuple(g.name for g in spec.gates), spec.push, spec.max_attempts,
                     time.time(), suspended.message if (suspended := forge_suspension(world))
                     else "", batch_view(b) if (b := store.active_batch(key)) else None,
                     batch_size(store, key, spec), spec.batch_concurrency)


def _queued(store: Store, mr: MergeRequest, writ: Record | None) -> QueuedMR:
    step, progress = store.mr_progress(mr.id)
    return QueuedMR(
        mr.id, mr.writ, mr.state, mr.priority, mr.created_at,
        writ.phase if writ else None,
        (writ.spec.get("kind") or "code") if writ else "code",
        None,
        str(writ.status.get("mergeCommit") or "") if writ else "",
        mr.attempt, step, str(progress.get("commit") or ""), str(progress.get("onto") or ""),
        tuple(str(g["name"]) for g in progress.get("gates") or []),
        str((progress.get("verdict") or {}).get("summary") or ""),
        float(progress.get("until") or 0.0),
        writ.reason if writ else "", writ.message if writ else "",
    )


def _landed(repo: Path, branch: str, tip: str, world: str, mrs: tuple[QueuedMR, ...],
            bases: dict[int, str]) -> dict[int, str]:
    """MR id -> the target commit carrying its writ's trailer, searched for the head MR
    (unless its own landing is recorded in its row) and for MRs about to be dropped for
    their writ's phase (a landing overrides it)."""
    head = [m for m in triage(mrs, world)[0][:1] if m.step not in DONE_STEPS]
    odd = [m for m in mrs if m.writ_phase not in (None, RESOLVED, MERGING, MERGED)]
    cached = _TRAILERS.get(repo)
    if cached is None or cached[0] != tip:
        cached = _TRAILERS[repo] = (tip, {})
    found: dict[int, str] = {}
    for mr in (*head, *odd):
        key = (mr.writ, bases[mr.id])
        if key not in cached[1]:
            cached[1][key] = landed_commit(repo, branch, world, mr.writ, bases[mr.id])
        if cached[1][key]:
            found[mr.id] = str(cached[1][key])
    return found


def _unpushed(repo: Path, branch: str) -> bool:
    local = worktrees.rev(repo, f"refs/heads/{branch}")
    remote = worktrees.rev(repo, f"refs/remotes/origin/{branch}")
    if local is None or local == remote:
        return False
    return remote is None or worktrees.commits_beyond(repo, local, remote) > 0


# ---- act -------------------------------------------------------------------------


def act(sphere: Sphere, action: Action) -> bool:
    """One step under the world's forge lock (False when another forge holds it); an
    error is a `forge-error` event and the step is tried again on a later pass."""
    w = action.data["world"]
    try:
        with flock(sphere.home.run / f"forge-{w}.lock", blocking=False) as held:
            return held and _act(sphere, action)
    except SolError as exc:
        sphere.store.event("forge-error", kind="World", world=w, name=w,
                           message=f"{action.target}: {exc.message}",
                           retry=isinstance(exc, Retry))
        return False


def _act(sphere: Sphere, action: Action) -> bool:
    """Under the lock: first what a killed forge left (an orphaned gate, git's locks in
    the forge worktree), then the step, which re-reads what it acts on."""
    d = action.data
    w = d["world"]
    world = sphere.store.get("World", "", w)
    if world is None:
        return False
    spec = WorldSpec.from_spec(world.spec)
    gates.kill_leftover(gate_record(sphere, w))
    for record in gate_record(sphere, w).parent.glob(f"{gate_record(sphere, w).name}.*"):
        gates.kill_leftover(record)  # a batch's further probes
    _clear_stale_locks(sphere, w)
    if action.kind == "cleanup":
        cleanup(sphere, w, spec, d["writ"])
        return True
    if action.kind == "push" and "mr" not in d:
        if _unpushed(sphere.home.repo(w), spec.branch):
            push(sphere, world, spec)
        return True
    if action.kind in ("drop", "reject"):
        return _close(sphere.store, action)
    if action.kind in ("hold", "unhold"):
        return _hold(sphere.store, action)
    if action.kind.startswith("batch"):
        return _batch_step(sphere, w, spec, action)
    mr = _mr(sphere.store, action)
    if mr is None:
        return False
    merge = Merge(sphere, w, spec, mr)
    if merge.step != d["step"]:
        return False  # the MR moved on since this step was planned
    match action.kind:
        case "merge":
            return merge.merge()
        case "gate":
            return merge.gate(int(d["gate"]), str(d["name"]))
        case "land":
            return merge.land()
        case "push":
            return merge.push()
        case "record-merged":
            return _record(sphere, spec, mr, str(d["commit"]), str(d["how"]))
        case "send-back" | "fail":
            return merge.conclude()
    raise ValueError(f"not a forge action: {action.kind}")


def _batch_step(sphere: Sphere, w: str, spec: WorldSpec, action: Action) -> bool:
    """One step of the world's batch (forge_act.py), if it is still where it was planned."""
    d = action.data
    if action.kind == "batch":
        return forge_act.form(sphere, w, spec, list(d["mrs"]))
    batch = sphere.store.active_batch(w)
    if batch is None or (batch.id, batch.version) != (d["batch"], d["version"]):
        return False
    match action.kind:
        case "batch-build":
            return forge_act.build(sphere, w, spec, batch)
        case "batch-probe":
            return forge_act.probe(sphere, w, spec, batch, list(d["points"]),
                                   meanwhile=lambda: _clean_merged(sphere, w, spec))
        case "batch-culprit":
            return forge_act.culprit(sphere, w, batch, spec, int(d["mr"]))
        case "batch-requeue":
            return forge_act.requeue(sphere, w, batch)
        case "batch-land":
            if not forge_act.land_prefix(sphere, w, spec, batch, str(d["commit"])):
                return False
            crash_point("after-record")
            if spec.push and _unpushed(sphere.home.repo(w), spec.branch):
                push(sphere, sphere.store.get("World", "", w), spec)
            return True  # cleaned up while the next gates run, or once the queue is done
    raise ValueError(f"not a forge action: {action.kind}")


def _clean_merged(sphere: Sphere, w: str, spec: WorldSpec) -> None:
    """The cleanups of writs a batch landed (agents still holding a Merged writ)."""
    for agent in sphere.store.agents(w):
        writ = sphere.store.get("Writ", w, agent.writ) if agent.writ else None
        if writ is not None and writ.phase == MERGED:
            cleanup(sphere, w, spec, writ.name)


def _record(sphere: Sphere, spec: WorldSpec, mr: MergeRequest, commit: str, how: str) -> bool:
    """Writ and MR Merged on `commit`, the writ's worktree and branch removed, the forge
    worktree back at the target's tip."""
    w = mr.world
    messages = {
        "landed": f"landed on {spec.branch} as {commit[:12]}",
        "empty": f"nothing to land: {mr.branch} adds nothing {spec.branch} lacks",
        "found": f"found on {spec.branch} as {commit[:12]}",
    }
    record_merged(sphere.store, w, mr, commit, messages[how])
    crash_point("after-record")
    cleanup(sphere, w, spec, mr.writ)
    wt = sphere.home.forge_worktree(w)
    tip = worktrees.rev(sphere.home.repo(w), f"refs/heads/{spec.branch}")
    if (wt / ".git").is_file() and tip:
        reset(wt, tip)
    return True


def cleanup(sphere: Sphere, world: str, spec: WorldSpec, writ: str) -> None:
    """Remove a merged writ's worktree and branch, stop its session, free its outpost.

    Invariant 1: only once its merge commit is on the target; the outpost is freed
    last, so an interrupted cleanup is planned again.
    """
    store, repo = sphere.store, sphere.home.repo(world)
    record = store.get("Writ", world, writ)
    commit = str((record.status if record else {}).get("mergeCommit") or "")
    tip = f"refs/heads/{spec.branch}"
    on_target = (bool(commit) and worktrees.rev(repo, commit) is not None
                 and worktrees.is_merged(repo, commit, tip))
    if not on_target:
        store.event("cleanup-refused", kind="Writ", world=world, name=writ,
                    message=f"merge commit {commit[:12] or '?'} is not on {spec.branch}; "
                    f"worktree and branch sol/{writ} kept")
        return
    agent = store.agent_for(world, writ)
    if agent is not None:
        try:
            sphere.sessions.stop(session_name(world, agent.name))
        except SolError:
            pass  # no tmux here: there is no session to stop either
        tether.clear(sphere.home.tether(world, agent.name))
        worktrees.remove_worktree(repo, sphere.home.worktree(world, agent.name), force=True)
    worktrees.delete_branch(repo, f"sol/{writ}", force=True)
    if spec.sessions.on_nodes:  # a writ of the same name later starts afresh
        node_workspace.drop_branch(repo, node_workspace.remote_of(repo, spec.sessions.remote),
                                   f"sol/{writ}")
    if agent is not None:
        store.free_agent(world, agent.name)
    what = (f"branch sol/{writ} removed here and from the world's remote (the clone on "
            "the agent's node is cleared when its name serves another writ)"
            if spec.sessions.on_nodes else
            f"worktree{' of ' + agent.name if agent else ''} and branch sol/{writ} removed")
    store.event("cleaned-up", kind="Writ", world=world, name=writ,
                message=f"{what}; the work is on the target", agent=agent.name if agent else "")


def _clear_stale_locks(sphere: Sphere, world: str) -> None:
    """A forge killed inside git leaves index.lock in its worktree, and every later reset
    would fail on it. We hold the world's forge lock, so no git of ours is running there.
    """
    from reconciler.drivers.outposts import clear_git_locks

    wt = sphere.home.forge_worktree(world)
    removed = [lock for tree in (wt, *sorted(wt.parent.glob("probe-*")))  # a batch's probes
               for lock in clear_git_locks(tree, None)]
    if removed:
        sphere.store.event("git-locks-removed", kind="World", world=world, name=world,
                           message="removed " + ", ".join(p.name for p in removed)
                           + " left in the forge worktree by a killed git")


def _mr(store: Store, action: Action) -> MergeRequest | None:
    """The action's MR if it is still active."""
    found = store.mrs(action.data["world"], states=ACTIVE, writ=action.data["writ"])
    return next((m for m in found if m.id == action.data["mr"]), None)


def _hold(store: Store, action: Action) -> bool:
    """A queued writ's message says whether the suspended forge holds it (no event: the
    suspension itself was one); False when it already says so or moved on."""
    with store.transaction():
        key = ("Writ", action.data["world"], action.data["writ"])
        writ, mr = store.get(*key), _mr(store, action)
        reason = FORGE_SUSPENDED if action.kind == "hold" else "Resolved"
        if (writ is None or mr is None or mr.state != QUEUED or writ.phase != RESOLVED
                or (writ.reason, writ.message) == (reason, action.data["message"])):
            return False
        return store.set_status(key, reason=reason, message=action.data["message"],
                                expect_version=writ.version) is not None


def _close(store: Store, action: Action) -> bool:
    """An MR that must not merge: Failed, with the reason, the writ left as it is."""
    with store.transaction():
        mr = _mr(store, action)
        if mr is None:
            return False
        store.update_mr(mr.id, expect_state=mr.state, state=MR_FAILED,
                        message=action.description)
        store.event("rejected" if action.kind == "reject" else "dropped", kind="Writ",
                    world=mr.world, name=mr.writ, message=action.description, mr=mr.id)
    return True


# ---- entry points ----------------------------------------------------------------


RECONCILER = Reconciler(name="forge", scope=Scope.WORLD, owner="forge",
                        observe=observe, plan=plan, act=act)


def _worlds(sphere: Sphere, world: str | None) -> list[Record]:
    records = [w for w in sphere.store.list("World") if world is None or w.name == world]
    if world is not None and not records:
        raise SolError(f"world {world} is not applied; apply its manifest first")
    return records


def reconcile(sphere: Sphere, world: str | None = None) -> list[Action]:
    """Every world's queue (or one's) worked through to its end; the steps taken."""
    done: list[Action] = []
    for rec in _worlds(sphere, world):
        while True:
            result = RECONCILER.reconcile(sphere, rec.name)
            done += result.actions
            if result.requeue_after != 0 or not result.actions:
                break
    return done
