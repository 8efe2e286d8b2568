"""One merge of the forge: merge in the forge worktree, run the gates, land or send back.

forge.py decides what to do with each merge request of a world's queue; this module does
it for one MR (`Merge`) and holds what comes after a landing: recording the writ Merged,
removing its worktree and branch, pushing the target. The crash points listed in
forge.py's docstring are all here (`crash_point`), as are the states an MR goes through.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

from reconciler.core import tether
from reconciler.core.conditions import escalate, with_condition
from reconciler.core.errors import Retry, SolError
from reconciler.core.home import session_name
from reconciler.core.model import FAILED, MERGED, MERGING, PENDING, RESOLVED, WorldSpec, WritSpec
from reconciler.core.store import MergeRequest, Record
from reconciler.drivers import backup, gates, worktrees
from reconciler.drivers.runtimes import session_path
from reconciler.drivers.sphere import Sphere
from reconciler.drivers.worktrees import git_reason, run_git

CRASH_ENV = "SOL_FORGE_CRASH_AT"
CRASH_POINTS = ("before-merge", "after-merge", "mid-gate", "after-land", "after-record")
QUEUED, MR_MERGING, MR_MERGED, SENT_BACK, MR_FAILED = (
    "Queued", "Merging", "Merged", "SentBack", "Failed")
MAX_REMERGES = 3  # target moves during one merge before the MR waits for the next pass
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


# ---- one merge -------------------------------------------------------------------


class Merge:
    """Merge one MR in the forge worktree, run the gates, land or send it back."""

    def __init__(self, sphere: Sphere, world: str, spec: WorldSpec, mr: MergeRequest) -> None:
        self.sphere, self.world, self.spec, self.mr = sphere, world, spec, mr
        self.store = sphere.store
        self.repo = sphere.home.repo(world)
        self.wt = sphere.home.forge_worktree(world)
        self.ref = f"refs/heads/{spec.branch}"
        self.key = ("Writ", world, mr.writ)

    def run(self) -> None:
        if not self._start():
            return
        crash_point("before-merge")
        if worktrees.rev(self.repo, f"refs/heads/{self.mr.branch}") is None:
            return self._fail("BranchMissing", f"branch {self.mr.branch} is missing from "
                              f"{self.repo}; the work cannot be merged")
        self._ensure_worktree()
        for _ in range(MAX_REMERGES):
            old = worktrees.rev(self.repo, self.ref)
            if old is None:
                raise SolError(f"branch {self.spec.branch} vanished from {self.repo}")
            self._reset(old)
            new, files, reason = self._merge(old)
            if new is None:
                self._reset(old)
                return self._conflict(old, files, reason)
            if new == old:
                self._record(old, f"nothing to land: {self.mr.branch} adds nothing "
                             f"{self.spec.branch} lacks")
                return
            crash_point("after-merge")
            failed = self._gates(old)
            if failed is not None:
                self._reset(old)
                return self._gate_failed(old, failed)
            if self._land(new, old):
                break
            self.store.event("target-moved", kind="Writ", world=self.world, name=self.mr.writ,
                             message=f"{self.spec.branch} moved during the gates; merging "
                             "again on its new tip", mr=self.mr.id)
        else:
            raise Retry(f"{self.spec.branch} kept moving during the gates of "
                        f"{self.world}/{self.mr.writ}; retrying on the next pass")
        crash_point("after-land")
        if self.spec.push:
            push(self.sphere, self.store.get("World", "", self.world), self.spec)
        self._record(new, f"landed on {self.spec.branch} as {new[:12]}")
        self._reset(new)

    def _start(self) -> bool:
        """MR and writ to Merging together; False if the writ is no longer mergeable."""
        with self.store.transaction():
            writ = self.store.get(*self.key)
            if writ is None or writ.phase not in (RESOLVED, MERGING):
                return False
            assert (writ.spec.get("kind") or "code") == "code", "analysis writs never merge"
            self.title = " ".join(WritSpec.from_spec(writ.spec).title.split()) or writ.name
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
        """A detached worktree of the managed clone, made again if it is broken."""
        run_git(self.repo, "worktree", "prune", what=f"cannot prune worktrees of {self.repo}")
        if (self.wt / ".git").is_file():
            status, out, _ = run_git(self.wt, "rev-parse", "--path-format=absolute",
                                     "--git-common-dir", check=False)
            if status == 0 and Path(out.strip()).resolve() == self.repo.resolve():
                return
        shutil.rmtree(self.wt, ignore_errors=True)
        run_git(self.repo, "worktree", "prune", what=f"cannot prune worktrees of {self.repo}")
        self.wt.parent.mkdir(parents=True, exist_ok=True)
        run_git(self.repo, "worktree", "add", "--quiet", "--detach", str(self.wt.absolute()),
                self.ref, what=f"cannot make the forge worktree {self.wt}")

    def _reset(self, sha: str) -> None:
        reset(self.wt, sha)

    def _git(self, *args: str, author: tuple[str, str] | None = None) -> tuple[int, str, str]:
        name, email = "sol forge", f"forge@{self.world}.sol"
        a_name, a_email = author or (name, email)
        env = {"GIT_AUTHOR_NAME": a_name, "GIT_AUTHOR_EMAIL": a_email,
               "GIT_COMMITTER_NAME": name, "GIT_COMMITTER_EMAIL": email}
        return run_git(self.wt, "-c", f"user.name={name}", "-c", f"user.email={email}",
                       "-c", "commit.gpgsign=false", "-c", "core.hooksPath=/dev/null", *args,
                       env=env, check=False)

    def _message(self, tip: str) -> str:
        how = "Squashed" if self.spec.strategy == "squash" else "Merged"
        return (f"{self.title}\n\nWrit {self.world}/{self.mr.writ}, worked by agent "
                f"{self.mr.agent or '-'}, attempt {self.mr.attempt}.\n{how} from "
                f"{self.mr.branch} at {tip[:12]} by sol forge.\n\n"
                f"Sol-Writ: {self.world}/{self.mr.writ}\n")

    def _merge(self, old: str) -> tuple[str | None, list[str], str]:
        """(new commit, [], "") on success (old when nothing changed), else (None, files,
        git's reason) on a conflict."""
        source = f"refs/heads/{self.mr.branch}"
        tip = worktrees.rev(self.repo, source) or ""
        message = self._message(tip)
        if self.spec.strategy == "merge":
            status, out, err = self._git("merge", "--no-ff", "--no-edit", "-m", message, source)
        else:
            status, out, err = self._git("merge", "--squash", source)
        if status != 0:
            files = self._git("diff", "--name-only", "--diff-filter=U")[1].split()
            return None, files, git_reason(err or out)
        if self.spec.strategy == "squash":
            if self._git("diff", "--cached", "--quiet")[0] == 0:
                return old, [], ""
            author = self._git("log", "-1", "--format=%an%x00%ae", source)[1].strip()
            a_name, _, a_email = author.partition("\0")
            status, out, err = self._git("commit", "--quiet", "--no-verify", "-m", message,
                                         author=(a_name, a_email) if a_email else None)
            if status != 0:
                raise SolError(f"cannot commit the squash of {self.mr.branch} in {self.wt}: "
                               f"{git_reason(err or out)}")
        return worktrees.rev(self.wt, "HEAD"), [], ""

    def _gates(self, old: str) -> gates.GateResult | None:
        """Run every gate in order; the first that fails, or None when all pass."""
        env = {k: v for k, v in os.environ.items() if k not in GATE_ENV_DROP}
        env.update(SOL_WORLD=self.world, SOL_WRIT=self.mr.writ, SOL_ATTEMPT=str(self.mr.attempt),
                   PATH=session_path(env.get("PATH")))
        total = len(self.spec.gates)
        for number, gate in enumerate(self.spec.gates, 1):
            self.store.set_status(self.key, message=f"gate {gate.name} running ({number}/"
                                  f"{total}) on {self.mr.branch} merged onto {old[:12]}",
                                  expect_phases=[MERGING])
            result = gates.run_gate(
                gate.name, gate.run, cwd=self.wt, timeout=gate.timeout, env=env,
                log=self.sphere.home.gate_log(self.world, self.mr.writ, self.mr.attempt,
                                              gate.name),
                record=gate_record(self.sphere, self.world), tail_lines=FEEDBACK_LINES,
                on_start=lambda _pid: crash_point("mid-gate"))
            kind = "gate-passed" if result.passed else "gate-failed"
            self.store.event(kind, kind="Writ", world=self.world, name=self.mr.writ,
                             message=result.summary, mr=self.mr.id, gate=gate.name,
                             exitCode=result.exit_code, log=str(result.log))
            if not result.passed:
                return result
        return None

    def _land(self, new: str, old: str) -> bool:
        """Compare-and-set the target from old to new; False if it moved meanwhile."""
        status, _, err = run_git(self.repo, "update-ref", "-m",
                                 f"sol forge: land {self.world}/{self.mr.writ}", self.ref, new, old,
                                 check=False)
        if status == 0:
            backup.save(self.repo, self.spec.branch)  # with push: false, the only copy
            return True
        now = worktrees.rev(self.repo, self.ref)
        if now == new:
            return True
        if now != old:
            return False
        raise SolError(f"cannot move {self.spec.branch} in {self.repo}: {git_reason(err)}")

    def _record(self, commit: str, message: str) -> None:
        record_merged(self.sphere, self.world, self.mr, commit, message)
        crash_point("after-record")
        cleanup(self.sphere, self.world, self.spec, self.mr.writ)

    def _gate_failed(self, old: str, result: gates.GateResult) -> None:
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
        self._send_back("GateFailed", result.summary, feedback, entry)

    def _conflict(self, old: str, files: list[str], reason: str) -> None:
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
        self._send_back("Conflict", summary, feedback,
                        {"outcome": "conflict", "message": summary, "files": files})

    def _send_back(self, reason: str, summary: str, feedback: str,
                   entry: dict[str, Any]) -> None:
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
            self.store.set_status(self.key, phase=PENDING, reason="SentBack",
                                  message=f"attempt {attempt} sent back: {summary}",
                                  expect_phases=[MERGING], attempt=attempt + 1,
                                  feedback=feedback, attempts=attempts)
            self.store.update_mr(self.mr.id, expect_state=MR_MERGING, state=SENT_BACK,
                                 message=summary)
            agent = self.store.agent_for(self.world, self.mr.writ)
            if agent is not None:
                self.store.put_agent(self.world, agent.name, writ=self.mr.writ,
                                     runtime=agent.runtime, state="sent-back")
            self.store.event("sent-back", kind="Writ", world=self.world, name=self.mr.writ,
                             message=f"attempt {attempt}: {summary}", mr=self.mr.id,
                             attempt=attempt)

    def _fail(self, reason: str, message: str, **fields: Any) -> None:
        """Failed for good: the branch and worktree stay, a human is escalated to."""
        with self.store.transaction():
            self.store.set_status(self.key, phase=FAILED, reason=reason, message=message,
                                  expect_phases=[MERGING], **fields)
            self.store.update_mr(self.mr.id, expect_state=MR_MERGING, state=MR_FAILED,
                                 message=message)
            escalate(self.store, self.world, self.mr.writ, message, source="Forge")
            self.store.event("failed", kind="Writ", world=self.world, name=self.mr.writ,
                             message=message, mr=self.mr.id, attempt=self.mr.attempt)


# ---- landing and after -----------------------------------------------------------


def record_merged(sphere: Sphere, world: str, mr: MergeRequest, commit: str,
                  message: str) -> None:
    """Writ Merged with its commit, MR Merged: one transaction."""
    store = sphere.store
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
    if agent is not None:
        store.free_agent(world, agent.name)
    store.event("cleaned-up", kind="Writ", world=world, name=writ,
                message=f"worktree{' of ' + agent.name if agent else ''} and branch sol/{writ} "
                "removed; the work is on the target", agent=agent.name if agent else "")


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
