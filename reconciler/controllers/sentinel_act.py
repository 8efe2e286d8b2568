"""The sentinel's acts: each carries out one planned step (record a death, respawn, fail,
nudge, stall, rate limits, zombies, orphans) under the world's lock, checking the
record again first, so a step the world has moved past does nothing."""

from __future__ import annotations

import time
import uuid
from typing import Any

from reconciler.controllers.sentinel_observe import orphan_view, read_tether, unowned
from reconciler.controllers.sentinel_plan import (
    ENDED,
    _nudge,
    _stalled,
    backoff,
    retry_due,
)
from reconciler.core import degraded, tether
from reconciler.core.conditions import escalate, with_condition
from reconciler.core.durations import format_duration
from reconciler.core.errors import SolError
from reconciler.core.home import session_name
from reconciler.core.locks import flock
from reconciler.core.model import FAILED, WORKING, WorldSpec
from reconciler.core.plan import Action
from reconciler.core.redrive import redrive
from reconciler.core.store import Record
from reconciler.core.times import rfc3339
from reconciler.drivers import node_workspace, worktrees
from reconciler.drivers.agent import resolve_recorded
from reconciler.drivers.outposts import (
    live_counts,
    release,
    start_session,
)
from reconciler.drivers.sessions import last_words
from reconciler.drivers.sphere import Sphere

NUDGE = ("sol: no output for {after}. If you are stuck, run sol escalate \"why\"; "
         "when done, run sol resolve.")
TURN_NUDGE = ("sol: your turn ended {after} ago but the writ is not resolved. Go on with "
              "the assignment (sol prime prints it). When the work is committed and the "
              "gates pass, run sol resolve; if you are stuck, run sol escalate \"why\".")
GO_ON = ("sol: the API rate limit has reset. Go on with the assignment where you left off "
         "(sol prime prints it).")
"""Typed into a silent session. No backticks or `$`: a shell in the pane runs nothing."""


# ---- observe ---------------------------------------------------------------------

def _lock(sphere: Sphere, world: str):  # noqa: ANN202 - a context manager
    return flock(sphere.home.run / f"cast-{world}.lock")


def _current(sphere: Sphere, action: Action) -> Record | None:
    """The writ again, if it is still Working on the session the plan saw."""
    d = action.data
    writ = sphere.store.get("Writ", d["world"], d["writ"])
    if writ is None or writ.phase != WORKING or writ.status.get("session") != d["session"]:
        return None
    return writ


def _spec(sphere: Sphere, world: str) -> WorldSpec | None:
    record = sphere.store.get("World", "", world)
    return WorldSpec.from_spec(record.spec) if record is not None else None


def _tail(sphere: Sphere, name: str, lines: int = 20) -> str:
    """The last non-blank lines of a pane: a dead pane's own notice sits below a screen of
    blank lines, so ask tmux for more than a screen and drop the blanks."""
    try:
        text = sphere.sessions.recent_output(name, 200)
    except SolError:
        return ""
    return "\n".join([line for line in text.splitlines() if line.strip()][-lines:])


def _record_death(sphere: Sphere, action: Action) -> bool:
    d, store = action.data, sphere.store
    name = session_name(d["world"], d["agent"])
    tether_path = sphere.home.tether(d["world"], d["agent"])
    with _lock(sphere, d["world"]):
        if sphere.sessions.is_alive(name) or not tether_path.exists():
            return False  # a cast or respawn finished meanwhile
        output = _tail(sphere, name)
        spec = _spec(sphere, d["world"])
        held = degraded.state(store) is not None
        now = time.time()
        with store.transaction():
            writ = _current(sphere, action)
            if writ is None or writ.status.get("deadSession") == d["session"] or spec is None:
                return False
            respawns = int(writ.status.get("respawns") or 0)
            if respawns >= spec.max_respawns:
                then = f"respawn limit {spec.max_respawns} reached"
            elif held:
                then = "not respawned: the sphere is degraded (sol resume to resume)"
            else:
                then = f"respawn {respawns + 1}/{spec.max_respawns} in {backoff(respawns):g}s"
            last, ending = last_words(output), sphere.sessions.ending(name)
            how = f" ({ending})" if ending else ""
            message = f"session {d['session']} of agent {d['agent']} died{how}; {then}"
            store.set_status(writ.key, reason="SessionDied", message=message,
                             expect_version=writ.version, deadSession=d["session"],
                             lastDeath=now, **({"lastOutput": last[:200]} if last else {}))
            degraded.record_death(store, world=d["world"], writ=d["writ"], agent=d["agent"],
                                  session=d["session"], message=message, output=output,
                                  respawns=respawns, counted=not (ending and ending.lost),
                                  **({"nodeLost": ending.lost} if ending and ending.lost
                                     else {}))
    return True


