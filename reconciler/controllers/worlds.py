"""The world reconciler: keeps `worlds/<w>/repo` a clone of the world's source.

observe (is the clone there; fetch when due), plan (pure: clone what is missing),
act (clone; any failure puts that world in `Error` with git's message while the other
worlds carry on).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from reconciler.core.errors import SolError
from reconciler.core.locks import flock
from reconciler.core.model import ERROR, READY, WorldSpec
from reconciler.core.plan import CREATE, Action
from reconciler.core.store import Record
from reconciler.drivers import backup, worktrees
from reconciler.drivers.sphere import Sphere
from reconciler.specs.changes import target


@dataclass(frozen=True)
class WorldObservation:
    name: str
    cloned: bool


def plan_worlds(worlds: Iterable[Record], observed: dict[str, WorldObservation]) -> list[Action]:
    """Pure: a clone for every applied, non-orphaned world whose clone is missing."""
    actions = []
    for world in sorted(worlds, key=lambda w: w.name):
        if world.orphaned:
            continue
        obs = observed.get(world.name)
        if obs is None or not obs.cloned:
            source = world.spec.get("source", "")
            actions.append(Action(
                CREATE, "clone", target("World", "", world.name),
                f"clone {source} (branch {world.spec.get('branch', 'main')})",
                {"world": world.name},
            ))
    return actions


def observe(sphere: Sphere, worlds: Iterable[Record], *, refresh: bool = True) -> dict[
        str, WorldObservation]:
    """Look at each clone; with `refresh`, fetch those due and record the outcome."""
    result = {}
    for world in worlds:
        repo = sphere.home.repo(world.name)
        cloned = worktrees.is_clone(repo)
        result[world.name] = WorldObservation(world.name, cloned)
        if cloned and refresh and not world.orphaned:
            _refresh(sphere, world)
    return result


def _refresh(sphere: Sphere, world: Record) -> None:
    """Fetch when the interval has passed; keep the status true either way."""
    spec = WorldSpec.from_spec(world.spec)
    meta_key = f"fetched:{world.name}"
    last = float(sphere.store.get_meta(meta_key) or 0)
    repo = sphere.home.repo(world.name)
    # A changed spec (say, another branch) is fetched for at once, not after the interval.
    due = (time.time() - last >= sphere.config.fetch_interval
           or world.observed_generation != world.generation
           or worktrees.rev(repo, f"refs/heads/{spec.branch}") is None)
    try:
        if due:
            head = worktrees.fetch(repo, spec.branch)
            sphere.store.set_meta(meta_key, str(time.time()))
        else:
            head = worktrees.rev(repo, f"refs/heads/{spec.branch}")
            if head is None:
                raise SolError(f"branch {spec.branch} is missing from the clone of {spec.source}")
    except SolError as exc:
        _set_error(sphere, world, exc.message)
        return
    _set_ready(sphere, world, head)


def _set_ready(sphere: Sphere, world: Record, head: str) -> None:
    spec = WorldSpec.from_spec(world.spec)
    sphere.store.set_status(
        world.key, phase=READY, reason="Cloned",
        message=f"{spec.branch} at {head[:12]}", observed_generation=world.generation,
        head=head,
    )


def _set_error(sphere: Sphere, world: Record, message: str) -> None:
    before = sphere.store.get(*world.key)
    sphere.store.set_status(world.key, phase=ERROR, reason="GitError", message=message,
                            observed_generation=world.generation)
    if before is None or before.phase != ERROR or before.message != message:
        sphere.store.event("error", kind="World", world=world.name, name=world.name,
                           message=message)


def act(sphere: Sphere, action: Action) -> None:
    """Run one world action; idempotent (a clone that exists is left alone)."""
    name = action.data["world"]
    world = sphere.store.get("World", "", name)
    if world is None or action.kind != "clone":
        return
    spec = WorldSpec.from_spec(world.spec)
    repo = sphere.home.repo(name)
    with flock(sphere.home.run / f"world-{name}.lock"):
        if worktrees.is_clone(repo):
            return
        try:
            worktrees.clone(spec.source, repo, spec.branch)
        except SolError as exc:
            _set_error(sphere, world, exc.message)
            return
    sphere.store.set_meta(f"fetched:{name}", str(time.time()))
    sphere.store.event("cloned", kind="World", world=name, name=name, message=action.description)
    _restore(sphere, name, repo, spec.branch)
    _set_ready(sphere, world, worktrees.rev(repo, f"refs/heads/{spec.branch}") or "")


def _restore(sphere: Sphere, world: str, repo: Path, branch: str) -> None:
    """A clone made again: agents' branches (and landed, unpushed work) come back from
    the backup, and worktrees that lived in the old clone are re-attached in place."""
    try:
        restored = backup.restore(repo, branch)
        stations = [(sphere.home.worktree(world, a.name), f"sol/{a.writ}")
                    for a in sphere.store.agents(world) if a.writ]
        envoys = sphere.home.world_dir(world) / "envoys"
        stations += [(d / "worktree", f"envoy/{d.name}")
                     for d in sorted(envoys.iterdir()) if d.is_dir()] if envoys.is_dir() else []
        reattached = [str(path) for path, ref in stations if backup.reattach(repo, path, ref)]
    except SolError as exc:
        sphere.store.event("restore-failed", kind="World", world=world, name=world,
                           message=f"cannot restore agents' work from the backup: {exc.message}")
        return
    if restored or reattached:
        sphere.store.event(
            "restored", kind="World", world=world, name=world,
            message=f"from the backup: branches {', '.join(restored) or 'none'}; "
                    f"worktrees re-attached: {', '.join(reattached) or 'none'}")


def reconcile(sphere: Sphere, *, dry_run: bool = False) -> list[Action]:
    """One pass over every applied world."""
    worlds = sphere.store.list("World")
    observed = observe(sphere, worlds, refresh=not dry_run)
    actions = plan_worlds(worlds, observed)
    if not dry_run:
        for action in actions:
            act(sphere, action)
    return actions
