"""Helpers shared by the command modules: options, output formats, the sphere."""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
import time
from dataclasses import dataclass
from io import StringIO
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from rich.console import Console
from rich.text import Text

from reconciler.core.errors import ManifestError, SolError
from reconciler.core.home import Home
from reconciler.core.model import Manifest
from reconciler.core.records import Record
from reconciler.core.store import Store
from reconciler.core.text import CONTROL as CONTROL
from reconciler.core.text import inert as inert
from reconciler.drivers.sphere import Sphere

if TYPE_CHECKING:  # the specs code (jsonschema, ruamel) loads only in commands that read specs
    from reconciler.specs.manifests import LoadResult
    from reconciler.specs.references import Known
    from reconciler.specs.sources import GitSource

DEFAULT_SPECS = "specs"


TERMINAL_SEQUENCE = re.compile(
    r"\x1b\[[0-?]*[ -/]*[@-~]"             # CSI: colours, cursor moves, clearing
    r"|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)"  # OSC: titles, clipboard, hyperlinks
    r"|\x1b[PX^_][^\x1b]*\x1b\\"           # DCS, SOS, PM, APC strings
    r"|\x1b[()*+][0-9A-Za-z]|\x1b[@-Z\\-_=>]")
"""What a program draws a terminal with; a session log is full of them."""


def readable(text: str) -> str:
    """A session's raw output as text: terminal sequences dropped, carriage returns as
    line ends, any other control character written out (inert). `sol logs --raw` keeps
    the bytes for a pager that draws them (`less -R`)."""
    text = TERMINAL_SEQUENCE.sub("", text).replace("\r\n", "\n").replace("\r", "\n")
    return inert(text)


def partial_sequence(text: str) -> int:
    """Where a terminal sequence cut at the end of `text` starts (len(text) if none): a
    follower holds that tail back until the rest of the sequence arrives."""
    start = text.rfind("\x1b", max(0, len(text) - 256))
    if start < 0 or TERMINAL_SEQUENCE.match(text, start):
        return len(text)
    return start


def say(text: str) -> None:
    """Print human text (never markup), control characters made visible."""
    click.echo(inert(text))


def cell(value: Any, style: str = "") -> Text:
    """A table cell: plain text, not rich markup (a `[/x]` in a title must not crash the
    table), control characters made visible; `style` (a phase's colour) is sol's own."""
    return Text(inert(str(value)), style=style)


def specs_option() -> Any:
    return click.option(
        "-f", "--filename", "paths", multiple=True, type=str,
        help="Manifest file or directory (repeatable), or a git source "
             "git+REPO@REF#DIR (the manifests as committed at REF); "
             "default: $SOL_SPECS or ./specs.",
    )


def spec_paths(paths: tuple[str, ...]) -> list[str]:
    if paths:
        return list(paths)
    from reconciler.specs.sources import is_git

    default = os.environ.get("SOL_SPECS") or DEFAULT_SPECS
    if not is_git(default) and not Path(default).exists():
        raise SolError(
            f"no manifests given and ./{default} does not exist; pass -f PATH (a file or a "
            "directory of *.yaml manifests)"
        )
    return [default]


def git_source(where: list[str]) -> GitSource | None:
    """The git source among the -f values (made absolute), None if there is none."""
    from reconciler.specs.sources import is_git, parse

    sources = [parse(w) for w in where if is_git(w)]
    if not sources:
        return None
    if len(where) > 1:
        raise SolError(f"{sources[0]} must be the only -f: a git source cannot be combined "
                       "with other paths or sources")
    return sources[0].absolute()


@dataclass
class Specs:
    """Manifests as loaded, and where from: `revision` is the commit of a git source, or
    a content hash of the manifests (`content:...`) for files and directories."""

    manifests: list[Manifest]
    where: list[str]
    git: GitSource | None
    revision: str

    @property
    def source(self) -> str:
        return str(self.git) if self.git else ", ".join(self.where)

    @property
    def commit(self) -> str | None:
        return self.revision if self.git else None


def content_hash(manifests: list[Manifest]) -> str:
    """The same manifests (wherever and however formatted) hash the same."""
    canonical = sorted([m.kind, m.world, m.name, m.spec] for m in manifests)
    digest = hashlib.sha256(json.dumps(canonical, sort_keys=True).encode()).hexdigest()
    return f"content:{digest[:16]}"


def applied_records() -> list[Record] | None:
    """Every object recorded in SOL_HOME's store; None when there is no store yet (reading
    manifests never creates one)."""
    from reconciler.core.store import Store

    home = Home.from_env()
    if not home.db.is_file():
        return None
    store = Store(home.db)
    try:
        return store.list()
    finally:
        store.close()