def _respawn(sphere: Sphere, action: Action) -> bool:
    d, store, home = action.data, sphere.store, sphere.home
    world, agent = d["world"], d["agent"]
    name = session_name(world, agent)
    with _lock(sphere, world):
        record = store.get("World", "", world)
        writ = _current(sphere, action)
        if record is None or writ is None or writ.status.get("deadSession") != d["session"]:
            return False
        spec = WorldSpec.from_spec(record.spec)
        if degraded.state(store) is not None or sphere.sessions.is_alive(name):
            return False
        if spec.max_active and live_counts(sphere).get(world, 0) >= spec.max_active:
            return False  # capacity is never exceeded, whatever path casts
        path = home.tether(world, agent)
        t = tether.read(path)
        if t.writ != writ.name:
            return False
        new, now = uuid.uuid4().hex[:12], time.time()
        respawns = int(writ.status.get("respawns") or 0) + 1
        extra: dict[str, Any] = {}
        if _stalled(writ.status):
            extra["conditions"] = with_condition(writ.status, "Stalled", False, "Respawned",
                                                 "a new session was started")
        updated = store.set_status(
            writ.key, reason="Respawned", expect_version=writ.version, session=new,
            message=f"agent {agent} respawned ({respawns}/{spec.max_respawns}) in its worktree",
            respawns=respawns, respawnedAt=now, nudge=None, **extra)
        if updated is None:
            return False
        row = store.agent(world, agent)
        store.put_agent(world, agent, writ=writ.name, session=new,
                        runtime=row.runtime if row else "", state="working")
        t.session, t.updated_at = new, now
        tether.write(path, t)
        try:
            start_session(sphere, record, t)
        except SolError as exc:
            store.event("respawn-failed", kind="Writ", world=world, name=writ.name,
                        message=f"cannot start agent {agent}: {exc.message}", session=new)
            return True  # the missing session is the next death
        store.event("respawned", kind="Writ", world=world, name=writ.name,
                    message=f"agent {agent} respawned in its worktree with session {new} "
                    f"({respawns}/{spec.max_respawns})", agent=agent, session=new,
                    previous=d["session"], respawns=respawns)
    return True


def _fail(sphere: Sphere, action: Action) -> bool:
    d, store = action.data, sphere.store
    world, agent = d["world"], d["agent"]
    with _lock(sphere, world):
        spec = _spec(sphere, world)
        writ = _current(sphere, action)
        if spec is None or writ is None or writ.status.get("deadSession") != d["session"]:
            return False
        respawns = int(writ.status.get("respawns") or 0)
        if respawns < spec.max_respawns or sphere.sessions.is_alive(session_name(world, agent)):
            return False
        last = writ.status.get("lastOutput") or "(no output)"
        message = (f"agent session died {respawns + 1} time(s), respawn limit "
                   f"{spec.max_respawns} reached; last output: {last}; branch sol/{writ.name} "
                   f"and the worktree of {agent} kept")
        done = store.set_status(writ.key, phase=FAILED, reason="RespawnLimit", message=message,
                                expect_version=writ.version, session=None,
                                failedAt=time.time())
        if done is None:
            return False
        release(sphere, world, writ.name, reason="failed: respawn limit reached; work kept")
        row = store.agent(world, agent)
        store.put_agent(world, agent, writ=writ.name, runtime=row.runtime if row else "",
                        state="failed")
        escalate(store, world, writ.name, message, source="Sentinel")
        store.event("failed", kind="Writ", world=world, name=writ.name, message=message,
                    agent=agent, respawns=respawns)
    return True


