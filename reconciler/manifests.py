"""Load and validate manifests, reporting every problem at once as `FILE:LINE:COL: message`.

YAML is composed into a node tree (libyaml through ruamel.yaml.clib when installed, the
pure-Python composer otherwise): every node keeps its start mark, so positions cost
nothing extra, and the tree is turned into plain values here. The JSON Schemas in
`schemas/` are the single source of the format; their errors are rewritten for people.
"""

from __future__ import annotations

import difflib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cache
from graphlib import CycleError, TopologicalSorter
from pathlib import Path
from typing import Any, NamedTuple

from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError
from ruamel.yaml import YAML
from ruamel.yaml.error import MarkedYAMLError, YAMLError
from ruamel.yaml.reader import ReaderError

from .errors import ManifestError, SolError
from .home import data_path
from .model import API_VERSION, KINDS, NAME_RE, Manifest, Origin, split_ref

try:
    from ruamel.yaml.cyaml import CSafeLoader as _CLoader
except ImportError:  # pragma: no cover - depends on ruamel.yaml.clib being installed
    _CLoader = None

KIND_FILES = {"World": "world.json", "Writ": "writ.json", "Caravan": "caravan.json"}
SUFFIXES = (".yaml", ".yml")
MAX_NODES = 100_000  # per document: alias bombs stop here instead of eating memory
YAML_TAG = "tag:yaml.org,2002:"
NAME_PATTERN = NAME_RE.pattern
PATTERN_HINTS = {
    NAME_PATTERN: ("bad name", "use 1 to 63 lowercase letters, digits and '-', starting and "
                   "ending with a letter or digit, like add-rate-limit"),
    "^[0-9]+(s|m|h)$": ("bad duration", "use a number and s, m or h, like 30s or 10m"),
    "^([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?/)?[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$": (
        "bad writ reference", "use a writ name, or other-world/name"),
}
BRANCH_HINT = ("bad branch name", "git branch names cannot start with '-' or contain spaces "
               "or any of ~ ^ : ? * [ \\")
TYPE_WORDS = {"string": "a string", "integer": "a whole number", "number": "a number",
              "boolean": "true or false", "object": "a mapping", "array": "a list",
              "null": "null"}
USE = "a manifest has apiVersion, kind, metadata and spec"
USE_KINDS = "use World, Writ or Caravan"


class Problem(NamedTuple):
    """One finding; line 0 means the whole path (it does not exist, it cannot be read)."""

    file: str
    line: int
    col: int
    message: str

    def __str__(self) -> str:
        if not self.line:
            return f"{self.file}: {self.message}"
        return f"{self.file}:{self.line}:{self.col}: {self.message}"


@dataclass
class LoadResult:
    """Valid manifests, every problem found, and the files read."""

    manifests: list[Manifest] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)
    documents: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def empty(self) -> bool:
        """No documents at all: never a reason to prune anything (invariant 1)."""
        return self.documents == 0


@cache
def schema(kind: str) -> dict[str, Any]:
    """The JSON Schema of one kind, as shipped in schemas/."""
    if kind not in KIND_FILES:
        raise SolError(f"unknown kind {kind!r}: use one of {', '.join(KIND_FILES)}")
    return json.loads((data_path("schemas") / KIND_FILES[kind]).read_text(encoding="utf-8"))


@cache
def _validator(kind: str) -> Draft202012Validator:
    """Compiled once per kind, local $refs inlined: a quarter faster on large sets."""
    full = schema(kind)
    return Draft202012Validator(_inline(full, full.get("$defs", {})))


def _inline(node: Any, defs: dict[str, Any]) -> Any:
    if isinstance(node, list):
        return [_inline(item, defs) for item in node]
    if not isinstance(node, dict):
        return node
    out = {k: _inline(v, defs) for k, v in node.items() if k not in ("$ref", "$defs")}
    ref = node.get("$ref", "")
    return {**_inline(defs[ref[8:]], defs), **out} if ref.startswith("#/$defs/") else out


