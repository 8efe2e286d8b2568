"""`sol diff` field by field, one line per object, objects counted as objects; and a
partial set (writs of an applied world, no World document) applied on its own, as
`kubectl apply -f one.yaml` is: it touches its own objects only and cannot prune."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from subprocess import CompletedProcess

from conftest import make_repo
from helpers import meta, store, world_yaml, writ_yaml, write_specs

from reconciler.cli.plans import change_text, show
from reconciler.core.home import Home

Sol = Callable[..., CompletedProcess[str]]
SUSPENDED = "suspend: true\n"
LONG = "Do the work. " * 10


def object_lines(stdout: str) -> list[str]:
    """The lines about changes of desired state (reconciler lines end with `[who]`)."""
    return [line.strip() for line in stdout.splitlines()
            if re.match(r"^  [-+~!] \S+: ", line) and not re.search(r"  \[\w+\]$", line)]


def refused(result: CompletedProcess[str]) -> str:
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def records(home: Home) -> dict[str, object]:
    db = store(home)
    try:
        return {f"{r.kind} {r.name}": r for r in db.list()}
    finally:
        db.close()


def test_diff_shows_the_fields_that_change_one_line_per_object(
        sol: Sol, tmp_path: Path, repo: Path) -> None:
    world = world_yaml("shop", repo, extra=SUSPENDED)
    specs = write_specs(tmp_path / "specs", world, writ_yaml("a", "shop"),
                        writ_yaml("b", "shop", extra="priority: 2"),
                        writ_yaml("d", "shop"), writ_yaml("e", "shop", title=LONG + "v1"))
    sol("apply", "-f", str(specs), check=True)
    write_specs(specs, world, writ_yaml("a", "shop"),
                writ_yaml("b", "shop", title="Better b", extra="{priority: 1, dependsOn: [a]}"),
                writ_yaml("c", "shop"), writ_yaml("e", "shop", title=LONG + "v2"))
    shown = sol("diff", "-f", str(specs))
    assert shown.returncode == 2, shown.stderr
    assert object_lines(shown.stdout) == [
        '~ writ/shop/b: title "Writ b" -> "Better b", priority 2 -> 1, '
        'dependsOn (unset) -> ["a"]',
        "+ writ/shop/c: new writ",
        '~ writ/shop/e: title "…he work. Do the work. Do the work. v1" -> '
        '"…he work. Do the work. Do the work. v2"',
        "! writ/shop/d: not in the manifests: orphaned, kept (use --prune to cancel)",
    ]
    summary = shown.stdout.splitlines()[-1]
    assert re.fullmatch(r"Plan: 1 to create, 2 to change, 0 to cancel, 1 orphaned; "
                        r"\d+ reconciler actions?\.", summary), summary
    reconciler = [line for line in shown.stdout.splitlines() if line.endswith("[consul]")]
    assert any("writ/shop/c" in line for line in reconciler)  # the pass's plan, as before

    data = json.loads(sol("diff", "-f", str(specs), "-o", "json").stdout)
    update = next(a for a in data["actions"] if a["target"] == "writ/shop/b")
    assert update["data"]["changes"] == [
        {"path": "title", "old": "Writ b", "new": "Better b"},
        {"path": "priority", "old": 2, "new": 1}, {"path": "dependsOn", "new": ["a"]}]
    assert data["objects"] == {"create": 1, "change": 2, "cancel": 0, "retire": 0,
                               "forget": 0, "orphan": 1, "actions": len(reconciler)}

    pruned = sol("diff", "-f", str(specs), "--prune")
    assert pruned.returncode == 2
    assert "- writ/shop/d: removed from the manifests: cancel (branch kept)" in object_lines(
        pruned.stdout)
    assert pruned.stdout.splitlines()[-1].startswith(
        "Plan: 1 to create, 2 to change, 1 to cancel; ")
    applied = sol("apply", "-f", str(specs), check=True)
    assert '  ~ writ/shop/b: title "Writ b" -> "Better b"' in applied.stdout
    assert "Apply complete. Plan: 1 to create, 2 to change, 0 to cancel, 1 orphaned" \
        in applied.stdout
    assert sol("diff", "-f", str(specs)).returncode == 0


def test_values_are_json_shortened_and_inert() -> None:
    assert show("a" * 100) == '"' + "a" * 37 + '…"'
    assert show("x" * 30 + "old tail" + "y" * 60, "x" * 30 + "new tail") == \
        '"…' + "x" * 12 + "old tail" + "y" * 16 + '…"'  # from just before the change
    assert len(show(list(range(50)))) == 40
    assert show({"name": "unit"}) == '{"name": "unit"}'
    assert change_text([{"path": "suspend", "old": True}, {"path": "kind", "new": "code"},
                        {"path": "t", "old": "a\nb", "new": "\x1b]52;c;x"}]) == \
        'suspend true -> (unset), kind (unset) -> "code", t "a\\nb" -> "\\u001b]52;c;x"'


def test_a_file_of_writs_of_an_applied_world_applies_alone_and_orphans_nothing(
        sol: Sol, sol_home: Home, tmp_path: Path, repo: Path) -> None:
    extra = write_specs(tmp_path / "extra", writ_yaml("c", "shop", extra="dependsOn: [a]"),
                        writ_yaml("a", "shop", title="Retitled a"))
    alone = sol("validate", str(extra))  # no store: nothing is known yet
    assert alone.returncode == 1 and "unknown world 'shop'" in alone.stderr
    assert not sol_home.db.exists()  # and validating did not create one

    specs = make_repo(tmp_path / "specsrepo", {
        "specs/world.yaml": world_yaml("shop", repo, extra=SUSPENDED),
        "specs/writs.yaml": writ_yaml("a", "shop") + "---\n" + writ_yaml("b", "shop")})
    source = f"git+{specs}@main#specs"
    sol("apply", "-f", source, check=True)
    revision = meta(sol_home, "source_revision")
    assert revision and meta(sol_home, "source") == source

    assert sol("validate", str(extra), check=True).stdout.startswith("valid: 2 writs")
    shown = sol("diff", "-f", str(extra))
    assert shown.returncode == 2, shown.stderr
    assert object_lines(shown.stdout) == ['~ writ/shop/a: title "Writ a" -> "Retitled a"',
                                          "+ writ/shop/c: new writ"]
    assert "writ/shop/b" not in shown.stdout and "world/shop" not in shown.stdout
    assert json.loads(sol("diff", "-f", str(extra), "-o", "json").stdout)["partial"] is True

    for command in ("diff", "apply"):
        line = refused(sol(command, "-f", str(extra), "--prune"))
        assert "--prune needs the whole specs directory" in line
    assert "Writ c" not in records(sol_home)

    plan = tmp_path / "plan.json"
    assert sol("diff", "-f", str(extra), "--save", str(plan)).returncode == 2
    done = sol("apply", "--plan", str(plan))
    assert done.returncode == 0, done.stderr
    assert "+ writ/shop/c: new writ" in done.stdout
    now = records(sol_home)
    assert now["Writ c"].phase == "Pending" and now["Writ a"].spec["title"] == "Retitled a"
    assert not any(r.orphaned for r in now.values())  # world shop and b left alone
    assert meta(sol_home, "source_revision") == revision  # not a revision of the source
    assert meta(sol_home, "source") == source
    assert now["Writ b"].status.get("sourceRevision") == revision
    assert sol("apply", "-f", str(extra), check=True).stdout.startswith("No changes")
