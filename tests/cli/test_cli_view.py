"""`sol get`, `sol describe`, `sol status`, `sol init` and `sol doctor`, run as a user runs
them, on a sphere made by a real `sol apply` (suspended worlds: no agent is started)."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from subprocess import CompletedProcess

import pytest
from ruamel.yaml import YAML

from reconciler.core.home import Home
from tests.helpers import world_yaml, writ_yaml, write_specs

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


def failure(result: CompletedProcess[str]) -> str:
    assert "Traceback" not in result.stderr
    assert result.returncode == 1, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


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
    assert worlds.split()[:5] == ["NAME", "PHASE", "BRANCH", "SOURCE", "MESSAGE"]
    assert "shop" in worlds and "Ready" in worlds and str(repo) in worlds
    writs = sol("get", "writs", check=True).stdout.splitlines()
    assert writs[0].split() == ["WORLD", "NAME", "PHASE", "AGENT", "ATTEMPT", "MESSAGE"]
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
    assert data["metadata"] == {"name": "add-y", "world": "shop"}
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
