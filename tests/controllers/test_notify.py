"""Notifications through the outbox: real commands, a real HTTP server on 127.0.0.1, real
SQLite, crashes as real process exits, and the daemon across `sol down` / `sol up`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from conftest import poll
from helpers import world_yaml, writ_status, writ_yaml, write_specs
from ruamel.yaml import YAML
from test_prefect import Run, daemon_commands, pid_of

from reconciler.controllers import degraded as degraded_reconciler
from reconciler.controllers import notify
from reconciler.controllers.notify import NotifyView
from reconciler.core import degraded
from reconciler.core.config import DEFAULT_EVENTS, NotifyTarget, load_config
from reconciler.core.errors import SolError
from reconciler.core.home import Home
from reconciler.core.plan import CREATE, DELETE, UPDATE, Plan
from reconciler.core.store import Event, OutboxRow
from reconciler.drivers.sphere import Sphere

HOSTILE = "it's \"done\" $(touch {p}/pwned) `touch {p}/pwned2`; echo $HOME\nline two"


@pytest.fixture(autouse=True)
def _fast(monkeypatch: pytest.MonkeyPatch) -> None:
    """Backoff in tenths of a second; loopback never goes through a proxy."""
    monkeypatch.setenv("SOL_NOTIFY_BACKOFF", "0.2,1")
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")


@pytest.fixture
def sphere(sol_home: Home) -> Iterator[Sphere]:
    sp = Sphere(sol_home)
    yield sp
    sp.close()


def configure(home: Home, *entries: Any) -> None:
    home.config.write_text(json.dumps({"notify": list(entries)}))


def recorder(tmp_path: Path, name: str = "notify", fail_first: int = 0) -> tuple[Path, Path]:
    """A notify command that appends its argv and SOL_* environment as one JSON line, and
    fails (exit 3) its first `fail_first` runs."""
    log, script = tmp_path / f"{name}.jsonl", tmp_path / f"{name}.py"
    script.write_text(f"""#!{sys.executable}
import json, os, sys
from pathlib import Path
counter = Path({str(tmp_path / (name + '.count'))!r})
runs = int(counter.read_text()) + 1 if counter.exists() else 1
counter.write_text(str(runs))
if runs <= {fail_first}:
    print("boom", runs)
    sys.exit(3)
env = {{k: v for k, v in os.environ.items() if k.startswith("SOL_") and k != "SOL_HOME"}}
with open({str(log)!r}, "a") as out:
    out.write(json.dumps({{"argv": sys.argv[1:], "env": env}}) + "\\n")
