"""The ledger's fixture transcripts (tests/fixtures/ledger), put where sol's agents write
theirs, with their known figures."""

from __future__ import annotations

import json
import shutil
from decimal import Decimal
from pathlib import Path
from typing import Any

from reconciler.core.home import Home
from reconciler.core.prices import Prices

FIXTURES = Path(__file__).parent / "fixtures" / "ledger"
EXPECTED: dict[str, Any] = json.loads((FIXTURES / "expected.json").read_text())
VEGA = "shop/outposts/vega/claude/projects/-SOL_HOME-worlds-shop-outposts-vega-worktree/" \
       "1a1a1a1a-0000-4000-8000-000000000001.jsonl"


def install(home: Home, only: str | None = None) -> list[Path]:
    """Copy the fixture transcripts under home/worlds, with @SOL_HOME@ made real."""
    placed = []
    for source in sorted((FIXTURES / "shop").rglob("*.jsonl")):
        rel = source.relative_to(FIXTURES)
        if only is not None and str(rel) != only:
            continue
        target = home.root / "worlds" / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(source.read_text().replace("@SOL_HOME@", str(home.root)))
        placed.append(target)
    return placed


def remove(home: Home) -> None:
    shutil.rmtree(home.root / "worlds" / "shop", ignore_errors=True)


def usd(tokens_by_model: dict[str, dict[str, int]]) -> float | None:
    """What those tokens cost at the shipped prices (unknown models left out)."""
    prices, total, priced = Prices(), Decimal(0), False
    for model, tokens in tokens_by_model.items():
        price = prices.find(model)
        if price is not None:
            total, priced = total + price.cost(tokens), True
    return float(total) if priced else None


def tokens(entry: dict[str, Any]) -> dict[str, int]:
    """An entry of `sol cost -o json` as the four counts."""
    return {k: entry["tokens"][k] for k in ("input", "output", "cacheWrite", "cacheRead")}
