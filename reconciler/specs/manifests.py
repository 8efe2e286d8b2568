"""Load and validate manifests, reporting every problem at once as `FILE:LINE:COL: message`.

YAML is composed into node trees (libyaml through ruamel.yaml.clib when installed, else
pure Python): every node keeps its start mark, so positions cost nothing extra, and the
trees are turned into plain values here. The JSON Schemas in `schemas/` are the single
source of the format; their errors are rewritten for people, then references are checked
across the whole set (references.py).

Only regular files are read (a symlink only if it resolves to one inside the specs
directory), at most MAX_FILE_BYTES each: a FIFO, a device, a symlink loop or a huge file
is a problem reported like any other, never a hang, a traceback or unbounded memory.
"""

from __future__ import annotations

import difflib
import errno
import gc
import json
import os
import re
import stat
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple

from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError
from ruamel.yaml import YAML
from ruamel.yaml.error import MarkedYAMLError, YAMLError
from ruamel.yaml.reader import ReaderError

from reconciler.core.errors import ManifestError, SolError
from reconciler.core.home import data_path
from reconciler.core.model import API_VERSION, KINDS, NAME_RE, Manifest
from reconciler.core.text import CONTROL, inert
from reconciler.specs.documents import Document, Problem, show_value
from reconciler.specs.references import Known, cross_problems, suggest

try:
    from ruamel.yaml.cyaml import CSafeLoader as _CLoader
except ImportError:  # pragma: no cover - only without ruamel.yaml.clib
    _CLoader = None

KIND_FILES = {"World": "world.json", "Writ": "writ.json", "Caravan": "caravan.json",
              "Envoy": "envoy.json"}
MAX_NODES = 100_000  # per document: an alias bomb stops here instead of eating memory
YAML_TAG = "tag:yaml.org,2002:"
PATTERN_HINTS = {
    NAME_RE.pattern: ("bad name", "use 1 to 63 lowercase letters, digits and '-', starting "
                      "and ending with a letter or digit, like add-rate-limit"),
    "^[0-9]+(s|m|h)$": ("bad duration", "use a number and s, m or h, like 30s or 10m"),
    "^([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?/)?[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$": (
        "bad writ reference", "use a writ name, or other-world/name"),
    "^(/|~)": ("not an absolute path", "use an absolute path or ~/path, like ~/src/shop-specs"),
}
BRANCH_HINT = ("bad branch name", "git branch names cannot start with '-' or contain spaces "
               "or any of ~ ^ : ? * [ \\")
TYPE_WORDS = {"string": "a string", "integer": "a whole number", "number": "a number",
              "boolean": "true or false", "object": "a mapping", "array": "a list"}
USE_KINDS = "use World, Writ, Caravan or Envoy"
MAX_FILE_BYTES = 10 * 1024 * 1024
FILE_TYPES = {stat.S_IFIFO: "a FIFO", stat.S_IFCHR: "a character device",
              stat.S_IFBLK: "a block device", stat.S_IFSOCK: "a socket",
              stat.S_IFDIR: "a directory"}


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
    """The JSON Schema of one kind, as shipped in schemas/ (shared: do not modify)."""
    if kind not in KIND_FILES:
        raise SolError(f"unknown kind {kind!r}: use one of {', '.join(KIND_FILES)}")
    return json.loads((data_path("schemas") / KIND_FILES[kind]).read_text(encoding="utf-8"))


@cache
def _validator(kind: str) -> Draft202012Validator:
    """Compiled once per kind, local $refs inlined: validation is a quarter faster."""
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


def load(paths: Sequence[str | Path], *, known: Known | None = None,
         extra: Sequence[tuple[str, str]] = ()) -> LoadResult:
    """Every *.yaml/*.yml under `paths` (files or directories), validated as one set, with
    `extra` (display name, text) documents not yet on disk (`sol create` checks the file
    it is about to write); references may name `known` (applied) worlds and writs."""
    problems: list[Problem] = []
    items: list[tuple[str, str]] = []
    files = _collect(paths, problems)
    for found in files:
        data = _read(found, problems)
        if data is None:
            continue
        try:
            items.append((found.shown, data.decode("utf-8-sig")))
        except UnicodeDecodeError as exc:
            start = data.rfind(b"\n", 0, exc.start) + 1
            col = len(data[start:exc.start].decode("utf-8", "replace")) + 1
            problems.append(Problem(found.shown, data.count(b"\n", 0, exc.start) + 1, col,
                                    f"not UTF-8 text (byte 0x{data[exc.start]:02x}): save the "
                                    "file as UTF-8"))
    items += extra
    return _load_items(items, problems, [found.path for found in files], known)


