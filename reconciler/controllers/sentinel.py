"""The sentinel: per-world health of agent sessions (DESIGN sections 6 and 8).

Observe one world (one `list-sessions` call, the store, tethers, log mtimes, orphan
worktrees), plan with the pure `sentinel_plan.plan`, then act; every action re-checks
what it relies on under the world's cast lock and is recorded as an event, so a pass
that runs twice, or beside a cast or a `sol resolve`, changes nothing twice.

- A Working writ whose session is dead or missing while its tether is there has died:
  the death is recorded once (keyed by the session id), then the session is respawned in
  the same worktree from the tether with a new session id, after a backoff of 1 s
  doubling to 60 s, capacity permitting and never while the sphere is degraded. After
  `maxRespawns` respawns of one attempt the writ is `Failed` (worktree, branch and
  outpost kept) and escalated.
- A live session whose log has not grown for `stallAfter` is nudged once; still silent
  `stallAfter` after the nudge, it gets the condition `Stalled` and an escalation.
- A session with no tether, or whose writ has ended, is stopped (envoys excepted).
- A worktree no writ owns is removed when its work is on the target, else reported once.

Degraded mode is entered and left by the `degraded` reconciler; the sentinel only reads
it (no respawn while degraded) and records each death it sees (`degraded.record_death`).
The envoys, kept alive and never reaped, are the other reconciler of the sentinel child.

The parts: `sentinel_observe` (read only), `sentinel_plan` (pure), `sentinel_act` (one
step each); this module binds them into the reconciler.
"""

from __future__ import annotations

from reconciler.controllers.base import Reconciler, Scope
from reconciler.controllers.sentinel_act import act
from reconciler.controllers.sentinel_observe import observe
from reconciler.controllers.sentinel_plan import (
    plan,
)
from reconciler.core.plan import Action, sooner
from reconciler.drivers.outposts import (
    parse_session,
    watch_deaths,
)
from reconciler.drivers.sphere import Sphere

RECONCILER = Reconciler(name="sentinel", scope=Scope.WORLD, owner="sentinel",
                        observe=observe, plan=plan, act=act)


def _worlds(sphere: Sphere, world: str | None, listing: dict[str, bool]) -> list[str]:
    """`world`, else every world recorded or with a session (a world the store does not
    know may still have sessions to stop)."""
    if world is not None:
        return [world]
    names = {w.name for w in sphere.store.list("World")}
    names |= {p[0] for p in map(parse_session, listing) if p}
    return sorted(names)


def reconcile(sphere: Sphere, world: str | None = None) -> list[Action]:
    """One sentinel pass over `world` (every world when None); the actions carried out."""
    keys = _worlds(sphere, world, sphere.sessions.list("sol-"))
    return [a for key in keys for a in RECONCILER.reconcile(sphere, key).actions]


def requeue_after(sphere: Sphere, world: str | None = None) -> float | None:
    """Seconds until the next backoff, stall or degraded-exit deadline (None: nothing is
    due; wait for an event or the periodic resync). The daemon calls it after each pass,
    before it sleeps: it also arms the watch on its agents' processes
    (`outposts.DeathWatch`)."""
    listing = sphere.sessions.list("sol-")
    watch_deaths(sphere, {n: alive for n, alive in listing.items()
                          if world is None or (parse_session(n) or ('',))[0] == world})
    return sooner(*(RECONCILER.planned(sphere, key).requeue_after
                    for key in _worlds(sphere, world, listing)))
