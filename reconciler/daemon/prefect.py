"""The prefect: runs every reconciler as a supervised OS process and keeps them running.

    prefect (one per SOL_HOME: run/prefect.lock, flock, so it can never go stale)
      |- consul              worlds, degraded mode, dispatch
      |- sentinel-<world>    one per world: envoys and agent sessions
      |- forge-<world>       one per world: the merge queue
      |- notifier            notify commands and webhooks of sol.yaml
      `- web                 with `sol up --web ADDR` only: the dashboard's web page

The children and what each runs come from controllers/registry.py (each reconciler's
owner); a child's pass is `registry.run_owner`.

Each child is `python -m reconciler.daemon.prefect child KIND [WORLD]` (its side is child.py;
pid files, liveness and stopping are procs.py), so a crash of one never stops the
others. A child loops: reconcile, then sleep until its run/<child>.wake is touched, its
requeue time, or the resync interval; a thread touches run/<child>.heartbeat meanwhile.
The prefect passes wakes on: run/wake (a spec change, `sol resume`) to every
child, run/tmux-events (touched by tmux hooks when a session dies) to the consul and the
sentinels, a forge's file when the store shows a new merge request for its world, and the
notifier's when the store shows a new event.
The prefect restarts a child that exits (backoff 1 s doubling to 60 s, reset after a
minute of good health) or whose heartbeat is stale (killed first), records each restart
as an event `restarted`, and starts or stops per-world children as worlds come and go.

Stopping the prefect never stops agents (invariant 3): their tmux server is its own
daemon. Children ask the kernel for SIGTERM when the prefect dies (PR_SET_PDEATHSIG)
and hold run/<child>.child.lock, so a kill -9 of the prefect leaves no duplicate
reconcilers (not run/<child>.lock: the forge child takes run/forge-<world>.lock itself,
and a second flock of one file in one process fails).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loguru import logger
from watchdog.observers.api import BaseObserver

from reconciler.core import degraded
from reconciler.core.backoff import exponential
from reconciler.core.errors import SolError
from reconciler.core.home import Home
from reconciler.core.locks import flock
from reconciler.core.plan import Action
from reconciler.core.report import ReportOnce
from reconciler.daemon.child import WEB, ChildSpec, heartbeat_interval, run_child
from reconciler.daemon.procs import STOP_GRACE, kill_group, read_pid, setup_logging
from reconciler.daemon.watch import FileWaker, SpecSync, Wakeup, touch, watch_names
from reconciler.drivers.sphere import Sphere

BACKOFF_START, BACKOFF_MAX, HEALTHY_AFTER = 1.0, 60.0, 60.0
STALE_BEATS = 6         # heartbeats missed before a child is declared hung
DB_SETTLE = 0.2         # coalesce bursts of store writes before looking at the MR queue
DB_FILES = ("sol.db", "sol.db-wal")
QUEUED = "Queued"


class AlreadyRunning(SolError):
    """Another prefect holds this SOL_HOME's lock."""


def next_backoff(previous: float, ran_for: float) -> float:
    """The delay before restarting a child that exited after running `ran_for` seconds."""
    if not previous or ran_for >= HEALTHY_AFTER:
        return BACKOFF_START
    return exponential(1, start=previous, cap=BACKOFF_MAX)


@dataclass
class Child:
    spec: ChildSpec
    proc: subprocess.Popen[bytes] | None = None
    started: float = 0.0            # monotonic
    delay: float = 0.0              # the last restart delay (backoff)
    restart_at: float | None = None
    exit_code: int | None = None
    reason: str = ""
    restarts: int = 0


def child_env(home: Home) -> dict[str, str]:
    """The environment of the daemon and its children: the sphere, never the caller's tmux."""
    env = {k: v for k, v in os.environ.items() if k not in ("TMUX", "TMUX_PANE")}
    env["SOL_HOME"] = str(home.root)
    env["PYTHONUNBUFFERED"] = "1"
    return env


# ---- the supervisor ------------------------------------------------------------------


