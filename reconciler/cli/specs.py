"""Commands about desired state: validate, schema, diff, apply.

A saved plan (`sol diff --save FILE`, applied by `sol apply --plan FILE`) is a JSON file
holding the actions, the source (the -f values) and its revision (a commit, or a content
hash of the manifests of files and directories), and the observed state the plan was
computed on. Applying it re-reads the source and the state, under the apply lock, and
refuses with what changed when either moved; otherwise it applies exactly those
manifests.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import click

from reconciler.cli import plans
from reconciler.cli.common import (
    Specs,
    emit,
    load_specs,
    output_option,
    read_specs,
    say,
    specs_option,
    sphere,
)
from reconciler.controllers import registry
from reconciler.core.errors import ManifestError, SolError
from reconciler.core.model import API_VERSION
from reconciler.core.plan import Action, summary
from reconciler.core.schemas import manifest_schema, validate_plan
from reconciler.drivers.sphere import Sphere
from reconciler.specs import record
from reconciler.specs.changes import is_partial
from reconciler.specs.manifests import KIND_FILES, schema

PLAN_KIND = "Plan"


@click.command()
@click.argument("paths", nargs=-1)
def validate(paths: tuple[str, ...]) -> None:
    """Validate manifests (paths, or a git source git+REPO@REF#DIR); exit 0 valid, 1 invalid.

    \b
    sol validate specs               # every problem, as FILE:LINE:COL: message
    """
    specs, result = read_specs(paths)
    at = f" at commit {specs.revision[:7]}" if specs.git else ""
    if result.problems:
        raise ManifestError(result.problems + [f"{len(result.problems)} problem(s) found{at}"])
    if result.empty:
        raise SolError(f"no manifests found in {specs.source}{at}")
    kinds: dict[str, int] = {}
    for m in result.manifests:
        kinds[m.kind] = kinds.get(m.kind, 0) + 1
    counts = ", ".join(f"{n} {k.lower()}{'s' if n != 1 else ''}" for k, n in sorted(kinds.items()))
    click.echo(f"valid: {counts} in {len(result.files)} file(s){at}")


@click.command("schema")
@click.argument("kind", required=False)
def schema_cmd(kind: str | None) -> None:
    """Print the JSON Schema of KIND (World, Writ, Caravan, Envoy), or one for every kind.

    Without KIND the schema dispatches on each document's kind and needs nothing else:
    save it once (`sol schema > .sol-schema.json`) and point an editor at it with
    `# yaml-language-server: $schema=./.sol-schema.json` (see docs/editors.md).

    \b
    sol schema > .sol-schema.json     # one schema for every kind
    sol schema writ
    """
    if kind:
        canonical = {k.lower(): k for k in KIND_FILES}.get(kind.lower())
        if canonical is None:
            raise SolError(f"unknown kind {kind!r}: use one of {', '.join(KIND_FILES)}")
        click.echo(json.dumps(schema(canonical), indent=2))
    else:
        click.echo(json.dumps(manifest_schema(), indent=2))


def _revision_line(specs: Specs, applied: str | None) -> str:
    """For a git source: which commit the plan is for, and which one is running."""
    assert specs.commit is not None
    now = (" (already applied)" if applied == specs.commit else
           f" (applied now: {applied[:7] if applied else 'none'})")
    return f"Revision {specs.commit[:7]} of {specs.source}{now}"


@click.command()
@specs_option()
@click.option("--prune", is_flag=True, help="Plan cancelling writs missing from the manifests.")
@click.option("--save", "save", type=click.Path(dir_okay=False), default=None,
              help="Also write the plan to FILE, for `sol apply --plan FILE`.")
@output_option("text")
def diff(paths: tuple[str, ...], prune: bool, save: str | None, output: str) -> None:
    """Print the plan; exit 0 no changes, 2 changes, 1 error.

    Against a git source (-f git+REPO@REF#DIR) it is the plan of the commit REF names
    now: what the daemon will do when it next polls.

    \b
    sol diff -f specs                # exit 2 when there are changes
    sol diff -f specs --save plan.json
    """
    specs = load_specs(paths)
    sp = sphere()
    observed = record.observed_state(sp) if save else {}
    actions = _plan(sp, specs, prune)
    applied = record.applied_revision(sp.store, specs.source) if specs.git else None
    if output == "text":
        if specs.commit:
            click.echo(_revision_line(specs, applied))
        say(plans.render(actions))
    else:
        emit({"changes": bool(actions), "summary": summary(actions),
              "objects": plans.object_counts(actions), "partial": is_partial(specs.manifests),
              "source": specs.source, "revision": specs.revision, "appliedRevision": applied,
              "actions": [a.to_dict() for a in actions]}, output)
    if save:
        _write_plan(Path(save), specs, prune, observed, actions)
        click.echo(f"Plan saved to {save}; apply it with `sol apply --plan {save}`.", err=True)
    sys.exit(2 if actions else 0)


@click.command()
@specs_option()
@click.option("--dry-run", is_flag=True, help="Print what would be done; record nothing.")
@click.option("--prune", is_flag=True, help="Cancel writs removed from the manifests "
              "(sessions stopped, branches kept).")
@click.option("--plan", "plan_file", type=click.Path(dir_okay=False), default=None,
              help="Apply a plan saved by `sol diff --save FILE`, only if the source revision "
                   "and the observed state are still those it was computed on.")
def apply(paths: tuple[str, ...], dry_run: bool, prune: bool, plan_file: str | None) -> None:
    """Record the desired state and run one reconcile pass.

    \b
    sol apply -f specs
    sol apply -f specs --prune        # cancel writs removed from specs
    sol apply --plan plan.json        # exactly what `sol diff --save` showed
    """
    if plan_file:
        if paths or prune or dry_run:
            raise SolError(f"the saved plan {plan_file} carries its own source and --prune: "
                           "drop -f, --prune and --dry-run")
        _apply_saved(Path(plan_file))
        return
    specs = load_specs(paths)
    sp = sphere()
    if dry_run:
        actions = _plan(sp, specs, prune)
        if specs.commit:
            click.echo(_revision_line(specs, record.applied_revision(sp.store, specs.source)))
        say(plans.render(actions))
        click.echo("(dry run: nothing was recorded)")
        return
    actions = registry.apply(sp, specs.manifests, prune=prune, revision=specs.commit,
                           source=specs.source if specs.git else None)
    _report(specs, actions)
    _no_daemon_hint(sp)


def _plan(sp: Sphere, specs: Specs, prune: bool) -> list[Action]:
    """What `sol diff` shows; of a partial set (no World document) only what is about its
    own objects, as `kubectl diff -f one.yaml` does. A partial set with `prune` is refused
    (SolError) by the spec planner."""
    actions = registry.plan_all(sp, specs.manifests, prune=prune)
    if is_partial(specs.manifests):
        return plans.only_objects(actions, [m.key for m in specs.manifests])
    return actions


def _no_daemon_hint(sp: Sphere) -> None:
    """One apply is one pass: say so when work waits and no daemon will do the next."""
    from reconciler.daemon.health import QUEUED
    from reconciler.daemon.prefect import running

    waiting = [w for w in sp.store.list("Writ") if w.phase in QUEUED and not w.orphaned]
    if waiting and running(sp.home) is None:
        click.echo(f"{len(waiting)} writ(s) still need passes but no daemon is running: run "
                   "`sol up -f SPECS`, or `sol reconcile --once` for one more pass.", err=True)


def _report(specs: Specs, actions: list[Action]) -> None:
    if specs.commit:
        click.echo(f"Source {specs.source} at revision {specs.commit[:7]}.")
    if not actions:
        click.echo("No changes. The observed state matches the manifests.")
        return
    for action in actions:
        say(f"  {plans.object_line(action)}" if not action.reconciler
            else f"  {action.op} {action.target}  {action.description}")
    click.echo(f"Apply complete. {plans.object_summary(actions)}")


# ---- saved plans ---------------------------------------------------------------------


def _fingerprint(observed: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(observed, sort_keys=True).encode()).hexdigest()


def _write_plan(path: Path, specs: Specs, prune: bool, observed: dict[str, Any],
                actions: list[Action]) -> None:
    """Atomically: a half-written plan must never be mistaken for a plan."""
    paths = [str(specs.git)] if specs.git else [os.path.abspath(w) for w in specs.where]
    data = {
        "apiVersion": API_VERSION, "kind": PLAN_KIND, "savedAt": time.time(),
        "source": specs.source, "paths": paths, "revision": specs.revision, "prune": prune,
        "fingerprint": _fingerprint(observed), "observed": observed,
        "summary": summary(actions), "actions": [a.to_dict() for a in actions],
    }
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
        tmp.replace(path)
    except OSError as exc:
        raise SolError(f"cannot write the plan to {path}: {exc.strerror}; pass a writable "
                       "--save FILE") from exc


def _read_plan(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except OSError as exc:
        raise SolError(f"cannot read the plan {path}: {exc.strerror}; save one with "
                       "`sol diff -f SOURCE --save FILE`") from exc
    except ValueError as exc:
        raise SolError(f"{path} is not a saved plan (not JSON: {exc}); save one with "
                       "`sol diff -f SOURCE --save FILE`") from exc
    validate_plan(data, path)
    return data


def _source_moved(saved: dict[str, Any], specs: Specs) -> list[str]:
    old, new = saved["revision"], specs.revision
    if old == new:
        return []
    if specs.git:
        return [f"source {specs.source} moved from {old[:7]} to {new[:7]}"]
    return [f"manifests in {specs.source} changed since the plan was saved "
            f"({old.removeprefix('content:')[:7]} -> {new.removeprefix('content:')[:7]})"]


def _plan_changes(saved: list[dict[str, Any]], now: list[Action]) -> list[str]:
    """A last guard: the plan computed now must be the saved one, action for action."""
    current = [a.to_dict() for a in now]
    if current == saved:
        return []
    gone = [a for a in saved if a not in current]
    new = [a for a in current if a not in saved]
    return ([f"now planned: {a['op']} {a['target']} {a['description']}" for a in new]
            + [f"no longer planned: {a['op']} {a['target']} {a['description']}" for a in gone]
            or ["the plan computed now lists the same actions in another order"])


def _apply_saved(path: Path) -> None:
    saved = _read_plan(path)
    specs, result = read_specs(tuple(saved["paths"]))
    moved = _source_moved(saved, specs)
    if result.problems or result.empty:
        moved.append("the manifests are not valid now: "
                     + (result.problems[0] if result.problems else "none found"))
    sp = sphere()
    again = " ".join(f"-f {p}" for p in saved["paths"])

    def check() -> None:
        """Under the apply lock: nothing can record between this check and the apply."""
        changes = list(moved)
        observed = record.observed_state(sp)
        if _fingerprint(observed) != saved["fingerprint"]:
            changes += record.state_changes(saved["observed"], observed) or [
                "the observed state changed"]
        if not changes:
            changes = _plan_changes(saved["actions"], _plan(sp, specs, saved["prune"]))
        if changes:
            raise SolError("\n".join(
                [f"error: the saved plan {path} is stale; nothing was applied:"]
                + [f"  - {change}" for change in changes]
                + [f"run `sol diff {again} --save {path}` again, review it, then "
                   f"`sol apply --plan {path}`"]))

    actions = registry.apply(sp, specs.manifests, prune=saved["prune"], revision=specs.commit,
                           source=specs.source if specs.git else None, check=check)
    click.echo(f"Applied the saved plan {path}.")
    _report(specs, actions)


COMMANDS = [validate, schema_cmd, diff, apply]
