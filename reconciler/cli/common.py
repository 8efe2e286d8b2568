"""Helpers shared by the command modules: options, output formats, the sphere."""

from __future__ import annotations

import json
import os
import sys
from io import StringIO
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from ruamel.yaml import YAML

from ..errors import ManifestError, SolError
from ..model import Manifest
from ..sphere import Sphere

DEFAULT_SPECS = "specs"


def specs_option(multiple: bool = False) -> Any:
    return click.option(
        "-f", "--filename", "paths", multiple=True, type=str,
        help="Manifest file or directory (repeatable); default: $SOL_SPECS or ./specs.",
    )


def spec_paths(paths: tuple[str, ...]) -> list[str]:
    if paths:
        return list(paths)
    default = os.environ.get("SOL_SPECS") or DEFAULT_SPECS
    if not Path(default).exists():
        raise SolError(
            f"no manifests given and ./{default} does not exist; pass -f PATH (a file or a "
            "directory of *.yaml manifests)"
        )
    return [default]


def load_manifests(paths: tuple[str, ...]) -> list[Manifest]:
    """Validate everything first; raise with every problem, or for an empty set."""
    from ..manifests import load

    where = spec_paths(paths)
    result = load(where)
    if result.problems:
        raise ManifestError(result.problems + [f"{len(result.problems)} problem(s) found; "
                                               "nothing was applied"])
    if result.empty:
        raise SolError(
            f"no manifests found in {', '.join(where)}: nothing applied and nothing pruned"
        )
    return result.manifests


def sphere() -> Sphere:
    return Sphere.from_env()


def console() -> Console:
    """Tables fit a terminal; piped into grep or a file, a row stays on one line."""
    return Console(highlight=False, soft_wrap=True, width=None if is_tty() else 4096)


def emit(data: Any, output: str) -> None:
    """Print data as json or yaml (the contract's machine formats)."""
    if output == "json":
        click.echo(json.dumps(data, indent=2, default=str))
    elif output == "yaml":
        yaml = YAML()
        yaml.default_flow_style = False
        buffer = StringIO()
        yaml.dump(json.loads(json.dumps(data, default=str)), buffer)
        click.echo(buffer.getvalue(), nl=False)
    else:
        raise SolError(f"unknown output format {output!r}: use table, json or yaml")


def output_option(default: str = "table") -> Any:
    """-o FORMAT; `default` is the human format (table for listings, text for plans)."""
    return click.option("-o", "--output", type=click.Choice([default, "json", "yaml"]),
                        default=default, show_default=True, help="Output format.")


def is_tty() -> bool:
    return sys.stdout.isatty()
