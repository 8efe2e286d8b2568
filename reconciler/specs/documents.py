"""The documents of a specs load: one YAML document with its positions, and a problem
found in one. Shared by the loader (manifests.py) and the cross-reference checks
(references.py), which both read them, so neither imports the other's internals."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, NamedTuple

from reconciler.core.model import KINDS, NAME_RE, Origin


class Problem(NamedTuple):
    """One finding; line 0 is about a whole path (it does not exist, cannot be read)."""

    file: str
    line: int
    col: int
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}:{self.col}" if self.line else self.file
        return f"{where}: {self.message}"


class Document:
    """One document: its node tree (for positions), plain data, and what it claims to be."""

    def __init__(self, file: str, node: Any) -> None:
        self.file, self.node, self.bad = file, node, False
        self.data: Any = None
        self.raw_name: Any = None
        self.kind = self.name = self.world = ""
        self.named = False

    def setup(self, data: Any) -> None:
        self.data = data
        top = data if isinstance(data, dict) else {}
        meta = top.get("metadata") if isinstance(top.get("metadata"), dict) else {}
        self.kind = top.get("kind") if top.get("kind") in KINDS else ""
        self.raw_name = meta.get("name")
        self.name = self.raw_name if isinstance(self.raw_name, str) else ""
        world = meta.get("world") if self.kind != "World" else ""
        self.world = world if isinstance(world, str) else ""
        # Only well-named objects take part in cross-references: a bad name is reported once.
        self.named = bool(self.kind and NAME_RE.match(self.name)) and (
            self.kind == "World" or bool(NAME_RE.match(self.world)))

    @property
    def label(self) -> str:
        raw = self.raw_name
        name = self.name or (show_value(raw) if isinstance(raw, int | float) else "(unnamed)")
        return f"{self.kind} {self.world}/{name}" if self.world else f"{self.kind} {name}"

    @property
    def origin(self) -> Origin:
        mark = self.node.start_mark
        return Origin(self.file, mark.line + 1, mark.column + 1)

    def at(self, path: Sequence[Any], key: bool = False) -> tuple[int, int]:
        """Line and column of the value at `path` (or of its key); the nearest ancestor's
        when the path is not in the tree."""
        node, key_node = self.node, None
        for step in path:
            nxt = None
            if node.id == "mapping":
                nxt, key_node = next(((v, k) for k, v in node.value
                                      if k.id == "scalar" and k.value == step), (None, None))
            elif node.id == "sequence" and isinstance(step, int) and step < len(node.value):
                nxt, key_node = node.value[step], None
            if nxt is None:
                break
            node = nxt
        mark = (key_node if key and key_node is not None else node).start_mark
        return mark.line + 1, mark.column + 1

    def problem(self, path: Sequence[Any], message: str, key: bool = False,
                prefix: bool = True) -> Problem:
        """A problem of this document at `path`, named `Kind world/name: path: message`."""
        self.bad = True
        line, col = self.at(path, key)
        where = "".join(f"[{s}]" if isinstance(s, int) else f".{s}" for s in path).lstrip(".")
        if not prefix:  # about the document as a whole: nothing to name it by
            return Problem(self.file, line, col, message)
        return Problem(self.file, line, col, f"{self.label}: {where}: {message}" if where
                       else f"{self.label}: {message}")


def show_value(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    return "a mapping" if isinstance(value, dict) else "a list" if isinstance(
        value, list) else repr(value)
