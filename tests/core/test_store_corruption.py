"""A damaged `sol.db` is refused with one sentence by every command, never re-created.

Issue 10, point 2: a store truncated to 0 bytes used to be taken as a new, empty one, and
a page of garbage gave tracebacks while `sol doctor` said ok. Each store here is made by a
real `sol apply` (a suspended world: no agent starts), then damaged on disk, then run
through the commands a user would reach for.
"""

from __future__ import annotations

import hashlib
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from subprocess import CompletedProcess

import pytest

from reconciler.core.errors import SolError
from reconciler.core.home import Home
from reconciler.core.store import SCHEMA_VERSION, Store
from tests.helpers import world_yaml, writ_yaml, write_specs

Sol = Callable[..., CompletedProcess[str]]
GARBAGE = b"\xde\xad\xbe\xef"  # no valid b-tree page starts with 0xde


@pytest.fixture
def specs(sol: Sol, tmp_path: Path, repo: Path) -> Path:
    """A sphere with world `shop` (suspended) and two writs, applied by `sol apply`."""
    path = write_specs(tmp_path / "specs", world_yaml("shop", repo, extra="suspend: true\n"),
                       writ_yaml("add-x", "shop"), writ_yaml("add-y", "shop"))
    sol("apply", "-f", str(path), check=True)
    return path


def commands(specs: Path) -> list[tuple[str, ...]]:
    return [("status",), ("get", "writs"), ("events",), ("apply", "-f", str(specs)),
            ("doctor",)]


def fingerprint(path: Path) -> str | None:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else None


def assert_refused(sol: Sol, specs: Path, db: Path, *, wal: bool = False) -> None:
    """Each command exits non-zero with the one sentence naming the file and the `mv`
    fix (doctor in its FAIL row, the others as their one line on stderr), no traceback."""
    fix = f"mv {db} {db}.broken"
    for args in commands(specs):
        result = sol(*args)
        said = f"sol {' '.join(args)}: {result.stdout}{result.stderr}"
        assert result.returncode != 0, said
        assert "Traceback" not in result.stdout + result.stderr, said
        if args == ("doctor",):
            line = next(x for x in result.stdout.splitlines() if x.split()[:1] == ["database"])
            assert "FAIL" in line, said
        else:
            assert len(result.stderr.splitlines()) == 1, said
            line = result.stderr
        assert "is not a usable sol database" in line and fix in line, said
        assert (f"mv {db}-wal {db}.broken-wal" in line) == wal, said


def test_a_truncated_store_is_refused_not_recreated(sol: Sol, sol_home: Home,
                                                    specs: Path) -> None:
    db = sol_home.db
    db.write_bytes(b"")
    for leftover in (Path(f"{db}-wal"), Path(f"{db}-shm")):
        leftover.unlink(missing_ok=True)
    assert_refused(sol, specs, db)
    assert db.stat().st_size == 0
    assert not Path(f"{db}-wal").exists()


def test_a_truncated_store_keeps_its_wal(sol: Sol, sol_home: Home, specs: Path) -> None:
    """SQLite deletes the WAL of a 0-byte database when it opens it: sol must not open it,
    so the log (perhaps the only copy of recent writes) is still there to recover."""
    db, wal = sol_home.db, Path(f"{sol_home.db}-wal")
    writer = sqlite3.connect(db, isolation_level=None)
    writer.execute("PRAGMA wal_autocheckpoint=0")
    writer.execute("INSERT INTO events (ts, type) VALUES (0, 'late-write')")
    frames = wal.read_bytes()  # as a crash would leave it: written, not checkpointed
    writer.close()
    assert frames
    db.write_bytes(b"")
    wal.write_bytes(frames)
    assert_refused(sol, specs, db, wal=True)
    assert db.stat().st_size == 0
    assert wal.read_bytes() == frames


def test_a_garbled_page_is_one_sentence_everywhere(sol: Sol, sol_home: Home,
                                                   specs: Path) -> None:
    """Garbage over the root pages of `objects` and `events`, in the middle of a store of
    a few hundred events: every command reads one of them (a command that reads no
    damaged page has nothing to report), and doctor's quick_check reads them all."""
    store = Store(sol_home.db)
    for number in range(400):
        store.event("note", kind="Writ", world="shop", name="add-x",
                    message=f"event {number} " + "x" * 100)
    roots = dict(store.db.execute("SELECT name, rootpage FROM sqlite_master").fetchall())
    page_size = store.db.execute("PRAGMA page_size").fetchone()[0]
    store.close()  # the last connection checkpoints: everything is in sol.db now
    pages = sol_home.db.stat().st_size // page_size
    assert 1 < roots["objects"] < roots["events"] < pages
    with sol_home.db.open("r+b") as f:
        for table in ("objects", "events"):
            f.seek((roots[table] - 1) * page_size)
            f.write(GARBAGE * (page_size // len(GARBAGE)))
    before = fingerprint(sol_home.db)
    assert_refused(sol, specs, sol_home.db)
    assert fingerprint(sol_home.db) == before


def test_a_fresh_home_gets_a_new_store(sol: Sol, sol_home: Home, tmp_path: Path,
                                       repo: Path) -> None:
    """No sol.db at all is a new sphere: apply makes the store, whole, in one step."""
    assert not sol_home.db.exists()
    path = write_specs(tmp_path / "specs", world_yaml("shop", repo, extra="suspend: true\n"),
                       writ_yaml("add-x", "shop"))
    sol("apply", "-f", str(path), check=True)
    assert "add-x" in sol("get", "writs", check=True).stdout
    doctor = sol("doctor").stdout.splitlines()
    assert [x.split() for x in doctor if x.split()[:1] == ["database"]] == [
        ["database", "ok", str(sol_home.db)]]
    assert not list(sol_home.root.glob(".sol.db.*"))  # no temporary file left behind


def test_a_stale_wal_is_not_replayed_into_a_new_store(sol: Sol, sol_home: Home,
                                                      specs: Path) -> None:
    """After `mv sol.db sol.db.broken` the old WAL, left behind, would be replayed into
    the new store by SQLite: creating one is refused until it is moved too."""
    db, wal = sol_home.db, Path(f"{sol_home.db}-wal")
    wal.write_bytes(b"frames of the store that was moved away")
    db.rename(f"{db}.broken")
    result = sol("apply", "-f", str(specs))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert f"mv {wal} {db}.broken-wal" in result.stderr
    assert not db.exists()


def test_a_database_without_sol_schema_is_refused(tmp_path: Path) -> None:
    """A non-empty SQLite file with no tables (user_version 0) is not a store sol made:
    `_create` writes the schema before the file gets its name."""
    path = tmp_path / "sol.db"
    other = sqlite3.connect(path)
    other.execute("PRAGMA journal_mode=WAL")  # writes the header page, nothing else
    other.close()
    size = path.stat().st_size
    assert size > 0
    with pytest.raises(SolError, match="no sol schema.*mv "):
        Store(path)
    assert path.stat().st_size == size


def test_concurrent_first_opens_share_one_store(tmp_path: Path) -> None:
    """Several processes opening a missing store at once: each builds its own copy and
    links it into place, so none ever sees a 0-byte sol.db (which it would refuse)."""
    path, errors, versions = tmp_path / "home" / "sol.db", [], []

    def open_it() -> None:
        try:
            store = Store(path)
            versions.append(store.db.execute("PRAGMA user_version").fetchone()[0])
            store.close()
        except Exception as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=open_it) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == [] and versions == [SCHEMA_VERSION] * 8
    assert not list(path.parent.glob(".sol.db.*"))
