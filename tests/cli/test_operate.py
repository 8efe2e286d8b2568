"""`sol retry`, `sol suspend` and `sol resume`, run as a user types them, on real git, real
tmux on a private socket, real SQLite and the `script` agent, with `sol apply`, `sol
reconcile --once` and a real daemon (`sol up`) doing the work.

A writ is made to fail by a gate of its world with `forge.maxAttempts: 1`: the gate
passes only once a file exists (in the merged tree, or beside the test), so a spec edit
or `sol retry` is what lets the same writ land afterwards.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from subprocess import CompletedProcess
from typing import Any

import pytest
from conftest import git, poll
from helpers import world_yaml, writ_status, writ_yaml, write_specs

from reconciler.cli.daemon import stop
from reconciler.core.home import Home
from reconciler.core.store import Store
from reconciler.core.times import parse_rfc3339

pytestmark = pytest.mark.timeout(300)
"""Each test drives agents, gates and landings through some twenty `sol` processes: well
within the default timeout on an idle machine, not on a loaded one."""

Sol = Callable[..., CompletedProcess[str]]
W = "shop"


def caravan(*phases: list[str]) -> str:
    return json.dumps({"apiVersion": "sol/v1", "kind": "Caravan",
                       "metadata": {"name": "train", "world": W},
                       "spec": {"phases": list(phases)}}) + "\n"


def world(repo: Path, gate: str | None = None, forge: str = "", extra: str = "") -> str:
    lines = "forge:\n  maxAttempts: 1\n" + forge
    if gate:
        lines += f"  gates:\n    - {{name: check, run: {json.dumps(gate)}, timeout: 30s}}\n"
    return world_yaml(W, repo, extra=lines + extra)


def phase(home: Home, name: str) -> str | None:
    record = writ_status(home, W, name)
    return record.phase if record else None


def mrs(home: Home, name: str) -> list[tuple[int, str]]:
    """(attempt, state) of the writ's merge requests, oldest first."""
    store = Store(home.db)
    try:
        return [(m.attempt, m.state) for m in sorted(store.mrs(W, writ=name),
                                                     key=lambda m: m.id)]
    finally:
        store.close()


def one_sentence(result: CompletedProcess[str]) -> str:
    assert "Traceback" not in result.stderr
    assert result.returncode == 1, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def reconcile_until(sol: Sol, home: Home, name: str, wanted: str, timeout: float = 90) -> None:
    """Passes of `sol reconcile --once` until the writ reaches `wanted` (an agent works
    between passes in its own session)."""
    def step() -> bool:
        if phase(home, name) == wanted:
            return True
        sol("reconcile", "--once", check=True)
        return phase(home, name) == wanted
    poll(step, timeout=timeout, interval=0.2, what=f"{name} {wanted}")


def fail_once(sol: Sol, home: Home, specs: Path, name: str) -> Any:
    """Apply, let the agent resolve, and let the forge fail the writ at attempt 1."""
    sol("apply", "-f", str(specs), check=True)
    poll(lambda: phase(home, name) == "Resolved", timeout=60, what=f"{name} resolved")
    sol("reconcile", "--once", check=True)
    failed = writ_status(home, W, name)
    assert failed.phase == "Failed", (failed.phase, failed.message)
    assert mrs(home, name) == [(1, "Failed")]
    return failed


@pytest.fixture
def daemon(sol: Sol, sol_home: Home, monkeypatch: pytest.MonkeyPatch) -> Iterator[Sol]:
    """`sol up` runs the daemon when the test calls it; it is stopped after, whatever
    happens. A long resync: only a wake makes it look again at once."""
    monkeypatch.setenv("SOL_RESYNC", "600")
    try:
        yield sol
    finally:
        stop(sol_home)


