"""`sol create writ`: new work without hand-written YAML, git still the source of truth.

The writ becomes a manifest file in the specs directory, never a row in the store: it is
validated with the rest of the directory and what is already applied (every problem
reported as `sol validate` reports it, nothing written on one), written atomically and
never over an existing file; `--apply` then applies the whole directory through
`sol apply`, and `--dry-run` prints the manifest as `kubectl create --dry-run=client`.
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path
from typing import Any

import click

from reconciler.cli.common import applied_records, inert, known_objects, say, spec_paths
from reconciler.core.errors import ManifestError, SolError
from reconciler.core.model import API_VERSION, NAME_RE
from reconciler.core.records import Record
from reconciler.specs.sources import is_git

PLAIN = re.compile(r"^[a-z][a-z0-9/-]*$")
"""A name YAML reads as a string unquoted (a digit first could read as a number)."""
NOT_PLAIN = {"y", "n", "yes", "no", "on", "off", "true", "false", "null"}
"""Names YAML 1.1 reads as booleans or null: these are quoted."""


@click.group(epilog="""\b
Example:
  sol create writ add-x --world shop --title "Add x" --description-file x.md --apply""")
def create() -> None:
    """Create an object as a manifest in the specs directory (then commit it)."""


@create.command("writ", epilog="""\b
Examples:
  sol create writ add-x --world shop --title "Add x" --description-file x.md
  echo "Fix the flaky test" | sol create writ fix-flaky -W shop --title "Fix it" \\
      --description-file - --depends-on add-x --apply
  sol create writ add-y -W shop --title "Add y" --dry-run -o json""")
@click.argument("name")
@click.option("-W", "--world", required=True, help="The world it belongs to.")
@click.option("--title", required=True, help="One line saying what to do.")
@click.option("--description-file", "description_file", metavar="FILE|-", default=None,
              help="The description, from FILE or from stdin (-).")
@click.option("--depends-on", "depends_on", metavar="WRIT", multiple=True,
              help="A writ it waits for (name, or other-world/name); repeatable.")
@click.option("--priority", metavar="N", default=None, help="1 (first) .. 3; default 2.")
@click.option("--kind", "writ_kind", metavar="code|analysis", default=None,
              help="code (merged by the forge, the default) or analysis.")
@click.option("-f", "--filename", "specs_dir", metavar="SPECS_DIR", default=None,
              help="The specs directory; default: $SOL_SPECS or ./specs.")
@click.option("--apply", "then_apply", is_flag=True,
              help="Then apply the whole specs directory, as `sol apply -f SPECS_DIR`.")
@click.option("--dry-run", is_flag=True, help="Print the manifest; write nothing.")
@click.option("-o", "--output", type=click.Choice(["yaml", "json"]), default=None,
              help="Format of the --dry-run manifest (default yaml).")
@click.pass_context
def writ(ctx: click.Context, name: str, world: str, title: str, description_file: str | None,
         depends_on: tuple[str, ...], priority: str | None, writ_kind: str | None,
         specs_dir: str | None, then_apply: bool, dry_run: bool, output: str | None) -> None:
    """Write a new writ manifest to SPECS_DIR/WORLD/NAME.yaml and print its path."""
    if dry_run and then_apply:
        raise SolError("--dry-run writes nothing, so there is nothing to --apply: drop one")
    if output and not dry_run:
        raise SolError(f"-o {output} prints the manifest of a --dry-run: add --dry-run or "
                       "drop -o")
    where = _specs_dir(specs_dir)
    spec: dict[str, Any] = {"title": title}
    if description_file is not None:
        spec["description"] = _description(description_file)
    if writ_kind is not None:
        spec["kind"] = writ_kind
    if priority is not None:
        spec["priority"] = int(priority) if re.fullmatch(r"-?[0-9]+", priority) else priority
    if depends_on:
        spec["dependsOn"] = list(depends_on)
    doc = {"apiVersion": API_VERSION, "kind": "Writ",
           "metadata": {"name": name, "world": world}, "spec": spec}
    path = where / world / f"{name}.yaml"
    records = applied_records()
    _refuse_existing(doc, path, records)
    text = _checked(doc, where, path, records)
    if dry_run:
        click.echo(inert(json.dumps(doc, indent=2, ensure_ascii=False)) if output == "json"
                   else inert(text), nl=output == "json")
        return
    _write_new(path, text)
    say(f"writ/{world}/{name} created: {path}")
    if then_apply:
        from reconciler.cli.specs import apply

        ctx.invoke(apply, paths=(str(where),), dry_run=False, prune=False, plan_file=None)


def _specs_dir(given: str | None) -> Path:
    """The specs directory to write into: -f, $SOL_SPECS or ./specs; a directory on disk."""
    where = given or spec_paths(())[0]
    if is_git(where):
        raise SolError(f"{where} is a git source and `sol create` writes files: pass the "
                       "specs directory of a checkout (-f DIR), then commit and push it")
    if not Path(where).is_dir():
        raise SolError(f"specs directory {where} does not exist or is not a directory: "
                       "create it, or pass -f SPECS_DIR")
    return Path(where)


def _description(source: str) -> str:
    """The description from a file or stdin: descriptions never go on a command line."""
    if source == "-":
        return sys.stdin.read()
    try:
        return Path(source).read_text(encoding="utf-8")
    except OSError as exc:
        raise SolError(f"cannot read the description file {source}: {exc.strerror}; pass a "
                       "readable file, or - for stdin") from exc
    except UnicodeDecodeError as exc:
        raise SolError(f"the description file {source} is not UTF-8 text: save it as "
                       "UTF-8") from exc


def _checked(doc: dict[str, Any], where: Path, path: Path, records: list[Record] | None) -> str:
    """The manifest's text, validated with the rest of the specs directory and the objects
    already applied; ManifestError with every problem. The readable form is kept only if
    it reads back as exactly `doc`, else the JSON form (JSON is YAML) is used."""
    from reconciler.specs.manifests import load

    known = known_objects(records)
    key = ("Writ", doc["metadata"]["world"], doc["metadata"]["name"])
    for text in (manifest_text(doc), json.dumps(doc, indent=2, ensure_ascii=False) + "\n"):
        result = load([where], known=known, extra=[(str(path), text)])
        if result.problems:
            problems = result.problems
            raise ManifestError(problems + ([f"{len(problems)} problems found; nothing was "
                                             "written"] if len(problems) > 1 else []))
        mine = [m for m in result.manifests if m.key == key and m.origin.file == str(path)]
        if mine and mine[0].spec == doc["spec"]:
            return text
    raise SolError(f"writ/{key[1]}/{key[2]}: its manifest does not read back as given; "
                   "write it by hand")  # pragma: no cover - the JSON form always does


def _refuse_existing(doc: dict[str, Any], path: Path, records: list[Record] | None) -> None:
    """Never over a file, nor a second writ of a name the store already holds (orphaned
    or cancelled too: its branch and history belong to that writ)."""
    world, name = doc["metadata"]["world"], doc["metadata"]["name"]
    if not (NAME_RE.match(world) and NAME_RE.match(name)):
        return  # no such file can be meant: validation names the bad name
    if os.path.lexists(path):
        raise SolError(f"{path} already exists: edit it, or pick another writ name")
    old = next((r for r in records or [] if r.key == ("Writ", world, name)), None)
    if old is not None:
        origin = f", from {old.origin}" if old.origin else ""
        raise SolError(f"writ/{world}/{name} is already applied ({old.phase}{origin}): edit "
                       "its manifest, or pick another writ name")


def _write_new(path: Path, text: str) -> None:
    """Atomically and never over an existing file: written to a hidden temp file (no
    manifest name, so a watching daemon skips it), synced, then hard-linked into place."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "x", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            raise SolError(f"{path} already exists: edit it, or pick another writ "
                           "name") from None
        except OSError:  # a file system without hard links: rename, after a last check
            if os.path.lexists(path):
                raise SolError(f"{path} already exists: edit it, or pick another writ "
                               "name") from None
            os.replace(tmp, path)
        directory = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
    except OSError as exc:
        raise SolError(f"cannot write {path}: {exc.strerror}; check the specs directory's "
                       "permissions") from exc
    finally:
        tmp.unlink(missing_ok=True)


