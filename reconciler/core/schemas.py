"""JSON Schemas for sol's own files: sol.yaml, the tether, saved plans (in `schemas/`,
beside the manifests' schemas, so one documented shape is both the docs and the check);
and `manifest_schema`, the manifests' schemas as one, for editors (`sol schema`).

Each validator is compiled once per process: the tether is read per agent per pass.
jsonschema is imported on the first validation, not with this module, so a process that
never validates (the scripted agent before it reads its tether) does not pay for it.
A finding is worded as a predicate, so a caller can put it after its own subject
("the tether's attempt has the wrong type (str): expected an integer").
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from reconciler.core.errors import SolError
from reconciler.core.home import data_path
from reconciler.core.model import API_VERSION, KINDS

if TYPE_CHECKING:
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import ValidationError

TYPE_WORDS = {"object": "a mapping", "array": "a list", "string": "a string",
              "integer": "an integer", "number": "a number", "boolean": "true or false",
              "null": "null"}
CONFIG_FIX = "correct it or remove it: every field of sol.yaml is optional"


class Finding(NamedTuple):
    """One way data fails its schema: where (`notify[1].timeout`, "" for the whole
    document) and what is wrong, as a predicate."""

    field: str
    problem: str

    def said(self, whole: str, part: str = "") -> str:
        """The finding after a subject: `whole PROBLEM` for the whole document, else
        `partFIELD PROBLEM` (part is like "the tether's ")."""
        return f"{part}{self.field} {self.problem}" if self.field else \
            f"{whole} {self.problem}"


@cache
def schema(name: str) -> dict[str, Any]:
    """The shipped schema `schemas/<name>.json`."""
    path = data_path("schemas") / f"{name}.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise SolError(f"cannot read the schema {path}: {exc}; reinstall sol") from exc


@cache
def validator(name: str) -> Draft202012Validator:
    """The compiled validator of one schema, made once per process."""
    from jsonschema import Draft202012Validator

    return Draft202012Validator(schema(name))


@cache
def manifest_schema() -> dict[str, Any]:
    """One schema for every kind of manifest, dispatching on `kind` (shared: do not modify).

    An editor's modeline names one schema for a whole file, and a file may mix kinds; a
    document of an unknown kind fails on the enum. Built from the per-kind schemas (still
    the single source) and self-contained: each kind and its $defs are carried under
    $defs (`World`, `World.name`), so it works saved to a file, away from sol.
    """
    defs: dict[str, Any] = {}
    branches = []
    for kind in KINDS:
        own = schema(kind.lower())
        defs[kind] = _rehome(
            {k: v for k, v in own.items() if k not in ("$schema", "$id", "$defs")}, kind)
        for name, sub in own.get("$defs", {}).items():
            defs[f"{kind}.{name}"] = _rehome(sub, kind)
        branches.append({"if": {"properties": {"kind": {"const": kind}}, "required": ["kind"]},
                         "then": {"$ref": f"#/$defs/{kind}"}})
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "urn:sol:schema:v1:manifest",
        "title": "sol manifest",
        "description": f"Any sol manifest: {', '.join(KINDS)}, chosen by its kind.",
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": API_VERSION, "description": f"Always {API_VERSION}."},
            "kind": {"enum": list(KINDS), "description": f"One of {', '.join(KINDS)}."},
        },
        "allOf": branches,
        "$defs": defs,
    }


def _rehome(node: Any, kind: str) -> Any:
    """A copy of part of a kind's schema with its `#/$defs/x` refs pointing at `Kind.x`."""
    if isinstance(node, list):
        return [_rehome(item, kind) for item in node]
    if not isinstance(node, dict):
        return node
    out = {k: _rehome(v, kind) for k, v in node.items()}
    ref = node.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/$defs/"):
        out["$ref"] = f"#/$defs/{kind}.{ref.removeprefix('#/$defs/')}"
    return out


def findings(name: str, data: Any) -> list[Finding]:
    """Every way data fails schema `name`, outermost first; [] when it is valid."""
    errors = sorted(validator(name).iter_errors(data),
                    key=lambda e: (len(e.absolute_path), [str(p) for p in e.absolute_path]))
    found: dict[Finding, None] = {}
    for error in errors:
        error = _deepest(error)
        found.setdefault(_finding(error, _about(schema(name), error.absolute_schema_path)),
                         None)
    return list(found)


