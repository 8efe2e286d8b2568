"""The ledger reconciler: keeps the usage table level with the agents' transcripts.

Desired state: every complete line of every transcript counted once; observed: each
file's stat and the offset it was read to. observe stats the transcripts (one stat a
file, one query), plan (pure) lists the files that changed, act reads them from their
offsets (drivers/ledger.py), at most `budget` bytes a pass (ledger.PASS_BYTES). It runs in
the consul's process, just before dispatch, so what an agent spent is known when the next
cast is decided; a transcript growing does not wake anything, the consul's periodic
resync (30 s) picks it up. A backlog larger than a pass (the first pass over old
transcripts) is read over several passes AGAIN apart, dispatch running between. `sol diff`
leaves it out (registry.OUTSIDE_DIFF): reading transcripts changes nothing a user asked
for.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from reconciler.controllers.base import Reconciler, Scope
from reconciler.core import ledger_store
from reconciler.core.ledger_store import FileState
from reconciler.core.plan import UPDATE, Action, Plan
from reconciler.drivers import ledger
from reconciler.drivers.ledger import Seen
from reconciler.drivers.sphere import Sphere

AGAIN = 0.25
"""Seconds before the next pass while a backlog remains. Not 0: `reconcile` would follow
that at once and read the whole backlog before dispatch; after each pass the consul's
other reconcilers run, and its wakes are heard."""


@dataclass(frozen=True)
class LedgerView:
    seen: tuple[Seen, ...]
    read: dict[str, FileState]
    budget: int = ledger.PASS_BYTES


def observe(sphere: Sphere, key: str = "") -> LedgerView:
    return LedgerView(tuple(ledger.transcripts(sphere.home)), ledger_store.files(sphere.store))


def plan(view: LedgerView) -> Plan:
    """One action for all the transcripts that changed since they were read; when they
    hold more than one pass reads, look again soon for the rest."""
    changed = [s for s in view.seen if not ledger.unchanged(s, view.read.get(s.path))]
    if not changed:
        return Plan()
    fresh = sum(ledger.backlog(s, view.read.get(s.path)) for s in changed)
    noun = "transcript" if len(changed) == 1 else "transcripts"
    data = {"paths": sorted(s.path for s in changed), "budget": view.budget}
    if fresh <= view.budget:
        return Plan((Action(UPDATE, "read-usage", "ledger",
                            f"read {fresh} new bytes of {len(changed)} {noun}", data),))
    return Plan((Action(UPDATE, "read-usage", "ledger",
                        f"read up to {view.budget} of {fresh} new bytes of {len(changed)} {noun}, "
                        f"{fresh - view.budget} left for the next passes", data),),
                requeue_after=AGAIN)


def act(sphere: Sphere, action: Action) -> bool:
    return ledger.sync(sphere.home, sphere.store, time.time(),
                       only=set(action.data["paths"]),
                       budget=action.data.get("budget", ledger.PASS_BYTES)) > 0


RECONCILER = Reconciler(name="ledger", scope=Scope.SPHERE, owner="consul",
                        observe=observe, plan=plan, act=act)
