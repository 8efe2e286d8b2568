"""The forge against real git, real processes and real SQLite (no tmux session needed).

Each test builds the state the rest of sol would have left: a Ready world with its
managed clone, writs Resolved on branches `sol/<writ>` with a commit in an outpost
worktree, their agent rows and merge requests. Crash points run the forge in a
subprocess with SOL_FORGE_CRASH_AT and then run it again normally.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import ROOT, git, make_repo, poll
from helpers import gone
from hypothesis import given
from hypothesis import strategies as st

from reconciler.controllers import forge
from reconciler.controllers.forge import queue
from reconciler.controllers.forge_plan import ForgeView, QueuedMR, Step, plan, triage
from reconciler.core.home import Home
from reconciler.core.locks import flock
from reconciler.core.model import FAILED, MERGED, MERGING, PENDING, RESOLVED, Manifest
from reconciler.core.plan import UPDATE, Action
from reconciler.drivers import worktrees
from reconciler.drivers.sphere import Sphere

W = "shop"
README = "line1\nline2\nline3\n"



class World:
    """A Ready world, its managed clone, and helpers to resolve writs into its queue."""

    def __init__(self, sphere: Sphere, source: Path, spec: dict) -> None:
        self.sphere, self.home, self.store = sphere, sphere.home, sphere.store
        self.source = source
        self.spec = {"source": str(source), "branch": "main", **spec}
        self.store.record_spec(Manifest("World", W, "", self.spec), initial_phase="Ready")
        self.repo = self.home.repo(W)
        worktrees.clone(str(source), self.repo, "main")
        self.agents = iter(["vega", "rigel", "deneb", "altair"])

    def writ(self, name: str, files: dict[str, str], *, title: str | None = None,
             priority: int = 2, kind: str = "code") -> None:
        spec = {"title": title or f"Do {name}", "kind": kind, "priority": priority}
        self.store.record_spec(Manifest("Writ", name, W, spec), initial_phase="Working")
        agent = next(self.agents)
        base = worktrees.add_worktree(self.repo, self.home.worktree(W, agent), f"sol/{name}",
                                      "refs/heads/main")
        self.store.set_status(("Writ", W, name), base=base, agent=agent, branch=f"sol/{name}",
                              attempt=1)
        self.store.put_agent(W, agent, writ=name, state="working")
        self.resolve(name, files)

    def resolve(self, name: str, files: dict[str, str] | None = None) -> None:
        """What `sol resolve` leaves: a commit on the branch, Resolved, a queued MR."""
        record = self.store.get("Writ", W, name)
        agent, attempt = record.status["agent"], int(record.status["attempt"])
        worktree = self.home.worktree(W, agent)
        for rel, text in (files or {}).items():
            (worktree / rel).write_text(text)
        if files:
            assert worktrees.commit_all(worktree, f"work on {name}",
                                        author_name=f"sol agent {agent}",
                                        author_email=f"{agent}@{W}.sol")
        self.store.set_status(record.key, phase=RESOLVED, reason="Resolved",
                              resolvedAt=time.time())
        self.store.put_agent(W, agent, writ=name, state="resolved")
        self.store.add_mr(W, name, branch=f"sol/{name}", base=record.status["base"],
                          agent=agent, attempt=attempt,
                          priority=int(record.spec.get("priority", 2)))

    def get(self, name: str):  # noqa: ANN201 - Record
        return self.store.get("Writ", W, name)

    def mr(self, name: str):  # noqa: ANN201 - MergeRequest
        return self.store.mrs(W, writ=name)[-1]

    def tip(self) -> str:
        return git(self.repo, "rev-parse", "refs/heads/main")

    def trailers(self, name: str) -> list[str]:
        out = git(self.repo, "log", "--format=%H", f"--grep=Sol-Writ: {W}/{name}",
                  "refs/heads/main")
        return out.split()

    def advance(self, message: str) -> str:
        """Someone else's commit on the target (same tree), as a fetch would bring."""
        tree = git(self.repo, "rev-parse", "refs/heads/main^{tree}")
        new = git(self.repo, "commit-tree", "-p", "refs/heads/main", "-m", message, tree)
        git(self.repo, "update-ref", "refs/heads/main", new)
        return new

    def show(self, path: str, ref: str = "refs/heads/main") -> str:
        return git(self.repo, "show", f"{ref}:{path}")

    def events(self, type: str, name: str | None = None) -> list:
        return self.store.events(world=W, name=name, types=[type])

    def assert_forge_clean(self, *, at_tip: bool = True) -> None:
        wt = self.home.forge_worktree(W)
        assert git(wt, "status", "--porcelain", "--ignored") == ""
        if at_tip:
            assert git(wt, "rev-parse", "HEAD") == self.tip()
        assert subprocess.run(["git", "symbolic-ref", "-q", "HEAD"], cwd=wt).returncode == 1
        assert not (Path(git(wt, "rev-parse", "--absolute-git-dir")) / "MERGE_HEAD").exists()

    def assert_landed(self, name: str) -> str:
        """Merged, recorded, exactly one trailer commit; worktree, branch and agent gone."""
        writ = self.get(name)
        assert writ.phase == MERGED, (writ.phase, writ.reason, writ.message)
        landed = self.trailers(name)
        assert len(landed) == 1
        assert writ.status["mergeCommit"] == landed[0]
        assert self.mr(name).state == "Merged" and self.mr(name).merge_commit == landed[0]
        agent = writ.status["agent"]
        assert not self.home.worktree(W, agent).exists()
        assert not worktrees.branch_exists(self.repo, f"sol/{name}")
        assert self.store.agent(W, agent).writ is None
        return landed[0]


