"""The consul: sphere-wide dispatch. Which Pending writs are ready, in what order, and why
the others wait. `plan_dispatch` is pure; `reconcile` observes, plans and casts."""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from reconciler.core.errors import Retry, SolError
from reconciler.core.model import (
    DONE,
    MERGED,
    PENDING,
    READY,
    WORKING,
    CaravanSpec,
    WorldSpec,
    WritSpec,
    split_ref,
)
from reconciler.core.plan import CREATE, UPDATE, Action
from reconciler.core.store import Record
from reconciler.specs.changes import target

WritKey = tuple[str, str]


@dataclass(frozen=True)
class Snapshot:
    """Everything dispatch looks at, as plain values."""

    worlds: dict[str, Record]
    writs: dict[WritKey, Record]
    caravans: tuple[Record, ...] = ()
    live: dict[str, int] = field(default_factory=dict)  # world -> live outpost sessions
    sessions: dict[str, bool] = field(default_factory=dict)  # tmux session -> alive
    degraded: str | None = None  # why the sphere is degraded, if it is
    now: float = 0.0  # when it was observed (rate-limit holds end at a time)


@dataclass(frozen=True)
class Dispatch:
    ready: tuple[Record, ...]          # to cast now, in order
    waiting: dict[WritKey, str]        # pending writ -> why it waits


def _finished(record: Record | None) -> bool:
    if record is None:
        return False
    wanted = DONE if record.spec.get("kind") == "analysis" else MERGED
    return record.phase == wanted


def _caravan_index(caravans: Iterable[Record]) -> dict[WritKey, tuple[Record, int]]:
    index: dict[WritKey, tuple[Record, int]] = {}
    for caravan in caravans:
        if caravan.orphaned:
            continue
        for number, phase in enumerate(CaravanSpec.from_spec(caravan.spec).phases):
            for name in phase:
                index[(caravan.world, name)] = (caravan, number)
    return index


def why_waiting(snapshot: Snapshot, writ: Record,
                caravans: dict[WritKey, tuple[Record, int]]) -> str | None:
    """The reason a Pending writ is not ready (capacity aside), or None if it is."""
    world = snapshot.worlds.get(writ.world)
    if world is None or world.orphaned:
        return f"world {writ.world} is not applied"
    if snapshot.degraded:
        return f"sphere degraded ({snapshot.degraded}); `sol resume` to go on"
    if writ.orphaned:
        return "not in the manifests; not dispatched"
    if world.phase != READY:
        return f"world {writ.world} is not ready ({world.phase}: {world.message or 'cloning'})"
    if WorldSpec.from_spec(world.spec).suspend:
        return "world suspended"
    held = float(world.status.get("rateLimitedUntil") or 0.0)
    if held > snapshot.now:
        return (f"world {writ.world} is rate limited: no new agent for "
                f"{held - snapshot.now:.0f}s (until the model API's limit resets)")
    spec = WritSpec.from_spec(writ.spec)
    if spec.suspend:
        return "writ suspended"
    for ref in spec.depends_on:
        dep = snapshot.writs.get(split_ref(ref, writ.world))
        if not _finished(dep):
            state = f" ({dep.phase})" if dep is not None and dep.phase != PENDING else ""
            return f"waiting for {ref}{state}"
    found = caravans.get((writ.world, writ.name))
    if found:
        caravan, number = found
        cspec = CaravanSpec.from_spec(caravan.spec)
        if not cspec.commissioned:
            return f"caravan {caravan.name} is in drydock"
        for earlier in cspec.phases[:number]:
            for name in earlier:
                if not _finished(snapshot.writs.get((writ.world, name))):
                    return f"waiting for {name} (caravan {caravan.name} phase {number - 1})"
    return None


