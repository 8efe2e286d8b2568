"""The forge's batch steps (docs/decisions/0012-forge-batches.md): form a batch from the
queue's head, build its chain of squash commits, probe prefixes of it with the gates,
land the longest prefix proven to pass, send back the culprit and queue the rest again.

Each step reads the batch's row, compare-and-sets it on its version and writes its
outcome there together with the members' MR rows and writs, in one transaction, so a
forge killed between two steps resumes at the next and one killed inside a step does it
again: a probe cut short runs again on a clean checkout of the same commits; a landing
found on the target (the fast-forward done, the records not) is recorded, never made
again. Only the chain's commits ever land, and only a prefix whose last commit every
gate passed on as the tree it lands as.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from reconciler.controllers.forge_plan import (
    MR_MERGING,
    QUEUED,
    BatchView,
    Step,
    bisected,
    probe_points,
)
from reconciler.controllers.landing import (
    FEEDBACK_LINES,
    GATE_ENV_DROP,
    Merge,
    crash_point,
    ensure_worktree,
    gate_record,
    land,
    record_merged,
    reset,
)
from reconciler.core.errors import SolError
from reconciler.core.model import MERGING, RESOLVED, WorldSpec
from reconciler.core.store import Batch, MergeRequest, Store
from reconciler.drivers import gates, worktrees
from reconciler.drivers.runtimes import session_path
from reconciler.drivers.sphere import Sphere

ACTIVE, DONE = "Active", "Done"


# ---- the size of the next batch --------------------------------------------------


def _size_key(world: str) -> str:
    return f"forge-batch-size/{world}"


def batch_size(store: Store, world: str, spec: WorldSpec) -> int:
    """How many MRs the next batch takes at most: `spec.forge.batch.max` at first,
    doubled after a batch that landed whole, a quarter smaller after a culprit (kept in the store,
    so a restart keeps what the queue taught)."""
    stored = store.get_meta(_size_key(world))
    size = int(stored) if stored else spec.batch_max
    return max(1, min(size, spec.batch_max))


def _resize(store: Store, world: str, spec: WorldSpec, *, grow: bool) -> None:
    size = batch_size(store, world, spec)
    size = min(spec.batch_max, size * 2) if grow else max(2, size - size // 4)
    store.set_meta(_size_key(world), str(size))


def batch_view(batch: Batch) -> BatchView:
    """What the plan needs of a batch's row."""
    p = batch.progress
    chain = p.get("chain")
    return BatchView(batch.id, batch.version, tuple(p.get("members") or ()),
                     None if chain is None else tuple((int(m), str(w), str(c))
                                                      for m, w, c in chain),
                     str(p.get("onto") or ""), int(p.get("good") or 0), p.get("bad"),
                     int(p.get("landed") or 0), int(p.get("round") or 0),
                     tuple(p.get("gates") or ()))


def probe_record(sphere: Sphere, world: str, slot: int) -> Path:
    """Where probe `slot`'s running gate is recorded (slot 0 is the forge's own)."""
    record = gate_record(sphere, world)
    return record if slot == 0 else record.with_name(f"{record.name}.{slot}")


def probe_worktree(sphere: Sphere, world: str, slot: int) -> Path:
    """The forge worktree for slot 0, a sibling of it for each further probe."""
    wt = sphere.home.forge_worktree(world)
    return wt if slot == 0 else wt.with_name(f"probe-{slot}")


# ---- the steps -------------------------------------------------------------------


