"""Issue 5 item 6, from the outside: `kill -9` of an agent, of each reconciler, of the
tmux server and of the prefect while a daemon lands eight writs; then `sol up` again.

Proven, with real tmux, git and SQLite:
- no writ is lost: every writ reaches Merged;
- no writ lands twice: the target holds exactly one `Sol-Writ:` commit per writ;
- no work is lost: every commit an agent made on a writ branch (recorded by a
  post-commit hook, so none escapes) has its content on the target or is on a kept
  branch;
- no writ runs twice at once: sampled from tmux (live sessions mapped to writs through
  tethers and the agents table) and from inside the agents (each block holds a flock
  named after its writ; a second holder writes a violation).

Then the moments a whole-system run rarely hits, each on its own: deaths tmux tells no
one of (`outposts.DeathWatch`), an agent killed inside `git commit` (its lock files), a
cast killed inside `git worktree add` (a half-made worktree).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import git, make_repo, poll
from helpers import world_yaml, writ_yaml, write_specs
from test_prefect import Run, daemon_commands, events, pid_of

from reconciler.controllers import sentinel
from reconciler.core import degraded
from reconciler.core.home import Home
from reconciler.core.store import Store
from reconciler.daemon.procs import read_pid
from reconciler.drivers.outposts import DeathWatch, parse_session
from reconciler.drivers.processes import pid_alive
from reconciler.drivers.sessions import TmuxSessions
from reconciler.drivers.sphere import Sphere

W = "shop"
WRITS = [f"w{i}" for i in range(8)]
CHILDREN = ("consul", f"sentinel-{W}", f"forge-{W}")


@pytest.fixture
def daemon(sol_home: Home, tmp_path: Path) -> Iterator[Run]:
    with daemon_commands(sol_home, tmp_path) as run:
        yield run


def record_commits(home_dir: Path, log: Path) -> None:
    """Every commit made anywhere in this test (the forge turns hooks off for its own)
    appends `sha branch` to `log`."""
    hooks = home_dir / "hooks"
    hooks.mkdir(parents=True)
    hook = hooks / "post-commit"
    hook.write_text("#!/bin/sh\nprintf '%s %s\\n' \"$(git rev-parse HEAD)\" "
                    f"\"$(git symbolic-ref -q --short HEAD)\" >> '{log}'\n")
    hook.chmod(0o755)
    (home_dir / ".gitconfig").write_text(f"[core]\n\thooksPath = {hooks}\n")


def step(name: str, seconds: float, locks: Path, violations: Path,
         hold: Path | None = None) -> str:
    """Hold the writ's flock while working (a second live run of the writ cannot get
    it); with `hold`, work until that file exists."""
    wait = f"while [ ! -e '{hold}' ]; do sleep 0.05; done\n" if hold else ""
    return (f"exec 9>>'{locks}/{name}.lock'\n"
            f"if ! flock -n 9; then echo \"$SOL_WRIT $SOL_SESSION\" >> '{violations}'; fi\n"
            f"{wait}sleep {seconds}\n"
            f"echo {name} > {name}.txt")


class Sampler(threading.Thread):
    """Every 50 ms: which writ each live agent session works on; two at once is a fault."""

    def __init__(self, home: Home) -> None:
        super().__init__(daemon=True)
        self.home = home
        self.samples = 0
        self.doubles: list[dict[str, list[str]]] = []
        self.stop = threading.Event()

    def live_agents(self) -> list[str]:
        out = subprocess.run(["tmux", "-L", self.home.socket_name, "list-panes", "-a", "-F",
                              "#{session_name} #{pane_dead}"], capture_output=True, text=True)
        agents = []
        for line in out.stdout.splitlines():
            name, _, dead = line.rpartition(" ")
            parsed = parse_session(name)
            if dead == "0" and parsed and parsed[0] == W:
                agents.append(parsed[1])
        return agents

    def writ_of(self, store: Store, agent: str) -> str:
        try:
            return json.loads(self.home.tether(W, agent).read_text())["writ"]
        except (OSError, ValueError, KeyError):
            row = store.agent(W, agent)  # resolving: tether cleared, session not yet ended
            return (row.writ if row else None) or f"?{agent}"

    def run(self) -> None:
        store = Store(self.home.db)
        try:
            while not self.stop.wait(0.05):
                by_writ: dict[str, list[str]] = {}
                for agent in self.live_agents():
                    by_writ.setdefault(self.writ_of(store, agent), []).append(agent)
                self.samples += 1
                twice = {w: a for w, a in by_writ.items() if len(a) > 1}
                if twice:
                    self.doubles.append(twice)
        finally:
            store.close()


def phases(home: Home) -> dict[str, str]:
    store = Store(home.db)
    try:
        return {w.name: w.phase for w in store.list("Writ", W)}
    finally:
        store.close()


def pane_pids(home: Home) -> list[int]:
    out = subprocess.run(["tmux", "-L", home.socket_name, "list-panes", "-a", "-F",
                          "#{pane_dead} #{pane_pid}"], capture_output=True, text=True)
    return [int(pid) for dead, pid in (line.split() for line in out.stdout.splitlines())
            if dead == "0"]


def restarted(home: Home, old: dict[str, int]) -> bool:
    return all((pid_of(home, name) or old[name]) != old[name] for name in old)


def kill_prefect(home: Home) -> None:
    """kill -9 of the prefect; its children follow it (SIGTERM from the kernel)."""
    prefect = read_pid(home.run / "prefect.pid")
    children = [pid_of(home, name) for name in CHILDREN]
    assert prefect is not None
    os.kill(prefect, signal.SIGKILL)
    poll(lambda: not any(p and pid_alive(p) for p in children), timeout=15,
         what="the orphaned reconcilers to stop")


def is_degraded(home: Home) -> bool:
    store = Store(home.db)
    try:
        return degraded.state(store) is not None
    finally:
        store.close()


def trailers(clone: Path, branch: str) -> list[str]:
    out = git(clone, "log", "--first-parent", "--format=%(trailers:key=Sol-Writ,valueonly)",
              branch)
    return [line.strip() for line in out.splitlines() if line.strip()]


def lost_commits(clone: Path, branch: str, log: Path) -> list[str]:
    """Agent commits on writ branches that are neither on a kept branch nor, file by
    file, in the target's tree (squash merges leave no ancestry to follow)."""
    lost = []
    for line in log.read_text().splitlines():
        sha, _, on = line.partition(" ")
        if not on.startswith("sol/"):
            continue
        if git(clone, "for-each-ref", "--contains", sha, "refs/heads/sol/"):
            continue
        for entry in git(clone, "diff-tree", "-r", "--root", "--no-commit-id", sha
                         ).splitlines():
            meta, path = entry.split("\t", 1)
            blob = meta.split()[3]
            landed = subprocess.run(["git", "rev-parse", "-q", "--verify",
                                     f"{branch}:{path}"], cwd=clone, capture_output=True,
                                    text=True).stdout.strip()
            if blob != landed and set(blob) != {"0"}:
                lost.append(f"{sha[:12]} on {on}: {path}")
    return lost