def manifest_text(doc: dict[str, Any]) -> str:
    """A writ manifest as a person would write it: names plain where YAML reads them as
    text, the title quoted, a multi-line description as a literal block."""
    meta, spec = doc["metadata"], doc["spec"]
    lines = [f"apiVersion: {doc['apiVersion']}", f"kind: {doc['kind']}", "metadata:",
             f"  name: {_name(meta['name'])}", f"  world: {_name(meta['world'])}", "spec:",
             f"  title: {_quoted(spec['title'])}"]
    if "description" in spec:
        lines.append(f"  description: {_block(spec['description'])}")
    for field in ("kind", "priority"):
        if field in spec:
            lines.append(f"  {field}: {_name(spec[field])}")
    if "dependsOn" in spec:
        lines.append(f"  dependsOn: [{', '.join(_name(d) for d in spec['dependsOn'])}]")
    return "\n".join(lines) + "\n"


def _quoted(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def _name(value: Any) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    plain = isinstance(value, str) and PLAIN.match(value) and value not in NOT_PLAIN
    return value if plain else _quoted(value)


def _block(text: str) -> str:
    """A literal block (`|`) when the text is plain printable lines, else quoted."""
    body = text.rstrip("\n")
    simple = "\n" in body and all(line.isprintable() or line == "" for line in
                                  body.replace("\t", " ").split("\n"))
    if not simple or body[:1] in (" ", "\n") or body.rstrip() != body:
        return _quoted(text)
    tail = len(text) - len(body)
    chomp = "-" if tail == 0 else "" if tail == 1 else "+"
    lines = [f"    {line}" if line else "" for line in body.split("\n")]
    return f"|{chomp}\n" + "\n".join(lines) + "\n" * (tail - 1 if tail > 1 else 0)


COMMANDS = [create]
