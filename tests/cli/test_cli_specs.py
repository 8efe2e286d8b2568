"""`sol validate`, `sol schema`, `sol diff` and `sol apply` run as a user runs them: in a
subprocess, on real manifests, a real SOL_HOME and a real git source."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from subprocess import CompletedProcess

import pytest
from ruamel.yaml import YAML

from reconciler.core.home import Home
from reconciler.core.store import Store
from tests.helpers import world_yaml, writ_yaml, write_specs

Sol = Callable[..., CompletedProcess[str]]
ROOT = Path(__file__).resolve().parents[2]
BAD = ROOT / "tests" / "manifests_bad"
POSITION = re.compile(r"^(?P<file>[^:\n]+):(?P<line>\d+):(?P<col>\d+): \S")
SUSPENDED = "suspend: true\n"  # nothing is cast: writs stay Pending, no tmux session


def specs(tmp_path: Path, repo: Path, *writs: tuple[str, str]) -> Path:
    """A suspended world `shop` on `repo` and one writ per (name, title)."""
    docs = [world_yaml("shop", repo, extra=SUSPENDED)]
    docs += [writ_yaml(name, "shop", title=title) for name, title in writs]
    return write_specs(tmp_path / "specs", *docs)


def clean(result: CompletedProcess[str]) -> None:
    """No traceback, whatever the outcome."""
    assert "Traceback" not in result.stderr + result.stdout, result.stderr


def one_sentence(result: CompletedProcess[str]) -> str:
    clean(result)
    assert result.returncode == 1, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def event_count(home: Home) -> int:
    store = Store(home.db)
    try:
        return int(store.db.execute("SELECT count(*) FROM events").fetchone()[0])
    finally:
        store.close()


def writs_json(sol: Sol) -> list[dict]:
    result = sol("get", "writs", "-o", "json", check=True)
    return json.loads(result.stdout)


# ---- validate ---------------------------------------------------------------------


def test_validate_accepts_a_valid_set(sol: Sol, tmp_path: Path, repo: Path) -> None:
    path = specs(tmp_path, repo, ("add-x", "Add x"), ("add-y", "Add y"))
    result = sol("validate", str(path))
    clean(result)
    assert result.returncode == 0
    assert "1 world" in result.stdout and "2 writs" in result.stdout


def expectations(path: Path) -> list[tuple[int, int, str]]:
    found = []
    for line in (ROOT / path).read_text(encoding="latin-1").splitlines():
        match = re.match(r"# expect: (\d+):(\d+): (.*)", line)
        if match:
            found.append((int(match[1]), int(match[2]), match[3]))
    return found


@pytest.mark.parametrize("case", ["syntax_error.yaml", "unknown_world.yaml", "unknown_kind.yaml",
                                  "not_utf8.yaml", "dependency_cycle.yaml", "duplicate_names"])
def test_validate_reports_bad_corpus_as_positions(sol: Sol, case: str) -> None:
    target = Path("tests/manifests_bad") / case  # positions are shown relative to the cwd
    result = sol("validate", str(target), cwd=ROOT)
    clean(result)
    assert result.returncode == 1
    problems = result.stderr.strip().splitlines()[:-1]
    assert problems and result.stderr.strip().splitlines()[-1].endswith("problem(s) found")
    for line in problems:
        assert POSITION.match(line), line
    files = sorted((ROOT / target).glob("*.yaml")) if (ROOT / target).is_dir() else [target]
    files = [f.relative_to(ROOT) if f.is_absolute() else f for f in files]
    wanted = [(f, *e) for f in files for e in expectations(f)]
    assert wanted, f"{case} has no expectations"
    for file, line, col, fragment in wanted:
        prefix = f"{file}:{line}:{col}: "
        assert any(p.startswith(prefix) and fragment in p for p in problems), (
            prefix, fragment, problems)
    assert len(problems) == len(wanted)


def test_validate_the_whole_bad_corpus_never_crashes(sol: Sol) -> None:
    result = sol("validate", str(BAD))
    clean(result)
    assert result.returncode == 1
    problems = result.stderr.strip().splitlines()
    assert problems[-1] == f"{len(problems) - 1} problem(s) found"
    assert all(POSITION.match(p) for p in problems[:-1])


def test_validate_empty_directory(sol: Sol, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("not a manifest")
    message = one_sentence(sol("validate", str(tmp_path / "empty")))
    assert "no manifests found" in message and "empty" in message


def test_validate_missing_path(sol: Sol, tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    result = sol("validate", str(missing))
    clean(result)
    assert result.returncode == 1
    assert f"{missing}: no such file or directory" in result.stderr


def test_validate_non_utf8_file(sol: Sol, tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"apiVersion: sol/v1\nkind: Writ\nmetadata: {name: a, world: w}\n"
                     b"spec: {title: caf\xe9}\n")
    result = sol("validate", str(path))
    clean(result)
    assert result.returncode == 1
    assert f"{path}:4:18: not UTF-8 text (byte 0xe9)" in result.stderr


# ---- schema -----------------------------------------------------------------------


def test_schema_prints_json(sol: Sol) -> None:
    every = json.loads(sol("schema", check=True).stdout)
    assert every["properties"]["kind"]["enum"] == ["World", "Writ", "Caravan", "Envoy"]
    writ = json.loads(sol("schema", "writ", check=True).stdout)
    assert writ["title"] == every["$defs"]["Writ"]["title"]
    assert set(writ["properties"]["spec"]["properties"]) == set(
        every["$defs"]["Writ"]["properties"]["spec"]["properties"])
    assert "title" in json.dumps(writ["properties"])


def test_schema_of_unknown_kind_is_one_sentence(sol: Sol) -> None:
    message = one_sentence(sol("schema", "bogus"))
    assert "'bogus'" in message and "World" in message


# ---- diff -------------------------------------------------------------------------


def test_diff_on_a_fresh_home_lists_creations(sol: Sol, tmp_path: Path, repo: Path) -> None:
    path = specs(tmp_path, repo, ("add-x", "Add x"))
    result = sol("diff", "-f", str(path))
    clean(result)
    assert result.returncode == 2
    assert re.search(r"^\s+\+ world/shop: new world$", result.stdout, re.M)
    assert re.search(r"^\s+\+ writ/shop/add-x: new writ$", result.stdout, re.M)
    assert re.search(r"^\s+\+ world/shop\s+clone ", result.stdout, re.M)
    data = json.loads(sol("diff", "-f", str(path), "-o", "json").stdout)
    assert data["changes"] is True
    assert data["actions"]
    for action in data["actions"]:
        assert {"op", "kind", "target", "description"} <= set(action)
    assert {(a["op"], a["target"]) for a in data["actions"]} >= {
        ("+", "world/shop"), ("+", "writ/shop/add-x")}
    as_yaml = YAML(typ="safe").load(sol("diff", "-f", str(path), "-o", "yaml").stdout)
    assert as_yaml == data
    assert writs_json(sol) == [], "diff must not record anything"


def test_diff_after_apply_is_empty_then_tracks_edits(sol: Sol, tmp_path: Path,
                                                     repo: Path) -> None:
    path = specs(tmp_path, repo, ("add-x", "Add x"), ("add-y", "Add y"))
    sol("apply", "-f", str(path), check=True)
    result = sol("diff", "-f", str(path))
    assert result.returncode == 0, result.stdout
    assert result.stdout.startswith("No changes")
    assert json.loads(sol("diff", "-f", str(path), "-o", "json").stdout)["actions"] == []

    specs(tmp_path, repo, ("add-x", "Add x, better"), ("add-y", "Add y"))
    result = sol("diff", "-f", str(path))
    assert result.returncode == 2
    assert re.search(r'^\s+~ writ/shop/add-x: title "Add x" -> "Add x, better"$',
                     result.stdout, re.M)
    assert "add-y" not in result.stdout

    specs(tmp_path, repo, ("add-x", "Add x, better"))
    result = sol("diff", "-f", str(path))
    assert result.returncode == 2
    assert re.search(r"^\s+! writ/shop/add-y: not in the manifests: orphaned, kept "
                     r"\(use --prune to cancel\)", result.stdout, re.M)
    assert not re.search(r"^\s+- ", result.stdout, re.M)
    result = sol("diff", "-f", str(path), "--prune")
    assert result.returncode == 2
    assert re.search(r"^\s+- writ/shop/add-y: removed from the manifests: cancel",
                     result.stdout, re.M)
    assert writs_json(sol)[0]["spec"]["title"] == "Add x", "diff must not record anything"


def test_diff_of_invalid_manifests_exits_1(sol: Sol, tmp_path: Path) -> None:
    result = sol("diff", "-f", str(BAD / "unknown_world.yaml"))
    clean(result)
    assert result.returncode == 1
    assert POSITION.match(result.stderr.splitlines()[0])
    assert "nothing was applied" in result.stderr


# ---- apply ------------------------------------------------------------------------


def test_apply_of_an_invalid_set_records_nothing(sol: Sol, sol_home: Home, tmp_path: Path,
                                                 repo: Path) -> None:
    path = specs(tmp_path, repo, ("add-x", "Add x"))
    (path / "broken.yaml").write_text(writ_yaml("add-y", "shpo"))
    result = sol("apply", "-f", str(path))
    clean(result)
    assert result.returncode == 1
    assert re.search(r"broken\.yaml:\d+:\d+: .*unknown world 'shpo'", result.stderr)
    assert writs_json(sol) == []
    assert json.loads(sol("get", "worlds", "-o", "json", check=True).stdout) == []
    assert event_count(sol_home) == 0
    assert not sol_home.repo("shop").exists()


def test_second_apply_changes_nothing(sol: Sol, sol_home: Home, tmp_path: Path,
                                      repo: Path) -> None:
    path = specs(tmp_path, repo, ("add-x", "Add x"), ("add-y", "Add y"))
    first = sol("apply", "-f", str(path), check=True)
    assert "Apply complete" in first.stdout
    events = event_count(sol_home)
    before = writs_json(sol)
    second = sol("apply", "-f", str(path), check=True)
    assert second.stdout.strip() == "No changes. The observed state matches the manifests."
    assert event_count(sol_home) == events
    after = writs_json(sol)
    assert after == before
    assert [w["status"]["phase"] for w in after] == ["Pending", "Pending"]


def test_dry_run_records_nothing(sol: Sol, sol_home: Home, tmp_path: Path, repo: Path) -> None:
    path = specs(tmp_path, repo, ("add-x", "Add x"))
    result = sol("apply", "-f", str(path), "--dry-run")
    clean(result)
    assert result.returncode == 0
    assert "+ writ/shop/add-x" in result.stdout and "dry run" in result.stdout
    assert writs_json(sol) == []
    assert event_count(sol_home) == 0
    assert not sol_home.repo("shop").exists()


def test_empty_specs_directory_prunes_nothing(sol: Sol, tmp_path: Path, repo: Path) -> None:
    path = specs(tmp_path, repo, ("add-x", "Add x"))
    sol("apply", "-f", str(path), check=True)
    empty = tmp_path / "empty"
    empty.mkdir()
    for prune in ([], ["--prune"]):
        message = one_sentence(sol("apply", "-f", str(empty), *prune))
        assert "no manifests found" in message and "nothing pruned" in message
        assert sol("diff", "-f", str(empty), *prune).returncode == 1
    writs = writs_json(sol)
    assert [(w["metadata"]["name"], w["status"]["phase"]) for w in writs] == [
        ("add-x", "Pending")]
    assert "orphaned" not in writs[0]["status"]


def test_prune_cancels_and_readding_restores(sol: Sol, tmp_path: Path, repo: Path) -> None:
    path = specs(tmp_path, repo, ("add-x", "Add x"), ("add-y", "Add y"))
    sol("apply", "-f", str(path), check=True)
    specs(tmp_path, repo, ("add-x", "Add x"))
    sol("apply", "-f", str(path), check=True)
    phases = {w["metadata"]["name"]: w["status"] for w in writs_json(sol)}
    assert phases["add-y"]["phase"] == "Pending" and phases["add-y"]["orphaned"] is True
    result = sol("apply", "-f", str(path), "--prune", check=True)
    assert "- writ/shop/add-y" in result.stdout
    phases = {w["metadata"]["name"]: w["status"] for w in writs_json(sol)}
    assert phases["add-y"]["phase"] == "Cancelled"
    assert phases["add-x"]["phase"] == "Pending"
    assert sol("diff", "-f", str(path), "--prune").returncode == 0
    specs(tmp_path, repo, ("add-x", "Add x"), ("add-y", "Add y"))
    sol("apply", "-f", str(path), check=True)
    phases = {w["metadata"]["name"]: w["status"] for w in writs_json(sol)}
    assert phases["add-y"]["phase"] == "Pending" and "orphaned" not in phases["add-y"]


def test_default_specs_directory(sol: Sol, tmp_path: Path, repo: Path) -> None:
    message = one_sentence(sol("apply", cwd=tmp_path))
    assert "./specs does not exist" in message and "-f PATH" in message
    specs(tmp_path, repo, ("add-x", "Add x"))
    result = sol("apply", cwd=tmp_path, check=True)
    assert "+ writ/shop/add-x" in result.stdout


@pytest.mark.parametrize("command", [("get", "writs"), ("apply", "-f", "SPECS"),
                                     ("diff", "-f", "SPECS"), ("status",),
                                     ("describe", "writ", "add-x")])
def test_a_broken_database_is_one_sentence(sol: Sol, sol_home: Home, tmp_path: Path,
                                           repo: Path, command: tuple[str, ...]) -> None:
    path = specs(tmp_path, repo, ("add-x", "Add x"))
    sol_home.db.write_bytes(b"this is not a database, just bytes\n" * 64)
    args = [str(path) if a == "SPECS" else a for a in command]
    message = one_sentence(sol(*args))
    assert str(sol_home.db) in message
    assert "not a usable sol database" in message and "move it aside" in message