def load(paths: Sequence[str | Path]) -> LoadResult:
    """Every *.yaml/*.yml under `paths` (files or directories), validated as one set."""
    problems: list[Problem] = []
    items: list[tuple[str, str]] = []
    files = _collect(paths, problems)
    for display, path in files:
        try:
            data = path.read_bytes()
        except OSError as exc:
            problems.append(Problem(display, 0, 0, f"cannot read: {exc.strerror}"))
            continue
        try:
            items.append((display, data.decode("utf-8-sig")))
        except UnicodeDecodeError as exc:
            start = data.rfind(b"\n", 0, exc.start) + 1
            line = data.count(b"\n", 0, exc.start) + 1
            col = len(data[start:exc.start].decode("utf-8", "replace")) + 1
            problems.append(Problem(display, line, col, f"not UTF-8 text (byte "
                                    f"0x{data[exc.start]:02x}): save the file as UTF-8"))
    result = _load_items(items, problems)
    result.files = [path for _, path in files]
    return result


def load_texts(items: Sequence[tuple[str, str]]) -> LoadResult:
    """The same as `load`, from (display name, text) pairs, e.g. read from a git revision."""
    result = _load_items([(name, text.removeprefix("\ufeff")) for name, text in items], [])
    result.files = [Path(name) for name, _ in items]
    return result


def validate(paths: Sequence[str | Path]) -> list[Manifest]:
    """The manifests under `paths`; ManifestError with every problem, SolError if none."""
    result = load(paths)
    if result.problems:
        raise ManifestError(result.problems)
    if result.empty:
        where = ", ".join(str(p) for p in paths) or "(no path given)"
        raise SolError(f"no manifests found in {where}: add *.yaml manifests there or pass "
                       "another path")
    return result.manifests


def _display(path: Path) -> str:
    if path.is_absolute():
        try:
            return str(path.relative_to(Path.cwd()))
        except ValueError:
            return str(path)
    return str(path)


def _skipped(name: str) -> bool:
    """Hidden files and editor leftovers (`.#x.yaml`, `x.yaml~`, `.x.yaml.swp`)."""
    return name.startswith((".", "#")) or name.endswith("~") or not name.endswith(SUFFIXES)


def _collect(paths: Sequence[str | Path], problems: list[Problem]) -> list[tuple[str, Path]]:
    found: list[tuple[str, Path]] = []
    seen: set[Path] = set()
    for given in paths:
        root = Path(given)
        if root.is_dir():
            batch = []
            for here, dirs, names in os.walk(root):
                dirs[:] = [d for d in dirs if not d.startswith(".")]
                batch += [Path(here) / n for n in names if not _skipped(n)]
            candidates = sorted(batch)
        elif root.exists():
            candidates = [root]
        else:
            problems.append(Problem(_display(root), 0, 0, "no such file or directory: pass a "
                                    "manifest file or a directory of *.yaml manifests"))
            continue
        for path in candidates:
            key = path.resolve()
            if key not in seen:
                seen.add(key)
                found.append((_display(path), path))
    return found


def _compose(text: str) -> tuple[list[Any], YAMLError | None]:
    """Document node trees, and the syntax error that stopped them, if any.

    libyaml (C) is tried first for speed; it is stricter than YAML 1.2 in places (a
    `https://` URL inside `{...}`), so a file it refuses is composed again in pure Python,
    whose verdict and positions are the ones reported.
    """
    if _CLoader is not None:
        loader = _CLoader(text)
        try:
            nodes = []
            while loader.check_node():
                nodes.append(loader.get_node())
            return nodes, None
        except YAMLError:
            pass
        finally:
            loader.dispose()
    nodes = []
    try:
        for node in YAML(typ="safe", pure=True).compose_all(text):
            nodes.append(node)
    except YAMLError as exc:
        return nodes, exc
    except RecursionError:
        return nodes, YAMLError("nested too deeply: flatten the document")
    return nodes, None


