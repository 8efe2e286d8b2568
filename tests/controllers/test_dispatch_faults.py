"""Dispatch faults: missing runtime, tmux server killed, concurrent applies, stale or
empty resolves, escalations, spec changes and pruning, all with real processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from conftest import git, poll
from helpers import tmux_sessions, world_yaml, writ_status, writ_yaml, write_specs

from reconciler.core import tether
from reconciler.core.home import Home
from reconciler.core.store import Store

HOLD = "sleep 60"


def command_world(repo: Path, command: str = HOLD, max_active: int = 4) -> str:
    return world_yaml("shop", repo, max_active=max_active).replace(
        "runtime: {name: script}", f"runtime: {{name: command, command: '{command}'}}")


def agent_of(home: Home, writ: str) -> str:
    return writ_status(home, "shop", writ).status["agent"]


def in_session_env(home: Home, writ: str) -> dict[str, str]:
    record = writ_status(home, "shop", writ)
    agent = record.status["agent"]
    return {**os.environ, "SOL_TETHER": str(home.tether("shop", agent)),
            "SOL_SESSION": record.status["session"]}


def test_missing_runtime_leaves_writ_pending_with_nothing_half_made(
        sol_home: Home, repo: Path, tmp_path: Path, sol, monkeypatch) -> None:
    world = world_yaml("shop", repo).replace("runtime: {name: script}",
                                             "runtime: {name: claude}")
    specs = write_specs(tmp_path / "specs", world, writ_yaml("a", "shop", "true"))
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}:/usr/bin:/bin")
    sol("apply", "-f", str(specs), check=True)
    record = writ_status(sol_home, "shop", "a")
    assert record.phase == "Pending"
    assert "runtime claude not found on PATH" in record.message
    assert not list(sol_home.outposts("shop").glob("*/tether.json"))
    assert tmux_sessions(sol_home) == {}
    assert "runtime claude not found on PATH" in sol("get", "writs", check=True).stdout


def test_killing_the_tmux_server_loses_no_assignment(
        sol_home: Home, repo: Path, tmp_path: Path, sol) -> None:
    specs = write_specs(tmp_path / "specs", command_world(repo),
                        writ_yaml("a", "shop"), writ_yaml("b", "shop"))
    sol("apply", "-f", str(specs), check=True)
    def two_live() -> bool:
        return sum(tmux_sessions(sol_home).values()) == 2

    poll(two_live, what="two sessions")
    subprocess.run(["tmux", "-L", sol_home.socket_name, "kill-server"], check=True)
    assert tmux_sessions(sol_home) == {}
    for name in ("a", "b"):
        agent = agent_of(sol_home, name)
        assert sol_home.worktree("shop", agent).is_dir()
        out = subprocess.run(["sol", "prime"], capture_output=True, text=True, check=True,
                             env=in_session_env(sol_home, name)).stdout
        assert f"Writ {name}" in out


def test_prime_works_with_the_database_deleted(
        sol_home: Home, repo: Path, tmp_path: Path, sol) -> None:
    specs = write_specs(tmp_path / "specs", command_world(repo), writ_yaml("a", "shop"))
    sol("apply", "-f", str(specs), check=True)
    env = in_session_env(sol_home, "a")
    for suffix in ("", "-wal", "-shm"):
        Path(str(sol_home.db) + suffix).unlink(missing_ok=True)
    out = subprocess.run(["sol", "prime"], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    assert "Writ a" in out.stdout
    assert not sol_home.db.exists()  # prime did not create a database either


def test_two_applies_at_once_never_cast_a_writ_twice(
        sol_home: Home, repo: Path, tmp_path: Path) -> None:
    docs = [command_world(repo, max_active=0)] + [writ_yaml(f"w{i}", "shop") for i in range(5)]
    specs = write_specs(tmp_path / "specs", *docs)
    procs = [subprocess.Popen([sys.executable, "-m", "reconciler", "apply", "-f", str(specs)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    store = Store(sol_home.db)
    casts = [e.name for e in store.events(types=["cast"])]
    assert sorted(casts) == [f"w{i}" for i in range(5)]
    agents = [a.name for a in store.agents("shop") if a.writ]
    assert len(agents) == len(set(agents)) == 5
    assert sum(tmux_sessions(sol_home).values()) == 5


def test_resolve_refuses_an_empty_branch_and_a_stale_session(
        sol_home: Home, repo: Path, tmp_path: Path, sol) -> None:
    specs = write_specs(tmp_path / "specs", command_world(repo), writ_yaml("a", "shop"))
    sol("apply", "-f", str(specs), check=True)
    env = in_session_env(sol_home, "a")
    empty = subprocess.run(["sol", "resolve"], capture_output=True, text=True, env=env)
    assert empty.returncode == 1
    assert "no commit beyond its base" in empty.stderr and "Traceback" not in empty.stderr
    assert writ_status(sol_home, "shop", "a").phase == "Working"
    worktree = sol_home.worktree("shop", agent_of(sol_home, "a"))
    (worktree / "work.txt").write_text("done\n")
    stale = subprocess.run(["sol", "resolve"], capture_output=True, text=True,
                           env={**env, "SOL_SESSION": "an-older-session"})
    assert stale.returncode == 1 and "stale signal refused" in stale.stderr
    assert writ_status(sol_home, "shop", "a").phase == "Working"
    # run inside no session here: stopping "its own" session is a no-op, so it exits 0
    ok = subprocess.run(["sol", "resolve"], capture_output=True, text=True, env=env)
    assert ok.returncode == 0, ok.stderr
    poll(lambda: writ_status(sol_home, "shop", "a").phase == "Resolved", what="resolved")
    assert git(sol_home.repo("shop"), "show", "sol/a:work.txt") == "done"
    again = subprocess.run(["sol", "resolve"], capture_output=True, text=True, env=env)
    assert again.returncode == 1 and "Traceback" not in again.stderr


def test_escalation_shows_in_get_describe_and_status(
        sol_home: Home, repo: Path, tmp_path: Path, sol) -> None:
    specs = write_specs(tmp_path / "specs", command_world(repo), writ_yaml("a", "shop"))
    sol("apply", "-f", str(specs), check=True)
    out = subprocess.run(["sol", "escalate", "the API key is missing"], capture_output=True,
                         text=True, env=in_session_env(sol_home, "a"))
    assert out.returncode == 0, out.stderr
    as_json = json.loads(sol("get", "writs", "a", "-o", "json", check=True).stdout)[0]
    conditions = {c["type"]: c for c in as_json["status"]["conditions"]}
    assert conditions["Escalated"]["message"] == "the API key is missing"
    assert "the API key is missing" in sol("get", "writs", check=True).stdout
    assert "Escalated" in sol("describe", "writ", "a", check=True).stdout
    status = sol("status")
    assert "the API key is missing" in status.stdout
    assert status.returncode == 1 and "1 writ(s) escalated: shop/a" in status.stdout


def test_spec_change_while_working_updates_the_tether_and_generation_after_prime(
        sol_home: Home, repo: Path, tmp_path: Path, sol) -> None:
    specs = write_specs(tmp_path / "specs", command_world(repo),
                        writ_yaml("a", "shop", title="First title"))
    sol("apply", "-f", str(specs), check=True)
    before = writ_status(sol_home, "shop", "a")
    write_specs(tmp_path / "specs", command_world(repo),
                writ_yaml("a", "shop", title="Second title"))
    sol("apply", "-f", str(specs), check=True)
    after = writ_status(sol_home, "shop", "a")
    assert after.generation != before.generation
    assert after.observed_generation == before.generation  # not primed yet
    t = tether.read(sol_home.tether("shop", after.status["agent"]))
    assert t.title == "Second title" and t.generation == after.generation
    assert t.session == before.status["session"]  # same session, not recast
    subprocess.run(["sol", "prime"], check=True, capture_output=True,
                   env=in_session_env(sol_home, "a"))
    assert writ_status(sol_home, "shop", "a").observed_generation == after.generation


def test_removed_writ_is_orphaned_without_prune_and_cancelled_with_it(
        sol_home: Home, repo: Path, tmp_path: Path, sol) -> None:
    specs = write_specs(tmp_path / "specs", command_world(repo),
                        writ_yaml("a", "shop"), writ_yaml("b", "shop"))
    sol("apply", "-f", str(specs), check=True)
    agent = agent_of(sol_home, "b")
    worktree = sol_home.worktree("shop", agent)
    (worktree / "wip.txt").write_text("work in progress\n")
    git(worktree, "add", "wip.txt")
    git(worktree, "commit", "-qm", "wip")
    write_specs(tmp_path / "specs", command_world(repo), writ_yaml("a", "shop"))
    out = sol("apply", "-f", str(specs), check=True).stdout
    assert "orphaned" in out
    record = writ_status(sol_home, "shop", "b")
    assert record.phase == "Working" and record.orphaned
    assert tmux_sessions(sol_home).get(f"sol-shop-{agent}") is True
    out = sol("apply", "--prune", "-f", str(specs), check=True).stdout
    assert "cancel" in out
    record = writ_status(sol_home, "shop", "b")
    assert record.phase == "Cancelled"
    poll(lambda: f"sol-shop-{agent}" not in tmux_sessions(sol_home), what="session stopped")
    assert not sol_home.tether("shop", agent).exists()
    assert (worktree / "wip.txt").exists()
    assert git(sol_home.repo("shop"), "show", "sol/b:wip.txt") == "work in progress"
    assert writ_status(sol_home, "shop", "a").phase == "Working"


def test_agents_listing_logs_and_attach_errors(
        sol_home: Home, repo: Path, tmp_path: Path, sol) -> None:
    specs = write_specs(tmp_path / "specs", command_world(repo, "echo started-$SOL_WRIT; sleep 60"),
                        writ_yaml("a", "shop"))
    sol("apply", "-f", str(specs), check=True)
    agent = agent_of(sol_home, "a")
    agents = json.loads(sol("get", "agents", "-o", "json", check=True).stdout)
    assert [(a["metadata"]["name"], a["status"]["writ"]) for a in agents] == [(agent, "a")]
    poll(lambda: "started-a" in sol("logs", agent).stdout, what="log output")
    missing = sol("logs", "nobody")
    assert missing.returncode == 1 and "no agent named" in missing.stderr
    subprocess.run(["tmux", "-L", sol_home.socket_name, "kill-server"], check=True)
    gone = sol("attach", agent)
    assert gone.returncode == 1 and "has no session" in gone.stderr


def test_writ_whose_agent_vanished_is_cast_again_on_its_branch(
        sol_home: Home, repo: Path, tmp_path: Path, sol, monkeypatch) -> None:
    specs = write_specs(tmp_path / "specs", command_world(repo), writ_yaml("a", "shop"))
    sol("apply", "-f", str(specs), check=True)
    first = writ_status(sol_home, "shop", "a")
    agent = first.status["agent"]
    worktree = sol_home.worktree("shop", agent)
    (worktree / "kept.txt").write_text("kept\n")
    git(worktree, "add", "kept.txt")
    git(worktree, "commit", "-qm", "kept work")
    subprocess.run(["tmux", "-L", sol_home.socket_name, "kill-server"], check=True)
    sol_home.tether("shop", agent).unlink()
    monkeypatch.setenv("SOL_STALE_AFTER", "0")
    sol("reconcile", "--once", check=True)
    again = writ_status(sol_home, "shop", "a")
    assert again.phase == "Working"
    assert again.status["session"] != first.status["session"]
    assert again.status["agent"] == agent
    assert (worktree / "kept.txt").read_text() == "kept\n"
    assert tether.read(sol_home.tether("shop", agent)).branch == "sol/a"
    events = [e.type for e in Store(sol_home.db).events(name="a")]
    assert events.count("recovered") == 1 and events.count("cast") == 2


def test_a_session_that_cannot_start_is_rolled_back_reported_once_and_cast_later(
        sol_home: Home, repo: Path, tmp_path: Path, sol) -> None:
    """No half-made cast wedges the writ: the worktree is removed (or reused), the writ
    waits with one reason and one event, and the next pass after the fix casts it."""
    blocker = sol_home.logs / "agents"
    blocker.write_text("a file where the agents' log directory should be\n")
    specs = write_specs(tmp_path / "specs", world_yaml("shop", repo),
                        writ_yaml("a", "shop", "echo a > a.txt"))
    sol("apply", "-f", str(specs), check=True)
    sol("reconcile", "--once", "-f", str(specs), check=True)
    record = writ_status(sol_home, "shop", "a")
    assert (record.phase, record.reason) == ("Pending", "CastFailed")
    assert "cannot create log directory" in record.message
    store = Store(sol_home.db)
    assert len(store.events(types=["cast-failed"])) == 1  # two passes, one event
    store.close()
    assert not list(sol_home.outposts("shop").glob("*/tether.json"))
    assert tmux_sessions(sol_home) == {}
    assert "sol/a" in git(sol_home.repo("shop"), "branch", "--list", "sol/a")
    blocker.unlink()
    sol("reconcile", "--once", "-f", str(specs), check=True)
    poll(lambda: writ_status(sol_home, "shop", "a").phase in ("Resolved", "Merged"),
         what="writ a cast again and resolved")


def test_a_worktree_kept_by_a_rolled_back_cast_is_reused_not_left_holding_the_branch(
        sol_home: Home, repo: Path, tmp_path: Path, sol) -> None:
    specs = write_specs(tmp_path / "specs", command_world(repo), writ_yaml("a", "shop"))
    sol("apply", "-f", str(specs), check=True)
    agent = agent_of(sol_home, "a")
    worktree = sol_home.worktree("shop", agent)
    (worktree / "work.txt").write_text("an earlier attempt's work\n")
    git(worktree, "add", "work.txt")
    git(worktree, "commit", "-q", "-m", "earlier work")
    # What an undo leaves when the worktree existed before the cast: the worktree (on
    # branch sol/a, holding work not on the target), but no session, tether or agent row.
    subprocess.run(["tmux", "-L", sol_home.socket_name, "kill-server"], capture_output=True)
    tether.clear(sol_home.tether("shop", agent))
    store = Store(sol_home.db)
    store.free_agent("shop", agent)
    store.set_status(("Writ", "shop", "a"), phase="Pending", reason="CastFailed",
                     message="cast failed: something", agent=None, session=None)
    store.close()
    sol("reconcile", "--once", "-f", str(specs), check=True)
    record = writ_status(sol_home, "shop", "a")
    assert record.phase == "Working" and record.status["agent"] == agent
    assert poll(lambda: tmux_sessions(sol_home).get(f"sol-shop-{agent}"))
    assert (worktree / "work.txt").exists()
