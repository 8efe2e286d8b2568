"""Deleting a world's clone loses no agent's work (issue 10, point 3): each commit in an
agent's worktree is also pushed to the world's backup repository, and a clone made
again gets the branches back and its worktrees re-attached in place."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from conftest import git, poll
from helpers import world_yaml, writ_status, writ_yaml, write_specs
from test_prefect import daemon_commands

from reconciler.core.home import Home
from reconciler.drivers.worktrees import rev


def tip(repo: Path, ref: str) -> str | None:
    return rev(repo, ref) if (repo / "HEAD").exists() else None


def test_rm_rf_of_the_clone_keeps_an_unpushed_agent_commit_and_the_writ_lands(
        sol_home: Home, repo: Path, tmp_path: Path) -> None:
    go = sol_home.root / "go"
    steps = ("echo agent work > work.txt && git add work.txt && git commit -qm 'agent work'\n"
             f"while [ ! -f {go} ]; do sleep 0.05; done\n"
             "echo after the loss > later.txt")
    specs = write_specs(tmp_path / "specs", world_yaml("shop", repo),
                        writ_yaml("keep", "shop", steps))
    clone, backup = sol_home.repo("shop"), sol_home.world_dir("shop") / "backup.git"
    with daemon_commands(sol_home, tmp_path) as sol:
        assert sol("up", "-f", str(specs)).returncode == 0
        commit = poll(lambda: tip(backup, "refs/heads/sol/keep"), timeout=60,
                      what="the agent's commit in the backup")
        assert git(backup, "log", "-1", "--format=%s", "sol/keep") == "agent work"
        shutil.rmtree(clone)
        (sol_home.run / "wake").touch()  # as any saved manifest would; else the resync
        poll(lambda: tip(clone, "refs/heads/sol/keep") == commit, timeout=60,
             what="the clone made again with the agent's branch")
        worktree = sol_home.worktree("shop", writ_status(sol_home, "shop", "keep")
                                     .status["agent"])
        poll(lambda:
             subprocess.run(["git", "rev-parse", "HEAD"], cwd=worktree, capture_output=True,
                            text=True).stdout.strip() == commit,
             timeout=30, what="the worktree re-attached in place")
        go.touch()
        poll(lambda: writ_status(sol_home, "shop", "keep").phase == "Merged", timeout=90,
             what="writ keep merged")
    assert git(clone, "show", "main:work.txt") == "agent work"
    assert git(clone, "show", "main:later.txt") == "after the loss"
