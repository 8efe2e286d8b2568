"""Text from manifests and agents reaches the terminal inert (issue 10, point 5): escape
sequences in titles, escalation messages and gate output are shown as `\\x1b` by every
human output, and kept byte for byte by -o json and -o yaml. A control character in a
manifest string is refused at validation, with FILE:LINE:COL."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import world_yaml, writ_yaml, write_specs
from ruamel.yaml import YAML

from reconciler.core.conditions import escalate
from reconciler.core.home import Home
from reconciler.core.model import Manifest
from reconciler.core.store import Store

CLIPBOARD = "\x1b]52;c;ZXZpbA==\x07"  # OSC 52: write "evil" to the clipboard
CLEAR = "\x1b[2J"
TITLE = "\x1b]0;pwned\x07"  # OSC 0: the window title
HOSTILE = f"steal{CLIPBOARD} then {CLEAR}{TITLE}done [/x] [bold]"
VISIBLE = r"steal\x1b]52;c;ZXZpbA==\x07 then \x1b[2J\x1b]0;pwned\x07done [/x] [bold]"
RAW = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def sol(*args: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([sys.executable, "-m", "reconciler", *args], capture_output=True,
                            text=True, timeout=60)
    # status exits 1 here on purpose: an escalated writ needs a human
    assert result.returncode == (1 if args == ("status",) else 0), (args, result.stderr)
    assert "Traceback" not in result.stderr
    return result


@pytest.fixture
def hostile(sol_home: Home, repo: Path, tmp_path: Path) -> Home:
    """Writ `evil` whose title, status message, gate output tail and escalation carry
    escape sequences. Validation now refuses such a title, so it is recorded into the
    store directly, as a sphere written by an earlier sol would hold it; messages and
    gate output come from agents and gates, never through validation."""
    specs = write_specs(tmp_path / "specs", world_yaml("shop", repo, extra="suspend: true\n"),
                        writ_yaml("evil", "shop"))
    sol("apply", "-f", str(specs))
    store = Store(sol_home.db)
    try:
        spec = {"title": HOSTILE, "description": f"line one\n\tline two {CLEAR}"}
        store.record_spec(Manifest("Writ", "evil", "shop", spec))
        store.set_status(("Writ", "shop", "evil"), message=HOSTILE,
                         attempts=[{"attempt": 1, "outcome": "sent-back", "message": HOSTILE,
                                    "tail": f"gate output {CLEAR}\n{CLIPBOARD}"}])
        escalate(store, "shop", "evil", HOSTILE, source="test")
    finally:
        store.close()
    return sol_home


@pytest.mark.parametrize("args", [("get", "writs"), ("describe", "writ", "evil"),
                                  ("describe", "writ", "shop/evil"), ("status",),
                                  ("events",), ("events", "--writ", "evil")])
def test_human_outputs_show_escape_sequences_inert(hostile: Home, args: tuple[str, ...]
                                                   ) -> None:
    out = sol(*args).stdout
    assert not RAW.search(out.replace("\n", "").replace("\t", "")), repr(out)
    assert VISIBLE in out, out


def test_describe_keeps_newlines_and_tabs_and_shows_gate_output_inert(hostile: Home) -> None:
    out = sol("describe", "writ", "evil").stdout
    assert r"| gate output \x1b[2J" in out and r"| \x1b]52;c;ZXZpbA==\x07" in out, out
    assert "\x1b" not in out


def test_json_and_yaml_keep_the_exact_strings(hostile: Home) -> None:
    [writ] = json.loads(sol("get", "writs", "-o", "json").stdout)
    assert writ["spec"]["title"] == HOSTILE and writ["status"]["message"] == HOSTILE
    assert writ["status"]["attempts"][0]["tail"] == f"gate output {CLEAR}\n{CLIPBOARD}"
    [escalated] = [c for c in writ["status"]["conditions"] if c["type"] == "Escalated"]
    assert escalated["message"] == HOSTILE

    as_yaml = sol("get", "writs", "-o", "yaml").stdout
    assert "\x1b" not in as_yaml  # escaped by YAML itself ("\e"), never in a literal block
    assert YAML(typ="safe").load(as_yaml) == [writ]

    described = json.loads(sol("describe", "writ", "evil", "-o", "json").stdout)
    assert described["spec"]["title"] == HOSTILE
    assert HOSTILE in [e["message"] for e in described["events"]]

    lines = sol("events", "-o", "json").stdout.splitlines()
    assert HOSTILE in [json.loads(line)["message"] for line in lines]


POSITIONED = re.compile(r"^(?P<file>[^:\n]+):(?P<line>\d+):(?P<col>\d+): (?P<message>.*)$")


@pytest.mark.parametrize("escaped, code", [("\\u0000", "U+0000"), ("\\x1b[2J", "U+001B"),
                                           ("\\r", "U+000D"), ("\\x9b", "U+009B")])
def test_a_control_character_in_a_manifest_string_is_refused_with_its_position(
        sol_home: Home, repo: Path, tmp_path: Path, escaped: str, code: str) -> None:
    world = world_yaml("shop", repo)
    writ = ('apiVersion: sol/v1\nkind: Writ\nmetadata: {name: bad, world: shop}\nspec:\n'
            f'  title: "before {escaped} after"\n  description: "tab\\tand newline\\n are fine"\n')
    specs = write_specs(tmp_path / "specs", world, writ)
    title_line = (world + "---\n" + writ).splitlines().index(
        f'  title: "before {escaped} after"') + 1
    for command in (["validate", str(specs)], ["apply", "-f", str(specs)]):
        result = subprocess.run([sys.executable, "-m", "reconciler", *command],
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 1, (command, result.stdout, result.stderr)
        assert "Traceback" not in result.stderr
        found = [m for m in map(POSITIONED.match, result.stderr.splitlines())
                 if m and "control character" in m["message"]]
        assert len(found) == 1, result.stderr
        assert found[0]["file"].endswith("specs/specs.yaml")
        assert (int(found[0]["line"]), int(found[0]["col"])) == (title_line, 10)
        assert code in found[0]["message"]
        assert not RAW.search(result.stderr.replace("\n", ""))
    assert json.loads(sol("get", "writs", "-o", "json").stdout) == []
