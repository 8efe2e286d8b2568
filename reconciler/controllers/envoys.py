"""Envoys: persistent, human-directed agents that sol keeps alive (DESIGN section 2).

Envoy `shop/planner` lives in `worlds/shop/envoys/planner/`: `worktree/` on branch
`envoy/planner` (cut from the world's target branch in its clone, or from HEAD of
`spec.specsRepo` with `spec.specs: true`; reused as it is whenever it exists), `memory/`
outside the worktree ($SOL_MEMORY; sol never deletes it), and `persona.md` ($SOL_PERSONA):
a station header, then the persona file found by `reconciler.drivers.personas` (project, user,
then sol's own). For claude and codex it also goes to CLAUDE.local.md / AGENTS.override.md,
excluded from git.

Session names: `outposts.parse_session` splits `sol-<world>-<agent>` at the last hyphen
and tmux refuses `.` and `:`, so the agent name is `envoy_` plus the envoy's name with
`-` turned into `_` (names never hold `_`: reversible). `sol-shop-envoy_lead_planner`
parses as (`shop`, `envoy_lead_planner`), which the sentinel and the capacity count skip
(agents starting with `envoy`): envoys never count toward capacity.

Observe (one list-sessions), plan (pure), act under the world's envoy lock. A missing
session is started; a death is recorded once per session id and respawned after 1 s
doubling to 60 s (back to 1 s once a session ran STABLE seconds), never while the sphere
is degraded. sol never resolves or reaps an envoy: `suspend: true` or a prune stops the
session and keeps the rest; a changed spec restarts it.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reconciler.core import degraded
from reconciler.core.errors import SolError
from reconciler.core.home import Home, session_name
from reconciler.core.locks import flock
from reconciler.core.model import ERROR, PENDING, RUNNING, SUSPENDED, EnvoySpec, Runtime, WorldSpec
from reconciler.core.plan import CREATE, DELETE, NOTE, UPDATE, Action
from reconciler.core.store import Record
from reconciler.drivers import backup, hook, personas, runtimes, worktrees
from reconciler.drivers.runtimes import claude
from reconciler.drivers.sphere import Sphere
from reconciler.specs.changes import target

BACKOFF_MAX = 60.0
STABLE = 120.0  # seconds a session must run before its death no longer counts as a crash loop
PENDING_RETRY = 1.0
RUNTIMES = ("claude", "codex", "command")
DEAD_PANE = "Pane is dead"
_INHERITED = ("TMUX", "TMUX_PANE", "SOL_WRIT", "SOL_AGENT", "SOL_TETHER", "SOL_SESSION",
              "SOL_ATTEMPT")


class EnvoyError(SolError):
    """Why an envoy cannot start; `reason` becomes its status reason."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def backoff(failures: int) -> float:
    """Seconds before the next start after `failures` quick deaths or failed starts."""
    return min(BACKOFF_MAX, 2.0 ** max(0, failures - 1))


def agent_name(name: str) -> str:
    return "envoy_" + name.replace("-", "_")


def session_of(world: str, name: str) -> str:
    return session_name(world, agent_name(name))


def envoy_dir(home: Home, world: str, name: str) -> Path:
    return home.world_dir(world) / "envoys" / name


# ---- plain values the planner sees ------------------------------------------------


@dataclass(frozen=True)
class EnvoyView:
    record: Record
    world: Record | None
    source_ready: bool       # the world's clone (or the specs repository) is there
    session: bool | None     # None: no session; True: alive; False: dead pane


@dataclass(frozen=True)
class EnvoyPlan:
    actions: tuple[Action, ...]
    next_at: float | None


def _stop_reason(record: Record) -> str | None:
    if record.status.get("retired"):
        return "Pruned"
    return "Suspended" if record.spec.get("suspend") else None


def _act(op: str, kind: str, r: Record, text: str, **data: Any) -> Action:
    return Action(op, kind, target("Envoy", r.world, r.name), text,
                  {"world": r.world, "name": r.name, "version": r.version, **data})


def _wait(r: Record, phase: str, reason: str, message: str) -> list[Action]:
    if (r.phase, r.reason, r.message) == (phase, reason, message):
        return []
    return [_act(NOTE, "wait", r, message, phase=phase, reason=reason, message=message)]


