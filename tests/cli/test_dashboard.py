"""`sol dashboard` against a real sphere: real git, tmux on a private socket, SQLite and
the `script` agent, worked by `sol apply` and `sol reconcile --once`.

The app is driven by Textual's own pilot (`App.run_test`) for what it shows and does;
attaching, which hands the terminal to tmux and takes it back, is tested on the real
command in a tmux pane of its own.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from subprocess import CompletedProcess

import pytest
from conftest import poll
from helpers import world_yaml, writ_status, writ_yaml, write_specs

from reconciler.cli.dashboard_app import Dashboard, TextScreen
from reconciler.core.home import Home, session_name
from reconciler.core.suspension import STATUS_KEY, WRIT
from reconciler.drivers.sphere import Sphere

Sol = Callable[..., CompletedProcess[str]]
W = "shop"
DASHBOARD = "suspend/resume"
"""In the dashboard's footer: the dashboard is what the terminal shows."""


def specs(tmp_path: Path, repo: Path, *writs: str) -> Path:
    gate = json.dumps("test ! -f bad.txt")
    world = world_yaml(W, repo, extra="forge:\n  maxAttempts: 1\n  gates:\n"
                                      f"    - {{name: check, run: {gate}, timeout: 30s}}\n")
    return write_specs(tmp_path / "specs", world, *writs)


def table(app: Dashboard) -> dict[str, str]:
    """writ -> the phase its row shows."""
    grid = app.query_one("#writs")
    return {key: grid.get_cell(key, "phase").plain.split(" ")[0] for key in app.keys}


