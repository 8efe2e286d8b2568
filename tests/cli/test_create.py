"""`sol create writ` as a user types it: a manifest written into the specs directory,
validated with the rest of it and with what is applied, then (with --apply) a writ that
a real scripted agent works and the forge lands. Bad input is one line and writes
nothing."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from subprocess import CompletedProcess

import pytest
from conftest import git, make_repo, poll
from helpers import store, world_yaml, writ_status, writ_yaml, write_specs
from ruamel.yaml import YAML

from reconciler.core.home import Home
from reconciler.core.store import Store

Sol = Callable[..., CompletedProcess[str]]
SUSPENDED = "suspend: true\n"
STEPS = "Say hello.\n\n```sh\necho hello > hello.txt\n```\n"


def tree(path: Path) -> dict[str, str]:
    """Every file under path with its text: what a failed create must leave as it was."""
    return {str(p.relative_to(path)): p.read_text() for p in sorted(path.rglob("*"))
            if p.is_file()}


def writ_names(home: Home) -> list[str]:
    if not home.db.exists():
        return []
    store = Store(home.db)
    try:
        return sorted(r.name for r in store.list("Writ"))
    finally:
        store.close()


def one_line(result: CompletedProcess[str]) -> str:
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_create_with_apply_writes_a_valid_manifest_and_the_writ_lands(
        sol: Sol, sol_home: Home, tmp_path: Path, repo: Path) -> None:
    specs = write_specs(tmp_path / "specs", world_yaml("shop", repo))
    made = sol("create", "writ", "hello", "--world", "shop", "--title", "Say hello",
               "--description-file", "-", "--priority", "1", "--apply", "-f", "specs",
               cwd=tmp_path, input=STEPS)
    assert made.returncode == 0, made.stderr
    lines = made.stdout.splitlines()
    assert lines[0] == "writ/shop/hello created: specs/shop/hello.yaml"
    assert "  + writ/shop/hello: new writ" in lines  # then `sol apply -f specs`'s report
    assert any("cast an agent on sol/hello" in line for line in lines)
    path = specs / "shop" / "hello.yaml"
    text = path.read_text()
    assert "description: |\n    Say hello.\n\n    ```sh\n" in text  # reads as written
    doc = YAML(typ="safe").load(text)
    assert doc == {"apiVersion": "sol/v1", "kind": "Writ",
                   "metadata": {"name": "hello", "world": "shop"},
                   "spec": {"title": "Say hello", "description": STEPS, "priority": 1}}
    assert not [p for p in path.parent.iterdir() if p.name != "hello.yaml"]  # no temp file
    valid = sol("validate", str(specs), check=True)
    assert valid.stdout.startswith("valid: 1 world, 1 writ in 2 file(s)")

    poll(lambda: writ_status(sol_home, "shop", "hello").phase == "Resolved",
         what="the scripted agent resolved")
    sol("reconcile", "--once", check=True)
    assert writ_status(sol_home, "shop", "hello").phase == "Merged"
    assert git(sol_home.repo("shop"), "show", "main:hello.txt") == "hello"
    assert sol("diff", "-f", str(specs)).returncode == 0  # the file is the desired state


def test_dry_run_prints_the_manifest_and_writes_nothing(
        sol: Sol, sol_home: Home, tmp_path: Path, repo: Path) -> None:
    specs = write_specs(tmp_path / "specs", world_yaml("shop", repo, extra=SUSPENDED))
    (tmp_path / "task.md").write_text("Line one\nLine two\n")
    args = ("create", "writ", "on", "-W", "shop", "--title", "yes", "--depends-on", "shop/0x1",
            "--kind", "analysis", "--description-file", str(tmp_path / "task.md"))
    before = tree(specs)
    # `on`, `yes` and `0x1` read as a boolean or a number unless quoted; shop/0x1 is unknown
    unknown = one_line(sol(*args, "--dry-run", "-f", str(specs)))
    assert "unknown writ '0x1' in world shop" in unknown
    writ = write_specs(tmp_path / "specs", world_yaml("shop", repo, extra=SUSPENDED),
                       writ_yaml("0x1", "shop"))
    before = tree(writ)
    shown = sol(*args, "--dry-run", "-f", str(specs))
    assert shown.returncode == 0, shown.stderr
    doc = YAML(typ="safe").load(shown.stdout)
    expected = {"apiVersion": "sol/v1", "kind": "Writ",
                "metadata": {"name": "on", "world": "shop"},
                "spec": {"title": "yes", "description": "Line one\nLine two\n",
                         "kind": "analysis", "dependsOn": ["shop/0x1"]}}
    assert doc == expected
    as_json = sol(*args, "--dry-run", "-o", "json", "-f", str(specs))
    assert json.loads(as_json.stdout) == expected
    assert tree(specs) == before and writ_names(sol_home) == []
    assert not sol_home.db.exists()  # reading manifests never creates a store

    made = sol(*args, "-f", str(specs), check=True)
    assert made.stdout == f"writ/shop/on created: {specs}/shop/on.yaml\n"
    assert (specs / "shop" / "on.yaml").read_text() == shown.stdout  # what dry-run showed
    assert sol("validate", str(specs)).returncode == 0


@pytest.fixture
def applied(sol: Sol, tmp_path: Path, repo: Path) -> Path:
    """World shop and writs a (in specs/writs.yaml) and b, applied; b then removed from
    the specs directory (orphaned), and d added there (not applied)."""
    specs = write_specs(tmp_path / "specs", world_yaml("shop", repo, extra=SUSPENDED))
    (specs / "writs.yaml").write_text(writ_yaml("a", "shop") + "---\n" + writ_yaml("b", "shop"))
    sol("apply", "-f", str(specs), check=True)
    (specs / "writs.yaml").write_text(writ_yaml("a", "shop"))
    sol("apply", "-f", str(specs), check=True)
    (specs / "writs.yaml").write_text(writ_yaml("a", "shop") + "---\n" + writ_yaml("d", "shop"))
    return specs


BAD = {
    "unknown world": (["c", "-W", "shpo"], "specs/shpo/c.yaml:5:10: Writ shpo/c: metadata."
                      "world: unknown world 'shpo' (did you mean 'shop'?)"),
    "duplicate in the directory": (["d"], "specs/shop/d.yaml:4:9: Writ shop/d: metadata.name:"
                                   " duplicate name: Writ shop/d is also defined at "
                                   "specs/writs.yaml:3:1; rename or remove one"),
    "applied": (["a"], "error: writ/shop/a is already applied (Pending, from "),
    "applied and orphaned": (["b"], "error: writ/shop/b is already applied (Pending, from "),
    "bad priority": (["c", "--priority", "7"], "spec.priority: 7 is greater than the maximum "
                     "of 3"),
    "priority not a number": (["c", "--priority", "high"], "spec.priority: expected a whole "
                              "number, got 'high'"),
    "bad kind": (["c", "--kind", "review"], "'review' is not one of code, analysis"),
    "bad name": (["C_1"], "bad name 'C_1'"),
    "dependsOn cycle": (["c", "--depends-on", "c"], "dependsOn cycle: c -> c: none of them "
                        "could ever start"),
    "unknown dependsOn": (["c", "--depends-on", "x"], "unknown writ 'x' in world shop"),
    "orphaned dependsOn": (["c", "--depends-on", "b"], "unknown writ 'b' in world shop"),
    "apply and dry run": (["c", "--apply", "--dry-run"], "nothing to --apply"),
    "output without dry run": (["c", "-o", "json"], "add --dry-run or drop -o"),
    "git source": (["c", "-f", "git+/tmp/x@main#specs"], "is a git source and `sol create` "
                   "writes files"),
    "no such directory": (["c", "-f", "nowhere"], "specs directory nowhere does not exist"),
    "unreadable description": (["c", "--description-file", "missing.md"], "cannot read the "
                               "description file missing.md"),
}


@pytest.mark.parametrize("case", BAD)
def test_bad_input_is_one_line_and_writes_nothing(
        sol: Sol, sol_home: Home, tmp_path: Path, applied: Path, case: str) -> None:
    args, said = BAD[case]
    name, rest = args[0], args[1:]
    world = [] if "-W" in rest else ["-W", "shop"]
    where = [] if "-f" in rest else ["-f", "specs"]
    before, names = tree(applied), writ_names(sol_home)
    line = one_line(sol("create", "writ", name, *world, "--title", "T", *rest, *where,
                        cwd=tmp_path))
    assert said in line, line
    assert tree(applied) == before and writ_names(sol_home) == names


def test_an_existing_file_is_never_overwritten(sol: Sol, sol_home: Home, tmp_path: Path,
                                               applied: Path) -> None:
    target = applied / "shop" / "c.yaml"
    target.parent.mkdir()
    target.write_text("# kept\n")
    line = one_line(sol("create", "writ", "c", "-W", "shop", "--title", "T", "-f", "specs",
                        cwd=tmp_path))
    assert line == "error: specs/shop/c.yaml already exists: edit it, or pick another writ name"
    assert target.read_text() == "# kept\n"


def test_several_problems_are_all_reported(sol: Sol, tmp_path: Path, applied: Path) -> None:
    done = sol("create", "writ", "c", "-W", "shop", "--title", "T", "--priority", "0",
               "--depends-on", "nope", "-f", "specs", cwd=tmp_path)
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 3 and lines[-1] == "2 problems found; nothing was written"
    assert "spec.priority: 0 is less than the minimum of 1" in done.stderr
    assert "unknown writ 'nope'" in done.stderr


def test_the_default_specs_directory_and_an_applied_world(
        sol: Sol, sol_home: Home, tmp_path: Path, repo: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The world only in the store (applied from another directory): the new file alone
    is valid; $SOL_SPECS, then ./specs, is where it goes."""
    elsewhere = write_specs(tmp_path / "worlds", world_yaml("shop", repo, extra=SUSPENDED))
    sol("apply", "-f", str(elsewhere), check=True)
    work = tmp_path / "work"
    (work / "specs").mkdir(parents=True)
    made = sol("create", "writ", "a", "-W", "shop", "--title", "T", "--apply", cwd=work)
    assert made.returncode == 0, made.stderr
    assert made.stdout.startswith("writ/shop/a created: specs/shop/a.yaml\n")
    assert writ_status(sol_home, "shop", "a").phase == "Pending"
    db = store(sol_home)
    assert not db.get("World", "", "shop").orphaned  # a partial apply orphans nothing
    db.close()
    monkeypatch.setenv("SOL_SPECS", str(tmp_path / "planned"))
    (tmp_path / "planned").mkdir()
    done = sol("create", "writ", "b", "-W", "shop", "--title", "T", cwd=work, check=True)
    assert done.stdout == f"writ/shop/b created: {tmp_path}/planned/shop/b.yaml\n"
    assert os.listdir(tmp_path / "planned" / "shop") == ["b.yaml"]
    monkeypatch.delenv("SOL_SPECS")
    make_repo(tmp_path / "empty")
    gone = one_line(sol("create", "writ", "c", "-W", "shop", "--title", "T",
                        cwd=tmp_path / "empty"))
    assert "./specs does not exist" in gone
