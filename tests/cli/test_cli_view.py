"""`sol get`, `sol describe`, `sol status`, `sol init` and `sol doctor`, run as a user runs
them, on a sphere made by a real `sol apply` (suspended worlds: no agent is started)."""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from subprocess import CompletedProcess

import pytest
from ruamel.yaml import YAML

from reconciler.core.home import Home
from reconciler.core.times import parse_rfc3339
from tests.helpers import failure, world_yaml, writ_yaml, write_specs

Sol = Callable[..., CompletedProcess[str]]
SUSPENDED = "suspend: true\n"
CARAVAN = """\
apiVersion: sol/v1
kind: Caravan
metadata: {name: auth, world: shop}
spec:
  phases:
    - [add-x]
    - [add-y]
"""


@pytest.fixture
def applied(sol: Sol, tmp_path: Path, repo: Path) -> Path:
    """World `shop` (Ready), writs add-x and add-y, caravan auth in two phases."""
    path = write_specs(tmp_path / "specs", world_yaml("shop", repo, extra=SUSPENDED),
                       writ_yaml("add-x", "shop", title="Add x"),
                       writ_yaml("add-y", "shop", title="Add y", extra="dependsOn: [add-x]"),
                       CARAVAN)
    sol("apply", "-f", str(path), check=True)
    return path


def check_shape(obj: dict, kind: str, world: str | None) -> None:
    assert obj["apiVersion"] == "sol/v1"
    assert obj["kind"] == kind
    assert obj["metadata"]["name"]
    assert obj["metadata"].get("world") == world
    assert isinstance(obj["spec"], dict)
    for key in ("phase", "reason", "message", "observedGeneration"):
        assert key in obj["status"], (key, obj["status"])


@pytest.mark.usefixtures("applied")
def test_get_json_and_yaml_shapes(sol: Sol, repo: Path) -> None:
    worlds = json.loads(sol("get", "worlds", "-o", "json", check=True).stdout)
    assert len(worlds) == 1
    check_shape(worlds[0], "World", None)
    assert worlds[0]["spec"]["source"] == str(repo)
    assert worlds[0]["status"]["phase"] == "Ready"
    assert worlds[0]["status"]["observedGeneration"] == worlds[0]["status"]["generation"]

    writs = json.loads(sol("get", "writs", "-o", "json", check=True).stdout)
    assert [w["metadata"]["name"] for w in writs] == ["add-x", "add-y"]
    for writ in writs:
        check_shape(writ, "Writ", "shop")
        assert writ["status"]["phase"] == "Pending"
        assert writ["status"]["message"] == "world suspended"
    assert writs[1]["spec"]["dependsOn"] == ["add-x"]

    caravans = json.loads(sol("get", "caravans", "-o", "json", check=True).stdout)
    check_shape(caravans[0], "Caravan", "shop")
    assert caravans[0]["spec"]["phases"] == [["add-x"], ["add-y"]]

    as_yaml = YAML(typ="safe").load(sol("get", "writs", "-o", "yaml", check=True).stdout)
    assert as_yaml == writs
    one = json.loads(sol("get", "writ", "add-y", "-o", "json", check=True).stdout)
    assert [w["metadata"]["name"] for w in one] == ["add-y"]


@pytest.mark.usefixtures("applied")
def test_get_tables(sol: Sol, repo: Path) -> None:
    worlds = sol("get", "worlds", check=True).stdout
    assert worlds.split()[:6] == ["NAME", "PHASE", "BRANCH", "SOURCE", "AGE", "MESSAGE"]
    assert "shop" in worlds and "Ready" in worlds and str(repo) in worlds
    writs = sol("get", "writs", check=True).stdout.splitlines()
    assert writs[0].split() == ["WORLD", "NAME", "PHASE", "AGENT", "ATTEMPT", "AGE", "MESSAGE"]
    assert writs[1].split()[:3] == ["shop", "add-x", "Pending"]
    assert writs[2].split()[:3] == ["shop", "add-y", "Pending"]
    caravans = sol("get", "caravans", check=True).stdout
    assert "add-x | add-y" in caravans, caravans
    assert "No agents." in sol("get", "agents", check=True).stdout


