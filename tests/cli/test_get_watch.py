"""`sol get KIND -w`: the listing, then the object again each time it changes, until
Ctrl-C (exit 0, no traceback). Run as a user runs it, in a subprocess, against a sphere
changed by `sol apply` and by a real script agent in a real tmux session."""

from __future__ import annotations

import json
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from helpers import world_yaml, writ_yaml, write_specs

from reconciler.cli.common import Changes
from reconciler.core.home import Home
from reconciler.core.store import Store

Sol = Callable[..., subprocess.CompletedProcess[str]]
SUSPENDED = "suspend: true\n"


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class Watch:
    """A running `sol ARGS`, its stdout read line by line on a thread."""

    def __init__(self, *args: str) -> None:
        # Ctrl-C as at a terminal, even where the test runner's shell ignores SIGINT
        self.proc = subprocess.Popen([sys.executable, "-m", "reconciler", *args],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, preexec_fn=_default_sigint)
        self.lines: queue.Queue[str] = queue.Queue()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))

    def until(self, wanted: Callable[[str], bool], timeout: float = 60) -> list[str]:
        """Lines up to and including the first that is `wanted`; fails at the deadline."""
        seen, deadline = [], time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no wanted line within {timeout}s; saw {seen}")
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                continue
            seen.append(line)
            if wanted(line):
                return seen

    def quiet_for(self, seconds: float) -> bool:
        """Nothing printed for `seconds` (an idle watch says nothing)."""
        try:
            self.lines.get(timeout=seconds)
        except queue.Empty:
            return True
        return False

    def interrupt(self) -> tuple[int, str]:
        """Ctrl-C; the exit code and stderr."""
        self.proc.send_signal(signal.SIGINT)
        code = self.proc.wait(timeout=30)
        assert self.proc.stderr is not None
        return code, self.proc.stderr.read()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)


@pytest.fixture
def watches() -> Iterator[Callable[..., Watch]]:
    started: list[Watch] = []

    def start(*args: str) -> Watch:
        started.append(Watch(*args))
        return started[-1]

    yield start
    for watch in started:
        watch.kill()


def specs(tmp_path: Path, repo: Path, *, suspended: bool, title: str = "Write a") -> Path:
    return write_specs(tmp_path / "specs",
                       world_yaml("shop", repo, extra=SUSPENDED if suspended else ""),
                       writ_yaml("a", "shop", "echo a > a.txt", title=title))


def test_a_table_watch_prints_a_row_each_time_the_writ_changes(
        sol: Sol, tmp_path: Path, repo: Path, watches: Callable[..., Watch]) -> None:
    sol("apply", "-f", str(specs(tmp_path, repo, suspended=True)), check=True)
    watch = watches("get", "writs", "-w")
    header, first = watch.until(lambda line: line.split()[:2] == ["shop", "a"])
    assert header.split() == ["WORLD", "NAME", "PHASE", "AGENT", "ATTEMPT", "AGE", "MESSAGE"]
    assert first.split()[2] == "Pending"
    assert watch.quiet_for(1.5)  # nothing changes: nothing is printed
    sol("apply", "-f", str(specs(tmp_path, repo, suspended=False)), check=True)
    later = watch.until(lambda line: line.split()[2:3] == ["Resolved"], timeout=90)
    assert all(line.split()[:2] == ["shop", "a"] for line in later), later
    assert "Working" in [line.split()[2] for line in later]  # the cast, and the agent's name
    working = next(line for line in later if line.split()[2] == "Working")
    assert working.index("Working") == header.index("PHASE")  # under its header
    assert "PHASE" not in "".join(later)  # no header again
    code, err = watch.interrupt()
    assert code == 0 and "Traceback" not in err and "interrupted" not in err, err


def test_a_json_watch_prints_one_object_a_line_per_change(
        sol: Sol, tmp_path: Path, repo: Path, watches: Callable[..., Watch]) -> None:
    sol("apply", "-f", str(specs(tmp_path, repo, suspended=True)), check=True)
    watch = watches("get", "writ", "shop/a", "-w", "-o", "json")
    [line] = watch.until(lambda line: True)
    first = json.loads(line)
    assert (first["metadata"]["name"], first["spec"]["title"]) == ("a", "Write a")
    sol("apply", "-f", str(specs(tmp_path, repo, suspended=True, title="Write a again")),
        check=True)
    [line] = watch.until(lambda line: True)
    changed = json.loads(line)
    assert changed["spec"]["title"] == "Write a again"
    assert changed["status"]["generation"] != first["status"]["generation"]
    names = watches("get", "writs", "-w", "-o", "name")
    assert names.until(lambda line: True) == ["writ/shop/a"]
    code, err = watch.interrupt()
    assert code == 0 and not err.strip(), err


def test_dash_w_on_events_follows_and_ctrl_c_is_quiet(
        sol: Sol, tmp_path: Path, repo: Path, sol_home: Home,
        watches: Callable[..., Watch]) -> None:
    sol("apply", "-f", str(specs(tmp_path, repo, suspended=True)), check=True)
    follow = watches("events", "-w", "-n", "1")
    follow.until(lambda line: True)
    store = Store(sol_home.db)
    store.event("cast", kind="Writ", world="shop", name="a", message="a new event")
    store.close()
    assert "a new event" in follow.until(lambda line: "a new event" in line)[-1]
    code, err = follow.interrupt()
    assert code == 0 and "Traceback" not in err, err


def test_the_watch_reads_the_store_only_after_a_write(sol_home: Home) -> None:
    store = Store(sol_home.db)
    other = Store(sol_home.db)
    try:
        changes = Changes(store)
        assert changes()  # the first look always reads
        assert not changes() and not changes()
        other.set_meta("touched", "1")  # a commit by another process's connection
        assert changes()
        assert not changes()
        changes.RESYNC = 0.0  # the safety net: a re-read however still the files look
        assert changes()
    finally:
        store.close()
        other.close()
