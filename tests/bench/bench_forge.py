"""Benchmark: the forge's total time for 20 resolved writs with a trivial 1-second gate,
beside the floor measured in the same run (20 times a bare `git merge --squash` plus the
gate), and their ratio. Target: at most 1.3x.

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

from reconciler.controllers import forge
from reconciler.core.home import Home  # noqa: E402
from reconciler.core.model import RESOLVED, Manifest  # noqa: E402
from reconciler.drivers import worktrees  # noqa: E402
from reconciler.drivers.sphere import Sphere  # noqa: E402

W = "bench"
IDENTITY = ["-c", "user.name=bench", "-c", "user.email=bench@sol.invalid"]


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", *IDENTITY, *args], cwd=cwd, check=True,
                          capture_output=True, text=True).stdout.strip()



def resolved_writs(sphere: Sphere, source: Path, n: int, gate_seconds: float) -> Path:
    """A Ready world with n writs Resolved, each one commit on its branch, MRs queued."""
    store, home = sphere.store, sphere.home
    spec = {"source": str(source), "branch": "main",
            "forge": {"gates": [{"name": "gate", "run": f"sleep {gate_seconds}",
                                 "timeout": "1m"}]}}
    store.record_spec(Manifest("World", W, "", spec), initial_phase="Ready")
    repo = home.repo(W)
    worktrees.clone(str(source), repo, "main")
    for i in range(n):
        name, agent = f"w{i}", f"agent{i}"
        store.record_spec(Manifest("Writ", name, W, {"title": f"Writ {i}"}),
                          initial_phase="Working")
        wt = home.worktree(W, agent)
        base = worktrees.add_worktree(repo, wt, f"sol/{name}", "refs/heads/main")
        (wt / f"file{i}.txt").write_text(f"{i}\n")
        worktrees.commit_all(wt, f"work {i}", author_name=agent, author_email="a@sol.invalid")
        store.set_status(("Writ", W, name), phase=RESOLVED, base=base, agent=agent,
                         branch=f"sol/{name}", attempt=1, resolvedAt=time.time())
        store.put_agent(W, agent, writ=name, state="resolved")
        store.add_mr(W, name, branch=f"sol/{name}", base=base, agent=agent, attempt=1,
                     priority=2)
    return repo


def floor(repo: Path, n: int, gate_seconds: float, tmp: Path) -> float:
    """The least any merge queue pays: squash, commit, the gate, move the target."""
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


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 20
    gate_seconds = float(sys.argv[2]) if len(sys.argv) > 2 else 1.0
    with tempfile.TemporaryDirectory(prefix="solbench-") as tmpdir:
        tmp = Path(tmpdir)
        os.environ["SOL_HOME"] = str(tmp / "home")
        os.environ["TMUX_TMPDIR"] = str(tmp)
        os.environ.pop("TMUX", None)
        sphere = Sphere(Home(tmp / "home"))
        repo = resolved_writs(sphere, make_repo(tmp / "source"), n, gate_seconds)
        base = floor(repo, n, gate_seconds, tmp)
        start = time.perf_counter()
        forge.reconcile(sphere, W)
        ours = time.perf_counter() - start
        merged = sum(1 for w in sphere.store.list("Writ", W) if w.phase == "Merged")
        assert merged == n, f"only {merged} of {n} writs merged"
    print(f"{'writs':>6} {'gate':>5} {'floor':>8} {'floor/writ':>11} {'forge':>8} "
          f"{'forge/writ':>11} {'ratio':>6}")
    print(f"{n:>6} {gate_seconds:>4.1f}s {base:>7.2f}s {base / n:>10.3f}s {ours:>7.2f}s "
          f"{ours / n:>10.3f}s {ours / base:>6.2f}")
    print("target: ratio <= 1.3")


if __name__ == "__main__":
    main()
