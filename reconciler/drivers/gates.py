"""Running one quality gate: the user's own command, as its own process group, with a
timeout and a log.

Invariant 4: sol runs the gates, not an AI, and exit status 0 is the only pass. A gate
runs as `bash -c RUN` in a new session (so its process group id is its pid); at its
timeout the whole group gets SIGTERM, then SIGKILL after a grace period, so a gate that
started `sleep 300 &` leaves nothing behind. Processes still in the group when the gate
itself exits are ended the same way.

While a gate runs, its group id and a random token (also in the gate's environment as
`SOL_GATE_TOKEN`) are written to a record file; if the process running the gate dies
(a crashed or killed forge), `kill_leftover` ends that orphaned group on the next start,
and checks the token first (psutil) so a reused process id is never signalled.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from reconciler.core.durations import format_duration
from reconciler.core.errors import SolError

KILL_GRACE = 5.0  # seconds between SIGTERM and SIGKILL
TAIL_BYTES = 256 * 1024  # how far back from the end of a log tails are read


@dataclass(frozen=True)
class GateResult:
    """How one gate run ended; `tail` is the last lines of its output."""

    name: str
    run: str
    passed: bool
    exit_code: int | None  # None: timed out or never started
    timed_out: bool
    seconds: float
    timeout: float
    log: Path
    tail: str

    @property
    def summary(self) -> str:
        """One clause for people: `gate tests failed with exit code 1`."""
        if self.passed:
            return f"gate {self.name} passed in {self.seconds:.1f}s"
        if self.timed_out:
            return (f"gate {self.name} timed out after {format_duration(self.timeout)} "
                    "(killed, no exit code)")
        if self.exit_code is None:
            return f"gate {self.name} could not start"
        if self.exit_code < 0:
            return (f"gate {self.name} was killed by signal {-self.exit_code} "
                    f"(exit code {128 - self.exit_code})")
        return f"gate {self.name} failed with exit code {self.exit_code}"


def run_gate(name: str, run: str, *, cwd: Path, log: Path, timeout: float,
             env: Mapping[str, str], record: Path | None = None, tail_lines: int = 200,
             on_start: Callable[[int], None] | None = None) -> GateResult:
    """Run `bash -c run` in cwd until it exits or `timeout` seconds pass.

    Output (stdout and stderr) goes to `log` after a header line; `on_start` is called
    with the gate's pid once it runs (the forge uses it for its crash points).
    """
    token = uuid.uuid4().hex
    try:
        log.parent.mkdir(parents=True, exist_ok=True)
        out = log.open("wb")
    except OSError as exc:
        raise SolError(f"cannot write the log of gate {name} at {log}: {exc.strerror}; "
                       "check the permissions of SOL_HOME") from exc
    started = time.monotonic()
    with out:
        out.write(f"# gate {name}: {run}\n# in {cwd}, timeout "
                  f"{format_duration(timeout)}\n".encode())
        out.flush()
        offset = out.tell()
        try:
            proc = subprocess.Popen(
                ["bash", "-c", run], cwd=cwd, stdin=subprocess.DEVNULL, stdout=out,
                stderr=subprocess.STDOUT, env={**env, "SOL_GATE_TOKEN": token},
                start_new_session=True,
            )
        except OSError as exc:
            out.write(f"cannot start bash in {cwd}: {exc.strerror}\n".encode())
            return GateResult(name, run, False, None, False, 0.0, timeout, log,
                              f"cannot start bash in {cwd}: {exc.strerror}")
        timed_out = False
        try:
            if record is not None:
                _write_record(record, proc.pid, token)
            if on_start is not None:
                on_start(proc.pid)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                timed_out = True
        finally:
            _end_group(proc.pid, leader=proc)
            if record is not None:
                _remove(record)
        seconds = time.monotonic() - started
        code = None if timed_out else proc.returncode
        out.flush()
        tail = read_tail(log, tail_lines, start=offset)
        ending = (f"timed out after {format_duration(timeout)}" if timed_out
                  else f"exit code {code}")
        out.write(f"\n# {ending} after {seconds:.1f}s\n".encode())
    return GateResult(name, run, not timed_out and code == 0, code, timed_out, seconds,
                      timeout, log, tail)


def read_tail(path: Path, lines: int, *, start: int = 0) -> str:
    """The last `lines` lines of a file from byte `start` on, decoded leniently."""
    try:
        with path.open("rb") as handle:
            size = handle.seek(0, os.SEEK_END)
            begin = max(start, size - TAIL_BYTES)
            handle.seek(begin)
            data = handle.read()
    except OSError:
        return ""
    text = data.decode("utf-8", errors="replace")
    kept = text.splitlines()
    if begin > start and kept:
        kept = kept[1:]  # the first line was cut in the middle
    return "\n".join(kept[-lines:]) if lines > 0 else ""


def kill_leftover(record: Path) -> bool:
    """End the process group a dead gate runner left behind; True if one was found."""
    try:
        data = json.loads(record.read_text())
        pgid, token = int(data["pgid"]), str(data["token"])
    except FileNotFoundError:
        return False
    except (OSError, ValueError, KeyError, TypeError):
        _remove(record)
        return False
    found = any(_has_token(pid, token) for pid in _members(pgid))
    if found:
        _end_group(pgid)
    _remove(record)
    return found


def _write_record(record: Path, pgid: int, token: str) -> None:
    record.parent.mkdir(parents=True, exist_ok=True)
    temp = record.with_name(record.name + ".tmp")
    temp.write_text(json.dumps({"pgid": pgid, "token": token}))
    os.replace(temp, record)


def _remove(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass


def _end_group(pgid: int, *, leader: subprocess.Popen[bytes] | None = None) -> None:
    """SIGTERM the group, wait up to KILL_GRACE for it to empty, then SIGKILL it."""
    if (leader is not None and leader.poll() is None) or _members(pgid):
        _signal(pgid, signal.SIGTERM)
        deadline = time.monotonic() + KILL_GRACE
        while time.monotonic() < deadline:
            if leader is not None and leader.poll() is None:
                time.sleep(0.02)
                continue
            if not _members(pgid):
                break
            time.sleep(0.02)
        _signal(pgid, signal.SIGKILL)
    if leader is not None:
        leader.wait()


def _signal(pgid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _members(pgid: int) -> list[int]:
    """Live (non-zombie) processes of group pgid in session pgid (the gate's session)."""
    import psutil  # on first use: only a forge that finds a leftover gate asks

    found = []
    for proc in psutil.process_iter(["status"]):
        if proc.info["status"] == psutil.STATUS_ZOMBIE:
            continue
        try:
            if os.getpgid(proc.pid) == pgid and os.getsid(proc.pid) == pgid:
                found.append(proc.pid)
        except OSError:
            continue
    return found


def _has_token(pid: int, token: str) -> bool:
    """True when the process was started with our SOL_GATE_TOKEN."""
    import psutil

    try:
        return psutil.Process(pid).environ().get("SOL_GATE_TOKEN") == token
    except psutil.Error:
        return False
