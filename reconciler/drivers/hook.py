"""What Claude Code's hooks run: `python -m reconciler.drivers.hook`, the event JSON on stdin.

Pane silence says little about a TUI (it redraws while it thinks, and is silent while a
long tool call runs), so the agent's CLI tells sol what it is doing instead. Each hook
writes the agent's state to `activity.json` beside its tether (or the envoy's persona),
atomically; the sentinel reads it like the tether, without the database:

- `working`: a session started or a turn began (a prompt or a nudge was submitted);
- `idle`: the turn ended (Stop) or the CLI waits for input (Notification), since `at`;
- `rate-limited` / `error`: the turn ended on an API error (StopFailure).

SessionStart also records the CLI's conversation id per attempt (`claude-session.json`),
so a respawn resumes the conversation, and prints `sol prime`, which the CLI adds to the
model's context after a start, a resume or a compaction.

A hook must never break the agent: any failure here is swallowed and exit is 0.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from reconciler.core.files import write_private

ACTIVITY = "activity.json"
CONVERSATION = "claude-session.json"
RATE_LIMITED = ("rate_limit", "overloaded", "(429)")
"""Words of a StopFailure that mean "wait", not "stuck": its `error` is `rate_limit` for
a 429, but `server_error` for a 529, whose message says `529 Overloaded`."""


def station() -> Path | None:
    """The outpost (from SOL_TETHER) or envoy directory (from SOL_PERSONA) of this agent."""
    for var in ("SOL_TETHER", "SOL_PERSONA"):
        value = os.environ.get(var)
        if value:
            return Path(value).parent
    return None


def write(path: Path, data: dict[str, Any]) -> None:
    """A JSON file written atomically and readable by the user alone (it may name the
    user's projects and sessions)."""
    write_private(path, json.dumps(data, indent=1), durable=True)


def read(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def state_of(event: dict[str, Any], previous: dict[str, Any] | None, now: float
             ) -> dict[str, Any] | None:
    """Pure: the activity record after `event`, or None to leave it as it is."""
    name = str(event.get("hook_event_name") or "")
    base = {"event": name, "at": now, "session": os.environ.get("SOL_SESSION", ""),
            "attempt": os.environ.get("SOL_ATTEMPT", ""),
            "conversation": event.get("session_id"),
            "transcript": event.get("transcript_path")}
    if name in ("SessionStart", "UserPromptSubmit"):
        return {**base, "state": "working"}
    if name == "Stop":
        return {**base, "state": "idle"}
    if name == "Notification":
        if previous and previous.get("state") in ("idle", "rate-limited", "error") \
                and previous.get("session") == base["session"]:
            return None  # already idle: keep when the idling began
        return {**base, "state": "idle", "message": str(event.get("message") or "")[:500]}
    if name == "StopFailure":
        error = str(event.get("error") or event.get("error_type") or "unknown")
        details = event.get("error_details") or event.get("last_assistant_message") or ""
        text = f"{error} {details}".lower()
        limited = any(word in text for word in RATE_LIMITED)
        return {**base, "state": "rate-limited" if limited else "error", "error": error,
                "message": str(details)[:500]}
    return None


def _wake_sentinel() -> None:
    """The world's sentinel (if a daemon runs one) plans from the new state now: a turn
    that ended starts its stall clock."""
    home, world = os.environ.get("SOL_HOME"), os.environ.get("SOL_WORLD")
    if home and world:
        wake = Path(home) / "run" / f"sentinel-{world}.wake"
        if wake.parent.is_dir():
            wake.touch()


def _prime() -> str:
    """`sol prime`, after the standing orders when the project tracks the persona file."""
    try:
        from reconciler.drivers.agent import prime

        orders = os.environ.get("SOL_PERSONA_CONTEXT")
        text = Path(orders).read_text(encoding="utf-8") + "\n\n" if orders else ""
        return text + prime()
    except Exception as exc:  # noqa: BLE001 - a hook must never break the agent
        return f"(sol prime failed: {exc})"


def main() -> None:
    try:
        event = json.loads(sys.stdin.read() or "{}")
    except ValueError:
        event = {}
    if not isinstance(event, dict):
        event = {}
    where = station()
    if where is not None and where.is_dir():
        try:
            path = where / ACTIVITY
            record = state_of(event, read(path), time.time())
            if record is not None:
                write(path, record)
                _wake_sentinel()
            if event.get("hook_event_name") == "SessionStart" and event.get("session_id"):
                write(where / CONVERSATION, {
                    "attempt": os.environ.get("SOL_ATTEMPT", ""),
                    "writ": os.environ.get("SOL_WRIT", ""),
                    "id": str(event["session_id"])})
        except OSError:
            pass
    if event.get("hook_event_name") == "SessionStart" and os.environ.get("SOL_TETHER"):
        print(_prime())


if __name__ == "__main__":
    main()
    sys.exit(0)
