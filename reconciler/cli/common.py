"""Helpers shared by the command modules: options, output formats, the sphere."""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
from dataclasses import dataclass
from io import StringIO
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.text import Text
from ruamel.yaml import YAML
from ruamel.yaml.scalarstring import LiteralScalarString

from reconciler.core.errors import ManifestError, SolError
from reconciler.core.home import Home
from reconciler.core.model import Manifest
from reconciler.drivers.sphere import Sphere
from reconciler.specs.manifests import LoadResult
from reconciler.specs.sources import GitSource, is_git, parse

DEFAULT_SPECS = "specs"
CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
"""What a terminal would obey rather than show: C0 but tab and newline, DEL, C1."""


def inert(text: str) -> str:
    """`text` with each control character written out (`\\x1b`), so titles, messages and
    gate output from manifests and agents cannot drive the operator's terminal (OSC 52
    clipboard writes, window titles, clearing the screen). Every human output uses it;
    -o json and -o yaml keep the data as it is."""
    return CONTROL.sub(lambda m: f"\\x{ord(m[0]):02x}", text)


def say(text: str) -> None:
    """Print human text (never markup), control characters made visible."""
    click.echo(inert(text))


def cell(value: Any) -> Text:
    """A table cell: plain text, not rich markup (a `[/x]` in a title must not crash the
    table), control characters made visible."""
    return Text(inert(str(value)))


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
    default = os.environ.get("SOL_SPECS") or DEFAULT_SPECS
    if not is_git(default) and not Path(default).exists():
        raise SolError(
            f"no manifests given and ./{default} does not exist; pass -f PATH (a file or a "
            "directory of *.yaml manifests)"
        )
    return [default]


def git_source(where: list[str]) -> GitSource | None:
    """The git source among the -f values (made absolute), None if there is none."""
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


def read_specs(paths: tuple[str, ...], *, commit: str | None = None
               ) -> tuple[Specs, LoadResult]:
    """Read and validate, raising nothing for bad manifests: a git source at REF now,
    or at `commit`; files and directories as they are on disk."""
    from reconciler.specs.manifests import load
    from reconciler.specs.sources import load as load_git

    where = spec_paths(paths)
    git = git_source(where)
    if git is None:
        result = load(where)
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
        return LiteralScalarString(value)  # a block cannot escape: control chars stay quoted
    return value


def dump_yaml(data: Any) -> str:
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


def output_option(default: str = "table") -> Any:
    """-o FORMAT; `default` is the human format (table for listings, text for plans)."""
    return click.option("-o", "--output", type=click.Choice([default, "json", "yaml"]),
                        default=default, show_default=True, help="Output format.")


def is_tty() -> bool:
    return sys.stdout.isatty()