def load_texts(items: Sequence[tuple[str, str]], *, known: Known | None = None) -> LoadResult:
    """The same as `load`, from (display name, text) pairs, e.g. read from a git revision."""
    texts = [(name, text.removeprefix("\ufeff")) for name, text in items]
    return _load_items(texts, [], [Path(name) for name, _ in items], known)


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


def _shown(path: Path) -> str:
    """As given, or relative to the cwd when it is an absolute path below it; control
    characters in a file name made visible, since problems are printed to a terminal."""
    try:
        shown = str(path.relative_to(Path.cwd()) if path.is_absolute() else path)
    except ValueError:
        shown = str(path)
    return inert(shown)


def _wanted(name: str) -> bool:
    """Manifests, not hidden files or editor leftovers (`.#x.yaml`, `x.yaml~`, `.x.swp`)."""
    return name.endswith((".yaml", ".yml")) and not name.startswith((".", "#"))


class Found(NamedTuple):
    """A file to read: its display name, its path and real path, and the real path of the
    specs directory it was found in ("" when named explicitly: read wherever it points)."""

    shown: str
    path: Path
    real: str
    tree: str


def _collect(paths: Sequence[str | Path], problems: list[Problem]) -> list[Found]:
    found: dict[str, Found] = {}
    for given in paths:
        root = Path(given)
        tree = ""
        if root.is_dir():
            tree = os.path.realpath(root)
            batch = _walk(root, problems)
        elif os.path.lexists(root):
            batch = [root]  # named explicitly: read whatever its name
        else:
            problems.append(Problem(_shown(root), 0, 0, "no such file or directory: pass a "
                                    "manifest file or a directory of *.yaml manifests"))
            continue
        for path in sorted(batch):
            real = os.path.realpath(path)  # unlike Path.resolve, no error on a symlink loop
            found.setdefault(real, Found(_shown(path), path, real, tree))
    return list(found.values())


def _walk(root: Path, problems: list[Problem]) -> list[Path]:
    """Manifest names under `root`; symlinked directories are not followed (no loops),
    and an unreadable directory is a problem rather than silently fewer manifests."""
    def unreadable(exc: OSError) -> None:
        where = Path(exc.filename) if exc.filename else root
        problems.append(Problem(_shown(where), 0, 0, f"cannot read directory: {exc.strerror}"))

    batch = []
    for here, dirs, names in os.walk(root, onerror=unreadable):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        batch += [Path(here) / n for n in names if _wanted(n)]
    return batch


def _unsafe(found: Found) -> str | None:
    """Why `found` must not be opened (a FIFO would block, a device never end), or None.

    Checked with stat before open, so a FIFO or device is never opened at all.
    """
    path = found.path
    try:
        info = os.stat(path)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "symlink loop: point the link at a manifest file or remove it"
        if exc.errno == errno.ENOENT and os.path.islink(path):
            return "dangling symlink (its target does not exist): fix or remove the link"
        return f"cannot read: {exc.strerror}"
    if not stat.S_ISREG(info.st_mode):
        what = FILE_TYPES.get(stat.S_IFMT(info.st_mode), "a special file")
        return (f"not a regular file ({what}): manifests must be regular files; remove it "
                "from the specs directory")
    if found.tree and not (found.real + "/").startswith(found.tree.rstrip("/") + "/"):
        return (f"symlink to {found.real}, outside the specs directory: copy the file in, "
                "or pass it with its own -f")
    if info.st_size > MAX_FILE_BYTES:
        return _too_large()
    return None


def _read_capped(handle: BinaryIO, size: int) -> bytes:
    """At most MAX_FILE_BYTES + 1 bytes; asking for the size stat gave first (and only
    then for the rest) keeps a 10 MiB buffer from being allocated for every small file."""
    data = handle.read(min(size, MAX_FILE_BYTES) + 1)
    if len(data) > size:  # grew since, or a file whose stat size means nothing
        data += handle.read(MAX_FILE_BYTES + 1 - len(data))
    return data


def _too_large() -> str:
    return f"larger than {MAX_FILE_BYTES // 2**20} MiB: split it into several manifest files"