@pytest.fixture
def sphere(sol_home: Home) -> Iterator[Sphere]:
    s = Sphere(sol_home)
    yield s
    s.close()


@pytest.fixture
def source(tmp_path: Path) -> Path:
    return make_repo(tmp_path / "source", {"README.md": README})


@pytest.fixture
def make_world(sphere: Sphere, source: Path):  # noqa: ANN201
    def make(gates: list[dict] | None = None, source_path: Path | None = None,
             **forge_spec: object) -> World:
        push = bool(forge_spec.pop("push", False))
        spec = {"push": push, "forge": {"gates": gates or [], **forge_spec}}
        return World(sphere, source_path or source, spec)
    return make


def gate(name: str, run: str, timeout: str = "30s") -> dict:
    return {"name": name, "run": run, "timeout": timeout}


def run_forge_subprocess(crash_at: str | None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != forge.CRASH_ENV}
    if crash_at:
        env[forge.CRASH_ENV] = crash_at
    code = ("from reconciler.controllers.forge import reconcile\n"
            "from reconciler.drivers.sphere import Sphere\n"
            "reconcile(Sphere.from_env())\n")
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


# ---- landing ---------------------------------------------------------------------


def test_a_clean_squash_merge_lands_and_cleans_up(sphere: Sphere, make_world):
    world = make_world([gate("has-file", "test -f feature.txt")])
    before = world.tip()
    world.writ("add-x", {"feature.txt": "x\n"}, title="Add the X feature")
    actions = forge.reconcile(sphere)
    assert [a.kind for a in actions] == ["merge", "gate", "land", "record-merged"]
    commit = world.assert_landed("add-x")
    assert commit == world.tip()
    assert git(world.repo, "rev-parse", f"{commit}^") == before
    assert git(world.repo, "log", "-1", "--format=%s", commit) == "Add the X feature"
    body = git(world.repo, "log", "-1", "--format=%B", commit)
    assert "Writ shop/add-x" in body and "agent vega" in body and "attempt 1" in body
    assert body.rstrip().endswith("Sol-Writ: shop/add-x")
    committer = git(world.repo, "log", "-1", "--format=%cn <%ce>", commit)
    assert committer == "sol forge <forge@shop.sol>"
    assert git(world.repo, "log", "-1", "--format=%an", commit) == "sol agent vega"
    assert world.show("feature.txt") == "x"
    writ = world.get("add-x")
    assert writ.status["attempts"][-1]["outcome"] == "merged"
    assert "feedback" not in writ.status
    world.assert_forge_clean()
    types = [e.type for e in world.store.events(world=W, name="add-x")]
    assert types.index("merging") < types.index("gate-passed") < types.index("merged")
    assert forge.reconcile(sphere) == []  # idempotent: nothing left to do
    assert world.tip() == commit


def test_merge_strategy_makes_a_no_ff_merge_commit_with_the_trailer(sphere: Sphere, make_world):
    world = make_world(strategy="merge")
    before = world.tip()
    world.writ("add-y", {"y.txt": "y\n"})
    branch_tip = git(world.repo, "rev-parse", "sol/add-y")
    forge.reconcile(sphere)
    commit = world.assert_landed("add-y")
    parents = git(world.repo, "log", "-1", "--format=%P", commit).split()
    assert parents == [before, branch_tip]  # a fast-forward was possible, --no-ff refused it
    trailer = git(world.repo, "log", "-1", "--format=%(trailers:key=Sol-Writ,valueonly)", commit)
    assert trailer.strip() == "shop/add-y"


@pytest.mark.parametrize("strategy", ["squash", "merge"])
def test_a_branch_already_on_the_target_lands_nothing(sphere: Sphere, make_world,
                                                      strategy: str):
    world = make_world(strategy=strategy)
    world.writ("again", {"again.txt": "same\n"})
    if strategy == "squash":  # the same change reached the target by another commit
        git(world.repo, "update-ref", "refs/heads/main",
            git(world.repo, "commit-tree", "-p", "refs/heads/main", "-m", "same change",
                git(world.repo, "rev-parse", "sol/again^{tree}")))
    else:  # the branch itself is already in the target's history
        git(world.repo, "update-ref", "refs/heads/main", "sol/again")
    before = world.tip()
    forge.reconcile(sphere)
    writ = world.get("again")
    assert writ.phase == MERGED and writ.status["mergeCommit"] == before == world.tip()
    assert "nothing to land" in writ.status["attempts"][-1]["message"]


