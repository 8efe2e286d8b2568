"""The ledger's reading of transcripts: incremental, exact, never twice, attributed.

Real files, a real SQLite store; the fixture transcripts are shaped like Claude Code's
and Codex's (tests/fixtures/ledger), and ccusage, when installed, reads the same files.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
from ledger_fixtures import EXPECTED, VEGA, install, remove

from reconciler.controllers import ledger as controller
from reconciler.core import ledger_store
from reconciler.core.home import Home
from reconciler.core.plan import Plan
from reconciler.core.prices import Prices
from reconciler.core.store import Store
from reconciler.core.tether import Tether, write
from reconciler.drivers import ledger

ROOT = Path(__file__).resolve().parents[2]
CCUSAGE = ROOT / ".venv" / "clis" / "node_modules" / ".bin" / "ccusage"


def by(store: Store, group: str) -> dict[str, dict[str, int]]:
    items, _ = ledger_store.costs(store, Prices(), by=group)
    keys = ledger_store.GROUPS[group]
    return {"/".join(str(i[k] or "") for k in keys): {
        k: i["tokens"][k] for k in ("input", "output", "cacheWrite", "cacheRead")}
        for i in items}


def rows(store: Store) -> list[dict[str, object]]:
    return [dict(r) for r in store._all("SELECT * FROM usage ORDER BY source, id")]


@pytest.fixture
def store(sol_home: Home) -> Store:
    s = Store.open(sol_home)
    yield s
    s.close()


def line(mid: str, usage: tuple[int, int, int, int], home: Home, *,
         model: str = "claude-sonnet-4-5-20250929") -> str:
    worktree = home.worktree("shop", "vega")
    return json.dumps({
        "cwd": str(worktree), "gitBranch": "sol/add-rate-limit", "type": "assistant",
        "uuid": f"u-{mid}", "timestamp": "2025-11-21T09:00:00.000Z", "requestId": f"r-{mid}",
        "message": {"id": mid, "model": model, "role": "assistant", "content": [],
                    "usage": dict(zip(("input_tokens", "output_tokens",
                                       "cache_creation_input_tokens",
                                       "cache_read_input_tokens"), usage, strict=True))}},
    ) + "\n"


def test_the_fixture_sums_exactly_per_writ_and_per_model(sol_home: Home, store: Store) -> None:
    install(sol_home)
    assert ledger.sync(sol_home, store, time.time()) == 4
    assert by(store, "writ") == EXPECTED["writs"]
    assert by(store, "model") == EXPECTED["models"]


def test_a_repeated_message_or_response_id_counts_once(sol_home: Home, store: Store) -> None:
    """msg_v1 is on two lines (two content blocks), resp_l2 twice in the rollout."""
    install(sol_home)
    ledger.sync(sol_home, store, time.time())
    ids = [(r["source"], r["id"]) for r in rows(store)]
    assert ids.count(("claude", "msg_v1")) == 1 and ids.count(("codex", "resp_l2")) == 1
    assert len(ids) == 9


def test_attribution_names_world_writ_attempt_agent_and_envoy(sol_home: Home,
                                                              store: Store) -> None:
    install(sol_home)
    write(sol_home.tether("shop", "vega"), Tether(
        world="shop", writ="add-rate-limit", agent="vega", title="t", description="d",
        kind="code", branch="sol/add-rate-limit", base="main", attempt=2, generation="g",
        session="s"))
    ledger.sync(sol_home, store, time.time())
    seen = {r["id"]: r for r in rows(store)}
    assert (seen["msg_v2"]["world"], seen["msg_v2"]["writ"], seen["msg_v2"]["attempt"],
            seen["msg_v2"]["agent"]) == ("shop", "add-rate-limit", 2, "vega")
    assert (seen["msg_o1"]["writ"], seen["msg_o1"]["attempt"], seen["msg_o1"]["agent"]) == (
        "fix-login", None, "orion")  # no tether: the writ from the branch, no attempt
    assert (seen["resp_l1"]["writ"], seen["resp_l1"]["agent"]) == ("docs-update", "lyra")
    assert (seen["msg_p1"]["envoy"], seen["msg_p1"]["writ"], seen["msg_p1"]["agent"]) == (
        "planner", "", "")


def test_appending_counts_only_the_new_lines_and_waits_for_a_partial_one(
        sol_home: Home, store: Store) -> None:
    (path,) = install(sol_home, only=VEGA)
    ledger.sync(sol_home, store, time.time())
    before = by(store, "writ")["shop/add-rate-limit"]
    whole = line("msg_v4", (1, 2, 3, 4), sol_home)
    with path.open("a") as handle:
        handle.write(whole[:40])  # the CLI is mid-write
    assert ledger.sync(sol_home, store, time.time()) == 1
    assert by(store, "writ")["shop/add-rate-limit"] == before
    with path.open("a") as handle:
        handle.write(whole[40:])
    ledger.sync(sol_home, store, time.time())
    after = by(store, "writ")["shop/add-rate-limit"]
    assert after == {k: before[k] + d for k, d in zip(
        ("input", "output", "cacheWrite", "cacheRead"), (1, 2, 3, 4), strict=True)}
    assert ledger_store.files(store)[str(path)].offset == path.stat().st_size


def test_an_unchanged_pass_plans_nothing_and_reads_nothing(sol_home: Home, store: Store
                                                           ) -> None:
    install(sol_home)
    view = controller.observe(_sphere(sol_home, store))
    assert len(controller.plan(view).actions) == 1
    ledger.sync(sol_home, store, time.time())
    assert controller.plan(controller.observe(_sphere(sol_home, store))).actions == ()
    assert ledger.sync(sol_home, store, time.time()) == 0


def test_a_truncated_or_replaced_file_is_read_again_without_double_counting(
        sol_home: Home, store: Store) -> None:
    (path,) = install(sol_home, only=VEGA)
    ledger.sync(sol_home, store, time.time())
    before = by(store, "writ")
    text = path.read_text()
    path.write_text(text.splitlines(keepends=True)[0])  # truncated in place
    ledger.sync(sol_home, store, time.time())
    assert by(store, "writ") == before
    assert ledger_store.files(store)[str(path)].offset == path.stat().st_size
    # replaced (a new inode) by the whole file and one more response
    fresh = path.with_suffix(".new")
    fresh.write_text(text + line("msg_v5", (7, 0, 0, 0), sol_home))
    os.replace(fresh, path)
    ledger.sync(sol_home, store, time.time())
    assert by(store, "writ")["shop/add-rate-limit"]["input"] == before[
        "shop/add-rate-limit"]["input"] + 7


def test_a_rewrite_that_grows_past_the_offset_is_read_from_the_start(
        sol_home: Home, store: Store) -> None:
    """Truncated and written again between two passes: the byte before the offset is no
    longer a line end, so the reader does not start mid-line and lose a response."""
    (path,) = install(sol_home, only=VEGA)
    ledger.sync(sol_home, store, time.time())
    offset = ledger_store.files(store)[str(path)].offset
    stat = path.stat()
    first = line("msg_w1", (5, 0, 0, 0), sol_home)
    filler = "x" * (offset + 10 - len(first)) + "\n"  # no line end at the old offset
    path.write_text(first + filler + line("msg_w2", (6, 0, 0, 0), sol_home))
    assert path.stat().st_ino == stat.st_ino
    ledger.sync(sol_home, store, time.time())
    ids = {r["id"] for r in rows(store)}
    assert {"msg_w1", "msg_w2"} <= ids


def test_a_new_process_resumes_at_the_stored_offsets(sol_home: Home, store: Store) -> None:
    """A restart (another process, as after a kill -9 of the daemon) reads nothing twice."""
    install(sol_home)
    ledger.sync(sol_home, store, time.time())
    before = by(store, "writ")
    (sol_home.root / "worlds" / VEGA).open("a").write(line("msg_v6", (1000, 0, 0, 0),
                                                           sol_home))
    code = ("import time; from pathlib import Path; from reconciler.core.home import Home; "
            "from reconciler.core.store import Store; from reconciler.drivers import ledger; "
            f"h = Home(Path({str(sol_home.root)!r})); print(ledger.sync(h, Store.open(h), "
            "time.time()))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=ROOT, timeout=60, check=True)
    assert done.stdout.strip() == "1"
    after = by(store, "writ")
    assert after["shop/add-rate-limit"]["input"] == before["shop/add-rate-limit"]["input"] + 1000
    assert {k: v for k, v in after.items() if k != "shop/add-rate-limit"} == {
        k: v for k, v in before.items() if k != "shop/add-rate-limit"}


def test_an_unknown_model_is_counted_in_tokens_and_flagged(sol_home: Home, store: Store
                                                           ) -> None:
    install(sol_home)
    ledger.sync(sol_home, store, time.time())
    items, total = ledger_store.costs(store, Prices(), by="model")
    mystery = next(i for i in items if i["model"] == "claude-mystery-9")
    assert mystery["usd"] is None and mystery["unpriced"] == ["claude-mystery-9"]
    assert mystery["tokens"]["total"] == 70
    assert total["unpriced"] == ["claude-mystery-9"] and total["usd"] is not None
    priced, _ = ledger_store.costs(store, Prices({"claude-mystery-9": {"input": 1000}}),
                                   by="model")
    assert float(next(i for i in priced if i["model"] == "claude-mystery-9")["usd"]) == 0.05


def test_the_totals_match_ccusage_on_the_same_transcripts(sol_home: Home, store: Store
                                                          ) -> None:
    """ccusage (the tool users trust) on the Claude part of the fixture: the same tokens,
    the same USD within rounding. Without ccusage installed, its recorded figures."""
    placed = install(sol_home)
    ledger.sync(sol_home, store, time.time())
    claude = [p for p in placed if "/claude/" in str(p)]
    if CCUSAGE.exists():
        dirs = ",".join(sorted({str(p).split("/projects/")[0] for p in claude}))
        env = {**os.environ, "CLAUDE_CONFIG_DIR": dirs, "TZ": "UTC"}
        done = subprocess.run([str(CCUSAGE), "daily", "--json", "--offline"], env=env,
                              capture_output=True, text=True, timeout=120, check=True)
        theirs = json.loads(done.stdout)["totals"]
    else:
        theirs = EXPECTED["ccusage"]
    items, total = ledger_store.costs(store, Prices(), by="model")
    ours = [i for i in items if i["model"].startswith("claude")]
    assert sum(i["tokens"]["input"] for i in ours) == theirs["inputTokens"]
    assert sum(i["tokens"]["output"] for i in ours) == theirs["outputTokens"]
    assert sum(i["tokens"]["cacheWrite"] for i in ours) == theirs["cacheCreationTokens"]
    assert sum(i["tokens"]["cacheRead"] for i in ours) == theirs["cacheReadTokens"]
    usd = sum(float(i["usd"]) for i in ours if i["usd"] is not None)
    assert usd == pytest.approx(theirs["totalCost"], abs=1e-6)
    assert [m for i in ours for m in i["unpriced"]] == theirs["unpricedModels"]


def _sphere(home: Home, store: Store):  # noqa: ANN202 - a Sphere over this store
    from reconciler.drivers.sphere import Sphere

    sphere = Sphere.__new__(Sphere)
    sphere.home, sphere.store = home, store
    return sphere


def _conversation(home: Home, lines: list[str]) -> Path:
    path = home.outpost("shop", "vega") / "claude" / "projects" / "p" / "s.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(lines))
    return path


def _pass(home: Home, store: Store, budget: int) -> Plan:
    """One ledger pass as the consul makes it, with a smaller budget: observe, plan, act."""
    sphere = _sphere(home, store)
    plan = controller.plan(replace(controller.observe(sphere), budget=budget))
    for action in plan.actions:
        controller.act(sphere, action)
    return plan


def test_a_pass_stops_at_its_budget_on_a_line_end_and_the_next_reads_on(
        sol_home: Home, store: Store) -> None:
    """Ten lines of one length; a budget of two and a half: each pass takes two whole
    lines, says what is left and asks to look again soon; the sums come out exact."""
    lines = [line(f"msg_c{n}", (n, 1, 10 + n, 100), sol_home) for n in range(10)]
    width = len(lines[0].encode())
    assert {len(t.encode()) for t in lines} == {width}
    path = _conversation(sol_home, lines)
    budget = width * 5 // 2
    offsets, plans = [], []
    while (plan := _pass(sol_home, store, budget)).actions:
        plans.append(plan)
        offsets.append(ledger_store.files(store)[str(path)].offset)
    assert offsets == [2 * width, 4 * width, 6 * width, 8 * width, 10 * width]
    assert [p.requeue_after for p in plans] == [controller.AGAIN] * 4 + [None]
    assert plans[0].actions[0].description == (
        f"read up to {budget} of {10 * width} new bytes of 1 transcript, "
        f"{10 * width - budget} left for the next passes")
    assert plans[-1].actions[0].description == f"read {2 * width} new bytes of 1 transcript"
    assert by(store, "writ")["shop/add-rate-limit"] == {
        "input": 45, "output": 10, "cacheWrite": 145, "cacheRead": 1000}
    assert len(rows(store)) == 10


def test_a_line_longer_than_the_budget_is_read_whole_so_the_file_moves_on(
        sol_home: Home, store: Store) -> None:
    lines = [line(f"msg_l{n}", (n + 1, 0, 0, 0), sol_home) for n in range(3)]
    path = _conversation(sol_home, lines)
    ends = [sum(len(t.encode()) for t in lines[:n + 1]) for n in range(3)]
    offsets = []
    while ledger.sync(sol_home, store, time.time(), budget=10):
        offsets.append(ledger_store.files(store)[str(path)].offset)
    assert offsets == ends  # one line a pass, never a piece of one
    assert by(store, "writ")["shop/add-rate-limit"]["input"] == 1 + 2 + 3
    # a partial last line longer than the budget waits for its newline, read once
    last = line("msg_l9", (1000, 0, 0, 0), sol_home)
    with path.open("a") as handle:
        handle.write(last[:-20])
    assert ledger.sync(sol_home, store, time.time(), budget=10) == 1
    assert ledger_store.files(store)[str(path)].offset == ends[-1]
    assert ledger.sync(sol_home, store, time.time(), budget=10) == 0
    with path.open("a") as handle:
        handle.write(last[-20:])
    assert ledger.sync(sol_home, store, time.time(), budget=10) == 1
    assert by(store, "writ")["shop/add-rate-limit"]["input"] == 1006


def test_a_budget_is_shared_by_all_the_files_of_a_pass_and_the_sums_stay_exact(
        sol_home: Home, store: Store) -> None:
    """The fixture's four transcripts, 700 bytes a pass: each pass reads at most that (plus
    one line), every file stops on a line end, and at the end the figures are the whole
    fixture's, nothing counted twice."""
    placed = install(sol_home)
    longest = max(len(t) for p in placed for t in p.read_bytes().splitlines(keepends=True))
    passes, before = 0, 0
    while ledger.sync(sol_home, store, time.time(), budget=700):
        passes += 1
        states = ledger_store.files(store)
        for state in states.values():
            assert Path(state.path).read_bytes()[state.offset - 1:state.offset] == b"\n"
        after = sum(s.offset for s in states.values())
        assert 0 < after - before <= 700 + longest
        before = after
    assert passes >= sum(p.stat().st_size for p in placed) // (700 + longest)
    assert passes > 4
    assert by(store, "writ") == EXPECTED["writs"]
    assert by(store, "model") == EXPECTED["models"]
    assert len(rows(store)) == 9


def test_nothing_is_left_when_the_transcripts_go(sol_home: Home, store: Store) -> None:
    """Usage once read stays (the money was spent) when the files are removed."""
    install(sol_home)
    ledger.sync(sol_home, store, time.time())
    remove(sol_home)
    assert ledger.sync(sol_home, store, time.time()) == 0
    assert by(store, "writ") == EXPECTED["writs"]