def _syntax_problem(file: str, text: str, exc: YAMLError) -> Problem:
    if isinstance(exc, MarkedYAMLError) and exc.problem_mark is not None:
        mark = exc.problem_mark
        message = f"YAML syntax error: {exc.problem}"
        if exc.context and exc.context_mark is not None:
            ctx = exc.context_mark
            message += f" ({exc.context} that starts at {ctx.line + 1}:{ctx.column + 1})"
        return Problem(file, mark.line + 1, mark.column + 1, message)
    if isinstance(exc, ReaderError) and isinstance(exc.position, int):
        before = text[: exc.position]
        line, col = before.count("\n") + 1, exc.position - (before.rfind("\n") + 1) + 1
        return Problem(file, line, col, f"YAML syntax error: character #x{exc.character:04x} "
                       f"is not allowed ({exc.reason})")
    return Problem(file, 1, 1, f"YAML syntax error: {exc}")


class _Doc:
    """One document: its node tree (for positions), plain data, and what it claims to be."""

    def __init__(self, file: str, node: Any) -> None:
        self.file, self.node, self.bad = file, node, False
        self.data: Any = None
        self.kind = self.name = self.world = ""

    def setup(self, data: Any) -> None:
        self.data = data
        top = data if isinstance(data, dict) else {}
        meta = top.get("metadata") if isinstance(top.get("metadata"), dict) else {}
        self.kind = top.get("kind") if top.get("kind") in KINDS else ""
        self.name = meta.get("name") if isinstance(meta.get("name"), str) else ""
        world = meta.get("world") if self.kind != "World" else ""
        self.world = world if isinstance(world, str) else ""
        # Only well-named objects take part in cross-references: a bad name is reported once.
        self.named = bool(self.kind and NAME_RE.match(self.name)) and (
            self.kind == "World" or bool(NAME_RE.match(self.world)))

    @property
    def label(self) -> str:
        name = f"{self.world}/{self.name}" if self.world else self.name
        return f"{self.kind} {name or '(unnamed)'}"

    @property
    def origin(self) -> Origin:
        mark = self.node.start_mark
        return Origin(self.file, mark.line + 1, mark.column + 1)

    def at(self, path: Sequence[Any], key: bool = False) -> tuple[int, int]:
        """Line and column of the value at `path` (or of its key); the nearest ancestor if
        the path is not in the tree."""
        node, key_node = self.node, None
        for step in path:
            nxt = None
            if node.id == "mapping":
                for k, v in node.value:
                    if k.id == "scalar" and k.value == str(step):
                        nxt, key_node = v, k
                        break
            elif node.id == "sequence" and isinstance(step, int) and step < len(node.value):
                nxt, key_node = node.value[step], None
            if nxt is None:
                break
            node = nxt
        mark = (key_node if key and key_node is not None else node).start_mark
        return mark.line + 1, mark.column + 1

    def problem(self, path: Sequence[Any], message: str, key: bool = False,
                prefix: bool = True) -> Problem:
        self.bad = True
        line, col = self.at(path, key)
        where = _path_text(path)
        if not prefix:  # about the document as a whole: nothing to name it by yet
            return Problem(self.file, line, col, message)
        return Problem(self.file, line, col, f"{self.label}: {where}: {message}" if where
                       else f"{self.label}: {message}")


def _path_text(path: Sequence[Any]) -> str:
    out = ""
    for step in path:
        out += f"[{step}]" if isinstance(step, int) else (f".{step}" if out else str(step))
    return out