def plan_dispatch(snapshot: Snapshot) -> Dispatch:
    """Pure: ready writs in order of priority, caravan phase, name; capacity applied."""
    caravans = _caravan_index(snapshot.caravans)
    candidates: list[tuple[tuple[int, int, str, str], Record]] = []
    waiting: dict[WritKey, str] = {}
    for key, writ in snapshot.writs.items():
        if writ.phase != PENDING:
            continue
        reason = why_waiting(snapshot, writ, caravans)
        if reason:
            waiting[key] = reason
            continue
        phase = caravans.get(key, (None, 0))[1]
        order = (WritSpec.from_spec(writ.spec).priority, phase, writ.world, writ.name)
        candidates.append((order, writ))
    ready = []
    used = dict(snapshot.live)
    for _, writ in sorted(candidates, key=lambda c: c[0]):
        limit = WorldSpec.from_spec(snapshot.worlds[writ.world].spec).max_active
        count = used.get(writ.world, 0)
        if limit and count >= limit:
            waiting[(writ.world, writ.name)] = f"capacity {count}/{limit}"
            continue
        used[writ.world] = count + 1
        ready.append(writ)
    return Dispatch(tuple(ready), waiting)


def cast_actions(dispatch: Dispatch) -> list[Action]:
    return [
        Action(CREATE, "cast", target("Writ", w.world, w.name),
               f"cast an agent on sol/{w.name} (attempt {w.status.get('attempt', 1)})",
               {"world": w.world, "name": w.name})
        for w in dispatch.ready
    ]


def snapshot(sphere) -> Snapshot:  # noqa: ANN001 - Sphere, kept import-light
    """Observe: the store's view plus live tmux sessions per world."""
    from reconciler.core.degraded import state as degraded_state
    from reconciler.drivers.outposts import count_live, occupied

    store = sphere.store
    degraded = degraded_state(store)
    sessions = sphere.sessions.list("sol-")
    writs = store.list("Writ")
    return Snapshot(
        worlds={w.name: w for w in store.list("World")},
        writs={(w.world, w.name): w for w in writs},
        caravans=tuple(store.list("Caravan")),
        live=occupied(count_live(sessions), writs),
        sessions=sessions,
        degraded=degraded.reason if degraded else None,
        now=time.time(),
    )


def record_waiting(sphere, dispatch: Dispatch) -> None:  # noqa: ANN001
    """Keep every pending writ's reason true (a status write, not an action)."""
    for (world, name), reason in dispatch.waiting.items():
        sphere.store.set_status(("Writ", world, name), reason="Waiting", message=reason,
                                expect_phases=[PENDING])


def refresh_tethers(sphere) -> list[Action]:  # noqa: ANN001
    """A Working writ whose spec changed gets its tether rewritten (same session, attempt
    and branch); the agent sees it at its next `sol prime`."""
    from reconciler.core import tether
    from reconciler.drivers.outposts import tether_path_for

    done = []
    for writ in sphere.store.list("Writ"):
        if writ.phase != WORKING or writ.observed_generation == writ.generation:
            continue
        path = tether_path_for(sphere, writ.world, writ.name)
        if path is None or not path.exists():
            continue
        try:
            current = tether.read(path)
        except SolError:
            continue
        if current.generation == writ.generation:
            continue
        spec = WritSpec.from_spec(writ.spec)
        current.title, current.description = spec.title, spec.description
        current.generation, current.updated_at = writ.generation, time.time()
        tether.write(path, current)
        action = Action(UPDATE, "retether", target("Writ", writ.world, writ.name),
                        f"spec changed: tether updated to generation {writ.generation}",
                        {"world": writ.world, "name": writ.name})
        sphere.store.event("retethered", kind="Writ", world=writ.world, name=writ.name,
                           message=action.description, generation=writ.generation)
        if current.runtime.get("name") in ("claude", "codex"):
            from reconciler.core.home import session_name

            try:
                sphere.sessions.send_text(session_name(writ.world, current.agent),
                                          "Your assignment changed: run `sol prime` and "
                                          "adjust your work.")
            except SolError:
                pass
        done.append(action)
    return done


def caravan_phase(caravan: Record, writs: dict[WritKey, Record]) -> tuple[str, str]:
    """Pure: Drydock, Open (with the phase it is in) or Landed."""
    spec = CaravanSpec.from_spec(caravan.spec)
    if all(_finished(writs.get((caravan.world, n))) for p in spec.phases for n in p):
        return "Landed", f"all {sum(len(p) for p in spec.phases)} writs landed"
    if not spec.commissioned:
        return "Drydock", "planned; nothing is dispatched until commissioned"
    for number, phase in enumerate(spec.phases):
        if not all(_finished(writs.get((caravan.world, n))) for n in phase):
            done = sum(_finished(writs.get((caravan.world, n))) for n in phase)
            return "Open", f"phase {number + 1}/{len(spec.phases)}: {done}/{len(phase)} landed"
    return "Open", ""


