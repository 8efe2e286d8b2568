"""An agent's outpost on a node that shares no disk with the daemon, without Ray: the
branch published to the remote, the node's clone made from it (and pushing each commit
back), the agent's `sol resolve` and `sol escalate` leaving requests in its outbox, and
what the daemon collects. Real git throughout; the Ray path is tests/daemon/test_ray_world.py.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from conftest import git
from helpers import world_yaml, writ_status, writ_yaml, write_specs

from reconciler.core import tether
from reconciler.core.errors import SolError
from reconciler.core.home import Home
from reconciler.core.store import Store
from reconciler.drivers import agent, node_workspace
from reconciler.drivers.node_workspace import NodeWorkspace

SOCKET = "sol-test"


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def sides(repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
          ) -> tuple[Path, str, Path]:
    """The daemon's managed clone, the world's remote, and a node's own disk."""
    clone = tmp_path / "daemon" / "repo"
    git(tmp_path, "clone", "-q", "--bare", str(repo), str(clone))
    remote = tmp_path / "remote.git"
    git(tmp_path, "init", "-q", "--bare", str(remote))
    node = tmp_path / "node-disk"
    monkeypatch.setenv("SOL_NODE_ROOT", str(node))
    return clone, str(remote), node


def workspace(remote: str, local: Path, tether_text: str = "{}") -> NodeWorkspace:
    return NodeWorkspace("shop", "vega", remote, "sol/a", str(local),
                         {"tether.json": tether_text.replace("@", str(local)),
                          "worktree/NOTES.md": f"see {local}/tether.json\n"},
                         ("/NOTES.md",))


def commit(worktree: Path, name: str, text: str) -> None:
    (worktree / name).write_text(text)
    git(worktree, "add", name)
    git(worktree, "-c", "user.name=t", "-c", "user.email=t@x", "commit", "-qm", name)


def test_the_node_clones_the_published_branch_and_pushes_each_commit(
        sides: tuple[Path, str, Path], tmp_path: Path) -> None:
    clone, remote, node = sides
    base = node_workspace.publish_branch(clone, remote, "sol/a", "main")
    assert base == git(clone, "rev-parse", "main")
    assert git(Path(remote), "rev-parse", "sol/a") == base

    local = tmp_path / "daemon" / "outposts" / "vega"
    outpost = node_workspace.prepare(workspace(remote, local), SOCKET)
    assert outpost == node / SOCKET / "shop" / "vega"
    assert (outpost / "worktree" / ".git").is_dir()  # a clone, not a worktree of the daemon's
    assert (outpost / "worktree" / "NOTES.md").read_text() == f"see {outpost}/tether.json\n"
    assert (outpost / "tether.json").stat().st_mode & 0o077 == 0

    commit(outpost / "worktree", "one.txt", "one")
    head = git(outpost / "worktree", "rev-parse", "HEAD")
    assert git(Path(remote), "rev-parse", "sol/a") == head  # pushed by the hook, at once
    assert node_workspace.fetch_branch(clone, remote, "sol/a") == head


