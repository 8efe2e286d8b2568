"""The steps of one merge (`Merge`), each one forge action: merge in the forge worktree,
run one gate, land by compare-and-set, push, send back or fail (forge.py records a
landing Merged and cleans up after it).

forge_plan.py picks the step; a step starts from the MR's row (`step`, the last one
finished, and `progress`, what it left: the merge commit, the tip under it, the gate
results) and, compare-and-set on that step, writes its own outcome there with its events,
so a forge killed between two steps resumes at the next and one killed inside a step
does it again. The target moves only in `land`, to the commit every gate passed on.
The crash points listed in forge.py's docstring are here (`crash_point`).
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from reconciler.controllers.forge_plan import (
    MR_FAILED,
    MR_MERGED,
    MR_MERGING,
    QUEUED,
    SENT_BACK,
    Step,
    passed_gates,
)
from reconciler.core.conditions import escalate, with_condition
from reconciler.core.errors import Retry, SolError
from reconciler.core.model import FAILED, MERGED, MERGING, PENDING, RESOLVED, WorldSpec, WritSpec
from reconciler.core.store import MergeRequest, Record, Store
from reconciler.drivers import backup, gates, worktrees
from reconciler.drivers.runtimes import session_path
from reconciler.drivers.sphere import Sphere
from reconciler.drivers.worktrees import git_reason, run_git

CRASH_ENV = "SOL_FORGE_CRASH_AT"
CRASH_POINTS = ("before-merge", "after-merge", "mid-gate", "after-land", "after-record")
MAX_REMERGES = 3  # target moves in a row before the MR waits one resync interval
FEEDBACK_LINES = 200
ATTEMPT_TAIL = 20
GATE_ENV_DROP = ("TMUX", "TMUX_PANE", CRASH_ENV, "SOL_TETHER", "SOL_AGENT", "SOL_SESSION")


def crash_point(name: str) -> None:
    """Die here, as a kill -9 would, when SOL_FORGE_CRASH_AT names this point."""
    if os.environ.get(CRASH_ENV) == name:
        os._exit(137)


def reset(wt: Path, sha: str) -> None:
    """Nothing half-merged remains: detached at sha, no changes, no untracked files."""
    what = f"cannot reset the forge worktree {wt}"
    run_git(wt, "reset", "--quiet", "--hard", sha, what=what)
    run_git(wt, "clean", "-ffdxq", what=what)


def gate_record(sphere: Sphere, world: str) -> Path:
    """Where the running gate of a world is recorded, so a restart can end an orphan."""
    return sphere.home.run / f"forge-{world}.gate"


def land(repo: Path, branch: str, new: str, old: str, what: str) -> bool:
    """Compare-and-set the target from old to new; False if it moved meanwhile."""
    ref = f"refs/heads/{branch}"
    status, _, err = run_git(repo, "update-ref", "-m", f"sol forge: land {what}", ref, new, old,
                             check=False)
    if status == 0:
        backup.save(repo, branch)  # with push: false, the only copy
        return True
    now = worktrees.rev(repo, ref)
    if now == new:
        return True
    if now != old:
        return False
    raise SolError(f"cannot move {branch} in {repo}: {git_reason(err)}")


def ensure_worktree(repo: Path, wt: Path, ref: str) -> None:
    """A detached worktree of the managed clone, made again if it is broken."""
    if (wt / ".git").is_file():
        status, out, _ = run_git(wt, "rev-parse", "--path-format=absolute",
                                 "--git-common-dir", check=False)
        if status == 0 and Path(out.strip()).resolve() == repo.resolve():
            return
    shutil.rmtree(wt, ignore_errors=True)
    run_git(repo, "worktree", "prune", what=f"cannot prune worktrees of {repo}")
    wt.parent.mkdir(parents=True, exist_ok=True)
    run_git(repo, "worktree", "add", "--quiet", "--detach", str(wt.absolute()),
            ref, what=f"cannot make the forge worktree {wt}")


def record_merged(store: Store, world: str, mr: MergeRequest, commit: str,
                  message: str) -> None:
    """Writ Merged with its commit, MR Merged: one transaction."""
    key = ("Writ", world, mr.writ)
    with store.transaction():
        writ = store.get(*key)
        if writ is not None and writ.phase in (RESOLVED, MERGING):
            entry = {"attempt": mr.attempt, "outcome": "merged", "message": message,
                     "commit": commit}
            store.set_status(key, phase=MERGED, reason="Merged", message=message,
                             mergeCommit=commit, feedback=None,
                             attempts=[*(writ.status.get("attempts") or []), entry])
        store.update_mr(mr.id, expect_state=mr.state, state=MR_MERGED, merge_commit=commit,
                        message=message)
        store.event("merged", kind="Writ", world=world, name=mr.writ, message=message,
                    mr=mr.id, commit=commit, attempt=mr.attempt)


# ---- one merge, step by step ---------------------------------------------------------


class Merge:
    """One MR's merge, read back from its row; each public method is one step and returns
    False when the row is no longer at the step it was planned from."""

    def __init__(self, sphere: Sphere, world: str, spec: WorldSpec, mr: MergeRequest) -> None:
        self.sphere, self.world, self.spec, self.mr = sphere, world, spec, mr
        self.store = sphere.store
        self.repo = sphere.home.repo(world)
        self.wt = sphere.home.forge_worktree(world)
        self.ref = f"refs/heads/{spec.branch}"
        self.key = ("Writ", world, mr.writ)
        step, self.progress = self.store.mr_progress(mr.id)
        self.step = Step(step)

    def merge(self) -> bool:
        """Merge the branch onto the target's tip in the forge worktree; the outcome is
        the merge commit, a conflict, nothing to land, or a missing branch."""
        if self.step == Step.NEW:
            if not self._start():
                return False
            crash_point("before-merge")
        elif self.step != Step.MOVED or self.mr.state != MR_MERGING:
            return False
        if worktrees.rev(self.repo, f"refs/heads/{self.mr.branch}") is None:
            message = (f"branch {self.mr.branch} is missing from {self.repo}; the work cannot "
                       "be merged")
            return self._save(Step.BRANCH_MISSING, verdict={"reason": "BranchMissing",
                                                            "summary": message})
        old = worktrees.rev(self.repo, self.ref)
        if old is None:
            raise SolError(f"branch {self.spec.branch} vanished from {self.repo}")
        new, files, reason = self.merge_onto(old)
        if new is None:
            return self._save(Step.CONFLICT, onto=old,
                              verdict=self.conflict_verdict(old, files, reason))
        if new == old:
            return self._save(Step.EMPTY, commit=old, onto=old)
        if not self._save(Step.MERGED, commit=new, onto=old, gates=[]):
            return False
        crash_point("after-merge")
        return True

    def gate(self, index: int, name: str) -> bool:
        """Run gate `index` on the merge commit. The first gate, gates that start over,
        and any gate whose worktree is not plainly at the merge commit get a fresh
        checkout (the merge itself was made without one)."""
        commit, onto = str(self.progress.get("commit") or ""), str(self.progress.get("onto"))
        ran = list(self.progress.get("gates") or [])
        done = passed_gates(self.step, tuple(g["name"] for g in ran), self._gate_names())
        if (self.step not in (Step.MERGED, Step.GATE_RUNNING, Step.GATE_PASSED) or not commit
                or len(done) != index or index >= len(self.spec.gates)
                or self.spec.gates[index].name != name):
            return False
        if (not index or len(done) < len(ran) or self.step == Step.GATE_RUNNING
                or not self._at(commit)):
            self._ensure_worktree()
            reset(self.wt, commit)
            if index:  # earlier gates' output is gone with the tree: they run again
                return self._save(Step.MERGED, gates=[])
        done = ran[:index]
        gate, total = self.spec.gates[index], len(self.spec.gates)
        with self.store.transaction():
            if not self._save(Step.GATE_RUNNING, gates=done):
                return False
            self.store.set_status(self.key, message=f"gate {gate.name} running ({index + 1}/"
                                  f"{total}) on {self.mr.branch} merged onto {onto[:12]}",
                                  expect_phases=[MERGING])
        env = {k: v for k, v in os.environ.items() if k not in GATE_ENV_DROP}
        env.update(SOL_WORLD=self.world, SOL_WRIT=self.mr.writ, SOL_ATTEMPT=str(self.mr.attempt),
                   PATH=session_path(env.get("PATH")))
        result = gates.run_gate(
            gate.name, gate.run, cwd=self.wt, timeout=gate.timeout, env=env,
            log=self.sphere.home.gate_log(self.world, self.mr.writ, self.mr.attempt, gate.name),
            record=gate_record(self.sphere, self.world), tail_lines=FEEDBACK_LINES,
            on_start=lambda _pid: crash_point("mid-gate"))
        if not result.passed:
            reset(self.wt, onto)
        with self.store.transaction():
            self.store.event("gate-passed" if result.passed else "gate-failed", kind="Writ",
                             world=self.world, name=self.mr.writ, message=result.summary,
                             mr=self.mr.id, gate=gate.name, exitCode=result.exit_code,
                             log=str(result.log), seconds=round(result.seconds, 3))
            ran = [*done, {"name": gate.name, "summary": result.summary}]
            if result.passed:
                return self._save(Step.GATE_PASSED, gates=ran)
            return self._save(Step.GATE_FAILED, gates=ran,
                              verdict=self.gate_failed_verdict(onto, result))

    def land(self) -> bool:
        """Move the target from the tip the merge was made on to the merge commit, once
        every gate of the world passed on it; merge again if the target moved."""
        commit, onto = str(self.progress.get("commit") or ""), str(self.progress.get("onto"))
        ran = tuple(g["name"] for g in self.progress.get("gates") or [])
        if (self.step not in (Step.MERGED, Step.GATE_RUNNING, Step.GATE_PASSED) or not commit
                or passed_gates(self.step, ran, self._gate_names()) != self._gate_names()):
            return False
        if self._land(commit, onto):
            if not self._save(Step.LANDED):
                return False
            crash_point("after-land")
            return True
        moves = int(self.progress.get("moves") or 0) + 1
        held = moves >= MAX_REMERGES  # until the next pass: merging now would race again
        with self.store.transaction():
            self.store.event("target-moved", kind="Writ", world=self.world, name=self.mr.writ,
                             message=f"{self.spec.branch} moved during the gates; merging "
                             "again on its new tip", mr=self.mr.id)
            saved = self._save(Step.MOVED, moves=0 if held else moves,
                               until=time.time() + self.sphere.config.resync if held else 0.0)
        if saved and held:
            raise Retry(f"{self.spec.branch} kept moving during the gates of "
                        f"{self.world}/{self.mr.writ}; retrying on the next pass")
        return saved

    def push(self) -> bool:
        """Push the landed target to the source (a failure is the world's condition and
        an event; the work is landed all the same)."""
        if self.step != Step.LANDED:
            return False
        if self.spec.push:
            push(self.sphere, self.store.get("World", "", self.world), self.spec)
        return self._save(Step.PUSHED)

    def conclude(self) -> bool:
        """Send the attempt back with its feedback, or fail the writ (its attempts used
        up, or its branch missing)."""
        verdict = self.progress.get("verdict") or {}
        if self.step == Step.BRANCH_MISSING:
            return self._fail("BranchMissing", str(verdict["summary"]))
        if self.step not in (Step.CONFLICT, Step.GATE_FAILED):
            return False
        return self._send_back(verdict["reason"], verdict["summary"], verdict["feedback"],
                               verdict["entry"])

    # ---- the parts of the steps ------------------------------------------------------

    def _save(self, step: Step, **changes: Any) -> bool:
        """This step done: compare-and-set on the step it started from."""
        progress = {**self.progress, **changes}
        if not self.store.update_mr(self.mr.id, expect_state=MR_MERGING, expect_step=self.step,
                                    step=step, progress=progress):
            return False
        self.step, self.progress = step, progress
        return True

    def _gate_names(self) -> tuple[str, ...]:
        return tuple(g.name for g in self.spec.gates)

    def _at(self, commit: str) -> bool:
        """The forge worktree exists, is ours, and has commit checked out."""
        if not (self.wt / ".git").is_file():
            return False
        status, out, _ = run_git(self.wt, "rev-parse", "HEAD", check=False)
        return status == 0 and out.strip() == commit

    def _start(self) -> bool:
        """MR and writ to Merging together; False if the writ is no longer mergeable."""
        with self.store.transaction():
            writ = self.store.get(*self.key)
            if writ is None or writ.phase not in (RESOLVED, MERGING):
                return False
            assert (writ.spec.get("kind") or "code") == "code", "analysis writs never merge"
            if self.mr.state == QUEUED:
                self.store.update_mr(self.mr.id, expect_state=QUEUED, state=MR_MERGING,
                                     message="merging")
            self.store.set_status(self.key, phase=MERGING, reason="Merging",
                                  message=f"merging {self.mr.branch} onto {self.spec.branch} "
                                  f"(attempt {self.mr.attempt})")
            again = " again after an interruption" if self.mr.state == MR_MERGING else ""
            self.store.event("merging", kind="Writ", world=self.world, name=self.mr.writ,
                             message=f"MR #{self.mr.id}: merging {self.mr.branch} onto "
                             f"{self.spec.branch}{again}", mr=self.mr.id,
                             attempt=self.mr.attempt)
        self.mr = replace(self.mr, state=MR_MERGING)
        return True

    def _ensure_worktree(self) -> None:
        ensure_worktree(self.repo, self.wt, self.ref)

    def _message(self, tip: str) -> str:
        writ = self.store.get(*self.key)
        title = " ".join(WritSpec.from_spec(writ.spec).title.split()) if writ else ""
        how = "Squashed" if self.spec.strategy == "squash" else "Merged"
        return (f"{title or self.mr.writ}\n\nWrit {self.world}/{self.mr.writ}, worked by agent "
                f"{self.mr.agent or '-'}, attempt {self.mr.attempt}.\n{how} from "
                f"{self.mr.branch} at {tip[:12]} by sol forge.\n\n"
                f"Sol-Writ: {self.world}/{self.mr.writ}\n")

    def merge_onto(self, old: str) -> tuple[str | None, list[str], str]:
        """The branch merged onto commit `old`, made in the object store (no worktree is
        touched, so a chain of them costs two git runs each): (new commit, [], "") on
        success (old when nothing changed), else (None, files, git's reason) on a
        conflict."""
        tip = worktrees.rev(self.repo, f"refs/heads/{self.mr.branch}") or ""
        if self.spec.strategy == "merge" and worktrees.is_ancestor(self.repo, tip, old):
            return old, [], ""
        tree, files, reason = worktrees.merge_trees(self.repo, old, tip)
        if tree is None:
            return None, files, reason
        forge = ("sol forge", f"forge@{self.world}.sol")
        if self.spec.strategy == "merge":
            parents, author = [old, tip], forge
        else:
            if tree == worktrees.tree_of(self.repo, old):
                return old, [], ""
            done = run_git(self.repo, "log", "-1", "--format=%an%x00%ae", tip,
                           what=f"cannot read the author of {self.mr.branch}")
            name, _, email = done[1].strip().partition("\0")
            parents, author = [old], (name, email) if email else forge
        return worktrees.commit_tree(self.repo, tree, parents, self._message(tip),
                                     author=author, committer=forge), [], ""

    def _land(self, new: str, old: str) -> bool:
        return land(self.repo, self.spec.branch, new, old, f"{self.world}/{self.mr.writ}")

    def gate_failed_verdict(self, old: str, result: gates.GateResult) -> dict[str, Any]:
        """What a send-back for a failed gate says, kept until the send-back step."""
        shown = result.tail or "(no output)"
        feedback = (
            f"The forge sent attempt {self.mr.attempt} of writ {self.world}/{self.mr.writ} "
            f"back: {result.summary}.\nCommand: {result.run}\nIt ran on {self.mr.branch} "
            f"merged onto {self.spec.branch} at {old[:12]}; full log: {result.log}\n"
            f"Last {FEEDBACK_LINES} lines of its output:\n{shown}\n\n"
            f"Fix the cause on your branch {self.mr.branch}, commit, and run `sol resolve` "
            "again.")
        entry = {"outcome": "gate-failed", "message": result.summary, "gate": result.name,
                 "exitCode": result.exit_code, "log": str(result.log),
                 "tail": "\n".join(result.tail.splitlines()[-ATTEMPT_TAIL:])}
        return {"reason": "GateFailed", "summary": result.summary, "feedback": feedback,
                "entry": entry}

    def conflict_verdict(self, old: str, files: list[str], reason: str) -> dict[str, Any]:
        """What a send-back for a conflict says, kept until the send-back step."""
        target_branch = self.spec.branch
        where = (":\n" + "".join(f"  {f}\n" for f in files)) if files else f": {reason}\n"
        summary = (f"conflict with {target_branch} in {', '.join(files)}" if files
                   else f"cannot merge onto {target_branch}: {reason}")
        feedback = (
            f"The forge sent attempt {self.mr.attempt} of writ {self.world}/{self.mr.writ} "
            f"back: {self.mr.branch} does not merge cleanly onto {target_branch} (at "
            f"{old[:12]}){where}"
            f"Merge the target branch into your branch (`git merge {target_branch}`), resolve "
            "the conflicts in those files, commit, and run `sol resolve` again.")
        return {"reason": "Conflict", "summary": summary, "feedback": feedback,
                "entry": {"outcome": "conflict", "message": summary, "files": files}}

    def _send_back(self, reason: str, summary: str, feedback: str,
                   entry: dict[str, Any]) -> bool:
        """Pending with the feedback on the same branch, or Failed after maxAttempts."""
        attempt = self.mr.attempt
        with self.store.transaction():
            writ = self.store.get(*self.key)
            earlier = list(writ.status.get("attempts") or []) if writ else []
            attempts = [*earlier, {"attempt": attempt, **entry}]
            if attempt >= self.spec.max_attempts:
                return self._fail(reason, f"failed after {attempt} attempt(s): {summary}; "
                                  f"branch {self.mr.branch} and its worktree kept",
                                  feedback=feedback, attempts=attempts)
            if not self.store.update_mr(self.mr.id, expect_state=MR_MERGING, state=SENT_BACK,
                                        message=summary):
                return False
            self.store.set_status(self.key, phase=PENDING, reason="SentBack",
                                  message=f"attempt {attempt} sent back: {summary}",
                                  expect_phases=[MERGING], attempt=attempt + 1,
                                  feedback=feedback, attempts=attempts)
            agent = self.store.agent_for(self.world, self.mr.writ)
            if agent is not None:
                self.store.put_agent(self.world, agent.name, writ=self.mr.writ,
                                     runtime=agent.runtime, state="sent-back")
            self.store.event("sent-back", kind="Writ", world=self.world, name=self.mr.writ,
                             message=f"attempt {attempt}: {summary}", mr=self.mr.id,
                             attempt=attempt)
        return True

    def _fail(self, reason: str, message: str, **fields: Any) -> bool:
        """Failed for good: the branch and worktree stay, a human is escalated to."""
        with self.store.transaction():
            if not self.store.update_mr(self.mr.id, expect_state=MR_MERGING, state=MR_FAILED,
                                        message=message):
                return False
            self.store.set_status(self.key, phase=FAILED, reason=reason, message=message,
                                  expect_phases=[MERGING], **fields)
            escalate(self.store, self.world, self.mr.writ, message, source="Forge")
            self.store.event("failed", kind="Writ", world=self.world, name=self.mr.writ,
                             message=message, mr=self.mr.id, attempt=self.mr.attempt)
        return True


# ---- pushing the target ----------------------------------------------------------


def push_reason(stderr: str) -> str:
    """Why git refused a push: the remote's own first error (a non-bare repository with
    the branch checked out explains itself there), or the rejection's reason."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    for line in lines:
        if line.startswith("remote: error: "):
            return line.removeprefix("remote: error: ")
    for line in lines:
        if line.startswith("! [") and "(" in line:
            return line[line.index("(") + 1:].rstrip(")")
    return git_reason(stderr)