def _retry_failed(sphere: Sphere, action: Action) -> bool:
    """Re-drive a writ Failed for an infrastructure reason once its retryFailedAfter
    backoff is over (core.redrive, as `sol retry` does); the consul casts it again."""
    d = action.data
    spec = _spec(sphere, d["world"])
    writ = sphere.store.get("Writ", d["world"], d["writ"])
    if spec is None or writ is None or not spec.retry_failed_after:
        return False
    due = retry_due(writ, spec.retry_failed_after)
    if due is None or time.time() < due:
        return False
    waited = format_duration(int(time.time() - float(writ.status.get("failedAt")
                                                      or writ.updated_at)))
    return redrive(sphere.store, writ.key, reason="RetryFailedAfter",
                   by="sentinel (retryFailedAfter)", expect_version=d["version"],
                   message=f"re-driven {waited} after it failed ({writ.reason}): cast again "
                           "on its kept branch, attempts counted afresh") is not None


def _nudge_session(sphere: Sphere, action: Action) -> bool:
    d, store = action.data, sphere.store
    spec = _spec(sphere, d["world"])
    writ = _current(sphere, action)
    if spec is None or writ is None or _nudge(writ.status, d["session"]) is not None:
        return False
    silent = format_duration(int(spec.stall_after))
    text = (TURN_NUDGE if d.get("hooks") else NUDGE).format(after=silent)
    try:
        sphere.sessions.send_text(session_name(d["world"], d["agent"]), text)
    except SolError:
        return False  # it died meanwhile: the next pass sees the death
    now = time.time()
    with store.transaction():
        writ = _current(sphere, action)
        if writ is None:
            return False
        store.set_status(writ.key, nudge={"session": d["session"], "at": now})
        store.event("nudged", kind="Writ", world=d["world"], name=d["writ"],
                    message=f"agent {d['agent']} silent for {silent}: nudged", agent=d["agent"],
                    session=d["session"])
    return True


def _stall(sphere: Sphere, action: Action) -> bool:
    d, store = action.data, sphere.store
    spec = _spec(sphere, d["world"])
    with store.transaction():
        writ = _current(sphere, action)
        nudge = _nudge(writ.status, d["session"]) if writ else None
        if spec is None or writ is None or nudge is None or nudge.get("stalled"):
            return False
        silent = format_duration(int(spec.stall_after))
        message = (f"agent {d['agent']} has printed nothing for {silent} "
                   f"since it was nudged; see `sol logs {d['agent']}` or "
                   f"`sol attach {d['agent']}`")
        store.set_status(writ.key, nudge={**nudge, "stalled": True, "stalledAt": time.time()},
                         conditions=with_condition(writ.status, "Stalled", True, "NoOutput",
                                                   message))
        escalate(store, d["world"], d["writ"], message, source="Sentinel")
        store.event("stalled", kind="Writ", world=d["world"], name=d["writ"], message=message,
                    agent=d["agent"], session=d["session"])
    return True


def _clear(sphere: Sphere, action: Action, *, field: str, condition: str, reason: str,
           message: str, event: str) -> bool:
    """The agent works again: drop `field` from the writ's status, set `condition` False
    if it was True, and record `event`; nothing when `field` is already gone."""
    d, store = action.data, sphere.store
    with store.transaction():
        writ = _current(sphere, action)
        if writ is None or not writ.status.get(field):
            return False
        extra: dict[str, Any] = {}
        if any(c.get("type") == condition and c.get("status") == "True"
               for c in writ.status.get("conditions") or []):
            extra["conditions"] = with_condition(writ.status, condition, False, reason, message)
        store.set_status(writ.key, **{field: None}, **extra)
        store.event(event, kind="Writ", world=d["world"], name=d["writ"],
                    message=action.description, agent=d["agent"], session=d["session"])
    return True