def test_no_title_or_message_reaches_a_git_command_line(sphere: Sphere, make_world,
                                                        monkeypatch):
    from reconciler.drivers import git as gitrun

    seen: list[tuple[str, ...]] = []
    real = gitrun.run
    monkeypatch.setattr(gitrun, "run", lambda cwd, *args, **kw: (seen.append(args),
                                                                 real(cwd, *args, **kw))[1])
    world = make_world([gate("ok", "true")])
    world.writ("quiet", {"q.txt": "q\n"}, title="Secret-ish title 7f3a")
    world.writ("hush", {"h.txt": "h\n"}, title="Another private title 9b1c")
    forge.reconcile(sphere)
    assert world.assert_landed("quiet") and world.assert_landed("hush")
    assert any("commit-tree" in args for args in seen)
    assert not [args for args in seen if any("7f3a" in a or "9b1c" in a for a in args)]


def test_titles_are_data_never_shell(sphere: Sphere, make_world, tmp_path: Path):
    world = make_world([gate("ok", "true")])
    title = f"Fix $(touch {tmp_path}/pwned) `id` \"quotes\""
    world.writ("odd", {"odd.txt": "o\n"}, title=title)
    forge.reconcile(sphere)
    commit = world.assert_landed("odd")
    assert git(world.repo, "log", "-1", "--format=%s", commit) == title
    assert not (tmp_path / "pwned").exists()


def test_queue_order_is_priority_then_resolve_time(sphere: Sphere, make_world):
    world = make_world(batch={"max": 1})  # one at a time: the order of single merges
    world.writ("later", {"a.txt": "a\n"}, priority=2)
    world.writ("urgent", {"b.txt": "b\n"}, priority=1)
    world.writ("last", {"c.txt": "c\n"}, priority=3)
    assert [m.writ for m in queue(world.store, W)] == ["urgent", "later", "last"]
    done = []
    while world.get("urgent").phase != MERGED:  # one step at a time, as far as urgent lands
        [step] = forge.RECONCILER.planned(sphere, W).actions
        assert forge.act(sphere, step)
        done.append(step)
    assert {a.data["writ"] for a in done} == {"urgent"}
    assert world.get("later").phase == RESOLVED
    forge.reconcile(sphere)
    log = git(world.repo, "log", "--format=%s", "refs/heads/main").splitlines()
    assert log[:3] == ["Do last", "Do later", "Do urgent"]
    assert queue(world.store, W) == []


