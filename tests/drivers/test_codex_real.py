"""The real Codex CLI drives a writ to Merged under `sol up`, unattended.

`tests/fakes/openai_server.py` plays the model on 127.0.0.1 (the Responses API, streamed),
answering from a script of turns (shell tool calls that commit and run `sol resolve`)
and recording every request. The CLI is the pinned npm package `tests/clis/install`
puts in `.venv/clis`. sol passes `OPENAI_BASE_URL` into the CODEX_HOME it seeds.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from conftest import ROOT, git, poll
from helpers import writ_status, write_specs
from test_claude_real import _pane_pid, agent_logs, commit, events, merged, writ
from test_prefect import daemon_commands

from reconciler.controllers.sentinel_act import GO_ON
from reconciler.core.home import Home
from reconciler.core.store import Store
from reconciler.drivers.runtimes import codex
from tests.fakes.openai_server import OpenAIServer

CODEX_BIN = Path(os.environ.get("SOL_TEST_CODEX_BIN") or ROOT / ".venv/clis/node_modules/.bin")
SECRET = "sk-openai-secret-456"
DIALOGS = ("Sign in with ChatGPT", "Do you trust", "Allow Codex to work", "Approve",
           "Update available")

pytestmark = pytest.mark.timeout(300)


@pytest.fixture
def model(monkeypatch: pytest.MonkeyPatch) -> Iterator[OpenAIServer]:
    with scripted_codex(monkeypatch) as server:
        yield server


@contextmanager
def scripted_codex(monkeypatch: pytest.MonkeyPatch) -> Iterator[OpenAIServer]:
    """The scripted model, and an environment in which `sol up` finds the real CLI."""
    if not (CODEX_BIN / "codex").exists():
        message = f"the codex CLI is not installed in {CODEX_BIN}: run tests/clis/install"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    with OpenAIServer() as server:
        monkeypatch.setenv("PATH", f"{CODEX_BIN}{os.pathsep}{os.environ['PATH']}")
        monkeypatch.setenv("OPENAI_BASE_URL", server.url)
        monkeypatch.setenv("OPENAI_API_KEY", SECRET)
        yield server


def world(repo: Path, *, stall: str = "10m") -> str:
    return json.dumps({
        "apiVersion": "sol/v1", "kind": "World", "metadata": {"name": "shop"},
        "spec": {"source": str(repo), "runtime": {"name": "codex", "model": "gpt-fake"},
                 "capacity": {"maxActive": 4},
                 "forge": {"maxAttempts": 3,
                           "gates": [{"name": "check", "run": "true", "timeout": "60s"}]},
                 "sentinel": {"stallAfter": stall, "maxRespawns": 3}},
    }) + "\n"


class Cmdlines:
    """Watches every process's command line for a needle while the block runs."""

    def __init__(self, *needles: bytes) -> None:
        self.needles, self.seen = needles, []  # type: list[str]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._scan, daemon=True)

    def _scan(self) -> None:
        while not self._stop.is_set():
            for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
                try:
                    args = cmdline.read_bytes()
                except OSError:
                    continue
                if any(n in args for n in self.needles):
                    self.seen.append(args.decode(errors="replace"))
            self._stop.wait(0.02)

    def __enter__(self) -> Cmdlines:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def test_a_codex_writ_lands_with_its_persona_and_no_secret_in_sight(
        sol_home: Home, repo: Path, tmp_path: Path, model: OpenAIServer) -> None:
    model.script("writ `greet`", [
        {"text": "Writing the greeting.", "bash": "sleep 2"},
        commit("greeting.txt", "hello"),
    ])
    specs = write_specs(tmp_path / "specs", world(repo),
                        writ("greet", "PROMPT-MARKER: write a greeting into greeting.txt."))
    with Cmdlines(SECRET.encode(), b"PROMPT-MARKER") as watch, \
            daemon_commands(sol_home, tmp_path) as sol:
        assert sol("up", "-f", str(specs)).returncode == 0
        poll(lambda: merged(sol_home, "greet"), timeout=180, interval=0.5,
             what="writ greet to be merged")
    assert not watch.seen, f"a secret or the prompt on a command line: {watch.seen[0][:200]}"

    clone = sol_home.repo("shop")
    assert git(clone, "show", "main:greeting.txt") == "hello"
    assert "Sol-Writ: shop/greet" in git(clone, "log", "-1", "--format=%B", "main")

    main = [r for r in model.messages_requests() if r["tools"]]
    assert main and {r["headers"].get("authorization") for r in main} == {f"Bearer {SECRET}"}
    assert "exec_command" in main[0]["tools"] and main[0]["model"] == "gpt-fake"
    first = json.dumps(main[0]["messages"])
    assert "# AGENTS.md instructions for" in first  # the persona file, as Codex sends it
    assert "# sol agent" in first and "PROMPT-MARKER" in first
    assert codex.KICKOFF in first
    # The model's first shell call ran: its result came back in the next request.
    second = next(r for r in main if r["slot"] == 1)
    assert any(i.get("type") == "function_call_output" for i in second["messages"])

    directory = sol_home.codex_home.absolute()
    config = tomllib.loads((directory / "config.toml").read_text())
    assert config["model_providers"]["sol"]["base_url"] == model.url
    assert config["model_providers"]["sol"]["env_key"] == "OPENAI_API_KEY"
    assert config["approval_policy"] == "never" and config["features"]["daemon_auto_start"] \
        is False
    assert directory.stat().st_mode & 0o777 == 0o700
    snapshots = list((directory / "shell_snapshots").glob("*"))
    assert snapshots and all(p.stat().st_mode & 0o077 == 0 for p in snapshots), snapshots
    log = agent_logs(sol_home)
    assert not [d for d in DIALOGS if d.replace(" ", "") in log], "a dialog was shown"