def form(sphere: Sphere, world: str, spec: WorldSpec, mr_ids: list[int]) -> bool:
    """A new batch of the queued MRs planned, in that order, all Merging together."""
    store = sphere.store
    with store.transaction():
        if store.active_batch(world) is not None:
            return False
        queued = {mr.id: mr for mr in store.mrs(world, states=[QUEUED])}
        members: list[MergeRequest] = []
        for mr_id in mr_ids:
            mr = queued.get(mr_id)
            writ = store.get("Writ", world, mr.writ) if mr else None
            if mr is None or writ is None or writ.phase != RESOLVED or store.mr_progress(
                    mr_id)[0] != Step.NEW:
                break
            members.append(mr)
        if len(members) < 2:
            return False
        batch = store.add_batch(world, {"members": [mr.id for mr in members]})
        for mr in members:
            store.update_mr(mr.id, expect_state=QUEUED, state=MR_MERGING, step=Step.BATCHED,
                            progress={"batch": batch}, message=f"merging in batch #{batch}")
            store.set_status(("Writ", world, mr.writ), phase=MERGING, reason="Merging",
                             message=f"merging {mr.branch} onto {spec.branch} in batch "
                             f"#{batch} ({len(members)} writs, attempt {mr.attempt})")
            store.event("merging", kind="Writ", world=world, name=mr.writ,
                        message=f"MR #{mr.id}: merging {mr.branch} onto {spec.branch} in "
                        f"batch #{batch}", mr=mr.id, attempt=mr.attempt, batch=batch)
        store.event("batch-formed", kind="World", world=world, name=world,
                    message=f"batch #{batch}: " + ", ".join(m.writ for m in members),
                    batch=batch, mrs=[m.id for m in members])
    crash_point("before-merge")
    return True


def build(sphere: Sphere, world: str, spec: WorldSpec, batch: Batch) -> bool:
    """Squash each member in turn onto the one before it, on the target's tip. A member
    that conflicts with the target is sent back; one that conflicts only with a member
    before it goes back to the queue, to merge once those landed."""
    store, repo = sphere.store, sphere.home.repo(world)
    if "chain" in batch.progress:
        return False
    onto = worktrees.rev(repo, f"refs/heads/{spec.branch}")
    if onto is None:
        raise SolError(f"branch {spec.branch} vanished from {repo}")
    current, chain = onto, []
    out: dict[int, tuple[Step, dict[str, Any]]] = {}
    later: list[int] = []
    for mr in _members(store, world, batch):
        merge = Merge(sphere, world, spec, mr)
        if worktrees.rev(repo, f"refs/heads/{mr.branch}") is None:
            out[mr.id] = (Step.BRANCH_MISSING, {
                "reason": "BranchMissing",
                "summary": f"branch {mr.branch} is missing from {repo}; the work cannot be "
                "merged"})
            continue
        new, files, reason = merge.merge_onto(current)
        if new is None and current != onto:  # with the target, or with the batch?
            new, files, reason = merge.merge_onto(onto)
            if new is not None:
                later.append(mr.id)
        if new is None:
            out[mr.id] = (Step.CONFLICT, merge.conflict_verdict(onto, files, reason))
        if new is None or mr.id in later:
            continue
        chain.append([mr.id, mr.writ, new])
        current = new
    names = [g.name for g in spec.gates]
    progress = {**batch.progress, "chain": chain, "onto": onto, "good": 0, "bad": None,
                "landed": 0, "round": 0, "gates": names}
    with store.transaction():
        if not store.update_batch(batch.id, expect_version=batch.version, progress=progress,
                                  state=ACTIVE if chain else DONE):
            return False
        for mr_id, (step, verdict) in out.items():
            store.update_mr(mr_id, expect_state=MR_MERGING, expect_step=Step.BATCHED,
                            step=step, progress={"batch": batch.id, "onto": onto,
                                                 "verdict": verdict})
        for mr_id in later:
            _requeue(store, world, mr_id, f"conflicts with a writ before it in batch "
                     f"#{batch.id}; merging again once that landed")
        _say(store, world, chain, f"in batch #{batch.id} ({len(chain)} writs on "
             f"{onto[:12]}): the gates run on the whole chain")
        store.event("batch-built", kind="World", world=world, name=world,
                    message=f"batch #{batch.id}: {len(chain)} commits on {onto[:12]}, "
                    f"{len(out)} sent back, {len(later)} queued again", batch=batch.id,
                    chain=[c for _, _, c in chain])
    crash_point("after-merge")
    return True