""")
    script.chmod(0o755)
    return script, log


def lines(log: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def rows(sphere: Sphere, *states: str) -> list:
    return sphere.store.outbox(list(states) or None)


# ---- config ------------------------------------------------------------------------


def test_config_accepts_the_three_shapes_and_names_the_bad_entry(sol_home: Home) -> None:
    configure(sol_home, "page-me --loud",
              {"command": "notify-send sol", "events": ["Merged", "failed"]},
              {"webhook": "http://127.0.0.1:9/hook", "events": ["*"], "timeout": "3s"})
    config = load_config(sol_home)
    plain, command, hook = config.notify_targets
    assert (plain.kind, plain.events, plain.timeout) == ("command", DEFAULT_EVENTS, 60.0)
    assert "degraded" in plain.events  # through the outbox like every event
    assert command.events == {"merged", "failed"} and not command.wants("cast")
    assert (hook.kind, hook.timeout) == ("webhook", 3.0)
    assert hook.wants("cast") and not hook.wants("notify-failed")
    bad = {
        "must have exactly one of": {"command": "x", "webhook": "http://h/"},
        "unknown key(s) url": {"url": "http://h/"},
        "must be an http:// or https:// URL": {"webhook": "ftp://h/"},
        "cannot be parsed": "say 'unbalanced",
        "is not an event type": {"command": "x", "events": ["merged; rm -rf /"]},
        "events must be a non-empty list": {"command": "x", "events": []},
        "timeout must be more than 0": {"webhook": "http://h/", "timeout": "1h"},
        "timeout: bad duration": {"command": "x", "timeout": "soon"},
    }
    for message, entry in bad.items():
        configure(sol_home, "fine", entry)
        with pytest.raises(SolError) as caught:
            load_config(sol_home)
        assert message in caught.value.message
        assert f"{sol_home.config}: notify entry 2" in caught.value.message
    configure(sol_home, "same", "same")
    with pytest.raises(SolError, match="repeats 'same'"):
        load_config(sol_home)


# ---- commands ----------------------------------------------------------------------


def test_command_gets_each_wanted_event_once_verbatim_and_nothing_is_executed(
        sphere: Sphere, tmp_path: Path) -> None:
    script, log = recorder(tmp_path)
    plain, plain_log = recorder(tmp_path, "plain")
    configure(sphere.home, {"command": f"{script} --from 'sol yaml'",
                            "events": ["merged", "escalated"]}, str(plain))
    hostile = HOSTILE.format(p=tmp_path)
    store = sphere.store
    merged = store.event("merged", kind="Writ", world="shop", name="a", message=hostile, sha="1")
    store.event("cast", kind="Writ", world="shop", name="b", message="cast")
    store.event("escalated", kind="Writ", world="shop", name="b", message="help")
    assert notify.pass_once(sphere) == 4  # merged + escalated, for each target
    got = lines(log)
    assert [g["argv"] for g in got] == [["--from", "sol yaml", "--", "merged", hostile],
                                        ["--from", "sol yaml", "--", "escalated", "help"]]
    env = got[0]["env"]
    assert (env["SOL_EVENT"], env["SOL_WORLD"], env["SOL_OBJECT"]) == ("merged", "shop", "a")
    assert env["SOL_MESSAGE"] == hostile
    event = json.loads(env["SOL_EVENT_JSON"])
    assert (event["id"], event["message"], event["data"]) == (merged, hostile, {"sha": "1"})
    assert [g["argv"][1] for g in lines(plain_log)] == ["merged", "escalated"]
    assert not (tmp_path / "pwned").exists() and not (tmp_path / "pwned2").exists()
    assert notify.pass_once(sphere) == 0 and len(lines(log)) == 2
    assert {r.state for r in rows(sphere)} == {"delivered"}
    assert notify.requeue_after(sphere) is None


def test_a_failing_command_is_retried_with_backoff_in_order_until_it_succeeds(
        sphere: Sphere, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOL_NOTIFY_BACKOFF", "0.5,1")
    script, log = recorder(tmp_path, fail_first=2)
    configure(sphere.home, {"command": str(script), "events": ["failed"]})
    for name in ("a", "b"):
        sphere.store.event("failed", kind="Writ", world="shop", name=name, message=name)
    started = time.time()
    assert notify.pass_once(sphere) == 1  # a fails; b is not tried after it
    first, second = rows(sphere)
    assert (first.state, first.attempts, first.error) == ("pending", 1, "exit code 3: boom 1")
    assert second.attempts == 0 and second.due_at >= first.due_at > started + 0.45
    assert 0 < notify.requeue_after(sphere) <= 0.5
    assert notify.pass_once(sphere) == 0  # not due yet: nothing is hammered
    poll(lambda: notify.pass_once(sphere) and lines(log), timeout=10, what="delivered")
    assert rows(sphere)[0].attempts == 3 and time.time() - started >= 0.5 + 1
    poll(lambda: (notify.pass_once(sphere), len(lines(log)) == 2)[1], timeout=10,
         what="the second row")
    assert [g["argv"] for g in lines(log)] == [["--", "failed", "a"], ["--", "failed", "b"]]
    assert [r.state for r in rows(sphere)] == ["delivered", "delivered"]


def test_after_the_last_attempt_a_row_is_dead_and_an_event_says_so(
        sphere: Sphere, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOL_NOTIFY_ATTEMPTS", "2")
    monkeypatch.setenv("SOL_NOTIFY_BACKOFF", "0.05,0.05")
    watcher, log = recorder(tmp_path, "watcher")
    configure(sphere.home, {"command": "false", "events": ["*"]},
              {"command": str(watcher), "events": ["notify-failed"]})
    sphere.store.event("merged", kind="Writ", world="shop", name="a", message="landed")
    poll(lambda: (notify.pass_once(sphere), sphere.store.events(types=["notify-failed"]))[1],
         timeout=10, what="the row to die")
    [dead] = rows(sphere, "dead")
    assert dead.attempts == 2 and dead.error == "exit code 1"
    [failed] = sphere.store.events(types=["notify-failed"])
    assert failed.data["target"] == "command:false" and "after 2 attempts" in failed.message
    assert (failed.world, failed.name) == ("shop", "a")
    poll(lambda: (notify.pass_once(sphere), lines(log))[1], timeout=10, what="watcher told")
    assert lines(log)[0]["argv"][1] == "notify-failed"
    assert not [r for r in rows(sphere) if r.target == "command:false"
                and r.event.type == "notify-failed"]  # a dead target is not fed itself


def test_rows_of_a_target_removed_from_the_config_are_dead_and_reported(
        sphere: Sphere, tmp_path: Path) -> None:
    configure(sphere.home, {"command": "false", "events": ["merged"]})
    sphere.store.event("merged", kind="Writ", world="shop", name="a", message="landed")
    assert notify.pass_once(sphere) == 1
    configure(sphere.home)
    poll(lambda: (notify.pass_once(sphere), rows(sphere, "dead"))[1], timeout=10, what="dead")
    [report] = sphere.store.events(types=["notify-failed"])
    assert "1 notification(s) for command:false not delivered" in report.message


def test_degraded_and_recovered_reach_their_commands_through_the_outbox(
        sphere: Sphere, tmp_path: Path) -> None:
    """The degraded reconciler records the events; the notifier delivers them, to a plain
    entry (which hears `degraded`) and to an entry that lists `recovered`."""
    plain, plain_log = recorder(tmp_path, "plain")
    listener, listener_log = recorder(tmp_path, "listener")
    configure(sphere.home, f"{plain} --from-sol",
              {"command": str(listener), "events": ["recovered"]})
    for writ in "abc":
        degraded.record_death(sphere.store, world="shop", writ=writ, agent="vega",
                              session=f"s-{writ}", message="died")
    assert [a.kind for a in degraded_reconciler.RECONCILER.reconcile(sphere).actions] == [
        "enter"]
    reason = degraded.state(sphere.store).reason
    assert notify.pass_once(sphere) == 1
    [got] = lines(plain_log)
    assert got["argv"] == ["--from-sol", "--", "degraded", reason]
    assert (got["env"]["SOL_EVENT"], got["env"]["SOL_MESSAGE"]) == ("degraded", reason)
    assert degraded.resume(sphere.store) is True
    assert notify.pass_once(sphere) == 1
    [heard] = lines(listener_log)
    assert heard["argv"][:2] == ["--", "recovered"] and "sol resume" in heard["argv"][2]
    assert len(lines(plain_log)) == 1


# ---- the plan, on plain values ----------------------------------------------------

NOW = 5_000.0
MERGED_ONLY = NotifyTarget("command", "page-me", frozenset({"merged"}), 60.0)
EVERYTHING = NotifyTarget("webhook", "http://127.0.0.1:9/hook", frozenset({"*"}), 10.0)


def event(id_: int, type_: str, **data: Any) -> Event:
    return Event(id_, NOW - 1, type_, "Writ", "shop", "a", f"{type_} a", data)


def row(id_: int, target: NotifyTarget | str, due: float = NOW - 1) -> OutboxRow:
    key = target if isinstance(target, str) else target.key
    return OutboxRow(id_, key, "pending", 0, due, "", event(id_, "merged"))


def view(*, events: tuple[Event, ...] = (), due: tuple[OutboxRow, ...] = (),
         in_flight: tuple[int, ...] = (), next_due: float | None = None,
         targets: tuple[NotifyTarget, ...] = (MERGED_ONLY, EVERYTHING)) -> NotifyView:
    return NotifyView(NOW, targets, 3, events, in_flight, due, next_due)


def test_plan_queues_each_new_event_for_the_targets_that_want_it() -> None:
    failed = event(6, "notify-failed", target=EVERYTHING.key)
    result = notify.plan(view(events=(event(4, "merged"), event(5, "cast"), failed)))
    [enqueue] = result.actions
    assert (enqueue.op, enqueue.kind, enqueue.target) == (CREATE, "enqueue", "outbox")
    assert enqueue.data == {"cursor": 3, "last": 6, "rows": [
        [4, MERGED_ONLY.key], [4, EVERYTHING.key], [5, EVERYTHING.key]]}
    assert enqueue.description == "queue 3 notification(s) of 3 new event(s)"
    assert result.requeue_after == 0, "the queued rows are due at once"
    unwanted = notify.plan(view(events=(event(4, "cast"),), targets=(MERGED_ONLY,)))
    assert unwanted.actions[0].data["rows"] == [], "the cursor still moves past it"


def test_plan_delivers_every_targets_due_rows_in_one_action_and_drops_removed_ones() -> None:
    due = (row(1, MERGED_ONLY), row(2, EVERYTHING), row(3, "command:removed"),
           row(4, MERGED_ONLY))
    result = notify.plan(view(due=due, in_flight=(9,)))
    redeliver, drop, deliver = result.actions
    assert (redeliver.op, redeliver.kind, redeliver.data) == (UPDATE, "redeliver",
                                                              {"rows": [9]})
    assert (drop.op, drop.kind, drop.data) == (DELETE, "drop", {
        "target": "command:removed", "rows": [3]})
    assert "removed from sol.yaml" in drop.description
    assert (deliver.op, deliver.kind) == (UPDATE, "deliver")
    assert deliver.data == {"now": NOW, "rows": {MERGED_ONLY.key: [1, 4],
                                                 EVERYTHING.key: [2]}}
    assert deliver.description.startswith("deliver 3 notification(s) to command:page-me, ")
    assert result.requeue_after == 0


def test_plan_of_a_quiet_outbox_is_empty_and_looks_again_at_the_next_retry() -> None:
    assert notify.plan(view()) == Plan()
    retry = notify.plan(view(next_due=NOW + 2.5))
    assert retry.actions == () and retry.requeue_after == 2.5
    assert notify.plan(view(next_due=NOW + 2.5)) == retry, "pure: same view, same plan"


# ---- webhooks ----------------------------------------------------------------------


class Hook:
    """A webhook receiver on 127.0.0.1 that answers each POST as `plan` says: a status,
    or "hang" (sleep past the sender's timeout, then 200)."""

    def __init__(self, plan: list[int | str]) -> None:
        self.plan, self.received = plan, []
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers["Content-Length"]))
                answer = hook.plan.pop(0) if hook.plan else 200
                hook.received.append((answer, dict(self.headers), json.loads(body)))
                if answer == "hang":
                    time.sleep(5)
                    answer = 200
                self.send_response(int(answer))
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.server.block_on_close = False
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def hook() -> Iterator[Hook]:
    server = Hook([])
    yield server
    server.close()