def mark_caravans(sphere, snap: Snapshot) -> None:  # noqa: ANN001
    for caravan in snap.caravans:
        phase, message = caravan_phase(caravan, snap.writs)
        if (caravan.phase, caravan.message) != (phase, message):
            sphere.store.set_status(caravan.key, phase=phase, reason=phase, message=message,
                                    observed_generation=caravan.generation)
            if phase != caravan.phase:
                sphere.store.event(phase.lower(), kind="Caravan", world=caravan.world,
                                   name=caravan.name, message=message)


def stale_writs(snap: Snapshot, has_tether: dict[WritKey, bool], now: float,
                stale_after: float | None = None) -> list[Record]:
    """Pure: Working writs whose agent is gone without a live session or a tether, for
    longer than staleAfter (so a cast in progress is never mistaken for one).
    `stale_after` overrides every world's `spec.sentinel.staleAfter` when given."""
    found = []
    for key, w in snap.writs.items():
        world = snap.worlds.get(w.world)
        if w.phase != WORKING or has_tether.get(key) or world is None:
            continue
        limit = stale_after if stale_after is not None else WorldSpec.from_spec(
            world.spec).stale_after
        if now - w.updated_at > limit:
            found.append(w)
    return found


def recover_stale(sphere, snap: Snapshot) -> list[Action]:  # noqa: ANN001
    """Return to Pending any writ whose agent vanished; it is cast again on its branch."""
    from reconciler.core.home import session_name

    live = snap.sessions
    has_tether: dict[WritKey, bool] = {}
    for key, writ in snap.writs.items():
        agent = writ.status.get("agent")
        if writ.phase != WORKING or not agent:
            continue
        alive = live.get(session_name(writ.world, agent), False)
        has_tether[key] = alive or sphere.home.tether(writ.world, agent).exists()
    actions = []
    override = sphere.config.stale_after
    for writ in stale_writs(snap, has_tether, time.time(), override):
        done = sphere.store.set_status(
            writ.key, phase=PENDING, reason="Recovered", expect_version=writ.version,
            message="agent gone without session or tether; cast again on its branch",
            session=None,
        )
        if done is not None:
            action = Action(UPDATE, "recover", target("Writ", writ.world, writ.name),
                            "agent gone: back to Pending, branch kept",
                            {"world": writ.world, "name": writ.name})
            sphere.store.event("recovered", kind="Writ", world=writ.world, name=writ.name,
                               message=action.description)
            actions.append(action)
    return actions


def reconcile(sphere, *, dry_run: bool = False) -> list[Action]:  # noqa: ANN001
    """One dispatch pass: refresh changed tethers, recover vanished agents, mark caravans,
    cast every ready writ capacity allows."""
    from reconciler.drivers.outposts import cast_writs

    refreshed = [] if dry_run else refresh_tethers(sphere)
    snap = snapshot(sphere)
    if not dry_run:
        from reconciler.controllers.recovery import recover

        recovered = recover_stale(sphere, snap)
        recovered += recover(sphere, list(snap.writs.values()), snap.worlds, snap.sessions)
        if recovered:
            snap = snapshot(sphere)
        refreshed += recovered
    dispatch = plan_dispatch(snap)
    actions = cast_actions(dispatch)
    if dry_run:
        return actions
    record_waiting(sphere, dispatch)
    done: list[Action] = []
    by_world: dict[str, list[Action]] = {}
    for action in actions:
        by_world.setdefault(action.data["world"], []).append(action)
    for world, world_actions in by_world.items():
        failures = cast_writs(sphere, world, [a.data["name"] for a in world_actions])
        capacity = next((f for f in failures if isinstance(f, Retry)), None)
        for action in world_actions:
            record = sphere.store.get("Writ", world, action.data["name"])
            if record is not None and record.phase == WORKING:
                done.append(action)
            elif (capacity is not None and record is not None and record.phase == PENDING
                  and record.reason != "CastFailed"):
                sphere.store.set_status(record.key, reason="Waiting", message=capacity.message,
                                        expect_phases=[PENDING])
    mark_caravans(sphere, snap)
    return refreshed + done
