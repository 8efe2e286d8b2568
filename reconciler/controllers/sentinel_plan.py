"""The sentinel's planner: plain values in, actions out; no tmux, no git, no database.

`sentinel.observe` builds the `SentinelView`, `plan` decides, and the act functions in
`sentinel` carry the actions out (DESIGN sections 6 and 8).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from reconciler.core.backoff import exponential
from reconciler.core.durations import format_duration
from reconciler.core.holds import Hold
from reconciler.core.home import session_name
from reconciler.core.model import CANCELLED, DONE, FAILED, MERGED, WORKING, WorldSpec
from reconciler.core.plan import CREATE, DELETE, NOTE, UPDATE, Action, Plan
from reconciler.core.store import Record
from reconciler.drivers.envoy_names import is_envoy
from reconciler.specs.changes import target

BACKOFF_MAX = 60.0
HOOK_GRACE = 120.0  # pane silence judges a hooked agent only if its hooks never spoke
RATE_LIMIT_HOLD = 60.0  # seconds a rate-limited world waits when the error names no reset
REMOTE_POLL = 5.0  # seconds between looks at agents on other machines (no death watch there)
RATE_LIMIT_POLL = 2.0  # told to go on, a CLI without hooks is looked at this often
_RETRY_AFTER = re.compile(r"(?:retry|try again|resets?)\D{0,20}?(\d+(?:\.\d+)?)\s*s", re.I)
ZOMBIE_GRACE = 5.0  # an agent's writ changed this recently: its session may be ending itself
ENDED = frozenset({MERGED, CANCELLED, FAILED, DONE})
PENDING_RETRY = 1.0  # seconds; bounds the retry rate of an action that keeps failing
INFRASTRUCTURE = frozenset({"RespawnLimit"})
"""Failure reasons that say nothing about the work (its session kept dying): the ones
`spec.sentinel.retryFailedAfter` re-drives."""


def backoff(respawns: int) -> float:
    """Seconds from a death to the next respawn, after `respawns` respawns: 1, 2, 4 ... 60."""
    return exponential(respawns, cap=BACKOFF_MAX)


def retry_due(writ: Record, after: float) -> float | None:
    """When a writ Failed for an infrastructure reason is re-driven: `after` past its
    failure, doubled for each earlier such re-drive in its `status.retries`; None for any
    other writ (a gate failure needs a person or a spec edit)."""
    if writ.phase != FAILED or writ.reason not in INFRASTRUCTURE or writ.orphaned:
        return None
    earlier = sum(1 for r in writ.status.get("retries") or ()
                  if r.get("reason") in INFRASTRUCTURE)
    return float(writ.status.get("failedAt") or writ.updated_at) + after * 2 ** earlier


def _plan_retries(view: SentinelView, spec: WorldSpec, held: dict[str, str]
                  ) -> tuple[list[Action], list[float]]:
    """Re-drives of infrastructure failures that are due, and when the next one is."""
    actions: list[Action] = []
    wakes: list[float] = []
    after = spec.retry_failed_after
    if not after:
        return actions, wakes
    for writ in sorted(view.writs.values(), key=lambda w: w.name):
        due = retry_due(writ, after)
        if due is None:
            continue
        if view.now < due:
            held[target("Writ", writ.world, writ.name)] = (
                f"{writ.reason}: re-driven in {format_duration(int(due - view.now))} "
                "(retryFailedAfter)")
            wakes.append(due)
            continue
        actions.append(_writ_action(
            UPDATE, "retry-failed", writ,
            f"failed for an infrastructure reason ({writ.reason}): re-drive it on its kept "
            "branch (retryFailedAfter)", version=writ.version))
    return actions, wakes


def echo_grace(stall_after: float) -> float:
    """Output this soon after a nudge is the terminal echoing the nudge, not the agent."""
    return min(10.0, max(1.0, stall_after / 2))


# ---- plain values the planner sees ------------------------------------------------


@dataclass(frozen=True)
class TetherView:
    writ: str
    session: str
    updated_at: float  # written at cast and at each respawn: when the session started
    hooks: bool = False  # its runtime reports through hooks (claude)
    runtime: str = ""    # the runtime's name


@dataclass(frozen=True)
class ActivityView:
    """What the agent's CLI last told sol through its hooks (`reconciler.drivers.hook`),
    or, for a CLI without hooks (codex), what its own log says (`polled`: nothing wakes
    the sentinel when that changes)."""

    state: str                         # working | idle | rate-limited | error
    at: float                          # when it entered that state
    session: str                       # the sol session id it was told in
    error: str = ""
    message: str = ""
    until: float | None = None         # the reset time the CLI recorded, if any
    polled: bool = False
    hold: float = RATE_LIMIT_HOLD      # the wait when neither the CLI nor its error says


@dataclass(frozen=True)
class OutboxView:
    """A request an agent working on its own node left for the daemon (it cannot write
    the store there: node_workspace.py), carried back by the sentinel's mirror."""

    kind: str                          # resolve | escalate
    id: str
    session: str                       # the sol session that asked
    head: str = ""                     # resolve: the commit it pushed
    ahead: int = 0                     # resolve: commits beyond the base
    message: str = ""                  # escalate: what it asks a person


