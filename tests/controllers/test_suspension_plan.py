"""Suspension and re-drive decisions as pure functions of plain values: the forge's plan
of a suspended queue, the consul's waiting reasons, the world's `Suspended` condition,
core.suspension itself, the spec planner's re-drive of a Failed writ and the sentinel's
`retryFailedAfter`; then each re-drive carried out against a real SQLite store."""

from __future__ import annotations

import time
from typing import Any

from reconciler.controllers import worlds
from reconciler.controllers.consul_plan import Snapshot, plan_dispatch
from reconciler.controllers.forge_plan import (
    FORGE_SUSPENDED,
    ForgeView,
    QueuedMR,
    Step,
    plan,
)
from reconciler.controllers.sentinel_plan import SentinelView, retry_due
from reconciler.controllers.sentinel_plan import plan as sentinel_plan
from reconciler.core.home import Home
from reconciler.core.model import FAILED, MERGING, PENDING, Manifest, WorldSpec
from reconciler.core.store import Record, Store
from reconciler.core.suspension import (
    forge_suspension,
    world_condition,
    world_suspension,
    writ_suspension,
)
from reconciler.specs.changes import execute_spec_action, plan_specs

W = "shop"
HELD = "forge suspended by sol suspend at 2025-01-01T00:00:00+00:00; `sol resume forge " \
       "shop` to go on"
OVERRIDE = {"by": "sol suspend", "at": "2025-01-01T00:00:00+00:00"}


def rec(kind: str, world: str, name: str, spec: dict[str, Any], phase: str = PENDING,
        status: dict[str, Any] | None = None, **kw: Any) -> Record:
    now = time.time()
    fields = {"generation": "g", "orphaned": False, "reason": "", "message": "", **kw}
    return Record(kind, world, name, spec, fields["generation"], "", fields["orphaned"],
                  phase, fields["reason"], fields["message"], "", status or {}, 0, now, now)


def world(status: dict[str, Any] | None = None, **spec: Any) -> Record:
    return rec("World", "", W, {"source": "/s", **spec}, phase="Ready", status=status)


def writ(name: str, status: dict[str, Any] | None = None, **spec: Any) -> Record:
    return rec("Writ", W, name, {"title": name, **spec}, status=status)


def mr(id: int, name: str, state: str = "Queued", **kw: Any) -> QueuedMR:
    return QueuedMR(id, name, state, 2, float(id), **kw)


def forge_view(*mrs: QueuedMR, suspended: str = "") -> ForgeView:
    return ForgeView(W, "main", "abc123", tuple(mrs), suspended=suspended)


# ---- the forge ---------------------------------------------------------------------


def test_a_suspended_forge_starts_no_merge_and_says_so_on_each_queued_writ() -> None:
    result = plan(forge_view(mr(1, "a"), mr(2, "b"), suspended=HELD))
    assert not [a for a in result.actions if a.kind == "merge"]
    holds = {a.data["writ"]: a.data["message"] for a in result.actions if a.kind == "hold"}
    assert holds == {"a": f"merge request #1 queued; {HELD}",
                     "b": f"merge request #2 queued; {HELD}"}
    assert result.requeue_after is None  # a resume wakes it, no timer
    assert result.waiting == {"writ/shop/a": HELD, "writ/shop/b": HELD}


def test_held_writs_are_not_held_again() -> None:
    held = mr(1, "a", writ_reason=FORGE_SUSPENDED,
              writ_message=f"merge request #1 queued; {HELD}")
    assert plan(forge_view(held, suspended=HELD)).actions == ()


