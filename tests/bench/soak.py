"""Soak (not in CI): many writs under a daemon while random processes are killed.

For MINUTES, every 1-5 s (`--pause`), one of: kill -9 of a live agent, of a reconciler
(consul, sentinel, forge, notifier), of the tmux server, or of the prefect (then
`sol up` again after 0-3 s). New writs are saved into the watched specs directory as it
goes (6 at most every 15 s, when fewer than 8 wait), so work never runs out. Whenever
the burst of deaths makes the sphere Degraded, the soak does what its operator would:
`sol resume`. Then the chaos stops and the sphere must settle.

Checked at the end (exit 1 if any fails):
- every writ reached a terminal phase (Merged, or Failed with its branch kept);
- every Merged writ is on the target exactly once (one `Sol-Writ:` commit);
- every commit an agent made on a writ branch (a post-commit hook records each) has its
  content on the target or is on a kept branch;
- no writ ever ran twice at once: neither in tmux (sampled every 50 ms) nor inside the
  agents (each block holds a flock named after its writ).

Run: `python tests/bench/soak.py [--minutes 3] [--writs 30] [--pause 1 5] [--seed N]
[--keep]`.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from conftest import make_repo  # noqa: E402
from helpers import world_yaml, writ_yaml, write_specs  # noqa: E402
from test_durability import (  # noqa: E402
    Sampler,
    W,
    lost_commits,
    pane_pids,
    phases,
    record_commits,
    step,
    trailers,
)

from reconciler.core import degraded  # noqa: E402
from reconciler.core.home import Home  # noqa: E402
from reconciler.core.store import Store  # noqa: E402
from reconciler.daemon.procs import is_ours, read_pid  # noqa: E402
from reconciler.drivers.processes import pid_alive  # noqa: E402

TERMINAL = {"Merged", "Failed", "Cancelled", "Done"}
CHILDREN = ("consul", "notifier", f"sentinel-{W}", f"forge-{W}")
SETTLE = 300.0  # seconds the sphere gets to finish once the chaos stops


def sol(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([sys.executable, "-m", "reconciler", *args], capture_output=True,
                          text=True, timeout=120)
    if check and done.returncode != 0:
        raise SystemExit(f"sol {' '.join(args)} failed: {done.stderr.strip()}")
    return done



class Soak:
    def __init__(self, tmp: Path, rng: random.Random) -> None:
        self.tmp, self.rng = tmp, rng
        self.home = Home(tmp / "home")
        self.specs = tmp / "specs"
        self.locks, self.violations = tmp / "locks", tmp / "violations"
        self.commits = tmp / "commits.log"
        self.writs: list[str] = []
        self.kills: Counter[str] = Counter()
        self.resumes = 0

    def setup(self, writs: int) -> None:
        self.locks.mkdir()
        userhome = self.tmp / "userhome"
        userhome.mkdir()
        record_commits(userhome, self.commits)
        os.environ.update(HOME=str(userhome), SOL_HOME=str(self.home.root),
                          TMUX_TMPDIR=str(self.tmp), GIT_CONFIG_NOSYSTEM="1",
                          GIT_AUTHOR_NAME="s", GIT_AUTHOR_EMAIL="s@s",
                          GIT_COMMITTER_NAME="s", GIT_COMMITTER_EMAIL="s@s")
        for var in ("TMUX", "TMUX_PANE"):
            os.environ.pop(var, None)
        source = make_repo(self.tmp / "source")
        extra = ("forge:\n  gates:\n    - {name: ok, run: 'sleep 0.2', timeout: 1m}\n"
                 "sentinel: {maxRespawns: 10, staleAfter: 20s}\n")
        write_specs(self.specs, world_yaml(W, source, max_active=4, extra=extra))
        self.add(writs)

    def add(self, count: int) -> None:
        """Save `count` new writs in one new manifest file, as a planner would."""
        names = [f"w{len(self.writs) + i}" for i in range(count)]
        docs = []
        for name in names:
            seconds = round(self.rng.uniform(0.5, 6.0), 1)
            docs.append(writ_yaml(name, W, step(name, seconds, self.locks, self.violations)))
        (self.specs / f"batch-{len(self.writs)}.yaml").write_text("---\n".join(docs))
        self.writs += names

    def pid(self, name: str) -> int | None:
        pid = read_pid(self.home.run / f"{name}.pid")
        return pid if pid and is_ours(pid, self.home) else None

    def chaos(self) -> str:
        """One random kill; what it was."""
        target = self.rng.choice(["agent", "agent", "child", "child", "tmux", "prefect"])
        if target == "agent":
            pids = pane_pids(self.home)
            if pids:
                os.kill(self.rng.choice(pids), signal.SIGKILL)
                return self.count("agent")
        elif target == "child":
            name = self.rng.choice(CHILDREN)
            pid = self.pid(name)
            if pid:
                os.kill(pid, signal.SIGKILL)
                return self.count(name)
        elif target == "tmux":
            done = subprocess.run(["tmux", "-L", self.home.socket_name, "kill-server"],
                                  capture_output=True)
            if done.returncode == 0:
                return self.count("tmux server")
        else:
            pid = self.pid("prefect")
            if pid:
                os.kill(pid, signal.SIGKILL)
                time.sleep(self.rng.uniform(0.0, 3.0))  # the daemon down a while
                self.up()
                return self.count("prefect")
        return "nothing to kill"

    def count(self, what: str) -> str:
        self.kills[what] += 1
        return what

    def up(self) -> None:
        """`sol up`; a prefect killed a moment ago may still be stopping its children."""
        for _ in range(20):
            if sol("up", "-f", str(self.specs), check=False).returncode == 0:
                return
            time.sleep(0.5)
        sol("up", "-f", str(self.specs))

    def resume_if_degraded(self) -> None:
        store = Store(self.home.db)
        try:
            held = degraded.state(store) is not None
        finally:
            store.close()
        if held:
            sol("resume")
            self.resumes += 1

    def settled(self) -> bool:
        now = phases(self.home)
        return len(now) == len(self.writs) and set(now.values()) <= TERMINAL


def check(soak: Soak, sampler: Sampler) -> list[str]:
    problems = []
    now = phases(soak.home)
    stuck = {n: p for n, p in now.items() if p not in TERMINAL}
    if stuck or len(now) != len(soak.writs):
        problems.append(f"not terminal: {stuck}; {len(now)}/{len(soak.writs)} recorded")
    clone = soak.home.repo(W)
    landed = Counter(trailers(clone, "main"))
    merged = {n for n, p in now.items() if p == "Merged"}
    twice = {k: v for k, v in landed.items() if v > 1}
    if twice:
        problems.append(f"landed more than once: {twice}")
    missing = {n for n in merged if landed[f"{W}/{n}"] != 1}
    if missing:
        problems.append(f"Merged without exactly one commit on main: {sorted(missing)}")
    for name in now:
        if now[name] == "Failed":
            branch = subprocess.run(["git", "rev-parse", "-q", "--verify",
                                     f"refs/heads/sol/{name}"], cwd=clone,
                                    capture_output=True).returncode == 0
            if not branch:
                problems.append(f"{name} is Failed and its branch is gone")
    lost = lost_commits(clone, "main", soak.commits) if soak.commits.exists() else []
    if lost:
        problems.append(f"work lost: {lost}")
    if sampler.doubles:
        problems.append(f"two live sessions on one writ: {sampler.doubles[:5]}")
    if soak.violations.exists():
        problems.append(f"a writ ran twice at once: {soak.violations.read_text()!r}")
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=3.0)
    parser.add_argument("--writs", type=int, default=30)
    parser.add_argument("--seed", type=int, default=int(time.time()))
    parser.add_argument("--pause", type=float, nargs=2, default=(1.0, 5.0),
                        metavar=("MIN", "MAX"), help="seconds between kills (default 1 5)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    tmp = Path(tempfile.mkdtemp(prefix="solsoak-"))
    soak = Soak(tmp, rng)
    soak.setup(args.writs)
    print(f"soak: seed {args.seed}, {args.writs} writs, {args.minutes:g} min of chaos, in {tmp}")
    soak.up()
    sampler = Sampler(soak.home)
    sampler.start()
    started = time.monotonic()
    problems: list[str] = []
    try:
        next_batch = started + 15
        while time.monotonic() - started < args.minutes * 60:
            time.sleep(rng.uniform(*args.pause))
            what = soak.chaos()
            soak.resume_if_degraded()
            done = Counter(phases(soak.home).values())
            if time.monotonic() > next_batch and done["Pending"] < 8:
                soak.add(6)  # more work only as it is taken: the end must stay reachable
                next_batch = time.monotonic() + 15
            print(f"  {time.monotonic() - started:6.1f}s killed {what:<16} "
                  f"{dict(sorted(done.items()))}", flush=True)
        chaos_over = time.monotonic()
        soak.up()
        deadline = chaos_over + SETTLE
        while not soak.settled() and time.monotonic() < deadline:
            soak.resume_if_degraded()
            time.sleep(1.0)
        print(f"settled {time.monotonic() - chaos_over:.1f}s after the chaos stopped")
    finally:
        sampler.stop.set()
        sampler.join(timeout=5)
        problems = check(soak, sampler)
        events = Store(soak.home.db)
        try:
            counts = Counter(e.type for e in events.events(
                types=["session-died", "respawned", "restarted", "recovered", "degraded",
                       "sent-back", "failed", "merged"]))
        finally:
            events.close()
        sol("down", check=False)
        subprocess.run(["tmux", "-L", soak.home.socket_name, "kill-server"],
                       capture_output=True)
        for pid in filter(None, (read_pid(p) for p in soak.home.run.glob("*.pid"))):
            if pid_alive(pid) and is_ours(pid, soak.home):
                os.kill(pid, signal.SIGKILL)
    print(f"kills: {dict(soak.kills)}; resumes: {soak.resumes}")
    print(f"events: {dict(sorted(counts.items()))}")
    print(f"phases: {dict(Counter(phases(soak.home).values()))} of {len(soak.writs)} writs; "
          f"{sampler.samples} samples of tmux")
    for problem in problems:
        print(f"FAIL: {problem}")
    if not problems:
        print("OK: every writ terminal, each landed once, no work lost, none ran twice")
    if problems or args.keep:
        print(f"kept {tmp}")
    else:
        shutil.rmtree(tmp, ignore_errors=True)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
