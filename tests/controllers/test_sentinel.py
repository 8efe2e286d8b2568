"""The sentinel and degraded mode with real tmux, real git and real SQLite.

Agents are the bundled `script` runtime (or `command`), whose steps crash, hang or
finish on purpose; the sentinel runs in-process, one pass per poll, as the daemon would.
"""

from __future__ import annotations

import json
import shlex
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from conftest import git, poll
from helpers import tmux_sessions, world_yaml, writ_status, writ_yaml, write_specs

from reconciler.controllers import consul, registry, sentinel
from reconciler.core import degraded
from reconciler.core.home import Home
from reconciler.core.model import CANCELLED, Manifest
from reconciler.drivers import worktrees
from reconciler.drivers.sphere import Sphere

W = "shop"


def world(repo: Path, *, stall: str = "15m", respawns: int = 3, max_active: int = 4,
          command: str | None = None) -> str:
    text = world_yaml(W, repo, max_active=max_active,
                      extra=f"sentinel: {{stallAfter: {stall}, maxRespawns: {respawns}}}\n")
    if command:
        text = text.replace("runtime: {name: script}",
                            f"runtime: {{name: command, command: '{command}'}}")
    return text


def crash_once(marker: Path, wait_for: Path | None = None) -> str:
    wait = f"while [ ! -e {shlex.quote(str(wait_for))} ]; do sleep 0.05; done\n" if wait_for \
        else ""
    m = shlex.quote(str(marker))
    return f"{wait}if [ ! -e {m} ]; then touch {m}; kill -9 $PPID; fi\necho ok > f.txt"


def until(sphere: Sphere, condition: Callable[[], object], what: str,
          timeout: float = 60.0) -> object:
    """Run sentinel passes until condition holds."""
    def step() -> object:
        sentinel.reconcile(sphere)
        return condition()
    return poll(step, timeout=timeout, interval=0.1, what=what)


def phase(home: Home, writ: str) -> str:
    return writ_status(home, W, writ).phase


def events(sphere: Sphere, kind: str, name: str | None = None) -> list:
    return sphere.store.events(types=[kind], name=name)


def condition(home: Home, writ: str, kind: str) -> dict | None:
    conditions = writ_status(home, W, writ).status.get("conditions") or []
    return next((c for c in conditions if c["type"] == kind), None)


def test_an_agent_that_dies_once_is_respawned_in_its_worktree_and_lands(
        sol_home: Home, repo: Path, tmp_path: Path, sol) -> None:
    specs = write_specs(tmp_path / "specs", world(repo),
                        writ_yaml("a", W, crash_once(tmp_path / "marker")))
    sol("apply", "-f", str(specs), check=True)
    cast = writ_status(sol_home, W, "a").status
    sphere = Sphere(sol_home)
    until(sphere, lambda: phase(sol_home, "a") == "Resolved", "the respawned agent resolves")
    [died] = events(sphere, "session-died", "a")
    assert died.data["session"] == cast["session"]
    [respawned] = events(sphere, "respawned", "a")
    assert respawned.data["previous"] == cast["session"]
    assert respawned.data["session"] != cast["session"]
    assert respawned.data["agent"] == cast["agent"]
    status = writ_status(sol_home, W, "a").status
    assert status["agent"] == cast["agent"] and status["respawns"] == 1
    assert git(sol_home.repo(W), "show", "sol/a:f.txt") == "ok"
    assert (sol_home.worktree(W, cast["agent"]) / "f.txt").exists()
    assert degraded.state(sphere.store) is None


def test_an_agent_that_keeps_dying_fails_with_its_branch_and_worktree_kept(
        sol_home: Home, repo: Path, tmp_path: Path, sol) -> None:
    specs = write_specs(tmp_path / "specs", world(repo, respawns=2),
                        writ_yaml("a", W, "echo about to crash\nsleep 0.2\nkill -9 $PPID"))
    sol("apply", "-f", str(specs), check=True)
    agent = writ_status(sol_home, W, "a").status["agent"]
    sphere = Sphere(sol_home)
    until(sphere, lambda: phase(sol_home, "a") == "Failed", "the writ fails")
    record = writ_status(sol_home, W, "a")
    assert record.reason == "RespawnLimit"
    assert "respawn limit 2" in record.message and "about to crash" in record.message
    assert len(events(sphere, "session-died", "a")) == 3
    assert len(events(sphere, "respawned", "a")) == 2
    assert condition(sol_home, "a", "Escalated")["status"] == "True"
    assert worktrees.branch_exists(sol_home.repo(W), "sol/a")
    assert sol_home.worktree(W, agent).is_dir()
    assert not sol_home.tether(W, agent).exists()
    assert f"sol-{W}-{agent}" not in tmux_sessions(sol_home)
    assert sphere.store.agent(W, agent).writ == "a"
    sentinel.reconcile(sphere)  # a later pass changes nothing
    assert len(events(sphere, "failed", "a")) == 1