class Prefect:
    """The supervision loop; `sol up` runs it detached, `sol reconcile` in the foreground."""

    def __init__(self, home: Home, paths: Sequence[str | Path] = (), *,
                 foreground: bool = False, web: Sequence[str] = ()) -> None:
        self.home = home
        self.paths = [Path(p).absolute() for p in paths]
        self.foreground = foreground
        self.web = tuple(web)       # the web child's ADDR [--allow-remote], if it runs
        self.children: dict[str, Child] = {}
        self.stopping = False
        self.beat = heartbeat_interval()
        self.stale = self.beat * STALE_BEATS
        self._db_dirty: float | None = None
        self._queued: dict[str, int] = {}
        self._event_tip = 0
        self._degraded: ReportOnce[str] = ReportOnce()
        self._checked = time.time()

    def run(self) -> int:
        """Serve until SIGTERM/SIGINT; SolError if another prefect holds the lock."""
        with flock(self.home.run / "prefect.lock", blocking=False) as held:
            if not held:
                raise AlreadyRunning(already_running(self.home))
            return self._serve()

    def _serve(self) -> int:
        home = self.home
        setup_logging(home.logs / "prefect.log", console=self.foreground)
        self.sphere = Sphere(home)
        self.wakeup = Wakeup()
        self.wakeup.use_for_signals()
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, self._on_stop)
        signal.signal(signal.SIGCHLD, lambda *_: None)  # only to end the wait
        (home.run / "prefect.pid").write_text(f"{os.getpid()}\n")
        self.specs: SpecSync | None = None
        self._listeners: tuple[ChildSpec, ...] = ()
        db_watch = self._watch_db()
        self.relay = FileWaker([home.run / "wake", home.run / "tmux-events"], self._relay)
        self.relay.start()
        try:
            if self.paths:
                self.specs = SpecSync(self.sphere, self.paths, self.wakeup).start()
                self._reload(self.specs.reload, "start")
            self._queued = self._queue_tips()
            self._sync_children()
            self._write_ready()
            logger.info("prefect {pid} ready; watching {paths}", pid=os.getpid(),
                        paths=[str(p) for p in self.paths] or "nothing")
            while not self.stopping:
                try:
                    self._tick()
                except Exception:  # a supervisor outlives its own bad moment
                    logger.exception("prefect loop failed; trying again")
                    self.wakeup.wait(self.beat)
        finally:
            logger.info("prefect stopping: reconcilers stop, agent sessions keep running")
            db_watch.stop()
            self.relay.stop()
            if self.specs:
                self.specs.stop()
            self._stop_all()
            for name in ("prefect.ready", "prefect.pid"):
                with contextlib.suppress(OSError):
                    (home.run / name).unlink()
            self.sphere.close()
        return 0

    def _on_stop(self, signum: int, _frame: Any) -> None:
        self.stopping = True

    def _watch_db(self) -> BaseObserver:
        """Store writes (a merge request queued, degraded entered) wake the prefect."""
        return watch_names(self.home.root, DB_FILES, lambda name: self._db_changed())

    def _relay(self, name: str) -> None:
        """Pass a shared wake on (in the watch thread): run/wake to every child,
        run/tmux-events to the consul and the sentinels."""
        for spec in self._listeners:  # a tuple the main thread replaces whole
            if name == "wake" or spec.hears_tmux:
                touch(spec.wake_file(self.home))

    def _db_changed(self) -> None:
        self._db_dirty = self._db_dirty or time.monotonic()
        self.wakeup.set()

    def _tick(self) -> None:
        """One turn of the loop: specs, store changes, children; then sleep until woken."""
        now = time.monotonic()
        if self.specs:
            self._reload(self.specs.reload_if_due)
        if self._db_dirty is not None and now - self._db_dirty >= DB_SETTLE:
            self._db_dirty = None
            self._on_store_change()
        self._sync_children()
        self._reap()
        self._check_heartbeats()
        self._start_due()
        self.relay.arm()
        touch(self.home.run / "prefect.heartbeat")
        waits = [self.beat]
        if self.specs:
            waits.append(self.specs.due())
        if self._db_dirty is not None:
            waits.append(DB_SETTLE)
        waits += [c.restart_at - time.monotonic() for c in self.children.values()
                  if c.restart_at is not None]
        if not self.stopping:
            self.wakeup.wait(max(0.0, min(waits)))

    def _reload(self, load: Callable[..., Any], *args: Any) -> None:
        try:
            report = load(*args)
        except SolError as exc:
            logger.error("specs not applied: {err}", err=exc.message)
            return
        if report is not None and report.actions:
            self._relay("wake")  # every reconciler looks again at once

    def _on_store_change(self) -> None:
        """Wake a forge whose queue grew; log a change of Degraded (the sentinel owns it)."""
        try:
            tips = self._queue_tips()
            for world, tip in tips.items():
                if tip > self._queued.get(world, 0):
                    touch(self.home.run / f"forge-{world}.wake")
            self._queued = tips
            tip = self.sphere.store.last_event_id()
            if tip > self._event_tip:
                touch(self.home.run / "notifier.wake")
            self._event_tip = tip
            self._log_degraded()
        except Exception as exc:  # the store may be busy: the next change retries
            logger.warning("cannot read the store: {err}", err=str(exc))

    def _queue_tips(self) -> dict[str, int]:
        tips: dict[str, int] = {}
        for mr in self.sphere.store.mrs(states=[QUEUED]):
            tips[mr.world] = max(tips.get(mr.world, 0), mr.id)
        return tips

    def _log_degraded(self) -> None:
        state = degraded.state(self.sphere.store)
        reason = state.reason if state else None
        if self._degraded.news(reason):
            if reason:
                logger.warning("sphere degraded: {reason}", reason=reason, event="degraded")
            else:
                logger.info("sphere left degraded mode", event="recovered")

    # ---- children ----------------------------------------------------------------------

    def _wanted(self) -> list[ChildSpec]:
        """The registry's children for the worlds there are now (and the web page's)."""
        from reconciler.controllers import registry

        try:
            worlds = [w.name for w in self.sphere.store.list("World")]
        except Exception as exc:  # keep what runs; look again next tick
            logger.warning("cannot list worlds: {err}", err=str(exc))
            return [c.spec for c in self.children.values()]
        web = [ChildSpec(WEB, args=self.web)] if self.web else []
        return [ChildSpec(owner, world) for owner, world in registry.children(worlds)] + web

    def _sync_children(self) -> None:
        wanted = {spec.name: spec for spec in self._wanted()}
        for name in [n for n in self.children if n not in wanted]:
            logger.info("stopping {child}: its world is gone", child=name)
            self._stop([self.children.pop(name)])
        for name, spec in wanted.items():
            if name not in self.children:
                self.children[name] = Child(spec, restart_at=time.monotonic())
        self._listeners = tuple(s for s in wanted.values() if s.kind != WEB)

    def _start_due(self) -> None:
        now = time.monotonic()
        for child in self.children.values():
            if child.proc is None and child.restart_at is not None and child.restart_at <= now:
                self._start(child)

    def _start(self, child: Child) -> None:
        child.restart_at = None
        try:
            child.proc = subprocess.Popen(
                child.spec.argv(), cwd=self.home.root, env={
                    **child_env(self.home), "SOL_PREFECT_PID": str(os.getpid())},
                stdin=subprocess.DEVNULL, process_group=0, close_fds=True)
        except OSError as exc:
            logger.error("cannot start {child}: {err}", child=child.spec.name, err=str(exc))
            child.delay = next_backoff(child.delay, 0.0)
            child.restart_at = time.monotonic() + child.delay
            return
        child.started = time.monotonic()
        if child.exit_code is None:
            logger.info("started {child} (pid {pid})", child=child.spec.name,
                        pid=child.proc.pid)
            return
        child.restarts += 1
        message = (f"{child.spec.name} restarted (pid {child.proc.pid}) after {child.reason} "
                   f"(exit code {child.exit_code}); waited {child.delay:g}s")
        logger.warning("{message}", message=message, event="restarted", child=child.spec.name)
        try:
            self.sphere.store.event("restarted", kind="Reconciler", world=child.spec.world,
                                    name=child.spec.name, message=message,
                                    child=child.spec.name, exit_code=child.exit_code,
                                    reason=child.reason, delay=child.delay,
                                    restarts=child.restarts)
        except Exception as exc:  # the restart matters more than its record
            logger.warning("cannot record restart: {err}", err=str(exc))
        child.exit_code, child.reason = None, ""

    def _reap(self) -> None:
        """Children that exited: schedule their restart with backoff."""
        for child in self.children.values():
            if child.proc is None or child.proc.poll() is None:
                continue
            ran_for = time.monotonic() - child.started
            child.exit_code = code = child.proc.returncode
            child.reason = child.reason or (
                f"it was killed by {signal.Signals(-code).name}" if code < 0 else "it exited")
            child.proc = None
            child.delay = next_backoff(child.delay, ran_for)
            child.restart_at = time.monotonic() + child.delay
            logger.warning("{child} exited with code {code} after {ran:.1f}s ({reason}); "
                           "restart in {delay:g}s", child=child.spec.name,
                           code=child.exit_code, ran=ran_for, reason=child.reason,
                           delay=child.delay)

    def _check_heartbeats(self) -> None:
        """A child alive but silent for 6 heartbeats is hung: kill it, restart it.

        Skipped once after the prefect itself was frozen (machine suspended, SIGSTOP):
        every heartbeat then looks old though nothing hung."""
        now, wall = time.monotonic(), time.time()
        frozen, self._checked = wall - self._checked > self.stale, wall
        for child in self.children.values() if not frozen else ():
            if child.proc is None or now - child.started < self.stale:
                continue
            try:
                age = wall - (self.home.run / f"{child.spec.name}.heartbeat").stat().st_mtime
            except OSError:
                age = now - child.started
            if age > self.stale:
                logger.warning("{child} heartbeat is {age:.1f}s old: killing it",
                               child=child.spec.name, age=age)
                child.reason = f"a stale heartbeat ({age:.0f}s old)"
                kill_group(child.proc)
        self._reap()

    def _stop(self, children: Sequence[Child]) -> None:
        """SIGTERM, wait up to STOP_GRACE, then SIGKILL."""
        live = [c.proc for c in children if c.proc is not None and c.proc.poll() is None]
        for proc in live:
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
        deadline = time.monotonic() + STOP_GRACE
        for proc in live:
            try:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                kill_group(proc)

    def _stop_all(self) -> None:
        self._stop(list(self.children.values()))

    def _write_ready(self) -> None:
        info = {"pid": os.getpid(), "paths": [str(p) for p in self.paths],
                "log": str(self.home.logs / "prefect.log"), "started": time.time(),
                "web": self.web[0] if self.web else None}
        tmp = self.home.run / "prefect.ready.tmp"
        tmp.write_text(json.dumps(info))
        tmp.replace(self.home.run / "prefect.ready")


