"""core/durations.py: one notation for durations, read and written."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from reconciler.core.durations import (
    DURATION_RE,
    format_duration,
    parse_duration,
    parse_seconds,
)


@pytest.mark.parametrize("text,seconds", [("30s", 30), ("10m", 600), ("2h", 7200),
                                          ("0s", 0), ("90s", 90)])
def test_parse_reads_the_manifest_notation(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "10", "1.5m", "2d", "-5s", "5 s", "m", "10M"])
def test_parse_refuses_anything_else_in_one_sentence(text: str) -> None:
    with pytest.raises(ValueError, match="use a number and s, m or h, like 30s or 10m"):
        parse_duration(text)


@pytest.mark.parametrize("value,seconds", [("90", 90.0), ("1.5", 1.5), (45, 45.0),
                                           ("10m", 600), ("2h", 7200)])
def test_parse_seconds_takes_plain_numbers_too(value: object, seconds: float) -> None:
    assert parse_seconds(value) == seconds


@pytest.mark.parametrize("value", ["-1", "1.2.3", "soon", None])
def test_parse_seconds_refuses_the_rest(value: object) -> None:
    with pytest.raises(ValueError):
        parse_seconds(value)


@pytest.mark.parametrize("seconds,text", [(30, "30s"), (600, "10m"), (7200, "2h"),
                                          (90, "90s"), (2, "2s"), (0.5, "0.5s"), (0, "0s"),
                                          (3660, "61m"), (3601, "3601s"), (600.0, "10m"),
                                          (-60, "-60s")])
def test_format_writes_the_manifest_notation_where_it_fits(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


def test_elapsed_times_read_in_whole_seconds_through_int() -> None:
    assert format_duration(int(125.7)) == "125s"


@given(st.integers(0, 10**7))
def test_format_and_parse_round_trip(seconds: int) -> None:
    text = format_duration(seconds)
    assert DURATION_RE.match(text)
    assert parse_duration(text) == seconds