def test_a_killed_codex_resumes_its_conversation(
        sol_home: Home, repo: Path, tmp_path: Path, model: OpenAIServer) -> None:
    model.script("writ `talk`", [
        commit("one.txt", "one", resolve=False),
        {"text": "Committed one.txt; thinking about the rest."},
        commit("two.txt", "two"),
    ])
    specs = write_specs(tmp_path / "specs", world(repo), writ("talk"))
    with daemon_commands(sol_home, tmp_path) as sol:
        assert sol("up", "-f", str(specs)).returncode == 0
        # Slot 1 (the text) was asked for: the first turn is over, one.txt committed.
        model.wait_for(lambda s: any(r.get("slot") == 1 for r in s.requests), timeout=120)
        record = writ_status(sol_home, "shop", "talk")
        session = f"sol-shop-{record.status['agent']}"
        directory = sol_home.codex_home.absolute()
        worktree = sol_home.worktree("shop", record.status["agent"])
        poll(lambda: codex.find_session(directory, worktree, 0), what="the session JSONL")
        pid = int(poll(lambda: _pane_pid(sol_home, session), what="the codex pid"))
        os.kill(pid, signal.SIGKILL)
        poll(lambda: merged(sol_home, "talk"), timeout=150, interval=0.5,
             what="writ talk to be merged after the respawn")

    resumed = next(r for r in model.messages_requests()
                   if codex.RESUMED in json.dumps(r["messages"]))
    history = json.dumps(resumed["messages"])
    assert "one.txt" in history and "thinking about the rest" in history
    assert resumed["slot"] == 2
    assert len(events(sol_home, "respawned")) == 1
    assert git(sol_home.repo("shop"), "show", "main:two.txt") == "two"


HOLD = 8  # seconds


