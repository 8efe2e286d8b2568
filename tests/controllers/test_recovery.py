"""A rebuilt store is recovered from disk: nothing that landed lands again, nothing that
runs is cast twice (issue 10, point 1)."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import git, poll
from helpers import tmux_sessions, world_yaml, writ_status, writ_yaml, write_specs
from test_prefect import daemon_commands

from reconciler.core.home import Home
from reconciler.core.store import Store


def events(home: Home, *types: str) -> list:
    store = Store(home.db)
    try:
        return store.events(types=list(types))
    finally:
        store.close()


def test_a_rebuilt_store_records_landed_writs_merged_and_adopts_running_ones(
        sol_home: Home, repo: Path, tmp_path: Path) -> None:
    landed = ["a", "b", "c"]
    specs = write_specs(tmp_path / "specs", world_yaml("shop", repo),
                        *(writ_yaml(n, "shop", f"echo {n} > {n}.txt") for n in landed),
                        writ_yaml("slow", "shop", "sleep 600"))
    clone = sol_home.repo("shop")
    with daemon_commands(sol_home, tmp_path) as sol:
        assert sol("up", "-f", str(specs)).returncode == 0
        poll(lambda: all(writ_status(sol_home, "shop", n).phase == "Merged" for n in landed),
             timeout=90, what="three writs merged")
        slow = poll(lambda: (r := writ_status(sol_home, "shop", "slow")).phase == "Working"
                    and r, what="writ slow working")
        assert sol("down").returncode == 0
        for suffix in ("", "-wal", "-shm"):
            path = Path(f"{sol_home.db}{suffix}")
            if path.exists():
                path.rename(f"{path}.broken")
        assert sol("up", "-f", str(specs)).returncode == 0
        poll(lambda: len(events(sol_home, "recovered-merged")) == 3 and
             events(sol_home, "adopted"), timeout=60, what="the store recovered from disk")
        for name in landed:
            record = writ_status(sol_home, "shop", name)
            assert record.phase == "Merged" and record.reason == "RecoveredFromTarget"
        adopted = writ_status(sol_home, "shop", "slow")
        assert adopted.phase == "Working"
        assert adopted.status["session"] == slow.status["session"]  # the same agent runs on
        assert not events(sol_home, "cast")
        listing = sol("get", "writs", "-o", "json")
        assert listing.returncode == 0
        phases = {w["metadata"]["name"]: w["status"]["phase"] for w in json.loads(listing.stdout)}
        assert phases == {"a": "Merged", "b": "Merged", "c": "Merged", "slow": "Working"}
    trailers = git(clone, "log", "--format=%(trailers:key=Sol-Writ,valueonly)", "main")
    assert sorted(t for t in trailers.split() if t) == [f"shop/{n}" for n in landed]
    assert sum(tmux_sessions(sol_home).values()) == 1