def plan_envoy(v: EnvoyView, now: float, *, is_degraded: bool
               ) -> tuple[list[Action], float | None]:
    """Pure: what one envoy needs, and when to look again (None: on the next event)."""
    r, st = v.record, v.record.status
    why = _stop_reason(r)
    if why is not None:
        if v.session is not None or (r.phase, r.reason) != (SUSPENDED, why):
            return [_act(DELETE, "stop", r, f"stop the session ({why.lower()}); worktree, "
                         "branch and memory kept", why=why)], None
        return [], None
    if v.world is None:
        return _wait(r, ERROR, "WorldNotApplied", f"world {r.world} is not applied: apply "
                     "its World manifest"), None
    # A failed start waits out its backoff, unless the spec changed since (a fix).
    due = float(st.get("notBefore") or 0.0) if r.observed_generation == r.generation else 0.0
    if v.session is True:
        if not st.get("sessionId") or not st.get("startedGeneration"):
            return [_act(UPDATE, "adopt", r, "adopt the running session")], None
        if st["startedGeneration"] != r.generation:
            if now < due:
                return [], due  # the restart failed: the old session goes on meanwhile
            return [_act(UPDATE, "restart", r, "spec changed: restart the session (worktree "
                         "and memory kept)")], None
        if r.phase != RUNNING:
            return [_act(UPDATE, "adopt", r, "the session runs: Running")], None
        return [], None
    sid = st.get("sessionId")
    if sid and st.get("deadSession") != sid:
        return [_act(UPDATE, "record-death", r, f"session {sid} died", session=sid)], None
    if not v.source_ready:
        where = "the specs repository" if r.spec.get("specs") else f"the clone of {r.world}"
        return _wait(r, PENDING, "WaitingForSource", f"waiting for {where}"), None
    if is_degraded:
        return _wait(r, PENDING, "Degraded", "not started while the sphere is degraded "
                     "(`sol resume` to resume)"), None
    if now < due:
        return [], due
    kind = "respawn" if sid else "start"
    return [_act(CREATE, kind, r, f"{kind} the session in its worktree")], None


def plan_envoys(views: Sequence[EnvoyView], now: float, *, is_degraded: bool) -> EnvoyPlan:
    actions: list[Action] = []
    wakes: list[float] = []
    for v in sorted(views, key=lambda v: (v.record.world, v.record.name)):
        found, wake = plan_envoy(v, now, is_degraded=is_degraded)
        actions += found
        wakes += [wake] if wake is not None else []
    return EnvoyPlan(tuple(actions), min(wakes) if wakes else None)


# ---- observe ---------------------------------------------------------------------


def specs_source(sphere: Sphere, record: Record) -> tuple[Path, str]:
    """The specs repository of a `specs: true` envoy and its specs directory: specsRepo,
    else the local git source the manifests were applied from (`-f git+REPO@REF#DIR`)."""
    from reconciler.controllers.engine import SOURCE_META
    from reconciler.specs import sources

    text = sphere.store.get_meta(SOURCE_META) or ""
    try:
        applied = sources.parse(text).absolute() if text else None
    except SolError:
        applied = None
    local = applied if applied is not None and not applied.remote else None
    given = record.spec.get("specsRepo")
    if given:
        repo = Path(str(given)).expanduser().absolute()
        same = local is not None and Path(local.repo) == repo
        return repo, (local.dir or ".") if same and local else "specs"
    if local is None:
        raise EnvoyError("NoSpecsRepo", f"envoy {record.world}/{record.name} has specs: true "
                         "but the manifests were not applied from a local git source "
                         "(sol apply -f git+REPO@REF#DIR): set spec.specsRepo")
    return Path(local.repo), local.dir or "."


def _source_ready(sphere: Sphere, record: Record) -> bool:
    if not record.spec.get("specs"):
        return worktrees.is_clone(sphere.home.repo(record.world))
    try:
        return worktrees.is_clone(specs_source(sphere, record)[0])
    except EnvoyError:
        return True  # let the start say why, in the status


def observe(sphere: Sphere, records: Sequence[Record]) -> list[EnvoyView]:
    """The envoys' sessions (one tmux call), worlds and sources; nothing when none."""
    if not records:
        return []
    listing = sphere.sessions.list("sol-")
    worlds = {w.name: w for w in sphere.store.list("World")}
    views = []
    for r in records:
        alive = listing.get(session_of(r.world, r.name))
        # A live session needs no source: spare the git look-up on every pass.
        views.append(EnvoyView(r, worlds.get(r.world), alive is True or _source_ready(sphere, r),
                               alive))
    return views


# ---- the persona and the launch ---------------------------------------------------