def test_kill_9_of_agent_reconcilers_tmux_and_prefect_loses_and_doubles_nothing(
        sol_home: Home, repo: Path, tmp_path: Path, daemon: Run) -> None:
    """Odd writs finish at once; even ones work until `go` exists, so three agents are
    always at work when something is killed, and the order of events is fixed."""
    commits, locks, violations = tmp_path / "commits.log", tmp_path / "locks", tmp_path / "v"
    go = tmp_path / "go"
    locks.mkdir()
    record_commits(Path(os.environ["HOME"]), commits)
    extra = ("forge:\n  gates:\n    - {name: ok, run: 'true', timeout: 1m}\n"
             "sentinel: {maxRespawns: 5, staleAfter: 10s}\n")
    specs = write_specs(tmp_path / "specs", world_yaml(W, repo, max_active=3, extra=extra),
                        *(writ_yaml(n, W, step(n, 0.3, locks, violations,
                                               hold=None if i % 2 else go))
                          for i, n in enumerate(WRITS)))
    sampler = Sampler(sol_home)
    started = time.monotonic()
    assert daemon("up", "-f", str(specs)).returncode == 0
    sampler.start()
    try:
        # an agent, mid-work
        victim = poll(lambda: pane_pids(sol_home), timeout=20, what="a live agent")[0]
        os.kill(victim, signal.SIGKILL)
        poll(lambda: events(sol_home, "respawned"), timeout=15, what="the agent respawned")

        # each reconciler, while writs are being cast, resolved and merged
        old = {name: poll(lambda n=name: pid_of(sol_home, n), what=name) for name in CHILDREN}
        for name in CHILDREN:
            os.kill(old[name], signal.SIGKILL)
        poll(lambda: restarted(sol_home, old), timeout=15, what="reconcilers restarted")
        assert {e.data["child"] for e in events(sol_home, "restarted")} >= set(CHILDREN)

        # the tmux server, with three agents at work and work already landed
        poll(lambda: "Merged" in phases(sol_home).values() and len(pane_pids(sol_home)) == 3,
             timeout=30, what="a merge and three agents at work")
        deaths = len(events(sol_home, "session-died"))
        subprocess.run(["tmux", "-L", sol_home.socket_name, "kill-server"], check=True)
        poll(lambda: len(events(sol_home, "session-died")) == deaths + 3, timeout=10,
             what="the three deaths recorded at once (tmux itself says nothing)")
        poll(lambda: is_degraded(sol_home), timeout=5, what="a burst of deaths: Degraded")

        # the prefect, twice: with every agent dead, then with three respawned at work
        for again in range(2):
            kill_prefect(sol_home)
            assert daemon("up", "-f", str(specs)).returncode == 0
            if again == 0:
                assert daemon("resume").returncode == 0  # what its operator does
                poll(lambda: len(pane_pids(sol_home)) == 3, timeout=20, what="respawned")
        go.touch()
        poll(lambda: set(phases(sol_home).values()) == {"Merged"}, timeout=45,
             what=f"every writ Merged (now {phases(sol_home)})")
    finally:
        sampler.stop.set()
        sampler.join(timeout=5)
    print(f"\nconverged in {time.monotonic() - started:.1f}s; {sampler.samples} samples; "
          f"{len(events(sol_home, 'session-died'))} deaths, "
          f"{len(events(sol_home, 'respawned'))} respawns, "
          f"{len(events(sol_home, 'restarted'))} reconciler restarts")

    clone = sol_home.repo(W)
    assert sorted(trailers(clone, "main")) == sorted(f"{W}/{n}" for n in WRITS)
    for name in WRITS:
        assert git(clone, "show", f"main:{name}.txt") == name
    assert commits.exists() and lost_commits(clone, "main", commits) == []
    assert sampler.samples > 50 and sampler.doubles == []
    assert not violations.exists(), violations.read_text()


