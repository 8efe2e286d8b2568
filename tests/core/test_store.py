"""The SQLite store: migrations, compare-and-set, events, and a broken file."""

from __future__ import annotations

import multiprocessing
import sqlite3
from pathlib import Path

import pytest

from reconciler.core.errors import SolError
from reconciler.core.model import Manifest
from reconciler.core.store import SCHEMA_VERSION, Store


def writ(name: str, title: str = "t") -> Manifest:
    return Manifest("Writ", name, "shop", {"title": title})


def test_open_creates_wal_database_at_current_schema(tmp_path: Path) -> None:
    store = Store(tmp_path / "sol.db")
    assert store.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert store.db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    store.close()
    again = Store(tmp_path / "sol.db")  # migrating an up-to-date file is a no-op
    assert again.db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


def test_newer_schema_is_refused_with_a_sentence(tmp_path: Path) -> None:
    db = sqlite3.connect(tmp_path / "sol.db")
    db.execute(f"PRAGMA user_version={SCHEMA_VERSION + 5}")
    db.close()
    with pytest.raises(SolError, match="newer sol"):
        Store(tmp_path / "sol.db")


def test_not_a_database_names_the_file_and_the_fix(tmp_path: Path) -> None:
    path = tmp_path / "sol.db"
    path.write_bytes(b"this is not sqlite at all" * 100)
    with pytest.raises(SolError) as info:
        Store(path)
    assert str(path) in info.value.message
    assert "move it aside" in info.value.message


def test_record_spec_reports_created_unchanged_updated(tmp_path: Path) -> None:
    store = Store(tmp_path / "sol.db")
    assert store.record_spec(writ("a")) == "created"
    assert store.record_spec(writ("a")) == "unchanged"
    assert store.record_spec(writ("a", "new title")) == "updated"
    record = store.get("Writ", "shop", "a")
    assert record is not None and record.spec == {"title": "new title"}
    assert record.phase == "Pending"


def test_set_status_is_compare_and_set(tmp_path: Path) -> None:
    store = Store(tmp_path / "sol.db")
    store.record_spec(writ("a"))
    record = store.get("Writ", "shop", "a")
    assert record is not None
    moved = store.set_status(record.key, phase="Working", expect_phases=["Pending"],
                             agent="nova")
    assert moved is not None and moved.phase == "Working" and moved.status["agent"] == "nova"
    # a second claim from the same starting point fails: nobody double-applies
    assert store.set_status(record.key, phase="Working", expect_phases=["Pending"]) is None
    assert store.set_status(record.key, phase="Done", expect_version=record.version) is None
    cleared = store.set_status(record.key, agent=None)
    assert cleared is not None and "agent" not in cleared.status


def test_events_are_append_only_and_filterable(tmp_path: Path) -> None:
    store = Store(tmp_path / "sol.db")
    first = store.event("cast", kind="Writ", world="shop", name="a", message="cast a")
    store.event("cast", kind="Writ", world="shop", name="b", message="cast b")
    assert [e.name for e in store.events()] == ["a", "b"]
    assert [e.name for e in store.events(after=first)] == ["b"]
    assert [e.message for e in store.events(name="a")] == ["cast a"]


def _claim(path: str, results: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    store = Store(Path(path))
    won = 0
    for i in range(50):
        key = ("Writ", "shop", f"w{i}")
        if store.set_status(key, phase="Working", expect_phases=["Pending"]) is not None:
            won += 1
    results.put(won)


def test_two_processes_never_claim_the_same_object(tmp_path: Path) -> None:
    path = tmp_path / "sol.db"
    store = Store(path)
    for i in range(50):
        store.record_spec(writ(f"w{i}"))
    results: multiprocessing.Queue = multiprocessing.Queue()  # type: ignore[type-arg]
    procs = [multiprocessing.Process(target=_claim, args=(str(path), results)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert sum(results.get(timeout=10) for _ in procs) == 50
    assert all(r.phase == "Working" for r in store.list("Writ"))
