"""Commands about desired state: validate, schema, diff, apply, reconcile."""

from __future__ import annotations

import json
import sys

import click

from .. import engine
from ..errors import ManifestError, SolError
from ..manifests import KIND_FILES, load, schema
from ..plan import render_text, summary
from .common import emit, load_manifests, output_option, specs_option, sphere


@click.command()
@click.argument("paths", nargs=-1)
def validate(paths: tuple[str, ...]) -> None:
    """Validate manifests; exit 0 valid, 1 invalid."""
    from .common import spec_paths

    where = spec_paths(paths)
    result = load(where)
    if result.problems:
        raise ManifestError(result.problems + [f"{len(result.problems)} problem(s) found"])
    if result.empty:
        raise SolError(f"no manifests found in {', '.join(where)}")
    kinds = {}
    for m in result.manifests:
        kinds[m.kind] = kinds.get(m.kind, 0) + 1
    counts = ", ".join(f"{n} {k.lower()}{'s' if n != 1 else ''}" for k, n in sorted(kinds.items()))
    click.echo(f"valid: {counts} in {len(result.files)} file(s)")


@click.command("schema")
@click.argument("kind", required=False)
def schema_cmd(kind: str | None) -> None:
    """Print the JSON Schema of KIND (World, Writ, Caravan), or of all kinds."""
    if kind:
        canonical = {k.lower(): k for k in KIND_FILES}.get(kind.lower())
        if canonical is None:
            raise SolError(f"unknown kind {kind!r}: use one of {', '.join(KIND_FILES)}")
        click.echo(json.dumps(schema(canonical), indent=2))
    else:
        click.echo(json.dumps({k: schema(k) for k in KIND_FILES}, indent=2))


@click.command()
@specs_option()
@click.option("--prune", is_flag=True, help="Plan cancelling writs missing from the manifests.")
@output_option("text")
def diff(paths: tuple[str, ...], prune: bool, output: str) -> None:
    """Print the plan; exit 0 no changes, 2 changes, 1 error."""
    manifests = load_manifests(paths)
    sp = sphere()
    actions = engine.plan_all(sp, manifests, prune=prune)
    if output == "text":
        click.echo(render_text(actions))
    else:
        emit({"changes": bool(actions), "summary": summary(actions),
              "actions": [a.to_dict() for a in actions]}, output)
    sys.exit(2 if actions else 0)


@click.command()
@specs_option()
@click.option("--dry-run", is_flag=True, help="Print what would be done; record nothing.")
@click.option("--prune", is_flag=True, help="Cancel writs removed from the manifests "
              "(sessions stopped, branches kept).")
def apply(paths: tuple[str, ...], dry_run: bool, prune: bool) -> None:
    """Record the desired state and run one reconcile pass."""
    manifests = load_manifests(paths)
    sp = sphere()
    if dry_run:
        actions = engine.plan_all(sp, manifests, prune=prune)
        click.echo(render_text(actions))
        click.echo("(dry run: nothing was recorded)")
        return
    actions = engine.apply(sp, manifests, prune=prune)
    if not actions:
        click.echo("No changes. The observed state matches the manifests.")
        return
    for action in actions:
        click.echo(f"  {action.op} {action.target}  {action.description}")
    click.echo(f"Apply complete. {summary(actions)}")


COMMANDS = [validate, schema_cmd, diff, apply]