def test_gates_get_the_writ_in_their_environment_and_not_tmux(sphere: Sphere, make_world,
                                                              monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("TMUX", "/tmp/tmux-0/default,1,0")
    check = ('test "$SOL_WORLD/$SOL_WRIT/$SOL_ATTEMPT" = shop/env-check/1 '
             '&& test -z "${TMUX+set}" && test -z "${SOL_FORGE_CRASH_AT+set}"')
    world = make_world([gate("env", check)])
    world.writ("env-check", {"e.txt": "e\n"})
    forge.reconcile(sphere)
    world.assert_landed("env-check")


# ---- sent back, failed -----------------------------------------------------------


def test_a_failing_gate_sends_the_writ_back_then_a_fix_lands(sphere: Sphere, make_world):
    world = make_world([gate("check", 'echo "looking for ok.txt"; test -f ok.txt')])
    before = world.tip()
    world.writ("fix-me", {"feature.txt": "f\n"})
    forge.reconcile(sphere)
    writ = world.get("fix-me")
    assert (writ.phase, writ.reason, writ.status["attempt"]) == (PENDING, "SentBack", 2)
    feedback = writ.status["feedback"]
    assert "gate check failed with exit code 1" in feedback
    assert "looking for ok.txt" in feedback and "sol resolve" in feedback
    entry = writ.status["attempts"][0]
    assert entry["outcome"] == "gate-failed" and entry["attempt"] == 1
    assert entry["tail"] == "looking for ok.txt"
    assert Path(entry["log"]) == world.home.gate_log(W, "fix-me", 1, "check")
    assert "looking for ok.txt" in Path(entry["log"]).read_text()
    assert world.mr("fix-me").state == "SentBack"
    assert world.tip() == before and world.trailers("fix-me") == []
    assert worktrees.branch_exists(world.repo, "sol/fix-me")
    assert world.home.worktree(W, "vega").is_dir()
    assert world.store.agent(W, "vega").writ == "fix-me"
    world.assert_forge_clean()
    assert world.events("sent-back", "fix-me") and world.events("gate-failed", "fix-me")

    world.store.set_status(writ.key, phase="Working")  # the consul re-casts it
    world.resolve("fix-me", {"ok.txt": "ok\n"})
    assert world.mr("fix-me").attempt == 2
    forge.reconcile(sphere)
    commit = world.assert_landed("fix-me")
    assert world.show("ok.txt", commit) == "ok" and world.show("feature.txt", commit) == "f"
    outcomes = [a["outcome"] for a in world.get("fix-me").status["attempts"]]
    assert outcomes == ["gate-failed", "merged"]


@pytest.mark.parametrize("strategy", ["squash", "merge"])
def test_a_conflict_sends_the_second_writ_back_until_it_merges_the_target(sphere: Sphere,
                                                                          make_world,
                                                                          strategy: str):
    world = make_world(strategy=strategy)
    world.writ("first", {"README.md": "FIRST\nline2\nline3\n"})
    world.writ("second", {"README.md": "SECOND\nline2\nline3\n"})
    forge.reconcile(sphere)
    world.assert_landed("first")
    second = world.get("second")
    assert (second.phase, second.reason, second.status["attempt"]) == (PENDING, "SentBack", 2)
    assert "README.md" in second.status["feedback"]
    assert "git merge main" in second.status["feedback"]
    assert second.status["attempts"][0]["outcome"] == "conflict"
    assert second.status["attempts"][0]["files"] == ["README.md"]
    world.assert_forge_clean()
    assert world.show("README.md") == "FIRST\nline2\nline3"

    worktree = world.home.worktree(W, second.status["agent"])
    merged = subprocess.run(["git", "merge", "main"], cwd=worktree, capture_output=True)
    assert merged.returncode != 0  # the agent meets the same conflict
    (worktree / "README.md").write_text("FIRST AND SECOND\nline2\nline3\n")
    git(worktree, "commit", "-qam", "merge main")
    world.store.set_status(second.key, phase="Working")
    world.resolve("second")
    forge.reconcile(sphere)
    world.assert_landed("second")
    assert world.show("README.md") == "FIRST AND SECOND\nline2\nline3"


def test_max_attempts_exhausted_fails_the_writ_keeps_its_work_and_escalates(sphere: Sphere,
                                                                            make_world):
    world = make_world([gate("never", "echo nope; exit 7")], maxAttempts=2)
    world.writ("doomed", {"d.txt": "1\n"})
    forge.reconcile(sphere)
    assert world.get("doomed").phase == PENDING
    world.store.set_status(("Writ", W, "doomed"), phase="Working")
    world.resolve("doomed", {"d.txt": "2\n"})
    forge.reconcile(sphere)
    writ = world.get("doomed")
    assert (writ.phase, writ.reason) == (FAILED, "GateFailed")
    assert "exit code 7" in writ.message and "exit code 7" in writ.status["feedback"]
    assert [a["outcome"] for a in writ.status["attempts"]] == ["gate-failed", "gate-failed"]
    escalated = [c for c in writ.status["conditions"] if c["type"] == "Escalated"]
    assert escalated and escalated[0]["status"] == "True"
    assert world.mr("doomed").state == "Failed"
    assert git(world.repo, "show", "sol/doomed:d.txt") == "2"
    assert (world.home.worktree(W, "vega") / "d.txt").read_text() == "2\n"
    assert world.events("failed", "doomed") and world.events("escalated", "doomed")
    assert world.trailers("doomed") == []


def test_a_hanging_gate_is_killed_at_its_timeout_with_its_children(sphere: Sphere, make_world,
                                                                   tmp_path: Path):
    pidfile = tmp_path / "child.pid"
    world = make_world([gate("hang", f"sleep 300 & echo $! > {pidfile}; wait", "2s")])
    world.writ("slow", {"s.txt": "s\n"})
    started = time.monotonic()
    forge.reconcile(sphere)
    assert time.monotonic() - started < 30
    writ = world.get("slow")
    assert writ.phase == PENDING and "timed out after 2s" in writ.status["feedback"]
    poll(lambda: gone(int(pidfile.read_text())), timeout=10, what="the gate's child to die")
    world.assert_forge_clean()


def test_a_missing_branch_fails_the_writ_instead_of_blocking_the_queue(sphere: Sphere,
                                                                       make_world):
    world = make_world()
    world.writ("lost", {"l.txt": "l\n"})
    world.writ("fine", {"f.txt": "f\n"})
    worktrees.remove_worktree(world.repo, world.home.worktree(W, "vega"), force=True)
    worktrees.delete_branch(world.repo, "sol/lost", force=True)
    forge.reconcile(sphere)
    assert (world.get("lost").phase, world.get("lost").reason) == (FAILED, "BranchMissing")
    world.assert_landed("fine")


def test_analysis_writs_never_enter_the_forge(sphere: Sphere, make_world):
    world = make_world()
    world.writ("study", {"notes.txt": "n\n"}, kind="analysis")
    before = world.tip()
    actions = forge.reconcile(sphere)
    assert [a.kind for a in actions] == ["reject"]
    assert world.mr("study").state == "Failed" and world.tip() == before
    assert world.get("study").phase == RESOLVED  # untouched: not the forge's business


def test_a_held_forge_lock_means_another_forge_is_at_work(sphere: Sphere, make_world):
    world = make_world()
    world.writ("wait", {"w.txt": "w\n"})
    with flock(sphere.home.run / f"forge-{W}.lock") as held:
        assert held
        assert forge.reconcile(sphere) == []
    assert world.get("wait").phase == RESOLVED
    forge.reconcile(sphere)
    world.assert_landed("wait")


# ---- the target moves, pushes ----------------------------------------------------


def test_a_target_that_moves_during_the_gates_is_merged_again_on_its_new_tip(
        sphere: Sphere, make_world, tmp_path: Path):
    mark, count = tmp_path / "moved", tmp_path / "runs"
    script = tmp_path / "move-target.sh"
    script.write_text(f"""set -e
echo run >> {count}
[ -f {mark} ] && exit 0
touch {mark}
repo={shlex.quote(str(sphere.home.repo(W)))}
export GIT_INDEX_FILE={tmp_path}/other-index
git -C "$repo" read-tree refs/heads/main
blob=$(echo other | git -C "$repo" hash-object -w --stdin)
git -C "$repo" update-index --add --cacheinfo "100644,$blob,other.txt"
tree=$(git -C "$repo" write-tree)
new=$(git -C "$repo" commit-tree -p refs/heads/main -m "someone else" "$tree")
git -C "$repo" update-ref refs/heads/main "$new"
""")
    world = make_world([gate("mover", f"bash {shlex.quote(str(script))}")])
    world.writ("racy", {"r.txt": "r\n"})
    forge.reconcile(sphere)
    commit = world.assert_landed("racy")
    parent = git(world.repo, "rev-parse", f"{commit}^")
    assert git(world.repo, "log", "-1", "--format=%s", parent) == "someone else"
    assert world.show("other.txt") == "other" and world.show("r.txt") == "r"
    assert count.read_text().count("run") == 2  # the gates ran again on the new tip
    assert world.events("target-moved", "racy")


def bare_source(tmp_path: Path) -> Path:
    work = make_repo(tmp_path / "work", {"README.md": README})
    bare = tmp_path / "source.git"
    git(tmp_path, "clone", "-q", "--bare", str(work), str(bare))
    return bare


def test_push_moves_the_source_branch(sphere: Sphere, make_world, tmp_path: Path):
    bare = bare_source(tmp_path)
    world = make_world(source_path=bare, push=True)
    world.writ("ship", {"s.txt": "s\n"})
    forge.reconcile(sphere)
    commit = world.assert_landed("ship")
    assert git(bare, "rev-parse", "refs/heads/main") == commit
    assert world.events("pushed")


def test_a_failed_push_is_an_event_and_retried_on_the_next_pass(sphere: Sphere, make_world,
                                                                tmp_path: Path):
    bare = bare_source(tmp_path)
    hook = bare / "hooks" / "pre-receive"
    hook.write_text("#!/bin/sh\necho 'not today' >&2\nexit 1\n")
    hook.chmod(0o755)
    world = make_world(source_path=bare, push=True)
    before = git(bare, "rev-parse", "refs/heads/main")
    world.writ("ship", {"s.txt": "s\n"})
    forge.reconcile(sphere)
    commit = world.assert_landed("ship")  # the work is on the target: Merged all the same
    assert git(bare, "rev-parse", "refs/heads/main") == before
    assert world.events("push-failed")
    hook.unlink()
    actions = forge.reconcile(sphere)
    assert [a.kind for a in actions] == ["push"]
    assert git(bare, "rev-parse", "refs/heads/main") == commit


def test_a_push_to_a_checked_out_branch_says_why_in_a_world_condition(
        sphere: Sphere, make_world, tmp_path: Path):
    work = make_repo(tmp_path / "work", {"README.md": README})  # main is checked out there
    world = make_world(source_path=work, push=True)
    world.writ("ship", {"s.txt": "s\n"})
    forge.reconcile(sphere)
    world.assert_landed("ship")
    forge.reconcile(sphere)  # retried: the same reason is not a new event
    [failed] = world.events("push-failed")
    assert "refusing to update checked out branch" in failed.message
    record = sphere.store.get("World", "", W)
    [pushed] = [c for c in record.status["conditions"] if c["type"] == "Pushed"]
    assert pushed["status"] == "False" and "checked out branch" in pushed["message"]


# ---- crash safety ----------------------------------------------------------------


@pytest.mark.parametrize("point", forge.CRASH_POINTS)
def test_a_crash_at_any_point_recovers_without_merging_twice(sphere: Sphere, make_world,
                                                              tmp_path: Path, point: str):
    mark, pidfile = tmp_path / "gate-ran", tmp_path / "gate.pid"
    hang_once = f"[ -f {mark} ] && exit 0; touch {mark}; sleep 300 & echo $! > {pidfile}; wait"
    world = make_world([gate("slow-once", hang_once if point == "mid-gate" else "true"),
                        gate("has-file", "test -f feature.txt")])
    before = world.tip()
    world.writ("crashy", {"feature.txt": "x\n"})
    crashed = run_forge_subprocess(point)
    assert crashed.returncode == 137, crashed.stderr
    writ = world.get("crashy")
    if point == "after-record":
        assert writ.phase == MERGED
        assert world.home.worktree(W, "vega").exists()  # cleanup not yet done
    else:
        assert writ.phase == MERGING and world.mr("crashy").state == "Merging"
    assert len(world.trailers("crashy")) == (1 if point in ("after-land", "after-record")
                                             else 0)
    if point in ("before-merge", "after-merge", "mid-gate"):
        assert world.tip() == before
    orphan = None
    if point == "mid-gate":
        poll(lambda: pidfile.exists() and pidfile.read_text().strip(), timeout=10,
             what="the orphaned gate to start")
        orphan = int(pidfile.read_text())
        assert not gone(orphan)

    world.advance("meanwhile")  # the recorded commit must be the landing, not the tip
    again = run_forge_subprocess(None)
    assert again.returncode == 0, again.stderr
    world.assert_landed("crashy")
    world.assert_forge_clean(at_tip=point != "after-record")  # there it sits on the landing
    if orphan is not None:
        poll(lambda: gone(orphan), timeout=10, what="the orphaned gate to be killed")
    outcomes = [a["outcome"] for a in world.get("crashy").status["attempts"]]
    assert outcomes == ["merged"]
    assert len(world.events("merged", "crashy")) == 1


def run_steps_then_die(steps: int) -> subprocess.CompletedProcess[str]:
    """A forge that takes `steps` steps and is then killed, as kill -9 would."""
    env = {k: v for k, v in os.environ.items() if k != forge.CRASH_ENV}
    code = ("import os\n"
            "from reconciler.controllers import forge\n"
            "from reconciler.drivers.sphere import Sphere\n"
            "sphere = Sphere.from_env()\n"
            f"for _ in range({steps}):\n"
            f"    [step] = forge.RECONCILER.planned(sphere, {W!r}).actions\n"
            "    assert forge.act(sphere, step), step\n"
            "os._exit(137)\n")
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


def test_a_forge_killed_between_two_gates_goes_on_at_the_second(sphere: Sphere, make_world,
                                                                 tmp_path: Path):
    runs = tmp_path / "runs"
    world = make_world([gate("first", f"echo first >> {runs}"),
                        gate("second", f"echo second >> {runs}")])
    world.writ("steps", {"s.txt": "s\n"})
    assert run_steps_then_die(2).returncode == 137  # merged, and the first gate passed
    mr = world.mr("steps")
    step, progress = sphere.store.mr_progress(mr.id)
    assert (mr.state, step) == ("Merging", "gate-passed")
    assert [g["name"] for g in progress["gates"]] == ["first"]
    assert [a.kind for a in forge.reconcile(sphere)] == ["gate", "land", "record-merged"]
    assert runs.read_text().split() == ["first", "second"]  # the first gate never ran twice
    assert world.assert_landed("steps") == progress["commit"]  # the commit the gates ran on


def test_a_gate_cut_short_runs_again_with_those_before_it_on_a_clean_checkout(
        sphere: Sphere, make_world, tmp_path: Path):
    runs, mark = tmp_path / "runs", tmp_path / "killed"
    build = f"test ! -e built && touch built && echo build >> {runs}"
    check = (f"test -e built && echo check >> {runs} && "
             f"{{ test -e {mark} || {{ touch {mark}; kill -9 $PPID; sleep 5; }}; }}")
    world = make_world([gate("build", build), gate("check", check)])
    world.writ("cut", {"c.txt": "c\n"})
    killed = run_forge_subprocess(None)
    assert killed.returncode == -9, killed.stderr  # the second gate killed its forge
    assert sphere.store.mr_progress(world.mr("cut").id)[0] == "gate-running"
    [step] = forge.RECONCILER.planned(sphere, W).actions
    assert (step.kind, step.data["gate"], step.data["restart"]) == ("gate", 0, True)
    forge.reconcile(sphere)
    world.assert_landed("cut")
    assert runs.read_text().split() == ["build", "check", "build", "check"]
    world.assert_forge_clean()


def test_land_refuses_a_commit_the_gates_have_not_passed(sphere: Sphere, make_world):
    world = make_world([gate("ok", "true")])
    before = world.tip()
    world.writ("early", {"e.txt": "e\n"})
    [merge] = forge.RECONCILER.planned(sphere, W).actions
    assert merge.kind == "merge" and forge.act(sphere, merge)
    mr = world.mr("early")
    step, progress = sphere.store.mr_progress(mr.id)
    assert step == "merged"
    land = Action(UPDATE, "land", merge.target, "land before the gates",
                        {"world": W, "writ": "early", "mr": mr.id, "step": step,
                         "commit": progress["commit"], "onto": progress["onto"]})
    assert not forge.act(sphere, land)
    assert world.tip() == before and world.trailers("early") == []
    [gate_step] = forge.RECONCILER.planned(sphere, W).actions
    assert gate_step.kind == "gate"
    assert not forge.act(sphere, merge)  # a stale step: the MR moved on
    forge.reconcile(sphere)
    world.assert_landed("early")


def test_the_store_keeps_the_step_of_a_merge_compare_and_set(sphere: Sphere):
    store = sphere.store
    mr_id = store.add_mr(W, "x", branch="sol/x", base="", agent="vega", attempt=1, priority=2)
    assert store.mr_progress(mr_id) == ("", {})
    assert store.update_mr(mr_id, expect_step="", step="merged", progress={"commit": "c0ffee"})
    assert not store.update_mr(mr_id, expect_step="", step="landed")  # someone was first
    assert store.mr_progress(mr_id) == ("merged", {"commit": "c0ffee"})
    [row] = store.mrs(W)
    assert (row.id, row.state, row.writ) == (mr_id, "Queued", "x")


def test_sol_diff_shows_the_merge_of_a_resolved_writ(sphere: Sphere, make_world):
    world = make_world([gate("ok", "true")])
    world.writ("add-x", {"x.txt": "x\n"})
    plan_ = forge.RECONCILER.planned(sphere, W)
    assert [(a.op, a.kind, a.target, a.description, a.reconciler) for a in plan_.actions] == [
        ("~", "merge", "writ/shop/add-x", "MR #1: merge sol/add-x onto main, run the gates, "
         "land", "forge")]
    assert world.get("add-x").phase == RESOLVED  # planning touched nothing


# ---- the pure planner ------------------------------------------------------------


def mr(id: int, writ: str, state: str = "Queued", priority: int = 2, created: float = 0.0,
       **kw: object) -> QueuedMR:
    return QueuedMR(id, writ, state, priority, created or float(id), **kw)


def view(*mrs: QueuedMR, **kw: object) -> ForgeView:
    return ForgeView(W, "main", "abc123", tuple(mrs), **kw)


def merging(step: Step, **kw: object) -> QueuedMR:
    """The head MR part way through its merge, made on abc123 as commit c0ffee."""
    return mr(1, "x", "Merging", writ_phase=MERGING, step=step, commit="c0ffee",
              onto="abc123", **kw)


def next_of(mr: QueuedMR, **kw: object) -> tuple[str, dict]:
    """The one step planned for a queue of one, with its data."""
    result = plan(view(mr, **kw))
    [action] = result.actions
    assert result.requeue_after == 0  # a step is ready: the reconciler runs the next at once
    return action.kind, dict(action.data)


def test_plan_takes_an_interrupted_merge_first_then_priority_then_resolve_time():
    mrs = (mr(1, "low", priority=3), mr(2, "b", created=20.0), mr(3, "a", created=10.0),
           mr(4, "resume", "Merging", writ_phase=MERGING))
    queue_, closes = triage(mrs, W)
    assert [m.writ for m in queue_] == ["resume", "a", "b", "low"] and closes == []
    result = plan(view(*mrs))
    assert [(a.kind, a.data["writ"]) for a in result.actions] == [("merge", "resume")]
    assert "interrupted" in result.actions[0].description
    assert list(result.waiting.values()) == ["queued behind MR #4 (resume)"] * 3


def test_plan_merges_a_resolved_writ_with_the_line_sol_diff_has_always_shown():
    [action] = plan(view(mr(1, "add-x"))).actions
    assert (action.kind, action.target) == ("merge", "writ/shop/add-x")
    assert action.description == "MR #1: merge sol/add-x onto main, run the gates, land"


def test_plan_records_a_landed_writ_instead_of_merging_it_again():
    actions = plan(view(mr(1, "done", "Merging", writ_phase=MERGING, landed="f00d"))).actions
    assert [(a.kind, a.data.get("commit"), a.data.get("how")) for a in actions] == [
        ("record-merged", "f00d", "found")]


def test_plan_drops_what_must_not_merge():
    mrs = (mr(1, "study", writ_kind="analysis"), mr(2, "gone", writ_phase=None),
           mr(3, "cancelled", writ_phase="Cancelled"), mr(4, "twice"), mr(5, "twice"))
    actions = plan(view(*mrs)).actions
    kinds = {(a.kind, a.data["mr"]) for a in actions}
    assert kinds == {("reject", 1), ("drop", 2), ("drop", 3), ("drop", 4), ("merge", 5)}
    landed = mr(3, "cancelled", writ_phase="Cancelled", landed="f00d")
    assert [a.kind for a in plan(view(landed)).actions] == ["record-merged"]


def test_plan_cleans_up_leftovers_and_retries_a_push_once_no_step_is_ready():
    busy = plan(view(mr(1, "next"), leftovers=(("old", "vega"),), unpushed=True))
    assert [a.kind for a in busy.actions] == ["merge"] and busy.requeue_after == 0
    idle = plan(view(leftovers=(("old", "vega"),), unpushed=True))
    assert [a.kind for a in idle.actions] == ["cleanup", "push"]
    assert idle.requeue_after is None
    assert idle.actions[0].data == {"world": W, "writ": "old", "agent": "vega"}


def test_plan_walks_a_merge_through_its_steps():
    gates = ("unit", "lint")
    assert next_of(mr(1, "x"), gates=gates)[0] == "merge"
    kind, data = next_of(merging(Step.MERGED), gates=gates)
    assert (kind, data["gate"], data["name"], data["restart"]) == ("gate", 0, "unit", False)
    kind, data = next_of(merging(Step.GATE_PASSED, passed=("unit",)), gates=gates)
    assert (kind, data["gate"], data["name"]) == ("gate", 1, "lint")
    kind, data = next_of(merging(Step.GATE_PASSED, passed=gates), gates=gates)
    assert (kind, data["commit"], data["onto"]) == ("land", "c0ffee", "abc123")
    assert next_of(merging(Step.MERGED))[0] == "land"  # a world without gates
    assert next_of(merging(Step.LANDED), push=True)[0] == "push"
    for step in (Step.LANDED, Step.PUSHED):
        kind, data = next_of(merging(step))
        assert (kind, data["commit"], data["how"]) == ("record-merged", "c0ffee", "landed")
    kind, data = next_of(merging(Step.EMPTY))
    assert (kind, data["how"]) == ("record-merged", "empty")
    assert all(next_of(merging(step))[1]["step"] == step for step in Step
               if step not in (Step.MOVED,))


def test_plan_lands_only_what_every_gate_of_the_world_passed_on():
    kind, data = next_of(merging(Step.GATE_PASSED, passed=("old",)), gates=("unit",))
    assert (kind, data["gate"], data["restart"]) == ("gate", 0, False)
    kind, data = next_of(merging(Step.GATE_PASSED, passed=("unit",)), gates=("unit", "new"))
    assert (kind, data["name"]) == ("gate", "new")


def test_plan_runs_the_gates_again_from_the_first_after_one_was_cut_short():
    kind, data = next_of(merging(Step.GATE_RUNNING, passed=("unit",)), gates=("unit", "lint"))
    assert (kind, data["gate"], data["name"], data["restart"]) == ("gate", 0, "unit", True)


def test_plan_sends_back_until_the_attempts_are_used_up():
    for step in (Step.CONFLICT, Step.GATE_FAILED):
        assert next_of(merging(step, attempt=1, verdict="boom"), max_attempts=2)[0] == \
            "send-back"
        assert next_of(merging(step, attempt=2, verdict="boom"), max_attempts=2)[0] == "fail"
    assert next_of(merging(Step.BRANCH_MISSING, attempt=1))[0] == "fail"


def test_plan_waits_before_merging_again_on_a_target_that_kept_moving():
    held = plan(view(merging(Step.MOVED, until=130.0), now=100.0))
    assert held.actions == () and held.requeue_after == 30.0
    assert "kept moving" in held.waiting["writ/shop/x"]
    kind, _ = next_of(merging(Step.MOVED, until=130.0), now=130.0)
    assert kind == "merge"
    assert "again" in plan(view(merging(Step.MOVED))).actions[0].description


def test_plan_records_a_landing_found_on_the_target_at_any_step_before_land():
    for step in (Step.NEW, Step.MERGED, Step.GATE_RUNNING, Step.GATE_PASSED):
        kind, data = next_of(merging(step, landed="f00d"))
        assert (kind, data["commit"], data["how"]) == ("record-merged", "f00d", "found")
    assert next_of(merging(Step.LANDED, landed="c0ffee"), push=True)[0] == "push"


@given(st.lists(st.tuples(st.sampled_from(["a", "b", "c", "d"]),
                          st.sampled_from(["Queued", "Merging"]), st.integers(1, 3),
                          st.sampled_from([RESOLVED, MERGING, "Cancelled", None]),
                          st.booleans()), max_size=8))
def test_plan_closes_or_queues_every_mr_and_steps_only_the_head(rows):
    mrs = [mr(i, writ, state, priority, writ_phase=phase, landed="c0ffee" if landed else None)
           for i, (writ, state, priority, phase, landed) in enumerate(rows, 1)]
    queued, closes = triage(tuple(mrs), W)
    assert sorted([m.id for m in queued] + [a.data["mr"] for a in closes]) == \
        [m.id for m in mrs]
    assert len({m.writ for m in queued}) == len(queued)  # each writ merged at most once
    assert queued == sorted(queued, key=lambda m: (m.state != "Merging", m.priority, m.id))
    result = plan(view(*mrs))
    steps = [a for a in result.actions if a.kind not in ("drop", "reject")]
    assert [a.data["mr"] for a in steps] == [m.id for m in queued[:1]]
    assert result.requeue_after == (0 if queued else None)


def test_plan_does_nothing_without_a_target_or_a_queue():
    assert plan(ForgeView(W, "main", None, (mr(1, "x"),))) == plan(view())
    assert plan(view()).actions == () and plan(view()).requeue_after is None


def test_unknown_world_is_a_clear_error(sphere: Sphere):
    from reconciler.core.errors import SolError

    with pytest.raises(SolError, match="world nowhere is not applied"):
        forge.reconcile(sphere, "nowhere")


def test_an_index_lock_left_by_a_killed_forge_is_cleared(sphere: Sphere, make_world):
    w = make_world(gates=[gate("ok", "true")])
    w.writ("a", {"a.txt": "a\n"})
    forge.reconcile(sphere)
    w.assert_landed("a")
    wt = sphere.home.forge_worktree(W)
    lock = Path(git(wt, "rev-parse", "--absolute-git-dir")) / "index.lock"
    lock.write_text("")  # what `kill -9` of a forge inside `git merge` leaves
    w.writ("b", {"b.txt": "b\n"})
    forge.reconcile(sphere)
    w.assert_landed("b")
    assert not lock.exists()
    assert w.events("git-locks-removed")