def _unstall(sphere: Sphere, action: Action) -> bool:
    return _clear(sphere, action, field="nudge", condition="Stalled", reason="OutputResumed",
                  message="the agent prints again", event="output-resumed")


def _rate_limit_cleared(sphere: Sphere, action: Action) -> bool:
    return _clear(sphere, action, field="rateLimit", condition="RateLimited",
                  reason="Working", message="the agent works again",
                  event="rate-limit-cleared")


def _rate_limited(sphere: Sphere, action: Action) -> bool:
    """RateLimited on the writ, and the world holds new casts until the limit resets:
    no nudge, no escalation, no respawn (the agent is alive and waits)."""
    d, store = action.data, sphere.store
    world, until = d["world"], float(d["until"])
    with store.transaction():
        writ = _current(sphere, action)
        limited = writ.status.get("rateLimit") if writ else None
        if writ is None or (isinstance(limited, dict) and limited.get("at") == d["at"]):
            return False
        when = rfc3339(until)
        said = d.get("said") or d["error"]
        message = (f"agent {d['agent']} is rate limited by the model API ({said}); it waits, "
                   f"and world {world} casts no new agent until {when}")
        store.set_status(writ.key, rateLimit={"at": d["at"], "until": until,
                                              "error": d["error"]},
                         conditions=with_condition(writ.status, "RateLimited", True,
                                                   "RateLimitError", message))
        record = store.get("World", "", world)
        if record is not None and float(record.status.get("rateLimitedUntil") or 0) < until:
            store.set_status(record.key, rateLimitedUntil=until)
        store.event("rate-limited", kind="Writ", world=world, name=d["writ"], message=message,
                    agent=d["agent"], session=d["session"], until=until, error=d["error"])
    return True


def _rate_limit_over(sphere: Sphere, action: Action) -> bool:
    """The limit has reset: tell the agent to go on (once a minute at most)."""
    d, store = action.data, sphere.store
    writ = _current(sphere, action)
    limited = writ.status.get("rateLimit") if writ else None
    if writ is None or not isinstance(limited, dict) or limited.get("at") != d["at"]:
        return False
    if time.time() < float(limited.get("sentAt") or 0.0) + sphere.config.rate_limit_hold:
        return False
    try:
        sphere.sessions.send_text(session_name(d["world"], d["agent"]), GO_ON)
    except SolError:
        return False
    store.set_status(writ.key, rateLimit={**limited, "sentAt": time.time()})
    store.event("rate-limit-over", kind="Writ", world=d["world"], name=d["writ"],
                message=f"agent {d['agent']} told to go on: the rate limit has reset",
                agent=d["agent"], session=d["session"])
    return True


def _stop_zombie(sphere: Sphere, action: Action) -> bool:
    d, store = action.data, sphere.store
    world, agent = d["world"], d["agent"]
    name = session_name(world, agent)
    with _lock(sphere, world):
        if not sphere.sessions.exists(name):
            return False
        has_file, view = read_tether(sphere, world, agent)
        writ = store.get("Writ", world, view.writ) if view else None
        if has_file and (view is None or writ is None or writ.phase not in ENDED):
            return False  # a tether appeared, or its writ is live again
        sphere.sessions.stop(name)
        store.event("zombie-stopped", kind="Outpost", world=world, name=agent,
                    message=f"session {name} stopped: {d['why']}", session=name)
    return True


def _remove_orphan(sphere: Sphere, action: Action) -> bool:
    d, store, home = action.data, sphere.store, sphere.home
    world, agent = d["world"], d["agent"]
    spec = _spec(sphere, world)
    with _lock(sphere, world):
        if spec is None or not unowned(sphere, world, agent):
            return False
        seen = orphan_view(sphere, world, spec, agent)
        if seen.head != d["head"] or not seen.merged or seen.dirty:
            return False
        path = home.worktree(world, agent)
        worktrees.remove_worktree(home.repo(world), path, force=False)
        try:
            home.outpost(world, agent).rmdir()
        except OSError:
            pass  # something else lives there: keep the directory
        store.event("orphan-removed", kind="Outpost", world=world, name=agent,
                    message=f"worktree {path} had no writ and its work ({str(d['head'])[:12]}) "
                    f"is on {spec.branch}: removed", head=d["head"])
    return True


