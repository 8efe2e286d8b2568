"""A child of the prefect: one reconciler in its own OS process, looping until told.

`python -m reconciler.daemon.prefect child KIND [WORLD]` lands in `run_child`: it takes
run/<child>.child.lock (stopping a child an earlier prefect left behind), then loops:
reconcile, then sleep until its run/<child>.wake is touched, its requeue time, or the
resync interval, touching run/<child>.heartbeat meanwhile so the prefect can tell hung
from busy. `runner` imports each reconciler only here, so one that is missing or broken
fails only its own child.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from loguru import logger

from reconciler.core.errors import SolError
from reconciler.core.home import Home
from reconciler.core.locks import flock
from reconciler.core.plan import Action
from reconciler.daemon.procs import (
    STOP_GRACE,
    die_with_parent,
    is_ours,
    read_pid,
    setup_logging,
    wait_unlocked,
)
from reconciler.daemon.watch import Loop, touch
from reconciler.drivers.sphere import Sphere

WEB = "web"
"""The one child that is not a reconciler: the dashboard's web page (`sol up --web`),
supervised like the others so it restarts if it dies and stops on `sol down`."""

PASS_LIMIT = {"consul": 600.0, "sentinel": 600.0, "forge": None, "notifier": 600.0}
"""A pass longer than this stops the heartbeat (a hung reconciler is then restarted).
The forge has none: its gates carry their own timeouts."""


def heartbeat_interval() -> float:
    """Seconds between heartbeats (env SOL_HEARTBEAT, for tests); stale after 6 of them."""
    try:
        return max(0.1, float(os.environ.get("SOL_HEARTBEAT") or 5.0))
    except ValueError:
        return 5.0


@dataclass(frozen=True)
class ChildSpec:
    """Which reconciler a child runs: the consul, or a sentinel or forge of one world."""

    kind: str
    world: str = ""
    args: tuple[str, ...] = ()      # the web child's ADDR [--allow-remote]; never a secret

    @property
    def name(self) -> str:
        return f"{self.kind}-{self.world}" if self.world else self.kind

    def argv(self) -> list[str]:
        if self.kind == WEB:
            return [sys.executable, "-m", "reconciler.daemon.web", *self.args]
        return [sys.executable, "-m", "reconciler.daemon.prefect", "child", self.kind,
                *([self.world] if self.world else [])]

    def wake_file(self, home: Home) -> Path:
        """The one file that wakes this child (one inotify watch per child): the prefect
        touches it to pass on run/wake and run/tmux-events, the forge's when a merge
        request is queued, the consul's when a forge or sentinel changed something."""
        return home.wake_file(self.name)

    @property
    def hears_tmux(self) -> bool:
        """A session died: the sentinel respawns it, the consul has capacity again."""
        return self.kind in ("consul", "sentinel")


Runner = Callable[[Sphere], tuple[list[Action], float | None]]


def runner(spec: ChildSpec) -> Runner:
    """One pass of this child: every reconciler the registry gives its owner, for its
    world. The registry is imported here, in the child, so a reconciler module that is
    broken fails the children, never the prefect that restarts them."""
    from reconciler.controllers import registry
    from reconciler.drivers import outposts

    if spec.kind not in registry.OWNERS:
        raise SolError(f"unknown reconciler owner {spec.kind!r}: use one of "
                       f"{', '.join(registry.OWNERS)}")

    def one_pass(sphere: Sphere) -> tuple[list[Action], float | None]:
        result = registry.run_owner(sphere, spec.kind, spec.world)
        if spec.hears_tmux and spec.world:
            # before it sleeps, a sentinel watches its agents' processes: a death wakes it
            # at once even where tmux drops its pane-died hook (outposts.DeathWatch)
            mine = {name: alive for name, alive in sphere.sessions.list("sol-").items()
                    if (outposts.parse_session(name) or ("",))[0] == spec.world}
            outposts.watch_deaths(sphere, mine)
        return list(result.actions), result.requeue_after

    return one_pass


def run_child(kind: str, world: str = "") -> int:
    """`python -m reconciler.daemon.prefect child KIND [WORLD]`: run one reconciler until told."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # until the loop takes over
    home = Home.from_env()
    spec = ChildSpec(kind, world)
    die_with_parent()
    setup_logging(home.logs / f"{spec.name}.log")
    lock = home.run / f"{spec.name}.child.lock"
    with flock(lock, blocking=False) as held:
        if held:
            return _child_loop(home, spec)
    pid = read_pid(home.run / f"{spec.name}.pid")
    if pid and pid != os.getpid() and is_ours(pid, home):
        logger.warning("{child} left by an earlier prefect (pid {pid}): stopping it",
                       child=spec.name, pid=pid)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        if not wait_unlocked(lock, STOP_GRACE):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    with flock(lock):
        return _child_loop(home, spec)


def _child_loop(home: Home, spec: ChildSpec) -> int:
    pid_file = home.run / f"{spec.name}.pid"
    pid_file.write_text(f"{os.getpid()}\n")

    def after(actions: list[Action]) -> None:
        if actions and spec.kind != "consul":
            touch(home.run / "consul.wake")  # a merge or a death may free dispatch

    try:
        sphere = Sphere(home)
        try:
            reconcile = runner(spec)
            Loop(spec.name, lambda: reconcile(sphere), [spec.wake_file(home)],
                 heartbeat=home.run / f"{spec.name}.heartbeat", beat=heartbeat_interval(),
                 resync=sphere.config.resync, pass_limit=PASS_LIMIT.get(spec.kind),
                 after=after, failed=sphere.reopen,
                 parent=int(os.environ.pop("SOL_PREFECT_PID", "") or 0)).run()
        finally:
            sphere.close()
    finally:
        if read_pid(pid_file) == os.getpid():
            with contextlib.suppress(OSError):
                pid_file.unlink()
    return 0
