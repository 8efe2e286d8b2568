"""A world whose agents run on a real local Ray cluster, end to end under `sol up`: its
writs land; the daemon killed leaves the agents' actors running and a restarted daemon
finds them by name (nothing cast twice); the node holding an agent killed, the agent is
cast again on another node and its writ lands once.

Skipped without the `ray` extra (`pip install -e '.[test,ray]'`, as .ci/run does)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("ray")

from conftest import git, poll  # noqa: E402
from helpers import world_yaml, writ_status, writ_yaml, write_specs  # noqa: E402
from ray_cluster import EXTRA_RESOURCE, RayCluster  # noqa: E402
from test_claude_real import commit, first_request, scripted_model  # noqa: E402
from test_claude_real import world as claude_world  # noqa: E402
from test_claude_real import writ as claude_writ  # noqa: E402
from test_codex_real import scripted_codex  # noqa: E402
from test_codex_real import world as codex_world  # noqa: E402
from test_ledger_real import cost as ledger_cost  # noqa: E402
from test_ledger_real import expected  # noqa: E402
from test_prefect import daemon_commands  # noqa: E402

from reconciler.core.home import Home  # noqa: E402
from reconciler.core.store import Store  # noqa: E402
from reconciler.daemon.procs import read_pid  # noqa: E402
from reconciler.drivers.processes import pid_alive  # noqa: E402
from reconciler.drivers.ray_sessions import RaySessions  # noqa: E402
from reconciler.drivers.runtimes.claude import RESUMED  # noqa: E402
from tests.fakes.anthropic_server import AnthropicServer  # noqa: E402
from tests.fakes.openai_server import OpenAIServer, usage_for  # noqa: E402

pytestmark = [pytest.mark.ray, pytest.mark.timeout(240), pytest.mark.xdist_group("ray")]
W = "shop"


@pytest.fixture(scope="module")
def cluster() -> Iterator[RayCluster]:
    with RayCluster.start() as started:
        yield started


@pytest.fixture
def model(monkeypatch: pytest.MonkeyPatch) -> Iterator[AnthropicServer]:
    with scripted_model(monkeypatch) as server:
        yield server


@pytest.fixture
def codex_model(monkeypatch: pytest.MonkeyPatch) -> Iterator[OpenAIServer]:
    with scripted_codex(monkeypatch) as server:
        yield server


def events(home: Home, kind: str, name: str | None = None) -> list:
    store = Store(home.db)
    try:
        return store.events(world=W, name=name, types=[kind])
    finally:
        store.close()


def sentinel_pass(home: Home) -> float:
    """When the world's sentinel last finished a pass (its child's health record)."""
    try:
        return float(json.loads((home.run / f"sentinel-{W}.pass").read_text())["at"])
    except (OSError, ValueError, KeyError):
        return 0.0


def shown(repo: Path, spec: str) -> str | None:
    done = subprocess.run(["git", "show", spec], cwd=repo, capture_output=True, text=True)
    return done.stdout.strip() if done.returncode == 0 else None


def lose_its_node(cluster: RayCluster, ray: RaySessions, session: str, joining: str) -> None:
    """A node joins, then the node holding `session` is lost: wait for the agent to be
    cast again on the node that joined."""
    holder = ray.where(session)["raylet_pid"]
    spare = cluster.add_node(joining, {EXTRA_RESOURCE: 1})
    cluster.kill_node(holder)
    poll(lambda: (ray.where(session) or {}).get("raylet_pid") == spare, timeout=90,
         interval=0.5, what=f"{session} cast again on the node that joined")


def phase(home: Home, name: str) -> str | None:
    record = writ_status(home, W, name)
    return record.phase if record else None


def test_a_ray_world_lands_survives_a_daemon_kill_and_a_lost_node(
        sol_home: Home, repo: Path, tmp_path: Path, cluster: RayCluster) -> None:
    go = tmp_path / "go"
    spec = (f"sessions: {{backend: ray, address: '{cluster.address}', "
            f"resources: {{{EXTRA_RESOURCE}: 0.01}}}}\n")
    specs = write_specs(
        tmp_path / "specs", world_yaml(W, repo, extra=spec),
        writ_yaml("quick", W, "echo quick > quick.txt"),
        writ_yaml("held", W, f"until [ -e {go} ]; do sleep 0.2; done\necho held > held.txt"))
    ray = RaySessions(cluster.address, f"sol-{sol_home.socket_name}", sol_home.socket_name)
    with daemon_commands(sol_home, tmp_path) as sol:
        assert sol("up", "-f", str(specs)).returncode == 0
        poll(lambda: phase(sol_home, "quick") == "Merged", timeout=90, interval=0.5,
             what="writ quick landed through an agent on the Ray cluster")
        held = poll(lambda: (r := writ_status(sol_home, W, "held")) and r.phase == "Working"
                    and r, timeout=60, what="writ held working")
        session = f"sol-{W}-{held.status['agent']}"
        assert ray.is_alive(session)
        assert ray.where(session)["raylet_pid"] == cluster.extra_raylet
        node = writ_status(sol_home, W, "held").status["node"]
        assert node == ray.where(session)["hostname"]
        assert f"[{held.status['agent']}@{node}]" in sol("status").stdout
        doctor = sol("doctor")
        assert f"ray {cluster.address}" in doctor.stdout, doctor.stdout
        assert "node(s) alive" in doctor.stdout, doctor.stdout
        assert f"sees {sol_home.outposts(W)}" in doctor.stdout, doctor.stdout  # each node

        # The daemon killed: the actor runs on; a new daemon finds it by name.
        prefect = read_pid(sol_home.run / "prefect.pid")
        os.killpg(os.getpgid(prefect), signal.SIGKILL)
        poll(lambda: not pid_alive(prefect), timeout=10, what="the daemon gone")
        assert ray.is_alive(session)
        restarted = time.time()
        assert sol("up", "-f", str(specs)).returncode == 0
        poll(lambda: sentinel_pass(sol_home) > restarted + 2, timeout=30,
             what="two seconds of passes of the new daemon's sentinel")
        assert ray.is_alive(session) and len(events(sol_home, "cast", "held")) == 1
        assert not events(sol_home, "respawned", "held")  # found by name, not started again

        # Its node lost: cast again on a node that has the resource.
        spare = cluster.add_node("spare2", {EXTRA_RESOURCE: 1})
        cluster.kill_node(cluster.extra_raylet)
        poll(lambda: (ray.where(session) or {}).get("raylet_pid") == spare, timeout=90,
             interval=0.5, what="the agent started again on the other node")
        [died] = events(sol_home, "session-died", "held")
        assert died.data["nodeLost"] and "was lost" in died.message, died.message
        go.write_text("")
        poll(lambda: phase(sol_home, "held") == "Merged", timeout=90, interval=0.5,
             what="writ held landed after its node was lost")
    assert git(sol_home.repo(W), "show", "main:held.txt") == "held"
    assert len(git(sol_home.repo(W), "log", "--format=%H", "--grep=Sol-Writ: shop/held",
                   "main").split()) == 1
    assert len(events(sol_home, "merged", "held")) == 1


def test_a_node_workspace_clones_on_its_node_and_is_recast_from_its_last_push(
        sol_home: Home, repo: Path, tmp_path: Path, cluster: RayCluster) -> None:
    """workspace: node: each agent works in a clone on its node's own disk and reaches
    the store only through its actor; its node lost, it is cast again from the commit it
    pushed, and its writ lands once."""
    spec = (f"sessions: {{backend: ray, address: '{cluster.address}', workspace: node, "
            f"resources: {{{EXTRA_RESOURCE}: 0.01}}}}\n")
    again = ("if [ -f one.txt ]; then echo \"$(cat one.txt) then again\" > two.txt\n"
             "else echo one > one.txt; git add one.txt; git commit -qm one; sleep 600; fi")
    specs = write_specs(tmp_path / "specs", world_yaml(W, repo, extra=spec),
                        writ_yaml("quick", W, "echo quick > quick.txt; echo said-on-node"),
                        writ_yaml("held", W, again),
                        writ_yaml("stuck", W, "sol escalate cannot-do-it; sleep 600"))
    ray = RaySessions(cluster.address, f"sol-{sol_home.socket_name}", sol_home.socket_name)
    backup = sol_home.repo(W).parent / "backup.git"
    with daemon_commands(sol_home, tmp_path) as sol:
        assert sol("up", "-f", str(specs)).returncode == 0
        poll(lambda: phase(sol_home, "quick") == "Merged", timeout=90, interval=0.5,
             what="writ quick landed from a clone on its node")
        quick_agent = events(sol_home, "cast", "quick")[0].data["agent"]
        [clone] = cluster.root.glob(f"*-disk/{sol_home.socket_name}/{W}/{quick_agent}")
        assert (clone / "worktree" / ".git").is_dir()  # a clone of its own, not a worktree
        assert not sol_home.worktree(W, quick_agent).exists()
        assert "said-on-node" in sol("logs", quick_agent).stdout  # mirrored back
        doctor = sol("doctor").stdout
        assert f"reaches {backup}" in doctor, doctor  # asked of each node
        # An agent's `sol escalate` on its node reaches the writ through its outbox.
        [escalated, *_] = poll(lambda: events(sol_home, "escalated", "stuck"), timeout=60,
                               what="the escalation from the node")
        assert "cannot-do-it" in escalated.message, escalated.message

        held = poll(lambda: (r := writ_status(sol_home, W, "held")) and r.phase == "Working"
                    and r, timeout=60, what="writ held working")
        session = f"sol-{W}-{held.status['agent']}"
        poll(lambda: shown(backup, "sol/held:one.txt") == "one",
             timeout=60, what="the agent's commit pushed from its node")
        # The spec changes: the daemon's tether is rewritten, and so is the node's copy.
        write_specs(tmp_path / "specs", world_yaml(W, repo, extra=spec),
                    writ_yaml("quick", W, "echo quick > quick.txt; echo said-on-node"),
                    writ_yaml("held", W, again, title="Held, renamed"),
                    writ_yaml("stuck", W, "sol escalate cannot-do-it; sleep 600"))
        [node_tether] = cluster.root.glob(
            f"*-disk/{sol_home.socket_name}/{W}/{held.status['agent']}/tether.json")
        poll(lambda: "Held, renamed" in node_tether.read_text(), timeout=30,
             what="the changed tether delivered to the agent's node")
        lose_its_node(cluster, ray, session, "spare3")
        poll(lambda: phase(sol_home, "held") == "Merged", timeout=90, interval=0.5,
             what="writ held landed after its node was lost")
        poll(lambda: git(backup, "branch", "--list", "sol/quick", "sol/held") == "",
             timeout=30, what="the landed branches dropped from the remote")  # cleanup
        assert "from the world's remote" in events(sol_home, "cleaned-up", "held")[0].message
    main = sol_home.repo(W)
    assert git(main, "show", "main:two.txt") == "one then again"  # from the pushed commit
    assert len(git(main, "log", "--format=%H", "--grep=Sol-Writ: shop/held",
                   "main").split()) == 1
    assert len(events(sol_home, "merged", "held")) == 1
    assert (cluster.node_root("spare3") / sol_home.socket_name / W / held.status["agent"]
            / "worktree" / ".git").is_dir()


def test_claude_on_its_node_lands_resumes_elsewhere_and_its_usage_is_counted(
        sol_home: Home, repo: Path, tmp_path: Path, cluster: RayCluster,
        model: AnthropicServer) -> None:
    """The real Claude Code CLI in a node workspace: its config travels to the node, its
    transcript comes back (the ledger counts exactly what the model answered); its node
    lost mid-conversation, it resumes that conversation on another node."""
    model.script("writ `nodal`", [commit("one.txt", "one", resolve=False),
                                  {"text": "Committed one.txt; more to do."},
                                  commit("two.txt", "two")])
    spec = json.loads(claude_world(repo).split("\n")[0])
    spec["spec"]["sessions"] = {"backend": "ray", "address": cluster.address,
                                "workspace": "node", "resources": {EXTRA_RESOURCE: 0.01}}
    specs = write_specs(tmp_path / "specs", json.dumps(spec) + "\n", claude_writ("nodal"))
    ray = RaySessions(cluster.address, f"sol-{sol_home.socket_name}", sol_home.socket_name)
    with daemon_commands(sol_home, tmp_path) as sol:
        assert sol("up", "-f", str(specs)).returncode == 0
        record = poll(lambda: (r := writ_status(sol_home, W, "nodal")) and r.phase == "Working"
                      and r, timeout=60, what="writ nodal working")
        agent = record.status["agent"]
        local = sol_home.outpost(W, agent)
        # The first turn ended: its transcript is mirrored back, in the daemon's terms.
        poll(lambda: any("Committed one.txt" in p.read_text()
                         for p in (local / "claude" / "projects").rglob("*.jsonl")),
             timeout=120, interval=0.5, what="the node's transcript mirrored back")
        mirrored = "".join(p.read_text() for p in (local / "claude/projects").rglob("*.jsonl"))
        assert str(local / "worktree") in mirrored and "-disk" not in mirrored
        session = f"sol-{W}-{agent}"
        lose_its_node(cluster, ray, session, "spare4")
        poll(lambda: phase(sol_home, "nodal") == "Merged", timeout=120, interval=0.5,
             what="writ nodal landed after its node was lost")
        writs, models = expected(model)
        assert ledger_cost(sol, "writ") == writs

    resumed = first_request(model, RESUMED)
    assert "Committed one.txt" in json.dumps(resumed["messages"])  # the same conversation
    main = sol_home.repo(W)
    assert git(main, "show", "main:one.txt") == "one"
    assert git(main, "show", "main:two.txt") == "two"
    assert len(events(sol_home, "merged", "nodal")) == 1


def test_codex_on_its_node_lands_with_its_own_codex_home_and_its_usage_counted(
        sol_home: Home, repo: Path, tmp_path: Path, cluster: RayCluster,
        codex_model: OpenAIServer) -> None:
    """The real Codex CLI in a node workspace: a CODEX_HOME of the agent's own goes to
    its node, and its rollout comes back for the ledger (the sphere's is not used)."""
    codex_model.script("writ `coded`", [commit("coded.txt", "from-codex")])
    spec = json.loads(codex_world(repo).split("\n")[0])
    spec["spec"]["sessions"] = {"backend": "ray", "address": cluster.address,
                                "workspace": "node", "resources": {EXTRA_RESOURCE: 0.01}}
    specs = write_specs(tmp_path / "specs", json.dumps(spec) + "\n", claude_writ("coded"))
    with daemon_commands(sol_home, tmp_path) as sol:
        assert sol("up", "-f", str(specs)).returncode == 0
        poll(lambda: phase(sol_home, "coded") == "Merged", timeout=120, interval=0.5,
             what="writ coded landed from its node")
        main = [r for r in codex_model.messages_requests() if r["tools"]]
        done = sol("cost", "--by", "writ", "-o", "json")
    [item] = json.loads(done.stdout)["items"]
    assert item["responses"] == len(main)
    assert item["tokens"]["output"] == sum(usage_for(r["slot"])["output_tokens"] for r in main)
    assert git(sol_home.repo(W), "show", "main:coded.txt") == "from-codex"
    agent = events(sol_home, "cast", "coded")[0].data["agent"]
    assert list((sol_home.outpost(W, agent) / "codex" / "sessions").rglob("rollout-*.jsonl"))
    assert not list((sol_home.codex_home / "sessions").rglob("rollout-*.jsonl"))