async def until(pilot: object, condition: Callable[[], object], what: str,
                timeout: float = 30) -> None:
    """Let the app run (its own polling included) until condition() holds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await pilot.pause(0.1)


def phase(home: Home, name: str) -> str:
    return writ_status(home, W, name).phase


def test_rows_change_phase_live_filter_narrows_retry_and_suspend_act(
        sol: Sol, sol_home: Home, repo: Path, tmp_path: Path) -> None:
    """good lands, then bad (which depends on it) works, waits for the test's word and
    fails its gate: each phase shows in the table as it comes, no key pressed; `/`
    narrows the rows; `r` re-drives the Failed writ; `s` suspends it and `s` again
    resumes it, as the store records; enter describes it."""
    go = tmp_path / "go"
    path = specs(tmp_path, repo, writ_yaml("good", W, "echo ok > good.txt"),
                 writ_yaml("bad", W, f"until [ -f {go} ]; do sleep 0.05; done\n"
                                     "echo no > bad.txt", extra="dependsOn: [good]"))
    sol("apply", "-f", str(path), check=True)
    sphere = Sphere(sol_home)
    app = Dashboard(sphere)

    def shows(**phases: str) -> Callable[[], bool]:
        return lambda: table(app) == {f"{W}/{name}": p for name, p in phases.items()}

    def reconcile_until(name: str, wanted: set[str]) -> None:
        def step() -> bool:
            sol("reconcile", "--once", check=True)
            return phase(sol_home, name) in wanted
        poll(step, timeout=30, interval=0.1, what=f"{name} {wanted}")

    async def scenario() -> None:
        async with app.run_test(size=(120, 36)) as pilot:
            await until(pilot, shows(good="Resolved", bad="Pending"), "good Resolved")
            reconcile_until("bad", {"Working"})  # good lands, bad is cast
            await until(pilot, shows(good="Merged", bad="Working"), "bad Working")
            go.touch()
            await until(pilot, shows(good="Merged", bad="Resolved"), "bad Resolved")
            reconcile_until("bad", {"Failed"})  # its gate fails, maxAttempts 1
            await until(pilot, shows(good="Merged", bad="Failed"), "bad Failed")

            await pilot.press("slash", "b", "a", "d")
            await until(pilot, lambda: app.keys == [f"{W}/bad"], "filtered to bad")
            await pilot.press("enter")  # keeps the filter, back to the table
            assert app.keys == [f"{W}/bad"]

            await pilot.press("r")
            assert phase(sol_home, "bad") == "Pending"
            retried = writ_status(sol_home, W, "bad").status["retries"]
            assert retried[-1]["by"] == "sol retry"
            await until(pilot, shows(bad="Pending"), "retried row")

            await pilot.press("s")
            assert writ_status(sol_home, W, "bad").status.get(STATUS_KEY[WRIT])
            await until(pilot, lambda: "(susp)" in app.cells[f"{W}/bad"][1].plain,
                        "suspended row")
            await pilot.press("s")
            assert writ_status(sol_home, W, "bad").status.get(STATUS_KEY[WRIT]) is None
            await until(pilot, lambda: "(susp)" not in app.cells[f"{W}/bad"][1].plain,
                        "resumed row")

            await pilot.press("escape")  # clears the filter: both rows again
            await until(pilot, lambda: len(app.keys) == 2, "filter cleared")
            await pilot.press("o")  # sort by the next key: phase, Pending first
            assert app.sort == "phase" and app.keys == [f"{W}/bad", f"{W}/good"]
            grid = app.query_one("#writs")
            await pilot.click("#writs", offset=(grid.columns["name"].get_render_width(grid)
                                                + 2, 0))  # PHASE's header again: reversed
            await until(pilot, lambda: app.keys == [f"{W}/good", f"{W}/bad"], "reversed")
            await pilot.resize_terminal(80, 24)  # over SSH: the side panes go below
            await until(pilot, lambda: app.screen.has_class("compact"), "compact layout")
            assert grid.size.height >= 5 and grid.region.bottom <= 24 - 8
            await pilot.press("enter")  # describe the selected writ
            await until(pilot, lambda: isinstance(app.screen, TextScreen), "describe")
            assert "Phase:" in app.screen.body
            sol("suspend", "writ", f"{W}/bad", check=True)  # the board goes on underneath
            await until(pilot, lambda: "(susp)" in app.cells[f"{W}/bad"][1].plain,
                        "a change seen while describe is shown")
            await pilot.press("escape")
            await until(pilot, lambda: not isinstance(app.screen, TextScreen), "closed")
            await pilot.press("l")  # its agent's log, as `sol logs` prints it
            await until(pilot, lambda: isinstance(app.screen, TextScreen), "the log")
            assert "sol script agent" in app.screen.body and "\x1b" not in app.screen.body
            await pilot.press("escape", "question_mark")
            await until(pilot, lambda: isinstance(app.screen, TextScreen)
                        and "attach" in app.screen.body, "the help")

    try:
        asyncio.run(scenario())
    finally:
        sphere.close()


class Pane:
    """A tmux server of the test's own with one window, as a user's terminal."""

    def __init__(self, socket: str, argv: list[str], env: dict[str, str]) -> None:
        self.socket = socket
        self.tmux("new-session", "-d", "-x", "100", "-y", "30", "-s", "term",
                  " ".join(argv), env=env)

    def tmux(self, *args: str, env: dict[str, str] | None = None) -> str:
        return subprocess.run(["tmux", "-L", self.socket, *args], capture_output=True,
                              text=True, env=env, check=True).stdout

    def screen(self) -> str:
        return self.tmux("capture-pane", "-p", "-t", "term")

    def flag(self, name: str) -> str:
        return self.tmux("display-message", "-p", "-t", "term", f"#{{{name}}}").strip()

    def kill(self) -> None:
        subprocess.run(["tmux", "-L", self.socket, "kill-server"], capture_output=True)


@pytest.fixture
def pane() -> Iterator[Callable[..., Pane]]:
    made: list[Pane] = []

    def start(argv: list[str], env: dict[str, str]) -> Pane:
        made.append(Pane(f"dash-{os.getpid()}", argv, env))
        return made[-1]

    yield start
    for p in made:
        p.kill()


def test_attach_hands_the_terminal_to_the_agent_and_comes_back(
        sol: Sol, sol_home: Home, repo: Path, tmp_path: Path,
        pane: Callable[..., Pane]) -> None:
    """`a` on a writ whose agent session is live shows the agent's pane; detaching its
    client brings the dashboard back; `q` leaves the terminal as it was."""
    path = specs(tmp_path, repo, writ_yaml("slow", W, "echo AGENT-AT-WORK; sleep 60"))
    sol("apply", "-f", str(path), check=True)
    sol("reconcile", "--once", check=True)
    store = Sphere(sol_home).store
    agent = poll(lambda: store.agent_for(W, "slow"), timeout=10, what="an agent")
    store.close()
    session = session_name(W, agent.name)
    env = {k: v for k, v in os.environ.items() if k not in ("TMUX", "TMUX_PANE")}
    term = pane([sys.executable, "-m", "reconciler", "dashboard"], env)
    poll(lambda: DASHBOARD in term.screen() and "Working" in term.screen(), timeout=15,
         what=f"the dashboard's first frame:\n{term.screen()}")
    poll(lambda: "AGENT-AT-WORK" in term.screen(), timeout=15,
         what=f"the preview of the agent's pane:\n{term.screen()}")
    term.tmux("send-keys", "-t", "term", "a")
    poll(lambda: DASHBOARD not in term.screen() and "AGENT-AT-WORK" in term.screen(),
         timeout=10, what=f"the agent's session in the terminal:\n{term.screen()}")
    subprocess.run(["tmux", "-L", sol_home.socket_name, "detach-client", "-s", session],
                   check=True, capture_output=True, env=env)
    poll(lambda: DASHBOARD in term.screen() and "Working" in term.screen(), timeout=10,
         what=f"the dashboard again:\n{term.screen()}")
    assert term.flag("alternate_on") == "1"
    term.tmux("send-keys", "-t", "term", "q")
    poll(lambda: term.flag("alternate_on") == "0", timeout=10, what="the terminal restored")
    assert term.flag("mouse_any_flag") == "0"
    assert term.flag("cursor_flag") == "1"


def test_no_terminal_or_no_sphere_is_one_sentence(sol: Sol, sol_home: Home,
                                                   tmp_path: Path) -> None:
    Sphere(sol_home).close()  # a sphere, but stdin and stdout are pipes here
    result = sol("dashboard")
    assert result.returncode == 1 and "needs a terminal" in result.stderr, result.stderr
    os.environ["SOL_HOME"] = str(tmp_path / "nowhere")
    try:
        result = sol("dashboard")
    finally:
        os.environ["SOL_HOME"] = str(sol_home.root)
    assert result.returncode == 1 and "sol init" in result.stderr, result.stderr


def test_a_message_is_shown_as_written_never_as_markup() -> None:
    from reconciler.cli.dashboard_text import writ_cells
    from reconciler.daemon.board import WritRow

    said = "[red]not markup[/] \\x1b]0;title"  # as the board hands it: inert already
    cells = writ_cells(WritRow(W, "x", "t", "Working", said, "vega", 1, time.time()),
                       time.time(), qualified=True)
    assert cells[0].plain == f"{W}/x" and cells[6].plain == said and not cells[6].spans
