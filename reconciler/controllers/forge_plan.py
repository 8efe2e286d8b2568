"""The forge's plan, pure: from one world's queue, the next step of its head merge request.

A merge is a chain of steps, each an action of its own, each leaving its outcome in the
MR's row (`step`, the last one done, and `progress`, what the next one needs), so a
killed forge resumes at the step it was at:

    merge -> gate 1 .. gate n -> land -> push (with push: true) -> record-merged
          \\ conflict, gate failed, branch missing -> send-back or fail
          land finds the target moved -> merge again on its new tip

Two or more fresh MRs at the head form a batch instead (`batchable`); while it runs, the
plan is its next step (`batch_step`: build, probe, land, culprit) and the send-backs of
members a conflict took out of it.

`plan` returns the head MR's next step with requeue_after=0, so `Reconciler.reconcile`
runs the one after it at once. Leftover cleanups and a pending push wait until no step
is ready: a refused cleanup or a failed push leaves the state as it was, so planned
beside every step they would be tried again at every step. MRs that must not merge are
closed whatever the head is doing.

A suspended forge (`spec.forge.suspend` or `sol suspend forge`) starts no new merge: a
Queued head stays queued and each queued writ's message says why; a merge already in
progress goes on step by step to its end, so nothing is left half merged.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from reconciler.core.model import MERGED, MERGING, RESOLVED
from reconciler.core.plan import DELETE, NOTE, UPDATE, Action, Plan
from reconciler.core.records import MergeRequest
from reconciler.specs.changes import target

QUEUED, MR_MERGING, MR_MERGED, SENT_BACK, MR_FAILED = (
    "Queued", "Merging", "Merged", "SentBack", "Failed")
ACTIVE = (QUEUED, MR_MERGING)


class Step(StrEnum):
    """The last step the forge finished for an MR (its row's `step`)."""

    NEW = ""                       # nothing yet
    MERGED = "merged"              # the merge commit is made in the forge worktree
    GATE_RUNNING = "gate-running"  # a gate started; found so, the forge died during it
    GATE_PASSED = "gate-passed"
    GATE_FAILED = "gate-failed"
    CONFLICT = "conflict"
    BRANCH_MISSING = "branch-missing"
    EMPTY = "empty"                # the branch adds nothing the target lacks
    MOVED = "moved"                # the target moved during the gates
    LANDED = "landed"              # the target is at the merge commit
    PUSHED = "pushed"              # the push after the landing was tried
    BATCHED = "batched"            # in a batch: the batch's row holds the progress


SENT_BACK_STEPS = (Step.CONFLICT, Step.GATE_FAILED)
DONE_STEPS = (Step.LANDED, Step.PUSHED, Step.EMPTY)
"""Steps after which the commit to record is known: nothing is merged again."""


@dataclass(frozen=True)
class QueuedMR:
    """An active merge request with what the planner needs of its writ and its progress."""

    id: int
    writ: str
    state: str
    priority: int = 2
    created_at: float = 0.0
    writ_phase: str | None = RESOLVED  # None: the writ is not in the store
    writ_kind: str = "code"
    landed: str | None = None  # commit on the target carrying this writ's trailer
    writ_commit: str = ""  # the writ's recorded mergeCommit, if any
    attempt: int = 1
    step: str = Step.NEW
    commit: str = ""  # the merge commit made in the forge worktree
    onto: str = ""  # the target tip it was made on
    passed: tuple[str, ...] = ()  # gates passed on `commit`, in order
    verdict: str = ""  # why it cannot land (conflict, failed gate, missing branch)
    until: float = 0.0  # the target kept moving under it: merge again no sooner
    writ_reason: str = ""  # the writ's status reason and message (a hold is shown there)
    writ_message: str = ""


@dataclass(frozen=True)
class ForgeView:
    """One world's queue. `landed` and the progress fields are read for the head only."""

    world: str
    branch: str
    target: str | None  # tip of the target branch; None: no clone or no branch
    mrs: tuple[QueuedMR, ...] = ()
    leftovers: tuple[tuple[str, str], ...] = ()  # (writ, agent) merged but not cleaned up
    unpushed: bool = False  # spec.push and the target has commits the source lacks
    gates: tuple[str, ...] = ()  # the world's gate names, in order
    push: bool = False
    max_attempts: int = 3
    now: float = 0.0
    suspended: str = ""  # why the forge starts no new merge (core.suspension); "": it may
    batch: BatchView | None = None  # the world's batch in progress
    batch_size: int = 1  # MRs the next batch takes at most (adapted, at most spec max)
    concurrency: int = 1  # prefixes of a failing batch probed at once


@dataclass(frozen=True)
class BatchView:
    """A batch in progress: its chain of squash commits c1..cn on `onto` (None until it
    is built), the longest prefix known to pass (`good`), the shortest known to fail
    (`bad`, None until the whole chain was probed), and how much of it is landed."""

    id: int
    version: int
    members: tuple[int, ...]  # MR ids, in queue order
    chain: tuple[tuple[int, str, str], ...] | None = None  # (mr, writ, commit)
    onto: str = ""  # the target tip under c1
    good: int = 0
    bad: int | None = None
    landed: int = 0
    round: int = 0  # bisection steps so far
    gates: tuple[str, ...] = ()  # the gates the probes ran


def order(mr: QueuedMR | MergeRequest) -> tuple[bool, int, float, int]:
    """An interrupted merge first, then priority, then resolve time."""
    return (mr.state != MR_MERGING, mr.priority, mr.created_at, mr.id)


def triage(mrs: tuple[QueuedMR, ...], world: str) -> tuple[list[QueuedMR], list[Action]]:
    """The MRs that may merge, in the order the forge takes them, and an action closing
    each of the others (its writ gone, not code, superseded, or no longer mergeable)."""
    newest: dict[str, int] = {}
    for mr in mrs:
        newest[mr.writ] = max(newest.get(mr.writ, 0), mr.id)
    queue: list[QueuedMR] = []
    closes: list[Action] = []
    for mr in sorted(mrs, key=order):
        tgt = target("Writ", world, mr.writ)
        data: dict[str, Any] = {"world": world, "writ": mr.writ, "mr": mr.id}
        if mr.writ_phase is None:
            closes.append(Action(NOTE, "drop", tgt, f"MR #{mr.id}: the writ is gone", data))
        elif mr.writ_kind != "code":
            closes.append(Action(NOTE, "reject", tgt, f"MR #{mr.id}: {mr.writ_kind} writs "
                                 "never enter the forge", data))
        elif newest[mr.writ] != mr.id:
            closes.append(Action(NOTE, "drop", tgt, f"MR #{mr.id}: superseded by MR "
                                 f"#{newest[mr.writ]}", data))
        elif mr.writ_phase not in (RESOLVED, MERGING, MERGED) and not mr.landed:
            closes.append(Action(NOTE, "drop", tgt, f"MR #{mr.id}: the writ is "
                                 f"{mr.writ_phase}", data))
        else:
            queue.append(mr)
    return queue, closes


def plan(view: ForgeView) -> Plan:
    """The closes and the next step of the head MR (run again at once), or, when no step
    is ready, the leftover cleanups and a pending push."""
    if view.target is None:
        return Plan()
    queue, closes = triage(view.mrs, view.world)
    if view.batch is not None:
        return _batch_plan(view, view.batch, queue, closes)
    if not queue:
        return Plan((*closes, *_side(view)))
    head = queue[0]
    closes += holds(view, queue)
    waiting = {target("Writ", view.world, mr.writ): f"queued behind MR #{head.id} "
               f"({head.writ})" for mr in queue[1:]}
    if head.step == Step.MOVED and head.until > view.now:
        waiting[target("Writ", view.world, head.writ)] = (
            f"{view.branch} kept moving during the gates; merging again in "
            f"{head.until - view.now:.0f}s")
        return Plan((*closes, *_side(view)), head.until - view.now, waiting)
    step = next_step(view, head)
    if view.suspended and head.state == QUEUED and step.kind == "merge":
        waiting = {target("Writ", view.world, mr.writ): view.suspended for mr in queue}
        return Plan((*closes, *_side(view)), None, waiting)
    members = batchable(view, queue) if step.kind == "merge" else []
    if len(members) > 1:
        step = Action(UPDATE, "batch", target("World", "", view.world),
                      f"batch MR {', '.join(f'#{m.id}' for m in members)}: squash them in a "
                      f"chain onto {view.branch}, run the gates once, bisect a failure",
                      {"world": view.world, "mrs": [m.id for m in members]})
    return Plan((*closes, step), 0, waiting)


FORGE_SUSPENDED = "ForgeSuspended"
"""The reason a Resolved writ carries while its MR waits on a suspended forge."""


def holds(view: ForgeView, queue: list[QueuedMR]) -> list[Action]:
    """Keep each queued writ's message true to the forge's suspension: say it is held
    while the forge is suspended, and queued again once it is resumed."""
    actions = []
    for mr in queue:
        if mr.state != QUEUED or mr.writ_phase != RESOLVED:
            continue
        tgt = target("Writ", view.world, mr.writ)
        data: dict[str, Any] = {"world": view.world, "writ": mr.writ, "mr": mr.id}
        if view.suspended:
            message = f"merge request #{mr.id} queued; {view.suspended}"
            if (mr.writ_reason, mr.writ_message) != (FORGE_SUSPENDED, message):
                actions.append(Action(NOTE, "hold", tgt, message, {**data, "message": message}))
        elif mr.writ_reason == FORGE_SUSPENDED:
            message = f"merge request #{mr.id} queued; the forge is resumed"
            actions.append(Action(NOTE, "unhold", tgt, message, {**data, "message": message}))
    return actions


def _side(view: ForgeView) -> list[Action]:
    """Cleanups a killed forge left undone, and a push that failed after a landing."""
    w = view.world
    side = [Action(DELETE, "cleanup", target("Writ", w, writ),
                   f"remove the worktree of {agent} and branch sol/{writ} (merged)",
                   {"world": w, "writ": writ, "agent": agent})
            for writ, agent in sorted(view.leftovers)]
    if view.unpushed:
        side.append(Action(UPDATE, "push", target("World", "", w),
                           f"push {view.branch} to the source", {"world": w}))
    return side


def next_step(view: ForgeView, mr: QueuedMR) -> Action:
    """What the forge does next for the head MR, from the last step it finished."""
    tgt = target("Writ", view.world, mr.writ)
    data: dict[str, Any] = {"world": view.world, "writ": mr.writ, "mr": mr.id,
                            "step": str(mr.step)}
    head = f"MR #{mr.id}:"
    if mr.step == Step.LANDED and view.push:
        return Action(UPDATE, "push", tgt, f"{head} push {view.branch} to the source", data)
    if mr.step in (Step.LANDED, Step.PUSHED):
        return Action(UPDATE, "record-merged", tgt, f"{head} landed on {view.branch} as "
                      f"{mr.commit[:12]}; record it Merged",
                      {**data, "commit": mr.commit, "how": "landed"})
    if mr.step == Step.EMPTY:
        return Action(UPDATE, "record-merged", tgt, f"{head} sol/{mr.writ} adds nothing "
                      f"{view.branch} lacks; record it Merged",
                      {**data, "commit": mr.commit, "how": "empty"})
    if mr.landed or mr.writ_phase == MERGED:
        commit = mr.landed or mr.writ_commit
        return Action(UPDATE, "record-merged", tgt, f"{head} already on {view.branch} as "
                      f"{commit[:12]}; record it Merged",
                      {**data, "commit": commit, "how": "found"})
    if mr.state == QUEUED or mr.step in (Step.NEW, Step.MOVED):
        what = f"merge sol/{mr.writ} onto {view.branch}"
        if mr.step == Step.MOVED:
            what = f"merge sol/{mr.writ} again onto the new tip of {view.branch}"
        elif mr.state == MR_MERGING:
            what = f"resume the interrupted merge of sol/{mr.writ} onto {view.branch}"
        return Action(UPDATE, "merge", tgt, f"{head} {what}, run the gates, land", data)
    if mr.step in SENT_BACK_STEPS and mr.attempt < view.max_attempts:
        return Action(UPDATE, "send-back", tgt, f"{head} send attempt {mr.attempt} back: "
                      f"{mr.verdict}", data)
    if mr.step in (*SENT_BACK_STEPS, Step.BRANCH_MISSING):
        return Action(UPDATE, "fail", tgt, f"{head} fail the writ at attempt {mr.attempt}: "
                      f"{mr.verdict}", data)
    return _gate_or_land(view, mr, data)


def passed_gates(step: str, passed: tuple[str, ...], gates: tuple[str, ...]) -> tuple[str, ...]:
    """The world's gates that passed on the merge commit (a prefix of `gates`), or none
    when the gates must start over.

    A gate found running was cut short by a crash, and gates changed in the spec since
    they ran leave results that prove nothing: either way the gates start over (on a
    clean checkout: they run in one tree and may build on each other's output).
    """
    if step == Step.GATE_RUNNING or gates[:len(passed)] != passed:
        return ()
    return passed


def _gate_or_land(view: ForgeView, mr: QueuedMR, data: dict[str, Any]) -> Action:
    """After the merge: the first gate not passed on the merge commit, else land it."""
    tgt = target("Writ", view.world, mr.writ)
    done = passed_gates(mr.step, mr.passed, view.gates)
    cut_short = mr.step == Step.GATE_RUNNING
    if len(done) < len(view.gates):
        index, total = len(done), len(view.gates)
        name = view.gates[index]
        again = " again on a clean checkout (the last gate was cut short)" if cut_short else ""
        return Action(UPDATE, "gate", tgt, f"MR #{mr.id}: run gate {name} ({index + 1}/"
                      f"{total}){again} on sol/{mr.writ} merged onto {mr.onto[:12]}",
                      {**data, "gate": index, "name": name, "restart": cut_short})
    return Action(UPDATE, "land", tgt, f"MR #{mr.id}: land {mr.commit[:12]} on {view.branch} "
                  f"if it is still at {mr.onto[:12]}",
                  {**data, "commit": mr.commit, "onto": mr.onto})


# ---- batches ---------------------------------------------------------------------


def batchable(view: ForgeView, queue: list[QueuedMR]) -> list[QueuedMR]:
    """The queue's head and the queued MRs after it that may share its batch: fresh,
    Resolved, not already on the target, at most `batch_size` of them."""
    taken: list[QueuedMR] = []
    for mr in queue[:max(view.batch_size, 1)]:
        if (mr.state != QUEUED or mr.step != Step.NEW or mr.writ_phase != RESOLVED
                or mr.landed):
            break
        taken.append(mr)
    return taken


def probe_points(good: int, bad: int | None, size: int, concurrency: int) -> tuple[int, ...]:
    """The prefixes to gate next: the whole chain first (all passing is one gate run);
    after a failure, `concurrency` cuts spread evenly over (good, bad), which is plain
    binary search with one."""
    if bad is None:
        return (size,)
    inside = range(good + 1, bad)
    if len(inside) <= concurrency:
        return tuple(inside)
    span = bad - good
    return tuple(sorted({min(bad - 1, max(good + 1, good + round(span * j / (concurrency + 1))))
                         for j in range(1, concurrency + 1)}))


def bisected(good: int, bad: int | None, results: dict[int, bool]) -> tuple[int, int | None]:
    """(good, bad) after a round of probes: the shortest failing prefix, and the longest
    passing one below it (a pass above a failure proves nothing for the prefix between,
    whose commits would land untested as trees of their own)."""
    failed = [i for i, ok in results.items() if not ok]
    if failed:
        bad = min(failed) if bad is None else min(bad, *failed)
    passed = [i for i, ok in results.items() if ok and (bad is None or i < bad)]
    return max(good, *passed) if passed else good, bad


def _batch_plan(view: ForgeView, batch: BatchView, queue: list[QueuedMR],
                closes: list[Action]) -> Plan:
    """While a batch runs: send back its members a conflict took out, and its next step."""
    out = [next_step(view, mr) for mr in queue
           if mr.state == MR_MERGING and mr.step in (*SENT_BACK_STEPS, Step.BRANCH_MISSING)]
    in_chain = {mr for mr, _, _ in batch.chain or ()}
    waiting = {target("Writ", view.world, mr.writ): batch_message(batch, view.branch)
               for mr in queue if mr.id in in_chain}
    return Plan((*closes, *out, batch_step(view, batch)), 0, waiting)


def batch_message(batch: BatchView, branch: str) -> str:
    """What a member writ of the batch says (`sol status`, `describe`)."""
    if batch.chain is None:
        return f"in batch #{batch.id} ({len(batch.members)} writs), squashing onto {branch}"
    n = len(batch.chain)
    if batch.bad is None:
        return f"in batch #{batch.id} ({n} writs on {batch.onto[:12]}): gating the whole chain"
    return (f"in batch #{batch.id} ({n} writs): bisection step {batch.round}, prefixes "
            f"1..{batch.good} pass, 1..{batch.bad} fails")


def batch_step(view: ForgeView, batch: BatchView) -> Action:
    """The batch's next step: build its chain, land a prefix proven to pass, send back a
    culprit found, give the rest back to the queue when the gates changed, or probe."""
    w = view.world
    data: dict[str, Any] = {"world": w, "batch": batch.id, "version": batch.version}
    tgt = target("World", "", w)
    head = f"batch #{batch.id}:"
    if batch.chain is None:
        return Action(UPDATE, "batch-build", tgt, f"{head} squash MR "
                      f"{', '.join(f'#{m}' for m in batch.members)} in a chain onto "
                      f"{view.branch}", data)
    chain = batch.chain
    if batch.landed < batch.good:
        mr, writ, commit = chain[batch.good - 1]
        return Action(UPDATE, "batch-land", tgt, f"{head} land {commit[:12]} (writs 1..."
                      f"{batch.good}, last {writ}) on {view.branch} if it is still at "
                      f"{batch.onto[:12]}", {**data, "commit": commit, "onto": batch.onto})
    if batch.gates != view.gates and batch.landed < len(chain):
        return Action(UPDATE, "batch-requeue", tgt, f"{head} the world's gates changed; "
                      "its writs not landed go back to the queue", data)
    if batch.bad is not None and batch.bad == batch.good + 1:
        mr, writ, _ = chain[batch.bad - 1]
        return Action(UPDATE, "batch-culprit", tgt, f"{head} MR #{mr} ({writ}) fails the "
                      f"gates on {batch.onto[:12]}; send it back, queue the "
                      f"{len(chain) - batch.bad} after it again", {**data, "mr": mr})
    points = probe_points(batch.good, batch.bad, len(chain), view.concurrency)
    what = ", ".join(f"1..{p}" for p in points)
    return Action(UPDATE, "batch-probe", tgt, f"{head} run the gates on prefix {what} of "
                  f"{len(chain)} (bisection step {batch.round + 1})",
                  {**data, "points": list(points)})