@dataclass(frozen=True)
class OutpostView:
    """One agent of the world as observed: its tether, its session, its last output."""

    agent: str
    tether_file: bool = False          # the file exists (even if unreadable)
    tether: TetherView | None = None   # its content when readable
    session: bool | None = None        # None: no session; True: alive; False: dead pane
    last_output: float | None = None   # mtime of the session log
    writ: str | None = None            # the writ its agent row holds
    activity: ActivityView | None = None  # hooks' word, when the runtime has hooks
    outbox: tuple[OutboxView, ...] = ()  # requests from its node (workspace: node)


@dataclass(frozen=True)
class OrphanView:
    """A worktree whose agent holds no writ and no tether."""

    agent: str
    head: str | None
    merged: bool
    dirty: bool
    reported: bool


@dataclass(frozen=True)
class SentinelView:
    world: str
    spec: WorldSpec | None             # None: sessions of a world the store does not know
    writs: dict[str, Record]
    outposts: dict[str, OutpostView]
    now: float
    live: int = 0
    degraded: bool = False
    orphans: tuple[OrphanView, ...] = ()
    degraded_exit: float | None = None  # when Degraded ends if no session dies before
    hold: Hold | None = None           # a rate limit or the daily budget holds respawns


# ---- the planner ----------------------------------------------------------------


def _stalled(status: dict[str, Any]) -> bool:
    return any(c.get("type") == "Stalled" and c.get("status") == "True"
               for c in status.get("conditions") or [])


def _nudge(status: dict[str, Any], session: str) -> dict[str, Any] | None:
    nudge = status.get("nudge")
    return nudge if isinstance(nudge, dict) and nudge.get("session") == session else None


def _writ_action(op: str, kind: str, writ: Record, text: str, **data: Any) -> Action:
    agent, session = writ.status.get("agent"), writ.status.get("session")
    return Action(op, kind, target("Writ", writ.world, writ.name), text,
                  {"world": writ.world, "writ": writ.name, "agent": agent, "session": session,
                   **data})


def rate_limit_until(a: ActivityView) -> float:
    """When a rate-limited agent may try again: the reset time its CLI recorded or its
    error named, else `hold` (sol.yaml `rateLimitHold`) after the error."""
    if a.until is not None and a.until > a.at:
        return min(a.until, a.at + 86400.0)
    match = _RETRY_AFTER.search(a.message or "")
    wait = float(match.group(1)) if match else a.hold
    return a.at + min(max(wait, 1.0), 3600.0)


def _plan_activity(writ: Record, a: ActivityView, spec: WorldSpec, now: float
                   ) -> tuple[Action | None, float | None]:
    """A CLI with hooks: never nudged while a turn runs (a long tool call, a slow
    stream); nudged once `stallAfter` after its turn ended without `sol resolve`, then
    Stalled if the next turn also ends so; rate limits wait for their reset instead.
    Codex (`polled`) comes here only while rate limited or RateLimited."""
    after, session = spec.stall_after, str(writ.status.get("session"))
    limited = writ.status.get("rateLimit")
    if a.state == "rate-limited":
        until = rate_limit_until(a)
        if not isinstance(limited, dict) or limited.get("at") != a.at:
            return _writ_action(UPDATE, "rate-limited", writ,
                                f"API error {a.error}: hold until the limit resets",
                                at=a.at, until=until, error=a.error,
                                said=a.message[:300]), None
        sent = float(limited.get("sentAt") or 0.0)
        if sent and now < sent + a.hold:  # told to go on: its next turn shows
            if a.polled:  # in its log only: look again soon, before the turn is over
                return None, min(sent + a.hold, now + RATE_LIMIT_POLL)
            return None, sent + a.hold
        if now >= until:
            return _writ_action(UPDATE, "rate-limit-over", writ,
                                "the rate limit has reset: tell the agent to go on",
                                at=a.at), None
        return None, until
    if isinstance(limited, dict) and a.at > float(limited.get("at") or 0.0):
        return _writ_action(UPDATE, "rate-limit-cleared", writ,
                            "the agent works again: RateLimited cleared"), None
    nudge = _nudge(writ.status, session)
    if a.state == "working":
        if _stalled(writ.status) and nudge and a.at > float(nudge.get("stalledAt") or 0.0):
            return _writ_action(UPDATE, "unstall", writ, "the agent works again"), None
        return None, None
    if after <= 0:
        return None, None  # stallAfter: 0s turns stall detection off
    since = a.at
    if nudge is not None:
        if nudge.get("stalled"):
            return None, None
        since = max(since, float(nudge.get("at") or 0.0))
        if now >= since + after:
            return _writ_action(UPDATE, "stall", writ,
                                "turn ended again without `sol resolve` "
                                f"{format_duration(int(after))} after a nudge: Stalled"), None
        return None, since + after
    if now - since >= after:
        return _writ_action(UPDATE, "nudge", writ,
                            f"turn ended {format_duration(int(now - since))} ago without "
                            "`sol resolve`: nudge the agent", hooks=True), None
    return None, since + after


