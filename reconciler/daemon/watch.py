"""What wakes a reconcile loop, the loop itself, and watch mode (the specs applied as
they change).

Idle must cost nothing (invariant 7), so no loop polls: it blocks in `Wakeup.wait`, a
self-pipe that file watches (watchdog, inotify on Linux), signals and timers all write
to. A wake only says "look again"; the loop then reads the whole state afresh, so a
missed or duplicated wake is harmless and the periodic resync is the safety net.
`Loop` is the life of one reconciler process: a pass, then that wait, with a heartbeat
thread the prefect watches.

Watch mode (`SpecSync`): a save under the specs PATH is debounced, loaded with
`manifests.load` and, if valid, recorded with `specs.record.record` (never pruned). An invalid,
empty, missing or unreadable specs location is reported (event `specs-invalid`, store
meta `specs_invalid` = the first problem) and nothing is recorded, so the last valid
desired state keeps running. A git source (`git+REPO@REF#DIR`) is not watched but polled
(`sources.GitSync`, every SOL_SOURCE_POLL seconds, 15 by default), with the same rules.
"""

from __future__ import annotations

import os
import select
import signal
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from loguru import logger
from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver, ObservedWatch

from reconciler.core.backoff import exponential
from reconciler.core.errors import SolError
from reconciler.core.plan import Action
from reconciler.core.report import ReportOnce
from reconciler.daemon.health import record_pass
from reconciler.drivers.sphere import Sphere

DEBOUNCE = 0.3
"""Seconds of quiet after the last change before the specs are loaded (editors save in
several steps: temp file, rename, chmod)."""

DEBOUNCE_MAX = 1.5
"""A location that never stops changing is still loaded this long after its first change."""

MANIFEST_SUFFIXES = (".yaml", ".yml")
TEMP_SUFFIXES = ("~", ".swp", ".swo", ".swx", ".tmp", ".bak", ".orig")
QUIET_EVENTS = frozenset({"opened", "closed_no_write"})
"""Reading a file is not a change (and our own loads would otherwise wake us forever)."""

INVALID_META = "specs_invalid"
MIN_REQUEUE = 0.25  # a reconciler asking to look again at once still cannot spin
FAILED_PASS_MAX = 8.0  # a failing pass retries after 2, 4, 8, 8 ... s: a fixed disk is seen soon


class Wakeup:
    """A self-pipe: any thread, signal handler or timer can end the owner's wait."""

    def __init__(self) -> None:
        self._read, self._write = os.pipe()
        os.set_blocking(self._read, False)
        os.set_blocking(self._write, False)

    def set(self) -> None:
        try:
            os.write(self._write, b"!")
        except (BlockingIOError, OSError):
            pass  # the pipe is full (already woken) or closed (shutting down)

    def clear(self) -> None:
        try:
            while os.read(self._read, 4096):
                pass
        except (BlockingIOError, OSError):
            pass

    def wait(self, timeout: float | None) -> bool:
        """Block until woken or `timeout` seconds pass; True if woken. Drains the pipe."""
        ready, _, _ = select.select([self._read], [], [],
                                    None if timeout is None else max(0.0, timeout))
        self.clear()
        return bool(ready)

    def use_for_signals(self) -> None:
        """Signals also end the wait (main thread only): handlers just set flags."""
        signal.set_wakeup_fd(self._write, warn_on_full_buffer=False)

    def close(self) -> None:
        for fd in (self._read, self._write):
            try:
                os.close(fd)
            except OSError:
                pass