def test_a_hanging_webhook_is_cut_at_its_timeout_blocks_no_one_and_is_retried(
        sphere: Sphere, tmp_path: Path, hook: Hook) -> None:
    hook.plan[:] = ["hang", 500, 200]
    script, log = recorder(tmp_path)
    configure(sphere.home, {"webhook": hook.url, "events": ["merged"], "timeout": 1},
              {"command": str(script), "events": ["merged"]})
    merged = sphere.store.event("merged", kind="Writ", world="shop", name="a", message="m")
    started = time.monotonic()
    assert notify.pass_once(sphere) == 2
    assert time.monotonic() - started < 4  # cut at 1 s, not the server's 5 s
    assert len(lines(log)) == 1  # the command was delivered beside the hanging webhook
    [webhook] = [r for r in rows(sphere) if r.target.startswith("webhook:")]
    assert webhook.state == "pending" and webhook.error == "no answer within 1s"
    poll(lambda: (notify.pass_once(sphere), rows(sphere, "pending"))[1] == [], timeout=10,
         what="the webhook delivered")
    assert [answer for answer, _, _ in hook.received] == ["hang", 500, 200]
    _, headers, body = hook.received[-1]
    assert headers["Content-Type"] == "application/json"
    assert headers["X-Sol-Event"] == "merged" and headers["X-Sol-Delivery"] == str(webhook.id)
    assert (body["id"], body["type"], body["name"]) == (merged, "merged", "a")
    assert notify.pass_once(sphere) == 0 and len(hook.received) == 3  # delivered once
    assert len(lines(log)) == 1