class _Converter:
    """Node tree to plain dict/list/str/int/float/bool/None, noting what JSON cannot hold."""

    def __init__(self, doc: _Doc, problems: list[Problem]) -> None:
        self.doc, self.problems, self.count, self.active = doc, problems, 0, set[int]()

    def note(self, node: Any, message: str) -> None:
        self.doc.bad = True
        mark = node.start_mark
        self.problems.append(Problem(self.doc.file, mark.line + 1, mark.column + 1, message))

    def convert(self, node: Any) -> Any:
        self.count += 1
        if self.count > MAX_NODES:
            raise RecursionError
        if node.id == "scalar":
            return self.scalar(node)
        if id(node) in self.active:
            self.note(node, "an alias refers to itself: remove the recursive alias")
            return None
        self.active.add(id(node))
        try:
            if node.id == "sequence":
                return [self.convert(item) for item in node.value]
            return self.mapping(node)
        finally:
            self.active.discard(id(node))

    def mapping(self, node: Any) -> dict[str, Any]:
        out: dict[str, Any] = {}
        first: dict[str, Any] = {}
        for key, value in node.value:
            if key.id != "scalar":
                self.note(key, "field names must be plain text, not a list or mapping")
                continue
            if key.tag == YAML_TAG + "merge":
                self.note(key, "merge keys (<<) are not supported: write the fields out")
                continue
            name = key.value
            if name in first:
                mark = first[name].start_mark
                self.note(key, f"duplicate field '{name}' (first at {mark.line + 1}:"
                          f"{mark.column + 1}): remove one")
                continue
            first[name] = key
            out[name] = self.convert(value)
        return out

    def scalar(self, node: Any) -> Any:
        tag, text = node.tag, node.value
        if not tag.startswith(YAML_TAG):
            if tag != "!":
                self.note(node, f"unsupported tag {tag}: remove it")
            return text
        kind = tag[len(YAML_TAG):]
        if kind == "null":
            return None
        if kind == "bool":
            return text.lower() in ("true", "yes", "on", "y")
        try:
            if kind == "int":
                digits = text.replace("_", "")
                return int(digits, 0) if digits.lstrip("+-")[1:2].isalpha() else int(digits)
            if kind == "float":
                digits = text.replace("_", "").lower()
                return float(digits.replace(".", "") if digits[-3:] in ("inf", "nan") else digits)
        except ValueError:
            return text
        return text


def _load_items(items: Sequence[tuple[str, str]], problems: list[Problem]) -> LoadResult:
    complete = not problems
    docs: list[_Doc] = []
    for file, text in items:
        nodes, error = _compose(text)
        if error is not None:
            complete = False
            problems.append(_syntax_problem(file, text, error))
        for node in nodes:
            if node.id == "scalar" and node.value == "" and node.tag == YAML_TAG + "null":
                continue  # an empty document, such as after a trailing `---`
            doc = _Doc(file, node)
            try:
                doc.setup(_Converter(doc, problems).convert(node))
            except RecursionError:
                problems.append(doc.problem([], "document too deep or too large (recursive "
                                            "aliases?): simplify it", prefix=False))
                continue
            docs.append(doc)
    for doc in docs:
        problems += _document_problems(doc)
    problems += _cross_problems(docs, complete)
    problems.sort()
    manifests = [
        Manifest(d.kind, d.name, d.world, d.data["spec"], d.origin) for d in docs if not d.bad
    ]
    return LoadResult(manifests, [str(p) for p in problems], [], len(docs))


def _document_problems(doc: _Doc) -> list[Problem]:
    data = doc.data
    if not isinstance(data, dict):
        return [doc.problem([], f"document is not a mapping: {USE}", prefix=False)]
    kind = data.get("kind")
    if "kind" not in data:
        return [doc.problem([], f"missing required field 'kind': {USE_KINDS}", prefix=False)]
    if kind not in KINDS:
        return [doc.problem(["kind"], f"unknown kind {_show(kind)}{_suggest(kind, KINDS)}: "
                            f"{USE_KINDS}", prefix=False)]
    found: dict[tuple[int, int, str], Problem] = {}
    for error in _validator(kind).iter_errors(data):
        for problem in _schema_problems(doc, error):
            found.setdefault((problem.line, problem.col, problem.message), problem)
    return list(found.values())


def _schema_problems(doc: _Doc, error: ValidationError) -> list[Problem]:
    """One jsonschema error as messages for people, each at the node it is about."""
    path, inst, value = list(error.absolute_path), error.instance, error.validator_value
    rule = error.validator
    if rule == "required":
        missing = [f for f in value if f not in inst]
        hint = ": the command runtime needs the command line to run" if (
            "then" in error.schema_path and "command" in missing) else ""
        return [doc.problem(path, f"missing required field '{f}'{hint}", key=True)
                for f in missing]
    if rule == "additionalProperties":
        allowed = list(error.schema.get("properties", {}))
        return [doc.problem([*path, extra], _unknown_field(extra, allowed), key=True)
                for extra in inst if extra not in allowed]
    return [doc.problem(path, _message(error))]


