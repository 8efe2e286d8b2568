"""Dispatch end to end: real tmux on a private socket, real git, real SQLite, and the
bundled `script` agent as a real process."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from conftest import git, poll
from helpers import tmux_sessions, world_yaml, writ_status, writ_yaml, write_specs

from reconciler.controllers import registry
from reconciler.core import tether
from reconciler.core.home import Home
from reconciler.drivers.sphere import Sphere


def phase(home: Home, name: str, world: str = "shop") -> str | None:
    record = writ_status(home, world, name)
    return record.phase if record else None


def test_writ_becomes_agent_that_resolves_with_commits_on_its_branch(
        sol_home: Home, repo: Path, tmp_path: Path, sol) -> None:
    specs = write_specs(tmp_path / "specs", world_yaml("shop", repo),
                        writ_yaml("hello", "shop", "echo hello > hello.txt"))
    result = sol("apply", "-f", str(specs), check=True)
    assert "cast an agent on sol/hello" in result.stdout
    poll(lambda: phase(sol_home, "hello") == "Resolved", what="writ resolved")
    record = writ_status(sol_home, "shop", "hello")
    clone = sol_home.repo("shop")
    assert git(clone, "show", "sol/hello:hello.txt") == "hello"
    assert git(clone, "log", "-1", "--format=%s", "sol/hello") == "Writ hello"
    author = git(clone, "log", "-1", "--format=%an", "sol/hello")
    assert author == f"sol agent {record.status['agent']}"
    mrs = json.loads(sol("get", "mrs", "-o", "json", check=True).stdout)
    assert [(m["spec"]["writ"], m["status"]["phase"]) for m in mrs] == [("hello", "Queued")]
    # the session ended itself after resolving, and the tether is cleared
    agent = record.status["agent"]
    poll(lambda: f"sol-shop-{agent}" not in tmux_sessions(sol_home), what="session ended")
    assert not sol_home.tether("shop", agent).exists()
    assert sol_home.worktree("shop", agent).exists()


def test_dependent_writ_waits_while_dependency_is_only_resolved(
        sol_home: Home, repo: Path, tmp_path: Path, sol) -> None:
    specs = write_specs(tmp_path / "specs", world_yaml("shop", repo),
                        writ_yaml("base", "shop", "echo a > a.txt"),
                        writ_yaml("child", "shop", "echo b > b.txt",
                                  extra="dependsOn: [base]"))
    sol("apply", "-f", str(specs), check=True)
    poll(lambda: phase(sol_home, "base") == "Resolved", what="base resolved")
    sol("apply", "-f", str(specs), check=True)  # dispatches again; apply never merges
    child = writ_status(sol_home, "shop", "child")
    assert child.phase == "Pending"
    assert child.message == "waiting for base (Resolved)"
    status = sol("status").stdout  # exits 1: no daemon while work waits
    assert "waiting for base" in status
    # the forge lands base; only then is child cast, from a target that contains it
    sol("reconcile", "--once", check=True)
    assert phase(sol_home, "base") == "Merged"
    poll(lambda: phase(sol_home, "child") == "Resolved", what="child resolved")
    clone = sol_home.repo("shop")
    assert git(clone, "show", "sol/child:a.txt") == "a"
    assert git(clone, "show", "sol/child:b.txt") == "b"


def test_capacity_is_never_exceeded_and_every_writ_gets_worked(
        sol_home: Home, repo: Path, tmp_path: Path) -> None:
    gate = tmp_path / "go"
    hold = f'while [ ! -e {gate} ]; do sleep 0.05; done; echo "$SOL_WRIT" > "$SOL_WRIT.txt"'
    docs = [world_yaml("shop", repo, max_active=2)]
    docs += [writ_yaml(f"w{i}", "shop", hold) for i in range(6)]
    specs = write_specs(tmp_path / "specs", *docs)
    from reconciler.specs.manifests import validate

    sphere = Sphere(sol_home)
    registry.apply(sphere, validate([specs]))
    samples = []

    def step() -> bool:
        live = sum(1 for alive in tmux_sessions(sol_home).values() if alive)
        samples.append(live)
        if live == 2 and not gate.exists():
            gate.touch()  # let the first pair finish once both are running
        registry.reconcile_once(sphere, skip=("forge", "notifier"))
        samples.append(sum(1 for alive in tmux_sessions(sol_home).values() if alive))
        return all(phase(sol_home, f"w{i}") == "Resolved" for i in range(6))

    poll(step, timeout=90, interval=0.05, what="all six writs resolved")
    assert max(samples) <= 2
    assert 2 in samples
    casts = [e for e in sphere.store.events(types=["cast"])]
    assert sorted(e.name for e in casts) == [f"w{i}" for i in range(6)]


def test_hostile_text_is_carried_verbatim_and_never_executed(
        sol_home: Home, repo: Path, tmp_path: Path, sol) -> None:
    canary = tmp_path / "pwned"
    title = f"Fix \"quotes\" 'and' $(touch {canary}) `touch {canary}`; rm -rf ~"
    description = f"Text with $(touch {canary}) and `touch {canary}` ; rm -rf ~ \"q\" 'q'"
    doc = json.dumps({"apiVersion": "sol/v1", "kind": "Writ",
                      "metadata": {"name": "evil", "world": "shop"},
                      "spec": {"title": title, "description": description}})
    (tmp_path / "userhome" / "keep").write_text("still here")
    world = world_yaml("shop", repo, extra="suspend: false\n").replace(
        "runtime: {name: script}", "runtime: {name: command, command: 'sleep 30'}")
    specs = write_specs(tmp_path / "specs", world, doc)
    sol("apply", "-f", str(specs), check=True)
    record = writ_status(sol_home, "shop", "evil")
    assert record.phase == "Working"
    t = tether.read(sol_home.tether("shop", record.status["agent"]))
    assert t.title == title and t.description == description
    from_cwd = sol("prime", cwd=sol_home.worktree("shop", record.status["agent"]), check=True)
    assert description in from_cwd.stdout
    env_prime = subprocess.run(
        ["sol", "prime"], capture_output=True, text=True, check=True,
        env={**os.environ, "SOL_TETHER": str(sol_home.tether("shop", record.status["agent"]))},
    )
    assert description in env_prime.stdout and title in env_prime.stdout
    assert not canary.exists()
    assert (tmp_path / "userhome" / "keep").read_text() == "still here"


def test_resolving_ends_a_rate_limit_the_writ_still_shows(
        sol_home: Home, repo: Path, tmp_path: Path, sol) -> None:
    """An agent that went on after a rate limit and resolved before the sentinel saw its
    new turn leaves no RateLimited behind on its Resolved writ."""
    go = tmp_path / "go"
    specs = write_specs(tmp_path / "specs", world_yaml("shop", repo),
                        writ_yaml("w", "shop", f"while [ ! -e {go} ]; do sleep 0.1; done\n"
                                  "echo w > w.txt"))
    sol("apply", "-f", str(specs), check=True)
    poll(lambda: phase(sol_home, "w") == "Working", what="writ working")
    from reconciler.core.conditions import with_condition
    from reconciler.core.store import Store

    store = Store(sol_home.db)
    try:
        record = store.get("Writ", "shop", "w")
        store.set_status(record.key, rateLimit={"at": 1.0, "until": 2.0, "error": "429"},
                         conditions=with_condition(record.status, "RateLimited", True,
                                                   "RateLimitError", "limited"))
    finally:
        store.close()
    go.touch()
    poll(lambda: phase(sol_home, "w") == "Resolved", what="writ resolved")
    record = writ_status(sol_home, "shop", "w")
    limited = [c for c in record.status["conditions"] if c["type"] == "RateLimited"]
    assert [c["status"] for c in limited] == ["False"]
    assert "rateLimit" not in record.status