def test_another_node_starts_from_the_last_push_and_a_respawn_here_keeps_its_files(
        sides: tuple[Path, str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    clone, remote, node = sides
    node_workspace.publish_branch(clone, remote, "sol/a", "main")
    local = tmp_path / "daemon" / "outposts" / "vega"
    first = node_workspace.prepare(workspace(remote, local), SOCKET) / "worktree"
    commit(first, "one.txt", "one")
    (first / "draft.txt").write_text("not committed")
    again = node_workspace.prepare(workspace(remote, local), SOCKET) / "worktree"
    assert again == first and (first / "draft.txt").read_text() == "not committed"

    # The branch is published again (a recast): the remote's commits win.
    assert node_workspace.publish_branch(clone, remote, "sol/a", "main") == \
        git(clone, "rev-parse", "main")
    assert git(clone, "rev-parse", "sol/a") == git(first, "rev-parse", "HEAD")
    monkeypatch.setenv("SOL_NODE_ROOT", str(tmp_path / "other-node"))
    other = node_workspace.prepare(workspace(remote, local), SOCKET) / "worktree"
    assert (other / "one.txt").read_text() == "one"
    assert not (other / "draft.txt").exists()

    # The agent name serves other writs later: a clone holding something not pushed is
    # moved aside, never lost; one whose work is all pushed is removed.
    monkeypatch.setenv("SOL_NODE_ROOT", str(node))
    for branch in ("sol/b", "sol/c"):
        node_workspace.publish_branch(clone, remote, branch, "main")
        later = replace(workspace(remote, local), branch=branch)
        fresh = node_workspace.prepare(later, SOCKET) / "worktree"
        assert git(fresh, "symbolic-ref", "--short", "HEAD") == branch
        commit(fresh, f"{branch[-1]}.txt", "pushed by the hook")
    [aside] = fresh.parent.glob("worktree.*")
    assert (aside / "draft.txt").read_text() == "not committed"


def test_resolve_and_escalate_on_a_node_leave_requests_and_push(
        sides: tuple[Path, str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    clone, remote, node = sides
    base = node_workspace.publish_branch(clone, remote, "sol/a", "main")
    local = tmp_path / "daemon" / "outposts" / "vega"
    t = tether.Tether(world="shop", writ="a", agent="vega", session="s1", branch="sol/a",
                      base=base, title="Writ a", description="Do it.", generation="g1",
                      attempt=1, kind="code")
    outpost = node_workspace.prepare(workspace(remote, local, t.to_json()), SOCKET)
    worktree = outpost / "worktree"
    for key, value in {"SOL_TETHER": outpost / "tether.json", "SOL_OUTBOX": outpost / "outbox",
                       "SOL_WORKTREE": worktree, "SOL_HOME": outpost / "home"}.items():
        monkeypatch.setenv(key, str(value))
    monkeypatch.chdir(worktree)
    with pytest.raises(SolError, match="no commit beyond its base"):
        agent.resolve()
    assert "escalated writ shop/a" in agent.escalate("stuck on the tests")
    (worktree / "work.txt").write_text("done\n")  # left uncommitted: resolve commits it
    said = agent.resolve()
    assert "sol/a pushed (1 commit(s))" in said
    head = git(worktree, "rev-parse", "HEAD")
    assert git(Path(remote), "rev-parse", "sol/a") == head
    assert not (outpost / "home" / "sol.db").exists()  # the node never touches a store

    (outpost / "activity.json").write_text(json.dumps({"state": "idle", "at": 1.0}))
    (outpost / "outbox" / "junk.json").write_text("{not json")
    found = node_workspace.collect(outpost, {}, "m1")["files"]
    assert json.loads(found["activity.json"])["state"] == "idle"
    requests = node_workspace.parse_outbox(found)
    assert [(r["kind"], r["session"]) for r in requests] == [("escalate", "s1"),
                                                             ("resolve", "s1")]
    assert requests[0]["message"] == "stuck on the tests"
    assert requests[1]["head"] == head and requests[1]["ahead"] == 1
    assert all(os.stat(p).st_mode & 0o077 == 0 for p in (outpost / "outbox").glob("0*.json"))


def test_the_doctor_probe_names_what_a_node_cannot_reach(tmp_path: Path) -> None:
    from reconciler.drivers.ray_connect import _probe_here

    remote = tmp_path / "remote.git"
    ok, said = _probe_here(sys.executable, str(remote), None)
    assert not ok and said.startswith(f"cannot reach the remote {remote}")
    git(tmp_path, "init", "-q", "--bare", str(remote))
    assert _probe_here(sys.executable, str(remote), None) == (True, f"reaches {remote}")
    ok, said = _probe_here(str(tmp_path / "no-python"), str(remote), None)
    assert not ok and "install sol at the same path" in said
    ok, said = _probe_here(sys.executable, None, str(tmp_path / "home" / "outposts"))
    assert not ok and "set spec.sessions.workspace: node" in said
    assert _probe_here(sys.executable, None, str(tmp_path)) == (True, f"sees {tmp_path}")


def test_logs_and_transcripts_come_back_in_whole_lines_once_and_a_new_file_afresh(
        tmp_path: Path) -> None:
    outpost = tmp_path / "node" / "vega"
    project = outpost / "claude" / "projects" / node_workspace.mangled(f"{outpost}/worktree")
    project.mkdir(parents=True)
    (outpost / "session.log").write_bytes(b"partial output")
    transcript = project / "s1.jsonl"
    transcript.write_text(f'{{"cwd": "{outpost}/worktree"}}\n{{"half": ')
    first = node_workspace.collect(outpost, {}, "m1")
    rel = str(transcript.relative_to(outpost))
    assert first["appends"] == {"session.log": b"partial output",
                                rel: f'{{"cwd": "{outpost}/worktree"}}\n'.encode()}
    assert first["fresh"] == []
    again = node_workspace.collect(outpost, first["tokens"], "m1")
    assert again["appends"] == {}  # nothing new; the half line waits for its end
    with transcript.open("a") as handle:
        handle.write('"line"}\n')
    more = node_workspace.collect(outpost, again["tokens"], "m1")
    assert more["appends"] == {rel: b'{"half": "line"}\n'}
    # The same names on another machine (the agent cast again elsewhere): read afresh.
    other = node_workspace.collect(outpost, more["tokens"], "m2")
    assert set(other["fresh"]) == {"session.log", rel}

    # Back in the daemon's terms: the node's path, in texts and in project names.
    local = str(tmp_path / "daemon" / "outposts" / "vega")
    back = node_workspace.rewrite(rel, str(outpost), local)
    assert back == f"claude/projects/{node_workspace.mangled(local + '/worktree')}/s1.jsonl"
    assert node_workspace.rewrite(first["appends"][rel].decode(), str(outpost), local) == \
        f'{{"cwd": "{local}/worktree"}}\n'


def test_a_remote_nobody_reaches_leaves_the_writ_pending_with_one_reason(
        sol_home: Home, repo: Path, tmp_path: Path, sol) -> None:
    """Nothing half-made wedges a node-workspace cast: with the remote unreachable (and
    the cluster too), the writ waits with one sentence and one event, pass after pass."""
    sessions = (f"sessions: {{backend: ray, address: '127.0.0.1:{free_port()}', "
                f"workspace: node, remote: '{tmp_path / 'nowhere.git'}'}}\n")
    specs = write_specs(tmp_path / "specs", world_yaml("shop", repo, extra=sessions),
                        writ_yaml("a", "shop", "echo a > a.txt"))
    sol("apply", "-f", str(specs), check=True)
    for _ in range(2):
        sol("reconcile", "--once", "-f", str(specs), check=True)
    record = writ_status(sol_home, "shop", "a")
    assert (record.phase, record.reason) == ("Pending", "CastFailed")
    assert f"cannot publish sol/a to the world's remote {tmp_path / 'nowhere.git'}" in \
        record.message and "spec.sessions.remote" in record.message
    store = Store(sol_home.db)
    assert len(store.events(types=["cast-failed"])) == 1
    store.close()
    assert not list(sol_home.outposts("shop").glob("*/tether.json"))