def test_a_rate_limited_codex_waits_holds_its_world_then_goes_on(
        sol_home: Home, repo: Path, tmp_path: Path, model: OpenAIServer) -> None:
    """Codex retries a 429 five times, then ends its turn and waits at its prompt: sol
    reads that in the rollout, holds the world (no nudge, no stall, no new cast) until
    the limit resets, then tells it to go on. Codex writes no reset time with an API
    key, so the hold is sol.yaml's `rateLimitHold` (60 s by default; 8 s here)."""
    sol_home.config.write_text(f"rateLimitHold: {HOLD}s\n")
    model.script("writ `busy`", [
        {"error": 429, "times": 6, "retry_after": 1},  # the first try and 5 retries
        {"text": "Going on after the rate limit.", "bash": "sleep 3"},
        commit("busy.txt", "done"),
    ])
    model.script("writ `later`", [commit("later.txt", "later")])
    specs = write_specs(tmp_path / "specs", world(repo, stall="5s"), writ("busy"))
    with daemon_commands(sol_home, tmp_path) as sol:
        assert sol("up", "-f", str(specs)).returncode == 0
        record = poll(lambda: (r := writ_status(sol_home, "shop", "busy")) is not None
                      and r.status.get("rateLimit") and r, timeout=120, interval=0.2,
                      what="RateLimited on writ busy")
        limit = record.status["rateLimit"]
        [condition] = [c for c in record.status["conditions"] if c["type"] == "RateLimited"]
        assert condition["status"] == "True" and "429 Too Many Requests" in condition["message"]
        assert limit["error"] == "429" and limit["until"] == limit["at"] + HOLD
        store = Store(sol_home.db)
        try:
            held = store.get("World", "", "shop").status["rateLimitedUntil"]
        finally:
            store.close()
        assert held == limit["until"]
        # A writ applied while the world is held waits, saying why.
        write_specs(specs, world(repo, stall="5s"), writ("busy"), writ("later"))
        assert sol("apply", "-f", str(specs)).returncode == 0
        waiting = poll(lambda: (r := writ_status(sol_home, "shop", "later")) is not None
                       and "rate limited" in (r.message or "") and r, timeout=30,
                       what="writ later to wait for the rate limit")
        assert waiting.phase == "Pending"
        listing = sol("get", "writs")
        assert "rate limited" in listing.stdout, listing.stdout
        # After the reset the agent is told to go on; its new turn clears RateLimited.
        assert model.wait_for(lambda s: s.saw(GO_ON), timeout=HOLD + 30)
        poll(lambda: events(sol_home, "rate-limit-cleared"), timeout=30,
             what="RateLimited cleared")
        poll(lambda: merged(sol_home, "busy") and merged(sol_home, "later"), timeout=120,
             interval=0.5, what="both writs merged after the rate limit")

    record = writ_status(sol_home, "shop", "busy")
    [condition] = [c for c in record.status["conditions"] if c["type"] == "RateLimited"]
    assert condition["status"] == "False" and not record.status.get("rateLimit")
    [over] = events(sol_home, "rate-limit-over")
    assert over.ts >= held  # told to go on once the limit had reset, not before
    [cast] = [e for e in events(sol_home, "cast") if e.name == "later"]
    assert cast.ts >= held  # not cast while the world was held
    assert not events(sol_home, "nudged") and not events(sol_home, "stalled")
    assert not events(sol_home, "respawned") and not events(sol_home, "escalated")
    assert len(events(sol_home, "rate-limited")) == 1
    assert git(sol_home.repo("shop"), "show", "main:busy.txt") == "done"


def test_seeding_trusts_each_worktree_and_drops_gone_ones(tmp_path: Path) -> None:
    directory = tmp_path / "codex"
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir()
    two.mkdir()
    codex.seed(directory, worktree=one, env={})
    codex.seed(directory, worktree=two, env={"OPENAI_BASE_URL": "http://gw.example/v1"})
    config = tomllib.loads((directory / "config.toml").read_text())
    assert set(config["projects"]) == {str(one), str(two)}
    assert config["model_providers"]["sol"]["base_url"] == "http://gw.example/v1"
    one.rmdir()
    codex.seed(directory, worktree=two, env={})
    config = tomllib.loads((directory / "config.toml").read_text())
    assert set(config["projects"]) == {str(two)}
    assert config["model_providers"]["sol"]["base_url"] == codex.DEFAULT_BASE_URL
    assert (directory / "config.toml").stat().st_mode & 0o777 == 0o600
    assert (directory / "shell_snapshots").stat().st_mode & 0o777 == 0o700