def _message(error: ValidationError) -> str:
    rule, inst, value, sub = error.validator, error.instance, error.validator_value, error.schema
    if rule == "type":
        if sub.get("pattern") in PATTERN_HINTS:
            what, hint = PATTERN_HINTS[sub["pattern"]]
            return f"{what} {_show(inst)}: {hint}"
        wanted = [value] if isinstance(value, str) else value
        return f"expected {' or '.join(TYPE_WORDS.get(t, t) for t in wanted)}, got {_show(inst)}"
    if rule == "enum":
        return f"{_show(inst)} is not one of {', '.join(map(str, value))}" + _suggest(inst, value)
    if rule == "const":
        if value == API_VERSION:
            return f"unsupported apiVersion {_show(inst)}: use {API_VERSION}"
        return f"{_show(inst)} must be {_show(value)}"
    if rule == "pattern":
        what, hint = PATTERN_HINTS.get(value, BRANCH_HINT)
        return f"{what} {_show(inst)}: {hint}"
    if rule == "maximum":
        return f"{_show(inst)} is greater than the maximum of {value}"
    if rule == "minimum":
        return f"{_show(inst)} is less than the minimum of {value}"
    if rule in ("minItems", "minLength") and value == 1:
        return "must not be empty"
    return error.message


def _show(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return repr(value)


def _suggest(word: Any, choices: Sequence[Any]) -> str:
    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _unknown_field(name: str, allowed: list[str]) -> str:
    close = difflib.get_close_matches(name, allowed, n=1)
    if close:
        return f"unknown field '{name}' (did you mean '{close[0]}'?)"
    return f"unknown field '{name}': allowed here are {', '.join(allowed)}"

def _cross_problems(docs: list[_Doc], complete: bool) -> list[Problem]:
    """References across the whole set: worlds, dependsOn, caravans, duplicate names.

    When some file could not be parsed, the target of a reference may be in the part that
    was lost, so "unknown" references are not reported then (everything else still is).
    """
    problems: list[Problem] = []
    owners: dict[tuple[str, str, str], _Doc] = {}
    for doc in docs:
        if not doc.named:
            continue
        first = owners.setdefault((doc.kind, doc.world, doc.name), doc)
        if first is not doc:
            problems.append(doc.problem(["metadata", "name"], f"duplicate name: {doc.label} is "
                                        f"also defined at {first.origin}; rename or remove one"))
    worlds = sorted(n for k, _, n in owners if k == "World")
    writs = {(w, n): d for (k, w, n), d in owners.items() if k == "Writ"}
    named = [d for d in owners.values() if d.kind != "World"]
    if complete:
        for doc in named:
            if doc.world not in worlds:
                problems.append(doc.problem(["metadata", "world"], f"unknown world "
                                            f"'{doc.world}'{_suggest(doc.world, worlds)}: add a "
                                            "World manifest with that name or fix the name"))
    graph: dict[tuple[str, str], list[tuple[int, tuple[str, str]]]] = {}
    for doc in (d for d in named if d.kind == "Writ"):
        edges = graph.setdefault((doc.world, doc.name), [])
        for i, ref in enumerate(_strings(doc.data, "spec", "dependsOn")):
            target = split_ref(ref, doc.world)
            if target in writs:
                edges.append((i, target))
            elif complete and target[0] not in worlds and target[0] != doc.world:
                hint = _suggest(target[0], worlds)
                problems.append(doc.problem(["spec", "dependsOn", i],
                                            f"unknown world '{target[0]}' in '{ref}'{hint}"))
            elif complete and target[0] in worlds:
                problems.append(doc.problem(["spec", "dependsOn", i], _unknown_writ(target, writs)))
    problems += _cycle_problems(graph, writs)
    caravans = [d for d in named if d.kind == "Caravan"]
    problems += _caravan_problems(caravans, writs, worlds, complete)
    return problems


def _place(doc: _Doc) -> tuple[str, int, int]:
    origin = doc.origin
    return origin.file, origin.line, origin.col


def _strings(data: Any, *path: str) -> list[str]:
    """A list of strings at `path`, or [] (the schema reports anything else)."""
    for step in path:
        data = data.get(step) if isinstance(data, dict) else None
    return [x if isinstance(x, str) else "" for x in data] if isinstance(data, list) else []


def _unknown_writ(target: tuple[str, str], writs: dict[tuple[str, str], _Doc]) -> str:
    names = [n for w, n in writs if w == target[0]]
    return (f"unknown writ '{target[1]}' in world {target[0]}{_suggest(target[1], names)}: add "
            "its Writ manifest or fix the name")


def _cycle_problems(graph: dict[tuple[str, str], list[tuple[int, tuple[str, str]]]],
                    writs: dict[tuple[str, str], _Doc]) -> list[Problem]:
    """Each dependsOn cycle once, printed `a -> b -> a`; its writs are dropped from the set."""
    problems = []
    deps = {key: {t for _, t in edges} for key, edges in graph.items()}
    while True:
        try:
            TopologicalSorter(deps).prepare()
            return problems
        except CycleError as exc:
            ring = list(reversed(exc.args[1]))[:-1]  # a dependsOn b: a comes first
        first = ring.index(min(ring, key=lambda k: _place(writs[k])))
        ring = ring[first:] + ring[:first]
        one_world = len({w for w, _ in ring}) == 1
        shown = " -> ".join(n if one_world else f"{w}/{n}" for w, n in [*ring, ring[0]])
        index = next(i for i, t in graph[ring[0]] if t == ring[1 % len(ring)])
        problems.append(writs[ring[0]].problem(["spec", "dependsOn", index], f"dependsOn cycle: "
                                               f"{shown}: none of them could ever start"))
        for key in ring:
            writs[key].bad = True
            deps.pop(key)
        for targets in deps.values():
            targets.difference_update(ring)


def _caravan_problems(caravans: list[_Doc], writs: dict[tuple[str, str], _Doc],
                      worlds: list[str], complete: bool) -> list[Problem]:
    """Unknown writs, a writ listed twice, a writ in two caravans, and phases that deadlock."""
    problems = []
    claimed: dict[tuple[str, str], tuple[_Doc, tuple[int, int]]] = {}
    for doc in sorted(caravans, key=_place):
        phases = doc.data.get("spec", {}).get("phases") if isinstance(
            doc.data.get("spec"), dict) else None
        placed: dict[tuple[str, str], tuple[int, int]] = {}
        for p, phase in enumerate(phases if isinstance(phases, list) else []):
            for j, name in enumerate(phase if isinstance(phase, list) else []):
                if not isinstance(name, str):
                    continue
                key, at = (doc.world, name), ["spec", "phases", p, j]
                if key not in writs:
                    if complete and doc.world in worlds:
                        problems.append(doc.problem(at, _unknown_writ(key, writs)))
                elif key in placed:
                    q, k = placed[key]
                    problems.append(doc.problem(at, f"writ '{name}' is listed twice (also at "
                                                f"phases[{q}][{k}]): remove one"))
                elif key in claimed and claimed[key][0] is not doc:
                    other, pos = claimed[key]
                    problems.append(doc.problem(at, f"writ '{name}' is already in caravan "
                                                f"'{other.name}' ({other.file}:{pos[0]}:{pos[1]})"
                                                ": a writ belongs to one caravan at most"))
                else:
                    placed[key] = (p, j)
                    claimed[key] = (doc, doc.at(at))
        for key, (p, j) in placed.items():
            for ref in _strings(writs[key].data, "spec", "dependsOn"):
                dep = split_ref(ref, key[0])
                if dep in placed and placed[dep][0] > p:
                    problems.append(doc.problem(
                        ["spec", "phases", p, j], f"writ '{key[1]}' (phase {p}) depends on "
                        f"'{ref}' in the later phase {placed[dep][0]}: it could never start; "
                        "move one of them"))
    return problems
