"""Forge batches (issue 14) against real git, real gates and real SQLite: a chain of
squash commits gated once, bisected on a failure, landed by one compare-and-set.

The gate is a shell command that fails on a tree holding a `broken*.txt` file and
counts its runs in a file outside the tree; every landed commit is checked out again
and the gate re-run on it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, git, poll
from helpers import gone
from hypothesis import given
from hypothesis import strategies as st
from test_forge import (
    W,
    World,
    bare_source,
    gate,
    make_world,
    run_forge_subprocess,
    source,
    sphere,
)

from reconciler.cli.describe import render_describe, status_report
from reconciler.controllers import forge, forge_act
from reconciler.controllers.forge_act import batch_size
from reconciler.controllers.forge_plan import (
    BatchView,
    ForgeView,
    QueuedMR,
    Step,
    batch_step,
    batchable,
    bisected,
    plan,
    probe_points,
)
from reconciler.core.model import MERGED, PENDING, Manifest, WorldSpec
from reconciler.drivers.sphere import Sphere

__all__ = ["make_world", "source", "sphere"]  # fixtures, used by name

AGENTS = ["vega", "rigel", "deneb", "altair", "sirius", "castor", "pollux", "spica", "mira"]
CHECK = "! ls broken*.txt 2>/dev/null"


def batch_world(make_world, tmp_path: Path, **batch: object) -> tuple[World, Path]:
    """A world whose gate counts its runs in `count` and fails on a broken*.txt file."""
    count = tmp_path / "gate-runs"
    run = f"echo run >> {count}; if ls broken*.txt 2>/dev/null; then echo BROKEN TREE; " \
          "exit 3; fi"
    world = make_world([gate("check", run)], **({"batch": batch} if batch else {}))
    world.agents = iter(AGENTS)
    return world, count


def runs(count: Path) -> int:
    return len(count.read_text().splitlines()) if count.exists() else 0


def landed_commits(world: World, since: str) -> list[str]:
    return git(world.repo, "rev-list", "--reverse", f"{since}..refs/heads/main").split()


def assert_every_landed_commit_passes(world: World, since: str, tmp_path: Path) -> None:
    """Each commit the target gained, checked out on its own: the gate passes on it."""
    wt = tmp_path / "recheck"
    git(world.repo, "worktree", "add", "-q", "--detach", str(wt), since)
    try:
        for commit in landed_commits(world, since):
            git(wt, "checkout", "-q", "--detach", commit)
            ran = subprocess.run(["bash", "-c", CHECK], cwd=wt, capture_output=True)
            assert ran.returncode == 0, (commit, ran.stdout)
    finally:
        git(world.repo, "worktree", "remove", "--force", str(wt))


# ---- batches against real git ------------------------------------------------------


def test_a_batch_lands_every_writ_as_its_own_commit_after_one_gate_run(
        sphere: Sphere, make_world, tmp_path: Path):
    world, count = batch_world(make_world, tmp_path)
    before = world.tip()
    names = [f"w{i}" for i in range(5)]
    for i, name in enumerate(names):
        world.writ(name, {f"f{i}.txt": f"{i}\n"})
    actions = forge.reconcile(sphere)
    assert [a.kind for a in actions] == ["batch", "batch-build", "batch-probe", "batch-land",
                                         *["cleanup"] * 5]  # after: nothing else to do
    assert runs(count) == 1
    commits = landed_commits(world, before)
    assert [world.assert_landed(n) for n in names] == commits  # queue order, one each
    for name, commit in zip(names, commits, strict=True):
        body = git(world.repo, "log", "-1", "--format=%B", commit)
        assert body.rstrip().endswith(f"Sol-Writ: {W}/{name}")
    world.assert_forge_clean()
    assert world.store.active_batch(W) is None
    assert forge.reconcile(sphere) == []


def test_one_culprit_is_sent_back_with_its_output_and_the_rest_lands(
        sphere: Sphere, make_world, tmp_path: Path):
    world, count = batch_world(make_world, tmp_path)
    before = world.tip()
    names = [f"w{i}" for i in range(6)]
    for i, name in enumerate(names):
        world.writ(name, {f"broken{i}.txt" if name == "w3" else f"f{i}.txt": f"{i}\n"})
    forge.reconcile(sphere)
    culprit = world.get("w3")
    assert (culprit.phase, culprit.reason, culprit.status["attempt"]) == (PENDING, "SentBack", 2)
    assert "BROKEN TREE" in culprit.status["feedback"]
    assert "broken3.txt" in culprit.status["feedback"]
    entry = culprit.status["attempts"][0]
    assert entry["outcome"] == "gate-failed" and "BROKEN TREE" in entry["tail"]
    assert "BROKEN TREE" in Path(entry["log"]).read_text()
    assert world.trailers("w3") == []
    others = [n for n in names if n != "w3"]
    assert [world.assert_landed(n) for n in others] == landed_commits(world, before)
    sent_back = [e.name for e in world.events("sent-back")]
    assert sent_back == ["w3"]
    # 6 whole (fails), 3 passes (lands 1..3), 5 fails, 4 fails: w3 (binary search), then
    # w4, w5 again in a batch of their own
    assert runs(count) == 5
    assert_every_landed_commit_passes(world, before, tmp_path)
    spec = WorldSpec.from_spec(world.store.get("World", "", W).spec)
    assert batch_size(world.store, W, spec) == 8  # 6 after w3, doubled again by w4, w5
    world.assert_forge_clean()


def test_concurrent_probes_find_the_culprit_in_fewer_rounds(sphere: Sphere, make_world,
                                                             tmp_path: Path):
    world, count = batch_world(make_world, tmp_path, concurrency=4)
    before = world.tip()
    for i in range(5):
        world.writ(f"w{i}", {f"broken{i}.txt" if i == 3 else f"f{i}.txt": f"{i}\n"})
    actions = forge.reconcile(sphere)
    probes = [a.data["points"] for a in actions if a.kind == "batch-probe"]
    assert probes == [[5], [1, 2, 3, 4]]  # the whole chain, then every cut at once
    assert world.get("w3").phase == PENDING
    assert all(world.get(f"w{i}").phase == MERGED for i in (0, 1, 2, 4))
    assert_every_landed_commit_passes(world, before, tmp_path)
    assert runs(count) == 1 + 4 + 1  # w4 alone after it: a single merge


def test_a_conflict_in_a_batch_sends_back_only_that_writ(sphere: Sphere, make_world,
                                                        tmp_path: Path):
    world, count = batch_world(make_world, tmp_path)
    world.writ("stale", {"README.md": "STALE\nline2\nline3\n"})  # branched before the move
    other = tmp_path / "other"
    git(world.repo, "worktree", "add", "-q", "--detach", str(other), "refs/heads/main")
    (other / "README.md").write_text("MOVED\nline2\nline3\n")
    git(other, "commit", "-qam", "someone else's change")
    git(world.repo, "update-ref", "refs/heads/main", git(other, "rev-parse", "HEAD"))
    git(world.repo, "worktree", "remove", "--force", str(other))
    before = world.tip()
    world.writ("a", {"a.txt": "a\n"})
    world.writ("b", {"README.md": "MOVED\nline2\nB\n"})
    world.writ("c", {"README.md": "MOVED\nline2\nC\n"})  # conflicts with b only
    forge.reconcile(sphere)
    stale = world.get("stale")
    assert (stale.phase, stale.reason) == (PENDING, "SentBack")
    assert stale.status["attempts"][0]["outcome"] == "conflict"
    assert "README.md" in stale.status["feedback"]
    world.assert_landed("a")
    world.assert_landed("b")
    c = world.get("c")  # requeued behind b, then merged onto b's landing: a real conflict
    assert (c.phase, c.reason, c.status["attempt"]) == (PENDING, "SentBack", 2)
    assert [e.name for e in world.events("requeued")] == ["c"]
    assert sorted(e.name for e in world.events("sent-back")) == ["c", "stale"]
    assert runs(count) == 1
    assert_every_landed_commit_passes(world, before, tmp_path)


@pytest.mark.parametrize("point", forge.CRASH_POINTS)
def test_a_batch_killed_at_any_point_resumes_without_landing_twice(
        sphere: Sphere, make_world, tmp_path: Path, point: str):
    world, _ = batch_world(make_world, tmp_path)
    before = world.tip()
    names = [f"w{i}" for i in range(5)]
    for i, name in enumerate(names):
        world.writ(name, {f"broken{i}.txt" if name == "w2" else f"f{i}.txt": f"{i}\n"})
    died = run_forge_subprocess(point)
    assert died.returncode == 137, died.stderr
    forge.reconcile(sphere)
    others = [n for n in names if n != "w2"]
    assert [world.assert_landed(n) for n in others] == landed_commits(world, before)
    assert world.get("w2").phase == PENDING and world.trailers("w2") == []
    assert [e.name for e in world.events("sent-back")] == ["w2"]
    assert world.store.active_batch(W) is None
    assert_every_landed_commit_passes(world, before, tmp_path)
    world.assert_forge_clean()


def test_the_batch_size_shrinks_after_a_culprit_doubles_after_a_pass_and_survives_a_restart(
        sphere: Sphere, make_world, tmp_path: Path):
    world, _ = batch_world(make_world, tmp_path)
    spec = WorldSpec.from_spec(world.store.get("World", "", W).spec)
    for i in range(3):
        world.writ(f"w{i}", {f"broken{i}.txt" if i == 2 else f"f{i}.txt": f"{i}\n"})
    forge.reconcile(sphere)
    assert batch_size(world.store, W, spec) == 6
    restarted = Sphere(sphere.home)
    try:
        assert batch_size(restarted.store, W, spec) == 6
        for i in range(3, 9):
            world.writ(f"w{i}", {f"f{i}.txt": f"{i}\n"})
        forge.reconcile(restarted)
        sizes = [len(e.data["mrs"]) for e in world.events("batch-formed")]
        assert sizes == [3, 6]  # 8 at first; 6 after w2 (a quarter less)
        assert batch_size(restarted.store, W, spec) == 8
    finally:
        restarted.close()


def test_a_target_moved_under_a_batch_queues_its_writs_again_on_the_new_tip(
        sphere: Sphere, make_world, tmp_path: Path):
    world, count = batch_world(make_world, tmp_path)
    for i in range(3):
        world.writ(f"w{i}", {f"f{i}.txt": f"{i}\n"})
    while True:
        [step] = [a for a in forge.RECONCILER.planned(sphere, W).actions
                  if a.kind.startswith("batch")]
        if step.kind == "batch-land":
            break
        assert forge.act(sphere, step)
    moved = world.advance("someone else's commit")
    assert forge.act(sphere, step)
    assert [e.name for e in world.events("requeued")] == ["w0", "w1", "w2"]
    assert world.tip() == moved
    forge.reconcile(sphere)
    for name in ("w0", "w1", "w2"):
        world.assert_landed(name)
    assert git(world.repo, "rev-list", "--count", f"{moved}..refs/heads/main") == "3"
    assert runs(count) == 2


def test_gates_changed_under_a_batch_send_its_writs_back_to_the_queue(
        sphere: Sphere, make_world, tmp_path: Path):
    world, count = batch_world(make_world, tmp_path)
    for i in range(3):
        world.writ(f"w{i}", {f"f{i}.txt": f"{i}\n"})
    for kind in ("batch", "batch-build"):
        [step] = forge.RECONCILER.planned(sphere, W).actions
        assert step.kind == kind and forge.act(sphere, step)
    marker = tmp_path / "new-gate-ran"
    spec = {**world.spec, "forge": {"gates": [gate("new", f"touch {marker}")]}}
    world.store.record_spec(Manifest("World", W, "", spec))
    assert [a.kind for a in forge.RECONCILER.planned(sphere, W).actions] == ["batch-requeue"]
    forge.reconcile(sphere)
    assert [e.name for e in world.events("requeued")] == ["w0", "w1", "w2"]
    for name in ("w0", "w1", "w2"):
        world.assert_landed(name)
    assert runs(count) == 0 and marker.exists()


def test_kill_9_during_concurrent_probes_ends_every_orphaned_gate_and_resumes(
        sphere: Sphere, make_world, tmp_path: Path):
    pids, slow = tmp_path / "gate-pids", tmp_path / "slow"
    run = (f"echo $$ >> {pids}; if ls broken*.txt 2>/dev/null; then exit 3; fi; "
           f"if [ -e {slow} ]; then sleep 60; fi")
    world = make_world([gate("check", run, timeout="2m")], batch={"concurrency": 4})
    world.agents = iter(AGENTS)
    before = world.tip()
    for i in range(5):
        world.writ(f"w{i}", {f"broken{i}.txt" if i == 3 else f"f{i}.txt": f"{i}\n"})
    slow.touch()
    env = {k: v for k, v in os.environ.items() if k != forge.CRASH_ENV}
    code = ("from reconciler.controllers.forge import reconcile\n"
            "from reconciler.drivers.sphere import Sphere\n"
            "reconcile(Sphere.from_env())\n")
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    records = [forge_act.probe_record(sphere, W, slot) for slot in range(3)]
    try:  # round 1 gates 1..5 (fails at once), round 2 gates 1..1 to 1..4 at once
        poll(lambda: pids.exists() and len(pids.read_text().split()) == 5
             and all(r.exists() for r in records), timeout=60, what="three gates asleep")
    finally:
        proc.kill()  # kill -9, the gates of round 2 left running
        proc.wait()
    orphans = [int(pid) for pid in pids.read_text().split()[1:]]
    assert sum(not gone(pid) for pid in orphans) == 3
    slow.unlink()
    forge.reconcile(sphere)
    for pid in orphans:
        poll(lambda pid=pid: gone(pid), timeout=10, what=f"orphaned gate {pid} to end")
    assert world.get("w3").phase == PENDING
    others = ["w0", "w1", "w2", "w4"]
    assert [world.assert_landed(n) for n in others] == landed_commits(world, before)
    assert world.store.active_batch(W) is None


def test_status_and_describe_show_the_batch_and_its_bisection_step(
        sphere: Sphere, make_world, tmp_path: Path):
    world, _ = batch_world(make_world, tmp_path)
    for i in range(4):
        world.writ(f"w{i}", {f"broken{i}.txt" if i == 1 else f"f{i}.txt": f"{i}\n"})
    seen = []
    while True:
        [step] = [a for a in forge.RECONCILER.planned(sphere, W).actions
                  if a.kind.startswith("batch")] or [None]
        if step is None or step.kind == "batch-culprit":
            break
        assert forge.act(sphere, step)
        seen.append(step.kind)
    assert seen == ["batch", "batch-build", "batch-probe", "batch-probe", "batch-probe",
                    "batch-land"]
    text, _ = status_report(sphere, W)
    assert ("forge batch #1 (4 writs: w0, w1, w2, w3): bisection step 3 done; 1..1 pass; "
            "1..2 fails, 1 landed") in text
    record = world.get("w3")
    obj = {**record.to_object(), "events": []}
    assert "Batch:       #1, writ 4 of 4;" in render_describe(sphere, record, obj)
    assert record.message == ("in batch #1 (4 writs): bisection step 3, 1..1 passes, "
                              "1..2 fails")


def test_each_landed_prefix_is_pushed_to_the_source(sphere: Sphere, make_world,
                                                   tmp_path: Path):
    bare = bare_source(tmp_path)
    world = make_world([gate("check", CHECK)], source_path=bare, push=True)
    world.agents = iter(AGENTS)
    for i in range(4):
        world.writ(f"w{i}", {f"broken{i}.txt" if i == 2 else f"f{i}.txt": f"{i}\n"})
    [first] = [a for a in forge.reconcile(sphere) if a.kind == "batch-land"][:1]
    pushed = [e.data["commit"] for e in world.events("pushed")]
    assert pushed[0] == first.data["commit"]  # 1..2, pushed before w3 merges again
    assert pushed[-1] == world.tip() == git(bare, "rev-parse", "refs/heads/main")
    assert world.get("w2").phase == PENDING


def test_max_one_keeps_one_merge_at_a_time(sphere: Sphere, make_world, tmp_path: Path):
    world, count = batch_world(make_world, tmp_path, max=1)
    for i in range(3):
        world.writ(f"w{i}", {f"f{i}.txt": f"{i}\n"})
    kinds = [a.kind for a in forge.reconcile(sphere)]
    assert kinds == ["merge", "gate", "land", "record-merged"] * 3
    assert runs(count) == 3


# ---- the plan, pure ----------------------------------------------------------------


def test_probe_points_gate_the_whole_chain_first_then_bisect():
    assert probe_points(0, None, 8, 1) == (8,)
    assert probe_points(0, 8, 8, 1) == (4,)
    assert probe_points(4, 8, 8, 1) == (6,)
    assert probe_points(4, 6, 8, 1) == (5,)
    assert probe_points(0, 8, 8, 3) == (2, 4, 6)
    assert probe_points(0, 8, 8, 7) == (1, 2, 3, 4, 5, 6, 7)
    assert probe_points(2, 5, 8, 4) == (3, 4)
    for good in range(8):
        for bad in range(good + 2, 9):
            for c in (1, 2, 3, 5):
                points = probe_points(good, bad, 8, c)
                assert points and all(good < p < bad for p in points) and len(points) <= c


@given(st.integers(1, 16), st.data(), st.integers(1, 8))
def test_bisection_finds_the_first_culprit_in_logarithmic_rounds(n: int, data, c: int):
    """Gates that fail from the culprit on: the search ends at it (or lands all), in
    1 + ceil(log_(c+1) n) rounds at most, never probing outside (good, bad)."""
    culprit = data.draw(st.integers(1, n + 1))  # n + 1: none
    good, bad, rounds = 0, None, 0
    while bad != good + 1 and good != n:
        points = probe_points(good, bad, n, c)
        assert points and all(good < p <= n and (bad is None or p < bad) for p in points)
        good, bad = bisected(good, bad, {p: p < culprit for p in points})
        rounds += 1
    assert (bad if culprit <= n else good) == min(culprit, n)
    limit, reach = 1, 1
    while reach < n:
        limit, reach = limit + 1, reach * (c + 1)
    assert rounds <= limit


def test_bisected_keeps_the_shortest_failure_and_the_longest_pass_below_it():
    assert bisected(0, None, {8: True}) == (8, None)
    assert bisected(0, None, {8: False}) == (0, 8)
    assert bisected(0, 8, {4: True}) == (4, 8)
    assert bisected(4, 8, {6: False}) == (4, 6)
    assert bisected(0, 8, {2: True, 4: False, 6: True}) == (2, 4)  # a pass above: ignored


def bv(**kw: object) -> BatchView:
    chain = tuple((i, f"w{i}", f"c{i}") for i in range(1, 5))
    return BatchView(**{"id": 1, "version": 3, "members": (1, 2, 3, 4), "chain": chain,
                        "onto": "t0", "gates": ("check",), **kw})


def test_batch_step_walks_build_probe_land_culprit():
    view = ForgeView(W, "main", "t0", gates=("check",), concurrency=1)
    assert batch_step(view, bv(chain=None)).kind == "batch-build"
    probe = batch_step(view, bv())
    assert (probe.kind, probe.data["points"]) == ("batch-probe", [4])
    assert batch_step(view, bv(bad=4)).data["points"] == [2]
    land = batch_step(view, bv(good=2, bad=4))
    assert (land.kind, land.data["commit"], land.data["onto"]) == ("batch-land", "c2", "t0")
    assert batch_step(view, bv(good=2, bad=4, landed=2)).data["points"] == [3]
    culprit = batch_step(view, bv(good=2, bad=3, landed=2))
    assert (culprit.kind, culprit.data["mr"]) == ("batch-culprit", 3)
    changed = ForgeView(W, "main", "t0", gates=("check", "lint"))
    assert batch_step(changed, bv(good=2, bad=4, landed=2)).kind == "batch-requeue"


def q(id: int, **kw: object) -> QueuedMR:
    return QueuedMR(id, f"w{id}", "Queued", created_at=float(id), **kw)


def test_a_batch_takes_fresh_resolved_mrs_from_the_head_up_to_its_size():
    mrs = (q(1), q(2), q(3, landed="abc"), q(4))
    view = ForgeView(W, "main", "t0", mrs, batch_size=8)
    assert [m.id for m in batchable(view, list(mrs))] == [1, 2]
    [step] = plan(view).actions
    assert (step.kind, step.data["mrs"]) == ("batch", [1, 2])
    assert [a.kind for a in plan(ForgeView(W, "main", "t0", mrs, batch_size=1)).actions] == \
        ["merge"]
    held = plan(ForgeView(W, "main", "t0", mrs, batch_size=8, suspended="held")).actions
    assert {a.kind for a in held} == {"hold"}
    interrupted = (QueuedMR(9, "w9", "Merging", step=Step.MERGED, commit="x"), q(1), q(2))
    assert plan(ForgeView(W, "main", "t0", interrupted, gates=("g",),
                          batch_size=8)).actions[0].kind == "gate"