def _report_orphan(sphere: Sphere, action: Action) -> bool:
    d = action.data
    spec = _spec(sphere, d["world"])
    path = sphere.home.worktree(d["world"], d["agent"])
    what = "uncommitted changes" if d["dirty"] else "commits"
    branch = spec.branch if spec else "the target"
    head = str(d["head"] or "unknown")[:12]
    sphere.store.event(
        "orphan-worktree", kind="Outpost", world=d["world"], name=d["agent"],
        message=f"worktree {path} (HEAD {head}) has no writ and holds {what} not on "
        f"{branch}: kept; inspect it, then land or remove it yourself",
        head=d["head"], dirty=d["dirty"])
    return True


def _resolve_from_node(sphere: Sphere, action: Action) -> bool:
    """A resolve an agent made on its node: the branch it pushed comes into the clone
    (the forge lands from there), then the store moves as for a local `sol resolve`."""
    d, home = action.data, sphere.home
    world, agent = d["world"], d["agent"]
    with _lock(sphere, world):
        writ, spec = _current(sphere, action), _spec(sphere, world)
        if writ is None or spec is None:
            return False
        path = home.tether(world, agent)
        t = tether.read(path)
        if t.writ != writ.name or t.session != d["session"]:
            return False
        repo = home.repo(world)
        tip = node_workspace.fetch_branch(
            repo, node_workspace.remote_of(repo, spec.sessions.remote), t.branch)
        if not worktrees.is_ancestor(repo, d["head"], tip):
            raise SolError(f"agent {agent} resolved {t.branch} at {d['head'][:12]}, but the "
                           f"world's remote holds {tip[:12]}, which does not contain it")
        resolve_recorded(sphere, t, writ, int(d.get("ahead") or 1))
        tether.clear(path)
    sphere.sessions.stop(session_name(world, agent))
    return True


def _escalate_from_node(sphere: Sphere, action: Action) -> bool:
    d = action.data
    with _lock(sphere, d["world"]):
        writ = _current(sphere, action)
        if writ is None or d["request"] in (writ.status.get("nodeRequests") or ()):
            return False
        done = [*(writ.status.get("nodeRequests") or ()), d["request"]][-20:]
        if sphere.store.set_status(writ.key, expect_version=writ.version,
                                   nodeRequests=done) is None:
            return False
        escalate(sphere.store, d["world"], d["writ"], d["message"], source="Agent")
    return True


ACTS = {
    "resolve-from-node": _resolve_from_node, "escalate-from-node": _escalate_from_node,
    "record-death": _record_death, "respawn": _respawn, "fail": _fail,
    "nudge": _nudge_session, "stall": _stall, "unstall": _unstall,
    "rate-limited": _rate_limited, "rate-limit-over": _rate_limit_over,
    "rate-limit-cleared": _rate_limit_cleared,
    "stop-zombie": _stop_zombie, "remove-orphan": _remove_orphan,
    "report-orphan": _report_orphan, "retry-failed": _retry_failed,
}


def act(sphere: Sphere, action: Action) -> bool:
    """Run one action; a failure is an event (once per message), never the end of a pass."""
    try:
        return ACTS[action.kind](sphere, action)
    except SolError as exc:
        d = action.data
        name = d.get("writ") or d.get("agent") or ""
        last = sphere.store.events(world=d["world"], name=name, types=["sentinel-error"],
                                   limit=1)
        if not last or last[-1].message != exc.message:
            sphere.store.event("sentinel-error", kind="Writ" if d.get("writ") else "Outpost",
                               world=d["world"], name=name, message=exc.message,
                               action=action.kind)
        return False


# ---- entry points ----------------------------------------------------------------