def probe(sphere: Sphere, world: str, spec: WorldSpec, batch: Batch, points: list[int],
          meanwhile: Callable[[], object] = lambda: None) -> bool:
    """Run the gates on the prefixes `points` of the chain at once, each in its own
    worktree at a clean checkout of its last commit, and narrow (good, bad) by them.
    `meanwhile` runs while the gates do (the cleanups of writs landed before)."""
    store, p = sphere.store, batch.progress
    view = batch_view(batch)
    chain = view.chain or ()
    expected = probe_points(view.good, view.bad, len(chain), spec.batch_concurrency)
    if not points or tuple(points) != expected or view.landed < view.good:
        return False
    step = view.round + 1
    with store.transaction():
        running = {**p, "probing": points}
        if not store.update_batch(batch.id, expect_version=batch.version, progress=running):
            return False
        _say(store, world, chain[view.landed:], f"in batch #{batch.id} ({len(chain)} writs):"
             f" bisection step {step}, gates running on prefix "
             + ", ".join(f"1..{i}" for i in points))
    version = batch.version + 1
    repo, ref = sphere.home.repo(world), f"refs/heads/{spec.branch}"
    for slot in range(len(points)):
        ensure_worktree(repo, probe_worktree(sphere, world, slot), ref)
    attempts = {mr.writ: mr.attempt for mr in _members(store, world, batch)}
    with ThreadPoolExecutor(max_workers=len(points)) as pool:
        running_gates = pool.map(lambda job: _probe(sphere, world, spec, chain, attempts, *job),
                                 enumerate(points))
        meanwhile()
        runs = list(running_gates)
    results = {i: result.passed for i, result in zip(points, runs, strict=True)}
    good, bad = bisected(view.good, view.bad, results)
    progress = {**p, "probing": None, "good": good, "bad": bad, "round": step}
    with store.transaction():
        if bad is not None and bad != view.bad:
            mr = store.mr(chain[bad - 1][0])
            if mr is not None:
                under = chain[bad - 2][2] if bad > 1 else view.onto
                progress["failure"] = Merge(sphere, world, spec, mr).gate_failed_verdict(
                    under, runs[points.index(bad)])
        if not store.update_batch(batch.id, expect_version=version, progress=progress):
            return False
        _say(store, world, chain[view.landed:], f"in batch #{batch.id} ({len(chain)} writs): "
             f"bisection step {step}, 1..{good} passes" + (f", 1..{bad} fails" if bad else ""))
        for i, result in zip(points, runs, strict=True):
            mr_id, writ, commit = chain[i - 1]
            store.event("gate-passed" if result.passed else "gate-failed", kind="Writ",
                        world=world, name=writ, message=f"batch #{batch.id}, prefix 1..{i} "
                        f"at {commit[:12]}: {result.summary}", mr=mr_id, batch=batch.id,
                        prefix=i, gate=result.name, exitCode=result.exit_code,
                        log=str(result.log), seconds=round(result.seconds, 3))
    return True