def test_a_merge_in_progress_finishes_while_the_forge_is_suspended() -> None:
    head = mr(1, "x", "Merging", writ_phase=MERGING, step=Step.MERGED, commit="c0ffee",
              onto="abc123")
    view = ForgeView(W, "main", "abc123", (head, mr(2, "b")), gates=("tests",),
                     suspended=HELD)
    result = plan(view)
    assert [a.kind for a in result.actions] == ["hold", "gate"]
    assert result.actions[0].data["writ"] == "b" and result.requeue_after == 0
    landing = ForgeView(W, "main", "abc123", (mr(1, "x", "Merging", writ_phase=MERGING,
                                                 step=Step.GATE_PASSED, commit="c0ffee",
                                                 onto="abc123", passed=("tests",)),),
                        gates=("tests",), suspended=HELD)
    assert [a.kind for a in plan(landing).actions] == ["land"]


def test_a_queued_writ_already_on_the_target_is_recorded_while_suspended() -> None:
    """Recording a landing found on the target starts no merge."""
    result = plan(forge_view(mr(1, "a", landed="feed"), suspended=HELD))
    assert "record-merged" in [a.kind for a in result.actions]


def test_after_resume_held_writs_are_queued_again_and_the_head_merges() -> None:
    held = dict(writ_reason=FORGE_SUSPENDED, writ_message=f"merge request #1 queued; {HELD}")
    result = plan(forge_view(mr(1, "a", **held), mr(2, "b", **held)))
    assert [a.kind for a in result.actions] == ["unhold", "unhold", "merge"]
    assert result.actions[0].data["message"] == "merge request #1 queued; the forge is resumed"
    assert result.requeue_after == 0


def test_an_unsuspended_forge_plans_no_hold() -> None:
    assert [a.kind for a in plan(forge_view(mr(1, "a"))).actions] == ["merge"]


# ---- core.suspension -------------------------------------------------------------------


def test_spec_or_override_is_the_effective_suspension() -> None:
    assert forge_suspension(world()) is None and world_suspension(world()) is None
    by_spec = forge_suspension(world(forge={"suspend": True}))
    assert by_spec is not None and by_spec.by_spec
    assert by_spec.undo == "set spec.forge.suspend: false in the manifest and apply"
    by_hand = forge_suspension(world({"forgeSuspended": OVERRIDE}))
    assert by_hand is not None and not by_hand.by_spec
    assert by_hand.notice == HELD.replace("forge suspended", "forge shop suspended")
    assert world_suspension(world({"forgeSuspended": OVERRIDE})) is None  # dispatch goes on
    assert world_suspension(world({"suspended": OVERRIDE})).by == "sol suspend"
    assert writ_suspension(writ("x", {"suspended": OVERRIDE})).name == "shop/x"
    assert writ_suspension(writ("x", suspend=True)).message == "writ suspended"


def test_the_world_condition_is_the_same_for_spec_and_override() -> None:
    spec = world_condition(world(forge={"suspend": True}))
    hand = world_condition(world({"forgeSuspended": OVERRIDE}))
    assert spec is not None and hand is not None
    assert spec[:2] == hand[:2] == (True, "ForgeSuspended")
    assert world_condition(world(suspend=True))[:2] == (True, "WorldSuspended")
    assert world_condition(world()) is None  # never suspended: no condition at all
    was = world({"conditions": [{"type": "Suspended", "status": "True"}]})
    assert world_condition(was)[:2] == (False, "Resumed")


def test_the_world_reconciler_plans_the_condition_only_when_it_changes() -> None:
    def planned(record: Record) -> list[str]:
        view = worlds.WorldsView((worlds.WorldView(record, True, "abc", time.time()),),
                                 time.time(), 300.0)
        return [a.description for a in worlds.plan(view).actions if a.kind == "suspended"]

    suspended = world({"forgeSuspended": OVERRIDE})
    assert planned(suspended) == [f"condition Suspended=True: {HELD.split(';')[0]}"
                                  .replace("forge suspended", "forge shop suspended")]
    shown = {"type": "Suspended", "status": "True", "reason": "ForgeSuspended",
             "message": "forge shop suspended by sol suspend at 2025-01-01T00:00:00+00:00"}
    assert planned(world({"forgeSuspended": OVERRIDE, "conditions": [shown]})) == []
    assert planned(world({"conditions": [shown]})) == [
        "condition Suspended=False: neither the world nor its forge is suspended"]


