"""Faults show in `sol status` within one pass, with exit 1, and clear by themselves once
fixed (issue 10, point 6): a stopped daemon while work waits, a full disk and a
read-only store (SOL_HOME on a small tmpfs of the test's own)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import poll
from helpers import world_yaml, writ_yaml, write_specs
from test_prefect import daemon_commands

from reconciler.core.home import Home


def sleepy(repo: Path, tmp_path: Path) -> Path:
    world = world_yaml("shop", repo).replace(
        "runtime: {name: script}", "runtime: {name: command, command: 'sleep 600'}")
    return write_specs(tmp_path / "specs", world, writ_yaml("a", "shop"))


def status(sol) -> tuple[int, str]:  # noqa: ANN001 - the sol fixture
    result = sol("status")
    assert "Traceback" not in result.stderr, result.stderr
    return result.returncode, result.stdout + result.stderr


def test_a_stopped_daemon_with_work_waiting_needs_attention(
        sol_home: Home, repo: Path, tmp_path: Path, sol) -> None:
    specs = sleepy(repo, tmp_path)
    applied = sol("apply", "-f", str(specs))
    assert applied.returncode == 0 and "no daemon is running" in applied.stderr
    code, text = status(sol)
    assert code == 1 and "daemon: not running" in text and "sol up" in text
    with daemon_commands(sol_home, tmp_path) as daemon:
        assert daemon("up", "-f", str(specs)).returncode == 0
        poll(lambda: (r := status(sol))[0] == 0 and "consul " in r[1], timeout=30,
             what="status healthy with the daemon")
        code, text = status(sol)
        assert "daemon: running" in text and "last pass" in text
        assert daemon("down").returncode == 0
        code, text = status(sol)
        assert code == 1 and "daemon: not running" in text


@pytest.fixture
def small_disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Home]:
    """SOL_HOME on a 24 MiB tmpfs mounted for this test (root only)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    home = Home(mount / "solhome")
    monkeypatch.setenv("SOL_HOME", str(home.root))
    home.init()
    try:
        yield home
    finally:
        subprocess.run(["mount", "-o", "remount,rw", str(mount)], capture_output=True)
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def fill(path: Path) -> None:
    with path.open("wb") as out:
        try:
            while True:
                out.write(b"\0" * (1 << 20))
                out.flush()
        except OSError:
            pass


def test_a_full_disk_and_a_read_only_store_show_and_clear(
        small_disk: Home, repo: Path, tmp_path: Path) -> None:
    def sol(*args: str) -> subprocess.CompletedProcess[str]:
        from test_prefect import cli_argv

        return subprocess.run(cli_argv(*args), capture_output=True, text=True, timeout=60)

    specs = sleepy(repo, tmp_path)
    with daemon_commands(small_disk, tmp_path) as daemon:
        assert daemon("up", "-f", str(specs)).returncode == 0
        poll(lambda: status(sol)[0] == 0, timeout=30, what="a healthy sphere")
        filler = small_disk.root / "filler"
        fill(filler)
        code, text = status(sol)
        assert code == 1 and "DISK FULL" in text
        filler.unlink()
        poll(lambda: status(sol)[0] == 0, timeout=30, what="the disk to count as fixed")
        # A read-only store: sol.db bind-mounted read-only onto itself.
        db = str(small_disk.db)
        subprocess.run(["mount", "--bind", db, db], check=True)
        subprocess.run(["mount", "-o", "remount,bind,ro", db], check=True)
        code, text = status(sol)
        assert code == 1 and "READ-ONLY" in text, text
        subprocess.run(["mount", "-o", "remount,bind,rw", db], check=True)  # fixed
        last: list[str] = []
        try:
            poll(lambda: (r := status(sol))[0] == 0 or last.append(r[1]), timeout=30,
                 what="the store writable again")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; status said: {last[-1] if last else ''}") from None