def test_an_unreachable_webhook_is_an_error_and_a_retry(sphere: Sphere, hook: Hook) -> None:
    url = hook.url
    hook.close()
    configure(sphere.home, {"webhook": url, "events": ["merged"], "timeout": 1})
    sphere.store.event("merged", kind="Writ", world="shop", name="a", message="m")
    assert notify.pass_once(sphere) == 1
    [row] = rows(sphere)
    assert row.state == "pending" and "cannot reach" in row.error


# ---- crashes -----------------------------------------------------------------------


def crashing_pass(home: Home, point: str = "") -> int:
    code = ("from reconciler.controllers import notify; "
            "from reconciler.drivers.sphere import Sphere; "
            "notify.pass_once(Sphere.from_env())")
    env = {"SOL_NOTIFY_CRASH": point} if point else {}
    return subprocess.run([sys.executable, "-c", code], env={**os.environ, **env},
                          timeout=60).returncode


def test_each_event_is_queued_once_and_delivered_again_only_if_in_flight(
        sphere: Sphere, tmp_path: Path) -> None:
    script, log = recorder(tmp_path)
    configure(sphere.home, {"command": str(script), "events": ["merged"]})
    for name in "abc":
        sphere.store.event("merged", kind="Writ", world="shop", name=name, message=name)
    assert crashing_pass(sphere.home, "enqueue") == 86  # died inside the transaction
    assert rows(sphere) == [] and sphere.store.get_meta(notify.CURSOR) == "0"
    assert crashing_pass(sphere.home, "enqueued") == 86
    assert [r.state for r in rows(sphere)] == ["pending"] * 3
    assert crashing_pass(sphere.home, "sending") == 86  # nothing new: nothing queued twice
    assert [r.state for r in rows(sphere)] == ["sending"] * 3 and lines(log) == []
    assert crashing_pass(sphere.home) == 0
    assert sorted(g["argv"][2] for g in lines(log)) == ["a", "b", "c"]  # exactly once each
    assert [r.state for r in rows(sphere)] == ["delivered"] * 3


