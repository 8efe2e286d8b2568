"""Validation against what is already applied: a file of writs for an applied world is
valid on its own, while unknown names, cycles through applied writs and caravans of
unknown writs are still reported where they are written."""

from __future__ import annotations

from pathlib import Path

from helpers import world_yaml, writ_yaml

from reconciler.core.model import Manifest
from reconciler.core.store import Store
from reconciler.specs.manifests import load
from reconciler.specs.references import Known, known_from

CARAVAN = """\
apiVersion: sol/v1
kind: Caravan
metadata: {name: train, world: shop}
spec:
  phases:
    - [base]
    - [extra]
"""


def write(path: Path, *docs: str) -> Path:
    path.write_text("---\n".join(docs))
    return path


def test_known_objects_are_the_non_orphaned_worlds_and_writs(tmp_path: Path) -> None:
    store = Store(tmp_path / "db")
    for m in (Manifest("World", "shop", "", {"source": "/s"}),
              Manifest("World", "old", "", {"source": "/o"}),
              Manifest("Writ", "base", "shop", {"title": "b", "dependsOn": ["other/x"]}),
              Manifest("Writ", "gone", "shop", {"title": "g"}),
              Manifest("Caravan", "c", "shop", {"phases": [["base"]]})):
        store.record_spec(m)
    store.set_orphaned(("World", "", "old"))
    store.set_orphaned(("Writ", "shop", "gone"))
    known = known_from(store.list())
    assert known.worlds == {"shop"}
    assert dict(known.writs) == {("shop", "base"): ("other/x",)}


def test_writs_of_an_applied_world_validate_only_with_known_objects(tmp_path: Path) -> None:
    path = write(tmp_path / "writs.yaml", writ_yaml("extra", "shop", extra="dependsOn: [base]"))
    alone = load([path])
    assert len(alone.problems) == 1 and "unknown world 'shop'" in alone.problems[0]
    known = Known(frozenset({"shop"}), {("shop", "base"): ()})
    result = load([path], known=known)
    assert result.ok, result.problems
    assert [m.name for m in result.manifests] == ["extra"]


def test_unknown_writs_and_cycles_through_applied_writs_are_reported(tmp_path: Path) -> None:
    path = write(tmp_path / "writs.yaml",
                 writ_yaml("extra", "shop", extra="dependsOn: [basse]"),
                 writ_yaml("loop", "shop", extra="dependsOn: [base]"))
    known = Known(frozenset({"shop"}), {("shop", "base"): ("loop",)})
    problems = load([path], known=known).problems
    assert len(problems) == 2, problems
    assert "spec.dependsOn[0]: unknown writ 'basse' in world shop (did you mean 'base'?)" \
        in problems[0]
    assert problems[1].startswith(f"{path}:3:") and \
        "dependsOn cycle: loop -> base -> loop" in problems[1]


def test_a_set_document_replaces_the_applied_writ_of_its_name(tmp_path: Path) -> None:
    # applied, base depended on extra; the set's base no longer does: no cycle
    path = write(tmp_path / "writs.yaml", writ_yaml("base", "shop"),
                 writ_yaml("extra", "shop", extra="dependsOn: [base]"))
    known = Known(frozenset({"shop"}), {("shop", "base"): ("extra",)})
    assert load([path], known=known).ok


def test_caravan_phases_may_name_applied_writs(tmp_path: Path, repo: Path) -> None:
    path = write(tmp_path / "caravan.yaml", CARAVAN)
    known = Known(frozenset({"shop"}), {("shop", "base"): (), ("shop", "extra"): ("base",)})
    assert load([path], known=known).ok
    missing = load([path], known=Known(frozenset({"shop"}), {("shop", "base"): ()})).problems
    assert len(missing) == 1 and "phases[1][0]: unknown writ 'extra'" in missing[0]
    backwards = Known(frozenset({"shop"}), {("shop", "base"): ("extra",), ("shop", "extra"): ()})
    late = load([path], known=backwards).problems
    assert len(late) == 1 and "in the later phase 1" in late[0]
    # a whole set is validated as before: its own world is known without the store
    whole = write(tmp_path / "whole.yaml", world_yaml("shop", repo), writ_yaml("a", "shop"))
    assert load([whole]).ok and load([whole], known=Known()).ok
