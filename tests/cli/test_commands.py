"""The command map in cli/__init__: complete, exact, and lazy (a listing does not load the
specs code), since every CLI call in a test and in a user's shell loop pays its start-up."""

from __future__ import annotations

import importlib
import subprocess
import sys

from reconciler.cli import COMMANDS, main


def test_the_map_names_every_command_of_every_module_once() -> None:
    defined: dict[str, str] = {}
    for module in sorted(set(COMMANDS.values())):
        for command in importlib.import_module(f"reconciler.cli.{module}").COMMANDS:
            assert command.name not in defined, command.name
            defined[command.name] = module
    assert defined == COMMANDS


def test_help_lists_every_command() -> None:
    import click

    with click.Context(main) as ctx:
        assert main.list_commands(ctx) == sorted(COMMANDS)
        assert all(main.get_command(ctx, name) is not None for name in COMMANDS)


def test_a_listing_loads_neither_jsonschema_nor_the_registry(sol_home: object) -> None:
    probe = ("import sys\nfrom reconciler.cli import main\n"
             "try:\n    main(['get', 'writs'])\nexcept SystemExit:\n    pass\n"
             "print(sorted(m for m in ('jsonschema', 'reconciler.controllers.registry', "
             "'reconciler.specs.sources') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip().splitlines()[-1] == "[]", out


def test_every_command_shows_an_example_of_itself(sol: object) -> None:
    import re

    for name in COMMANDS:
        shown = sol("create", "writ", "--help") if name == "create" else sol(name, "--help")
        assert shown.returncode == 0, (name, shown.stderr)
        assert shown.stdout.startswith("Usage: sol "), shown.stdout
        word = "create writ" if name == "create" else name
        example = rf"^\s+(Examples?: +)?(.*&& )?sol {word}\b"
        assert re.search(example, shown.stdout, re.M), (name, shown.stdout)
