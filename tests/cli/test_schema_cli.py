"""`sol schema` as an editor or CI uses it: saved to a file once, then read by
check-jsonschema with no access to sol (docs/editors.md says how)."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from subprocess import CompletedProcess
from typing import Any

import pytest
from conftest import ROOT

Sol = Callable[..., CompletedProcess[str]]
SHIPPED = sorted([*(ROOT / "manifests").rglob("*.yaml"), *(ROOT / "examples").rglob("*.yaml")])


def check_jsonschema(*args: str) -> CompletedProcess[str]:
    binary = shutil.which("check-jsonschema")
    assert binary, "check-jsonschema is in the test extra: pip install -e '.[test]'"
    return subprocess.run([binary, *args], capture_output=True, text=True, timeout=120)


@pytest.fixture
def saved(sol: Sol, tmp_path: Path) -> Path:
    """`sol schema > .sol-schema.json`, as docs/editors.md tells a user to do once."""
    path = tmp_path / ".sol-schema.json"
    path.write_text(sol("schema", check=True).stdout)
    return path


def split(path: Path, into: Path) -> list[Path]:
    """One file per document, with the csplit line docs/editors.md gives."""
    into.mkdir(parents=True, exist_ok=True)
    subprocess.run(["csplit", "-s", "-z", "-b", "%02d.yaml", "-f", f"{path.stem}-",
                    str(path), "/^---$/", "{*}"], cwd=into, check=True)
    return sorted(into.glob(f"{path.stem}-*.yaml"))


def refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        if "$ref" in node:
            yield node["$ref"]
        for value in node.values():
            yield from refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from refs(item)


def test_every_shipped_manifest_validates_against_the_saved_schema(saved: Path,
                                                                   tmp_path: Path) -> None:
    assert len(SHIPPED) >= 7  # manifests/ (one per kind) and the demo's specs
    documents = [doc for path in SHIPPED for doc in split(path, tmp_path / "docs")]
    kinds = {line.split(":", 1)[1].split("#")[0].strip() for doc in documents
             for line in doc.read_text().splitlines() if line.startswith("kind:")}
    assert kinds == {"World", "Writ", "Caravan", "Envoy"}
    assert len(documents) > len(SHIPPED)  # the multi-document files were split
    result = check_jsonschema("--schemafile", str(saved), *map(str, documents))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ok -- validation done" in result.stdout


def test_a_wrong_kind_a_bad_field_and_another_kinds_field_are_rejected(
        saved: Path, tmp_path: Path) -> None:
    bad = {
        "task.yaml": "apiVersion: sol/v1\nkind: Task\nmetadata: {name: x}\nspec: {}\n",
        "typo.yaml": ("apiVersion: sol/v1\nkind: Writ\nmetadata: {name: x, world: shop}\n"
                      "spec: {title: T, descripton: D}\n"),
        "world.yaml": ("apiVersion: sol/v1\nkind: World\nmetadata: {name: shop}\n"
                       "spec: {source: /src, dependsOn: [x]}\n"),
        "name.yaml": ("apiVersion: sol/v1\nkind: Caravan\nmetadata: {name: Bad_Name, "
                      "world: shop}\nspec: {phases: [[a]]}\n"),
    }
    for name, text in bad.items():
        (tmp_path / name).write_text(text)
    result = check_jsonschema("--schemafile", str(saved),
                              *(str(tmp_path / name) for name in bad))
    assert result.returncode == 1
    out = result.stdout
    assert "task.yaml::$.kind: 'Task' is not one of ['World', 'Writ', 'Caravan', 'Envoy']" in out
    assert "typo.yaml::$.spec: Additional properties are not allowed ('descripton'" in out
    assert "world.yaml::$.spec: Additional properties are not allowed ('dependsOn'" in out
    assert "name.yaml::$.metadata.name: 'Bad_Name' does not match" in out


def test_the_saved_schema_is_self_contained_and_a_valid_schema(saved: Path) -> None:
    doc = json.loads(saved.read_text())
    found = list(refs(doc))
    assert found and all(ref.startswith("#/$defs/") for ref in found)
    assert {ref.removeprefix("#/$defs/") for ref in found} <= set(doc["$defs"])
    result = check_jsonschema("--check-metaschema", str(saved))
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_kinds_own_schema_is_still_the_shipped_file(sol: Sol) -> None:
    shipped = json.loads((ROOT / "schemas" / "caravan.json").read_text())
    assert json.loads(sol("schema", "Caravan", check=True).stdout) == shipped


def test_check_jsonschema_reads_one_document_per_file(saved: Path) -> None:
    """Why docs/editors.md says to split: a multi-document file does not even parse."""
    result = check_jsonschema("--schemafile", str(saved), str(ROOT / "manifests" / "writ.yaml"))
    assert result.returncode == 1
    assert "expected a single document in the stream" in result.stdout
