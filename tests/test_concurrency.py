"""Two `sol apply` processes at once on one SOL_HOME (invariant 6): both succeed, and the
sphere holds one consistent state: each object once, one clone, each change applied once."""

from __future__ import annotations

import multiprocessing
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from reconciler.core.errors import SolError
from reconciler.core.home import Home
from reconciler.core.store import Store
from tests.conftest import git
from tests.helpers import world_yaml, writ_yaml, write_specs

SUSPENDED = "suspend: true\n"
WRITS = [f"writ-{i}" for i in range(20)]


def specs(directory: Path, repo: Path, title: str) -> Path:
    docs = [world_yaml("shop", repo, extra=SUSPENDED)]
    docs += [writ_yaml(name, "shop", title=f"{title} {name}") for name in WRITS]
    return write_specs(directory, *docs)


def apply_together(*paths: Path) -> list[subprocess.CompletedProcess[str]]:
    """Start every apply before waiting for any."""
    procs = [subprocess.Popen([sys.executable, "-m", "reconciler", "apply", "-f", str(p)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for p in paths]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        results.append(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
    return results


def events(home: Home) -> list[tuple[str, str, str, str]]:
    store = Store(home.db)
    try:
        return [(e.type, e.kind, e.name, str(e.data.get("generation", "")))
                for e in store.events()]
    finally:
        store.close()


@pytest.mark.parametrize("round_", range(3))
def test_two_applies_of_the_same_manifests(sol_home: Home, tmp_path: Path, repo: Path,
                                           round_: int) -> None:
    path = specs(tmp_path / "specs", repo, "Do")
    for result in apply_together(path, path):
        assert result.returncode == 0, result.stderr
        assert "Traceback" not in result.stderr
    store = Store(sol_home.db)
    records = store.list()
    store.close()
    keys = [r.key for r in records]
    assert len(keys) == len(set(keys)) == 1 + len(WRITS)
    assert {r.phase for r in records if r.kind == "Writ"} == {"Pending"}
    assert [p.name for p in sol_home.world_dir("shop").iterdir()] == ["repo"]
    assert git(sol_home.repo("shop"), "rev-parse", "refs/heads/main") == git(
        repo, "rev-parse", "HEAD")
    counts = Counter(events(sol_home))
    applied = [k for k in counts if k[0] == "applied"]
    assert len(applied) == 1 + len(WRITS)
    assert all(counts[k] == 1 for k in applied), "a change applied twice"
    assert sum(n for k, n in counts.items() if k[0] == "cloned") == 1


def test_two_applies_of_different_manifests(sol_home: Home, tmp_path: Path,
                                            repo: Path) -> None:
    """Last writer wins per object, never a mix of the two inside one record."""
    first = specs(tmp_path / "a", repo, "First")
    second = specs(tmp_path / "b", repo, "Second")
    for result in apply_together(first, second):
        assert result.returncode == 0, result.stderr
    store = Store(sol_home.db)
    writs = store.list("Writ")
    store.close()
    assert len(writs) == len(WRITS)
    prefixes = {w.spec["title"].split()[0] for w in writs}
    assert prefixes == {"First"} or prefixes == {"Second"}, prefixes
    for writ in writs:
        assert writ.spec["title"].endswith(writ.name)
    counts = Counter(events(sol_home))
    assert all(n == 1 for k, n in counts.items() if k[0] == "applied")


def _open_at_once(path: str, barrier: multiprocessing.synchronize.Barrier,
                  errors: multiprocessing.Queue) -> None:
    barrier.wait()
    try:
        Store(Path(path)).close()
        errors.put("")
    except SolError as exc:
        errors.put(exc.message)


def test_first_opens_at_the_same_instant(tmp_path: Path) -> None:
    """Every `sol` process opens the store first: on a fresh SOL_HOME two of them switch
    the new file to WAL together, which SQLite can refuse at once as 'locked'."""
    context = multiprocessing.get_context("fork")
    failures = []
    for round_ in range(60):
        path = tmp_path / f"round-{round_}" / "sol.db"
        barrier, errors = context.Barrier(3), context.Queue()
        procs = [context.Process(target=_open_at_once, args=(str(path), barrier, errors))
                 for _ in range(3)]
        for proc in procs:
            proc.start()
        failures += [m for m in (errors.get(timeout=60) for _ in procs) if m]
        for proc in procs:
            proc.join(timeout=60)
    assert failures == []