def test_a_spec_edit_re_drives_a_failed_writ_which_lands_and_opens_the_next_phase(
        sol: Sol, sol_home: Home, repo: Path, tmp_path: Path) -> None:
    """Failed after maxAttempts; its description edited; the same writ runs again from
    attempt 1 on the same branch and agent, lands, and its caravan's phase 2 goes on."""
    first = "echo one > one.txt"
    docs = [world(repo, gate="test -f ok.txt"), writ_yaml("first", W, first),
            writ_yaml("second", W, "echo ok > ok.txt; echo two > two.txt"),
            caravan(["first"], ["second"])]
    specs = write_specs(tmp_path / "specs", *docs)
    failed = fail_once(sol, sol_home, specs, "first")
    assert phase(sol_home, "second") == "Pending"
    assert "waiting for first" in writ_status(sol_home, W, "second").message
    assert sol("retry", "writ", "second").returncode == 1  # Pending: nothing to retry

    docs[1] = writ_yaml("first", W, first + "; echo ok > ok.txt")
    write_specs(specs, *docs)
    diff = sol("diff", "-f", str(specs))
    assert diff.returncode == 2 and "re-drive the Failed writ" in diff.stdout, diff.stdout
    sol("apply", "-f", str(specs), check=True)
    again = writ_status(sol_home, W, "first")
    assert again.phase in ("Working", "Resolved"), (again.phase, again.message)
    assert again.status["attempt"] == 1
    assert again.status["agent"] == failed.status["agent"]  # its worktree reused
    [retry] = again.status["retries"]
    assert retry["by"].startswith("spec generation ") and retry["from"] == "Failed"
    assert [c["status"] for c in again.status["conditions"] if c["type"] == "Escalated"] == [
        "False"]

    reconcile_until(sol, sol_home, "first", "Merged")
    assert mrs(sol_home, "first") == [(1, "Failed"), (1, "Merged")]
    clone = sol_home.repo(W)
    assert git(clone, "show", "main:one.txt") == "one"
    reconcile_until(sol, sol_home, "second", "Merged")
    assert git(clone, "show", "main:two.txt") == "two"
    sol("reconcile", "--once", check=True)
    train = json.loads(sol("get", "caravans", "-o", "json", check=True).stdout)[0]
    assert train["status"]["phase"] == "Landed", train["status"]
    text = sol("describe", "writ", "shop/first", check=True).stdout
    assert "Retries:" in text and "by spec generation" in text and "was Failed" in text


def test_sol_retry_re_drives_a_failed_writ_through_the_daemon(
        daemon: Sol, sol_home: Home, repo: Path, tmp_path: Path) -> None:
    """No edit: the gate's outside condition is fixed and `sol retry writ` asks again;
    the daemon, woken by it, casts, merges and opens the caravan's next phase."""
    allow = tmp_path / "allow"
    sol = daemon
    specs = write_specs(tmp_path / "specs", world(repo, gate=f"test -e {allow}"),
                        writ_yaml("only", W, "echo x > x.txt"),
                        writ_yaml("after", W, "echo y > y.txt"),
                        caravan(["only"], ["after"]))
    failed = fail_once(sol, sol_home, specs, "only")
    assert "Escalated" in [c["type"] for c in failed.status["conditions"]]
    refused = one_sentence(sol("retry", "writ", "after"))
    assert "writ shop/after is Pending, not Failed or Cancelled" in refused

    sol("up", "-f", str(specs), check=True)
    allow.touch()
    result = sol("retry", "writ", "shop/only", check=True)
    assert "Retried writ shop/only: Pending again (was Failed: GateFailed)" in result.stdout
    assert "No daemon is running" not in result.stdout
    poll(lambda: phase(sol_home, "after") == "Merged", timeout=90, what="after merged")
    record = writ_status(sol_home, W, "only")
    assert record.phase == "Merged" and record.status["agent"] == failed.status["agent"]
    [retry] = record.status["retries"]
    assert retry["by"] == "sol retry" and retry["attempts"] == 1
    assert parse_rfc3339(retry["at"]) > 0
    assert mrs(sol_home, "only") == [(1, "Failed"), (1, "Merged")]
    assert sol("retry", "writ", "only").returncode == 1  # Merged now: refused
    text = sol("describe", "writ", "only", check=True).stdout
    assert "Retries:" in text and "by sol retry: was Failed (GateFailed)" in text


def test_retry_without_a_daemon_says_how_to_get_it_cast(
        sol: Sol, sol_home: Home, repo: Path, tmp_path: Path) -> None:
    allow = tmp_path / "allow"
    specs = write_specs(tmp_path / "specs", world(repo, gate=f"test -e {allow}"),
                        writ_yaml("only", W, "echo x > x.txt"))
    fail_once(sol, sol_home, specs, "only")
    allow.touch()
    result = sol("retry", "writ", "only", check=True)
    assert "No daemon is running: `sol up` or `sol reconcile --once` casts it." in result.stdout
    assert phase(sol_home, "only") == "Pending"
    reconcile_until(sol, sol_home, "only", "Merged")


