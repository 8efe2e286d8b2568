"""The price table: shipped, looked up as transcripts name models, overridable."""

from __future__ import annotations

from decimal import Decimal

import pytest

from reconciler.core.errors import SolError
from reconciler.core.prices import Prices, shipped


def test_a_dated_or_prefixed_model_name_finds_its_price() -> None:
    prices = Prices()
    sonnet = prices.find("claude-sonnet-4-5")
    assert sonnet is not None and sonnet.input == Decimal(3)
    assert prices.find("claude-sonnet-4-5-20250929") == sonnet
    assert prices.find("anthropic/claude-sonnet-4-5") == sonnet
    assert prices.find("claude-mystery-9") is None


def test_the_cost_is_exact_per_kind() -> None:
    opus = Prices().find("claude-opus-4-1-20250805")
    assert opus is not None
    cost = opus.cost({"input": 300, "output": 1200, "cacheWrite": 5000, "cacheRead": 10})
    assert cost == Decimal("0.188265")


def test_sol_yaml_overrides_and_adds_models() -> None:
    prices = Prices({"claude-sonnet-4-5": {"input": 1, "output": 2}, "local-llm": {}})
    changed = prices.find("claude-sonnet-4-5-20250929")
    assert changed is not None and (changed.input, changed.cacheRead) == (1, 0)
    assert prices.find("local-llm") is not None
    assert shipped()["claude-sonnet-4-5"].input == 3  # the shipped table is untouched


@pytest.mark.parametrize("bad", [{"m": {"inptu": 1}}, {"m": {"input": -1}}, {"m": 3},
                                 {"m": {"input": "lots"}}, ["m"]])
def test_a_bad_override_is_one_sentence(bad: object) -> None:
    with pytest.raises(SolError, match="sol.yaml"):
        Prices(bad)