def _plan_stall(writ: Record, o: OutpostView, spec: WorldSpec, now: float
                ) -> tuple[Action | None, float | None]:
    """Nudge, then Stalled; output after the nudge (beyond its echo) clears both. An
    agent whose CLI reports through hooks is judged by them, not by its pane."""
    session = str(writ.status.get("session"))
    if o.activity is not None and o.activity.session == session:
        return _plan_activity(writ, o.activity, spec, now)
    after = spec.stall_after
    if o.tether is not None and o.tether.hooks:
        after = max(after, HOOK_GRACE)  # a CLI that starts slowly has not reported yet
    nudge = _nudge(writ.status, session)
    last = o.last_output or 0.0
    if nudge is not None:
        at = float(nudge.get("at") or 0.0)
        if last > at + echo_grace(after):
            return _writ_action(UPDATE, "unstall", writ, "output resumed: nudge cleared"), None
        if nudge.get("stalled"):
            return None, None
        if now >= at + after:
            return _writ_action(UPDATE, "stall", writ,
                                f"still silent {format_duration(int(after))} after a nudge: "
                                "Stalled"), None
        return None, at + after
    if _stalled(writ.status):
        return _writ_action(UPDATE, "unstall", writ, "new session: Stalled cleared"), None
    started = o.tether.updated_at if o.tether else 0.0
    activity = max(last, started)
    if now - activity >= after:
        return _writ_action(UPDATE, "nudge", writ,
                            f"no output for {format_duration(int(now - activity))}: "
                            "nudge the agent"), None
    return None, activity + after


def _plan_outbox(writ: Record, o: OutpostView, session: str) -> list[Action]:
    """Requests of the writ's current session from its node, each applied once: a
    resolve ends the writ's work (an earlier session's is stale and ignored, as a stale
    `sol resolve` is refused); an escalation not recorded yet is recorded."""
    mine = [r for r in o.outbox if r.session == session]
    done = set(writ.status.get("nodeRequests") or ())
    resolve = next((r for r in mine if r.kind == "resolve"), None)
    if resolve is not None:
        return [_writ_action(UPDATE, "resolve-from-node", writ,
                             f"{o.agent} resolved on its node ({resolve.head[:12]}): "
                             "queue the merge request", request=resolve.id,
                             head=resolve.head, ahead=resolve.ahead)]
    return [_writ_action(UPDATE, "escalate-from-node", writ,
                         f"{o.agent} escalated on its node: {r.message[:200]}",
                         request=r.id, message=r.message)
            for r in mine if r.kind == "escalate" and r.id not in done]


