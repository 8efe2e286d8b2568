"""The real Claude Code CLI drives writs to Merged under `sol up`, unattended.

No AI service is reachable here: `tests/fakes/anthropic_server.py` plays the model on
127.0.0.1 (ANTHROPIC_BASE_URL), answering each conversation from a script of turns (Bash
tool calls that commit and run `sol resolve`, text, API errors) and recording every
request, so a test can tell what the CLI sent. The CLI itself is the pinned npm package
that `tests/clis/install` puts in `.venv/clis` (run by `.ci/run`).
"""

from __future__ import annotations

import json
import os
import re
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT, git, poll
from helpers import writ_status, write_specs
from test_prefect import daemon_commands

from reconciler.controllers.sentinel_act import GO_ON
from reconciler.core.home import Home
from reconciler.core.store import Store
from reconciler.drivers.runtimes.claude import KICKOFF, RESUMED
from tests.fakes.anthropic_server import AnthropicServer

CLAUDE_BIN = Path(os.environ.get("SOL_TEST_CLAUDE_BIN") or ROOT / ".venv/clis/node_modules/.bin")
SECRET = "sk-ant-secret-123"
DIALOGS = ("trust this folder", "Choose the text style", "Bypass Permissions mode",
           "Do you want to use this API key", "Unable to connect to Anthropic")

pytestmark = pytest.mark.timeout(300)


@pytest.fixture
def model(monkeypatch: pytest.MonkeyPatch) -> Iterator[AnthropicServer]:
    with scripted_model(monkeypatch) as server:
        yield server


@contextmanager
def scripted_model(monkeypatch: pytest.MonkeyPatch) -> Iterator[AnthropicServer]:
    """The scripted model, and an environment in which `sol up` finds the real CLI."""
    if not (CLAUDE_BIN / "claude").exists():
        message = f"the claude CLI is not installed in {CLAUDE_BIN}: run tests/clis/install"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    with AnthropicServer() as server:
        monkeypatch.setenv("PATH", f"{CLAUDE_BIN}{os.pathsep}{os.environ['PATH']}")
        monkeypatch.setenv("ANTHROPIC_BASE_URL", server.url)
        monkeypatch.setenv("ANTHROPIC_API_KEY", SECRET)
        monkeypatch.setenv("CLAUDE_CODE_MAX_RETRIES", "1")  # a 429 ends the turn in seconds
        yield server


def world(repo: Path, *, stall: str = "10m", gate: str = "true", extra: str = "") -> str:
    return json.dumps({
        "apiVersion": "sol/v1", "kind": "World", "metadata": {"name": "shop"},
        "spec": {"source": str(repo), "runtime": {"name": "claude", "sandboxed": True},
                 "capacity": {"maxActive": 4},
                 "forge": {"maxAttempts": 3,
                           "gates": [{"name": "check", "run": gate, "timeout": "60s"}]},
                 "sentinel": {"stallAfter": stall, "maxRespawns": 3}},
    }) + "\n" + extra


def writ(name: str, description: str = "Do the work.") -> str:
    return json.dumps({"apiVersion": "sol/v1", "kind": "Writ",
                       "metadata": {"name": name, "world": "shop"},
                       "spec": {"title": f"Writ {name}", "description": description}}) + "\n"


def commit(path: str, text: str, *, resolve: bool = True) -> dict[str, str]:
    """A Bash turn: write a file, commit it, and (by default) resolve."""
    line = f"printf '%s\\n' {text} > {path} && git add -A && git commit -qm {path}"
    return {"bash": line + (" && sol resolve" if resolve else "")}


def merged(home: Home, name: str) -> bool:
    record = writ_status(home, "shop", name)
    return record is not None and record.phase == "Merged"


def events(home: Home, *types: str) -> list[Any]:
    store = Store(home.db)
    try:
        return store.events(types=list(types))
    finally:
        store.close()


_ESCAPES = re.compile(r"\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b\[[0-9;?<>=]*[ -/]*[@-~]"
                      r"|\x1b[78=>NOMDEHc]|\x1b[()][AB0-9]")


def agent_logs(home: Home) -> str:
    """What the agents' panes drew, escape sequences and all whitespace removed (a TUI
    moves the cursor between words)."""
    raw = "".join(p.read_text(errors="replace") for p in (home.logs / "agents").glob("*.log"))
    return re.sub(r"\s+", "", _ESCAPES.sub(" ", raw))


def first_request(server: AnthropicServer, needle: str) -> dict[str, Any]:
    """The first main request (with tools) whose messages or system hold `needle`."""
    for request in server.requests:
        if request.get("tools") and needle in json.dumps([request.get("system"),
                                                         request.get("messages")]):
            return request
    raise AssertionError(f"no request to the model held {needle!r}")


