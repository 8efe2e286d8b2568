"""What a Codex rollout's tail says the agent is doing, and what the sentinel makes of it.

The lines are the shapes codex-cli 0.171.0 writes (seen in tests/drivers/test_codex_real.py):
a turn starts with `task_started` and ends with `task_complete`, whose `error` says why the
CLI gave up on the API after its own retries.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from reconciler.controllers.sentinel_observe import _codex_activity, read_tether
from reconciler.controllers.sentinel_plan import (
    RATE_LIMIT_HOLD,
    RATE_LIMIT_POLL,
    ActivityView,
    rate_limit_until,
)
from reconciler.core import tether
from reconciler.core.home import Home
from reconciler.drivers.runtimes import codex
from reconciler.drivers.sphere import Sphere
from tests.controllers.test_sentinel_plan import NOW, kinds, outpost, view, writ
from tests.controllers.test_sentinel_plan import plan_sentinel as plan

T0 = 1_796_318_000.0
LIMITED = {"message": "exceeded retry limit, last status: 429 Too Many Requests",
           "codex_error_info": {"response_too_many_failed_attempts": {"http_status_code": 429}}}


def stamp(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z")


def event(kind: str, at: float, **payload: Any) -> str:
    return json.dumps({"timestamp": stamp(at), "type": "event_msg",
                       "payload": {"type": kind, **payload}})


def meta(cwd: Path, at: float = T0, session: str = "c0ffee") -> str:
    return json.dumps({"timestamp": stamp(at), "type": "session_meta",
                       "payload": {"id": session, "cwd": str(cwd)}})


def started(at: float) -> str:
    return event("task_started", at, turn_id="t")


def complete(at: float, error: dict[str, Any] | None = None) -> str:
    return event("task_complete", at, last_agent_message=None if error else "done",
                 **({"error": error} if error else {}))


def write_rollout(home: Path, cwd: Path, lines: list[str], *, day: str | None = None,
                  name: str = "rollout-c0ffee.jsonl", mtime: float | None = None) -> Path:
    """A rollout in `day`'s directory (YYYY/MM/DD, default today's)."""
    day = day or datetime.now(UTC).strftime("%Y/%m/%d")
    path = home / "sessions" / day / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join([meta(cwd), *lines]) + "\n")
    if mtime is not None:
        os.utime(path, (mtime, mtime))
    return path


# ---- the tail, read pure ---------------------------------------------------------------


def test_a_turn_that_gave_up_on_a_429_is_rate_limited_at_its_end() -> None:
    found = codex.state_of([started(T0), complete(T0 + 35, LIMITED)])
    assert found == codex.Activity("rate-limited", T0 + 35, "429", LIMITED["message"])
    overloaded = {"message": "unexpected status 529 Overloaded", "codex_error_info": "other"}
    assert codex.state_of([complete(T0, overloaded)]).state == "rate-limited"


def test_another_error_is_an_error_and_a_clean_end_is_idle() -> None:
    broken = {"message": "unexpected status 401 Unauthorized: invalid api key",
              "codex_error_info": {"unauthorized": {"http_status_code": 401}}}
    assert codex.state_of([started(T0), complete(T0 + 1, broken)]) == codex.Activity(
        "error", T0 + 1, "401", broken["message"])
    assert codex.state_of([started(T0), complete(T0 + 2)]) == codex.Activity("idle", T0 + 2)
    assert codex.state_of([started(T0), event("turn_aborted", T0 + 3)]).state == "idle"


def test_a_turn_started_after_the_error_is_working() -> None:
    found = codex.state_of([complete(T0, LIMITED), started(T0 + 70),
                            event("token_count", T0 + 71, rate_limits=None)])
    assert found == codex.Activity("working", T0 + 70)


def test_an_exhausted_window_in_token_count_gives_the_reset_time() -> None:
    limits = {"primary": {"used_percent": 100.0, "window_minutes": 300,
                          "resets_at": int(T0 + 900)},
              "secondary": {"used_percent": 40.0, "window_minutes": 10080,
                            "resets_at": int(T0 + 90_000)}}
    found = codex.state_of([started(T0), event("token_count", T0 + 1, rate_limits=limits),
                            complete(T0 + 30, LIMITED)])
    assert found.state == "rate-limited" and found.until == T0 + 900
    assert rate_limit_until(ActivityView(found.state, found.at, "s1", found.error,
                                         found.message, found.until)) == T0 + 900
    # A window not used up says nothing about this error: the default hold.
    spare = {"primary": {"used_percent": 20.0, "resets_at": int(T0 + 900)}}
    plain = codex.state_of([event("token_count", T0, rate_limits=spare),
                            complete(T0 + 30, LIMITED)])
    assert plain.until is None
    assert rate_limit_until(ActivityView(plain.state, plain.at, "s1", plain.error,
                                         plain.message)) == T0 + 30 + RATE_LIMIT_HOLD


def test_a_last_line_still_being_written_and_a_cut_first_line_are_skipped(
        tmp_path: Path) -> None:
    path = tmp_path / "rollout.jsonl"
    path.write_text(complete(T0, LIMITED) + "\n" + started(T0 + 60)[:40])
    assert codex.state_of(codex.tail(path)).state == "rate-limited"
    filler = event("agent_message", T0, message="x" * 2000)
    path.write_text("\n".join([started(T0 - 1), *[filler] * 40, complete(T0, LIMITED)])
                    + "\n")
    lines = codex.tail(path, 10_000)
    assert sum(len(line) + 1 for line in lines) < 10_000  # the cut first line dropped
    assert all(json.loads(line) for line in lines if line)
    assert codex.state_of(lines).state == "rate-limited"
    assert codex.state_of([b"", b"not json", b"[1, 2]", filler.encode()]) is None


# ---- finding the current rollout ---------------------------------------------------------


def test_no_rollout_for_the_worktree_since_the_session_started_is_none(tmp_path: Path) -> None:
    home, worktree, other = tmp_path / "codex", tmp_path / "wt", tmp_path / "other"
    assert codex.activity(home, worktree, T0) is None  # no sessions directory at all
    write_rollout(home, other, [complete(T0, LIMITED)])
    assert codex.activity(home, worktree, 0) is None  # another worktree's
    write_rollout(home, worktree, [complete(T0, LIMITED)], name="rollout-old.jsonl",
                  mtime=time.time() - 600)
    assert codex.activity(home, worktree, time.time() - 60) is None  # before the session
    assert codex.activity(home, worktree, 0).state == "rate-limited"


def test_the_newest_rollout_wins_and_a_resumed_one_is_found_in_its_first_day(
        tmp_path: Path) -> None:
    home, worktree = tmp_path / "codex", tmp_path / "wt"
    now = time.time()
    write_rollout(home, worktree, [complete(now - 100, LIMITED)], name="rollout-a.jsonl",
                  mtime=now - 50)
    write_rollout(home, worktree, [started(now - 10)], name="rollout-b.jsonl", mtime=now - 5)
    assert codex.activity(home, worktree, now - 60).state == "working"
    # A conversation begun days ago and resumed now is appended to in its first day's
    # directory: found when told when it began, not looked for otherwise.
    old = datetime.fromtimestamp(now - 5 * 86400, UTC).strftime("%Y/%m/%d")
    write_rollout(home, worktree, [complete(now - 1, LIMITED)], day=old,
                  name="rollout-resumed.jsonl", mtime=now)
    assert codex.activity(home, worktree, now - 6).state == "working"  # old days skipped
    assert codex.activity(home, worktree, now - 6, now - 6 * 86400).state == "rate-limited"


# ---- what the sentinel sees and plans ----------------------------------------------------


@pytest.fixture
def codex_agent(sol_home: Home) -> tuple[Sphere, Path]:
    """A codex agent `vega` of world shop whose session started a minute ago."""
    sphere = Sphere(sol_home)
    worktree = sol_home.worktree("shop", "vega")
    worktree.mkdir(parents=True)
    tether.write(sol_home.tether("shop", "vega"), tether.Tether(
        world="shop", writ="a", agent="vega", title="a", description="d", kind="task",
        branch="sol/a", base="main", attempt=1, generation="g1", session="s1",
        runtime={"name": "codex"}, updated_at=time.time() - 60))
    return sphere, worktree


def test_the_sentinel_reads_a_codex_rollout_only_while_a_rate_limit_matters(
        codex_agent: tuple[Sphere, Path]) -> None:
    sphere, worktree = codex_agent
    home = sphere.home.codex_home
    _, seen = read_tether(sphere, "shop", "vega")
    assert seen is not None and seen.runtime == "codex" and not seen.hooks
    now = time.time()
    path = write_rollout(home, worktree, [started(now - 50), complete(now - 10, LIMITED)])
    found = _codex_activity(sphere, "shop", "vega", seen, writ())
    assert found == ActivityView("rate-limited", found.at, "s1", "429", LIMITED["message"],
                                 polled=True)
    assert abs(found.at - (now - 10)) < 0.01
    # Working again: seen only while the writ still carries its rate limit.
    path.write_text(path.read_text() + started(now - 1) + "\n")
    assert _codex_activity(sphere, "shop", "vega", seen, writ()) is None
    limited = writ(rateLimit={"at": now - 10, "until": now + 50})
    assert _codex_activity(sphere, "shop", "vega", seen, limited).state == "working"
    # An idle codex is left to pane silence.
    path.write_text(path.read_text() + complete(now) + "\n")
    assert _codex_activity(sphere, "shop", "vega", seen, writ()) is None


def test_a_turn_ended_before_this_session_started_is_not_believed(
        codex_agent: tuple[Sphere, Path]) -> None:
    sphere, worktree = codex_agent
    _, seen = read_tether(sphere, "shop", "vega")
    assert seen is not None
    write_rollout(sphere.home.codex_home, worktree, [complete(seen.updated_at - 5, LIMITED)])
    assert _codex_activity(sphere, "shop", "vega", seen, writ()) is None


def test_told_to_go_on_a_codex_agent_is_looked_at_again_soon() -> None:
    limited = ActivityView("rate-limited", NOW - 70, "s1", "429", LIMITED["message"],
                           polled=True)
    agent = replace(outpost(last_output=NOW - 3600, started=NOW - 3600), activity=limited)
    [action] = plan(view([writ()], [agent])).actions
    assert action.kind == "rate-limited" and action.data["until"] == NOW - 70 + RATE_LIMIT_HOLD
    told = writ(rateLimit={"at": NOW - 70, "until": NOW - 10, "sentAt": NOW - 5})
    assert plan(view([told], [agent])).requeue_after == RATE_LIMIT_POLL
    hooked = replace(agent, activity=replace(limited, polled=False))
    assert plan(view([told], [hooked])).requeue_after == RATE_LIMIT_HOLD - 5
    working = replace(agent, activity=ActivityView("working", NOW - 1, "s1", polled=True))
    assert kinds(view([told], [working])) == ["rate-limit-cleared"]