def test_a_crash_between_delivery_and_record_delivers_again_with_the_same_id(
        sphere: Sphere, tmp_path: Path) -> None:
    script, log = recorder(tmp_path)
    configure(sphere.home, {"command": str(script), "events": ["merged"]})
    for name in "ab":
        sphere.store.event("merged", kind="Writ", world="shop", name=name, message=name)
    assert crashing_pass(sphere.home, "delivered") == 86
    assert lines(log)[0]["argv"][2] == "a"
    assert crashing_pass(sphere.home) == 0
    got = lines(log)
    assert {g["argv"][2] for g in got} == {"a", "b"}
    first = [g["env"]["SOL_DELIVERY"] for g in got if g["argv"][2] == "a"]
    assert len(first) == 2 and len(set(first)) == 1  # the receiver can tell
    assert [r.state for r in rows(sphere)] == ["delivered"] * 2


# ---- the daemon ----------------------------------------------------------------------


def merged_writs(log: Path) -> list[str]:
    return sorted(g["env"]["SOL_OBJECT"] for g in lines(log) if g["argv"][1] == "merged")


def test_the_daemon_notifies_each_merge_once_across_a_restart(
        sol_home: Home, repo: Path, tmp_path: Path) -> None:
    script, log = recorder(tmp_path)
    configure(sol_home, {"command": str(script), "events": ["merged", "cast"]})
    world = world_yaml("shop", repo)
    specs = write_specs(tmp_path / "specs", world, writ_yaml("a", "shop", "echo a > a.txt"))
    with daemon_commands(sol_home, tmp_path) as run:
        assert run("up", "-f", str(specs)).returncode == 0
        poll(lambda: merged_writs(log) == ["a"], timeout=60, what="a merged and notified")
        assert pid_of(sol_home, "notifier")
        assert run("down").returncode == 0
        write_specs(specs, world, writ_yaml("a", "shop", "echo a > a.txt"),
                    writ_yaml("b", "shop", "echo b > b.txt"))
        land_without_daemon(run, sol_home, specs)  # its one pass runs the notifier too
        assert merged_writs(log) == ["a", "b"]
        assert run("up", "-f", str(specs)).returncode == 0
        sphere = Sphere(sol_home)
        poll(lambda: {r.state for r in sphere.store.outbox()} == {"delivered"}, timeout=10,
             what="the outbox drained")
        sphere.close()
        assert run("down").returncode == 0
    assert merged_writs(log) == ["a", "b"]
    casts = [g["env"]["SOL_OBJECT"] for g in lines(log) if g["argv"][1] == "cast"]
    assert sorted(casts) == ["a", "b"]