def changed(path: Path, before: int) -> bool:
    return path.stat().st_mtime_ns != before


def test_the_death_watch_sees_deaths_tmux_reports_to_nobody(
        sol_home: Home, tmp_path: Path) -> None:
    """No hook here: only the pidfds can tell of an agent's death and of a kill -9 of
    the server (which runs no hook even when one is set)."""
    wake = tmp_path / "tmux-events"
    wake.touch()
    sessions = TmuxSessions(sol_home.socket_name,  # no hook_file: tmux tells nobody
                            launch_dir=sol_home.run / "launch")
    for agent in ("a", "b"):
        sessions.start(f"sol-{W}-{agent}", ["sleep", "600"], cwd=tmp_path, env={},
                       log=tmp_path / f"{agent}.log")
    watch = DeathWatch(wake)
    watch.watch(sessions, sessions.list())
    before = wake.stat().st_mtime_ns
    os.kill(sessions.pane_pid(f"sol-{W}-a") or 0, signal.SIGKILL)
    poll(lambda: changed(wake, before), timeout=5, what="the agent's death seen")

    before = wake.stat().st_mtime_ns
    server = int(subprocess.run(["tmux", "-L", sol_home.socket_name, "display-message",
                                 "-p", "#{pid}"], capture_output=True, text=True).stdout)
    os.kill(server, signal.SIGKILL)
    poll(lambda: changed(wake, before), timeout=5, what="the server's death seen")
    poll(lambda: "anon_inode:[pidfd]" not in fd_targets(), timeout=5, what="pidfds closed")


