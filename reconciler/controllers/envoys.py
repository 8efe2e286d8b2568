"""Envoys: persistent, human-directed agents that sol keeps alive (DESIGN section 2).

Envoy `shop/planner` lives in `worlds/shop/envoys/planner/`: `worktree/` on branch
`envoy/planner` (cut from the world's target branch in its clone, or from HEAD of
`spec.specsRepo` with `spec.specs: true`; reused as it is whenever it exists), `memory/`
outside the worktree ($SOL_MEMORY; sol never deletes it), and `persona.md` ($SOL_PERSONA):
a station header, then the persona file found by `reconciler.drivers.personas` (project, user,
then sol's own). For claude and codex it also goes to CLAUDE.local.md / AGENTS.override.md,
excluded from git. Session and agent names: `reconciler.drivers.envoy_names`.

Observe one world (one list-sessions), plan (pure, `envoys_plan`), act under the world's
envoy lock; the world's sentinel child runs it. A missing session is started; a death is
recorded once per session id and respawned after 1 s doubling to 60 s (back to 1 s once a
session ran STABLE seconds), never while the sphere is degraded. sol never resolves or
reaps an envoy: `suspend: true` or a prune stops the session and keeps the rest; a changed
spec restarts it.
"""

from __future__ import annotations

import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from reconciler.controllers.base import Reconciler, Scope
from reconciler.controllers.envoys_plan import EnvoysView, EnvoyView, backoff, plan, stop_reason
from reconciler.core import degraded
from reconciler.core.errors import SolError
from reconciler.core.home import Home
from reconciler.core.locks import flock
from reconciler.core.model import ERROR, PENDING, RUNNING, SUSPENDED, EnvoySpec, Runtime, WorldSpec
from reconciler.core.plan import Action, sooner
from reconciler.core.store import Record
from reconciler.drivers import backup, hook, personas, runtimes, worktrees
from reconciler.drivers.envoy_names import agent_name, envoy_dir, session_of
from reconciler.drivers.runtimes import claude
from reconciler.drivers.sphere import Sphere
from reconciler.specs import sources
from reconciler.specs.changes import SOURCE_META

STABLE = 120.0  # seconds a session must run before its death no longer counts as a crash loop
RUNTIMES = ("claude", "codex", "command")
_INHERITED = ("TMUX", "TMUX_PANE", "SOL_WRIT", "SOL_AGENT", "SOL_TETHER", "SOL_SESSION",
              "SOL_ATTEMPT")


class EnvoyError(SolError):
    """Why an envoy cannot start; `reason` becomes its status reason."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


# ---- observe ---------------------------------------------------------------------


def specs_source(sphere: Sphere, record: Record) -> tuple[Path, str]:
    """The specs repository of a `specs: true` envoy and its specs directory: specsRepo,
    else the local git source the manifests were applied from (`-f git+REPO@REF#DIR`)."""
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


def observe(sphere: Sphere, world: str) -> EnvoysView:
    """The world's envoys, their sessions (one tmux call, none without envoys), the world
    record, their sources and whether the sphere is degraded."""
    records = sphere.store.list("Envoy", world)
    listing = sphere.sessions.list("sol-") if records else {}
    record = sphere.store.get("World", "", world)
    views = []
    for r in records:
        alive = listing.get(session_of(r.world, r.name))
        # A live session needs no source: spare the git look-up on every pass.
        views.append(EnvoyView(r, record, alive is True or _source_ready(sphere, r), alive))
    return EnvoysView(world, tuple(views), time.time(), degraded.state(sphere.store) is not None)


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
    if record is None or world is None or stop_reason(record):
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
    ending = sphere.sessions.ending(name)
    how = f" ({ending})" if ending else ""
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
    why = stop_reason(record) if record else None
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


def act(sphere: Sphere, action: Action) -> bool:
    """One action under the world's envoy lock; a failure is an event, never the end of
    a pass."""
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


RECONCILER = Reconciler(name="envoys", scope=Scope.WORLD, owner="sentinel",
                        observe=observe, plan=plan, act=act)


def _worlds(sphere: Sphere, world: str | None) -> list[str]:
    """`world`, else every world with envoys or a record (an envoy of a world not
    applied is told so in its status)."""
    if world is not None:
        return [world]
    return sorted({r.world for r in sphere.store.list("Envoy")}
                  | {w.name for w in sphere.store.list("World")})


def reconcile(sphere: Sphere, world: str | None = None) -> list[Action]:
    """One pass over the envoys of `world` (all when None); the actions carried out."""
    return [a for key in _worlds(sphere, world)
            for a in RECONCILER.reconcile(sphere, key).actions]


def requeue_after(sphere: Sphere, world: str | None = None) -> float | None:
    """Seconds until an envoy's backoff ends (None: nothing is due)."""
    return sooner(*(RECONCILER.planned(sphere, key).requeue_after
                    for key in _worlds(sphere, world)))