def test_retry_refuses_what_cannot_be_retried(
        sol: Sol, sol_home: Home, repo: Path, tmp_path: Path) -> None:
    specs = write_specs(tmp_path / "specs", world(repo), writ_yaml("busy", W, "sleep 60"),
                        writ_yaml("gone", W, "sleep 60", extra="suspend: true"))
    sol("apply", "-f", str(specs), check=True)
    assert phase(sol_home, "busy") == "Working"
    assert one_sentence(sol("retry", "writ", "busy")) == (
        "error: writ shop/busy is Working, not Failed or Cancelled: only a Failed or "
        "Cancelled writ can be retried")
    assert "no writ named 'nope'" in one_sentence(sol("retry", "writ", "nope"))
    assert "cannot retry 'world'" in one_sentence(sol("retry", "world", W))
    write_specs(specs, world(repo), writ_yaml("busy", W, "sleep 60"))
    sol("apply", "-f", str(specs), check=True)  # gone is orphaned
    assert "writ shop/gone is not in the manifests: add it back" in one_sentence(
        sol("retry", "writ", "gone"))


def test_a_forge_suspended_by_its_spec_merges_nothing_until_the_spec_says_so(
        sol: Sol, sol_home: Home, repo: Path, tmp_path: Path) -> None:
    specs = write_specs(tmp_path / "specs", world(repo, forge="  suspend: true\n"),
                        writ_yaml("a", W, "echo a > a.txt"))
    sol("apply", "-f", str(specs), check=True)
    poll(lambda: phase(sol_home, "a") == "Resolved", timeout=60, what="a resolved")
    for _ in range(2):
        sol("reconcile", "--once", check=True)
    record = writ_status(sol_home, W, "a")
    assert record.phase == "Resolved" and record.reason == "ForgeSuspended"
    assert "forge suspended" in record.message
    assert mrs(sol_home, "a") == [(1, "Queued")]
    status = sol("status", W).stdout
    assert "forge shop suspended by its spec (spec.forge.suspend: true)" in status
    refused = one_sentence(sol("resume", "forge", W))
    assert "forge shop is suspended by its spec" in refused
    assert "set spec.forge.suspend: false in the manifest and apply" in refused
    again = sol("suspend", "forge", W, check=True).stdout
    assert "forge shop is already suspended by its spec (spec.forge.suspend: true)" in again
    assert "nothing to do" in again
    shown = json.loads(sol("get", "world", W, "-o", "json", check=True).stdout)[0]
    [cond] = [c for c in shown["status"]["conditions"] if c["type"] == "Suspended"]
    assert (cond["status"], cond["reason"]) == ("True", "ForgeSuspended")

    write_specs(specs, world(repo), writ_yaml("a", W, "echo a > a.txt"))
    sol("apply", "-f", str(specs), check=True)
    reconcile_until(sol, sol_home, "a", "Merged")
    assert "suspended" not in sol("status", W).stdout
    shown = json.loads(sol("get", "world", W, "-o", "json", check=True).stdout)[0]
    [cond] = [c for c in shown["status"]["conditions"] if c["type"] == "Suspended"]
    assert cond["status"] == "False"