def already_running(home: Home) -> str:
    info = running(home)
    pid = info.get("pid", "?") if info else read_pid(home.run / "prefect.pid") or "?"
    return (f"the prefect of {home.root} is already running (pid {pid}, log "
            f"{home.logs / 'prefect.log'}); stop it with `sol down`")


def running(home: Home) -> dict[str, Any] | None:
    """The live prefect's ready info (pid, paths, log), None if none holds the lock."""
    with flock(home.run / "prefect.lock", blocking=False) as free:
        if free:
            return None
    try:
        return json.loads((home.run / "prefect.ready").read_text())
    except (OSError, ValueError):
        return {"pid": read_pid(home.run / "prefect.pid")}


def run_once(sphere: Sphere) -> list[Action]:
    """`sol reconcile --once`: every reconciler of the registry once, in pass order."""
    from reconciler.controllers import registry

    return registry.reconcile_once(sphere)


ALREADY_RUNNING = 3


def main(argv: Sequence[str]) -> int:
    """Entry of the daemon (`daemon PATH..`) and of each child (`child KIND [WORLD]`)."""
    if len(argv) in (2, 3) and argv[0] == "child":
        return run_child(argv[1], argv[2] if len(argv) == 3 else "")
    if argv[:1] == ["daemon"]:
        paths, web = list(argv[1:]), []
        if paths[:1] == ["--web"] and len(paths) > 1:
            web, paths = paths[:2], paths[2:]
            if paths[:1] == ["--allow-remote"]:
                web, paths = [*web, paths[0]], paths[1:]
        try:
            return Prefect(Home.from_env(), paths, web=web[1:]).run()
        except SolError as exc:
            print(exc.message, file=sys.stderr)
            return ALREADY_RUNNING if isinstance(exc, AlreadyRunning) else exc.exit_code
    print("usage: python -m reconciler.daemon.prefect daemon [--web ADDR [--allow-remote]] "
          "[PATH..] | child KIND [WORLD]",
          file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
