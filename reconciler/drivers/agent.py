"""What agents call from inside their session: prime, resolve, escalate.

Invariant 2: `prime` needs only the tether. `resolve` carries the tether's generation
and session id; a signal from an older session of the same writ is refused, never
applied to a newer one.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from reconciler.core import tether
from reconciler.core.conditions import escalate as record_escalation
from reconciler.core.conditions import with_condition
from reconciler.core.errors import SolError
from reconciler.core.home import Home, session_name
from reconciler.core.model import DONE, RESOLVED, WORKING
from reconciler.core.records import Record
from reconciler.drivers import node_workspace, worktrees
from reconciler.drivers.sphere import Sphere


def find_tether() -> Path:
    """$SOL_TETHER, or the tether beside the worktree the cwd is in."""
    env = os.environ.get("SOL_TETHER")
    if env:
        return Path(env)
    here = Path.cwd().resolve()
    for parent in (here, *here.parents):
        if parent.name == "worktree" and (parent.parent / "tether.json").exists():
            return parent.parent / "tether.json"
    raise SolError(
        "no tether found: `sol prime`, `sol resolve` and `sol escalate` run inside an agent "
        "session (SOL_TETHER is not set and the current directory is not an outpost worktree)"
    )


def prime() -> str:
    """The assignment text, from the tether alone; notes the primed generation if it can."""
    path = find_tether()
    t = tether.read(path)
    home = Home.from_env()
    if home.db.exists():
        try:
            sphere = Sphere(home)
            record = sphere.store.get("Writ", t.world, t.writ)
            if record and record.status.get("session") == t.session:
                sphere.store.set_status(record.key, observed_generation=t.generation,
                                        primedAt=time.time())
            sphere.close()
        except Exception:  # noqa: BLE001 - prime must work whatever state the db is in
            pass
    on_node = os.environ.get("SOL_WORKTREE") if node_workspace.outbox() else None
    return tether.render(t, worktree=Path(on_node) if on_node
                         else home.worktree(t.world, t.agent))


def _identity(t: tether.Tether) -> tuple[str, str]:
    return f"sol agent {t.agent}", f"{t.agent}@{t.world}.sol"


def _check_current(sphere: Sphere, t: tether.Tether):  # noqa: ANN202 - Record
    record = sphere.store.get("Writ", t.world, t.writ)
    if record is None:
        raise SolError(f"writ {t.world}/{t.writ} is not in the database; nothing recorded")
    env_session = os.environ.get("SOL_SESSION")
    current = record.status.get("session")
    if current != t.session or (env_session and env_session != current):
        raise SolError(
            f"stale signal refused: this session ({env_session or t.session}) is not the "
            f"current session of writ {t.world}/{t.writ} ({current or 'none'})"
        )
    if record.phase != WORKING:
        raise SolError(f"writ {t.world}/{t.writ} is {record.phase}, not Working; "
                       "nothing to resolve")
    return record


def _agent_conditions_ended(record: Record) -> dict[str, Any]:
    """Status changes for a writ whose agent is done: a RateLimited it still shows (the
    agent went on and resolved before the sentinel saw its new turn) is over."""
    conditions = record.status.get("conditions") or []
    if not any(c.get("type") == "RateLimited" and c.get("status") == "True"
               for c in conditions):
        return {}
    return {"rateLimit": None, "conditions": with_condition(
        record.status, "RateLimited", False, "Resolved", "the agent resolved the writ")}


def _commit_the_rest(t: tether.Tether, worktree: Path) -> int:
    """Commit what is left in the worktree; the commits beyond the base (a code writ
    with none is refused)."""
    name, email = _identity(t)
    worktrees.commit_all(worktree, f"{t.title}\n\nCommitted by sol resolve.",
                         author_name=name, author_email=email)
    ahead = worktrees.commits_beyond(worktree, t.branch, t.base)
    if t.kind == "code" and ahead == 0:
        raise SolError(
            f"branch {t.branch} has no commit beyond its base {t.base[:12]}: commit your work "
            "before `sol resolve`, or `sol escalate \"why\"` if there is nothing to do"
        )
    return ahead


def resolve(*, end_session: bool = True) -> str:
    """Commit what is left, hand the branch on (MR or Done), clear the tether, end the
    session last. On a node that shares no disk with the daemon: push the branch and
    leave the request in the outbox, which the sentinel applies (resolve_recorded)."""
    path = find_tether()
    t = tether.read(path)
    box = node_workspace.outbox()
    if box is not None:
        worktree = Path(os.environ.get("SOL_WORKTREE") or Path.cwd())
        ahead = _commit_the_rest(t, worktree)
        head = node_workspace.push(worktree, t.branch)
        node_workspace.request(box, "resolve", t.session, head=head, ahead=ahead,
                               attempt=t.attempt)
        return (f"resolved: {t.branch} pushed ({ahead} commit(s)); sol queues the merge "
                "request and ends this session")
    sphere = Sphere.from_env()
    record = _check_current(sphere, t)
    ahead = _commit_the_rest(t, sphere.home.worktree(t.world, t.agent))
    text = resolve_recorded(sphere, t, record, ahead)
    tether.clear(path)
    if end_session:
        print(text, flush=True)
        sphere.sessions.stop(session_name(t.world, t.agent))
    return text


def resolve_recorded(sphere: Sphere, t: tether.Tether, record: Record, ahead: int) -> str:
    """The store's half of a resolve (MR or Done, event, agent row), for the agent's own
    `sol resolve` and for one the sentinel carries back from a node; what to tell."""
    worktree = sphere.home.worktree(t.world, t.agent)
    key = record.key
    store = sphere.store
    ended = _agent_conditions_ended(record)
    with store.transaction():
        if t.kind == "code":
            done = store.set_status(key, phase=RESOLVED, reason="Resolved",
                                    message=f"merge request queued ({ahead} commit(s))",
                                    expect_version=record.version, resolvedAt=time.time(),
                                    session=None, **ended)
            if done is None:
                raise SolError(f"writ {t.world}/{t.writ} changed while resolving; try again")
            store.add_mr(t.world, t.writ, branch=t.branch, base=t.base, agent=t.agent,
                         attempt=t.attempt, priority=int(record.spec.get("priority", 2)))
            text = f"resolved: merge request queued for {t.branch} ({ahead} commit(s))"
        else:
            done = store.set_status(key, phase=DONE, reason="Done", message="analysis done",
                                    expect_version=record.version, resolvedAt=time.time(),
                                    session=None, **ended)
            if done is None:
                raise SolError(f"writ {t.world}/{t.writ} changed while resolving; try again")
            text = "done: analysis writ finished"
        store.event("resolved", kind="Writ", world=t.world, name=t.writ, message=text,
                    agent=t.agent, attempt=t.attempt)
    if t.kind == "code":
        store.put_agent(t.world, t.agent, writ=t.writ, session="", runtime="", state="resolved")
    else:
        try:
            worktrees.remove_worktree(sphere.home.repo(t.world), worktree, force=False)
        except SolError:
            pass
        store.free_agent(t.world, t.agent)
    return text


def escalate(message: str) -> str:
    path = find_tether()
    t = tether.read(path)
    box = node_workspace.outbox()
    if box is not None:
        node_workspace.request(box, "escalate", t.session, message=message)
        return f"escalated writ {t.world}/{t.writ} (sol carries it from this node): {message}"
    sphere = Sphere.from_env()
    record_escalation(sphere.store, t.world, t.writ, message, source="Agent")
    return f"escalated writ {t.world}/{t.writ}: {message}"