# ---- the consul ------------------------------------------------------------------------


def test_dispatch_waits_on_a_suspended_world_or_writ_whichever_way() -> None:
    def waiting(w: Record, *writs: Record) -> dict:
        d = plan_dispatch(Snapshot(worlds={W: w}, writs={(x.world, x.name): x for x in writs}))
        assert d.ready == ()
        return {k[1]: v for k, v in d.waiting.items()}

    assert waiting(world(suspend=True), writ("a")) == {"a": "world suspended"}
    assert waiting(world({"suspended": OVERRIDE}), writ("a")) == {
        "a": "world suspended by sol suspend at 2025-01-01T00:00:00+00:00; "
             "`sol resume world shop` to go on"}
    assert waiting(world(), writ("a", {"suspended": OVERRIDE})) == {
        "a": "writ suspended by sol suspend at 2025-01-01T00:00:00+00:00; "
             "`sol resume writ shop/a` to go on"}
    # a suspended forge does not stop dispatch
    ready = plan_dispatch(Snapshot(worlds={W: world({"forgeSuspended": OVERRIDE})},
                                   writs={(W, "a"): writ("a")}))
    assert [r.name for r in ready.ready] == ["a"]


# ---- the spec planner: a new generation re-drives -----------------------------------


def test_a_spec_change_of_a_failed_writ_is_planned_as_a_re_drive() -> None:
    new = Manifest("Writ", "a", W, {"title": "a, fixed"})
    failed = rec("Writ", W, "a", {"title": "a"}, phase=FAILED, generation="old")
    [action] = plan_specs([new], [failed])
    assert action.description == (f"update spec (generation old -> {new.generation}): "
                                  "re-drive the Failed writ")
    same = rec("Writ", W, "a", new.spec, phase=FAILED, generation=new.generation)
    assert plan_specs([new], [same]) == []  # no edit, no re-drive
    working = rec("Writ", W, "a", {"title": "a"}, phase="Working", generation="old")
    assert "re-drive" not in plan_specs([new], [working])[0].description


def test_recording_a_new_generation_re_drives_the_failed_writ(tmp_path) -> None:  # noqa: ANN001
    store = Store(Home(tmp_path / "home").db)
    try:
        old = Manifest("Writ", "a", W, {"title": "a"})
        store.record_spec(old)
        store.set_status(old.key, phase=FAILED, reason="GateFailed", message="tests failed",
                         attempt=3, attempts=[{"attempt": 3, "outcome": "failed"}],
                         conditions=[{"type": "Escalated", "status": "True"}])
        new = Manifest("Writ", "a", W, {"title": "a, fixed"})
        [action] = plan_specs([new], store.list())
        execute_spec_action(store, action, {new.key: new})
        writ = store.get(*new.key)
        assert (writ.phase, writ.reason, writ.status["attempt"]) == (PENDING, "SpecChanged", 1)
        assert writ.generation == new.generation
        [retry] = writ.status["retries"]
        assert retry["by"] == f"spec generation {old.generation} -> {new.generation}"
        assert (retry["from"], retry["reason"], retry["attempts"]) == (FAILED, "GateFailed", 3)
        assert writ.status["attempts"] == [{"attempt": 3, "outcome": "failed"}]  # history kept
        escalated = [c for c in writ.status["conditions"] if c["type"] == "Escalated"]
        assert escalated[0]["status"] == "False"
        assert [e.type for e in store.events(types=["retried", "applied"])] == [
            "retried", "applied"]
        assert plan_specs([new], store.list()) == []  # applying again changes nothing
    finally:
        store.close()


