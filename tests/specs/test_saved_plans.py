"""Saved plans (`sol diff --save FILE`, `sol apply --plan FILE`) as a planner uses them:
a fresh plan applies exactly what it showed; a plan whose source moved (a new commit, an
edited directory) or whose observed state changed (a writ ran, another apply) is refused
with what changed, and nothing is recorded."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path

from conftest import git, make_repo, poll
from helpers import tmux_sessions, world_yaml, writ_status, writ_yaml, write_specs
from test_sources import commit, records, src

from reconciler.cli.specs import _plan_changes
from reconciler.core.home import Home
from reconciler.core.plan import Action
from reconciler.specs import record as recording

Sol = Callable[..., subprocess.CompletedProcess[str]]
SUSPENDED = "suspend: true\n"


def stale(result: subprocess.CompletedProcess[str], plan: Path) -> list[str]:
    """The refusal: exit 1, a heading, one line per change, what to do; the changes."""
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines[0] == f"error: the saved plan {plan} is stale; nothing was applied:"
    assert lines[-1].startswith("run `sol diff ") and f"--save {plan}" in lines[-1]
    return [line.removeprefix("  - ") for line in lines[1:-1]]


def test_a_saved_plan_records_source_revision_state_and_actions(
        tmp_path: Path, repo: Path, sol_home: Home, sol: Sol) -> None:
    specs = write_specs(tmp_path / "specs", world_yaml("shop", repo, extra=SUSPENDED),
                        writ_yaml("a", "shop"))
    plan = tmp_path / "plan.json"
    shown = sol("diff", "-f", str(specs), "-o", "json", "--save", str(plan), cwd=tmp_path)
    assert shown.returncode == 2 and f"Plan saved to {plan}" in shown.stderr
    data = json.loads(plan.read_text())
    assert json.loads(shown.stdout)["actions"] == data["actions"]  # stdout stays clean JSON
    assert data["kind"] == "Plan" and data["paths"] == [str(specs)]
    assert data["revision"].startswith("content:") and data["prune"] is False
    assert data["observed"] == {} and len(data["fingerprint"]) == 64
    assert [(a["target"], a["reconciler"]) for a in data["actions"]] == [
        ("world/shop", ""), ("writ/shop/a", ""), ("world/shop", "worlds"),
        ("world/shop", "worlds"),  # the clone, then the Suspended condition
        ("writ/shop/a", "consul")]  # the consul's waiting reason is planned too
    done = sol("apply", "--plan", "plan.json", cwd=tmp_path)  # from another cwd works too
    assert done.returncode == 0, done.stderr
    assert "Applied the saved plan plan.json." in done.stdout
    assert sorted(r.name for r in records(sol_home)) == ["a", "shop"]


def test_a_plan_whose_git_source_moved_is_refused_and_a_fresh_one_applies(
        tmp_path: Path, repo: Path, sol_home: Home, sol: Sol) -> None:
    specs = make_repo(tmp_path / "specsrepo",
                      {"specs/world.yaml": world_yaml("shop", repo, extra=SUSPENDED)})
    first = git(specs, "rev-parse", "HEAD")
    assert sol("apply", "-f", src(specs)).returncode == 0
    second = commit(specs, {"specs/writs.yaml": writ_yaml("a", "shop")})
    plan = tmp_path / "plan.json"
    assert sol("diff", "-f", src(specs), "--save", str(plan)).returncode == 2
    assert json.loads(plan.read_text())["revision"] == second
    third = commit(specs, {"specs/writs.yaml": writ_yaml("a", "shop") + "---\n"
                           + writ_yaml("b", "shop")})
    changes = stale(sol("apply", "--plan", str(plan)), plan)
    assert changes == [f"source {src(specs)} moved from {second[:7]} to {third[:7]}"]
    assert sorted(r.name for r in records(sol_home)) == ["shop"]  # nothing recorded
    assert all(r.status["sourceRevision"] == first for r in records(sol_home))

    assert sol("diff", "-f", src(specs), "--save", str(plan)).returncode == 2
    done = sol("apply", "--plan", str(plan))
    assert done.returncode == 0, done.stderr
    assert f"at revision {third[:7]}" in done.stdout and "+ writ/shop/b" in done.stdout
    assert sorted(r.name for r in records(sol_home)) == ["a", "b", "shop"]
    assert all(r.status["sourceRevision"] == third for r in records(sol_home))
    again = sol("apply", "--plan", str(plan))  # applied: the state it was made on is gone
    assert any(c.startswith("writ shop/a appeared") for c in stale(again, plan))


def test_a_plan_is_refused_once_a_writ_ran_or_another_apply_changed_the_state(
        tmp_path: Path, repo: Path, sol_home: Home, sol: Sol) -> None:
    go = tmp_path / "go"  # the agent finishes only once the plan is saved
    steps = f"while [ ! -e '{go}' ]; do sleep 0.05; done; echo done > done.txt"
    specs = write_specs(tmp_path / "specs", world_yaml("shop", repo),
                        writ_yaml("quick", "shop", steps))
    assert sol("apply", "-f", str(specs)).returncode == 0
    assert writ_status(sol_home, "shop", "quick").phase == "Working"
    (specs / "more.yaml").write_text(writ_yaml("later", "shop", extra="suspend: true"))
    plan = tmp_path / "plan.json"
    assert sol("diff", "-f", str(specs), "--save", str(plan)).returncode == 2
    observed = json.loads(plan.read_text())["observed"]
    assert observed["writ shop/quick"]["phase"] == "Working"
    assert observed["world shop"]["sessions"] == 1
    go.touch()
    poll(lambda: writ_status(sol_home, "shop", "quick").phase == "Resolved", timeout=30,
         what="the scripted agent resolved")
    changes = stale(sol("apply", "--plan", str(plan)), plan)
    assert "writ shop/quick changed phase Working -> Resolved" in changes
    assert writ_status(sol_home, "shop", "later") is None
    poll(lambda: not any(tmux_sessions(sol_home).values()), timeout=30,
         what="the resolved agent's session ended")  # else it may end between save and apply

    assert sol("diff", "-f", str(specs), "--save", str(plan)).returncode == 2
    other = write_specs(tmp_path / "other", world_yaml("shop", repo),
                        writ_yaml("quick", "shop", steps, title="Retitled"))
    assert sol("apply", "-f", str(other)).returncode == 0  # someone else applied meanwhile
    changes = stale(sol("apply", "--plan", str(plan)), plan)
    assert len(changes) == 1 and changes[0].startswith("writ shop/quick changed generation")

    assert sol("diff", "-f", str(specs), "--save", str(plan)).returncode == 2
    (specs / "more.yaml").write_text(writ_yaml("later", "shop", title="Edited after save"))
    changes = stale(sol("apply", "--plan", str(plan)), plan)
    assert len(changes) == 1 and changes[0].startswith(f"manifests in {specs} changed")
    assert writ_status(sol_home, "shop", "later") is None

    assert sol("diff", "-f", str(specs), "--save", str(plan)).returncode == 2
    done = sol("apply", "--plan", str(plan))
    assert done.returncode == 0, done.stderr
    assert writ_status(sol_home, "shop", "later").spec["title"] == "Edited after save"
    assert writ_status(sol_home, "shop", "quick").spec["title"] == "Writ quick"


def test_a_bad_plan_file_or_mixed_options_are_one_sentence(
        tmp_path: Path, repo: Path, sol: Sol) -> None:
    specs = write_specs(tmp_path / "specs", world_yaml("shop", repo, extra=SUSPENDED))
    junk, other = tmp_path / "junk.json", tmp_path / "other.json"
    junk.write_text("{not json")
    other.write_text(json.dumps({"kind": "Writ"}))
    cases = [(("apply", "--plan", str(tmp_path / "missing.json")), "cannot read the plan"),
             (("apply", "--plan", str(junk)), "is not a saved plan (not JSON"),
             (("apply", "--plan", str(other)), "is not a saved plan of this sol"),
             (("apply", "--plan", str(junk), "-f", str(specs)), "drop -f"),
             (("diff", "-f", str(specs), "--save", str(tmp_path / "no" / "p.json")),
              "cannot write the plan")]
    for args, why in cases:
        done = sol(*args)
        assert done.returncode == 1 and why in done.stderr, (args, done.stderr)
        assert "Traceback" not in done.stderr
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr


def test_state_and_plan_differences_read_as_phrases() -> None:
    before = {"writ shop/a": {"generation": "g1", "phase": "Pending", "orphaned": False},
              "world shop": {"generation": "w", "phase": "Ready", "orphaned": False,
                             "tip": "a" * 40, "sessions": 0}}
    now = {"writ shop/b": {"generation": "g", "phase": "Pending", "orphaned": False},
           "world shop": {**before["world shop"], "tip": "b" * 40, "sessions": 2}}
    assert recording.state_changes(before, now) == [
        "world shop changed sessions 0 -> 2", "world shop changed tip aaaaaaa -> bbbbbbb",
        "writ shop/a is gone", "writ shop/b appeared"]
    assert recording.state_changes(now, now) == []
    cast = Action("+", "cast", "writ/shop/b", "cast an agent", {})
    note = Action("!", "orphan", "writ/shop/c", "orphaned", {})
    assert _plan_changes([cast.to_dict()], [cast]) == []
    assert _plan_changes([cast.to_dict()], [note]) == [
        "now planned: ! writ/shop/c orphaned", "no longer planned: + writ/shop/b cast an agent"]