def _read(found: Found, problems: list[Problem]) -> bytes | None:
    """The bytes of a regular file within the cap; None (a problem noted) otherwise.

    Opened non-blocking and checked again once open: a file swapped for a FIFO or a
    growing one between the stat and the read still cannot hang or flood us.
    """
    why = _unsafe(found)
    if why is None:
        flags = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY
        try:
            with open(found.path, "rb", opener=lambda p, _: os.open(p, flags)) as handle:
                info = os.fstat(handle.fileno())
                if not stat.S_ISREG(info.st_mode):
                    why = "not a regular file: manifests must be regular files"
                else:
                    data = _read_capped(handle, info.st_size)
                    if len(data) <= MAX_FILE_BYTES:
                        return data
                    why = _too_large()
        except OSError as exc:
            why = f"cannot read: {exc.strerror}"
    problems.append(Problem(found.shown, 0, 0, why))
    return None


def _compose(text: str) -> tuple[list[Any], YAMLError | None]:
    """Document node trees, and the syntax error that stopped them, if any.

    libyaml is tried first for speed; it is stricter than YAML 1.2 in places (a `https://`
    URL inside `{...}`), so a file it refuses is composed again in pure Python, whose
    verdict and positions are the ones reported.
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
        mark, ctx = exc.problem_mark, exc.context_mark
        message = f"YAML syntax error: {exc.problem}"
        if exc.context and ctx is not None and (ctx.line, ctx.column) != (mark.line, mark.column):
            message += f" ({exc.context} that starts at {ctx.line + 1}:{ctx.column + 1})"
        return Problem(file, mark.line + 1, mark.column + 1, message)
    if isinstance(exc, ReaderError) and isinstance(exc.position, int):
        before = text[: exc.position]
        return Problem(file, before.count("\n") + 1, len(before) - before.rfind("\n"),
                       f"YAML syntax error: character #x{exc.character:04x} is not allowed "
                       f"({exc.reason})")
    return Problem(file, 1, 1, f"YAML syntax error: {exc}")


class _Converter:
    """Node tree to plain dict/list/str/int/float/bool/None, refusing what is ambiguous."""

    def __init__(self, doc: Document, problems: list[Problem]) -> None:
        self.doc, self.problems, self.count, self.active = doc, problems, 0, set[int]()

    def note(self, node: Any, message: str) -> None:
        self.doc.bad = True
        mark = node.start_mark
        self.problems.append(Problem(self.doc.file, mark.line + 1, mark.column + 1, message))

    def text(self, node: Any) -> str:
        """A scalar's text; one holding a control character is refused, and made visible
        so that no later message about it carries the raw character to a terminal."""
        found = CONTROL.search(node.value)
        if found is None:
            return node.value
        self.note(node, f"control character U+{ord(found[0]):04X} in a string: only tab and "
                  "newline are allowed; remove it")
        return inert(node.value)

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
            out: dict[str, Any] = {}
            first: dict[str, Any] = {}
            for key, value in node.value:
                if key.id != "scalar":
                    self.note(key, "field names must be plain text, not a list or mapping")
                elif key.tag == YAML_TAG + "merge":
                    self.note(key, "merge keys (<<) are not supported: write the fields out")
                elif (name := self.text(key)) in first:
                    mark = first[name].start_mark
                    self.note(key, f"duplicate field '{name}' (first at {mark.line + 1}:"
                              f"{mark.column + 1}): remove one")
                else:
                    first[name] = key
                    out[name] = self.convert(value)
            return out
        finally:
            self.active.discard(id(node))

    def scalar(self, node: Any) -> Any:
        """Typed as the YAML resolver tagged it; timestamps and the like stay text."""
        tag, text = node.tag, self.text(node)
        if not tag.startswith(YAML_TAG):
            if tag != "!":
                self.note(node, f"unsupported tag {tag}: remove it")
            return text
        kind, digits = tag[len(YAML_TAG):], text.replace("_", "").lower()
        try:
            if kind == "int":
                return int(digits, 0) if digits.lstrip("+-")[1:2].isalpha() else int(digits)
            if kind == "float":
                return float(digits.replace(".", "") if digits[-3:] in ("inf", "nan") else digits)
        except ValueError:
            return text
        return {"null": None, "bool": digits in ("true", "yes", "on", "y")}.get(kind, text)


@contextmanager
def _gc_paused() -> Iterator[None]:
    """Node trees are many small objects and no garbage: with the cycle collector running,
    10,000 documents took 60% longer than ten times 1,000."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _load_items(items: Sequence[tuple[str, str]], problems: list[Problem],
                files: list[Path], known: Known | None = None) -> LoadResult:
    with _gc_paused():
        return _check_items(items, problems, files, known)