def test_a_silent_agent_is_nudged_then_stalled_and_output_clears_it(
        sol_home: Home, repo: Path, tmp_path: Path, sol) -> None:
    specs = write_specs(tmp_path / "specs", world(repo, stall="2s"),
                        writ_yaml("a", W, "echo thinking\nsleep 3600"))
    sol("apply", "-f", str(specs), check=True)
    agent = writ_status(sol_home, W, "a").status["agent"]
    name = f"sol-{W}-{agent}"
    sphere = Sphere(sol_home)
    poll(lambda: "thinking" in sphere.sessions.recent_output(name), what="the agent started")
    until(sphere, lambda: events(sphere, "nudged", "a"), "a nudge")
    poll(lambda: "sol: no output for 2s" in sphere.sessions.recent_output(name),
         what="the nudge in the pane")
    until(sphere, lambda: (condition(sol_home, "a", "Stalled") or {}).get("status") == "True",
          "Stalled")  # (Stalled is there from the start, False: a standard condition)
    stalled = condition(sol_home, "a", "Stalled")
    assert stalled["status"] == "True" and stalled["reason"] == "NoOutput"
    assert condition(sol_home, "a", "Escalated")["status"] == "True"
    assert len(events(sphere, "nudged", "a")) == 1 and len(events(sphere, "stalled", "a")) == 1
    assert phase(sol_home, "a") == "Working"
    sphere.sessions.send_text(name, "still here")
    until(sphere, lambda: condition(sol_home, "a", "Stalled")["status"] == "False",
          "Stalled cleared by output")
    assert "nudge" not in writ_status(sol_home, W, "a").status


def test_a_session_without_tether_is_stopped_and_envoys_are_left_alone(
        sol_home: Home, tmp_path: Path) -> None:
    sphere = Sphere(sol_home)
    for agent in ("ghost", "envoy"):
        sphere.sessions.start(f"sol-{W}-{agent}", ["sleep", "60"], cwd=tmp_path, env={},
                              log=sol_home.agent_log(W, agent))
    done = sentinel.reconcile(sphere)
    assert [(a.kind, a.data["agent"]) for a in done] == [("stop-zombie", "ghost")]
    assert not sphere.sessions.exists(f"sol-{W}-ghost")
    assert sphere.sessions.is_alive(f"sol-{W}-envoy")
    [stopped] = events(sphere, "zombie-stopped")
    assert "no tether" in stopped.message
    assert sentinel.reconcile(sphere) == []


def test_a_cancelled_writs_live_session_is_stopped(
        sol_home: Home, repo: Path, tmp_path: Path, sol) -> None:
    specs = write_specs(tmp_path / "specs", world(repo, command="sleep 60"),
                        writ_yaml("a", W), writ_yaml("b", W))
    sol("apply", "-f", str(specs), check=True)
    sphere = Sphere(sol_home)
    agents = {w: writ_status(sol_home, W, w).status["agent"] for w in "ab"}
    sphere.store.set_status(("Writ", W, "a"), phase=CANCELLED, reason="Cancelled")
    until(sphere, lambda: f"sol-{W}-{agents['a']}" not in tmux_sessions(sol_home),
          "the cancelled writ's session stopped")
    assert "writ a is Cancelled" in events(sphere, "zombie-stopped")[0].message
    assert tmux_sessions(sol_home)[f"sol-{W}-{agents['b']}"] is True
    assert phase(sol_home, "b") == "Working"


def test_three_quick_deaths_degrade_hold_respawns_notify_and_resume(
        sol_home: Home, repo: Path, tmp_path: Path, sol) -> None:
    out = tmp_path / "notified.txt"
    notify = tmp_path / "notify.sh"
    notify.write_text(f"#!/bin/sh\n{{ printf '%s\\n' \"$@\"; echo \"event=$SOL_EVENT\"; }}"
                      f" > {out}.tmp\nmv {out}.tmp {out}\n")
    notify.chmod(0o755)
    sol_home.config.write_text(json.dumps({"notify": [f"{notify} --from-sol"]}))
    go = tmp_path / "go"
    writs = [writ_yaml(n, W, crash_once(tmp_path / f"marker-{n}", go)) for n in "abc"]
    sol("apply", "-f", str(write_specs(tmp_path / "specs", world(repo), *writs)), check=True)
    poll(lambda: sum(tmux_sessions(sol_home).values()) == 3, what="three agents")
    go.touch()
    poll(lambda: not any(tmux_sessions(sol_home).values()), what="three deaths")
    sphere = Sphere(sol_home)
    def degraded_now() -> object:  # the consul's degraded reconciler, then the notifier
        registry.run_owner(sphere, "consul")
        registry.run_owner(sphere, "notifier")
        return degraded.state(sphere.store)

    until(sphere, degraded_now, "Degraded")
    state = degraded.state(sphere.store)
    assert "3 agent sessions died within 30s" in state.reason
    [event] = events(sphere, "degraded")
    assert event.message == state.reason
    def notified() -> list[str]:
        registry.run_owner(sphere, "notifier")
        return out.exists() and out.read_text().splitlines()

    lines = poll(notified, what="notified")
    assert lines == ["--from-sol", "--", "degraded", state.reason, "event=degraded"]
    last_death = max(e.ts for e in events(sphere, "session-died"))
    until(sphere, lambda: time.time() > last_death + 1.5, "the backoff to pass")
    assert events(sphere, "respawned") == []
    assert not any(tmux_sessions(sol_home).values())
    view = replace(sentinel.observe(sphere, W), now=time.time() + 100, degraded=True)
    held = sentinel.RECONCILER.plan(view).waiting
    assert set(held) == {f"writ/{W}/{n}" for n in "abc"}
    assert all("degraded" in h for h in held.values())
    assert degraded.resume(sphere.store) is True
    assert degraded.state(sphere.store) is None
    until(sphere, lambda: all(phase(sol_home, n) == "Resolved" for n in "abc"), "all land")
    assert len(events(sphere, "respawned")) == 3
    assert degraded.state(sphere.store) is None  # deaths before the resume never count again
    assert "sol resume" in events(sphere, "recovered")[0].message


