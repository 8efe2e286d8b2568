"""What tokens cost: the price table shipped with sol, overridable in sol.yaml.

Prices are USD per million tokens per token kind (input, output, cacheWrite, cacheRead)
and are applied when costs are shown, never stored, so a corrected price changes every
figure at once. Sums are exact (Decimal): `sol cost -o json` adds up to the cent what
the transcripts say. A model missing from the table is counted in tokens and flagged
`unpriced`; it never counts as free.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from functools import lru_cache
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML

from reconciler.core.errors import SolError

TABLE = Path(__file__).parent.parent / "data" / "prices.yaml"
KINDS = ("input", "output", "cacheWrite", "cacheRead")
MILLION = Decimal(1_000_000)
_DATE = re.compile(r"-(?:\d{8}|\d{4}-\d{2}-\d{2})$")


@dataclass(frozen=True)
class Price:
    """USD per million tokens of each kind."""

    input: Decimal
    output: Decimal
    cacheWrite: Decimal  # the sol.yaml spelling
    cacheRead: Decimal

    def cost(self, tokens: Mapping[str, int]) -> Decimal:
        """USD for some tokens, by kind (missing kinds count 0)."""
        return sum((Decimal(int(tokens.get(k) or 0)) * getattr(self, k) for k in KINDS),
                   Decimal(0)) / MILLION


def _price(value: Any, where: str) -> Price:
    if not isinstance(value, Mapping) or set(value) - set(KINDS):
        raise SolError(f"{where} must be a mapping of {', '.join(KINDS)} to USD per million "
                       "tokens, like {input: 3, output: 15}")
    try:
        figures = {k: Decimal(str(value.get(k) or 0)) for k in KINDS}
    except ArithmeticError as exc:
        raise SolError(f"{where}: prices must be numbers of USD per million tokens") from exc
    if any(not v.is_finite() or v < 0 for v in figures.values()):
        raise SolError(f"{where}: prices must be numbers of 0 or more")
    return Price(**figures)


@lru_cache(maxsize=1)
def shipped() -> dict[str, Price]:
    """The table in the package (read once a process)."""
    data = YAML(typ="safe").load(TABLE.read_text(encoding="utf-8"))
    return {str(m): _price(p, f"{TABLE}: {m}") for m, p in data["models"].items()}


class Prices:
    """The shipped table with sol.yaml's `prices` on top; `find` names no model twice."""

    def __init__(self, overrides: Any = None, where: str = "sol.yaml") -> None:
        self.table = dict(shipped())
        if overrides is not None and not isinstance(overrides, Mapping):
            raise SolError(f"{where}: prices must be a mapping of model names to prices")
        for model, value in (overrides or {}).items():
            self.table[str(model)] = _price(value, f"{where}: prices: {model}")

    def find(self, model: str) -> Price | None:
        """The price of `model` as a transcript names it: exact, then without a provider
        prefix or a date suffix (`claude-sonnet-4-5-20250929`); None when unknown."""
        bare = model.rsplit("/", 1)[-1]
        for name in (model, bare, _DATE.sub("", bare)):
            if name in self.table:
                return self.table[name]
        return None


def load(config_extra: Mapping[str, Any], where: str = "sol.yaml") -> Prices:
    """The prices a sphere uses, from its parsed sol.yaml."""
    return Prices(config_extra.get("prices"), where)