def land_prefix(sphere: Sphere, world: str, spec: WorldSpec, batch: Batch,
                commit: str) -> bool:
    """Fast-forward the target to the last commit of the prefix proven to pass and
    record its writs Merged (False when the step no longer applies). If the target
    moved meanwhile, the writs not landed go back to the queue instead."""
    store, view = sphere.store, batch_view(batch)
    chain = view.chain or ()
    if (view.landed >= view.good or chain[view.good - 1][2] != commit
            or view.gates != tuple(g.name for g in spec.gates)):
        return False
    if not land(sphere.home.repo(world), spec.branch, commit, view.onto,
                f"batch #{batch.id}"):
        with store.transaction():
            if not store.update_batch(batch.id, expect_version=batch.version,
                                      progress=batch.progress, state=DONE):
                return False
            for mr_id, _, _ in chain[view.landed:]:
                _requeue(store, world, mr_id, f"{spec.branch} moved during the gates of "
                         f"batch #{batch.id}; merging again on its new tip")
            store.event("target-moved", kind="World", world=world, name=world,
                        message=f"batch #{batch.id}: {spec.branch} moved during the gates; "
                        "its writs not landed are queued again", batch=batch.id)
        return True
    crash_point("after-land")
    whole = view.good == len(chain)
    progress = {**batch.progress, "landed": view.good, "onto": commit}
    with store.transaction():
        if not store.update_batch(batch.id, expect_version=batch.version, progress=progress,
                                  state=DONE if whole else ACTIVE):
            return False
        for mr_id, _, at in chain[view.landed:view.good]:
            mr = store.mr(mr_id)
            if mr is not None and mr.state == MR_MERGING:
                record_merged(store, world, mr, at, f"landed on {spec.branch} as {at[:12]} "
                              f"in batch #{batch.id}")
        if whole:
            _resize(store, world, spec, grow=True)
        store.event("batch-landed", kind="World", world=world, name=world,
                    message=f"batch #{batch.id}: writs 1..{view.good} of {len(chain)} "
                    f"landed on {spec.branch} as {commit[:12]}", batch=batch.id,
                    commit=commit)
    return True


def culprit(sphere: Sphere, world: str, batch: Batch, spec: WorldSpec, mr_id: int) -> bool:
    """The first prefix that fails ends with MR `mr_id`: it goes to the send-back step
    with the output of that probe, the writs after it back to the queue."""
    store, view = sphere.store, batch_view(batch)
    chain = view.chain or ()
    if view.bad != view.good + 1 or chain[view.bad - 1][0] != mr_id:
        return False
    under = chain[view.bad - 2][2] if view.bad > 1 else view.onto
    with store.transaction():
        if not store.update_batch(batch.id, expect_version=batch.version,
                                  progress={**batch.progress, "culprit": mr_id}, state=DONE):
            return False
        store.update_mr(mr_id, expect_state=MR_MERGING, expect_step=Step.BATCHED,
                        step=Step.GATE_FAILED,
                        progress={"batch": batch.id, "onto": under,
                                  "verdict": batch.progress.get("failure")})
        for other, _, _ in chain[view.bad:]:
            _requeue(store, world, other, f"queued again: MR #{mr_id} before it in batch "
                     f"#{batch.id} failed the gates")
        _resize(store, world, spec, grow=False)
        store.event("batch-culprit", kind="World", world=world, name=world,
                    message=f"batch #{batch.id}: MR #{mr_id} ({chain[view.bad - 1][1]}) "
                    f"fails the gates after {view.round} probe round(s); "
                    f"{len(chain) - view.bad} writ(s) queued again", batch=batch.id, mr=mr_id)
    return True


def requeue(sphere: Sphere, world: str, batch: Batch) -> bool:
    """The world's gates changed under the batch: what did not land goes back to the
    queue, to be gated by the gates it has now."""
    store, view = sphere.store, batch_view(batch)
    with store.transaction():
        if not store.update_batch(batch.id, expect_version=batch.version,
                                  progress=batch.progress, state=DONE):
            return False
        for mr_id, _, _ in (view.chain or ())[view.landed:]:
            _requeue(store, world, mr_id, f"the gates changed during batch #{batch.id}")
    return True


# ---- the parts -------------------------------------------------------------------