def push(sphere: Sphere, world: Record | None, spec: WorldSpec) -> bool:
    """Push the target to the source; the outcome is the world's `Pushed` condition, a
    failure an event (once per reason), retried on the next pass."""
    if world is None:
        return False
    repo = sphere.home.repo(world.name)
    ref = f"refs/heads/{spec.branch}"
    status, _, err = run_git(repo, "push", "--quiet", "origin", f"{ref}:{ref}",
                             timeout=worktrees.FETCH_TIMEOUT, check=False)
    if status != 0:
        message = (f"cannot push {spec.branch} to {spec.source}: {push_reason(err)}; "
                   "retrying on the next pass")
        if _pushed(sphere, world, False, "PushFailed", message):
            sphere.store.event("push-failed", kind="World", world=world.name, name=world.name,
                               message=message)
        return False
    _pushed(sphere, world, True, "Pushed", f"{spec.branch} pushed to {spec.source}")
    sphere.store.event("pushed", kind="World", world=world.name, name=world.name,
                       message=f"{spec.branch} pushed to {spec.source}",
                       commit=worktrees.rev(repo, ref) or "")
    return True


def _pushed(sphere: Sphere, world: Record, ok: bool, reason: str, message: str) -> bool:
    """Set the world's Pushed condition; True when it changed."""
    current = sphere.store.get(*world.key) or world
    before = next((c for c in current.status.get("conditions") or []
                   if c.get("type") == "Pushed"), None)
    if before and (before.get("status"), before.get("message")) == (str(ok), message):
        return False
    sphere.store.set_status(world.key, conditions=with_condition(
        current.status, "Pushed", ok, reason, message))
    return True
