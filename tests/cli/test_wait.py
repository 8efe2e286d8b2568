"""`sol wait KIND NAME... --for ...`: exit 0 once every object meets the condition, 1 with
one sentence on a timeout, and 1 at once for a writ that ended where it cannot get
there. Real runs: a script agent in tmux resolves, `sol reconcile --once` lands it or
fails its gate."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from conftest import poll

from reconciler.core.home import Home
from tests.helpers import failure, world_yaml, writ_status, writ_yaml, write_specs

Sol = Callable[..., subprocess.CompletedProcess[str]]
SUSPENDED = "suspend: true\n"
FAILING_GATE = ("forge:\n  maxAttempts: 1\n  gates:\n"
                "    - {name: check, run: 'echo broken; exit 3', timeout: 30s}\n")


def start(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "reconciler", "wait", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen[str], timeout: float = 60
           ) -> subprocess.CompletedProcess[str]:
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def resolved(sol: Sol, sol_home: Home, tmp_path: Path, repo: Path, extra: str = "") -> None:
    """World shop (not suspended), writ a cast by `sol apply`, resolved by its agent."""
    path = write_specs(tmp_path / "specs", world_yaml("shop", repo, extra=extra),
                       writ_yaml("a", "shop", "echo a > a.txt"))
    sol("apply", "-f", str(path), check=True)
    poll(lambda: writ_status(sol_home, "shop", "a").phase == "Resolved", timeout=90,
         what="writ a resolved")


def test_wait_exits_0_when_the_writ_merges(sol: Sol, sol_home: Home, tmp_path: Path,
                                           repo: Path) -> None:
    resolved(sol, sol_home, tmp_path, repo)
    waiting = start("writ", "a", "--for", "phase=Merged", "--timeout", "5m")
    try:
        waiting.wait(timeout=2)
        raise AssertionError(f"sol wait returned before the merge: {finish(waiting)}")
    except subprocess.TimeoutExpired:
        pass  # still waiting on a Resolved writ, as it should
    sol("reconcile", "--once", check=True)
    result = finish(waiting)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["writ/shop/a condition met"]
    assert writ_status(sol_home, "shop", "a").phase == "Merged"


def test_wait_fails_at_once_when_the_writ_fails(sol: Sol, sol_home: Home, tmp_path: Path,
                                                repo: Path) -> None:
    resolved(sol, sol_home, tmp_path, repo, extra=FAILING_GATE)
    waiting = start("writ", "shop/a", "--for", "phase=Merged", "--timeout", "30m")
    sol("reconcile", "--once", check=True)
    assert writ_status(sol_home, "shop", "a").phase == "Failed"
    line = failure(finish(waiting))  # well before its 30m
    assert "writ/shop/a is Failed" in line and "will not become Merged" in line, line
    started = time.monotonic()
    line = failure(sol("wait", "writ", "a", "--for", "phase=Merged", "--timeout", "30m"))
    assert time.monotonic() - started < 20 and "is Failed" in line
    # waiting for the phase it has is fine
    assert sol("wait", "writ", "a", "--for", "phase=failed", check=True).stdout.strip() == \
        "writ/shop/a condition met"


def test_wait_times_out_naming_each_object_and_its_phase(sol: Sol, tmp_path: Path,
                                                         repo: Path) -> None:
    path = write_specs(tmp_path / "specs", world_yaml("shop", repo, extra=SUSPENDED),
                       writ_yaml("a", "shop"), writ_yaml("b", "shop"))
    sol("apply", "-f", str(path), check=True)
    started = time.monotonic()
    line = failure(sol("wait", "writ", "a", "b", "--for", "phase=Merged", "--timeout", "2s"))
    elapsed = time.monotonic() - started
    assert 2 <= elapsed < 30, elapsed
    assert line.startswith("error: timed out after 2s waiting for phase=Merged: ")
    assert "writ/shop/a is Pending" in line and "writ/shop/b is Pending" in line
    # conditions, several objects at once as `-o name` prints them, and a world
    names = sol("get", "writs", "-o", "name", check=True).stdout.split()
    met = sol("wait", *names, "--for", "condition=Ready=False", "--for", "phase=Pending",
              check=True)
    assert met.stdout.split("\n")[:2] == ["writ/shop/a condition met",
                                          "writ/shop/b condition met"]
    assert sol("wait", "world", "shop", "--for", "condition=Ready", check=True).stdout \
        .strip() == "world/shop condition met"
    line = failure(sol("wait", "writ", "a", "--for", "condition=Ready", "--timeout", "1s"))
    assert "writ/shop/a is Pending (Ready=False)" in line


def test_wait_refuses_what_it_cannot_wait_for_in_one_sentence(sol: Sol, tmp_path: Path,
                                                              repo: Path) -> None:
    path = write_specs(tmp_path / "specs", world_yaml("shop", repo, extra=SUSPENDED),
                       writ_yaml("a", "shop"))
    sol("apply", "-f", str(path), check=True)
    assert "no writ named 'nope'" in failure(sol("wait", "writ", "a", "nope", "--for",
                                                 "phase=Merged"))
    assert "no writ named 'depot/a'" in failure(sol("wait", "writ", "depot/a", "--for",
                                                    "phase=Merged"))
    assert "needs --for" in failure(sol("wait", "writ", "a"))
    assert "is not a condition" in failure(sol("wait", "writ", "a", "--for", "merged"))
    assert "is not a condition" in failure(sol("wait", "writ", "a", "--for",
                                               "condition=Ready=maybe"))
    assert "bad duration" in failure(sol("wait", "writ", "a", "--for", "phase=Merged",
                                         "--timeout", "soon"))
    assert "needs the objects" in failure(sol("wait", "writ", "--for", "phase=Merged"))
    assert "unknown kind" in failure(sol("wait", "gizmo", "a", "--for", "phase=Merged"))
