"""SQLite store: desired state as applied, status with compare-and-set, agents, MRs, events.

The only module that speaks SQL. Every write is a short `BEGIN IMMEDIATE` transaction,
so two processes (two `sol apply`, or apply beside the daemon) serialise cleanly, and
every status change is compare-and-set on a version or on the current phase. The row
types it returns live in records.py and are re-exported here.
"""

from __future__ import annotations

import json
import os
import sqlite3
import tempfile
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reconciler.core.errors import SolError
from reconciler.core.home import Home, private
from reconciler.core.model import Manifest
from reconciler.core.records import Agent, Event, MergeRequest, OutboxRow, Record
from reconciler.core.status import standard_conditions

MIGRATIONS: list[str] = [
    """
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE objects (
        kind TEXT NOT NULL, world TEXT NOT NULL, name TEXT NOT NULL,
        spec TEXT NOT NULL, generation TEXT NOT NULL, origin TEXT NOT NULL DEFAULT '',
        orphaned INTEGER NOT NULL DEFAULT 0,
        phase TEXT NOT NULL, reason TEXT NOT NULL DEFAULT '', message TEXT NOT NULL DEFAULT '',
        observed_generation TEXT NOT NULL DEFAULT '', status TEXT NOT NULL DEFAULT '{}',
        version INTEGER NOT NULL DEFAULT 0, created_at REAL NOT NULL, updated_at REAL NOT NULL,
        PRIMARY KEY (kind, world, name)
    );
    CREATE TABLE agents (
        world TEXT NOT NULL, name TEXT NOT NULL, writ TEXT, session TEXT NOT NULL DEFAULT '',
        runtime TEXT NOT NULL DEFAULT '', state TEXT NOT NULL DEFAULT 'idle',
        created_at REAL NOT NULL, updated_at REAL NOT NULL,
        PRIMARY KEY (world, name)
    );
    CREATE UNIQUE INDEX agents_writ ON agents (world, writ) WHERE writ IS NOT NULL;
    CREATE TABLE mrs (
        id INTEGER PRIMARY KEY AUTOINCREMENT, world TEXT NOT NULL, writ TEXT NOT NULL,
        branch TEXT NOT NULL, base TEXT NOT NULL DEFAULT '', agent TEXT NOT NULL DEFAULT '',
        attempt INTEGER NOT NULL DEFAULT 1, priority INTEGER NOT NULL DEFAULT 2,
        state TEXT NOT NULL DEFAULT 'Queued', merge_commit TEXT NOT NULL DEFAULT '',
        message TEXT NOT NULL DEFAULT '', created_at REAL NOT NULL, updated_at REAL NOT NULL
    );
    CREATE INDEX mrs_world_state ON mrs (world, state);
    CREATE TABLE events (
        id INTEGER PRIMARY KEY AUTOINCREMENT, ts REAL NOT NULL, type TEXT NOT NULL,
        kind TEXT NOT NULL DEFAULT '', world TEXT NOT NULL DEFAULT '',
        name TEXT NOT NULL DEFAULT '', message TEXT NOT NULL DEFAULT '',
        data TEXT NOT NULL DEFAULT '{}'
    );
    CREATE INDEX events_object ON events (world, name);
    """,
    """
    CREATE TABLE outbox (
        id INTEGER PRIMARY KEY AUTOINCREMENT, event_id INTEGER NOT NULL,
        target TEXT NOT NULL, state TEXT NOT NULL DEFAULT 'pending',
        attempts INTEGER NOT NULL DEFAULT 0, due_at REAL NOT NULL,
        error TEXT NOT NULL DEFAULT '', created_at REAL NOT NULL, updated_at REAL NOT NULL,
        UNIQUE (event_id, target)
    );
    CREATE INDEX outbox_due ON outbox (state, due_at);
    INSERT INTO meta (key, value) SELECT 'notify-cursor', COALESCE(MAX(id), 0) FROM events;
    """,
    """
    ALTER TABLE mrs ADD COLUMN step TEXT NOT NULL DEFAULT '';
    ALTER TABLE mrs ADD COLUMN progress TEXT NOT NULL DEFAULT '{}';
    """,
    # the ledger (core/ledger_store.py): token usage read from agents' transcripts
    """
    CREATE TABLE ledger_files (
        path TEXT PRIMARY KEY, source TEXT NOT NULL, inode INTEGER NOT NULL,
        size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL, offset INTEGER NOT NULL,
        context TEXT NOT NULL DEFAULT '{}', updated_at REAL NOT NULL
    );
    CREATE TABLE usage (
        source TEXT NOT NULL, id TEXT NOT NULL, ts REAL NOT NULL,
        world TEXT NOT NULL DEFAULT '', writ TEXT NOT NULL DEFAULT '', attempt INTEGER,
        agent TEXT NOT NULL DEFAULT '', envoy TEXT NOT NULL DEFAULT '',
        model TEXT NOT NULL DEFAULT '', input INTEGER NOT NULL DEFAULT 0,
        output INTEGER NOT NULL DEFAULT 0, cache_write INTEGER NOT NULL DEFAULT 0,
        cache_read INTEGER NOT NULL DEFAULT 0, file TEXT NOT NULL DEFAULT '',
        PRIMARY KEY (source, id)
    );
    CREATE INDEX usage_ts ON usage (ts);
    CREATE INDEX usage_writ ON usage (world, writ, attempt);
    """,
    # the forge's speculative batches (docs/decisions/0012-forge-batches.md)
    """
    CREATE TABLE batches (
        id INTEGER PRIMARY KEY AUTOINCREMENT, world TEXT NOT NULL,
        state TEXT NOT NULL DEFAULT 'Active', version INTEGER NOT NULL DEFAULT 0,
        progress TEXT NOT NULL DEFAULT '{}', created_at REAL NOT NULL,
        updated_at REAL NOT NULL
    );
    CREATE INDEX batches_world_state ON batches (world, state);
    """,
]
SCHEMA_VERSION = len(MIGRATIONS)
KEEP = object()  # sentinel: leave a column as it is
BUSY = (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)
ENVIRONMENT = (sqlite3.SQLITE_FULL, sqlite3.SQLITE_READONLY, sqlite3.SQLITE_IOERR,
               sqlite3.SQLITE_CANTOPEN, sqlite3.SQLITE_PERM)