def known_objects(records: list[Record] | None = None) -> Known | None:
    """The worlds and writs already applied, which manifests may refer to without defining
    them; None without a store."""
    from reconciler.specs.references import known_from

    records = applied_records() if records is None else records
    return None if records is None else known_from(records)


def read_specs(paths: tuple[str, ...], *, commit: str | None = None
               ) -> tuple[Specs, LoadResult]:
    """Read and validate, raising nothing for bad manifests: a git source at REF now,
    or at `commit`; files and directories as they are on disk, where references may also
    name the worlds and writs already applied (a file of writs for an applied world)."""
    from reconciler.specs.manifests import load
    from reconciler.specs.sources import load as load_git

    where = spec_paths(paths)
    git = git_source(where)
    if git is None:
        result = load(where, known=known_objects())
        return Specs(result.manifests, where, None, content_hash(result.manifests)), result
    commit, result = load_git(git, Home.from_env(), commit=commit)
    return Specs(result.manifests, where, git, commit), result


def load_specs(paths: tuple[str, ...], *, commit: str | None = None) -> Specs:
    """Validate everything first; raise with every problem, or for an empty set."""
    specs, result = read_specs(paths, commit=commit)
    at = f" at commit {specs.revision[:7]}" if specs.git else ""
    if result.problems:
        raise ManifestError(result.problems + [f"{len(result.problems)} problem(s) found"
                                               f"{at}; nothing was applied"])
    if result.empty:
        raise SolError(f"no manifests found in {specs.source}{at}: nothing applied and "
                       "nothing pruned")
    return specs


def sphere() -> Sphere:
    return Sphere.from_env()


def console() -> Console:
    """Tables fit a terminal; piped into grep or a file, a row stays on one line."""
    return Console(highlight=False, soft_wrap=True, width=None if is_tty() else 4096)


def _literal(value: Any) -> Any:
    """Multi-line strings as YAML literal blocks, so descriptions read as written."""
    if isinstance(value, dict):
        return {k: _literal(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_literal(v) for v in value]
    if isinstance(value, str) and "\n" in value and not CONTROL.search(value):
        from ruamel.yaml.scalarstring import LiteralScalarString

        return LiteralScalarString(value)  # a block cannot escape: control chars stay quoted
    return value


def dump_yaml(data: Any) -> str:
    from ruamel.yaml import YAML

    yaml = YAML()
    yaml.default_flow_style = False
    yaml.width = 100
    buffer = StringIO()
    yaml.dump(_literal(json.loads(json.dumps(data, default=str))), buffer)
    return buffer.getvalue()


def emit(data: Any, output: str) -> None:
    """Print data as json or yaml (the contract's machine formats)."""
    if output == "json":
        click.echo(json.dumps(data, indent=2, default=str))
    elif output == "yaml":
        click.echo(dump_yaml(data), nl=False)
    else:
        raise SolError(f"unknown output format {output!r}: use table, json or yaml")


def output_option(default: str = "table", more: tuple[str, ...] = ()) -> Any:
    """-o FORMAT; `default` is the human format (table for listings, text for plans),
    `more` the other human ones a command has (wide, name)."""
    return click.option("-o", "--output", type=click.Choice([default, *more, "json", "yaml"]),
                        default=default, show_default=True, help="Output format.")


def is_tty() -> bool:
    return sys.stdout.isatty()


def colour() -> bool:
    """Phases in colour: on a terminal, unless NO_COLOR is set (no-color.org); never
    piped, whatever rich would guess."""
    return is_tty() and not os.environ.get("NO_COLOR")


def terminal_width() -> int | None:
    """The width to cut table messages to on a terminal; None when piped (a row stays
    whole on one line for grep)."""
    return console().width if is_tty() else None


class Changes:
    """Whether sol.db may have changed since the last call, from two stat calls: every
    commit grows or rewrites the WAL (or, at a checkpoint, the database file), so an idle
    `sol get -w` or `sol wait` reads no rows. A re-read every RESYNC seconds anyway is the
    safety net for two commits a stat cannot tell apart."""

    RESYNC = 10.0

    def __init__(self, store: Store) -> None:
        self.files = (store.path, store.wal)
        self.seen: tuple[tuple[int, int], ...] | None = None
        self.read_at = 0.0

    @staticmethod
    def _stamp(path: Path) -> tuple[int, int]:
        try:
            st = path.stat()
        except OSError:
            return (0, 0)
        return (st.st_mtime_ns, st.st_size)

    def __call__(self) -> bool:
        """True the first time and whenever the files changed: read the store now."""
        stamp = tuple(self._stamp(p) for p in self.files)
        now = time.monotonic()
        if stamp == self.seen and now - self.read_at < self.RESYNC:
            return False
        self.seen, self.read_at = stamp, now
        return True