def envoy_env(home: Home, record: Record, memory: Path, persona: Path) -> dict[str, str]:
    """The session's environment: sol's, without the caller's tmux or writ variables."""
    env = {k: v for k, v in os.environ.items() if k not in _INHERITED}
    identity, email = f"sol envoy {record.name}", f"{record.name}.envoy@{record.world}.sol"
    env.update({
        "SOL_HOME": str(home.root.absolute()), "SOL_WORLD": record.world,
        "SOL_ENVOY": record.name, "SOL_MEMORY": str(memory), "SOL_PERSONA": str(persona),
        "PATH": runtimes.session_path(env.get("PATH", "")),
        "GIT_AUTHOR_NAME": identity, "GIT_AUTHOR_EMAIL": email,
        "GIT_COMMITTER_NAME": identity, "GIT_COMMITTER_EMAIL": email,
    })
    return env


def build_launch(runtime: Runtime, record: Record, *, env: dict[str, str], worktree: Path,
                 text: str, respawn: bool, station: Path, home: Home) -> runtimes.Launch:
    """argv (never a shell string built from manifest data), env and persona file; a
    respawned claude resumes the envoy's conversation."""
    if runtime.name == "command":
        return runtimes.Launch(["bash", "-c", runtime.command or ""], env)
    seen = hook.read(station / hook.CONVERSATION) or {} if respawn else {}
    resume = str(seen.get("id") or "") or None if runtime.name == "claude" else None
    prompt = ((claude.RESUMED if resume else
               "Your previous session ended; sol started this one in the same worktree. ")
              if respawn else "") + ("" if resume else claude.ENVOY_KICKOFF)
    name = runtimes.PERSONA_FILES[runtime.name]
    text += f"\n---\n\nDo not commit {name}: it is excluded from git on purpose.\n"
    return runtimes.cli_launch(runtime, env=env, station=station, worktree=worktree,
                               home=home, text=text, prompt=prompt, resume=resume)


@dataclass(frozen=True)
class Prepared:
    """Everything a start needs, made on disk: worktree, memory, persona, launch."""

    launch: runtimes.Launch
    worktree: Path
    memory: Path
    base: str
    persona: Path
    runtime: str


def _runtime(spec: EnvoySpec, world: WorldSpec, label: str) -> Runtime:
    runtime = spec.runtime or world.runtime
    if runtime.name not in RUNTIMES:
        raise EnvoyError("BadRuntime", f"envoy {label} cannot run on the {runtime.name} "
                         "runtime (it runs writs): set spec.runtime to claude, codex or "
                         "command")
    try:
        runtimes.check(runtime)
    except SolError as exc:
        raise EnvoyError("RuntimeNotFound", exc.message) from exc
    return runtime


def prepare(sphere: Sphere, record: Record, world: Record, *, respawn: bool) -> Prepared:
    """Make the worktree (or reuse it), the memory and the persona; EnvoyError if not."""
    home, label = sphere.home, f"{record.world}/{record.name}"
    spec, wspec = EnvoySpec.from_spec(record.spec), WorldSpec.from_spec(world.spec)
    runtime = _runtime(spec, wspec, label)
    if spec.specs:
        (repo, specs), base = specs_source(sphere, record), "HEAD"
    else:
        repo, specs, base = home.repo(record.world), "specs", f"refs/heads/{wspec.branch}"
    root = envoy_dir(home, record.world, record.name)
    worktree, memory = root / "worktree", root / "memory"
    try:
        if not spec.specs:
            backup.ensure(repo)
        worktrees.add_worktree(repo, worktree, f"envoy/{record.name}", base)
    except SolError as exc:
        raise EnvoyError("WorktreeFailed", exc.message) from exc
    text, found = personas.find(spec.persona, worktree)
    shown = wspec.branch if not spec.specs else "HEAD of the specs repository"
    source = (f"the specs repository `{repo}`" if spec.specs
              else f"the repository of world `{record.world}`")
    full = personas.station(record.name, record.world, wspec, worktree=worktree,
                            memory=memory, base=shown, source=source, specs=specs) + text
    try:
        memory.mkdir(parents=True, exist_ok=True)
        (root / "persona.md").write_text(full, encoding="utf-8")
        launch = build_launch(runtime, record, env=envoy_env(home, record, memory,
                                                              root / "persona.md"),
                              worktree=worktree, text=full, respawn=respawn, station=root,
                              home=home)
        if launch.exclude:
            worktrees.exclude(worktree, launch.exclude)
        for rel, content in launch.files.items():
            (worktree / rel).write_text(content, encoding="utf-8")
    except OSError as exc:
        raise EnvoyError("StartFailed", f"cannot write the files of envoy {label}: "
                         f"{exc.strerror}") from exc
    return Prepared(launch, worktree, memory, shown, found, runtime.name)


