"""Shared fixtures: a temporary SOL_HOME, temporary git repos with a local identity, and a
private tmux server per test. Nothing here is a mock: git, tmux and SQLite are real."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from reconciler.core.home import Home

ROOT = Path(__file__).resolve().parent.parent
IDENTITY = {
    "GIT_AUTHOR_NAME": "Test Author",
    "GIT_AUTHOR_EMAIL": "test@example.org",
    "GIT_COMMITTER_NAME": "Test Author",
    "GIT_COMMITTER_EMAIL": "test@example.org",
}


def poll(condition: Callable[[], object], timeout: float = 30.0, interval: float = 0.05,
         what: str = "condition") -> object:
    """Wait until condition() is truthy; fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=cwd, check=True, capture_output=True, text=True
    ).stdout.strip()


def make_repo(path: Path, files: dict[str, str] | None = None, branch: str = "main") -> Path:
    """A real git repository with a repo-local identity and one commit."""
    path.mkdir(parents=True, exist_ok=True)
    git(path, "init", "-q", "-b", branch)
    git(path, "config", "user.name", "Test Author")
    git(path, "config", "user.email", "test@example.org")
    for name, text in (files or {"README.md": "# test\n"}).items():
        target = path / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
    git(path, "add", "-A")
    git(path, "commit", "-q", "-m", "initial")
    return path


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """No test talks to the caller's tmux, git identity or SOL_HOME."""
    monkeypatch.delenv("TMUX", raising=False)
    monkeypatch.delenv("TMUX_PANE", raising=False)
    for var in ("SOL_WORLD", "SOL_WRIT", "SOL_AGENT", "SOL_TETHER", "SOL_SESSION"):
        monkeypatch.delenv(var, raising=False)
    # A short private tmux directory keeps socket paths short and per test.
    tmux_dir = Path("/tmp") / f"soltest-{os.getpid()}-{abs(hash(str(tmp_path))) % 10**8}"
    tmux_dir.mkdir(parents=True, exist_ok=True)
    monkeypatch.setenv("TMUX_TMPDIR", str(tmux_dir))
    for key, value in IDENTITY.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    monkeypatch.setenv("HOME", str(tmp_path / "userhome"))
    (tmp_path / "userhome").mkdir(exist_ok=True)
    bindir = str(Path(sys.executable).parent)
    if not os.environ.get("PATH", "").startswith(bindir):
        monkeypatch.setenv("PATH", bindir + os.pathsep + os.environ.get("PATH", ""))
    yield
    socket_dir = tmux_dir
    for sock in socket_dir.rglob("*"):
        if sock.is_socket():
            subprocess.run(["tmux", "-S", str(sock), "kill-server"], capture_output=True)
    shutil.rmtree(tmux_dir, ignore_errors=True)


@pytest.fixture
def sol_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Home:
    home = Home(tmp_path / "solhome")
    monkeypatch.setenv("SOL_HOME", str(home.root))
    home.init()
    return home


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return make_repo(tmp_path / "source")


SUBPROCESS_ONLY = {"up", "attach", "demo"}
"""Commands that start or replace processes, or run the daemon in the foreground: always a
real child process. Every other command runs in the test's process through click's own
runner: the same parsing, the same code, the same exit codes and stderr (a traceback is
put into stderr as Python would print it), at a fraction of a process start-up, which
the suite pays hundreds of times."""


def _in_process(args: tuple[str, ...]) -> bool:
    if not args or args[0] in SUBPROCESS_ONLY or os.environ.get("SOL_TEST_SUBPROCESS"):
        return False
    if args[0] == "reconcile" and "--once" not in args:
        return False
    return not {"-f", "--follow", "-w", "--watch"} & set(args[1:]) or args[0] in (
        "apply", "diff", "validate", "create", "reconcile")  # there -f is the specs path


def _run_in_process(args: tuple[str, ...], cwd: Path | None,
                    input: str | None) -> subprocess.CompletedProcess[str]:
    import contextlib
    import gc
    import traceback

    from click.testing import CliRunner

    from reconciler.cli import main

    mask = os.umask(0o022)
    os.umask(mask)
    try:
        with contextlib.chdir(cwd or os.getcwd()):
            result = CliRunner().invoke(main, list(args), input=input, prog_name="sol")
    finally:
        os.umask(mask)  # the command sets sol's private umask; the test keeps its own
        gc.collect()  # close the command's store connections, as its process exit would
    stderr = result.stderr
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        stderr += "Traceback (most recent call last):\n" + "".join(
            traceback.format_exception(result.exception))
    return subprocess.CompletedProcess([sys.executable, "-m", "reconciler", *args],
                                       result.exit_code, result.stdout, stderr)


@pytest.fixture
def sol(sol_home: Home) -> Callable[..., subprocess.CompletedProcess[str]]:
    """Run the `sol` CLI as a user would: its arguments, its output, its exit code."""

    def run(*args: str, cwd: Path | None = None, check: bool | None = None,
            input: str | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        if _in_process(args):
            result = _run_in_process(args, cwd, input)
        else:
            result = subprocess.run(
                [sys.executable, "-m", "reconciler", *args], cwd=cwd, capture_output=True,
                text=True, input=input, timeout=timeout,
            )
        if check:
            assert result.returncode == 0, (result.stdout, result.stderr)
        return result

    return run
