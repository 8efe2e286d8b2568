"""The ledger's tables: where each transcript was read to, and each usage record once.

Kept beside store.py (same connection, same error mapping) so the store's own API stays
small. A usage record's key is (source, id): Claude's message id, Codex's response id;
`INSERT OR IGNORE` makes a line read twice (a truncated file read again from 0, two
readers at once, a restart between the insert and the offset) count once. The offset
and the records of one read are written in one transaction, compare-and-set on the
offset the read started from.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from reconciler.core.prices import Prices
from reconciler.core.store import Store

TOKEN_COLUMNS = ("input", "output", "cache_write", "cache_read")
GROUPS = {
    "writ": ("world", "writ"),
    "agent": ("world", "agent"),
    "model": ("model",),
    "day": ("day",),
    "world": ("world",),
    "attempt": ("world", "writ", "attempt"),
}
"""What `sol cost --by` groups on, as usage columns (`day`: the local date of ts)."""


@dataclass(frozen=True)
class FileState:
    """How far one transcript was read: its identity (inode), size and mtime when read
    (size = offset when a pass's budget stopped it short, so the next stat differs), the
    byte offset after the last complete line, and what the reader keeps between reads
    (the session's model and attribution)."""

    path: str
    source: str
    inode: int
    size: int
    mtime_ns: int
    offset: int
    context: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Usage:
    """One model response's tokens, attributed."""

    source: str
    id: str
    ts: float
    model: str
    input: int = 0
    output: int = 0
    cache_write: int = 0
    cache_read: int = 0
    world: str = ""
    writ: str = ""
    attempt: int | None = None
    agent: str = ""
    envoy: str = ""
    file: str = ""


def files(store: Store) -> dict[str, FileState]:
    """Every transcript read so far, by path."""
    rows = store._all("SELECT * FROM ledger_files")
    return {r["path"]: FileState(r["path"], r["source"], r["inode"], r["size"], r["mtime_ns"],
                                 r["offset"], json.loads(r["context"])) for r in rows}


def advance(store: Store, state: FileState, expect_offset: int | None,
            records: Iterable[Usage]) -> bool:
    """Record a read: the new records (each id once) and the file's new state, if the
    stored offset is still `expect_offset` (None: no row yet, or a reset from 0).
    False when another reader moved it first; nothing is written then."""
    with store.transaction():
        row = store._one("SELECT offset FROM ledger_files WHERE path=?", (state.path,))
        current = None if row is None else int(row["offset"])
        if expect_offset is not None and current != expect_offset:
            return False
        with store._guard():
            store.db.executemany(
                "INSERT OR IGNORE INTO usage (source, id, ts, world, writ, attempt, agent,"
                " envoy, model, input, output, cache_write, cache_read, file)"
                " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                [(u.source, u.id, u.ts, u.world, u.writ, u.attempt, u.agent, u.envoy,
                  u.model, u.input, u.output, u.cache_write, u.cache_read, u.file)
                 for u in records])
        store._run(
            "INSERT INTO ledger_files (path, source, inode, size, mtime_ns, offset, context,"
            " updated_at) VALUES (?,?,?,?,?,?,?,?) ON CONFLICT (path) DO UPDATE SET"
            " source=excluded.source, inode=excluded.inode, size=excluded.size,"
            " mtime_ns=excluded.mtime_ns, offset=excluded.offset, context=excluded.context,"
            " updated_at=excluded.updated_at",
            (state.path, state.source, state.inode, state.size, state.mtime_ns, state.offset,
             json.dumps(state.context, sort_keys=True), time.time()))
        return True


def recorded(store: Store) -> bool:
    """Whether any usage is recorded at all (a cheap check before pricing anything)."""
    return store._one("SELECT 1 FROM usage LIMIT 1") is not None