"""Result codes about the disk or permissions: the file may be fine, so no rebuild."""


def _code(exc: sqlite3.Error) -> int | None:
    """The primary SQLite result code, None for errors the sqlite3 module makes itself."""
    code = getattr(exc, "sqlite_errorcode", None)
    return None if code is None else code & 0xFF


def repeating(event_type: str) -> bool:
    """Failure events that a pass may meet again and again until someone fixes the cause."""
    return event_type.endswith(("-failed", "-error")) or event_type == "specs-invalid"


class Store:
    """A connection to `sol.db`; cheap to open, one per process or thread.

    Every statement runs through `_run`, `_one` or `_all`, so any SQLite failure, at
    connect or at the thousandth query, leaves the store as one SolError naming the file
    and the fix (`_error`), never as a traceback.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._depth = 0
        deadline = time.monotonic() + 30.0
        while True:
            try:
                if not path.exists():
                    self._create()
                self._connect()
                return
            except BaseException as exc:
                if getattr(self, "db", None) is not None:
                    self.db.close()
                if not isinstance(exc, sqlite3.Error):
                    raise
                if _code(exc) in BUSY and time.monotonic() < deadline:
                    time.sleep(0.02)  # switching to WAL can't wait on busy_timeout
                    continue
                raise self._error(exc) from exc

    @property
    def wal(self) -> Path:
        """The write-ahead log: part of the database until it is checkpointed."""
        return self.path.with_name(self.path.name + "-wal")

    def _wal_holds_frames(self) -> bool:
        """A non-empty WAL belongs with its database (SQLite replays it into whatever file
        is named sol.db); an empty one, such as an open connection keeps, holds nothing."""
        try:
            return self.wal.stat().st_size > 0
        except OSError:
            return False

    def _create(self) -> None:
        """Build a new store beside `sol.db` and link it into place whole, so sol never
        leaves a 0-byte or schema-less `sol.db` (a crash in between leaves only the
        temporary file): an empty `sol.db` is then always damage, never a new store."""
        if self._wal_holds_frames():
            raise SolError(
                f"{self.wal} is left from a {self.path.name} that is gone and would be "
                f"replayed into a new one; move it aside (mv {self.wal} "
                f"{self.path}.broken-wal) and try again"
            )
        tmp: Path | None = None
        try:
            fd, name = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".new",
                                        dir=self.path.parent)
            os.close(fd)
            tmp = Path(name)
            db = sqlite3.connect(str(tmp), isolation_level=None)
            try:
                db.execute("PRAGMA journal_mode=WAL")
                self._migrate(db)
            finally:
                db.close()
            with suppress(FileExistsError):  # another sol made it first: use it
                os.link(tmp, self.path)
        except OSError as exc:
            raise SolError(f"cannot create {self.path} ({exc.strerror}); set SOL_HOME to a "
                           "writable directory") from exc
        finally:
            for suffix in ("", "-wal", "-shm") if tmp else ():
                with suppress(OSError):
                    Path(f"{tmp}{suffix}").unlink()

    def _connect(self) -> None:
        if self.path.stat().st_size == 0:  # SQLite would take it as new, and drop its WAL
            raise self._unusable("the file is empty")
        # mode=rw: never let SQLite create the file; only _create makes a store
        self.db = sqlite3.connect(f"{self.path.absolute().as_uri()}?mode=rw", uri=True,
                                  timeout=30.0, isolation_level=None)
        private(self.path)  # SQLite gives its -wal and -shm files the database's mode
        self.db.row_factory = sqlite3.Row
        self.db.execute("PRAGMA busy_timeout=30000")
        if self.db.execute("PRAGMA user_version").fetchone()[0] == 0:
            raise self._unusable("it has no sol schema")  # _create always writes one
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self._migrate(self.db)

    def _unusable(self, why: object) -> SolError:
        move = f"mv {self.path} {self.path}.broken"
        if self._wal_holds_frames():
            move += f"; mv {self.wal} {self.path}.broken-wal"
        return SolError(
            f"{self.path} is not a usable sol database ({why}); move it aside "
            f"({move}) and run `sol apply` again to rebuild it"
        )

    def _error(self, exc: sqlite3.Error) -> SolError:
        """The one sentence for a SQLite failure: busy; the disk or permissions (the file
        may be fine, so no rebuild); anything else is damage (a garbled page, not a
        database, tables gone): move it aside and rebuild."""
        code = _code(exc)
        if code in BUSY:
            return SolError(f"{self.path} is busy: another sol process has held it for "
                            "30 s; try again when it is done")
        if code in ENVIRONMENT:
            return SolError(f"cannot use {self.path} ({exc}); check that it and its "
                            "directory are writable and the disk has space, then try again")
        return self._unusable(exc)

    @contextmanager
    def _guard(self) -> Iterator[None]:
        """Map SQLite failures to `_error`; integrity violations are sol's bugs: raised."""
        try:
            yield
        except sqlite3.IntegrityError:
            raise
        except sqlite3.DatabaseError as exc:
            raise self._error(exc) from exc

    def _run(self, sql: str, args: Iterable[Any] = ()) -> sqlite3.Cursor:
        """Execute one statement (its rowcount and lastrowid are read, never its rows)."""
        with self._guard():
            return self.db.execute(sql, tuple(args))

    def _one(self, sql: str, args: Iterable[Any] = ()) -> sqlite3.Row | None:
        with self._guard():
            return self.db.execute(sql, tuple(args)).fetchone()

    def _all(self, sql: str, args: Iterable[Any] = ()) -> list[sqlite3.Row]:
        """All rows, fetched inside the guard: a damaged page may be met at any row."""
        with self._guard():
            return self.db.execute(sql, tuple(args)).fetchall()

    def verify(self) -> None:
        """Read every page (`PRAGMA quick_check`); raise the one sentence if any is bad."""
        rows = self._all("PRAGMA quick_check(1)")
        first = " ".join(str(rows[0][0]).replace("*** in database main ***", "").split())
        if first != "ok":
            raise self._unusable(f"integrity check: {first}")

    @classmethod
    def open(cls, home: Home) -> Store:
        home.init()
        return cls(home.db)

    def close(self) -> None:
        self.db.close()

    def scratch(self) -> Store:
        """An in-memory copy of this store, for planning on what is not recorded yet;
        writes to it never reach `sol.db`."""
        copy = Store.__new__(Store)
        copy.path, copy._depth = self.path, 0
        copy.db = sqlite3.connect(":memory:", isolation_level=None)
        try:
            self.db.backup(copy.db)
        except sqlite3.Error as exc:
            copy.db.close()
            raise self._error(exc) from exc
        copy.db.row_factory = sqlite3.Row
        return copy

    def _migrate(self, db: sqlite3.Connection) -> None:
        current = db.execute("PRAGMA user_version").fetchone()[0]
        if current > SCHEMA_VERSION:
            raise SolError(
                f"{self.path} was written by a newer sol (schema {current}, this sol knows "
                f"{SCHEMA_VERSION}); upgrade sol"
            )
        if current == SCHEMA_VERSION:
            return
        db.execute("BEGIN IMMEDIATE")
        try:
            current = db.execute("PRAGMA user_version").fetchone()[0]
            for version in range(current, SCHEMA_VERSION):
                for statement in MIGRATIONS[version].split(";"):
                    if statement.strip():
                        db.execute(statement)
            db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            db.execute("COMMIT")
        except BaseException:
            with suppress(sqlite3.Error):
                db.execute("ROLLBACK")
            raise

    @contextmanager
    def transaction(self) -> Iterator[Store]:
        """A write transaction (BEGIN IMMEDIATE); nested calls join the outer one."""
        if self._depth:
            self._depth += 1
            try:
                yield self
            finally:
                self._depth -= 1
            return
        self._run("BEGIN IMMEDIATE")
        self._depth = 1
        try:
            yield self
            self._depth = 0
            self._run("COMMIT")
        except BaseException:
            self._depth = 0
            if self.db.in_transaction:  # a failed COMMIT may leave it open
                with suppress(sqlite3.Error):  # never hide the first error
                    self.db.execute("ROLLBACK")
            raise

    # ---- desired state and status -------------------------------------------------

    def record_spec(self, manifest: Manifest, initial_phase: str = "Pending") -> str:
        """Upsert a manifest; returns 'created', 'updated' or 'unchanged'."""
        now = time.time()
        spec = json.dumps(manifest.spec, sort_keys=True)
        with self.transaction():
            row = self._one(
                "SELECT generation, orphaned FROM objects WHERE kind=? AND world=? AND name=?",
                manifest.key,
            )
            if row is None:
                self._run(
                    "INSERT INTO objects (kind, world, name, spec, generation, origin, phase,"
                    " created_at, updated_at) VALUES (?,?,?,?,?,?,?,?,?)",
                    (*manifest.key, spec, manifest.generation, str(manifest.origin),
                     initial_phase, now, now),
                )
                return "created"
            if row["generation"] == manifest.generation and not row["orphaned"]:
                self._run(
                    "UPDATE objects SET origin=? WHERE kind=? AND world=? AND name=?",
                    (str(manifest.origin), *manifest.key),
                )
                return "unchanged"
            self._run(
                "UPDATE objects SET spec=?, generation=?, origin=?, orphaned=0, updated_at=?,"
                " version=version+1 WHERE kind=? AND world=? AND name=?",
                (spec, manifest.generation, str(manifest.origin), now, *manifest.key),
            )
            return "updated"

    def set_orphaned(self, key: tuple[str, str, str], orphaned: bool = True) -> None:
        with self.transaction():
            self._run(
                "UPDATE objects SET orphaned=?, version=version+1, updated_at=?"
                " WHERE kind=? AND world=? AND name=?",
                (int(orphaned), time.time(), *key),
            )

    def delete(self, key: tuple[str, str, str]) -> None:
        with self.transaction():
            self._run("DELETE FROM objects WHERE kind=? AND world=? AND name=?", key)

    def get(self, kind: str, world: str, name: str) -> Record | None:
        row = self._one("SELECT * FROM objects WHERE kind=? AND world=? AND name=?",
                        (kind, world, name))
        return _record(row) if row else None

    def list(self, kind: str | None = None, world: str | None = None) -> list[Record]:
        sql, args = "SELECT * FROM objects WHERE 1=1", []
        if kind:
            sql, args = sql + " AND kind=?", [*args, kind]
        if world is not None:
            sql, args = sql + " AND world=?", [*args, world]
        rows = self._all(sql + " ORDER BY kind, world, name", args)
        return [_record(r) for r in rows]

    def set_status(
        self,
        key: tuple[str, str, str],
        *,
        phase: Any = KEEP,
        reason: Any = KEEP,
        message: Any = KEEP,
        observed_generation: Any = KEEP,
        expect_version: int | None = None,
        expect_phases: Iterable[str] | None = None,
        **fields: Any,
    ) -> Record | None:
        """Compare-and-set a status; `fields` merge into the status (None removes a key).

        Returns the new record, or None if the object is gone or the expectation failed.
        """
        with self.transaction():
            current = self.get(*key)
            if current is None:
                return None
            if expect_version is not None and current.version != expect_version:
                return None
            if expect_phases is not None and current.phase not in set(expect_phases):
                return None
            extra = dict(current.status)
            for name, value in fields.items():
                if value is None:
                    extra.pop(name, None)
                else:
                    extra[name] = value
            values = {
                "phase": current.phase if phase is KEEP else phase,
                "reason": current.reason if reason is KEEP else reason,
                "message": current.message if message is KEEP else message,
                "observed_generation": current.observed_generation
                if observed_generation is KEEP else observed_generation,
            }
            extra["conditions"] = standard_conditions(
                extra.get("conditions") or (), phase=values["phase"], reason=values["reason"],
                message=values["message"], observed_generation=values["observed_generation"],
                now=time.time())
            unchanged = all(getattr(current, k) == v for k, v in values.items()) and (
                extra == current.status
            )
            if unchanged:
                return current
            self._run(
                "UPDATE objects SET phase=?, reason=?, message=?, observed_generation=?,"
                " status=?, version=version+1, updated_at=? WHERE kind=? AND world=? AND name=?"
                " AND version=?",
                (values["phase"], values["reason"], values["message"],
                 values["observed_generation"], json.dumps(extra, sort_keys=True), time.time(),
                 *key, current.version),
            )
            return self.get(*key)

    # ---- events --------------------------------------------------------------------

    def event(
        self, type: str, *, kind: str = "", world: str = "", name: str = "",
        message: str = "", **data: Any,
    ) -> int:
        """Record an event. A failure that repeats itself (the same type and message for
        the same object as its last event) is counted on that event, not recorded (and
        notified) again on every pass."""
        now = time.time()
        with self.transaction():
            if repeating(type):
                last = self._one("SELECT id, type, message, data FROM events WHERE world=? AND"
                                 " name=? ORDER BY id DESC LIMIT 1", (world, name))
                if last is not None and (last["type"], last["message"]) == (type, message):
                    seen = json.loads(last["data"])
                    seen.update(count=int(seen.get("count") or 1) + 1, lastSeen=now)
                    self._run("UPDATE events SET data=? WHERE id=?",
                              (json.dumps(seen, default=str), last["id"]))
                    return int(last["id"])
            cursor = self._run(
                "INSERT INTO events (ts, type, kind, world, name, message, data)"
                " VALUES (?,?,?,?,?,?,?)",
                (now, type, kind, world, name, message, json.dumps(data, default=str)),
            )
            return int(cursor.lastrowid or 0)

    def events(
        self, after: int = 0, world: str | None = None, name: str | None = None,
        types: Iterable[str] | None = None, limit: int | None = None,
        since: float | None = None,
    ) -> list[Event]:
        sql, args = "SELECT * FROM events WHERE id>?", [after]
        if since is not None:
            sql, args = sql + " AND ts>=?", [*args, since]
        if world:
            sql, args = sql + " AND world=?", [*args, world]
        if name:
            sql, args = sql + " AND name=?", [*args, name]
        if types:
            wanted = list(types)
            sql += f" AND type IN ({','.join('?' * len(wanted))})"
            args += wanted
        if limit:
            sql = f"SELECT * FROM ({sql} ORDER BY id DESC LIMIT {int(limit)})"
        rows = self._all(sql + " ORDER BY id", args)
        return [
            Event(r["id"], r["ts"], r["type"], r["kind"], r["world"], r["name"], r["message"],
                  json.loads(r["data"]))
            for r in rows
        ]

    def last_event_id(self) -> int:
        return int(self._all("SELECT COALESCE(MAX(id), 0) FROM events")[0][0])

    # ---- the notification outbox ----------------------------------------------------
    # Rows go pending -> sending -> delivered, or back to pending with a later due_at, or
    # to dead after too many attempts; reconciler/notify.py decides, these only record.

    def outbox_add(self, rows: Iterable[tuple[int, str]], due_at: float) -> int:
        """Queue (event id, target) pairs; a pair already queued is left alone."""
        now = time.time()
        with self.transaction():
            return sum(self._run(
                "INSERT OR IGNORE INTO outbox (event_id, target, due_at, created_at,"
                " updated_at) VALUES (?,?,?,?,?)", (event_id, target, due_at, now, now),
            ).rowcount for event_id, target in rows)

    def outbox(self, states: Iterable[str] | None = None, *, due_before: float | None = None,
               limit: int | None = None) -> list[OutboxRow]:
        """Rows with their events, oldest first."""
        sql = ("SELECT o.*, e.ts, e.type, e.kind, e.world, e.name, e.message, e.data"
               " FROM outbox o JOIN events e ON e.id = o.event_id WHERE 1=1")
        args: list[Any] = []
        if states is not None:
            wanted = list(states)
            sql += f" AND o.state IN ({','.join('?' * len(wanted))})"
            args += wanted
        if due_before is not None:
            sql, args = sql + " AND o.due_at <= ?", [*args, due_before]
        sql += " ORDER BY o.id" + (f" LIMIT {int(limit)}" if limit else "")
        return [OutboxRow(
            r["id"], r["target"], r["state"], r["attempts"], r["due_at"], r["error"],
            Event(r["event_id"], r["ts"], r["type"], r["kind"], r["world"], r["name"],
                  r["message"], json.loads(r["data"])),
        ) for r in self._all(sql, args)]

    def outbox_set(self, ids: Iterable[int], state: str, *, expect: str | None = None,
                   due_at: float | None = None, error: str | None = None,
                   attempted: bool = False) -> int:
        """Move rows to `state` (compare-and-set on `expect`); returns how many moved."""
        sets, args = ["state=?", "updated_at=?"], [state, time.time()]
        if due_at is not None:
            sets, args = [*sets, "due_at=?"], [*args, due_at]
        if error is not None:
            sets, args = [*sets, "error=?"], [*args, error]
        if attempted:
            sets.append("attempts=attempts+1")
        sql = f"UPDATE outbox SET {', '.join(sets)} WHERE id=?"
        if expect is not None:
            sql += " AND state=?"
        with self.transaction():
            return sum(self._run(sql, [*args, i, *([expect] if expect else [])]).rowcount
                       for i in ids)

    def outbox_defer(self, target: str, until: float) -> None:
        """A target failed: its other waiting rows wait for its retry too."""
        with self.transaction():
            self._run(
                "UPDATE outbox SET due_at=? WHERE target=? AND state IN ('pending', 'sending')"
                " AND due_at<?", (until, target, until))

    def outbox_next_due(self) -> float | None:
        due = self._all("SELECT MIN(due_at) FROM outbox WHERE state='pending'")[0][0]
        return None if due is None else float(due)

    # ---- agents --------------------------------------------------------------------

    def agents(self, world: str | None = None) -> list[Agent]:
        sql, args = "SELECT * FROM agents", []
        if world is not None:
            sql, args = sql + " WHERE world=?", [world]
        return [Agent(**dict(r)) for r in self._all(sql + " ORDER BY world, name", args)]

    def agent(self, world: str, name: str) -> Agent | None:
        row = self._one("SELECT * FROM agents WHERE world=? AND name=?", (world, name))
        return Agent(**dict(row)) if row else None

    def agent_for(self, world: str, writ: str) -> Agent | None:
        row = self._one("SELECT * FROM agents WHERE world=? AND writ=?", (world, writ))
        return Agent(**dict(row)) if row else None

    def put_agent(
        self, world: str, name: str, *, writ: str | None, session: str = "",
        runtime: str = "", state: str = "working",
    ) -> None:
        now = time.time()
        with self.transaction():
            self._run(
                "INSERT INTO agents (world, name, writ, session, runtime, state, created_at,"
                " updated_at) VALUES (?,?,?,?,?,?,?,?) ON CONFLICT (world, name) DO UPDATE SET"
                " writ=excluded.writ, session=excluded.session, runtime=excluded.runtime,"
                " state=excluded.state, updated_at=excluded.updated_at",
                (world, name, writ, session, runtime, state, now, now),
            )

    def free_agent(self, world: str, name: str) -> None:
        with self.transaction():
            self._run(
                "UPDATE agents SET writ=NULL, session='', state='idle', updated_at=?"
                " WHERE world=? AND name=?",
                (time.time(), world, name),
            )

    # ---- merge requests ------------------------------------------------------------

    def add_mr(
        self, world: str, writ: str, *, branch: str, base: str, agent: str, attempt: int,
        priority: int,
    ) -> int:
        now = time.time()
        with self.transaction():
            cursor = self._run(
                "INSERT INTO mrs (world, writ, branch, base, agent, attempt, priority,"
                " created_at, updated_at) VALUES (?,?,?,?,?,?,?,?,?)",
                (world, writ, branch, base, agent, attempt, priority, now, now),
            )
            return int(cursor.lastrowid or 0)

    def mrs(
        self, world: str | None = None, states: Iterable[str] | None = None,
        writ: str | None = None,
    ) -> list[MergeRequest]:
        sql, args = "SELECT * FROM mrs WHERE 1=1", []
        if world is not None:
            sql, args = sql + " AND world=?", [*args, world]
        if writ is not None:
            sql, args = sql + " AND writ=?", [*args, writ]
        if states is not None:
            wanted = list(states)
            sql += f" AND state IN ({','.join('?' * len(wanted))})"
            args += wanted
        rows = self._all(sql + " ORDER BY priority, created_at, id", args)
        return [MergeRequest(**{k: r[k] for k in MergeRequest.__dataclass_fields__})
                for r in rows]

    def mr(self, mr_id: int) -> MergeRequest | None:
        row = self._one("SELECT * FROM mrs WHERE id=?", (mr_id,))
        return (MergeRequest(**{k: row[k] for k in MergeRequest.__dataclass_fields__})
                if row else None)

    def mr_progress(self, mr_id: int) -> tuple[str, dict[str, Any]]:
        """The last step the forge finished for this MR and what it left for the next
        (its merge commit, the tip under it, the gate results so far): kept here, not in
        the forge, so a killed forge resumes at the step. ("", {}) before the first."""
        row = self._one("SELECT step, progress FROM mrs WHERE id=?", (mr_id,))
        return (row["step"], json.loads(row["progress"])) if row else ("", {})

    def update_mr(
        self, mr_id: int, *, expect_state: str | None = None, expect_step: str | None = None,
        **fields: Any
    ) -> bool:
        """Compare-and-set on the MR's state (and step); True if the row changed."""
        allowed = {"state", "merge_commit", "message", "base", "attempt", "agent", "step",
                   "progress"}
        assert set(fields) <= allowed, fields
        if "progress" in fields:
            fields["progress"] = json.dumps(fields["progress"], sort_keys=True)
        sets = ", ".join(f"{k}=?" for k in fields)
        sql = f"UPDATE mrs SET {sets}, updated_at=? WHERE id=?"
        args: list[Any] = [*fields.values(), time.time(), mr_id]
        if expect_state is not None:
            sql, args = sql + " AND state=?", [*args, expect_state]
        if expect_step is not None:
            sql, args = sql + " AND step=?", [*args, expect_step]
        with self.transaction():
            return self._run(sql, args).rowcount == 1

    # ---- forge batches -------------------------------------------------------------

    def add_batch(self, world: str, progress: dict[str, Any]) -> int:
        """A new Active batch; its members are marked in the caller's transaction."""
        now = time.time()
        with self.transaction():
            cursor = self._run("INSERT INTO batches (world, progress, created_at, updated_at)"
                               " VALUES (?,?,?,?)",
                               (world, json.dumps(progress, sort_keys=True), now, now))
            return int(cursor.lastrowid or 0)

    def batch(self, batch_id: int) -> Batch | None:
        row = self._one("SELECT * FROM batches WHERE id=?", (batch_id,))
        return _batch(row) if row else None

    def active_batch(self, world: str) -> Batch | None:
        """The world's batch in progress (the forge runs one at a time per world)."""
        row = self._one("SELECT * FROM batches WHERE world=? AND state='Active'"
                        " ORDER BY id LIMIT 1", (world,))
        return _batch(row) if row else None

    def update_batch(self, batch_id: int, *, expect_version: int, progress: dict[str, Any],
                     state: str = "Active") -> bool:
        """Compare-and-set on the batch's version: one step of it done, or nothing."""
        with self.transaction():
            return self._run(
                "UPDATE batches SET progress=?, state=?, version=version+1, updated_at=?"
                " WHERE id=? AND version=?",
                (json.dumps(progress, sort_keys=True), state, time.time(), batch_id,
                 expect_version)).rowcount == 1

    # ---- meta ----------------------------------------------------------------------

    def get_meta(self, key: str, default: str | None = None) -> str | None:
        row = self._one("SELECT value FROM meta WHERE key=?", (key,))
        return row["value"] if row else default

    def set_meta(self, key: str, value: str | None) -> None:
        with self.transaction():
            if value is None:
                self._run("DELETE FROM meta WHERE key=?", (key,))
            else:
                self._run(
                    "INSERT INTO meta (key, value) VALUES (?, ?)"
                    " ON CONFLICT (key) DO UPDATE SET value=excluded.value",
                    (key, value),
                )


@dataclass(frozen=True)
class Batch:
    """A forge batch: its chain and bisection state are in `progress` (see the forge)."""

    id: int
    world: str
    state: str  # Active | Done
    version: int
    progress: dict[str, Any]


def _batch(row: sqlite3.Row) -> Batch:
    return Batch(row["id"], row["world"], row["state"], row["version"],
                 json.loads(row["progress"]))


def _record(row: sqlite3.Row) -> Record:
    return Record(
        kind=row["kind"], world=row["world"], name=row["name"], spec=json.loads(row["spec"]),
        generation=row["generation"], origin=row["origin"], orphaned=bool(row["orphaned"]),
        phase=row["phase"], reason=row["reason"], message=row["message"],
        observed_generation=row["observed_generation"], status=json.loads(row["status"]),
        version=row["version"], created_at=row["created_at"], updated_at=row["updated_at"],
    )
