"""Envoys with real tmux, real git and real SQLite: started in their own worktree, kept
alive across kills, suspended, pruned, and refused with a clear status when they cannot
run. The `claude` they start is a stand-in on PATH that records how it was called and
sleeps; the `command` runtime runs `sleep`."""

from __future__ import annotations

import json
import os
import shlex
import signal
from pathlib import Path
from typing import Any

import pytest
from conftest import git, make_repo, poll
from helpers import world_yaml

from reconciler.controllers import envoys, envoys_plan, sentinel, worlds
from reconciler.core.home import Home
from reconciler.core.model import ERROR, PENDING, RUNNING, SUSPENDED, EnvoySpec
from reconciler.core.plan import CREATE, DELETE, NOTE, UPDATE, Action, Plan
from reconciler.core.store import Record
from reconciler.drivers import outposts, personas
from reconciler.drivers.envoy_names import envoy_dir, session_of
from reconciler.drivers.sphere import Sphere
from reconciler.specs import manifests
from reconciler.specs.record import record as record_specs

W = "shop"
ROOT = Path(__file__).resolve().parents[2]


def envoy_yaml(name: str, persona: str = "planner", runtime: Any = None, **spec: Any) -> str:
    doc = {"apiVersion": "sol/v1", "kind": "Envoy", "metadata": {"name": name, "world": W},
           "spec": {"persona": persona, **({"runtime": runtime} if runtime else {}), **spec}}
    return json.dumps(doc) + "\n"


SLEEPER = {"name": "command", "command": "sleep 600"}


def record(sphere: Sphere, docs: list[str], *, prune: bool = False) -> None:
    result = manifests.load_texts([("specs.yaml", "---\n".join(docs))])
    assert result.problems == []
    record_specs(sphere, result.manifests, prune=prune)


def setup(home: Home, repo: Path, *docs: str) -> Sphere:
    sphere = Sphere(home)
    record(sphere, [world_yaml(W, repo), *docs])
    worlds.reconcile(sphere)
    return sphere


def sentinel_child(sphere: Sphere) -> list[Action]:
    """One pass of the world's sentinel child: its envoys, then its sentinel."""
    return envoys.reconcile(sphere, W) + sentinel.reconcile(sphere, W)


def status(sphere: Sphere, name: str) -> Record:
    found = sphere.store.get("Envoy", W, name)
    assert found is not None
    return found


def events(sphere: Sphere, kind: str) -> list:
    return sphere.store.events(types=[kind])