def totals(store: Store, *, by: str, since: float | None = None, world: str | None = None,
           ) -> list[dict[str, Any]]:
    """Tokens summed per group and model (pricing is per model, so it stays a key):
    one dict per (group, model) with the group's columns, `model` and the four counts."""
    keys: Sequence[str] = GROUPS[by]
    columns = [("date(ts, 'unixepoch', 'localtime')" if k == "day" else k) + f" AS {k}"
               for k in keys if k != "model"]
    select = ", ".join([*columns, "model",
                        *(f"SUM({c}) AS {c}" for c in TOKEN_COLUMNS), "COUNT(*) AS responses"])
    sql, args = f"SELECT {select} FROM usage WHERE 1=1", []
    if since is not None:
        sql, args = sql + " AND ts>=?", [*args, since]
    if world is not None:
        sql, args = sql + " AND world=?", [*args, world]
    group = ", ".join([*(k for k in keys if k != "model"), "model"])
    return [dict(r) for r in store._all(f"{sql} GROUP BY {group} ORDER BY {group}", args)]


def _tokens(row: dict[str, Any]) -> dict[str, int]:
    figures = {"input": int(row["input"] or 0), "output": int(row["output"] or 0),
               "cacheWrite": int(row["cache_write"] or 0),
               "cacheRead": int(row["cache_read"] or 0)}
    return {**figures, "total": sum(figures.values())}


def costs(store: Store, prices: Prices, *, by: str, since: float | None = None,
          world: str | None = None) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Tokens and USD per group, and the total: each group's `usd` is exact (a Decimal),
    None when none of its models has a price; `unpriced` lists the models without one
    (their tokens are counted, their cost is not)."""
    groups: dict[tuple[Any, ...], dict[str, Any]] = {}
    total = _empty({})
    for row in totals(store, by=by, since=since, world=world):
        key = tuple(row[k] for k in GROUPS[by])
        group = groups.setdefault(key, _empty({k: row[k] for k in GROUPS[by]}))
        for entry in (group, total):
            _add(entry, row, prices)
    return list(groups.values()), total


def _empty(keys: dict[str, Any]) -> dict[str, Any]:
    return {**keys, "tokens": {"input": 0, "output": 0, "cacheWrite": 0, "cacheRead": 0,
                               "total": 0},
            "responses": 0, "usd": None, "models": [], "unpriced": []}


def _add(entry: dict[str, Any], row: dict[str, Any], prices: Prices) -> None:
    tokens = _tokens(row)
    for kind, count in tokens.items():
        entry["tokens"][kind] += count
    entry["responses"] += int(row["responses"])
    model = str(row["model"])
    if model not in entry["models"]:
        entry["models"].append(model)
    price = prices.find(model)
    if price is None:
        if model not in entry["unpriced"]:
            entry["unpriced"].append(model)
        return
    entry["usd"] = (entry["usd"] or Decimal(0)) + price.cost(tokens)


def spend(store: Store, prices: Prices, *, world: str, writ: str | None = None,
          attempt: int | None = None, since: float = 0.0,
          until: float | None = None) -> tuple[Decimal | None, int]:
    """What one world (or one writ, or one of its attempts) spent from `since` to
    `until`: USD (None when no model of it has a price) and tokens of every kind."""
    sql = (f"SELECT model, {', '.join(f'SUM({c}) AS {c}' for c in TOKEN_COLUMNS)},"
           " COUNT(*) AS responses FROM usage WHERE world=? AND ts>=?")
    args: list[Any] = [world, since]
    for column, value in (("writ", writ), ("attempt", attempt)):
        if value is not None:
            sql, args = sql + f" AND {column}=?", [*args, value]
    if until is not None:
        sql, args = sql + " AND ts<?", [*args, until]
    entry = _empty({})
    for row in store._all(sql + " GROUP BY model", args):
        _add(entry, dict(row), prices)
    return entry["usd"], int(entry["tokens"]["total"])


def attempts(store: Store) -> list[tuple[str, str, int]]:
    """Every (world, writ, attempt) with usage recorded: the ones a cost can be told of."""
    rows = store._all("SELECT DISTINCT world, writ, attempt FROM usage"
                      " WHERE writ!='' AND attempt IS NOT NULL ORDER BY world, writ, attempt")
    return [(r["world"], r["writ"], int(r["attempt"])) for r in rows]


def marks(store: Store, prefix: str) -> dict[str, str]:
    """Meta values under a key prefix, by the rest of the key (one query)."""
    rows = store._all("SELECT key, value FROM meta WHERE key LIKE ? ESCAPE '\\'",
                      (prefix.replace("%", "\\%").replace("_", "\\_") + "%",))
    return {r["key"][len(prefix):]: r["value"] for r in rows}
