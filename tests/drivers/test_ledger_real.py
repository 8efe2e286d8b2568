"""Issue 13's acceptance for the ledger, with the real Claude Code CLI under `sol up`.

Three scripted writs whose model answers carry known usage figures (the scripted
server's `usage_for(slot)`): `sol cost -o json` gives exactly their sum, per writ and per
model, across a `kill -9` of every daemon process mid-run, a transcript truncated in the
middle of a line, and the same transcript written back whole.
"""

from __future__ import annotations

import json
import os
import signal
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
from conftest import poll
from helpers import write_specs
from test_claude_real import commit, merged, model, world, writ  # noqa: F401 - model: a fixture
from test_prefect import daemon_commands

from reconciler.core import ledger_store
from reconciler.core.home import Home
from reconciler.core.prices import Prices
from reconciler.core.store import Store
from reconciler.daemon.procs import is_ours, read_pid
from reconciler.drivers.processes import pid_alive
from tests.fakes.anthropic_server import AnthropicServer, usage_for

pytestmark = pytest.mark.timeout(300)

NAMES = ("w1", "w2", "w3")
KINDS = {"input": "input_tokens", "output": "output_tokens",
         "cacheWrite": "cache_creation_input_tokens", "cacheRead": "cache_read_input_tokens"}
Figures = dict[str, int]


def expected(server: AnthropicServer) -> tuple[dict[str, Figures], dict[str, Figures]]:
    """Per writ and per model, what the server answered in the writs' conversations:
    each main request (one with tools) is one response in the CLI's transcript; side
    calls (titles, topics: no tools) are not written there."""
    writs: dict[str, Figures] = defaultdict(lambda: dict.fromkeys([*KINDS, "responses"], 0))
    models: dict[str, Figures] = defaultdict(lambda: dict.fromkeys([*KINDS, "responses"], 0))
    for request in server.messages_requests():
        if not request["tools"]:
            continue
        assert request["conversation"], f"a main request matched no writ: {request['slot']}"
        assert "error" not in request["reply"]
        name = request["conversation"].split("`")[1]
        usage = usage_for(request["slot"])
        for entry in (writs[f"shop/{name}"], models[request["model"]]):
            for kind, key in KINDS.items():
                entry[kind] += usage[key]
            entry["responses"] += 1
    return dict(writs), dict(models)


def figures(item: dict[str, Any]) -> Figures:
    return {**{k: item["tokens"][k] for k in KINDS}, "responses": item["responses"]}


def cost(sol: Any, by: str) -> dict[str, Figures]:
    done = sol("cost", "--by", by, "-o", "json")
    assert done.returncode == 0, done.stderr
    items = json.loads(done.stdout)["items"]
    return {(f"{i['world']}/{i['writ']}" if by == "writ" else i["model"]): figures(i)
            for i in items}


def recorded(home: Home, by: str) -> dict[str, Figures]:
    """What the daemon's ledger passes recorded so far (read from the store, without the
    ledger pass `sol cost` makes)."""
    store = Store(home.db)
    try:
        items, _ = ledger_store.costs(store, Prices(), by=by)
    finally:
        store.close()
    return {(f"{i['world']}/{i['writ']}" if by == "writ" else i["model"]): figures(i)
            for i in items}


def offset(home: Home, path: Path) -> int:
    """How far the ledger has read `path`."""
    store = Store(home.db)
    try:
        return ledger_store.files(store)[str(path)].offset
    finally:
        store.close()


def kill_daemon(home: Home) -> None:
    """kill -9 of the prefect and of every reconciler it runs; the agents, in tmux, live."""
    pids = [pid for path in home.run.glob("*.pid")
            if (pid := read_pid(path)) and is_ours(pid, home)]
    assert pids
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    poll(lambda: not any(pid_alive(p) for p in pids), timeout=15,
         what="the daemon's processes to die")


def transcript_of(home: Home, name: str) -> Path:
    """The Claude Code transcript of writ `name`'s conversation."""
    found = [p for p in home.root.glob("worlds/shop/outposts/*/claude/projects/**/*.jsonl")
             if f"sol/{name}" in p.read_text()]
    assert len(found) == 1, found
    return found[0]


def test_sol_cost_sums_exactly_across_a_kill_9_and_a_truncated_transcript(
        sol_home: Home, repo: Path, tmp_path: Path, model: AnthropicServer,  # noqa: F811
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOL_RESYNC", "1")  # a consul pass (and ledger pass) every second
    go = tmp_path / "go"
    model.script("writ `w1`", [{"bash": "true"}, commit("w1.txt", "w1")])
    for name in NAMES[1:]:  # at work, mid tool call, when the daemon is killed
        model.script(f"writ `{name}`", [{"bash": f"while [ ! -e {go} ]; do sleep 0.2; done"},
                                        commit(f"{name}.txt", name)])
    specs = write_specs(tmp_path / "specs", world(repo), *(writ(n) for n in NAMES))
    with daemon_commands(sol_home, tmp_path) as sol:
        assert sol("up", "-f", str(specs)).returncode == 0
        poll(lambda: merged(sol_home, "w1") and "shop/w1" in recorded(sol_home, "writ")
             and all(model.conversation_requests(f"writ `{n}`") for n in NAMES[1:]),
             timeout=180, interval=0.5, what="w1 merged and counted, w2 and w3 at work")
        kill_daemon(sol_home)
        assert sol("up", "-f", str(specs)).returncode == 0
        go.touch()
        poll(lambda: all(merged(sol_home, n) for n in NAMES), timeout=180, interval=0.5,
             what="every writ merged after the restart")
        writs, models = expected(model)
        assert sorted(writs) == [f"shop/{n}" for n in NAMES]
        # as scripted: no third request (a CLI that outlived its stopped session and saw
        # its tool command killed would ask again)
        assert [w["responses"] for w in writs.values()] == [2, 2, 2], "\n".join(
            f"{r['conversation']} slot={r['slot']} last={json.dumps(r['messages'][-1])[-160:]}"
            for r in model.messages_requests() if r["tools"])
        poll(lambda: recorded(sol_home, "writ") == writs, timeout=30,
             what="the daemon's ledger to have counted every response")
        assert recorded(sol_home, "model") == models

        assert cost(sol, "writ") == writs
        assert cost(sol, "model") == models

    # Cut in the middle of the last response's line: the lines after the cut are gone,
    # what was counted stays counted (the first response, read again from 0, once); then
    # the rest written back: that response's line is whole again, and still counted once.
    path = transcript_of(sol_home, "w2")
    whole = path.read_bytes()
    last = whole.rfind(b'"usage"')
    start = whole.rfind(b"\n", 0, last) + 1
    cut = (start + whole.index(b"\n", last)) // 2
    assert whole.find(b'"usage"', 0, start) != -1  # a response before the cut
    path.write_bytes(whole[:cut])
    once = sol("reconcile", "--once")
    assert once.returncode == 0, once.stderr
    assert "new bytes of 1 transcript" in once.stdout, once.stdout
    assert offset(sol_home, path) == start
    assert recorded(sol_home, "writ") == writs
    with path.open("ab") as handle:
        handle.write(whole[cut:])
    once = sol("reconcile", "--once")
    assert "new bytes of 1 transcript" in once.stdout, once.stdout
    assert offset(sol_home, path) == len(whole)
    assert recorded(sol_home, "writ") == writs
    assert cost(sol, "writ") == writs
    assert cost(sol, "model") == models
