"""The world reconciler through `sol apply`, on real git sources: clone, drift, fetch
interval, errors that stay in their world, and orphans that are never deleted."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from subprocess import CompletedProcess

import pytest

from reconciler.core.home import Home
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
