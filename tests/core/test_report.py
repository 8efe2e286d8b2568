"""core/report.py: a condition is reported when it changes, not at every look."""

from __future__ import annotations

from reconciler.core.report import ReportOnce


def test_a_repeat_is_not_news_and_a_change_is() -> None:
    once: ReportOnce[tuple[str, ...]] = ReportOnce()
    assert once.news(("bad file",))
    assert not once.news(("bad file",))
    assert once.last == ("bad file",)
    assert once.news(("bad file", "another"))
    assert not once.news(("bad file", "another"))


def test_clear_makes_the_same_report_news_again() -> None:
    once: ReportOnce[str] = ReportOnce()
    assert once.news("disk full")
    once.clear()
    assert once.last is None
    assert once.news("disk full")


def test_nothing_to_report_is_the_starting_state() -> None:
    once: ReportOnce[str] = ReportOnce()
    assert not once.news(None), "no condition at start: nothing to say"
    assert once.news("degraded")
    assert once.news(None), "the condition ended: that is news (recovered)"
    assert not once.news(None)
