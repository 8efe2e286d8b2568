"""Benchmark: cast overhead per writ beside the floor measured in the same run.

The floor is what any dispatcher must pay: a bare `git worktree add -b` plus a bare
`tmux new-session -d`. sol's cast adds the store, the tether, the persona, the log pipe
and the capacity check. Run: `python tests/bench/bench_cast.py [N]` (default 30).
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
from helpers import world_yaml, writ_yaml, write_specs  # noqa: E402

from reconciler.controllers import registry  # noqa: E402
from reconciler.core.home import Home  # noqa: E402
from reconciler.drivers.sphere import Sphere  # noqa: E402
from reconciler.specs.manifests import validate  # noqa: E402
from reconciler.specs.record import record  # noqa: E402


def run(*argv: str, cwd: Path | None = None) -> None:
    subprocess.run(argv, cwd=cwd, check=True, capture_output=True)



def floor(tmp: Path, source: Path, n: int) -> float:
    clone = tmp / "floor-clone"
    run("git", "clone", "-q", "--bare", str(source), str(clone))
    socket = f"bench-floor-{os.getpid()}"
    start = time.perf_counter()
    for i in range(n):
        wt = tmp / "floor" / f"w{i}"
        run("git", "worktree", "add", "-q", "-b", f"b{i}", str(wt), "main", cwd=clone)
        run("tmux", "-L", socket, "new-session", "-d", "-s", f"s{i}", "-c", str(wt),
            "sleep 600")
    elapsed = time.perf_counter() - start
    subprocess.run(["tmux", "-L", socket, "kill-server"], capture_output=True)
    return elapsed


def sol_cast(tmp: Path, source: Path, n: int) -> float:
    home = Home(tmp / "solhome")
    os.environ["SOL_HOME"] = str(home.root)
    world = world_yaml("bench", source, max_active=0).replace(
        "runtime: {name: script}", "runtime: {name: command, command: 'sleep 600'}")
    specs = write_specs(tmp / "specs", world, *[writ_yaml(f"w{i}", "bench") for i in range(n)])
    sphere = Sphere(home)
    # clone first so only casting is timed
    record(sphere, [m for m in validate([specs]) if m.kind == "World"])
    registry.run_owner(sphere, "consul")  # the consul child's pass: worlds, dispatch
    manifests = validate([specs])
    record(sphere, manifests)
    start = time.perf_counter()
    registry.run_owner(sphere, "consul")  # the consul child's pass: worlds, dispatch
    elapsed = time.perf_counter() - start
    cast = len(sphere.store.events(types=["cast"]))
    assert cast == n, f"only {cast} of {n} writs were cast"
    sphere.sessions.kill_server()
    return elapsed


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 30
    os.environ.pop("TMUX", None)
    with tempfile.TemporaryDirectory(prefix="solbench-") as tmpdir:
        tmp = Path(tmpdir)
        os.environ["TMUX_TMPDIR"] = str(tmp)
        source = make_repo(tmp / "source")
        base = floor(tmp, source, n)
        ours = sol_cast(tmp, source, n)
    print(f"{'writs':>6} {'floor total':>12} {'floor/writ':>11} {'sol total':>10} "
          f"{'sol/writ':>9} {'ratio':>6}")
    print(f"{n:>6} {base:>11.2f}s {base / n * 1000:>9.1f}ms {ours:>9.2f}s "
          f"{ours / n * 1000:>7.1f}ms {ours / base:>6.2f}")
    print("target: ratio <= 1.5")


if __name__ == "__main__":
    main()