@pytest.fixture
def fake_claude(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A `claude` on PATH that appends its cwd, branch, env and args to a file, then sleeps."""
    bindir, calls = tmp_path / "fakebin", tmp_path / "claude-calls"
    bindir.mkdir()
    script = bindir / "claude"
    script.write_text(
        "#!/bin/sh\n{ echo start; pwd; git branch --show-current; "
        'echo "env:$SOL_ENVOY:$SOL_WORLD:$SOL_MEMORY:$SOL_WRIT"; '
        'for a in "$@"; do echo "arg:$a"; done; echo end; } >> ' + shlex.quote(str(calls)) + "\n"
        "exec sleep 600\n")
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("SOL_WRIT", "leaked-from-the-caller")
    return calls


def starts(calls: Path) -> list[list[str]]:
    if not calls.exists():
        return []
    blocks = calls.read_text().split("start\n")[1:]
    return [b.splitlines()[:-1] for b in blocks if b.endswith("end\n")]


def test_an_envoy_starts_in_its_worktree_and_survives_a_kill(
        sol_home: Home, repo: Path, fake_claude: Path) -> None:
    sphere = setup(sol_home, repo,
                   envoy_yaml("planner", runtime={"name": "claude", "sandboxed": True}))
    done = sentinel_child(sphere)  # the sentinel child's pass keeps envoys alive
    assert [a.kind for a in done] == ["start"]
    session = "sol-shop-envoy_planner"
    [first] = poll(lambda: starts(fake_claude), what="the stand-in claude to start")
    root = sol_home.world_dir(W) / "envoys" / "planner"
    worktree, memory = root / "worktree", root / "memory"
    assert first[0] == str(worktree) and first[1] == "envoy/planner"
    assert first[2] == f"env:planner:{W}:{memory}:"  # SOL_WRIT of the caller not leaked
    assert "arg:--dangerously-skip-permissions" in first
    assert "CLAUDE.local.md" in first[-1] and "Your previous session" not in first[-1]
    persona = (worktree / "CLAUDE.local.md").read_text()
    assert "# sol envoy planner" in persona and "`sol validate`" in persona
    assert "never run `sol apply`" in persona.lower() and str(memory) in persona
    assert git(worktree, "status", "--porcelain") == ""  # excluded from git
    assert memory.is_dir() and persona.startswith((root / "persona.md").read_text())
    assert persona.endswith("excluded from git on purpose.\n")
    st = status(sphere, "planner")
    assert (st.phase, st.reason) == (RUNNING, "Started")
    assert st.status["branch"] == "envoy/planner" and st.status["session"] == session
    assert st.status["personaFile"] == str(personas.BUILTIN / "planner.md")
    assert outposts.live_counts(sphere) == {}  # envoys never count toward capacity
    assert sentinel_child(sphere) == [] and sphere.sessions.is_alive(session)

    (memory / "notes.md").write_text("remember the rate limits\n")
    (worktree / "plan.txt").write_text("draft\n")
    git(worktree, "add", "plan.txt")
    git(worktree, "commit", "-q", "-m", "draft plan")
    head = git(worktree, "rev-parse", "HEAD")
    os.kill(sphere.sessions.pane_pid(session), signal.SIGKILL)

    def respawned() -> Record | None:
        sentinel_child(sphere)
        now = status(sphere, "planner")
        return now if now.reason == "Respawned" and sphere.sessions.is_alive(session) else None

    after = poll(respawned, timeout=30, interval=0.1, what="the envoy to be respawned")
    assert after.status["sessionId"] != st.status["sessionId"]
    assert after.status["restarts"] == 1 and after.phase == RUNNING
    [died] = events(sphere, "envoy-died")
    assert "signal 9" in died.message and died.data["session"] == st.status["sessionId"]
    assert after.status["startedAt"] - died.ts >= 1.0  # the backoff was honoured
    assert len(events(sphere, "envoy-respawned")) == 1
    second = poll(lambda: len(starts(fake_claude)) == 2 and starts(fake_claude)[1])
    assert second[0] == str(worktree) and second[1] == "envoy/planner"
    assert "Your previous session ended" in second[-1]
    assert (memory / "notes.md").read_text() == "remember the rate limits\n"
    assert git(worktree, "rev-parse", "HEAD") == head  # the same worktree and branch

    sphere.sessions.stop(session)  # killing the whole session is a death too
    poll(lambda: (sentinel_child(sphere), status(sphere, "planner"))[1].status.get(
        "restarts") == 2 and sphere.sessions.is_alive(session), timeout=30, interval=0.1,
        what="a second respawn")
    assert git(worktree, "rev-parse", "HEAD") == head


def test_suspend_stops_the_session_and_keeps_worktree_and_memory(
        sol_home: Home, repo: Path) -> None:
    sphere = setup(sol_home, repo, envoy_yaml("eng", "engineer", SLEEPER))
    envoys.reconcile(sphere)
    session = session_of(W, "eng")
    assert sphere.sessions.is_alive(session)
    root = envoy_dir(sol_home, W, "eng")
    (root / "memory" / "notes.md").write_text("kept\n")
    record(sphere, [world_yaml(W, repo), envoy_yaml("eng", "engineer", SLEEPER, suspend=True)])
    assert [a.kind for a in envoys.reconcile(sphere)] == ["stop"]
    assert session not in sphere.sessions.list()
    st = status(sphere, "eng")
    assert (st.phase, st.reason) == (SUSPENDED, "Suspended") and "memory kept" in st.message
    assert (root / "memory" / "notes.md").read_text() == "kept\n"
    assert git(root / "worktree", "branch", "--show-current") == "envoy/eng"
    assert envoys.reconcile(sphere) == [] and len(events(sphere, "envoy-stopped")) == 1
    record(sphere, [world_yaml(W, repo), envoy_yaml("eng", "engineer", SLEEPER)])
    assert [a.kind for a in envoys.reconcile(sphere)] == ["start"]
    assert sphere.sessions.is_alive(session) and status(sphere, "eng").phase == RUNNING


def test_prune_stops_an_envoy_and_keeps_its_work_until_it_comes_back(
        sol_home: Home, repo: Path) -> None:
    sphere = setup(sol_home, repo, envoy_yaml("eng", "engineer", SLEEPER))
    envoys.reconcile(sphere)
    session = session_of(W, "eng")
    record(sphere, [world_yaml(W, repo)])  # without --prune: orphaned, still running
    assert envoys.reconcile(sphere) == [] and sphere.sessions.is_alive(session)
    record(sphere, [world_yaml(W, repo)], prune=True)
    assert [a.kind for a in envoys.reconcile(sphere)] == ["stop"]
    st = status(sphere, "eng")
    assert (st.phase, st.reason) == (SUSPENDED, "Pruned") and session not in sphere.sessions.list()
    root = envoy_dir(sol_home, W, "eng")
    assert (root / "worktree").is_dir() and (root / "memory").is_dir()
    assert git(sol_home.repo(W), "branch", "--list", "envoy/eng") != ""
    record(sphere, [world_yaml(W, repo), envoy_yaml("eng", "engineer", SLEEPER)])
    assert [a.kind for a in envoys.reconcile(sphere)] == ["start"]
    assert sphere.sessions.is_alive(session)


def test_a_changed_spec_restarts_the_session(sol_home: Home, repo: Path) -> None:
    sphere = setup(sol_home, repo, envoy_yaml("eng", "engineer", SLEEPER))
    envoys.reconcile(sphere)
    before = status(sphere, "eng").status["sessionId"]
    other = {"name": "command", "command": "sleep 601"}
    record(sphere, [world_yaml(W, repo), envoy_yaml("eng", "engineer", other)])
    assert [a.kind for a in envoys.reconcile(sphere)] == ["restart"]
    st = status(sphere, "eng")
    assert st.reason == "Restarted" and st.status["sessionId"] != before, st.message
    assert st.observed_generation == st.generation and envoys.reconcile(sphere) == []
    record(sphere, [world_yaml(W, repo), envoy_yaml("eng", "nobody", other)])
    assert [a.kind for a in envoys.reconcile(sphere)] == ["restart"]
    failed = status(sphere, "eng")
    assert (failed.phase, failed.reason) == (ERROR, "PersonaNotFound")
    assert failed.status["sessionId"] == st.status["sessionId"]  # the old session goes on
    assert sphere.sessions.is_alive(session_of(W, "eng"))
    assert envoys.reconcile(sphere) == []  # no retry storm: it waits out its backoff
    assert 0 < envoys.requeue_after(sphere) <= 1.0


def test_an_unknown_persona_is_an_error_naming_where_sol_looked(
        sol_home: Home, repo: Path) -> None:
    sphere = setup(sol_home, repo, envoy_yaml("eng", "nobody", SLEEPER))
    envoys.reconcile(sphere)
    st = status(sphere, "eng")
    worktree = envoy_dir(sol_home, W, "eng") / "worktree"
    assert (st.phase, st.reason) == (ERROR, "PersonaNotFound")
    assert str(worktree / ".sol/personas/nobody.md") in st.message
    assert str(Path.home() / ".config/sol/personas/nobody.md") in st.message
    assert str(personas.BUILTIN / "nobody.md") in st.message
    assert not sphere.sessions.exists(session_of(W, "eng"))
    envoys.reconcile(sphere)  # within the backoff: nothing new
    assert len(events(sphere, "envoy-error")) == 1
    record(sphere, [world_yaml(W, repo), envoy_yaml("eng", "engineer", SLEEPER)])
    assert [a.kind for a in envoys.reconcile(sphere)] == ["start"]  # a fix is tried at once
    assert status(sphere, "eng").phase == RUNNING


def test_the_script_runtime_cannot_run_an_envoy(sol_home: Home, repo: Path) -> None:
    sphere = setup(sol_home, repo, envoy_yaml("eng", "engineer"))  # the world runs script
    envoys.reconcile(sphere)
    st = status(sphere, "eng")
    assert (st.phase, st.reason) == (ERROR, "BadRuntime") and "spec.runtime" in st.message


def test_persona_lookup_prefers_project_then_user_then_sol(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    worktree = tmp_path / "wt"
    project = worktree / ".sol" / "personas" / "planner.md"
    user = Path.home() / ".config" / "sol" / "personas" / "planner.md"
    assert personas.find("planner", worktree)[1] == personas.BUILTIN / "planner.md"
    user.parent.mkdir(parents=True)
    user.write_text("user orders")
    assert personas.find("planner", worktree) == ("user orders", user)
    project.parent.mkdir(parents=True)
    project.write_text("project orders")
    assert personas.find("planner", worktree) == ("project orders", project)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    assert personas.places("x", worktree)[1] == tmp_path / "xdg/sol/personas/x.md"


def test_a_project_persona_is_used_and_specs_envoys_work_in_the_specs_repo(
        sol_home: Home, repo: Path, tmp_path: Path) -> None:
    specs_repo = make_repo(tmp_path / "shop-specs", {
        "specs/shop.yaml": world_yaml(W, repo),
        ".sol/personas/planner.md": "Project planner orders.\n"})
    sphere = setup(sol_home, repo, envoy_yaml("plan-b", "planner", SLEEPER, specs=True,
                                              specsRepo=str(specs_repo)))
    assert [a.kind for a in envoys.reconcile(sphere)] == ["start"]
    root = envoy_dir(sol_home, W, "plan-b")
    assert git(root / "worktree", "branch", "--show-current") == "envoy/plan-b"
    assert (root / "worktree" / "specs" / "shop.yaml").is_file()
    assert str(root / "worktree") in git(specs_repo, "worktree", "list")
    persona = (root / "persona.md").read_text()
    assert persona.endswith("Project planner orders.\n")
    assert f"the specs repository `{specs_repo}`" in persona and "`specs/` in this" in persona
    assert sphere.sessions.is_alive("sol-shop-envoy_plan_b")
    assert outposts.parse_session("sol-shop-envoy_plan_b") == (W, "envoy_plan_b")


def view(spec: dict[str, Any], *, phase: str = PENDING, status: dict[str, Any] | None = None,
         session: bool | None = None, world: bool = True, ready: bool = True,
         observed: str = "") -> envoys_plan.EnvoyView:
    from reconciler.core.model import generation

    r = Record("Envoy", W, "p", spec, generation(spec), "", False, phase, "", "",
               observed, status or {}, 3, 0.0, 0.0)
    w = Record("World", "", W, {"source": "x"}, "g", "", False, "Ready", "", "", "", {}, 1,
               0.0, 0.0)
    return envoys_plan.EnvoyView(r, w if world else None, ready, session)


def test_the_plan_is_a_pure_function_of_what_was_observed() -> None:
    spec = {"persona": "planner"}
    gen = view(spec).record.generation
    kinds = lambda v, **kw: [(a.op, a.kind) for a in envoys_plan.plan_envoy(v, 100.0, **kw)[0]]  # noqa: E731
    assert kinds(view(spec), is_degraded=False) == [(CREATE, "start")]
    assert kinds(view(spec), is_degraded=True)[0][1] == "wait"
    assert kinds(view(spec, ready=False), is_degraded=False) == [(NOTE, "wait")]
    assert kinds(view(spec, world=False), is_degraded=False) == [(NOTE, "wait")]
    running = {"sessionId": "s1", "startedGeneration": gen}
    assert kinds(view(spec, phase=RUNNING, status=running, session=True),
                 is_degraded=False) == []
    assert kinds(view(spec, phase=RUNNING, status={**running, "startedGeneration": "old"},
                      session=True), is_degraded=False) == [(UPDATE, "restart")]
    assert kinds(view(spec, phase=RUNNING, status=running, session=False),
                 is_degraded=False) == [(UPDATE, "record-death")]
    dead = {**running, "deadSession": "s1", "notBefore": 104.0}
    actions, wake = envoys_plan.plan_envoy(view(spec, status=dead, observed=gen), 100.0,
                                      is_degraded=False)
    assert actions == [] and wake == 104.0
    assert kinds(view(spec, status=dead, observed="older"), is_degraded=False) == [
        (CREATE, "respawn")]  # a changed spec is tried at once
    assert kinds(view({**spec, "suspend": True}, status=running, session=True),
                 is_degraded=False) == [(DELETE, "stop")]
    assert kinds(view(spec, status={"retired": True}, phase=SUSPENDED), is_degraded=False
                 ) == [(DELETE, "stop")]  # reason differs: Pruned is recorded
    assert [envoys_plan.backoff(n) for n in (1, 2, 3, 7, 8)] == [1, 2, 4, 60, 60]
    assert outposts.count_live({"sol-shop-envoy_lead_planner": True}) == {}


def test_a_worlds_plan_looks_again_when_a_backoff_ends_or_soon_after_an_action() -> None:
    spec = {"persona": "planner"}
    gen = view(spec).record.generation
    of = lambda *v, **kw: envoys_plan.plan(envoys_plan.EnvoysView(W, v, 100.0, **kw))  # noqa: E731
    dead = {"sessionId": "s1", "startedGeneration": gen, "deadSession": "s1", "notBefore": 104.0}
    backing_off = of(view(spec, status=dead, observed=gen))
    assert backing_off.actions == () and backing_off.requeue_after == 4.0
    ready = of(view(spec))
    assert [a.kind for a in ready.actions] == ["start"]
    assert ready.requeue_after == envoys_plan.PENDING_RETRY
    assert [a.kind for a in of(view(spec), degraded=True).actions] == ["wait"]
    running = {"sessionId": "s1", "startedGeneration": gen}
    assert of(view(spec, phase=RUNNING, status=running, session=True)) == Plan()
    assert of() == Plan()


# ---- the contract: schema, reference manifest, validation, CLI --------------------


def test_schema_and_reference_manifest() -> None:
    from jsonschema import Draft202012Validator

    doc = manifests.schema("Envoy")
    Draft202012Validator.check_schema(doc)
    assert doc["properties"]["kind"]["const"] == "Envoy"
    objects = [doc, doc["properties"]["metadata"], doc["properties"]["spec"],
               doc["$defs"]["runtime"]]
    for obj in objects:  # every field is closed and explained, for editors and `sol schema`
        assert obj["additionalProperties"] is False
        for prop in obj["properties"].values():
            ref = prop.get("$ref", "").rpartition("/")[2]
            assert prop.get("description") or doc["$defs"].get(ref, {}).get("description")
    result = manifests.load([ROOT / "manifests" / "world.yaml", ROOT / "manifests" / "envoy.yaml"])
    assert result.problems == []
    found = {m.name: EnvoySpec.from_spec(m.spec) for m in result.manifests if m.kind == "Envoy"}
    raw = {m.name: m.spec for m in result.manifests if m.kind == "Envoy"}
    assert found["planner"].specs and raw["planner"]["specsRepo"] == "~/src/shop-specs"
    assert found["pairing"].runtime is not None and found["pairing"].runtime.name == "command"
    assert EnvoySpec.from_spec({"persona": "x"}).suspend is doc["properties"]["spec"][
        "properties"]["suspend"]["default"]


def test_bad_envoy_manifests_are_refused_with_positions() -> None:
    world = "apiVersion: sol/v1\nkind: World\nmetadata: {name: shop}\nspec: {source: /srv}\n"
    docs = [
        world,
        "apiVersion: sol/v1\nkind: Envoy\nmetadata: {name: Planner, world: shop}\n"
        "spec: {persona: planner}\n",
        "apiVersion: sol/v1\nkind: Envoy\nmetadata: {name: a, world: shop}\n"
        "spec: {personna: planner}\n",
        "apiVersion: sol/v1\nkind: Envoy\nmetadata: {name: b, world: shop}\n"
        "spec: {persona: planner, specs: true, runtime: {name: script}}\n",
        "apiVersion: sol/v1\nkind: Envoy\nmetadata: {name: c, world: shop}\n"
        "spec: {persona: planner, specs: true, specsRepo: rel/path}\n",
        "apiVersion: sol/v1\nkind: Envoy\nmetadata: {name: d, world: nowhere}\n"
        "spec: {persona: ../etc}\n",
        "apiVersion: sol/v1\nkind: Envoy\nmetadata: {name: e, world: shop}\n"
        "spec: {persona: planner}\n",
        "apiVersion: sol/v1\nkind: Envoy\nmetadata: {name: e, world: shop}\n"
        "spec: {persona: engineer}\n",
    ]
    result = manifests.load_texts([("envoys.yaml", "---\n".join(docs))])
    text = "\n".join(result.problems)
    for fragment in (
            "envoys.yaml:8:18: Envoy shop/Planner: metadata.name: bad name 'Planner'",
            "envoys.yaml:14:1: Envoy shop/a: spec: missing required field 'persona'",
            "envoys.yaml:14:8: Envoy shop/a: spec.personna: unknown field 'personna' (did you "
            "mean 'persona'?)",
            "envoys.yaml:19:55: Envoy shop/b: spec.runtime.name: 'script' is not one of claude, "
            "codex, command",
            "envoys.yaml:24:50: Envoy shop/c: spec.specsRepo: not an absolute path 'rel/path'",
            "envoys.yaml:28:28: Envoy nowhere/d: metadata.world: unknown world 'nowhere'",
            "envoys.yaml:29:17: Envoy nowhere/d: spec.persona: bad name '../etc'",
            "envoys.yaml:38:18: Envoy shop/e: metadata.name: duplicate name: Envoy shop/e is "
            "also defined at envoys.yaml:31:1"):
        assert fragment in text, (fragment, result.problems)
    assert len(result.problems) == 8
    kept = [(m.kind, m.name, m.spec.get("persona")) for m in result.manifests]
    assert kept == [("World", "shop", None), ("Envoy", "e", "planner")]  # the first e only


def test_sol_get_and_describe_envoys(sol_home: Home, repo: Path, sol) -> None:
    sphere = setup(sol_home, repo, envoy_yaml("eng", "engineer", SLEEPER))
    envoys.reconcile(sphere)
    out = sol("get", "envoys", "-o", "json", check=True)
    [obj] = json.loads(out.stdout)
    assert obj["apiVersion"] == "sol/v1" and obj["kind"] == "Envoy"
    assert {k: obj["metadata"][k] for k in ("name", "world")} == {"name": "eng", "world": W}
    assert obj["metadata"]["creationTimestamp"][:4].isdigit()
    assert obj["spec"] == {"persona": "engineer", "runtime": SLEEPER}
    st = obj["status"]
    assert st["phase"] == RUNNING and st["reason"] == "Started"
    assert st["observedGeneration"] == st["generation"]
    assert st["branch"] == "envoy/eng" and st["session"] == "sol-shop-envoy_eng"
    assert st["memory"].endswith("envoys/eng/memory")
    table = sol("get", "envoys", check=True).stdout
    assert "eng" in table and "engineer" in table and "Running" in table
    described = sol("describe", "envoy", "eng", check=True).stdout
    assert "Kind:        Envoy" in described and "envoy-started" in described
    assert sphere.sessions.is_alive("sol-shop-envoy_eng")


def test_a_specs_envoy_defaults_to_the_local_git_source_the_specs_came_from(
        sol_home: Home, repo: Path, tmp_path: Path) -> None:
    from reconciler.specs.changes import SOURCE_META

    specs_repo = make_repo(tmp_path / "shop-specs", {"plans/shop.yaml": world_yaml(W, repo)})
    sphere = setup(sol_home, repo, envoy_yaml("planner", "planner", SLEEPER, specs=True))
    envoys.reconcile(sphere)
    st = status(sphere, "planner")
    assert (st.phase, st.reason) == (ERROR, "NoSpecsRepo") and "spec.specsRepo" in st.message
    sphere.store.set_meta(SOURCE_META, f"git+{specs_repo}@main#plans")
    envoys.reconcile(sphere)  # the error waits out its backoff: poll
    poll(lambda: envoys.reconcile(sphere) or status(sphere, "planner").phase == RUNNING,
         timeout=10, interval=0.2, what="the envoy to start in the specs repository")
    root = envoy_dir(sol_home, W, "planner")
    assert (root / "worktree" / "plans" / "shop.yaml").is_file()
    assert "branch `envoy/planner`" in (root / "persona.md").read_text()
    assert "`plans/` in this worktree" in (root / "persona.md").read_text()
    assert git(specs_repo, "branch", "--list", "envoy/planner") != ""
