"""SQLite store: desired state as applied, status with compare-and-set, agents, MRs, events.

The only module that speaks SQL. Every write is a short `BEGIN IMMEDIATE` transaction,
so two processes (two `sol apply`, or apply beside the daemon) serialise cleanly, and
every status change is compare-and-set on a version or on the current phase. The row
types it returns live in records.py and are re-exported here.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .errors import SolError
from .home import Home, private
from .model import Manifest
from .records import Agent, Event, MergeRequest, OutboxRow, Record

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
]
SCHEMA_VERSION = len(MIGRATIONS)
KEEP = object()  # sentinel: leave a column as it is


class Store:
    """A connection to `sol.db`; cheap to open, one per process or thread."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._depth = 0
        deadline = time.monotonic() + 30.0
        while True:
            try:
                self._connect()
                return
            except sqlite3.OperationalError as exc:
                if getattr(self, "db", None) is not None:
                    self.db.close()
                busy = "locked" in str(exc) or "busy" in str(exc)
                if not busy:
                    raise self._unusable(exc) from exc
                if time.monotonic() > deadline:
                    raise SolError(f"{path} is busy: another sol process has held it for "
                                   "30 s; try again when it is done") from exc
                time.sleep(0.02)  # switching a new file to WAL can't wait on busy_timeout
            except sqlite3.DatabaseError as exc:
                raise self._unusable(exc) from exc

    def _connect(self) -> None:
        self.db = sqlite3.connect(str(self.path), timeout=30.0, isolation_level=None)
        private(self.path)  # SQLite gives its -wal and -shm files the database's mode
        self.db.row_factory = sqlite3.Row
        self.db.execute("PRAGMA busy_timeout=30000")
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self._migrate()

    def _unusable(self, exc: Exception) -> SolError:
        return SolError(
            f"{self.path} is not a usable sol database ({exc}); move it aside "
            f"(mv {self.path} {self.path}.broken) and run `sol apply` again to rebuild it"
        )

    @classmethod
    def open(cls, home: Home) -> Store:
        home.init()
        return cls(home.db)

    def close(self) -> None:
        self.db.close()

    def _migrate(self) -> None:
        current = self.db.execute("PRAGMA user_version").fetchone()[0]
        if current > SCHEMA_VERSION:
            raise SolError(
                f"{self.path} was written by a newer sol (schema {current}, this sol knows "
                f"{SCHEMA_VERSION}); upgrade sol"
            )
        if current == SCHEMA_VERSION:
            return
        self.db.execute("BEGIN IMMEDIATE")
        try:
            current = self.db.execute("PRAGMA user_version").fetchone()[0]
            for version in range(current, SCHEMA_VERSION):
                for statement in MIGRATIONS[version].split(";"):
                    if statement.strip():
                        self.db.execute(statement)
            self.db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
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
        self.db.execute("BEGIN IMMEDIATE")
        self._depth = 1
        try:
            yield self
        except BaseException:
            self._depth = 0
            self.db.execute("ROLLBACK")
            raise
        self._depth = 0
        self.db.execute("COMMIT")

    # ---- desired state and status -------------------------------------------------

    def record_spec(self, manifest: Manifest, initial_phase: str = "Pending") -> str:
        """Upsert a manifest; returns 'created', 'updated' or 'unchanged'."""
        now = time.time()
        spec = json.dumps(manifest.spec, sort_keys=True)
        with self.transaction():
            row = self.db.execute(
                "SELECT generation, orphaned FROM objects WHERE kind=? AND world=? AND name=?",
                manifest.key,
            ).fetchone()
            if row is None:
                self.db.execute(
                    "INSERT INTO objects (kind, world, name, spec, generation, origin, phase,"
                    " created_at, updated_at) VALUES (?,?,?,?,?,?,?,?,?)",
                    (*manifest.key, spec, manifest.generation, str(manifest.origin),
                     initial_phase, now, now),
                )
                return "created"
            if row["generation"] == manifest.generation and not row["orphaned"]:
                self.db.execute(
                    "UPDATE objects SET origin=? WHERE kind=? AND world=? AND name=?",
                    (str(manifest.origin), *manifest.key),
                )
                return "unchanged"
            self.db.execute(
                "UPDATE objects SET spec=?, generation=?, origin=?, orphaned=0, updated_at=?,"
                " version=version+1 WHERE kind=? AND world=? AND name=?",
                (spec, manifest.generation, str(manifest.origin), now, *manifest.key),
            )
            return "updated"

    def set_orphaned(self, key: tuple[str, str, str], orphaned: bool = True) -> None:
        with self.transaction():
            self.db.execute(
                "UPDATE objects SET orphaned=?, version=version+1, updated_at=?"
                " WHERE kind=? AND world=? AND name=?",
                (int(orphaned), time.time(), *key),
            )

    def delete(self, key: tuple[str, str, str]) -> None:
        with self.transaction():
            self.db.execute("DELETE FROM objects WHERE kind=? AND world=? AND name=?", key)

    def get(self, kind: str, world: str, name: str) -> Record | None:
        row = self.db.execute(
            "SELECT * FROM objects WHERE kind=? AND world=? AND name=?", (kind, world, name)
        ).fetchone()
        return _record(row) if row else None

    def list(self, kind: str | None = None, world: str | None = None) -> list[Record]:
        sql, args = "SELECT * FROM objects WHERE 1=1", []
        if kind:
            sql, args = sql + " AND kind=?", [*args, kind]
        if world is not None:
            sql, args = sql + " AND world=?", [*args, world]
        rows = self.db.execute(sql + " ORDER BY kind, world, name", args).fetchall()
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
            unchanged = all(getattr(current, k) == v for k, v in values.items()) and (
                extra == current.status
            )
            if unchanged:
                return current
            self.db.execute(
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
        with self.transaction():
            cursor = self.db.execute(
                "INSERT INTO events (ts, type, kind, world, name, message, data)"
                " VALUES (?,?,?,?,?,?,?)",
                (time.time(), type, kind, world, name, message, json.dumps(data, default=str)),
            )
            return int(cursor.lastrowid or 0)

    def events(
        self, after: int = 0, world: str | None = None, name: str | None = None,
        types: Iterable[str] | None = None, limit: int | None = None,
    ) -> list[Event]:
        sql, args = "SELECT * FROM events WHERE id>?", [after]
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
        rows = self.db.execute(sql + " ORDER BY id", args).fetchall()
        return [
            Event(r["id"], r["ts"], r["type"], r["kind"], r["world"], r["name"], r["message"],
                  json.loads(r["data"]))
            for r in rows
        ]

    def last_event_id(self) -> int:
        return int(self.db.execute("SELECT COALESCE(MAX(id), 0) FROM events").fetchone()[0])

    # ---- the notification outbox ----------------------------------------------------
    # Rows go pending -> sending -> delivered, or back to pending with a later due_at, or
    # to dead after too many attempts; reconciler/notify.py decides, these only record.

    def outbox_add(self, rows: Iterable[tuple[int, str]], due_at: float) -> int:
        """Queue (event id, target) pairs; a pair already queued is left alone."""
        now = time.time()
        with self.transaction():
            return sum(self.db.execute(
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
        ) for r in self.db.execute(sql, args).fetchall()]

    def outbox_claim(self, now: float, limit: int) -> list[OutboxRow]:
        """Mark the due pending rows `sending` (before anything is delivered) and return
        them: after a crash, only rows in `sending` can have been delivered already."""
        with self.transaction():
            rows = self.outbox(["pending"], due_before=now, limit=limit)
            self.outbox_set([r.id for r in rows], "sending", expect="pending")
        return rows

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
            return sum(self.db.execute(sql, [*args, i, *([expect] if expect else [])]).rowcount
                       for i in ids)

    def outbox_defer(self, target: str, until: float) -> None:
        """A target failed: its other waiting rows wait for its retry too."""
        with self.transaction():
            self.db.execute(
                "UPDATE outbox SET due_at=? WHERE target=? AND state IN ('pending', 'sending')"
                " AND due_at<?", (until, target, until))

    def outbox_next_due(self) -> float | None:
        row = self.db.execute("SELECT MIN(due_at) FROM outbox WHERE state='pending'").fetchone()
        return None if row[0] is None else float(row[0])

    # ---- agents --------------------------------------------------------------------

    def agents(self, world: str | None = None) -> list[Agent]:
        sql, args = "SELECT * FROM agents", []
        if world is not None:
            sql, args = sql + " WHERE world=?", [world]
        return [Agent(**dict(r)) for r in self.db.execute(sql + " ORDER BY world, name", args)]

    def agent(self, world: str, name: str) -> Agent | None:
        row = self.db.execute(
            "SELECT * FROM agents WHERE world=? AND name=?", (world, name)
        ).fetchone()
        return Agent(**dict(row)) if row else None

    def agent_for(self, world: str, writ: str) -> Agent | None:
        row = self.db.execute(
            "SELECT * FROM agents WHERE world=? AND writ=?", (world, writ)
        ).fetchone()
        return Agent(**dict(row)) if row else None

    def put_agent(
        self, world: str, name: str, *, writ: str | None, session: str = "",
        runtime: str = "", state: str = "working",
    ) -> None:
        now = time.time()
        with self.transaction():
            self.db.execute(
                "INSERT INTO agents (world, name, writ, session, runtime, state, created_at,"
                " updated_at) VALUES (?,?,?,?,?,?,?,?) ON CONFLICT (world, name) DO UPDATE SET"
                " writ=excluded.writ, session=excluded.session, runtime=excluded.runtime,"
                " state=excluded.state, updated_at=excluded.updated_at",
                (world, name, writ, session, runtime, state, now, now),
            )

    def free_agent(self, world: str, name: str) -> None:
        with self.transaction():
            self.db.execute(
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
            cursor = self.db.execute(
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
        rows = self.db.execute(sql + " ORDER BY priority, created_at, id", args).fetchall()
        return [MergeRequest(**dict(r)) for r in rows]

    def update_mr(
        self, mr_id: int, *, expect_state: str | None = None, **fields: Any
    ) -> bool:
        """Compare-and-set on the MR's state; True if the row changed."""
        allowed = {"state", "merge_commit", "message", "base", "attempt", "agent"}
        assert set(fields) <= allowed, fields
        sets = ", ".join(f"{k}=?" for k in fields)
        sql = f"UPDATE mrs SET {sets}, updated_at=? WHERE id=?"
        args: list[Any] = [*fields.values(), time.time(), mr_id]
        if expect_state is not None:
            sql, args = sql + " AND state=?", [*args, expect_state]
        with self.transaction():
            return self.db.execute(sql, args).rowcount == 1

    # ---- meta ----------------------------------------------------------------------

    def get_meta(self, key: str, default: str | None = None) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return row["value"] if row else default

    def set_meta(self, key: str, value: str | None) -> None:
        with self.transaction():
            if value is None:
                self.db.execute("DELETE FROM meta WHERE key=?", (key,))
            else:
                self.db.execute(
                    "INSERT INTO meta (key, value) VALUES (?, ?)"
                    " ON CONFLICT (key) DO UPDATE SET value=excluded.value",
                    (key, value),
                )


def _record(row: sqlite3.Row) -> Record:
    return Record(
        kind=row["kind"], world=row["world"], name=row["name"], spec=json.loads(row["spec"]),
        generation=row["generation"], origin=row["origin"], orphaned=bool(row["orphaned"]),
        phase=row["phase"], reason=row["reason"], message=row["message"],
        observed_generation=row["observed_generation"], status=json.loads(row["status"]),
        version=row["version"], created_at=row["created_at"], updated_at=row["updated_at"],
    )
