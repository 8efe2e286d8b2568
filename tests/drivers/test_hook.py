"""What Claude Code's hooks write for the sentinel, and how they are run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from reconciler.drivers.hook import ACTIVITY, CONVERSATION, state_of


@pytest.fixture
def session(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOL_SESSION", "s1")
    monkeypatch.setenv("SOL_ATTEMPT", "2")


def test_turns_and_failures_become_states(session: None) -> None:
    start = state_of({"hook_event_name": "SessionStart", "session_id": "c1"}, None, 1.0)
    assert start["state"] == "working" and start["conversation"] == "c1"
    stop = state_of({"hook_event_name": "Stop"}, start, 2.0)
    assert (stop["state"], stop["at"], stop["session"]) == ("idle", 2.0, "s1")
    # The idle_prompt notification 60 s later must not move the start of idleness.
    assert state_of({"hook_event_name": "Notification"}, stop, 62.0) is None
    waiting = state_of({"hook_event_name": "Notification", "message": "Claude needs you"},
                       start, 3.0)
    assert waiting["state"] == "idle" and waiting["message"] == "Claude needs you"
    limited = state_of({"hook_event_name": "StopFailure", "error": "rate_limit",
                        "last_assistant_message": "API Error: Request rejected (429)"},
                       start, 4.0)
    assert limited["state"] == "rate-limited" and limited["error"] == "rate_limit"
    overloaded = state_of({"hook_event_name": "StopFailure", "error": "server_error",
                           "last_assistant_message": "API Error: 529 Overloaded. Try again"},
                          start, 5.0)
    assert overloaded["state"] == "rate-limited"
    broken = state_of({"hook_event_name": "StopFailure", "error": "authentication_failed"},
                      start, 6.0)
    assert broken["state"] == "error"
    assert state_of({"hook_event_name": "PostToolUse"}, start, 7.0) is None


def test_the_hook_records_state_and_conversation_and_primes(
        tmp_path: Path, sol_home: object) -> None:
    station = tmp_path / "outpost"
    station.mkdir()
    env = {**os.environ, "SOL_TETHER": str(station / "tether.json"), "SOL_SESSION": "s9",
           "SOL_ATTEMPT": "1", "SOL_WRIT": "w"}
    event = {"hook_event_name": "SessionStart", "session_id": "conv-1", "source": "startup"}
    done = subprocess.run([sys.executable, "-P", "-m", "reconciler.drivers.hook"],
                          input=json.dumps(event), capture_output=True, text=True, env=env,
                          timeout=30)
    assert done.returncode == 0  # no tether: prime fails, the agent is never broken
    assert "sol prime failed" in done.stdout
    assert json.loads((station / ACTIVITY).read_text())["state"] == "working"
    assert json.loads((station / CONVERSATION).read_text()) == {
        "attempt": "1", "writ": "w", "id": "conv-1"}
    garbage = subprocess.run([sys.executable, "-P", "-m", "reconciler.drivers.hook"], input="{oops",
                             capture_output=True, text=True, env=env, timeout=30)
    assert garbage.returncode == 0
