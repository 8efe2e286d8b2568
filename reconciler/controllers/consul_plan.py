"""The consul's planner: plain values in, actions out; no tmux, no git, no database.

`consul.observe` builds the `View` of the sphere, `plan` decides every step of a pass
(tether refreshes, recoveries, waiting reasons, casts, caravan phases) and `consul.act`
carries each one out. Which Pending writs are ready, in what order and why the others
wait is `plan_dispatch`, on the smaller `Snapshot` the View extends.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from reconciler.core.holds import world_hold
from reconciler.core.home import session_name
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
from reconciler.core.plan import CREATE, NOTE, UPDATE, Action, Plan, sooner
from reconciler.core.store import Record
from reconciler.core.suspension import world_suspension, writ_suspension
from reconciler.core.tether import Tether
from reconciler.specs.changes import target

WritKey = tuple[str, str]

WAITING = "Waiting"
"""The reason a Pending writ carries while it waits; its message says for what."""


@dataclass(frozen=True)
class Snapshot:
    """Everything dispatch looks at, as plain values."""

    worlds: dict[str, Record]
    writs: dict[WritKey, Record]
    caravans: tuple[Record, ...] = ()
    live: dict[str, int] = field(default_factory=dict)  # world -> slots in use
    sessions: dict[str, bool] = field(default_factory=dict)  # tmux session -> alive
    degraded: str | None = None  # why the sphere is degraded, if it is
    now: float = 0.0  # when it was observed (rate-limit holds end at a time)


@dataclass(frozen=True)
class SeenTether:
    """The tether of a Working writ whose spec changed, as read from disk."""

    agent: str
    generation: str
    runtime: str


@dataclass(frozen=True)
class View(Snapshot):
    """A whole consul pass's observation: dispatch's Snapshot, and what recovery and
    tether refreshes need from disk and git."""

    tethers: Mapping[WritKey, SeenTether] = field(default_factory=dict)
    """Working writs whose spec changed since the cast -> their tether (when readable)."""
    tethered: frozenset[WritKey] = frozenset()
    """Working writs whose agent's tether file exists."""
    landed: Mapping[WritKey, str] = field(default_factory=dict)
    """Pending writs whose `Sol-Writ:` trailer is on their world's target -> that commit."""
    running: Mapping[WritKey, Tether] = field(default_factory=dict)
    """Pending writs a live agent still works on -> that agent's tether."""
    stale_after: float | None = None
    """The config's override of every world's staleAfter."""


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
    suspended = world_suspension(world)
    if suspended:
        return suspended.message
    hold = world_hold(world, snapshot.now)
    if hold is not None:
        return hold.message(writ.world, snapshot.now)
    suspended = writ_suspension(writ)
    if suspended:
        return suspended.message
    spec = WritSpec.from_spec(writ.spec)
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


def caravan_phase(caravan: Record, writs: Mapping[WritKey, Record]) -> tuple[str, str]:
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


def _stale_limit(snap: Snapshot, writ: Record, stale_after: float | None) -> float | None:
    world = snap.worlds.get(writ.world)
    if world is None:
        return None
    return stale_after if stale_after is not None else WorldSpec.from_spec(
        world.spec).stale_after


def stale_writs(snap: Snapshot, has_tether: Mapping[WritKey, bool], now: float,
                stale_after: float | None = None) -> list[Record]:
    """Pure: Working writs whose agent is gone without a live session or a tether, for
    longer than staleAfter (so a cast in progress is never mistaken for one).
    `stale_after` overrides every world's `spec.sentinel.staleAfter` when given."""
    found = []
    for key, w in snap.writs.items():
        if w.phase != WORKING or has_tether.get(key):
            continue
        limit = _stale_limit(snap, w, stale_after)
        if limit is not None and now - w.updated_at > limit:
            found.append(w)
    return found


def has_tether(view: View) -> dict[WritKey, bool]:
    """Working writs with an agent -> whether its session is alive or its tether is on
    disk (either says the agent is not gone)."""
    found: dict[WritKey, bool] = {}
    for key, writ in view.writs.items():
        agent = writ.status.get("agent")
        if writ.phase == WORKING and agent:
            found[key] = bool(view.sessions.get(session_name(writ.world, agent))) or (
                key in view.tethered)
    return found


def _writ_action(op: str, kind: str, writ: Record, text: str, **data: object) -> Action:
    return Action(op, kind, target("Writ", writ.world, writ.name), text,
                  {"world": writ.world, "name": writ.name, **data})


