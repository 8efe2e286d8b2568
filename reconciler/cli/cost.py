"""`sol cost`: what the agents spent, in tokens by kind and in USD.

It brings the ledger up to date first (the same incremental read the consul makes each
pass), so the figures are current whether the daemon runs or not. USD are priced at
show time from the shipped table and sol.yaml's `prices`; -o json gives them exact.
"""

from __future__ import annotations

import time
from decimal import Decimal
from typing import Any

import click

from reconciler.cli.common import cell, console, emit, output_option, sphere
from reconciler.core import ledger_store, prices
from reconciler.core.durations import parse_duration
from reconciler.core.errors import SolError
from reconciler.core.times import parse_rfc3339, rfc3339
from reconciler.drivers.sphere import Sphere

BY = ("writ", "agent", "model", "day", "world")
KINDS = (("INPUT", "input"), ("OUTPUT", "output"), ("CACHE WRITE", "cacheWrite"),
         ("CACHE READ", "cacheRead"), ("TOTAL", "total"))


def parse_since(text: str | None, now: float) -> float | None:
    """`24h`, `30m`, `7d` ago, or an RFC 3339 moment; None for all time."""
    if not text:
        return None
    if text[:-1].isdigit() and text.endswith("d"):
        return now - int(text[:-1]) * 86400
    try:
        return now - parse_duration(text)
    except ValueError:
        pass
    try:
        return parse_rfc3339(text)
    except ValueError:
        raise SolError(f"--since {text!r} is neither a duration (30m, 24h, 7d) nor a time "
                       "with its offset (2025-12-03T14:00:00+00:00)") from None


def _usd(value: Decimal | None) -> float | None:
    return None if value is None else float(value)


def _json(entry: dict[str, Any]) -> dict[str, Any]:
    return {**entry, "usd": _usd(entry["usd"]), "unpriced": bool(entry["unpriced"]),
            "unpricedModels": entry["unpriced"]}


def _shown_usd(entry: dict[str, Any]) -> str:
    """Cents, `-` when nothing is priced, `*` when some model is not."""
    usd = entry["usd"]
    text = "-" if usd is None else f"{usd:.2f}"
    return text + ("*" if entry["unpriced"] and usd is not None else "")


def _label(entry: dict[str, Any], by: str) -> list[str]:
    if by == "writ":
        return [entry["world"] or "-", entry["writ"] or "(no writ)"]
    if by == "agent":
        return [entry["world"] or "-", entry["agent"] or "(envoy)"]
    return [str(entry[by] or "-")]


HEADS = {"writ": ["WORLD", "WRIT"], "agent": ["WORLD", "AGENT"], "model": ["MODEL"],
         "day": ["DAY"], "world": ["WORLD"]}


def _table(items: list[dict[str, Any]], total: dict[str, Any], by: str) -> None:
    from rich.table import Table

    t = Table(box=None, pad_edge=False, header_style="bold")
    for head in HEADS[by]:
        t.add_column(head, no_wrap=True)
    for head, _ in KINDS:
        t.add_column(head, justify="right", no_wrap=True)
    t.add_column("USD", justify="right", no_wrap=True)
    rows = [(_label(entry, by), entry) for entry in items]
    rows.append((["TOTAL", *[""] * (len(HEADS[by]) - 1)], total))
    for label, entry in rows:
        t.add_row(*(cell(x) for x in label),
                  *(cell(f"{entry['tokens'][k]:,}") for _, k in KINDS),
                  cell(_shown_usd(entry)))
    console().print(t)


@click.command("cost")
@click.option("--world", "world", metavar="W", help="Only this world.")
@click.option("--since", metavar="DURATION|TIME",
              help="Only usage since then: 24h, 30m, 7d, or an RFC 3339 time.")
@click.option("--by", type=click.Choice(BY), default="writ", show_default=True,
              help="What each row sums.")
@output_option()
def cost(world: str | None, since: str | None, by: str, output: str) -> None:
    """Tokens and USD the agents spent, read from their transcripts.

    \b
    Examples:
      sol cost                      # every writ, all time
      sol cost --since 24h --by model
      sol cost --world shop --by day -o json
    """
    now = time.time()
    start = parse_since(since, now)
    sph = sphere()
    table = prices.load(sph.config.extra, str(sph.home.config))
    from reconciler.drivers import ledger  # `get writs` imports this module: keep it light

    ledger.sync(sph.home, sph.store, now)
    items, total = ledger_store.costs(sph.store, table, by=by, since=start, world=world)
    if output != "table":
        emit({"by": by, "world": world, "since": None if start is None else rfc3339(start),
              "items": [_json(i) for i in items], "total": _json(total)}, output)
        return
    if not items:
        click.echo("No usage recorded" + (f" in world {world}" if world else "")
                   + (f" since {rfc3339(start)}" if start is not None else "") + ".")
        return
    _table(items, total, by)
    if total["unpriced"]:
        click.echo(f"* no price for {', '.join(total['unpriced'])}: tokens counted, cost "
                   "not; add it under `prices:` in sol.yaml")


COMMANDS = [cost]


def attach_costs(sph: Sphere, objs: list[dict[str, Any]]) -> None:
    """Each writ object gains `status.cost` ({tokens, usd, unpriced}) when it has usage."""
    from reconciler.daemon.board import writ_costs

    if not any(o["kind"] == "Writ" for o in objs):
        return
    found = writ_costs(sph)  # nothing spent yet: no price table or sol.yaml read
    for obj in objs:
        entry = found.get((obj["metadata"].get("world", ""), obj["metadata"]["name"]))
        if entry is not None:
            obj["status"]["cost"] = entry