# ---- act ---------------------------------------------------------------------------


def _fresh(sphere: Sphere, action: Action) -> Record | None:
    """The envoy again, if nothing changed it since the plan was made."""
    d = action.data
    record = sphere.store.get("Envoy", d["world"], d["name"])
    return record if record is not None and record.version == d["version"] else None


def _error(sphere: Sphere, record: Record, exc: SolError) -> None:
    """Error with the reason; retried after a backoff, or at once when the spec changes."""
    reason = str(getattr(exc, "reason", "StartFailed"))
    failures = int(record.status.get("failures") or 0) + 1
    sphere.store.set_status(record.key, phase=ERROR, reason=reason, message=exc.message,
                            observed_generation=record.generation, failures=failures,
                            notBefore=time.time() + backoff(failures))
    if (record.phase, record.message) != (ERROR, exc.message):
        sphere.store.event("envoy-error", kind="Envoy", world=record.world, name=record.name,
                           message=exc.message, reason=reason)


def _start(sphere: Sphere, action: Action) -> bool:
    d, store = action.data, sphere.store
    name = session_of(d["world"], d["name"])
    record = _fresh(sphere, action)
    world = store.get("World", "", d["world"])
    if record is None or world is None or _stop_reason(record):
        return False
    if action.kind != "restart" and sphere.sessions.is_alive(name):
        return False
    respawn = action.kind == "respawn"
    try:
        ready = prepare(sphere, record, world, respawn=respawn)
        if action.kind == "restart":
            sphere.sessions.stop(name)
        # The tmux server may have inherited a writ's variables from whoever started it.
        unset = [arg for var in _INHERITED if var.startswith("SOL_") for arg in ("-u", var)]
        for delay in (0.05, 0.1, 0.2, None) if action.kind == "restart" else (None,):
            try:
                sphere.sessions.start(
                    name, ["env", *unset, *ready.launch.argv], cwd=ready.worktree,
                    env=ready.launch.env,
                    log=sphere.home.agent_log(d["world"], agent_name(d["name"])))
                break
            except SolError:
                if delay is None:
                    raise
                time.sleep(delay)  # a server whose last session we just stopped is exiting
    except SolError as exc:
        _error(sphere, record, exc)
        return True
    sid, now = uuid.uuid4().hex[:12], time.time()
    restarts = int(record.status.get("restarts") or 0) + (1 if respawn else 0)
    reason = {"start": "Started", "respawn": "Respawned", "restart": "Restarted"}[action.kind]
    message = f"session {name} in {ready.worktree} on envoy/{d['name']}"
    store.set_status(
        record.key, phase=RUNNING, reason=reason, message=message,
        observed_generation=record.generation, agent=agent_name(d["name"]), session=name,
        sessionId=sid, branch=f"envoy/{d['name']}", base=ready.base,
        worktree=str(ready.worktree), memory=str(ready.memory), persona=record.spec["persona"],
        personaFile=str(ready.persona), runtime=ready.runtime, startedAt=now,
        startedGeneration=record.generation, restarts=restarts, deadSession=None,
        notBefore=None)
    store.put_agent(d["world"], agent_name(d["name"]), writ=None, session=sid,
                    runtime=ready.runtime, state="envoy")
    event = "envoy-respawned" if respawn else "envoy-started"
    store.event(event, kind="Envoy", world=d["world"], name=d["name"],
                message=f"{reason.lower()}: {message} (persona {ready.persona})",
                session=sid, previous=record.status.get("sessionId"), restarts=restarts)
    return True


def _how(output: str) -> str:
    """How the process ended (` (signal 9)`), from the line tmux's remain-on-exit adds."""
    dead = [line for line in output.splitlines() if line.startswith(DEAD_PANE)]
    return f" ({dead[-1][len(DEAD_PANE):].split(',')[0].strip('( ')})" if dead else ""


def _record_death(sphere: Sphere, action: Action) -> bool:
    d = action.data
    name = session_of(d["world"], d["name"])
    record = _fresh(sphere, action)
    if record is None or sphere.sessions.is_alive(name):
        return False
    try:
        output = sphere.sessions.recent_output(name, 200)
    except SolError:
        output = ""
    how = _how(output)
    now = time.time()
    ran = now - float(record.status.get("startedAt") or 0.0)
    failures = 1 if ran >= STABLE else int(record.status.get("failures") or 0) + 1
    delay = backoff(failures)
    held = " (held: the sphere is degraded)" if degraded.state(sphere.store) else ""
    message = f"session {name} died{how} after {int(ran)}s; respawn in {delay:g}s{held}"
    sphere.store.set_status(record.key, phase=PENDING, reason="SessionDied", message=message,
                            deadSession=d["session"], deadAt=now, failures=failures,
                            notBefore=now + delay)
    sphere.store.event("envoy-died", kind="Envoy", world=d["world"], name=d["name"],
                       message=message, session=d["session"], output=output[-2000:])
    return True