def test_sol_suspend_forge_holds_the_queue_and_resume_lands_it(
        daemon: Sol, sol_home: Home, repo: Path, tmp_path: Path) -> None:
    """The daemon's forge holds the writs that resolve (it says so on each), and a resume
    wakes it to land them."""
    sol = daemon
    specs = write_specs(tmp_path / "specs", world(repo))
    sol("apply", "-f", str(specs), check=True)
    suspended = sol("suspend", "forge", W, check=True).stdout
    assert "Suspended forge shop at " in suspended and "`sol resume forge shop`" in suspended
    write_specs(specs, world(repo), writ_yaml("a", W, "echo a > a.txt"),
                writ_yaml("b", W, "echo b > b.txt"))
    main = git(sol_home.repo(W), "rev-parse", "main")
    sol("up", "-f", str(specs), check=True)

    def held(name: str) -> bool:
        record = writ_status(sol_home, W, name)
        return record is not None and record.reason == "ForgeSuspended"  # the forge's word
    for name in ("a", "b"):
        poll(lambda n=name: held(n), timeout=60, what=f"{name} held by the forge")
        record = writ_status(sol_home, W, name)
        assert record.phase == "Resolved" and "suspended by sol suspend at" in record.message
        assert mrs(sol_home, name) == [(1, "Queued")]
    status = sol("status").stdout
    assert "forge shop suspended by sol suspend at " in status
    assert "`sol resume forge shop` to go on" in status
    described = sol("describe", "world", W, check=True).stdout
    assert "forgeSuspended:" in described and "by: sol suspend" in described
    assert "Suspended=True  ForgeSuspended" in described
    assert "nothing to do" in sol("suspend", "forge", W, check=True).stdout
    events = sol("events", "-o", "json", check=True).stdout
    assert '"type": "suspended"' in events

    assert git(sol_home.repo(W), "rev-parse", "main") == main
    assert "Resumed forge shop." in sol("resume", "forge", W, check=True).stdout
    poll(lambda: phase(sol_home, "a") == phase(sol_home, "b") == "Merged", timeout=60,
         what="both merged after resume")
    assert git(sol_home.repo(W), "rev-parse", "main") != main
    assert "nothing to resume" in sol("resume", "forge", W, check=True).stdout


def test_sol_suspend_writ_and_world_keep_pending_writs_from_casting(
        sol: Sol, sol_home: Home, repo: Path, tmp_path: Path) -> None:
    held = world(repo, extra="suspend: true\n")
    specs = write_specs(tmp_path / "specs", held, writ_yaml("x", W, "echo x > x.txt"))
    sol("apply", "-f", str(specs), check=True)
    assert "Suspended writ shop/x" in sol("suspend", "writ", "x", check=True).stdout
    write_specs(specs, world(repo), writ_yaml("x", W, "echo x > x.txt"))
    sol("apply", "-f", str(specs), check=True)
    sol("reconcile", "--once", check=True)
    record = writ_status(sol_home, W, "x")
    assert record.phase == "Pending" and "agent" not in record.status
    assert record.message.startswith("writ suspended by sol suspend at ")
    assert "SUSPENDED: writ shop/x suspended by sol suspend" in sol("status").stdout
    assert "Suspended:" in sol("describe", "writ", "x", check=True).stdout

    assert "Suspended world shop" in sol("suspend", "world", W, check=True).stdout
    assert "Resumed writ shop/x." in sol("resume", "writ", "shop/x", check=True).stdout
    sol("reconcile", "--once", check=True)
    record = writ_status(sol_home, W, "x")
    assert record.phase == "Pending", record.message
    assert record.message.startswith("world suspended by sol suspend at ")
    shown = json.loads(sol("get", "world", W, "-o", "json", check=True).stdout)[0]
    [cond] = [c for c in shown["status"]["conditions"] if c["type"] == "Suspended"]
    assert (cond["status"], cond["reason"]) == ("True", "WorldSuspended")

    assert "Resumed world shop." in sol("resume", "world", W, check=True).stdout
    sol("reconcile", "--once", check=True)
    assert phase(sol_home, "x") in ("Working", "Resolved")


def test_operator_mistakes_are_one_sentence(sol: Sol, sol_home: Home, repo: Path,
                                            tmp_path: Path) -> None:
    specs = write_specs(tmp_path / "specs", world(repo, extra="suspend: true\n"))
    sol("apply", "-f", str(specs), check=True)
    assert "cannot suspend 'caravan'" in one_sentence(sol("suspend", "caravan", "x"))
    assert "no world named 'nope'" in one_sentence(sol("suspend", "forge", "nope"))
    assert "`sol resume forge NAME`" in one_sentence(sol("resume", "forge"))
    assert "no writ named 'x'" in one_sentence(sol("resume", "writ", "x"))
    assert "world shop is suspended by its spec" in one_sentence(sol("resume", "world", W))
    assert "forge shop is not suspended" in sol("resume", "forge", W, check=True).stdout
    assert sol("resume", check=True).stdout.strip() == "Not degraded: nothing to resume."
    store = Store(sol_home.db)
    try:
        assert store.events(types=["suspended", "resumed"]) == []  # nothing was changed
    finally:
        store.close()