def _probe(sphere: Sphere, world: str, spec: WorldSpec,
           chain: tuple[tuple[int, str, str], ...], attempts: dict[str, int], slot: int,
           point: int) -> gates.GateResult:
    """Every gate, in order, on a clean checkout of prefix `point`'s last commit; the
    first failure or the last pass. Runs in a thread: no store here."""
    wt = probe_worktree(sphere, world, slot)
    _, writ, commit = chain[point - 1]
    reset(wt, commit)
    attempt = attempts.get(writ, 1)
    env = {k: v for k, v in os.environ.items() if k not in GATE_ENV_DROP}
    env.update(SOL_WORLD=world, SOL_WRIT=writ, SOL_ATTEMPT=str(attempt),
               PATH=session_path(env.get("PATH")))
    result = gates.GateResult("(none)", "", True, 0, False, 0.0, 0.0, Path(os.devnull), "")
    for gate in spec.gates:
        result = gates.run_gate(
            gate.name, gate.run, cwd=wt, timeout=gate.timeout, env=env,
            log=sphere.home.gate_log(world, writ, attempt, gate.name),
            record=probe_record(sphere, world, slot), tail_lines=FEEDBACK_LINES,
            on_start=lambda _pid: crash_point("mid-gate"))
        if not result.passed:
            break
    return result


def _members(store: Store, world: str, batch: Batch) -> list[MergeRequest]:
    """The batch's MRs still in it, in batch order."""
    rows = {mr.id: mr for mr in store.mrs(world, states=[MR_MERGING])}
    return [rows[i] for i in batch.progress.get("members") or ()
            if i in rows and store.mr_progress(i) == (Step.BATCHED, {"batch": batch.id})]


def _requeue(store: Store, world: str, mr_id: int, why: str) -> None:
    """An MR of the batch back to Queued, its writ back to Resolved, to be batched again
    on a later tip (its commit is made again there: nothing of this chain lands)."""
    mr = store.mr(mr_id)
    if mr is None or not store.update_mr(mr_id, expect_state=MR_MERGING,
                                         expect_step=Step.BATCHED, state=QUEUED,
                                         step=Step.NEW, progress={}, message=why):
        return
    store.set_status(("Writ", world, mr.writ), phase=RESOLVED, reason="Resolved",
                     message=f"merge request #{mr_id} {why}", expect_phases=[MERGING])
    store.event("requeued", kind="Writ", world=world, name=mr.writ, message=why, mr=mr_id)


def _say(store: Store, world: str, chain: Any, message: str) -> None:
    """Each member writ's message: which batch it is in and what runs."""
    for _, writ, _ in chain:
        store.set_status(("Writ", world, writ), message=message, expect_phases=[MERGING])


# ---- what status and describe show -----------------------------------------------


def batch_summary(store: Store, world: str) -> str:
    """The world's batch in progress in one line (`sol status`), "" when none runs."""
    batch = store.active_batch(world)
    if batch is None:
        return ""
    view = batch_view(batch)
    if view.chain is None:
        return f"batch #{batch.id}: {len(view.members)} writs, being squashed in a chain"
    chain = view.chain
    writs = ", ".join(w for _, w, _ in chain)
    probing = batch.progress.get("probing")
    if probing:
        step = (f"bisection step {view.round + 1}: gates running on prefix "
                + ", ".join(f"1..{i}" for i in probing))
    elif view.bad is None:
        step = "the whole chain is next to be gated"
    else:
        step = f"bisection step {view.round} done"
    known = f"; 1..{view.good} pass" if view.good else ""
    known += f"; 1..{view.bad} fails" if view.bad is not None else ""
    return (f"batch #{batch.id} ({len(chain)} writs: {writs}): {step}{known}, "
            f"{view.landed} landed")


def writ_batch(store: Store, world: str, writ: str) -> str:
    """The batch a writ is in and where it stands in it (`describe writ`), or ""."""
    for mr in store.mrs(world, states=[MR_MERGING], writ=writ):
        number = store.mr_progress(mr.id)[1].get("batch")
        batch = store.batch(int(number)) if number else None
        if batch is None or batch.state != ACTIVE:
            continue
        chain = batch_view(batch).chain or ()
        place = next((i for i, (m, _, _) in enumerate(chain, 1) if m == mr.id), 0)
        where = f"writ {place} of {len(chain)}" if place else "being squashed"
        return f"#{batch.id}, {where}; {batch_summary(store, world)}"
    return ""
