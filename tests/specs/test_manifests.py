"""Manifest loading and validation: the bad corpus, the reference manifests, the schemas.

Every case of tests/manifests_bad/ states its problems in `# expect: LINE:COL: fragment`
lines; each runs through libyaml (when ruamel.yaml.clib is installed) and through the
pure-Python composer, and both must give exactly those problems.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from graphlib import CycleError, TopologicalSorter
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from reconciler.core.errors import ManifestError, SolError
from reconciler.core.model import (
    DURATION_RE,
    NAME_RE,
    CaravanSpec,
    Manifest,
    WorldSpec,
    WritSpec,
    parse_duration,
)
from reconciler.specs import manifests

ROOT = Path(__file__).resolve().parents[2]
BAD = ROOT / "tests" / "manifests_bad"
CASES = sorted(p.name for p in BAD.iterdir() if p.name != "README.md")
EXPECT = re.compile(r"# expect: (\d+):(\d+): (.*)")
LOADERS = ["libyaml", "pure"] if manifests._CLoader is not None else ["pure"]
WORLD = "apiVersion: sol/v1\nkind: World\nmetadata: {name: shop}\nspec: {source: /srv/shop}\n"


@pytest.fixture(params=LOADERS)
def loader(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run a test through each YAML composer; both must agree to the column."""
    if request.param == "pure":
        monkeypatch.setattr(manifests, "_CLoader", None)
    return str(request.param)


def writ(name: str, world: str = "shop", extra: str = "") -> str:
    return (f"apiVersion: sol/v1\nkind: Writ\nmetadata: {{name: {name}, world: {world}}}\n"
            f"spec:\n  title: {json.dumps('Do ' + name)}\n{extra}")  # quoted: ': ' in a name


def expectations(case: Path) -> list[tuple[str, int, int, str]]:
    files = [case] if case.is_file() else sorted(case.rglob("*.yaml"))
    found = []
    for path in files:
        shown = str(path.relative_to(ROOT))
        for line in path.read_bytes().decode("latin-1").splitlines():
            match = EXPECT.match(line)
            if match:
                found.append((shown, int(match[1]), int(match[2]), match[3]))
    return found