def test_the_merge_in_progress_is_not_held() -> None:
    """Only Queued MRs of Resolved writs are held: a Merging one lands (no gates here)."""
    view = forge_view(mr(1, "x", "Merging", writ_phase=MERGING, step=Step.MERGED,
                         commit="c", onto="abc123"), suspended=HELD)
    assert [a.kind for a in plan(view).actions] == ["land"]


# ---- the sentinel: retryFailedAfter ------------------------------------------------------


def failed(reason: str = "RespawnLimit", failed_at: float = 1000.0, retries: int = 0,
           **kw: Any) -> Record:
    status = {"failedAt": failed_at,
              "retries": [{"reason": "RespawnLimit", "from": FAILED}] * retries}
    return rec("Writ", W, "a", {"title": "a"}, phase=FAILED, status=status, reason=reason, **kw)


def sentinel_view(*writs: Record, now: float, after: float | None = 1800.0) -> SentinelView:
    spec = WorldSpec(source="/s", retry_failed_after=after)
    return SentinelView(W, spec, {w.name: w for w in writs}, {}, now)


def test_an_infrastructure_failure_is_re_driven_after_the_backoff_doubling_per_retry() -> None:
    early = sentinel_plan(sentinel_view(failed(), now=1000.0 + 1799))
    assert early.actions == () and early.requeue_after == 1.0
    assert early.waiting == {"writ/shop/a": "RespawnLimit: re-driven in 1s (retryFailedAfter)"}
    due = sentinel_plan(sentinel_view(failed(), now=1000.0 + 1800))
    assert [(a.kind, a.data["writ"], a.data["version"]) for a in due.actions] == [
        ("retry-failed", "a", 0)]
    twice = sentinel_view(failed(retries=2), now=1000.0 + 1800 * 3)
    assert sentinel_plan(twice).actions == ()  # 2 earlier re-drives: 4 x 30m
    assert sentinel_plan(twice).requeue_after == 1800.0
    assert [a.kind for a in sentinel_plan(sentinel_view(
        failed(retries=2), now=1000.0 + 1800 * 4)).actions] == ["retry-failed"]


def test_only_infrastructure_failures_are_re_driven_and_only_when_asked() -> None:
    late = 1000.0 + 10**6
    assert sentinel_plan(sentinel_view(failed("GateFailed"), now=late)).actions == ()
    assert sentinel_plan(sentinel_view(failed(orphaned=True), now=late)).actions == ()
    assert sentinel_plan(sentinel_view(failed(), now=late, after=None)).actions == ()
    assert retry_due(failed(), 60.0) == 1060.0
    assert retry_due(rec("Writ", W, "a", {"title": "a"}, phase="Merged"), 60.0) is None


def test_the_sentinel_re_drives_a_due_writ_in_the_store(tmp_path) -> None:  # noqa: ANN001
    from reconciler.controllers.sentinel_act import act
    from reconciler.drivers.sphere import Sphere

    sphere = Sphere(Home(tmp_path / "home"))
    try:
        store = sphere.store
        store.record_spec(Manifest("World", W, "", {
            "source": "/s", "sentinel": {"retryFailedAfter": "30s"}}), initial_phase="Ready")
        writ_ = Manifest("Writ", "a", W, {"title": "a"})
        store.record_spec(writ_)
        store.set_status(writ_.key, phase=FAILED, reason="RespawnLimit", message="died",
                         failedAt=time.time() - 31, attempt=2, agent="vega")
        record = store.get(*writ_.key)
        [action] = sentinel_plan(SentinelView(
            W, WorldSpec.from_spec(store.get("World", "", W).spec), {"a": record}, {},
            time.time())).actions
        assert act(sphere, action) is True
        again = store.get(*writ_.key)
        assert (again.phase, again.reason, again.status["attempt"]) == (
            PENDING, "RetryFailedAfter", 1)
        assert again.status["retries"][0]["by"] == "sentinel (retryFailedAfter)"
        assert act(sphere, action) is False  # done once: the planned version is gone
    finally:
        sphere.close()
