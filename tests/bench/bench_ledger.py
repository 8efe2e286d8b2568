"""Benchmark: the ledger pass over 1,000 transcripts of 1 MB each.

Run `python tests/bench/bench_ledger.py [--files N] [--mb M]`; it prints a table of
figures (not a pass/fail test, and pytest does not collect it). The target: a pass when
nothing changed (what the consul pays every resync) costs under 1 s; it is a stat a file
and one query, so it does not grow with the bytes already read.

(a) first read: every file read and parsed (done once, ever), as the consul does it:
    passes of the ledger reconciler (observe, plan, act) of at most ledger.PASS_BYTES
    each, until one plans nothing; the total, the number of passes and the longest one
    (what dispatch waits for at most)
(b) no change: observe + plan of the ledger reconciler, then `ledger.sync` (which stats
    again and reads nothing), best of 3
(c) one file appended to: the incremental pass, reading the new bytes only
The files live in a temporary SOL_HOME, 20 outposts of 50 conversations, removed at the end.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from reconciler.controllers import ledger as controller  # noqa: E402
from reconciler.core.home import Home  # noqa: E402
from reconciler.drivers import ledger  # noqa: E402
from reconciler.drivers.sphere import Sphere  # noqa: E402

AGENTS = 20


def transcript_line(home: Home, agent: str, mid: str, padding: int) -> bytes:
    """An assistant line as Claude Code writes it, padded to about its real size."""
    return (json.dumps({
        "parentUuid": None, "isSidechain": False, "userType": "external",
        "cwd": str(home.worktree("bench", agent)), "sessionId": "s", "version": "2.1.197",
        "gitBranch": f"sol/writ-{agent}", "type": "assistant", "uuid": f"u-{mid}",
        "timestamp": "2025-11-20T10:00:00.000Z", "requestId": f"req_{mid}",
        "message": {"id": mid, "type": "message", "role": "assistant",
                    "model": "claude-sonnet-4-5-20250929",
                    "content": [{"type": "text", "text": "x" * padding}],
                    "usage": {"input_tokens": 3, "output_tokens": 200,
                              "cache_creation_input_tokens": 1000,
                              "cache_read_input_tokens": 20000}}},
        separators=(",", ":")) + "\n").encode()


def populate(home: Home, files: int, size: int) -> None:
    for index in range(files):
        agent = f"a{index % AGENTS}"
        directory = home.outpost("bench", agent) / "claude" / "projects" / "p"
        directory.mkdir(parents=True, exist_ok=True)
        chunks, written, n = [], 0, 0
        while written < size:
            line = transcript_line(home, agent, f"msg_{index}_{n}", 1500)
            chunks.append(line)
            written, n = written + len(line), n + 1
        (directory / f"session-{index}.jsonl").write_bytes(b"".join(chunks))


def timed(action) -> float:  # noqa: ANN001 - any callable
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=1000)
    parser.add_argument("--mb", type=float, default=1.0)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="sol-bench-ledger-"))
    try:
        home = Home(root / "home")
        sphere = Sphere(home)
        made = timed(lambda: populate(home, args.files, int(args.mb * 1_000_000)))
        passes: list[float] = []
        while True:
            started = time.perf_counter()
            result = controller.RECONCILER.reconcile(sphere)
            if not result.actions:
                break
            passes.append(time.perf_counter() - started)
        first = sum(passes)
        rows = sphere.store._all("SELECT COUNT(*) FROM usage")[0][0]

        def idle() -> None:
            plan = controller.plan(controller.observe(sphere))
            assert plan.actions == (), plan.actions
            assert ledger.sync(home, sphere.store, time.time()) == 0

        still = min(timed(idle) for _ in range(3))
        target = next((home.outposts("bench") / "a0" / "claude" / "projects" / "p").iterdir())
        with target.open("ab") as handle:
            handle.write(transcript_line(home, "a0", "msg_new", 1500))
        grown = timed(lambda: ledger.sync(home, sphere.store, time.time()))
        print(f"transcripts: {args.files} x {args.mb:g} MB ({rows} responses), "
              f"written in {made:.1f} s")
        print(f"(a) first read, in {len(passes)} passes of {ledger.PASS_BYTES >> 20} MiB "
              f"{first:8.3f} s   longest pass {max(passes, default=0):.3f} s, "
              f"mean {first / max(1, len(passes)):.3f} s")
        print(f"(b) no change (plan + sync), best of 3 {still:8.3f} s   target < 1 s: "
              f"{'ok' if still < 1.0 else 'MISSED'}")
        print(f"(c) one file appended to               {grown:8.3f} s")
        sphere.store.close()
        return 0 if still < 1.0 else 1
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