def _stop(sphere: Sphere, action: Action) -> bool:
    d, store = action.data, sphere.store
    name = session_of(d["world"], d["name"])
    record = _fresh(sphere, action)
    why = _stop_reason(record) if record else None
    if record is None or why is None:
        return False
    existed = sphere.sessions.exists(name)
    sphere.sessions.stop(name)
    what = "suspended" if why == "Suspended" else "removed from the manifests (pruned)"
    message = f"{what}: session stopped; worktree, branch envoy/{d['name']} and memory kept"
    store.set_status(record.key, phase=SUSPENDED, reason=why, message=message,
                     observed_generation=record.generation, sessionId=None,
                     deadSession=None, notBefore=None)
    row = store.agent(d["world"], agent_name(d["name"]))
    if row is not None:
        store.put_agent(d["world"], row.name, writ=None, runtime=row.runtime, state="stopped")
    if existed or record.phase != SUSPENDED:
        store.event("envoy-stopped", kind="Envoy", world=d["world"], name=d["name"],
                    message=message, reason=why)
    return True


def _adopt(sphere: Sphere, action: Action) -> bool:
    """A live session the status does not describe (a rebuilt store, a lost write)."""
    record = _fresh(sphere, action)
    name = session_of(action.data["world"], action.data["name"])
    if record is None or not sphere.sessions.is_alive(name):
        return False
    st = record.status
    sphere.store.set_status(
        record.key, phase=RUNNING, reason=record.reason if record.phase == RUNNING else
        "Running", message=f"session {name} running", session=name,
        observed_generation=st.get("startedGeneration") or record.generation,
        sessionId=st.get("sessionId") or uuid.uuid4().hex[:12],
        startedGeneration=st.get("startedGeneration") or record.generation,
        startedAt=st.get("startedAt") or time.time(), agent=agent_name(record.name))
    return True


def _set_wait(sphere: Sphere, action: Action) -> bool:
    record = _fresh(sphere, action)
    if record is None:
        return False
    d = action.data
    sphere.store.set_status(record.key, phase=d["phase"], reason=d["reason"],
                            message=d["message"], observed_generation=record.generation)
    return True


ACTS = {"start": _start, "respawn": _start, "restart": _start, "record-death": _record_death,
        "stop": _stop, "adopt": _adopt, "wait": _set_wait}


def _execute(sphere: Sphere, action: Action) -> bool:
    """One action under the world's envoy lock; a failure is an event, never the end of
    a pass (the sentinel runs this inside its own)."""
    d = action.data
    try:
        with flock(sphere.home.run / f"envoy-{d['world']}.lock"):
            return ACTS[action.kind](sphere, action)
    except SolError as exc:
        last = sphere.store.events(world=d["world"], name=d["name"], types=["envoy-error"],
                                   limit=1)
        if not last or last[-1].message != exc.message:
            sphere.store.event("envoy-error", kind="Envoy", world=d["world"], name=d["name"],
                               message=exc.message, action=action.kind)
        return False


# ---- entry points ----------------------------------------------------------------


def plan(sphere: Sphere, records: Sequence[Record] | None = None, world: str | None = None
         ) -> EnvoyPlan:
    """Observe and plan without acting: `sol diff` passes the records as they would be."""
    found = sphere.store.list("Envoy", world) if records is None else records
    views = observe(sphere, [r for r in found
                             if r.kind == "Envoy" and (world is None or r.world == world)])
    return plan_envoys(views, time.time(), is_degraded=degraded.state(sphere.store) is not None)


def reconcile(sphere: Sphere, world: str | None = None) -> list[Action]:
    """One pass over the envoys of `world` (all when None); the actions carried out."""
    return [a for a in plan(sphere, world=world).actions if _execute(sphere, a)]


def requeue_after(sphere: Sphere, world: str | None = None) -> float | None:
    """Seconds until an envoy's backoff ends (None: nothing is due)."""
    found = plan(sphere, world=world)
    if found.actions:
        return PENDING_RETRY
    return None if found.next_at is None else max(0.0, found.next_at - time.time())