def test_a_dead_agent_keeps_its_slot_until_respawned(sol_home: Home, repo: Path,
                                                    tmp_path: Path, sol) -> None:
    """Capacity is never exceeded: the consul does not cast b into the slot of a, whose
    session died; the sentinel respawns a there, and b runs once a has finished."""
    go = tmp_path / "go"
    hold = f"while [ ! -e {shlex.quote(str(go))} ]; do sleep 0.05; done\necho b > b.txt"
    specs = write_specs(tmp_path / "specs", world(repo, max_active=1),
                        writ_yaml("a", W, crash_once(tmp_path / "marker"), extra="priority: 1"),
                        writ_yaml("b", W, hold))
    sol("apply", "-f", str(specs), check=True)
    sphere = Sphere(sol_home)
    until(sphere, lambda: events(sphere, "session-died", "a"), "a dies")
    consul.reconcile(sphere)
    assert phase(sol_home, "b") == "Pending"
    assert writ_status(sol_home, W, "b").message == "capacity 1/1"
    until(sphere, lambda: phase(sol_home, "a") == "Resolved", "a respawns and resolves")
    assert len(events(sphere, "respawned")) == 1
    assert sum(tmux_sessions(sol_home).values()) <= 1
    go.touch()

    def b_done() -> bool:
        consul.reconcile(sphere)  # casts b as soon as a's session has ended
        return phase(sol_home, "b") == "Resolved"

    until(sphere, b_done, "b runs once a is done")


def test_orphan_worktrees_are_removed_when_merged_and_reported_otherwise(
        sol_home: Home, repo: Path, tmp_path: Path, sol) -> None:
    sol("apply", "-f", str(write_specs(tmp_path / "specs", world(repo))), check=True)
    sphere = Sphere(sol_home)
    clone = sol_home.repo(W)
    paths = {}
    for agent in ("old", "kept", "owned", "envoy"):
        paths[agent] = sol_home.worktree(W, agent)
        worktrees.add_worktree(clone, paths[agent], f"sol/{agent}", "refs/heads/main")
    (paths["kept"] / "work.txt").write_text("unmerged work\n")
    git(paths["kept"], "add", "work.txt")
    git(paths["kept"], "commit", "-qm", "unmerged work")
    sphere.store.record_spec(Manifest("Writ", "owned", W, {"title": "t"}))
    sphere.store.put_agent(W, "owned", writ="owned", state="resolved")
    done = sentinel.reconcile(sphere)
    assert sorted((a.kind, a.data["agent"]) for a in done) == [
        ("remove-orphan", "old"), ("report-orphan", "kept")]
    assert not sol_home.outpost(W, "old").exists()
    assert worktrees.branch_exists(clone, "sol/old")
    assert (paths["kept"] / "work.txt").exists() and paths["owned"].is_dir()
    assert paths["envoy"].is_dir()
    [report] = events(sphere, "orphan-worktree")
    assert "kept" in report.message and report.name == "kept"
    assert sentinel.reconcile(sphere) == []  # reported once, not every pass
    head = git(paths["kept"], "rev-parse", "HEAD")
    git(clone, "update-ref", "refs/heads/main", head)  # its work lands on the target
    assert [a.kind for a in sentinel.reconcile(sphere)] == ["remove-orphan"]
    assert not paths["kept"].exists() and paths["owned"].is_dir()


def test_requeue_after_reports_the_next_stall_deadline(
        sol_home: Home, repo: Path, tmp_path: Path, sol) -> None:
    specs = write_specs(tmp_path / "specs", world(repo, stall="30s", command="sleep 60"),
                        writ_yaml("a", W))
    sol("apply", "-f", str(specs), check=True)
    sphere = Sphere(sol_home)
    assert sentinel.reconcile(sphere) == []
    wait = sentinel.requeue_after(sphere, W)
    assert wait is not None and 25 < wait <= 30


def die(store, writ: str, session: str) -> None:
    degraded.record_death(store, world=W, writ=writ, agent="vega", session=session,
                          message="died")