def plan(view: SentinelView) -> Plan:
    """Pure: deaths, respawns, failures, nudges, stalls, zombies and orphans of one world.

    `requeue_after` is the earliest future deadline (a backoff, a stall, a zombie's grace,
    the end of Degraded, which the `degraded` reconciler writes: past it, look again
    soon), or PENDING_RETRY when actions are planned: acted, they change the deadlines;
    raced or failed, they are tried again soon, not at once. `waiting` tells why a dead
    writ is not respawned yet."""
    actions: list[Action] = []
    wakes: list[float] = []
    if view.degraded and view.degraded_exit is not None:
        wakes.append(max(view.degraded_exit, view.now + PENDING_RETRY))
    held: dict[str, str] = {}
    now, spec, live = view.now, view.spec, view.live
    for writ in sorted(view.writs.values(), key=lambda w: w.name) if spec else ():
        assert spec is not None
        agent, session = writ.status.get("agent"), writ.status.get("session")
        if writ.phase != WORKING or not agent or not session:
            continue
        o = view.outposts.get(agent)
        if o is None or o.tether is None or o.tether.writ != writ.name:
            continue  # no tether: the consul recovers the writ, not us
        asked = _plan_outbox(writ, o, str(session))
        actions += asked
        if any(a.kind == "resolve-from-node" for a in asked):
            continue  # resolved on its node: its session's end is no death
        if o.session is True:
            if spec.sessions.backend != "tmux":  # its death wakes no local pidfd
                wakes.append(now + REMOTE_POLL)
            if spec.stall_after <= 0 and o.activity is None:
                continue  # stallAfter: 0s turns stall detection off
            action, wake = _plan_stall(writ, o, spec, now)
            actions += [action] if action else []
            wakes += [wake] if wake else []
            continue
        respawns = int(writ.status.get("respawns") or 0)
        where = target("Writ", writ.world, writ.name)
        if writ.status.get("deadSession") != session:
            then = (f"respawn limit {spec.max_respawns} reached: Failed, work kept"
                    if respawns >= spec.max_respawns else
                    "not respawned: the sphere is degraded" if view.degraded else
                    f"respawn {agent} ({respawns + 1}/{spec.max_respawns}) in "
                    f"{backoff(respawns):g}s in the same worktree")
            actions.append(_writ_action(UPDATE, "record-death", writ,
                                        f"session {session} of {agent} died; {then}",
                                        respawns=respawns))
        elif respawns >= spec.max_respawns:
            actions.append(_writ_action(UPDATE, "fail", writ,
                                        f"died after {respawns} respawn(s): Failed, work kept",
                                        respawns=respawns))
        elif view.degraded:
            held[where] = "sphere degraded: respawning stopped"
        elif view.hold is not None and view.hold.until > now:
            held[where] = view.hold.message(view.world, now)
            wakes.append(view.hold.until)
        elif now < (due := float(writ.status.get("lastDeath") or 0.0) + backoff(respawns)):
            held[where] = f"backoff: respawn in {due - now:.1f}s"
            wakes.append(due)
        elif spec.max_active and live >= spec.max_active:
            held[where] = f"capacity {live}/{spec.max_active}"
        else:
            live += 1
            actions.append(_writ_action(CREATE, "respawn", writ,
                                        f"respawn {agent} ({respawns + 1}/{spec.max_respawns})"
                                        " in the same worktree", respawns=respawns))
    if spec is not None:
        retries, due = _plan_retries(view, spec, held)
        actions += retries
        wakes += due
    for o in sorted(view.outposts.values(), key=lambda o: o.agent):
        why = _zombie(view, o)
        if why is None:
            continue
        grace_until = _grace(view, o)
        if grace_until is not None:
            wakes.append(grace_until)
            continue
        name = session_name(view.world, o.agent)
        actions.append(Action(DELETE, "stop-zombie", f"session/{name}", f"stop: {why}",
                              {"world": view.world, "agent": o.agent, "why": why}))
    for orphan in view.orphans:
        data = {"world": view.world, "agent": orphan.agent, "head": orphan.head,
                "dirty": orphan.dirty}
        where = target("Outpost", view.world, orphan.agent)
        if orphan.merged and not orphan.dirty:
            actions.append(Action(DELETE, "remove-orphan", where,
                                  "worktree without a writ, its work on the target: remove",
                                  data))
        elif not orphan.reported:
            actions.append(Action(NOTE, "report-orphan", where,
                                  "worktree without a writ holds work not on the target: keep",
                                  data))
    future = [w for w in wakes if w > now]
    if actions:
        return Plan(tuple(actions), PENDING_RETRY, held)
    return Plan((), min(future) - now if future else None, held)


def _zombie(view: SentinelView, o: OutpostView) -> str | None:
    """Why this outpost's session should not exist, or None."""
    if o.session is None or is_envoy(o.agent):
        return None
    if not o.tether_file:
        return "no tether"
    if o.tether is None:
        return None  # an unreadable tether: leave the session to a person
    writ = view.writs.get(o.tether.writ)
    if writ is not None and writ.phase in ENDED:
        return f"writ {writ.name} is {writ.phase}"
    return None


def _grace(view: SentinelView, o: OutpostView) -> float | None:
    """A live session without a tether whose writ just changed may be `sol resolve`
    finishing in it: give it ZOMBIE_GRACE to stop itself."""
    if o.session is not True or o.tether_file or not o.writ:
        return None
    writ = view.writs.get(o.writ)
    if writ is None or view.now - writ.updated_at >= ZOMBIE_GRACE:
        return None
    return writ.updated_at + ZOMBIE_GRACE