def retethers(view: View) -> list[Action]:
    """A Working writ whose spec changed gets its tether rewritten (same session, attempt
    and branch); the agent sees it at its next `sol prime`."""
    actions = []
    for key, writ in view.writs.items():
        seen = view.tethers.get(key)
        if (writ.phase != WORKING or writ.observed_generation == writ.generation
                or seen is None or seen.generation == writ.generation):
            continue
        actions.append(_writ_action(
            UPDATE, "retether", writ,
            f"spec changed: tether updated to generation {writ.generation}",
            generation=writ.generation))
    return actions


def recoveries(view: View) -> list[Action]:
    """Working writs whose agent vanished go back to Pending; Pending writs that landed
    (their trailer is on the target) are Merged, and those a live agent still works on
    are adopted as Working, never cast a second time."""
    actions = [_writ_action(UPDATE, "recover", w, "agent gone: back to Pending, branch kept",
                            version=w.version)
               for w in stale_writs(view, has_tether(view), view.now, view.stale_after)]
    for key in sorted(view.writs):
        writ = view.writs[key]
        if writ.phase != PENDING or writ.orphaned or writ.world not in view.worlds:
            continue
        commit, running = view.landed.get(key), view.running.get(key)
        if commit:
            branch = WorldSpec.from_spec(view.worlds[writ.world].spec).branch
            actions.append(_writ_action(
                UPDATE, "recover-merged", writ,
                f"already on {branch} as {commit[:12]} (its Sol-Writ trailer): "
                "recorded Merged, not run again",
                commit=commit, version=writ.version, generation=writ.generation))
        elif running is not None:
            actions.append(_writ_action(
                UPDATE, "adopt", writ,
                f"agent {running.agent} still works on it (session {running.session}): "
                "adopted",
                agent=running.agent, session=running.session, branch=running.branch,
                base=running.base, attempt=running.attempt,
                runtime=str(running.runtime.get("name") or ""), version=writ.version))
    return actions


def waits(view: View, dispatch: Dispatch) -> list[Action]:
    """Keep every Pending writ's waiting reason true: a status write where it changed."""
    actions = []
    for key, reason in dispatch.waiting.items():
        writ = view.writs[key]
        if (writ.reason, writ.message) != (WAITING, reason):
            actions.append(_writ_action(NOTE, "wait", writ, reason))
    return actions


def caravans(view: View) -> list[Action]:
    """Each caravan's phase (Drydock, Open, Landed) where it changed."""
    actions = []
    for caravan in view.caravans:
        phase, message = caravan_phase(caravan, view.writs)
        if (caravan.phase, caravan.message) != (phase, message):
            actions.append(Action(
                UPDATE, "caravan", target("Caravan", caravan.world, caravan.name),
                f"{phase}: {message}" if message else phase,
                {"world": caravan.world, "name": caravan.name, "phase": phase,
                 "message": message, "version": caravan.version}))
    return actions


def next_look(view: View) -> float | None:
    """When time alone changes the plan: a world's hold (rate limit, budget) ends, or a Working
    writ without session or tether becomes stale."""
    delays: list[float | None] = []
    pending = {w.world for w in view.writs.values() if w.phase == PENDING}
    for name in pending:
        world = view.worlds.get(name)
        hold = world_hold(world, view.now)
        if hold is not None:
            delays.append(hold.until - view.now)
    alive = has_tether(view)
    for key, writ in view.writs.items():
        if writ.phase != WORKING or alive.get(key):
            continue
        limit = _stale_limit(view, writ, view.stale_after)
        if limit is not None:
            delays.append(max(0.0, writ.updated_at + limit - view.now))
    return sooner(*delays)


def plan(view: View) -> Plan:
    """Pure: one consul pass. Recoveries come alone (with tether refreshes) and ask to
    look again at once: dispatch is then planned on the recovered state."""
    dispatch = plan_dispatch(view)
    waiting = {target("Writ", world, name): reason
               for (world, name), reason in dispatch.waiting.items()}
    actions = retethers(view)
    recovered = recoveries(view)
    if recovered:
        return Plan(tuple(actions + recovered), 0.0, waiting)
    actions += waits(view, dispatch) + cast_actions(dispatch) + caravans(view)
    return Plan(tuple(actions), next_look(view), waiting)
