"""`sol logs` as an operator reads it: an agent's log split by a header per session
(casts and respawns, with real tmux and the script agent), and the daemon's JSON-lines
logs (written by loguru, as the daemon writes them) shown one line per record."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from conftest import poll
from loguru import logger
from test_prefect import daemon_commands

from reconciler.cli.agent import DAEMON_LOGS, render
from reconciler.controllers import registry, sentinel
from reconciler.controllers.base import Scope
from reconciler.core.home import Home
from reconciler.core.store import Store
from reconciler.core.times import rfc3339
from reconciler.drivers.sphere import Sphere
from tests.helpers import failure, world_yaml, writ_status, writ_yaml, write_specs

RECORD = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d\d:\d\d \| (\w+) +\| ([\w-]+) \| ")
HEADER = re.compile(r"^==== writ shop/a · attempt 1 · (?:respawn (\d) · )?session ([0-9a-f]{12}) "
                    r"· (\S+) ====$", re.M)


@contextmanager
def loguru_file(path: Path, **options: object) -> Iterator[None]:
    """Records written to `path` as the daemon writes them (procs.setup_logging)."""
    handler = logger.add(path, serialize=True, level="INFO", **options)
    try:
        yield
    finally:
        logger.remove(handler)


@contextmanager
def following(*argv: str) -> Iterator[list[str]]:
    """`sol ARGV` running; the lines it printed so far, until it is stopped."""
    proc = subprocess.Popen([sys.executable, "-m", "reconciler", *argv], text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")),
                              daemon=True)
    reader.start()
    try:
        yield lines
    finally:
        proc.kill()
        proc.wait()
        reader.join(5)
        proc.stdout.close()
        proc.stderr.close()


def test_an_agents_log_has_a_header_before_each_session_and_its_respawn(
        sol_home: Home, repo: Path, tmp_path: Path, sol) -> None:
    marker = shlex.quote(str(tmp_path / "crashed"))
    logs = shlex.quote(str(sol_home.root / "logs" / "agents"))
    # the crash waits until its own output is in the log (tmux's pipe may lag a dying pane);
    # "first""-run" so that only the output, never the script's text, matches
    steps = (f"if [ ! -e {marker} ]; then echo \"first\"\"-run\"; touch {marker}; "
             f"until grep -qs first-run {logs}/*.log; do sleep 0.05; done; kill -9 $PPID; fi\n"
             "echo second-run > f.txt; echo second-run")
    specs = write_specs(tmp_path / "specs", world_yaml(
        "shop", repo, extra="sentinel: {stallAfter: 15m, maxRespawns: 3}\n"),
        writ_yaml("a", "shop", steps))
    sol("apply", "-f", str(specs), check=True)
    cast = writ_status(sol_home, "shop", "a").status
    sphere = Sphere(sol_home)

    def resolved() -> bool:
        sentinel.reconcile(sphere)  # as the daemon's sentinel would, one pass per look
        return writ_status(sol_home, "shop", "a").phase == "Resolved"

    poll(resolved, timeout=60, interval=0.1, what="the respawned agent resolves")
    [event] = sphere.store.events(types=["respawned"], name="a")
    respawned = event.data["session"]
    agent = cast["agent"]
    def second_output() -> bool:
        shown = sol("logs", agent).stdout
        after = [h.end() for h in HEADER.finditer(shown)][1:]
        return bool(after) and "second-run" in shown[after[-1]:]

    poll(second_output, what="the second session's output after its header")
    text = sol("logs", agent, check=True).stdout
    headers = list(HEADER.finditer(text))
    assert [(h[1], h[2]) for h in headers] == [(None, cast["session"]), ("1", respawned)]
    for h in headers:
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d\d:\d\d", h[3])
    first, second = headers
    assert first.end() < text.index("first-run") < second.start() < text.index("second-run",
                                                                                second.end())
    assert not text[:first.start()].strip()  # nothing of a session before its header
    # the same log by WORLD/AGENT and by --world
    assert sol("logs", f"shop/{agent}", check=True).stdout == text
    assert sol("logs", "--world", "shop", agent, check=True).stdout == text
    assert "-o json is for the daemon's logs" in failure(sol("logs", agent, "-o", "json"))
    assert "no agent named 'nobody'" in failure(sol("logs", "nobody"))


def test_the_daemons_logs_read_one_line_per_record(sol_home: Home, repo: Path,
                                                   tmp_path: Path) -> None:
    specs = write_specs(tmp_path / "specs", world_yaml("shop", repo, extra="suspend: true\n"))
    with daemon_commands(sol_home, tmp_path) as run:
        assert run("up", "-f", str(specs)).returncode == 0
        forge_log = sol_home.logs / "forge-shop.log"
        poll(lambda: forge_log.exists() and forge_log.stat().st_size > 0
             and "ready" in (sol_home.logs / "prefect.log").read_text(), timeout=60,
             what="the daemon's logs")
        raw = [json.loads(line) for line in
               (sol_home.logs / "prefect.log").read_text().splitlines()]
        shown = run("logs", "prefect")
        assert shown.returncode == 0, shown.stderr
        lines = shown.stdout.splitlines()
        assert len(lines) >= len(raw)  # one line per record (and those written since)
        for line, record in zip(lines, raw, strict=False):
            found = RECORD.match(line)
            assert found, line
            assert found[1] == record["record"]["level"]["name"] and found[2] == "prefect"
            assert line.startswith(rfc3339(record["record"]["time"]["timestamp"]))
            assert line.endswith(record["record"]["message"])
        assert any("prefect" in line and "ready" in line for line in lines)
        as_json = run("logs", "prefect", "-o", "json").stdout.splitlines()
        assert [json.loads(line)["record"]["message"] for line in as_json[:len(raw)]] == [
            r["record"]["message"] for r in raw]
        # forge and sentinel run per world: the only world is taken, or named
        forge = run("logs", "forge").stdout.splitlines()
        assert forge and all(RECORD.match(line)[2] == "forge-shop" for line in forge)
        assert run("logs", "forge", "--world", "shop").stdout.splitlines()[:len(forge)] == forge
        assert "drop --world shop" in failure(run("logs", "consul", "--world", "shop"))
        assert "no forge-nope log yet" in failure(run("logs", "forge", "--world", "nope"))
        assert run("down").returncode == 0


def test_a_component_asks_for_its_world_when_there_are_several(sol, sol_home: Home) -> None:
    for world in ("shop", "web"):
        with loguru_file(sol_home.logs / f"sentinel-{world}.log"):
            logger.info("sentinel of {w}", w=world)
    message = failure(sol("logs", "sentinel"))
    assert "pass --world with one of shop, web" in message
    assert "sentinel of web" in sol("logs", "sentinel", "-W", "web", check=True).stdout
    assert "no notifier log yet" in failure(sol("logs", "notifier"))


def test_following_reads_on_across_a_rotation_and_text_is_inert(sol, sol_home: Home) -> None:
    path = sol_home.logs / "consul.log"
    with loguru_file(path, rotation="2 KB"):
        logger.info("before following")
        with following("logs", "consul", "-f") as lines:
            poll(lambda: any("before following" in line for line in lines),
                 what="the existing records")
            for n in range(40):  # several rotations
                logger.info("record {n} \x1b]0;title\x07", n=n)
            poll(lambda: sum("record " in line for line in lines) == 40, timeout=30,
                 what="every record, across rotations")
    assert len(list(sol_home.logs.glob("consul.*.log"))) >= 2  # loguru did rotate
    numbers = [int(re.search(r"record (\d+)", line)[1]) for line in lines if "record " in line]
    assert numbers == list(range(40))
    assert all("\x1b" not in line and "\\x1b]0;title\\x07" in line
               for line in lines if "record " in line)
    # without -f: the rotated files first, then the current one, in order
    shown = [line for line in sol("logs", "consul", check=True).stdout.splitlines()
             if "record " in line]
    assert [int(re.search(r"record (\d+)", line)[1]) for line in shown] == list(range(40))


def test_an_agent_named_like_a_component_is_reached_as_world_slash_agent(
        sol, sol_home: Home) -> None:
    store = Store(sol_home.db)
    store.put_agent("shop", "forge", writ=None, runtime="script", state="stopped")
    store.close()
    log = sol_home.agent_log("shop", "forge")
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text("the agent's own output\n")
    assert sol("logs", "shop/forge", check=True).stdout == "the agent's own output\n"
    assert "no forge log yet" in failure(sol("logs", "forge"))  # the daemon's forge


def test_an_agents_terminal_sequences_never_reach_the_operators_terminal(
        sol, sol_home: Home) -> None:
    store = Store(sol_home.db)
    store.put_agent("shop", "vega", writ=None, runtime="claude", state="stopped")
    store.close()
    log = sol_home.agent_log("shop", "vega")
    log.parent.mkdir(parents=True, exist_ok=True)
    drawn = ("\x1b[1;32m✓ tests pass\x1b[0m\r\n\x1b]0;new title\x07"
             "\x1b]52;c;cm0gLXJmIH4=\x07clipboard\x1b[2J\x1b[?25l bell\x07 done\r\n")
    log.write_text(drawn)
    shown = sol("logs", "vega", check=True).stdout
    assert "\x1b" not in shown and "\x07" not in shown and "\r" not in shown
    assert shown == "✓ tests pass\nclipboard bell\\x07 done\n"
    assert sol("logs", "vega", "--raw", check=True).stdout == drawn.replace("\r\n", "\n")


def test_a_sequence_cut_between_two_reads_is_held_until_whole() -> None:
    from reconciler.cli.common import partial_sequence, readable

    first, second = "red: \x1b[1;3", "1mhot\x1b[0m\n"
    cut = partial_sequence(first)
    assert first[:cut] == "red: " and readable(first[cut:] + second) == "hot\n"
    assert partial_sequence("whole\x1b[0m") == len("whole\x1b[0m")


def test_a_record_that_is_not_json_is_shown_as_is_and_a_traceback_below() -> None:
    assert render("not json \x1b[2J", "consul") == "not json \\x1b[2J"
    line = json.dumps({"text": "12:00 | ERROR | x - boom\nTraceback (most recent call last):\n"
                               "  File \"x.py\", line 1\nValueError: bad\n",
                       "record": {"time": {"timestamp": 0}, "level": {"name": "ERROR"},
                                  "message": "boom", "exception": {"type": "ValueError"}}})
    assert render(line, "forge-shop").splitlines() == [
        f"{rfc3339(0)} | ERROR    | forge-shop | boom", "Traceback (most recent call last):",
        "  File \"x.py\", line 1", "ValueError: bad"]


def test_the_components_are_the_prefect_and_the_registrys_owners() -> None:
    assert set(DAEMON_LOGS) == {"prefect", *registry.OWNERS}
    for owner in registry.OWNERS:
        assert DAEMON_LOGS[owner] == (registry.scope_of(owner) is Scope.WORLD)
