"""Benchmark: validate and plan a no-op apply of 100, 1,000 and 10,000 writs in 10 worlds.

Run `python tests/bench/bench_plan.py [SIZES...] [--profile N]`; it prints a table of
figures (not a pass/fail test, and pytest does not collect it). The target is 1,000
writs in under a second on a 2-core machine, with close to linear growth.

(a) load + validate: `manifests.load` on a directory of generated manifests.
(b) plan, no-op: the manifests are recorded once first, then what a second `sol apply`
    plans is timed: reading the store, `plan_specs` against its records, and the
    consul's dispatch plan over the same records (worlds Ready, writs Pending, with
    dependencies and caravans, so every writ's waiting reason is computed).
(c) for scale, `sol diff` end to end in a subprocess (interpreter start, imports, load,
    plan; no spec change, only clones of the fake sources and casts of ready writs).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from reconciler.controllers import consul_plan as consul  # noqa: E402
from reconciler.core.home import Home  # noqa: E402
from reconciler.core.model import READY  # noqa: E402
from reconciler.drivers.sphere import Sphere  # noqa: E402
from reconciler.specs import manifests  # noqa: E402
from reconciler.specs.changes import plan_specs  # noqa: E402
from reconciler.specs.record import record  # noqa: E402

WORLDS = 10
PER_FILE = 100
SIZES = (100, 1_000, 10_000)


def generate(directory: Path, writs: int) -> None:
    """10 worlds; writs spread evenly, two in three depending on the previous one, and
    one caravan per world over its first 20 writs in 4 phases."""
    directory.mkdir(parents=True)
    docs: list[dict[str, Any]] = []
    for w in range(WORLDS):
        docs.append({"apiVersion": "sol/v1", "kind": "World", "metadata": {"name": f"w{w}"},
                     "spec": {"source": f"/srv/git/w{w}.git", "runtime": {"name": "script"},
                              "capacity": {"maxActive": 4},
                              "forge": {"gates": [{"name": "tests", "run": "pytest -q",
                                                   "timeout": "10m"}]}}})
    per_world = [[] for _ in range(WORLDS)]
    for i in range(writs):
        w = i % WORLDS
        name = f"writ-{i}"
        spec: dict[str, Any] = {
            "title": f"Do thing number {i}",
            "description": f"Change module {i} so that it does the thing.\nDone when tests pass.",
            "kind": "analysis" if i % 7 == 0 else "code",
            "priority": 1 + i % 3,
        }
        if per_world[w] and i % 3:
            spec["dependsOn"] = [per_world[w][-1]]
        per_world[w].append(name)
        docs.append({"apiVersion": "sol/v1", "kind": "Writ",
                     "metadata": {"name": name, "world": f"w{w}"}, "spec": spec})
    for w, names in enumerate(per_world):
        head = names[:20]
        if head:
            phases = [head[i:i + 5] for i in range(0, len(head), 5)]
            docs.append({"apiVersion": "sol/v1", "kind": "Caravan",
                         "metadata": {"name": f"batch-{w}", "world": f"w{w}"},
                         "spec": {"commissioned": True, "phases": phases}})
    for n in range(0, len(docs), PER_FILE):
        text = "---\n".join(_yaml(doc) for doc in docs[n:n + PER_FILE])
        (directory / f"specs-{n // PER_FILE:04d}.yaml").write_text(text)


def _yaml(doc: dict[str, Any]) -> str:
    """Block-style YAML as people write it (JSON values inline for lists and maps)."""
    lines = [f"apiVersion: {doc['apiVersion']}", f"kind: {doc['kind']}", "metadata:"]
    lines += [f"  {k}: {v}" for k, v in doc["metadata"].items()]
    lines.append("spec:")
    for key, value in doc["spec"].items():
        if isinstance(value, str) and "\n" in value:
            lines.append(f"  {key}: |")
            lines += [f"    {line}" for line in value.splitlines()]
        else:
            lines.append(f"  {key}: {json.dumps(value)}")
    return "\n".join(lines) + "\n"


def best_of(repeat: int, fn: Callable[[], Any]) -> tuple[float, Any]:
    best, result = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def no_op_plan(sphere: Sphere, desired: list) -> tuple[list, consul.Dispatch]:
    """What a second apply plans: the spec plan and the dispatch plan, from the store."""
    records = sphere.store.list()
    actions = plan_specs(desired, records)
    snap = consul.Snapshot(
        worlds={r.name: r for r in records if r.kind == "World"},
        writs={(r.world, r.name): r for r in records if r.kind == "Writ"},
        caravans=tuple(r for r in records if r.kind == "Caravan"),
    )
    return actions, consul.plan_dispatch(snap)


def measure(root: Path, writs: int, repeat: int) -> dict[str, float]:
    specs = root / f"specs-{writs}"
    generate(specs, writs)
    load_s, result = best_of(repeat, lambda: manifests.load([specs]))
    assert result.ok, result.problems[:5]
    desired = result.manifests
    sphere = Sphere(Home(root / f"home-{writs}"))
    try:
        record(sphere, desired)
        for world in sphere.store.list("World"):
            sphere.store.set_status(world.key, phase=READY, reason="Cloned", message="bench")
        list_s, records = best_of(repeat, lambda: sphere.store.list())
        spec_s, actions = best_of(repeat, lambda: plan_specs(desired, records))
        assert actions == [], actions[:3]
        plan_s, (_, dispatch) = best_of(repeat, lambda: no_op_plan(sphere, desired))
        assert len(dispatch.ready) + len(dispatch.waiting) == writs
    finally:
        sphere.close()
    cli_s, _ = best_of(1, lambda: cli_diff(sphere.home, specs))
    return {"writs": writs, "docs": len(desired), "load": load_s, "list": list_s,
            "spec": spec_s, "plan": plan_s, "total": load_s + plan_s, "cli": cli_s}


def cli_diff(home: Home, specs: Path) -> None:
    env = {**os.environ, "SOL_HOME": str(home.root), "TMUX_TMPDIR": str(home.root)}
    result = subprocess.run([sys.executable, "-m", "reconciler", "diff", "-f", str(specs),
                             "-o", "json"], capture_output=True, text=True, env=env)
    assert result.returncode == 2, result.stderr
    kinds = {a["kind"] for a in json.loads(result.stdout)["actions"]}
    assert kinds <= {"clone", "cast", "wait", "caravan"}, kinds  # no spec change recorded


def profile(root: Path, writs: int) -> str:
    specs = root / f"profile-{writs}"
    generate(specs, writs)
    desired = manifests.load([specs]).manifests
    sphere = Sphere(Home(root / f"profile-home-{writs}"))
    record(sphere, desired)
    profiler = cProfile.Profile()
    profiler.enable()
    manifests.load([specs])
    no_op_plan(sphere, desired)
    profiler.disable()
    sphere.close()
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("cumulative").print_stats(25)
    return out.getvalue()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sizes", nargs="*", type=int, default=list(SIZES))
    parser.add_argument("--repeat", type=int, default=3, help="best of N runs (default 3)")
    parser.add_argument("--profile", type=int, metavar="N", help="also cProfile N writs")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="sol-bench-") as tmp:
        for writs in args.sizes:
            rows.append(measure(Path(tmp), writs, args.repeat))
        report = profile(Path(tmp), args.profile) if args.profile else ""
    print("(a) load+validate; (b) plan of a no-op apply = store read + plan_specs + dispatch;"
          " total = a + b; best of", args.repeat)
    print(f"{'writs':>7} {'docs':>6} {'load+validate':>14} {'store read':>11} "
          f"{'plan_specs':>11} {'plan (all)':>11} {'total':>8} {'per writ':>9} {'sol diff':>9}")
    for r in rows:
        print(f"{r['writs']:>7,} {r['docs']:>6,} {r['load']:>13.3f}s {r['list']:>10.3f}s "
              f"{r['spec']:>10.3f}s {r['plan']:>10.3f}s {r['total']:>7.3f}s "
              f"{r['total'] / r['writs'] * 1e3:>7.3f}ms {r['cli']:>8.2f}s")
    if len(rows) > 1:
        first, last = rows[0], rows[-1]
        growth = (last["total"] / first["total"]) / (last["writs"] / first["writs"])
        print(f"growth {first['writs']:,} -> {last['writs']:,}: time x"
              f"{last['total'] / first['total']:.1f} for writs x{last['writs'] // first['writs']}"
              f" (1.0 = linear: {growth:.2f})")
    thousand = next((r for r in rows if r["writs"] == 1_000), None)
    if thousand:
        verdict = "met" if thousand["total"] < 1.0 else "MISSED"
        print(f"target 1,000 writs < 1 s: {verdict} ({thousand['total']:.3f}s)")
    if report:
        print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