class Lagging:
    """tmux's view of a session whose process has exited but which it still shows
    alive (it has not read the pane's end yet): the same pid, again and again."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.asked = 0

    def pane_pid(self, name: str) -> int | None:
        self.asked += 1
        return self.pid


def test_a_pid_that_exited_is_never_watched_again_so_no_wake_loop(tmp_path: Path) -> None:
    wake = tmp_path / "tmux-events"
    wake.touch()
    zombie = subprocess.Popen(["true"])  # exits at once; not reaped yet: still a pid
    try:
        poll(lambda: Path(f"/proc/{zombie.pid}/stat").read_text().split()[2] == "Z",
             what="a zombie")
        tmux = Lagging(zombie.pid)
        watch = DeathWatch(wake)
        before = wake.stat().st_mtime_ns
        watch.watch(tmux, {"sol-shop-z": True})
        poll(lambda: changed(wake, before), timeout=5, what="the exit seen")
        before = wake.stat().st_mtime_ns
        for _ in range(3):
            watch.watch(tmux, {"sol-shop-z": True})  # each pass after the wake
        time.sleep(0.3)
        assert wake.stat().st_mtime_ns == before
        watch.watch(tmux, {"sol-shop-z": False})  # tmux caught up: dead, forgotten
        watch.watch(tmux, {})
        assert tmux.asked == 4
    finally:
        zombie.wait()


def fd_targets() -> list[str]:
    """What this process's file descriptors point at."""
    targets = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            targets.append(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:
            continue
    return targets


def test_an_agent_killed_mid_commit_leaves_git_locks_its_respawn_clears(
        sol_home: Home, repo: Path, tmp_path: Path, sol) -> None:
    """kill -9 of `git commit` leaves index.lock (and maybe HEAD.lock and the branch's
    ref lock): every later git command in the worktree fails on them. The respawned
    session starts only once nothing of the old one can still hold them."""
    go = tmp_path / "go"
    wait = f"while [ ! -e '{go}' ]; do sleep 0.05; done\necho done > f.txt"
    sol("apply", "-f", str(write_specs(tmp_path / "specs", world_yaml(W, repo),
                                       writ_yaml("a", W, wait))), check=True)
    sphere = Sphere(sol_home)
    try:
        agent = sphere.store.get("Writ", W, "a").status["agent"]
        worktree = sol_home.worktree(W, agent)
        gitdir = Path(git(worktree, "rev-parse", "--absolute-git-dir"))
        common = Path(git(worktree, "rev-parse", "--path-format=absolute",
                          "--git-common-dir"))
        pid = poll(lambda: sphere.sessions.pane_pid(f"sol-{W}-{agent}"), what="the agent")
        left = [gitdir / "index.lock", gitdir / "HEAD.lock", common / "refs/heads/sol/a.lock"]
        for lock in left:  # what a git commit killed at the wrong moment leaves
            lock.write_text("")
        os.kill(int(pid), signal.SIGKILL)
        go.touch()

        def landed() -> bool:
            sentinel.reconcile(sphere)
            return sphere.store.get("Writ", W, "a").phase == "Resolved"

        poll(landed, timeout=30, what="the respawned agent resolves")
        assert [e.type for e in sphere.store.events(name="a", types=["respawned",
                "session-died"])] == ["session-died", "respawned"]
        assert git(sol_home.repo(W), "show", "sol/a:f.txt") == "done"
        assert not any(lock.exists() for lock in left)
    finally:
        sphere.close()


def test_a_worktree_half_made_by_a_killed_cast_is_made_again_not_used(
        sol_home: Home, tmp_path: Path, sol) -> None:
    """kill -9 of a cast in `git worktree add` leaves a worktree git marks `locked:
    initializing`, checked out in part, without an index. An agent started in it would
    commit the missing files as deletions; no agent ever worked there, so the next cast
    makes it again."""
    files = {f"src/f{i}.txt": f"{i}\n" for i in range(20)}
    source = make_repo(tmp_path / "source", files)
    specs = write_specs(tmp_path / "specs", world_yaml(W, source))
    sol("apply", "-f", str(specs), check=True)
    clone, worktree = sol_home.repo(W), sol_home.worktree(W, "vega")
    git(clone, "worktree", "add", "--quiet", "-b", "sol/a", str(worktree), "main")
    gitdir = Path(git(worktree, "rev-parse", "--absolute-git-dir"))
    for name in list(files)[10:]:
        (worktree / name).unlink()  # the checkout was cut short
    (gitdir / "index").rename(gitdir / "index.lock")
    (gitdir / "locked").write_text("initializing\n")
    sphere = Sphere(sol_home)
    try:
        sphere.store.put_agent(W, "vega", writ="a", state="working")  # the killed cast's
        write_specs(specs, world_yaml(W, source), writ_yaml("a", W, "echo a > a.txt"))
        sol("apply", "-f", str(specs), check=True)
        assert sphere.store.get("Writ", W, "a").status["agent"] == "vega"
        poll(lambda: sphere.store.get("Writ", W, "a").phase == "Resolved", what="resolved")
        [repaired] = sphere.store.events(types=["worktree-remade"])
        assert "initializing" in repaired.message
        assert git(clone, "diff", "--name-status", "main", "sol/a") == "A\ta.txt"
        assert not (gitdir / "locked").exists()
    finally:
        sphere.close()
