"""Benchmark: the forge's total time for 20 resolved writs with a trivial 1-second gate.

Four runs, each in a fresh home: the floor (20 times a bare `git merge --squash` plus
the gate), the forge one writ at a time (`batch: {max: 1}`, target: at most 1.3x the
floor), the forge with batches (default `max: 8`; issue 14's target: under 5 gate
times), and batches with 2 of the 20 writs breaking the gate (target: the 18 others
land, the 2 are sent back, within 8 gate times), bisected one probe at a time and with
`concurrency` 4 and 7 (every cut of a batch of 8 at once). Gate runs are counted from
the forge's gate events; `in G` is the wall time in gate times.

Run: `python tests/bench/bench_forge.py [N] [GATE_SECONDS]` (defaults 20 and 1).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from conftest import make_repo  # noqa: E402

from reconciler.controllers import forge  # noqa: E402
from reconciler.core.home import Home  # noqa: E402
from reconciler.core.model import RESOLVED, Manifest  # noqa: E402
from reconciler.drivers import worktrees  # noqa: E402
from reconciler.drivers.sphere import Sphere  # noqa: E402

W = "bench"
IDENTITY = ["-c", "user.name=bench", "-c", "user.email=bench@sol.invalid"]


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", *IDENTITY, *args], cwd=cwd, check=True,
                          capture_output=True, text=True).stdout.strip()


def resolved_writs(sphere: Sphere, source: Path, n: int, gate_seconds: float,
                   batch: dict | None = None, broken: tuple[int, ...] = ()) -> Path:
    """A Ready world with n writs Resolved, each one commit on its branch, MRs queued;
    the writs in `broken` add a file the gate refuses."""
    store, home = sphere.store, sphere.home
    run = f"sleep {gate_seconds}; ! ls broken*.txt 2>/dev/null"
    spec = {"source": str(source), "branch": "main",
            "forge": {"gates": [{"name": "gate", "run": run, "timeout": "1m"}],
                      **({"batch": batch} if batch else {})}}
    store.record_spec(Manifest("World", W, "", spec), initial_phase="Ready")
    repo = home.repo(W)
    worktrees.clone(str(source), repo, "main")
    for i in range(n):
        name, agent = f"w{i}", f"agent{i}"
        store.record_spec(Manifest("Writ", name, W, {"title": f"Writ {i}"}),
                          initial_phase="Working")
        wt = home.worktree(W, agent)
        base = worktrees.add_worktree(repo, wt, f"sol/{name}", "refs/heads/main")
        (wt / f"{'broken' if i in broken else 'file'}{i}.txt").write_text(f"{i}\n")
        worktrees.commit_all(wt, f"work {i}", author_name=agent, author_email="a@sol.invalid")
        store.set_status(("Writ", W, name), phase=RESOLVED, base=base, agent=agent,
                         branch=f"sol/{name}", attempt=1, resolvedAt=time.time())
        store.put_agent(W, agent, writ=name, state="resolved")
        store.add_mr(W, name, branch=f"sol/{name}", base=base, agent=agent, attempt=1,
                     priority=2)
    return repo


def floor(repo: Path, n: int, gate_seconds: float, tmp: Path) -> float:
    """The least a one-at-a-time merge queue pays: squash, commit, the gate, move."""
    wt = tmp / "floor-wt"
    git(repo, "worktree", "add", "-q", "--detach", str(wt), "refs/heads/main")
    git(repo, "branch", "-q", "floor-main", "refs/heads/main")
    start = time.perf_counter()
    for i in range(n):
        git(wt, "reset", "-q", "--hard", "floor-main")
        git(wt, "merge", "-q", "--squash", f"sol/w{i}")
        git(wt, "commit", "-q", "-m", f"Writ {i}")
        subprocess.run(["bash", "-c", f"sleep {gate_seconds}"], cwd=wt, check=True)
        git(wt, "update-ref", "refs/heads/floor-main", "HEAD")
    return time.perf_counter() - start


def run(n: int, gate_seconds: float, batch: dict | None,
        broken: tuple[int, ...] = (), with_floor: bool = False) -> tuple[float, int, float]:
    """(forge wall time, gate runs, floor time or 0) in a fresh home."""
    with tempfile.TemporaryDirectory(prefix="solbench-") as tmpdir:
        tmp = Path(tmpdir)
        os.environ["SOL_HOME"] = str(tmp / "home")
        os.environ["TMUX_TMPDIR"] = str(tmp)
        os.environ.pop("TMUX", None)
        sphere = Sphere(Home(tmp / "home"))
        try:
            repo = resolved_writs(sphere, make_repo(tmp / "source"), n, gate_seconds, batch,
                                  broken)
            base = floor(repo, n, gate_seconds, tmp) if with_floor else 0.0
            start = time.perf_counter()
            forge.reconcile(sphere, W)
            ours = time.perf_counter() - start
            phases = {w.name: w.phase for w in sphere.store.list("Writ", W)}
            landed = [w for w, p in phases.items() if p == "Merged"]
            back = sorted(w for w, p in phases.items() if p == "Pending")
            assert len(landed) == n - len(broken), f"{len(landed)} of {n} writs merged"
            assert back == sorted(f"w{i}" for i in broken), back
            gate_runs = len(sphere.store.events(world=W, types=["gate-passed", "gate-failed"]))
        finally:
            sphere.close()
    return ours, gate_runs, base


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 20
    g = float(sys.argv[2]) if len(sys.argv) > 2 else 1.0
    broken = (n // 3, (2 * n) // 3)  # 6 and 13 of 20: inside batches, not at their ends
    serial, serial_runs, base = run(n, g, {"max": 1}, with_floor=True)
    rows = [("one at a time (max 1)", serial, serial_runs, "ratio <= 1.3 to the floor"),
            ("batches (max 8)", *run(n, g, None)[:2], "< 5 G"),
            (f"2 culprits {broken}, concurrency 1", *run(n, g, None, broken)[:2], "<= 8 G"),
            (f"2 culprits {broken}, concurrency 4",
             *run(n, g, {"concurrency": 4}, broken)[:2], "<= 8 G"),
            (f"2 culprits {broken}, concurrency 7",
             *run(n, g, {"concurrency": 7}, broken)[:2], "<= 8 G")]
    print(f"{n} writs, gate {g:.1f}s (G); floor {base:.2f}s (the serial floor is "
          f"{n} G = {n * g:.0f}s)")
    print(f"{'run':<36} {'wall':>8} {'in G':>6} {'gates':>6} {'/floor':>7}  target")
    for name, wall, runs, target in rows:
        print(f"{name:<36} {wall:>7.2f}s {wall / g:>6.1f} {runs:>6} {wall / base:>7.2f}  "
              f"{target}")


if __name__ == "__main__":
    main()
