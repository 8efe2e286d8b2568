"""Strange files in a specs directory (issue 10, point 4): a FIFO, a symlink loop, a link
to /dev/zero or out of the tree, a dangling link, a file over the size cap. `sol validate`
and `sol apply` answer within seconds with `FILE: reason` and exit 1, nothing applied;
the daemon reports `specs-invalid` and applies a valid manifest once the file is gone."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import poll
from helpers import meta, world_yaml, writ_status, writ_yaml, write_specs
from test_prefect import Run, daemon_commands, events

from reconciler.core.home import Home
from reconciler.specs.manifests import MAX_FILE_BYTES

SUSPENDED = "suspend: true\n"  # nothing is cast: no tmux session, nothing slow
ANSWER_WITHIN = 20  # seconds; a hang is what is tested, so fail rather than wait forever


def sol(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """`sol ARGS` as a user runs it; a hang raises TimeoutExpired and fails the test."""
    return subprocess.run([sys.executable, "-m", "reconciler", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=ANSWER_WITHIN)


def fifo(specs: Path) -> str:
    os.mkfifo(specs / "pipe.yaml")
    return "pipe.yaml: not a regular file (a FIFO)"


def loop(specs: Path) -> str:
    (specs / "loop.yaml").symlink_to("loop.yaml")
    return "loop.yaml: symlink loop"


def dev_zero(specs: Path) -> str:
    (specs / "zero.yaml").symlink_to("/dev/zero")
    return "zero.yaml: not a regular file (a character device)"


def outside(specs: Path) -> str:
    target = specs.parent / "elsewhere.yaml"
    target.write_text("# a regular file, but not under the specs directory\n")
    (specs / "outside.yaml").symlink_to(target)
    return "outside.yaml: symlink to "


def dangling(specs: Path) -> str:
    (specs / "gone.yaml").symlink_to("nowhere.yaml")
    return "gone.yaml: dangling symlink"


def oversized(specs: Path) -> str:
    with open(specs / "huge.yaml", "wb") as handle:
        handle.truncate(MAX_FILE_BYTES + 1)  # sparse: costs no disk and no time
    return "huge.yaml: larger than 10 MiB"


BAD_FILES: list[Callable[[Path], str]] = [fifo, loop, dev_zero, outside, dangling, oversized]


def good_specs(tmp_path: Path, repo: Path) -> Path:
    return write_specs(tmp_path / "specs", world_yaml("shop", repo, extra=SUSPENDED))


def worlds(tmp_path: Path) -> list[dict]:
    result = sol("get", "worlds", "-o", "json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.mark.parametrize("make", BAD_FILES, ids=lambda make: make.__name__)
def test_validate_and_apply_report_a_strange_file_and_apply_nothing(
        make: Callable[[Path], str], sol_home: Home, repo: Path, tmp_path: Path) -> None:
    specs = good_specs(tmp_path, repo)
    expected = f"specs/{make(specs)}"

    checked = sol("validate", "specs", cwd=tmp_path)
    assert checked.returncode == 1, (checked.stdout, checked.stderr)
    assert "Traceback" not in checked.stderr
    assert any(line.startswith(expected) for line in checked.stderr.splitlines()), \
        checked.stderr

    applied = sol("apply", "-f", "specs", cwd=tmp_path)
    assert applied.returncode == 1, (applied.stdout, applied.stderr)
    assert expected in applied.stderr and "nothing was applied" in applied.stderr
    assert worlds(tmp_path) == []


def test_a_fifo_named_explicitly_is_refused_too(sol_home: Home, tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pipe.yaml")
    result = sol("validate", "pipe.yaml", cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.startswith("pipe.yaml: not a regular file (a FIFO)"), result.stderr


def test_links_inside_the_tree_are_read_once_and_linked_directories_not_followed(
        sol_home: Home, repo: Path, tmp_path: Path) -> None:
    specs = good_specs(tmp_path, repo)
    (specs / "writs").mkdir()
    (specs / "writs" / "a.yaml").write_text(writ_yaml("a", "shop"))
    (specs / "a-link.yaml").symlink_to("writs/a.yaml")  # the same file: no duplicate writ
    (specs / "again").symlink_to(".")  # a directory loop: not followed, not reported
    result = sol("validate", "specs", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("valid: 1 world, 1 writ"), result.stdout


@pytest.fixture
def daemon(sol_home: Home, tmp_path: Path) -> Iterator[Run]:
    with daemon_commands(sol_home, tmp_path) as run:
        yield run


def test_the_daemon_reports_a_fifo_and_applies_a_valid_save_once_it_is_gone(
        sol_home: Home, repo: Path, tmp_path: Path, daemon: Run) -> None:
    specs = good_specs(tmp_path, repo)
    os.mkfifo(specs / "pipe.yaml")
    started = daemon("up", "-f", str(specs), timeout=ANSWER_WITHIN)
    assert started.returncode == 0, started.stderr

    reported = poll(lambda: events(sol_home, "specs-invalid"), timeout=10,
                    what="specs-invalid event")
    assert "pipe.yaml: not a regular file" in reported[0].message
    assert "not a regular file" in (meta(sol_home, "specs_invalid") or "")
    assert writ_status(sol_home, "shop", "after") is None

    (specs / "pipe.yaml").unlink()
    (specs / "writ.yaml").write_text(writ_yaml("after", "shop"))
    poll(lambda: writ_status(sol_home, "shop", "after"), timeout=10, what="writ applied")
    assert meta(sol_home, "specs_invalid") is None
    assert events(sol_home, "specs-valid")