def touch(path: Path) -> None:
    """Wake whoever watches `path`: create it or update its mtime."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()
    except OSError as exc:
        logger.warning("cannot touch {path}: {err}", path=str(path), err=exc.strerror)


def _name(event: FileSystemEvent) -> str:
    return Path(os.fsdecode(event.src_path)).name


class _Callback(FileSystemEventHandler):
    def __init__(self, wanted: Callable[[FileSystemEvent], bool],
                 then: Callable[[FileSystemEvent], None]) -> None:
        self.wanted = wanted
        self.then = then

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type not in QUIET_EVENTS and self.wanted(event):
            self.then(event)


def watch_names(directory: Path, names: Iterable[str], then: Callable[[str], None]
                ) -> BaseObserver:
    """A started observer calling `then(name)` when a file named one of `names`, directly
    in `directory`, is written (the store's files, seen by the prefect)."""
    wanted = frozenset(names)
    observer = Observer()
    observer.daemon = True
    observer.schedule(_Callback(lambda e: _name(e) in wanted, lambda e: then(_name(e))),
                      str(directory), recursive=False)
    observer.start()
    return observer


class FileWaker:
    """Call `then(name)` when one of a few files is touched (a wake file, the tmux hook
    file); runs in the watch thread, so `then` only sets a flag or touches a file.

    Each file is watched itself, not its directory, so the heartbeats and pid files next
    to it never wake anyone. A file that was deleted is recreated and watched again by
    `arm`, which the owner calls once per pass (a stat per file).
    """

    def __init__(self, files: Iterable[Path], then: Callable[[str], None]) -> None:
        self.files = sorted(set(files))
        self._observer = Observer()
        self._watches: dict[Path, tuple[int, ObservedWatch]] = {}
        self._handler = _Callback(lambda event: True, lambda event: then(_name(event)))

    def start(self) -> FileWaker:
        self._observer.daemon = True
        self._observer.start()
        self.arm()
        return self

    def arm(self) -> None:
        for path in self.files:
            try:
                if not path.exists():
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.touch()
                inode = path.stat().st_ino
            except OSError as exc:
                logger.warning("cannot watch {path}: {err}", path=str(path), err=exc.strerror)
                continue
            old = self._watches.get(path)
            if old and old[0] == inode:
                continue
            if old:
                self._unschedule(old[1])
            try:
                self._watches[path] = (inode, self._observer.schedule(self._handler, str(path)))
            except OSError as exc:
                logger.warning("cannot watch {path}: {err}", path=str(path), err=str(exc))

    def _unschedule(self, watch: ObservedWatch) -> None:
        try:
            self._observer.unschedule(watch)
        except (KeyError, OSError):
            pass

    def stop(self) -> None:
        self._observer.stop()
        self._observer.join(timeout=2)


class Heartbeat(threading.Thread):
    """Touches `path` every `interval` seconds, unless the current pass overran `limit`:
    the prefect then sees a stale heartbeat and restarts the hung reconciler."""

    def __init__(self, path: Path, interval: float, limit: float | None) -> None:
        super().__init__(daemon=True, name="heartbeat")
        self.path, self.interval, self.limit = path, interval, limit
        self.pass_started: float | None = None
        self.done = threading.Event()

    def run(self) -> None:
        while True:
            started = self.pass_started
            if self.limit is None or started is None or time.monotonic() - started < self.limit:
                touch(self.path)
            if self.done.wait(self.interval):
                return


Pass = Callable[[], tuple[list[Action], float | None]]


@dataclass
class Loop:
    """A reconciler's life: a pass, then sleep until a wake file is touched, the pass's
    requeue time or the resync interval; SIGTERM ends it after the current pass.

    A failed pass is logged and retried with backoff (2, 4, .. s up to `resync`), never
    fatal: one bad object must not stop the reconciler for every other one.
    """

    name: str
    reconcile: Pass
    wake_files: list[Path]
    heartbeat: Path
    beat: float
    resync: float
    pass_limit: float | None = None
    after: Callable[[list[Action]], None] = lambda actions: None
    failed: Callable[[], None] = lambda: None  # after a failed pass (e.g. reopen the store)
    parent: int = 0  # the prefect's pid: the loop ends if it is gone

    def run(self) -> None:
        wakeup = Wakeup()
        wakeup.use_for_signals()
        stopping: list[int] = []
        for signum in (signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, lambda num, _frame: stopping.append(num))
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the prefect's to handle
        waker = FileWaker(self.wake_files, lambda name: wakeup.set()).start()
        beat = Heartbeat(self.heartbeat, self.beat, self.pass_limit)
        beat.start()
        logger.info("{child} running (pid {pid})", child=self.name, pid=os.getpid())
        failures = 0
        try:
            while not stopping:
                if self.parent and os.getppid() != self.parent:
                    logger.warning("the prefect is gone: {child} stops", child=self.name)
                    break
                waker.arm()
                wakeup.clear()
                beat.pass_started = time.monotonic()
                passes = self.heartbeat.with_suffix(".pass")
                try:
                    actions, requeue = self.reconcile()
                    failures = 0
                    record_pass(passes, ok=True, failures=0)
                except Exception as exc:  # logged; the next pass retries
                    failures += 1
                    cap = min(self.resync, FAILED_PASS_MAX)
                    actions, requeue = [], exponential(failures, cap=cap)
                    record_pass(passes, ok=False, failures=failures,
                                error=getattr(exc, "message", None) or repr(exc))
                    self.failed()
                    if isinstance(exc, SolError):
                        logger.warning("{child} pass failed: {err}", child=self.name,
                                       err=exc.message)
                    else:
                        logger.exception("{child} pass failed", child=self.name)
                finally:
                    beat.pass_started = None
                for action in actions:
                    logger.info("{op} {target}  {what}", op=action.op, target=action.target,
                                what=action.description, child=self.name)
                self.after(actions)
                wakeup.wait(self.resync if requeue is None
                            else min(max(requeue, MIN_REQUEUE), self.resync))
        finally:
            beat.done.set()
            waker.stop()
            wakeup.close()


def ignored(path: str | Path) -> bool:
    """Editor leftovers and hidden files: `.#x.yaml`, `x.yaml~`, `.x.yaml.swp`, vim's 4913."""
    name = Path(path).name
    return (name.startswith((".", "#")) or name.endswith(TEMP_SUFFIXES)
            or (name.isdigit() and len(name) >= 4))


@dataclass
class SpecReport:
    """One load of the specs: what was recorded, or why nothing was."""

    trigger: str
    actions: list[Action] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


class SpecSync:
    """Watch mode for one specs location (files or directories, as `sol apply -f` takes).

    Thread model: the watchdog thread only stamps the time of the last change and wakes
    the owner; `due` and `reload` run in the owner's thread, the only one that uses the
    store (SQLite connections stay in the thread that opened them).
    """

    def __init__(self, sphere: Sphere, paths: Sequence[str | Path], wakeup: Wakeup, *,
                 resync: float | None = None, debounce: float = DEBOUNCE) -> None:
        from reconciler.specs.sources import GitSync, find

        self.sphere = sphere
        self.git: GitSync | None = None
        for path in paths:
            try:
                source = find(path)
            except SolError as exc:
                logger.error("{err}", err=exc.message)
                continue
            if source is not None:
                self.git = GitSync(sphere, source.absolute(), resync=resync)
        self.paths = [] if self.git else [Path(p).absolute() for p in paths]
        self.wakeup = wakeup
        self.resync = sphere.config.resync if resync is None else resync
        self.debounce = debounce
        self._lock = threading.Lock()
        self._first: float | None = None
        self._last: float | None = None
        self._next_resync = 0.0
        self._reported: ReportOnce[tuple[str, ...]] = ReportOnce()
        self._observer = Observer()
        self._watches: dict[tuple[Path, int, bool], ObservedWatch] = {}
        self._handler = _Callback(self._wanted, lambda event: self._changed())

    def start(self) -> SpecSync:
        if self.git is None:
            self._observer.daemon = True
            self._observer.start()
            self._arm()
        return self

    def stop(self) -> None:
        if self._observer.is_alive():
            self._observer.stop()
            self._observer.join(timeout=2)

    # ---- the watch (watchdog thread) -----------------------------------------------

    def _roots(self) -> set[tuple[Path, int, bool]]:
        """(directory, inode, recursive) to watch: each PATH itself if it is a directory,
        else its nearest existing ancestor, so creating a missing PATH is seen too."""
        roots = set()
        for path in self.paths:
            here, recursive = path, path.is_dir()
            if not recursive:
                here = path.parent
                while not here.is_dir() and here != here.parent:
                    here = here.parent
            try:
                roots.add((here, here.stat().st_ino, recursive))
            except OSError:
                continue
        return roots

    def _arm(self) -> None:
        """Match the watches to what exists now (a PATH created or replaced since)."""
        wanted = self._roots()
        for root in set(self._watches) - wanted:
            try:
                self._observer.unschedule(self._watches.pop(root))
            except (KeyError, OSError):
                pass
        for root in wanted - set(self._watches):
            try:
                self._watches[root] = self._observer.schedule(
                    self._handler, str(root[0]), recursive=root[2])
            except OSError as exc:
                logger.warning("cannot watch {path}: {err}", path=str(root[0]), err=str(exc))

    def _wanted(self, event: FileSystemEvent) -> bool:
        paths = [event.src_path, getattr(event, "dest_path", "")]
        return any(self._relevant(Path(os.fsdecode(p)), event) for p in paths if p)

    def _relevant(self, path: Path, event: FileSystemEvent) -> bool:
        for root in self.paths:
            if path == root or root.is_relative_to(path):
                return not (event.is_directory and event.event_type == "modified")
            if not path.is_relative_to(root):
                continue
            if any(ignored(part) for part in path.relative_to(root).parts):
                return False
            if event.is_directory:
                return event.event_type != "modified"
            return path.name.endswith(MANIFEST_SUFFIXES)
        return False

    def _changed(self) -> None:
        now = time.monotonic()
        with self._lock:
            self._first = self._first or now
            self._last = now
        self.wakeup.set()

    # ---- the owner's thread ----------------------------------------------------------

    def due(self, now: float | None = None) -> float:
        """Seconds until the next load is due (0: load now)."""
        now = time.monotonic() if now is None else now
        if self.git is not None:
            return self.git.due(now)
        wait = max(0.0, self._next_resync - now)
        with self._lock:
            if self._last is not None and self._first is not None:
                wait = min(wait, max(0.0, min(self._last + self.debounce,
                                              self._first + DEBOUNCE_MAX) - now))
        return wait

    def reload_if_due(self) -> SpecReport | None:
        if self.due() > 0:
            return None
        if self.git is not None:
            return self.reload("poll")
        with self._lock:
            trigger = "change" if self._last is not None else "resync"
            self._first = self._last = None
        return self.reload(trigger)

    def reload(self, trigger: str = "start") -> SpecReport:
        """Load every manifest; record them if valid (no prune), else report and keep."""
        from reconciler.specs.manifests import load
        from reconciler.specs.record import record

        if self.git is not None:
            actions, problems = self.git.poll(trigger)
            return SpecReport(trigger, actions, problems)
        self._next_resync = time.monotonic() + self.resync
        self._arm()
        started = time.monotonic()
        result = load(self.paths)
        report = SpecReport(trigger, problems=list(result.problems))
        if report.ok and result.empty:
            report.problems = [f"{', '.join(map(str, self.paths))}: no manifests found; "
                               "nothing applied and nothing pruned"]
        store = self.sphere.store
        if not report.ok:
            self._report_invalid(report)
            return report
        report.actions = record(self.sphere, result.manifests)
        if store.get_meta(INVALID_META) is not None:
            with store.transaction():  # a reader sees both or neither
                store.set_meta(INVALID_META, None)
                store.event("specs-valid", kind="Sphere", message=f"specs valid again: "
                            f"{len(result.manifests)} document(s) loaded")
        self._reported.clear()
        logger.info("specs loaded ({trigger}): {n} document(s), {c} change(s) in {ms} ms",
                    trigger=trigger, n=len(result.manifests), c=len(report.actions),
                    ms=int((time.monotonic() - started) * 1000), event="specs-loaded")
        for action in report.actions:
            logger.info("specs: {op} {target} {what}", op=action.op, target=action.target,
                        what=action.description)
        return report

    def _report_invalid(self, report: SpecReport) -> None:
        """Once per distinct set of problems, so a resync of the same bad file is silent."""
        logger.warning("specs not applied ({trigger}): {first}", trigger=report.trigger,
                       first=report.problems[0], event="specs-invalid",
                       problems=report.problems)
        if not self._reported.news(tuple(report.problems)):
            return
        first = report.problems[0]
        more = len(report.problems) - 1
        store = self.sphere.store
        with store.transaction():
            store.set_meta(INVALID_META, first)
            store.event("specs-invalid", kind="Sphere",
                        message=first + (f" (and {more} more)" if more else "")
                        + "; the last valid desired state keeps running",
                        problems=report.problems[:100], paths=[str(p) for p in self.paths])
