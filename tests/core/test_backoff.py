"""core/backoff.py: every retry in sol waits start * factor ** n, up to a cap."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from reconciler.core.backoff import exponential


def test_doubles_from_one_second_up_to_a_minute_by_default() -> None:
    assert [exponential(n) for n in range(8)] == [1, 2, 4, 8, 16, 32, 60, 60]


def test_start_factor_and_cap_are_the_callers() -> None:
    assert [exponential(n, start=5.0, cap=600.0) for n in range(9)] == [
        5, 10, 20, 40, 80, 160, 320, 600, 600]
    assert [exponential(n, start=0.5, factor=3.0, cap=10.0) for n in range(5)] == [
        0.5, 1.5, 4.5, 10, 10]


def test_a_negative_attempt_waits_the_start() -> None:
    assert exponential(-3, start=2.0, cap=60.0) == 2.0


def test_a_cap_below_the_start_wins() -> None:
    assert exponential(0, start=1.0, cap=0.25) == 0.25
    assert exponential(4, start=1.0, cap=0.0) == 0.0


def test_degenerate_inputs_wait_the_start() -> None:
    assert exponential(5, start=0.0, cap=60.0) == 0.0
    assert exponential(5, start=3.0, factor=1.0, cap=60.0) == 3.0


def test_thousands_of_failures_wait_the_cap_without_overflow() -> None:
    assert exponential(10**6) == 60.0
    assert exponential(10**6, start=5.0, cap=600.0) == 600.0


@given(st.integers(-5, 5000), st.floats(0.01, 100), st.floats(1.1, 10), st.floats(0.01, 10**4))
def test_never_above_the_cap_and_never_shrinking(attempt: int, start: float, factor: float,
                                                 cap: float) -> None:
    now = exponential(attempt, start=start, factor=factor, cap=cap)
    later = exponential(attempt + 1, start=start, factor=factor, cap=cap)
    assert now <= later <= cap
    assert now == cap or now == start * factor ** max(0, attempt)