@pytest.mark.parametrize("case", CASES)
def test_bad_corpus(case: str, loader: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    expected = expectations(BAD / case)
    assert expected, f"{case} states no `# expect:` line"
    result = manifests.load([f"tests/manifests_bad/{case}"])
    assert not result.ok
    unmatched = list(result.problems)
    for file, line, col, fragment in expected:
        hits = [p for p in unmatched if p.startswith(f"{file}:{line}:{col}: ") and fragment in p]
        assert len(hits) == 1, f"want {file}:{line}:{col}: ...{fragment}... in {result.problems}"
        unmatched.remove(hits[0])
    assert unmatched == [], "problems nobody expected"
    # Reported at once and in order: by file, then line, then column.
    keys = [(p.split(":")[0], int(p.split(":")[1]), int(p.split(":")[2]))
            for p in result.problems]
    assert keys == sorted(keys)


def test_every_brief_case_is_in_the_corpus() -> None:
    wanted = {"syntax_error.yaml", "not_mapping.yaml", "unknown_kind.yaml",
              "wrong_api_version.yaml", "wrong_types.yaml", "unknown_fields.yaml",
              "bad_names.yaml", "bad_durations.yaml", "unknown_world.yaml",
              "unknown_dependency.yaml", "dependency_cycle.yaml", "caravan_unknown_writ.yaml",
              "writ_in_two_caravans.yaml", "duplicate_names", "not_utf8.yaml",
              "missing_required.yaml"}
    assert wanted <= set(CASES)


def test_reference_manifests_are_valid(loader: str) -> None:
    result = manifests.load([ROOT / "manifests"])
    assert result.problems == []
    assert [p.name for p in result.files] == ["caravan.yaml", "envoy.yaml", "world.yaml",
                                            "writ.yaml"]
    by_kind: dict[str, list[Manifest]] = {}
    for m in result.manifests:
        by_kind.setdefault(m.kind, []).append(m)
    (world,) = by_kind["World"]
    assert world.name == "shop" and world.world == ""
    assert world.spec["source"] == "https://example.org/org/shop.git"
    spec = WorldSpec.from_spec(world.spec)
    assert spec.gates[0].timeout == 600 and spec.stall_after == 900
    writs = {m.name: WritSpec.from_spec(m.spec) for m in by_kind["Writ"]}
    (caravan,) = by_kind["Caravan"]
    phases = CaravanSpec.from_spec(caravan.spec).phases
    assert {name for phase in phases for name in phase} <= set(writs)
    assert writs["add-rate-limit"].runtime is not None
    assert writs["add-rate-limit"].runtime.command
    assert all(m.world == "shop" for m in by_kind["Writ"] + by_kind["Caravan"])


def test_origin_and_plain_values(loader: str) -> None:
    text = ("# a comment\n---\n" + WORLD + "---\n" +
            writ("a", extra="  priority: 1\n  dependsOn: []\n  suspend: false\n"
                 "  runtime: {name: codex, model: o3}\n") + "---\n")
    result = manifests.load_texts([("specs/x.yaml", "\ufeff" + text)])
    assert result.ok and not result.empty
    world, a = result.manifests
    assert str(world.origin) == "specs/x.yaml:3:1"
    assert str(a.origin) == "specs/x.yaml:8:1"
    assert a.spec == {"title": "Do a", "priority": 1, "dependsOn": [], "suspend": False,
                      "runtime": {"name": "codex", "model": "o3"}}

    def plain(value: Any) -> Iterator[type]:
        yield type(value)
        children = value.items() if isinstance(value, dict) else (
            enumerate(value) if isinstance(value, list) else [])
        for key, child in children:
            yield type(key)
            yield from plain(child)

    assert set(plain(a.spec)) <= {dict, list, str, int, bool}
    json.dumps(a.spec)  # the generation hash needs this


def test_load_texts_reports_display_names(loader: str) -> None:
    result = manifests.load_texts([("HEAD:specs/w.yaml", WORLD),
                                   ("HEAD:specs/a.yaml", writ("a", extra="  priority: 9\n"))])
    assert result.problems == ["HEAD:specs/a.yaml:6:13: Writ shop/a: spec.priority: 9 is "
                               "greater than the maximum of 3"]
    assert [m.name for m in result.manifests] == ["shop"]
    assert result.files == [Path("HEAD:specs/w.yaml"), Path("HEAD:specs/a.yaml")]


def test_columns_count_characters_and_scalars_are_typed(loader: str) -> None:
    text = WORLD + "---\n" + writ("a", extra="  description: 2024-01-01\n  dependsOn: ~\n") + (
        '---\napiVersion: sol/v1\nkind: Writ\nmetadata: {name: b, world: shop}\n'
        'spec: {title: "Café €x 😀", priority: 0x9}\n')
    result = manifests.load_texts([("u.yaml", text)])
    assert result.problems == [
        "u.yaml:12:14: Writ shop/a: spec.dependsOn: expected a list, got nothing: give it a "
        "value or remove the field",
        "u.yaml:17:38: Writ shop/b: spec.priority: 9 is greater than the maximum of 3"]
    text = text.replace("dependsOn: ~", "dependsOn: []").replace("0x9", "0x3")
    (_, a, b) = manifests.load_texts([("u.yaml", text)]).manifests
    assert a.spec == {"title": "Do a", "description": "2024-01-01", "dependsOn": []}
    assert b.spec == {"title": "Café €x 😀", "priority": 3}


def test_flow_mapping_with_url_is_valid(loader: str) -> None:
    """libyaml refuses `{source: https://...}`; YAML 1.2 allows it, and so does sol."""
    text = WORLD.replace("/srv/shop", "https://example.org/org/shop.git")
    result = manifests.load_texts([("w.yaml", text)])
    assert result.ok
    assert result.manifests[0].spec == {"source": "https://example.org/org/shop.git"}


def test_discovery(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    specs = tmp_path / "specs"
    (specs / "b" / "deep").mkdir(parents=True)
    (specs / ".git").mkdir()
    (specs / "world.yml").write_text(WORLD)
    (specs / "b" / "deep" / "z.yaml").write_text(writ("z"))
    (specs / "b" / "a.yaml").write_text(writ("a"))
    for junk in (".git/x.yaml", ".#a.yaml", "a.yaml~", ".a.yaml.swp", "notes.txt",
                 ".hidden.yaml"):
        (specs / junk).write_text("this: [is not valid")
    monkeypatch.chdir(tmp_path)
    result = manifests.load(["specs", tmp_path / "specs" / "b" / "a.yaml"])
    assert result.problems == []
    assert [str(p) for p in result.files] == ["specs/b/a.yaml", "specs/b/deep/z.yaml",
                                              "specs/world.yml"]
    assert [m.name for m in result.manifests] == ["a", "z", "shop"]
    # An absolute path under the cwd is shown relative; an explicit file is read whatever
    # its name.
    other = tmp_path / "plan.txt"
    other.write_text(writ("bad name"))
    problems = manifests.load([other]).problems
    assert problems[0].startswith("plan.txt:3:18: Writ shop/bad name: metadata.name: bad name")


def test_empty_and_missing_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "empty").mkdir()
    result = manifests.load(["empty"])
    assert result.empty and result.ok and result.files == [] and result.manifests == []
    with pytest.raises(SolError, match=r"^no manifests found in empty: "):
        manifests.validate(["empty"])
    (tmp_path / "comments").mkdir()
    (tmp_path / "comments" / "a.yaml").write_text("# nothing yet\n---\n")
    assert manifests.load(["comments"]).empty
    with pytest.raises(ManifestError) as info:
        manifests.validate(["nowhere", "empty"])
    assert info.value.problems == ["nowhere: no such file or directory: pass a manifest file "
                                   "or a directory of *.yaml manifests"]


def test_validate_returns_manifests_or_raises_every_problem(tmp_path: Path) -> None:
    (tmp_path / "w.yaml").write_text(WORLD)
    (tmp_path / "a.yaml").write_text(writ("a", extra="  dependsOn: [b]\n  priority: 0\n"))
    with pytest.raises(ManifestError) as info:
        manifests.validate([tmp_path])
    assert len(info.value.problems) == 2
    assert "unknown writ 'b' in world shop" in info.value.message
    assert "0 is less than the minimum of 1" in info.value.message
    (tmp_path / "b.yaml").write_text(writ("b"))
    (tmp_path / "a.yaml").write_text(writ("a", extra="  dependsOn: [b]\n"))
    assert sorted(m.name for m in manifests.validate([tmp_path])) == ["a", "b", "shop"]


def test_a_broken_file_does_not_invent_unknown_references() -> None:
    """The target of a reference may sit after the syntax error, so that is not reported;
    everything else still is."""
    result = manifests.load_texts([
        ("a.yaml", writ("a", world="elsewhere", extra="  dependsOn: [ghost]\n")),
        ("b.yaml", WORLD + "---\n" + writ("b") + "---\n" + writ("b") + "---\nkind: [\n"),
    ])
    assert result.problems == [
        "b.yaml:14:18: Writ shop/b: metadata.name: duplicate name: Writ shop/b is also defined "
        "at b.yaml:6:1; rename or remove one",
        "b.yaml:19:1: YAML syntax error: expected the node content, but found '<stream end>'",
    ]
    assert not any("unknown" in p for p in result.problems)


def test_cross_world_dependencies_and_cycles(loader: str) -> None:
    other = WORLD.replace("shop", "lab")
    result = manifests.load_texts([("x.yaml", "---\n".join([
        WORLD, other, writ("a", extra="  dependsOn: [lab/b]\n"),
        writ("b", world="lab", extra="  dependsOn: [shop/a]\n"),
        writ("c", extra="  dependsOn: [a, lab/b]\n")]))])
    assert [p.split(": ", 1)[1] for p in result.problems] == [
        "Writ shop/a: spec.dependsOn[0]: dependsOn cycle: shop/a -> lab/b -> shop/a: none of "
        "them could ever start"]
    assert [m.name for m in result.manifests if m.kind == "Writ"] == ["c"]


def test_schema_api() -> None:
    assert set(manifests.KIND_FILES) == {"World", "Writ", "Caravan", "Envoy"}
    assert manifests.schema("Writ") is manifests.schema("Writ")
    with pytest.raises(SolError, match="unknown kind 'Task': use one of World, Writ, Caravan"):
        manifests.schema("Task")


def object_schemas(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        if node.get("type") == "object":
            yield node
        for value in node.values():
            yield from object_schemas(value)
    elif isinstance(node, list):
        for value in node:
            yield from object_schemas(value)


@pytest.mark.parametrize("kind", ["World", "Writ", "Caravan"])
def test_schema_files_teach_the_format(kind: str) -> None:
    doc = manifests.schema(kind)
    Draft202012Validator.check_schema(doc)
    assert doc["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert doc["$id"].startswith("urn:sol:schema:v1:")
    assert doc["properties"]["kind"]["const"] == kind
    for obj in object_schemas(doc):
        assert obj.get("additionalProperties") is False, obj
        for name, prop in obj["properties"].items():
            target = doc["$defs"][prop["$ref"].split("/")[-1]] if "$ref" in prop else prop
            assert prop.get("description") or target.get("description"), name
    assert doc["$defs"]["name"]["pattern"] == NAME_RE.pattern


def defaults(kind: str) -> dict[str, Any]:
    """Every `default` under spec, by dotted path, following local $refs."""
    doc = manifests.schema(kind)

    def walk(node: dict[str, Any], prefix: str) -> Iterator[tuple[str, Any]]:
        for name, prop in node.get("properties", {}).items():
            if "$ref" in prop:
                prop = {**doc["$defs"][prop["$ref"].split("/")[-1]], **prop}
            if "default" in prop:
                yield prefix + name, prop["default"]
            yield from walk(prop, f"{prefix}{name}.")

    return dict(walk(doc["properties"]["spec"], ""))


def test_schema_defaults_match_the_model() -> None:
    world = defaults("World")
    spec = WorldSpec.from_spec({"source": "x", "forge": {"gates": [{"name": "t", "run": "t"}]}})
    assert (spec.branch, spec.push, spec.runtime.name, spec.max_active, spec.strategy,
            spec.max_attempts, spec.stall_after, spec.max_respawns, spec.suspend) == (
        world["branch"], world["push"], world["runtime.name"], world["capacity.maxActive"],
        world["forge.strategy"], world["forge.maxAttempts"],
        parse_duration(world["sentinel.stallAfter"]), world["sentinel.maxRespawns"],
        world["suspend"])
    gate = manifests.schema("World")["$defs"]["gate"]["properties"]["timeout"]["default"]
    assert spec.gates[0].timeout == parse_duration(gate)
    writ_defaults = defaults("Writ")
    w = WritSpec.from_spec({"title": "t"})
    assert (w.description, w.kind, w.priority, list(w.depends_on), w.suspend) == (
        writ_defaults["description"], writ_defaults["kind"], writ_defaults["priority"],
        writ_defaults["dependsOn"], writ_defaults["suspend"])
    caravan = defaults("Caravan")
    assert CaravanSpec.from_spec({"phases": [["a"]]}).commissioned is caravan["commissioned"]


def test_large_set_is_fast(tmp_path: Path) -> None:
    """1,000 writs across 10 worlds; the figure is well under a second here with libyaml."""
    for w in range(10):
        docs = [WORLD.replace("shop", f"w{w}")]
        docs += [writ(f"writ-{i}", f"w{w}", f"  dependsOn: [writ-{i - 1}]\n" if i else "")
                 for i in range(100)]
        (tmp_path / f"w{w}.yaml").write_text("---\n".join(docs))
    started = time.perf_counter()
    result = manifests.load([tmp_path])
    elapsed = time.perf_counter() - started
    assert result.ok and len(result.manifests) == 1010
    assert elapsed < (2.0 if manifests._CLoader is not None else 6.0), elapsed


names = st.from_regex(NAME_RE, fullmatch=True)
texts = st.text(st.characters(blacklist_categories=("Cs",)), max_size=70)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(name=names, world=names)
def test_any_valid_name_round_trips(name: str, world: str) -> None:
    world_doc = WORLD.replace("{name: shop}", f"{{name: {json.dumps(world)}}}")
    result = manifests.load_texts([("n.yaml", world_doc + "---\n" +
                                    writ(json.dumps(name), json.dumps(world)))])
    assert result.problems == []
    assert {(m.kind, m.world, m.name) for m in result.manifests} == {
        ("World", "", world), ("Writ", world, name)}


@settings(max_examples=60, deadline=None)
@given(name=texts.filter(lambda s: not NAME_RE.match(s)))
def test_any_invalid_name_is_refused(name: str) -> None:
    result = manifests.load_texts([("n.yaml", WORLD + "---\n" + writ(json.dumps(name)))])
    assert any("metadata.name: bad name" in p or "metadata.name: expected" in p
               for p in result.problems), result.problems
    assert [m.kind for m in result.manifests] == ["World"]


@settings(max_examples=60, deadline=None)
@given(text=st.one_of(texts, st.builds(lambda n, u: f"{n}{u}", st.integers(0, 10**6),
                                       st.sampled_from("smhd"))))
def test_durations_follow_the_model(text: str) -> None:
    world = WORLD.replace("{source: /srv/shop}", "{source: /srv/shop, sentinel: "
                          f"{{stallAfter: {json.dumps(text)}}}}}")
    result = manifests.load_texts([("d.yaml", world)])
    assert result.ok == bool(DURATION_RE.match(text)), result.problems
    if result.ok:
        assert WorldSpec.from_spec(result.manifests[0].spec).stall_after == parse_duration(text)
    else:
        assert "bad duration" in result.problems[0]


@settings(max_examples=40, deadline=None)
@given(edges=st.lists(st.tuples(st.integers(0, 5), st.integers(0, 5)), max_size=10))
def test_cycles_are_reported_exactly_when_there_are_some(edges: list[tuple[int, int]]) -> None:
    deps: dict[int, set[int]] = {i: set() for i in range(6)}
    for a, b in edges:
        deps[a].add(b)
    docs = [WORLD] + [writ(f"w{i}", extra=f"  dependsOn: [{', '.join(f'w{d}' for d in ds)}]\n")
                      for i, ds in deps.items()]
    result = manifests.load_texts([("g.yaml", "---\n".join(docs))])
    try:
        TopologicalSorter(deps).prepare()
        cyclic = False
    except CycleError:
        cyclic = True
    assert any("dependsOn cycle" in p for p in result.problems) == cyclic
    assert all("dependsOn cycle" in p for p in result.problems)
    for problem in result.problems:
        ring = problem.split("dependsOn cycle: ")[1].split(":")[0].split(" -> ")
        assert ring[0] == ring[-1]
        for a, b in zip(ring, ring[1:], strict=False):
            assert int(b[1:]) in deps[int(a[1:])]


def test_a_world_on_ray_names_only_the_bad_resource() -> None:
    world = WORLD.replace("spec: {source: /srv/shop}", "spec:\n  source: /srv/shop\n"
                          "  sessions: {backend: ray, resources: {CPU: 1, \"bad key\": 2}}")
    assert "sessions" in world
    problems = manifests.load_texts([("w.yaml", world)]).problems
    assert problems == ["w.yaml:6:48: World shop: spec.sessions.resources.bad key: unknown "
                        "field 'bad key': a name of letters, digits and _ . : / - is expected"]
    fine = manifests.load_texts([("w.yaml", world.replace('"bad key"', "memory"))])
    assert fine.problems == [] and fine.manifests[0].spec["sessions"]["backend"] == "ray"