def _deepest(error: ValidationError) -> ValidationError:
    """For anyOf/oneOf, the branch error that says most: one about a field deeper inside
    the value (notify[2].timeout rather than "notify fits none"), or one at the same place
    that is not merely the wrong branch's type; else the error itself."""
    if not error.context:
        return error

    def says(e: ValidationError) -> tuple[int, bool]:
        return len(e.absolute_path), e.validator not in ("type", "anyOf", "oneOf")

    inner = max((_deepest(e) for e in error.context), key=says)
    return inner if says(inner) > says(error) else error


def validate_config(data: Any, path: Path | str) -> None:
    """sol.yaml (parsed) against schemas/config.json; SolError naming the file, the
    field and what to do."""
    found = findings("config", data)
    if found:
        raise SolError(f"{found[0].said(f'{path}: the file', f'{path}: ')}; {CONFIG_FIX}")


def validate_plan(data: Any, path: Path | str) -> None:
    """A saved plan (parsed) against schemas/plan.json; SolError naming the file, the
    field and what to do."""
    found = findings("plan", data)
    if found:
        raise SolError(f"{path} is not a saved plan of this sol ({found[0].said('the plan')});"
                       " save one with `sol diff -f SOURCE --save FILE`")


def field_path(path: Sequence[Any]) -> str:
    """`notify[1].timeout` from ['notify', 1, 'timeout']."""
    text = ""
    for step in path:
        text += f"[{step}]" if isinstance(step, int) else (f".{step}" if text else str(step))
    return text


def _about(root: dict[str, Any], schema_path: Sequence[Any]) -> str:
    """The description of the field an error is about: that of the schema node reached
    by the last `properties`/`items` step (or of what its `$ref` names); "" for the
    whole document. jsonschema leaves `$ref` out of the path: it is followed here."""
    node: Any = root
    about, steps, i = "", list(schema_path), 0
    while i < len(steps):
        step = steps[i]
        if isinstance(node, dict) and step not in node and "$ref" in node:
            node = root.get("$defs", {}).get(str(node["$ref"]).removeprefix("#/$defs/"), {})
            about = about or node.get("description", "")
            continue
        try:
            if step == "properties" and i + 1 < len(steps):
                node, i = node["properties"][steps[i + 1]], i + 1
                about = node.get("description", "")
            else:
                node = node[step]
                if step == "items":
                    about = node.get("description", "") if isinstance(node, dict) else ""
        except (KeyError, IndexError, TypeError):
            return about
        i += 1
    return about


def _finding(error: ValidationError, about: str) -> Finding:
    path, inst, value, sub = list(error.absolute_path), error.instance, \
        error.validator_value, error.schema
    rule = error.validator
    if rule == "required":
        missing = [name for name in value if name not in inst]
        return Finding(field_path(path), f"lacks {', '.join(sorted(missing))}"
                       + (f" ({_lower(about)})" if about else ""))
    if rule == "additionalProperties":
        allowed = list(sub.get("properties", {}))
        extra = next(k for k in inst if k not in allowed)
        close = difflib.get_close_matches(extra, allowed, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else \
            f": use {', '.join(allowed)}" if allowed else ""
        return Finding(field_path([*path, extra]), f"is not a known field{hint}")
    shown = _show(inst)
    if rule == "type":
        wanted = [value] if isinstance(value, str) else value
        return Finding(field_path(path), f"has the wrong type ({_kind(inst)}): expected "
                       + " or ".join(TYPE_WORDS.get(t, t) for t in wanted))
    if rule in ("enum", "const"):
        options = value if rule == "enum" else [value]
        return Finding(field_path(path), f"is {shown}, expected "
                       + " or ".join(_show(v) for v in options))
    if rule in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
        word = {"minimum": "at least", "maximum": "at most", "exclusiveMinimum": "more than",
                "exclusiveMaximum": "less than"}[rule]
        return Finding(field_path(path), f"is {shown}, expected {word} {value}")
    if rule in ("minItems", "minLength") and value == 1:
        return Finding(field_path(path), "is empty, expected something in it")
    if about:  # pattern, anyOf, oneOf...: the field's own description says what fits
        return Finding(field_path(path), f"is {shown}, expected {_lower(about)}")
    return Finding(field_path(path), f"is not valid ({error.message})")


def _lower(text: str) -> str:
    """A description as the end of a sentence: no final period, a lowercase first word
    unless it is an acronym (URL)."""
    text = text.rstrip(".")
    first = text.split(" ", 1)[0]
    return text if len(first) > 1 and first.isupper() else text[:1].lower() + text[1:]


def _kind(value: Any) -> str:
    return {bool: "bool", int: "int", float: "float", str: "str", list: "list",
            dict: "mapping", type(None): "null"}.get(type(value), type(value).__name__)


def _show(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return repr(value)
