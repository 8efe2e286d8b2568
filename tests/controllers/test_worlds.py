"""The world reconciler through `sol apply`, on real git sources: clone, drift, fetch
interval, errors that stay in their world, and orphans that are never deleted; and its
plan on plain values."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from subprocess import CompletedProcess

import pytest

from reconciler.controllers import worlds as reconciler
from reconciler.controllers.worlds import FETCH_FLOOR, WorldsView, WorldView, plan
from reconciler.core.home import Home
from reconciler.core.model import ERROR, PENDING, READY
from reconciler.core.plan import CREATE, UPDATE
from reconciler.core.store import Record
from reconciler.drivers.sphere import Sphere
from tests.conftest import git, make_repo
from tests.helpers import world_yaml, write_specs

Sol = Callable[..., CompletedProcess[str]]
SUSPENDED = "suspend: true\n"


def world(name: str, source: Path, branch: str = "main") -> str:
    return world_yaml(name, source, extra=SUSPENDED + f"branch: {branch}\n")


def worlds(sol: Sol) -> dict[str, dict]:
    data = json.loads(sol("get", "worlds", "-o", "json", check=True).stdout)
    return {w["metadata"]["name"]: w for w in data}


def commit(repo: Path, message: str) -> str:
    (repo / f"{message}.txt").write_text(message)
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", message)
    return git(repo, "rev-parse", "HEAD")


def test_apply_clones_with_the_target_branch(sol: Sol, sol_home: Home, tmp_path: Path) -> None:
    source = make_repo(tmp_path / "src", branch="trunk")
    head = git(source, "rev-parse", "HEAD")
    path = write_specs(tmp_path / "specs", world("shop", source, branch="trunk"))
    result = sol("apply", "-f", str(path), check=True)
    assert "+ world/shop  clone" in result.stdout
    clone = sol_home.repo("shop")
    assert git(clone, "rev-parse", "refs/heads/trunk") == head
    status = worlds(sol)["shop"]["status"]
    assert (status["phase"], status["reason"], status["head"]) == ("Ready", "Cloned", head)
    assert status["observedGeneration"] == status["generation"]
    assert "Phase:       Ready" in sol("describe", "world", "shop", check=True).stdout


def test_a_deleted_clone_is_recreated(sol: Sol, sol_home: Home, tmp_path: Path,
                                      repo: Path) -> None:
    path = write_specs(tmp_path / "specs", world("shop", repo))
    sol("apply", "-f", str(path), check=True)
    assert sol("diff", "-f", str(path)).returncode == 0
    shutil.rmtree(sol_home.repo("shop"))
    result = sol("diff", "-f", str(path))
    assert result.returncode == 2 and "+ world/shop  clone" in result.stdout
    sol("apply", "-f", str(path), check=True)
    assert git(sol_home.repo("shop"), "rev-parse", "refs/heads/main") == git(
        repo, "rev-parse", "HEAD")
    assert worlds(sol)["shop"]["status"]["phase"] == "Ready"
    assert sol("diff", "-f", str(path)).returncode == 0


def test_fetch_honours_the_interval(sol: Sol, tmp_path: Path, repo: Path,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_specs(tmp_path / "specs", world("shop", repo))
    first = git(repo, "rev-parse", "HEAD")
    sol("apply", "-f", str(path), check=True)
    second = commit(repo, "second")
    monkeypatch.setenv("SOL_FETCH_INTERVAL", "1h")
    assert sol("apply", "-f", str(path), check=True).stdout.startswith("No changes")
    assert worlds(sol)["shop"]["status"]["head"] == first, "fetched before the interval"
    monkeypatch.setenv("SOL_FETCH_INTERVAL", "0")
    sol("apply", "-f", str(path), check=True)
    status = worlds(sol)["shop"]["status"]
    assert status["head"] == second
    assert status["message"] == f"main at {second[:12]}"


def test_a_new_branch_is_fetched_at_once(sol: Sol, sol_home: Home, tmp_path: Path, repo: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """A changed spec does not wait for the fetch interval."""
    monkeypatch.setenv("SOL_FETCH_INTERVAL", "1h")
    path = write_specs(tmp_path / "specs", world("shop", repo))
    sol("apply", "-f", str(path), check=True)
    git(repo, "checkout", "-q", "-b", "develop")
    head = commit(repo, "on-develop")
    write_specs(tmp_path / "specs", world("shop", repo, branch="develop"))
    sol("apply", "-f", str(path), check=True)
    status = worlds(sol)["shop"]["status"]
    assert (status["phase"], status["head"]) == ("Ready", head), status
    assert git(sol_home.repo("shop"), "rev-parse", "refs/heads/develop") == head


def test_errors_stay_in_their_world(sol: Sol, tmp_path: Path, repo: Path) -> None:
    missing = tmp_path / "no-such-source"
    path = write_specs(tmp_path / "specs", world("good", repo), world("gone", missing),
                       world("nobranch", repo, branch="develop"))
    result = sol("apply", "-f", str(path))
    assert "Traceback" not in result.stderr
    assert result.returncode == 0, result.stderr
    found = worlds(sol)
    assert found["good"]["status"]["phase"] == "Ready"
    gone = found["gone"]["status"]
    assert (gone["phase"], gone["reason"]) == ("Error", "GitError")
    assert str(missing) in gone["message"] and "does not exist" in gone["message"]
    nobranch = found["nobranch"]["status"]
    assert nobranch["phase"] == "Error" and "branch develop" in nobranch["message"]
    described = sol("describe", "world", "gone", check=True).stdout
    assert described.count("error ") == 1
    sol("apply", "-f", str(path), check=True)
    described = sol("describe", "world", "gone", check=True).stdout
    assert described.count("error ") == 1, "the same error is recorded once"

    git(repo, "branch", "develop")
    sol("apply", "-f", str(path), check=True)
    assert worlds(sol)["nobranch"]["status"]["phase"] == "Ready"
    assert worlds(sol)["gone"]["status"]["phase"] == "Error"


def test_a_source_that_vanishes_after_the_clone(sol: Sol, sol_home: Home, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    source = make_repo(tmp_path / "src")
    path = write_specs(tmp_path / "specs", world("shop", source))
    sol("apply", "-f", str(path), check=True)
    moved = source.rename(tmp_path / "moved")
    monkeypatch.setenv("SOL_FETCH_INTERVAL", "0")
    sol("apply", "-f", str(path), check=True)
    status = worlds(sol)["shop"]["status"]
    assert status["phase"] == "Error" and "cannot fetch" in status["message"]
    assert sol_home.repo("shop").is_dir(), "a failed fetch never removes the clone"
    moved.rename(source)
    sol("apply", "-f", str(path), check=True)
    assert worlds(sol)["shop"]["status"]["phase"] == "Ready"


def test_a_removed_world_is_orphaned_never_deleted(sol: Sol, sol_home: Home, tmp_path: Path,
                                                   repo: Path) -> None:
    path = write_specs(tmp_path / "specs", world("keep", repo), world("drop", repo))
    sol("apply", "-f", str(path), check=True)
    write_specs(tmp_path / "specs", world("keep", repo))
    result = sol("diff", "-f", str(path), "--prune")
    assert result.returncode == 2
    assert "! world/drop" in result.stdout and "never deleted" in result.stdout
    assert "- world/drop" not in result.stdout
    for prune in ([], ["--prune"]):
        sol("apply", "-f", str(path), *prune, check=True)
        drop = worlds(sol)["drop"]["status"]
        assert (drop["phase"], drop["orphaned"]) == ("Orphaned", True)
        assert git(sol_home.repo("drop"), "rev-parse", "refs/heads/main")
    assert worlds(sol)["keep"]["status"]["phase"] == "Ready"
    shutil.rmtree(sol_home.repo("drop"))
    sol("apply", "-f", str(path), check=True)
    assert not sol_home.repo("drop").exists(), "an orphaned world is not re-cloned"
    write_specs(tmp_path / "specs", world("keep", repo), world("drop", repo))
    sol("apply", "-f", str(path), check=True)
    drop = worlds(sol)["drop"]["status"]
    assert drop["phase"] == "Ready" and "orphaned" not in drop
    assert sol_home.repo("drop").is_dir()


def test_diff_plans_no_clone_for_a_world_about_to_be_orphaned(sol: Sol, sol_home: Home,
                                                               tmp_path: Path,
                                                               repo: Path) -> None:
    path = write_specs(tmp_path / "specs", world("keep", repo), world("drop", repo))
    sol("apply", "-f", str(path), check=True)
    shutil.rmtree(sol_home.repo("drop"))
    write_specs(tmp_path / "specs", world("keep", repo))
    planned = sol("diff", "-f", str(path)).stdout
    applied = sol("apply", "-f", str(path), check=True).stdout
    assert ("+ world/drop" in planned) == ("+ world/drop" in applied), (planned, applied)


def test_a_settled_sphere_plans_nothing_and_a_stale_status_is_not_written(
        sol: Sol, sol_home: Home, tmp_path: Path, repo: Path) -> None:
    path = write_specs(tmp_path / "specs", world("shop", repo))
    sol("apply", "-f", str(path), check=True)
    sphere = Sphere(sol_home)
    try:
        assert reconciler.RECONCILER.planned(sphere).actions == ()
        shop = sphere.store.get("World", "", "shop")
        assert shop is not None
        sphere.store.set_status(shop.key, head="0" * 40)  # a landing moved the branch
        [ready] = reconciler.RECONCILER.planned(sphere).actions
        assert (ready.kind, ready.data["head"]) == ("ready", git(repo, "rev-parse", "HEAD"))
        sphere.store.set_status(shop.key, message="someone else wrote since")
        assert reconciler.act(sphere, ready) is False, "compare-and-set on the version"
        assert [a.kind for a in reconciler.reconcile(sphere)] == ["ready"]
        assert reconciler.RECONCILER.planned(sphere).actions == ()
    finally:
        sphere.close()


# ---- the plan, on plain values ---------------------------------------------------

NOW = 10_000.0
HEAD = "a" * 40


def record(name: str = "shop", *, phase: str = READY, head: str | None = HEAD,
           branch: str = "main", generation: str = "g1", observed: str = "g1",
           orphaned: bool = False, message: str | None = None) -> Record:
    status = {"head": head} if head else {}
    text = message if message is not None else f"{branch} at {(head or '')[:12]}"
    return Record("World", "", name, {"source": "/src/shop", "branch": branch}, generation,
                  "", orphaned, phase, "Cloned" if phase == READY else "GitError", text,
                  observed, status, 7, 0.0, 0.0)


def view(*worlds: WorldView, interval: float = 60.0) -> WorldsView:
    return WorldsView(tuple(worlds), NOW, interval)


def cloned(r: Record, *, head: str | None = HEAD, fetched: float = NOW - 10) -> WorldView:
    return WorldView(r, True, head, fetched)


def test_plan_clones_what_is_missing_and_never_an_orphan() -> None:
    result = plan(view(WorldView(record("b"), False, None, 0.0),
                       WorldView(record("a", phase=PENDING), False, None, 0.0),
                       WorldView(record("gone", orphaned=True), False, None, 0.0)))
    assert [(a.op, a.kind, a.target) for a in result.actions] == [
        (CREATE, "clone", "world/a"), (CREATE, "clone", "world/b")]
    assert result.actions[0].description == "clone /src/shop (branch main)"
    assert result.actions[0].data == {"world": "a"}
    assert result.requeue_after is None, "a failed clone is tried again on the next pass"


def test_plan_of_a_settled_world_is_empty_and_looks_again_when_the_fetch_is_due() -> None:
    result = plan(view(cloned(record(), fetched=NOW - 10)))
    assert result.actions == ()
    assert result.requeue_after == 50.0
    assert plan(view(cloned(record(), fetched=NOW - 10))) == result, "pure: same view, same plan"


def test_plan_fetches_when_the_interval_has_passed() -> None:
    result = plan(view(cloned(record(), fetched=NOW - 60)))
    [fetch] = result.actions
    assert (fetch.op, fetch.kind, fetch.target) == (UPDATE, "fetch", "world/shop")
    assert fetch.description == "fetch main from /src/shop" and fetch.data == {"world": "shop"}
    assert result.requeue_after == 60.0, "the next fetch is due an interval from now"


def test_a_changed_spec_is_fetched_at_once() -> None:
    changed = record(branch="develop", generation="g2", observed="g1")
    assert [a.kind for a in plan(view(cloned(changed, fetched=NOW - 1))).actions] == ["fetch"]


def test_a_branch_missing_from_the_clone_is_fetched_until_an_error_says_why() -> None:
    missing = cloned(record(), head=None, fetched=NOW - 1)
    assert [a.kind for a in plan(view(missing)).actions] == ["fetch"]
    reported = cloned(record(phase=ERROR, head=None, message="branch main not found"),
                      head=None, fetched=NOW - 1)
    result = plan(view(reported))
    assert result.actions == () and result.requeue_after == 59.0


def test_a_moved_branch_is_written_to_the_status_but_an_error_waits_for_the_fetch() -> None:
    moved = "b" * 40
    [ready] = plan(view(cloned(record(), head=moved))).actions
    assert (ready.op, ready.kind, ready.target) == (UPDATE, "ready", "world/shop")
    assert ready.description == f"status Ready: main at {moved[:12]}"
    assert ready.data == {"world": "shop", "head": moved, "version": 7}
    pending = record(phase=PENDING, head=None, message="")
    assert [a.kind for a in plan(view(cloned(pending))).actions] == ["ready"]
    failed = record(phase=ERROR, message="cannot fetch origin")
    assert plan(view(cloned(failed, head=moved))).actions == ()


def test_an_interval_of_zero_fetches_every_pass_but_never_requeues_at_once() -> None:
    result = plan(view(cloned(record(), fetched=NOW), interval=0.0))
    assert [a.kind for a in result.actions] == ["fetch"]
    assert result.requeue_after == FETCH_FLOOR