def land_without_daemon(run: Run, home: Home, specs: Path) -> None:
    """`sol apply` casts b, its agent resolves, `sol reconcile --once` merges it."""
    assert run("apply", "-f", str(specs)).returncode == 0
    poll(lambda: writ_status(home, "shop", "b").phase == "Resolved", what="b resolved")
    assert run("reconcile", "--once").returncode == 0
    assert writ_status(home, "shop", "b").phase == "Merged"


def test_events_filter_by_writ_and_stream_as_json_or_yaml(sphere: Sphere, sol) -> None:
    for name in ("a", "b", "a"):
        sphere.store.event("cast", kind="Writ", world="shop", name=name, message=f"{name}!")
    as_json = sol("events", "--world", "shop", "--writ", "a", "-o", "json", check=True)
    assert [json.loads(line)["name"] for line in as_json.stdout.splitlines()] == ["a", "a"]
    as_yaml = YAML(typ="safe").load(sol("events", "--writ", "b", "-o", "yaml", check=True).stdout)
    assert [(e["type"], e["message"]) for e in as_yaml] == [("cast", "b!")]


def test_a_webhook_token_never_names_its_target() -> None:
    """Logs, events and the outbox name a webhook by host and a hash of its URL."""
    from reconciler.core.config import NotifyTarget

    url = "https://user:pw@hooks.example.org:8443/services/T0/B0/SECRETTOKEN?key=SECRET2"
    target = NotifyTarget("webhook", url, frozenset({"*"}), 10.0)
    assert "SECRET" not in target.key and "pw" not in target.key
    assert target.key.startswith("webhook:https://hooks.example.org:8443/")
    other = NotifyTarget("webhook", url.replace("SECRETTOKEN", "OTHER"), frozenset(), 1.0)
    assert other.key != target.key