def test_get_on_an_empty_sphere(sol: Sol) -> None:
    assert sol("get", "writs", check=True).stdout.strip() == "No writs."
    assert json.loads(sol("get", "worlds", "-o", "json", check=True).stdout) == []


@pytest.mark.usefixtures("applied")
def test_unknown_kind_or_name_is_one_sentence(sol: Sol) -> None:
    assert "'bogus'" in failure(sol("get", "bogus"))
    assert "no writ named 'nope'" in failure(sol("get", "writs", "nope"))
    assert "no writ named 'nope'" in failure(sol("describe", "writ", "nope"))
    assert "no world named 'nope'" in failure(sol("describe", "world", "nope"))
    assert "'bogus'" in failure(sol("describe", "bogus", "x"))


@pytest.mark.usefixtures("applied")
def test_describe_writ_shows_spec_status_and_events(sol: Sol) -> None:
    text = sol("describe", "writ", "add-y", check=True).stdout
    assert "Name:        add-y" in text and "World:       shop" in text
    assert "Phase:       Pending" in text and "Message:     world suspended" in text
    spec = text.split("Spec:")[1].split("Events:")[0]
    assert "title: Add y" in spec and "dependsOn" in spec
    events = text.split("Events:")[1]
    assert "applied" in events and "new writ" in events
    data = json.loads(sol("describe", "writ", "shop/add-y", "-o", "json", check=True).stdout)
    stamp = data["metadata"].pop("creationTimestamp")
    assert data["metadata"] == {"name": "add-y", "world": "shop"}
    assert abs(parse_rfc3339(stamp) - time.time()) < 300
    assert [e["type"] for e in data["events"]] == ["applied"]
    world = sol("describe", "world", "shop", check=True).stdout
    assert "Phase:       Ready" in world and "cloned" in world
    caravan = sol("describe", "caravan", "auth", check=True).stdout
    assert "- - add-x" in caravan and "- - add-y" in caravan


def test_describe_asks_for_world_when_ambiguous(sol: Sol, tmp_path: Path, repo: Path) -> None:
    path = write_specs(tmp_path / "specs", world_yaml("shop", repo, extra=SUSPENDED),
                       world_yaml("depot", repo, extra=SUSPENDED),
                       writ_yaml("add-x", "shop", title="In the shop"),
                       writ_yaml("add-x", "depot", title="In the depot"))
    sol("apply", "-f", str(path), check=True)
    message = failure(sol("describe", "writ", "add-x"))
    assert "ambiguous" in message and "WORLD/NAME" in message
    assert "In the depot" in sol("describe", "writ", "depot/add-x", check=True).stdout


@pytest.mark.usefixtures("applied")
def test_status_summarises_the_sphere(sol: Sol) -> None:
    result = sol("status")
    text = result.stdout
    assert result.returncode == 0  # the world is suspended: nothing waits for a daemon
    assert "daemon: not running" in text and "NEEDS ATTENTION" not in text
    assert "World shop: Ready" in text
    assert "writs: 2 Pending" in text
    assert "caravan auth" in text


def test_status_of_an_empty_sphere(sol: Sol) -> None:
    assert "No worlds applied yet" in sol("status", check=True).stdout


def test_init_creates_sol_home(sol: Sol, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                               ) -> None:
    home = Home(tmp_path / "deep" / "new-home")
    monkeypatch.setenv("SOL_HOME", str(home.root))
    result = sol("init", check=True)
    assert str(home.root) in result.stdout
    for path in (home.db, home.logs, home.run, home.root / "worlds"):
        assert path.exists(), path
    sol("init", check=True)  # idempotent


def test_doctor_passes_here(sol: Sol) -> None:
    result = sol("doctor")
    assert result.returncode == 0, result.stdout
    rows = {line.split()[0]: line.split()[1] for line in result.stdout.splitlines()[1:]
            if line.strip()}
    assert rows == {"git": "ok", "tmux": "ok", "sqlite": "ok", "SOL_HOME": "ok"}
    assert "journal mode wal" in result.stdout


def test_doctor_names_a_missing_runtime(sol: Sol, tmp_path: Path, repo: Path) -> None:
    assert shutil.which("claude") is None, "this test needs a machine without claude"
    world = world_yaml("shop", repo, extra=SUSPENDED).replace("{name: script}", "{name: claude}")
    sol("apply", "-f", str(write_specs(tmp_path / "specs", world)), check=True)
    result = sol("doctor")
    assert "Traceback" not in result.stderr
    assert result.returncode == 1
    line = next(x for x in result.stdout.splitlines() if "runtime claude" in x)
    assert "FAIL" in line