def _check_items(items: Sequence[tuple[str, str]], problems: list[Problem],
                 files: list[Path], known: Known | None) -> LoadResult:
    complete = not problems
    docs: list[Document] = []
    for file, text in items:
        nodes, error = _compose(text)
        if error is not None:
            complete = False
            problems.append(_syntax_problem(file, text, error))
        for node in nodes:
            if node.id == "scalar" and node.value == "" and node.tag == YAML_TAG + "null":
                continue  # an empty document, such as after a trailing `---`
            doc = Document(file, node)
            try:
                doc.setup(_Converter(doc, problems).convert(node))
            except RecursionError:
                problems.append(doc.problem([], "document too deep or too large (recursive "
                                            "aliases?): simplify it", prefix=False))
                continue
            docs.append(doc)
    for doc in docs:
        problems += _document_problems(doc)
    problems += cross_problems(docs, complete, known)
    good = [Manifest(d.kind, d.name, d.world, d.data["spec"], d.origin) for d in docs
            if not d.bad]
    return LoadResult(good, [str(p) for p in sorted(problems)], files, len(docs))


def _document_problems(doc: Document) -> list[Problem]:
    data = doc.data
    if not isinstance(data, dict):
        return [doc.problem([], "document is not a mapping: a manifest has apiVersion, kind, "
                            "metadata and spec", prefix=False)]
    kind = data.get("kind")
    if "kind" not in data:
        return [doc.problem([], f"missing required field 'kind': {USE_KINDS}", prefix=False)]
    if kind not in KINDS:
        return [doc.problem(["kind"], f"unknown kind {show_value(kind)}{suggest(kind, KINDS)}: "
                            f"{USE_KINDS}", prefix=False)]
    found: dict[tuple[int, int, str], Problem] = {}
    for error in _validator(kind).iter_errors(data):
        for problem in _schema_problems(doc, error):
            found.setdefault(problem[1:], problem)
    return list(found.values())


def _schema_problems(doc: Document, error: ValidationError) -> Iterator[Problem]:
    """One jsonschema error as messages for people, each at the node it is about."""
    path, inst, value = list(error.absolute_path), error.instance, error.validator_value
    if error.validator == "required":
        for name in (f for f in value if f not in inst):
            hint = ": the command runtime needs the command line to run" if (
                "then" in error.schema_path and name == "command") else ""
            yield doc.problem(path, f"missing required field '{name}'{hint}", key=True)
    elif error.validator == "additionalProperties":
        allowed = list(error.schema.get("properties", {}))
        patterns = list(error.schema.get("patternProperties", {}))
        for extra in (k for k in inst if k not in allowed
                      and not any(re.search(p, k) for p in patterns)):
            close = difflib.get_close_matches(extra, allowed, n=1)
            hint = (f" (did you mean '{close[0]}'?)" if close
                    else f": allowed here are {', '.join(allowed)}" if allowed
                    else ": a name of letters, digits and _ . : / - is expected")
            yield doc.problem([*path, extra], f"unknown field '{extra}'{hint}", key=True)
    else:
        yield doc.problem(path, _message(error))


def _message(error: ValidationError) -> str:
    rule, inst, value, sub = error.validator, error.instance, error.validator_value, error.schema
    shown = show_value(inst)
    if rule == "type":
        if isinstance(inst, int | float) and re.match(sub.get("pattern", "^$"), shown):
            what = "a boolean" if isinstance(inst, bool) else "a number"
            return f"YAML reads {shown} as {what}: quote it, like '{shown}'"
        if sub.get("pattern") in PATTERN_HINTS:
            what, hint = PATTERN_HINTS[sub["pattern"]]
            return f"{what} {shown}: {hint}"
        wanted = [value] if isinstance(value, str) else value
        got = "nothing: give it a value or remove the field" if inst is None else shown
        return f"expected {' or '.join(TYPE_WORDS.get(t, t) for t in wanted)}, got {got}"
    if rule == "pattern":
        what, hint = PATTERN_HINTS.get(value, BRANCH_HINT)
        return f"{what} {shown}: {hint}"
    if rule == "const" and value == API_VERSION:
        return f"unsupported apiVersion {shown}: use {API_VERSION}"
    if rule == "enum":
        return f"{shown} is not one of {', '.join(map(str, value))}{suggest(inst, value)}"
    if rule in ("maximum", "minimum"):
        return f"{shown} is {'greater' if rule == 'maximum' else 'less'} than the {rule} of {value}"
    if rule in ("minItems", "minLength") and value == 1:
        return "must not be empty"
    return error.message
