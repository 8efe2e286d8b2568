"""A budget against the real Claude Code CLI: the scripted model reports usage the test
knows (tests/fakes/anthropic_server.usage_for), the ledger reads it from the CLI's own
transcript, and the writ whose `budget.max` is below it is stopped mid-turn, escalated,
and keeps its branch, under `sol up`."""

from __future__ import annotations

import os
from pathlib import Path

import psutil
import pytest
from conftest import git, poll
from helpers import tmux_sessions, writ_status, write_specs
from test_claude_real import events, model, world, writ  # noqa: F401 - model: a fixture
from test_prefect import daemon_commands

from reconciler.core.home import Home
from tests.fakes.anthropic_server import AnthropicServer, usage_for

pytestmark = pytest.mark.timeout(300)


def working_in(path: Path) -> list[str]:
    """The command lines of the processes whose working directory is `path`."""
    found = []
    for proc in psutil.process_iter(["cwd", "cmdline"]):
        if proc.info["cwd"] == str(path):
            found.append(" ".join(proc.info["cmdline"] or []))
    return found


def test_a_writ_past_its_max_is_stopped_mid_turn_and_keeps_its_branch(
        sol_home: Home, repo: Path, tmp_path: Path, model: AnthropicServer,  # noqa: F811
        monkeypatch: pytest.MonkeyPatch) -> None:
    first = sum(usage_for(0).values())  # what the first response costs, in tokens
    assert first > 2000
    model.script("writ `pricey`", [
        {"bash": "printf 'a\\n' > a.txt && git add -A && git commit -qm a && sleep 100"},
        {"text": "done"},
    ])
    limited = writ("pricey").replace('"description"',
                                     '"budget": {"max": {"tokens": 2000}}, "description"')
    specs = write_specs(tmp_path / "specs", world(repo), limited)
    monkeypatch.setenv("SOL_RESYNC", "2s")  # the consul's ledger pass runs every 2 s
    with daemon_commands(sol_home, tmp_path) as sol:
        assert sol("up", "-f", str(specs)).returncode == 0
        record = poll(lambda: (r := writ_status(sol_home, "shop", "pricey")) is not None
                      and r.phase == "Failed" and r, timeout=150, interval=0.5,
                      what="writ pricey stopped over its budget")
        agent = record.status["agent"]
        poll(lambda: f"sol-shop-{agent}" not in tmux_sessions(sol_home),
             what="its session stopped")
        # ... and the tool command it was running (in a session of its own) with it
        poll(lambda: not working_in(sol_home.worktree("shop", agent)), timeout=10,
             what="no process left working in the stopped writ's worktree")
    assert record.reason == "BudgetExceeded"
    assert f"spent {first:,} of 2,000 tokens (spec.budget.max)" in record.message
    conditions = {c["type"]: c["status"] for c in record.status["conditions"]}
    assert conditions["BudgetExceeded"] == "True" and conditions["Escalated"] == "True"
    assert git(sol_home.repo("shop"), "show", "sol/pricey:a.txt") == "a"  # work kept
    assert sol_home.worktree("shop", agent).exists()
    assert [e.name for e in events(sol_home, "escalated")] == ["pricey"]
    assert not events(sol_home, "merged")
    # The CLI's scratch files (its tool outputs) stay in the outpost, private, not in /tmp
    scratch = sol_home.outpost("shop", agent) / "tmp"
    assert oct(scratch.stat().st_mode & 0o777) == "0o700"
    assert list(scratch.glob(f"claude-{os.getuid()}/*/*/tasks"))
    shared = Path(f"/tmp/claude-{os.getuid()}")
    mangled = str(sol_home.worktree("shop", agent)).replace("/", "-").replace("_", "-")
    assert not (shared / mangled).exists()