def test_doctor_reports_a_broken_database_and_home(sol: Sol, sol_home: Home,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    sol_home.db.write_bytes(b"garbage" * 100)
    result = sol("doctor")
    assert "Traceback" not in result.stderr and result.returncode == 1
    assert "database" in result.stdout and "not a usable sol database" in result.stdout
    if os.geteuid() != 0:
        blocked = sol_home.root / "ro"
        blocked.mkdir(mode=0o500)
        target = blocked / "home"
    else:
        target = Path("/proc/sol-doctor-home")  # unwritable even for root
    monkeypatch.setenv("SOL_HOME", str(target))
    result = sol("doctor")
    assert "Traceback" not in result.stderr and result.returncode == 1
    assert "SOL_HOME" in result.stdout and "FAIL" in result.stdout


def test_listings_say_each_thing_once_and_truly(sol: Sol, repo: Path, tmp_path: Path,
                                                sol_home: Home) -> None:
    """An escalation shows once; an agent of a Failed writ is not Working; pruning a
    writ that already ended does not tell you to prune."""
    from reconciler.core.conditions import escalate
    from reconciler.core.store import Store

    specs = write_specs(tmp_path / "specs", world_yaml("shop", repo).replace(
        "runtime: {name: script}", "runtime: {name: command, command: 'sleep 60'}"),
        writ_yaml("a", "shop"), writ_yaml("b", "shop"))
    assert sol("apply", "-f", str(specs)).returncode == 0
    store = Store(sol_home.db)
    escalate(store, "shop", "a", "needs a human now", source="Agent")
    store.set_status(("Writ", "shop", "a"), message="needs a human now")
    store.set_status(("Writ", "shop", "b"), phase="Failed", message="gave up")
    store.close()
    writs = sol("get", "writs").stdout
    assert writs.count("needs a human now") == 1 and "ESCALATED" in writs
    agents = sol("get", "agents", "-o", "json").stdout
    phases = {a["status"]["writ"]: a["status"]["phase"] for a in json.loads(agents)}
    assert phases == {"a": "Working", "b": "Failed"}
    store = Store(sol_home.db)
    store.set_status(("Writ", "shop", "b"), phase="Merged", message="landed")
    store.close()
    write_specs(tmp_path / "specs", world_yaml("shop", repo).replace(
        "runtime: {name: script}", "runtime: {name: command, command: 'sleep 60'}"),
        writ_yaml("a", "shop"))
    diff = sol("diff", "--prune", "-f", str(specs))
    assert "use --prune" not in diff.stdout and "already Merged" in diff.stdout


RFC3339 = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d\d:\d\d"


def rows(text: str) -> list[dict[str, str]]:
    """A piped table as dicts by header (the last column keeps only its first word)."""
    header, *lines = text.splitlines()
    return [dict(zip(header.split(), line.split(), strict=False)) for line in lines]


def two_worlds(sol: Sol, tmp_path: Path, repo: Path) -> Path:
    path = write_specs(tmp_path / "specs", world_yaml("shop", repo, extra=SUSPENDED),
                       world_yaml("depot", repo, extra=SUSPENDED),
                       writ_yaml("add-x", "shop", title="In the shop"),
                       writ_yaml("add-x", "depot", title="In the depot"),
                       writ_yaml("add-z", "depot", title="Only in the depot"))
    sol("apply", "-f", str(path), check=True)
    return path


def test_world_is_an_option_or_a_prefix_and_dash_w_is_no_world(sol: Sol, tmp_path: Path,
                                                                repo: Path) -> None:
    two_worlds(sol, tmp_path, repo)
    names = ["writ/depot/add-x", "writ/depot/add-z"]
    assert sol("get", "writs", "--world", "depot", "-o", "name", check=True).stdout.split() \
        == names
    assert sol("get", "writs", "-W", "depot", "-o", "name", check=True).stdout.split() == names
    [one] = json.loads(sol("get", "writ", "depot/add-x", "-o", "json", check=True).stdout)
    assert (one["metadata"]["world"], one["spec"]["title"]) == ("depot", "In the depot")
    assert sol("get", "writ", "shop/add-x", "-W", "shop", "-o", "name",
               check=True).stdout.split() == ["writ/shop/add-x"]
    assert "--world says 'depot'" in failure(sol("get", "writ", "shop/add-x", "-W", "depot"))
    assert "no writ named 'shop/add-z'" in failure(sol("get", "writ", "shop/add-z"))
    # -w is --watch now: `depot` is read as a writ's name, and there is none
    assert "no writ named 'depot'" in failure(sol("get", "writs", "-w", "depot"))
    events = sol("events", "-W", "depot", check=True).stdout.splitlines()
    assert events and all(" depot" in line and " shop" not in line for line in events)
    assert sol("events", "--world", "depot", check=True).stdout.splitlines() == events


def test_output_name_is_one_object_a_line_that_sol_takes_back(sol: Sol, tmp_path: Path,
                                                              repo: Path) -> None:
    two_worlds(sol, tmp_path, repo)
    names = sol("get", "writs", "-o", "name", check=True).stdout.split()
    assert names == ["writ/depot/add-x", "writ/depot/add-z", "writ/shop/add-x"]
    assert sol("get", "worlds", "-o", "name", check=True).stdout.split() == [
        "world/depot", "world/shop"]
    assert "Title" not in sol("get", "writs", "-o", "name", check=True).stdout
    described = sol("describe", names[2], check=True).stdout
    assert "In the shop" in described and "World:       shop" in described
    [again] = json.loads(sol("get", names[1], "-o", "json", check=True).stdout)
    assert again["spec"]["title"] == "Only in the depot"
    assert "needs a name" in failure(sol("describe", "writ"))


@pytest.mark.usefixtures("applied")
def test_wide_adds_columns_and_every_table_has_an_age(sol: Sol) -> None:
    wide = rows(sol("get", "writs", "-o", "wide", check=True).stdout)
    assert [w["NAME"] for w in wide] == ["add-x", "add-y"]
    assert wide[1]["DEPENDS"] == "add-x" and wide[0]["DEPENDS"] == "-"
    assert wide[1]["BRANCH"] == "sol/add-y" and wide[1]["PRIORITY"] == "2"
    assert wide[1]["RESPAWNS"] == "0" and wide[1]["SESSION"] == "-"
    assert wide[1]["MESSAGE"] == "world"  # MESSAGE stays the last column
    assert "PRIORITY" not in sol("get", "writs", check=True).stdout
    for kind in ("worlds", "writs", "caravans"):
        header, *lines = sol("get", kind, check=True).stdout.splitlines()
        at = header.index(" AGE ") + 1  # columns line up: read AGE where its header is
        assert lines and all(re.match(r"\d+s ", line[at:]) for line in lines), (kind, lines)
    world = rows(sol("get", "worlds", "-o", "wide", check=True).stdout)[0]
    assert (world["RUNTIME"], world["CAPACITY"]) == ("script", "4")


@pytest.mark.usefixtures("applied")
def test_times_shown_are_rfc3339(sol: Sol, sol_home: Home) -> None:
    from reconciler.core import degraded
    from reconciler.core.store import Store

    events = sol("events", check=True).stdout.splitlines()
    assert events and all(re.match(RFC3339 + "  ", line) for line in events), events
    [first] = [json.loads(line) for line in sol("events", "-n", "1", "-o", "json",
                                                 check=True).stdout.splitlines()]
    assert re.fullmatch(RFC3339, first["time"]) and isinstance(first["ts"], float)
    assert abs(parse_rfc3339(first["time"]) - first["ts"]) < 1
    text = sol("describe", "writ", "add-x", check=True).stdout
    assert re.search(r"Ready=False  Waiting: world suspended  \(since " + RFC3339 + r"\)", text)
    assert re.search(r"Events:\n  " + RFC3339 + "  applied", text), text
    data = json.loads(sol("describe", "writ", "add-x", "-o", "json", check=True).stdout)
    assert all(re.fullmatch(RFC3339, c["lastTransitionTime"])
               for c in data["status"]["conditions"])
    assert re.fullmatch(RFC3339, data["events"][0]["time"])
    assert re.fullmatch(RFC3339, data["metadata"]["creationTimestamp"])
    store = Store(sol_home.db)
    store.set_status(("Writ", "shop", "add-x"), resolvedAt=time.time(),
                     rateLimit={"at": 1764770000.0, "until": 1764770060.0, "error": "429"})
    degraded.enter(store, time.time(), "3 sessions died within 30s", 3)
    store.close()
    [writ] = json.loads(sol("get", "writ", "shop/add-x", "-o", "json", check=True).stdout)
    assert re.fullmatch(RFC3339, writ["status"]["resolvedAt"])
    limited = writ["status"]["rateLimit"]
    assert parse_rfc3339(limited["until"]) == 1764770060.0 and limited["error"] == "429"
    assert re.fullmatch(RFC3339, limited["at"])
    assert "resolvedAt: '" in sol("describe", "writ", "add-x", check=True).stdout
    assert re.search("DEGRADED since " + RFC3339 + ": 3 sessions died", sol("status").stdout)


def coloured_objects() -> list[dict]:
    return [{"apiVersion": "sol/v1", "kind": "Writ",
             "metadata": {"name": phase.lower(), "world": "shop"},
             "spec": {}, "status": {"phase": phase, "message": "m"}}
            for phase in ("Merged", "Failed", "Working", "Pending", "Cancelled")]


def test_phases_are_coloured_only_when_asked() -> None:
    from io import StringIO

    from rich.console import Console

    from reconciler.cli.tables import table

    def render(colour: bool) -> str:
        buffer = StringIO()
        Console(file=buffer, force_terminal=True, color_system="standard", width=100).print(
            table("Writ", coloured_objects(), colour=colour))
        return buffer.getvalue()

    styled = render(True)
    for phase, code in (("Merged", "32"), ("Failed", "31"), ("Working", "36"),
                        ("Pending", "33"), ("Cancelled", "2")):
        assert f"\x1b[{code}m{phase}" in styled, (phase, styled)
    plain = render(False)
    assert not re.search(r"\x1b\[(2|3\d)m", plain), plain  # the bold header only


def in_pty(args: list[str], columns: int, **env: str) -> str:
    """Run `sol ARGS` with a terminal of `columns` as its stdout; what it printed."""
    import fcntl
    import pty
    import select
    import struct
    import subprocess
    import sys
    import termios

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
    clean = {k: v for k, v in os.environ.items()
             if k not in ("NO_COLOR", "FORCE_COLOR", "COLUMNS", "LINES", "TTY_COMPATIBLE")}
    proc = subprocess.Popen([sys.executable, "-m", "reconciler", *args], stdin=slave,
                            stdout=slave, stderr=slave, env={**clean, "TERM": "xterm", **env})
    os.close(slave)
    out, deadline = b"", time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 1)
            if not ready:
                if proc.poll() is not None:
                    break
                continue
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            out += chunk
        assert proc.wait(timeout=30) == 0, out
    finally:
        os.close(master)
    return out.decode().replace("\r\n", "\n")