def test_a_writ_lands_through_the_real_cli_and_a_gate_failure_reaches_it(
        sol_home: Home, repo: Path, tmp_path: Path, model: AnthropicServer) -> None:
    """Pending -> Working -> Resolved -> Merged; persona and a 64 KB description reach
    the model; the gate's 250-line failure comes back to it on attempt 2."""
    filler = "".join(f"filler line {n:05d} of a long description\n" for n in range(1700))
    description = "Write a greeting into greeting.txt.\n" + filler + "END-OF-DESCRIPTION\n"
    assert len(description.encode()) >= 64 * 1024
    gate = ("grep -q hello greeting.txt && exit 0; seq 1 250; "
            "echo GATE-SAW-$(cat greeting.txt); exit 1")
    model.script("This is attempt 2", [commit("greeting.txt", "hello")])
    model.script("writ `greet`", [commit("greeting.txt", "wrong")])
    specs = write_specs(tmp_path / "specs", world(repo, gate=gate), writ("greet", description))
    with daemon_commands(sol_home, tmp_path) as sol:
        assert sol("up", "-f", str(specs)).returncode == 0
        poll(lambda: merged(sol_home, "greet"), timeout=180, interval=0.5,
             what="writ greet to be merged")

    clone = sol_home.repo("shop")
    assert git(clone, "show", "main:greeting.txt") == "hello"
    assert "Sol-Writ: shop/greet" in git(clone, "log", "-1", "--format=%B", "main")
    kinds = [e.type for e in events(sol_home, "cast", "resolved", "sent-back", "merged")]
    assert kinds[0] == "cast" and kinds[-1] == "merged" and kinds.count("resolved") == 2

    first = first_request(model, "END-OF-DESCRIPTION")
    seen = json.dumps([first["system"], first["messages"]])
    assert "CLAUDE.local.md" in seen and "# sol agent" in seen  # the persona file, loaded
    assert "Writ greet" in seen and "filler line 01699" in seen  # the whole assignment
    assert KICKOFF in seen
    assert first["headers"]["x-api-key"] == SECRET
    second = first_request(model, "This is attempt 2")
    feedback = json.dumps(second["messages"])
    assert "\\n249\\n250\\nGATE-SAW-wrong" in feedback

    # The CLI ran the Bash calls: "hello" on main came from the second one. (The pane's
    # drawing of a tool call is not asserted: `sol resolve` ends the session, sometimes
    # before the TUI has drawn it.)
    log = agent_logs(sol_home)
    assert not [d for d in DIALOGS if d.replace(" ", "") in log], "a dialog was shown"


def test_a_killed_cli_resumes_its_conversation_and_an_idle_one_is_nudged(
        sol_home: Home, repo: Path, tmp_path: Path, model: AnthropicServer) -> None:
    model.script("writ `talk`", [
        commit("one.txt", "one", resolve=False),
        {"text": "I have committed one.txt and will think about the rest."},
        {"text": "Thinking further."},
        commit("two.txt", "two"),
    ])
    specs = write_specs(tmp_path / "specs", world(repo, stall="4s"), writ("talk"))
    with daemon_commands(sol_home, tmp_path) as sol:
        assert sol("up", "-f", str(specs)).returncode == 0
        # The turn ended without `sol resolve`: the Stop hook starts the clock, and the
        # nudge arrives as a user message.
        nudge = model.wait_for(lambda s: s.saw("your turn ended"), timeout=90)
        assert nudge
        [nudged] = poll(lambda: events(sol_home, "nudged"), what="the nudge event")
        # The answer to the nudge (slot 2) was served and its turn ended (the Stop hook
        # wrote it down, so the CLI's transcript holds it): kill the CLI.
        model.wait_for(lambda s: any(r.get("slot") == 2 and r.get("tools")
                                     for r in s.requests), timeout=60)
        record = writ_status(sol_home, "shop", "talk")
        activity = sol_home.outpost("shop", record.status["agent"]) / "activity.json"
        poll(lambda: json.loads(activity.read_text()).get("at", 0) > nudged.ts
             and json.loads(activity.read_text()).get("state") == "idle",
             what="the turn after the nudge to end")
        # The CLI writes its transcript after the Stop hook, lazily: a kill before the
        # answer is written loses it (and the resumed history with it).
        station = sol_home.outpost("shop", record.status["agent"])
        poll(lambda: any("Thinking further." in p.read_text()
                         for p in (station / "claude" / "projects").rglob("*.jsonl")),
             what="the answer to the nudge in the CLI's transcript")
        session = f"sol-shop-{record.status['agent']}"
        pid = int(poll(lambda: _pane_pid(sol_home, session), what="the claude pid"))
        os.kill(pid, signal.SIGKILL)
        poll(lambda: merged(sol_home, "talk"), timeout=120, interval=0.5,
             what="writ talk to be merged after the respawn")

    resumed = first_request(model, RESUMED)
    history = json.dumps(resumed["messages"])

    assert "one.txt" in history and "Thinking further." in history  # the earlier messages
    assert "your turn ended" in history
    assert resumed["slot"] == 3
    assert len(events(sol_home, "respawned")) == 1
    assert not events(sol_home, "stalled")
    assert git(sol_home.repo("shop"), "show", "main:two.txt") == "two"