def test_a_terminal_gets_colour_and_messages_cut_to_its_width(sol: Sol, tmp_path: Path,
                                                             repo: Path, sol_home: Home
                                                             ) -> None:
    from reconciler.core.store import Store

    long = "the gate said " + "very " * 40 + "long things END"
    two_worlds(sol, tmp_path, repo)
    store = Store(sol_home.db)
    store.set_status(("Writ", "shop", "add-x"), message=long)
    store.close()
    shown = in_pty(["get", "writs"], 70)
    assert "\x1b[33mPending" in shown, repr(shown)  # yellow, on a terminal
    plain = re.sub(r"\x1b\[[0-9;]*m", "", shown)
    lines = [line for line in plain.splitlines() if line.strip()]
    assert len(lines) == 4 and all(len(line.rstrip()) <= 70 for line in lines), lines
    row = next(line for line in lines if line.split()[:2] == ["shop", "add-x"])
    assert "the gate said very" in row and row.rstrip().endswith("…") and "END" not in row
    assert "\x1b[33m" not in in_pty(["get", "writs"], 70, NO_COLOR="1")
    piped = sol("get", "writs", check=True).stdout
    assert "\x1b" not in piped
    assert any(line.split()[:2] == ["shop", "add-x"] and line.rstrip().endswith("END")
               for line in piped.splitlines())  # whole, on one line