def _pane_pid(home: Home, session: str) -> int | None:
    import subprocess

    out = subprocess.run(["tmux", "-L", home.socket_name, "list-panes", "-t", f"={session}:",
                          "-F", "#{pane_dead} #{pane_pid}"], capture_output=True, text=True)
    dead, _, pid = out.stdout.strip().partition(" ")
    return int(pid) if dead == "0" and pid.isdigit() else None


def test_a_rate_limit_holds_the_world_without_nudges_then_goes_on(
        sol_home: Home, repo: Path, tmp_path: Path, model: AnthropicServer) -> None:
    model.script("writ `busy`", [
        {"error": 429, "times": 2, "retry_after": 1,
         "message": "Rate limit exceeded; retry after 6s"},
        commit("busy.txt", "done"),
    ])
    specs = write_specs(tmp_path / "specs", world(repo, stall="2s"), writ("busy"))
    with daemon_commands(sol_home, tmp_path) as sol:
        assert sol("up", "-f", str(specs)).returncode == 0
        record = poll(lambda: (r := writ_status(sol_home, "shop", "busy")) is not None
                      and r.status.get("rateLimit") and r, timeout=90,
                      what="RateLimited on writ busy")
        [condition] = [c for c in record.status["conditions"] if c["type"] == "RateLimited"]
        assert condition["status"] == "True" and "429" in condition["message"]
        store = Store(sol_home.db)
        held = store.get("World", "", "shop").status["rateLimitedUntil"]
        store.close()
        assert held >= record.status["rateLimit"]["at"] + 5
        # After the reset the agent is told to go on, and lands its work.
        assert model.wait_for(lambda s: s.saw(GO_ON), timeout=60)
        poll(lambda: merged(sol_home, "busy"), timeout=90, interval=0.5,
             what="writ busy to be merged after the rate limit")
    assert not events(sol_home, "nudged") and not events(sol_home, "stalled")
    assert not events(sol_home, "respawned") and not events(sol_home, "escalated")
    assert len(events(sol_home, "rate-limited")) == 1


def test_no_secret_on_any_command_line_while_four_agents_run(
        sol_home: Home, repo: Path, tmp_path: Path, model: AnthropicServer) -> None:
    names = ["w1", "w2", "w3", "w4"]
    for name in names:
        model.script(f"writ `{name}`", [{"bash": "sleep 3"}, commit(f"{name}.txt", name)])
    seen: list[str] = []
    stop = threading.Event()

    def scan() -> None:
        while not stop.is_set():
            for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
                try:
                    args = cmdline.read_bytes()
                except OSError:
                    continue
                if SECRET.encode() in args or b"PROMPT-MARKER" in args:
                    seen.append(args.decode(errors="replace"))
            stop.wait(0.02)

    watcher = threading.Thread(target=scan, daemon=True)
    watcher.start()
    specs = write_specs(tmp_path / "specs", world(repo),
                        *(writ(n, f"PROMPT-MARKER {n}: commit {n}.txt") for n in names))
    try:
        with daemon_commands(sol_home, tmp_path) as sol:
            assert sol("up", "-f", str(specs)).returncode == 0
            poll(lambda: sum(1 for r in model.requests if r.get("slot") == 1) >= 4,
                 timeout=120, what="four agents at work at once")
            poll(lambda: all(merged(sol_home, n) for n in names), timeout=120, interval=0.5,
                 what="four writs merged")
    finally:
        stop.set()
        watcher.join()
    assert not seen, f"the secret was on a command line: {seen[0][:200]}"
    assert {r["headers"].get("x-api-key") for r in model.requests if r.get("tools")} == {SECRET}
    holders = [p for p in sol_home.root.rglob("*")
               if p.is_file() and SECRET.encode() in p.read_bytes()]
    assert holders == []
    for path in sol_home.root.rglob("*"):
        if path.is_dir():
            assert path.stat().st_mode & 0o077 == 0 or "worktree" in path.parts, path
    assert sol_home.db.stat().st_mode & 0o777 == 0o600
    assert (sol_home.root.stat().st_mode & 0o777) == 0o700


@pytest.mark.skipif(os.geteuid() != 0, reason="only root is refused")
def test_as_root_without_the_sandbox_setting_the_writ_waits_with_one_reason(
        sol_home: Home, repo: Path, tmp_path: Path, model: AnthropicServer, sol) -> None:
    spec = world(repo).replace('"sandboxed": true', '"sandboxed": false')
    specs = write_specs(tmp_path / "specs", spec, writ("rooted"))
    assert sol("apply", "-f", str(specs)).returncode == 0
    assert sol("reconcile", "--once", "-f", str(specs)).returncode == 0
    record = writ_status(sol_home, "shop", "rooted")
    assert record.phase == "Pending" and record.reason == "CastFailed"
    assert "as root" in record.message and "sandboxed: true" in record.message
    assert len(events(sol_home, "cast-failed")) == 1  # one event, not one per pass
    assert model.requests == []
    doctor = sol("doctor")
    assert doctor.returncode == 1 and "sandboxed: true" in doctor.stdout
