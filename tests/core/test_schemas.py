"""core/schemas.py: sol.yaml and saved plans checked against schemas/, in one sentence
naming the file, the field and what to do."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from ruamel.yaml import YAML

from reconciler.core import schemas
from reconciler.core.errors import SolError
from reconciler.core.plan import Action, summary

README = Path(__file__).resolve().parents[2] / "README.md"


def readme_config() -> Any:
    """The sol.yaml example of the README, as a user would copy it."""
    text = README.read_text()
    block = re.search(r"sol\.yaml`:\n\n```yaml\n(.*?)```", text, re.S)
    assert block, "the README shows a sol.yaml example"
    return YAML(typ="safe").load(block.group(1))


@pytest.mark.parametrize("data", [
    {},
    {"fetchInterval": "5m", "resync": 30, "staleAfter": "1.5"},
    {"notify": "page-me --loud"},
    {"notify": {"command": "x", "events": "merged"}},
    {"notify": ["page-me --loud",
                {"command": "notify-send sol", "events": ["Merged", "failed"]},
                {"webhook": "http://127.0.0.1:9/hook", "events": ["*"], "timeout": "3s"}]},
    {"notify": None},
])
def test_configs_sol_reads_are_valid(data: dict[str, Any]) -> None:
    schemas.validate_config(data, "sol.yaml")


def test_the_readme_example_is_valid() -> None:
    schemas.validate_config(readme_config(), "README.md")


@pytest.mark.parametrize("data, says", [
    ([1], "the file has the wrong type (list): expected a mapping"),
    ({"fetchIntervall": "5m"}, "fetchIntervall is not a known field (did you mean "
                               "'fetchInterval'?)"),
    ({"bogus": 1}, "bogus is not a known field: use fetchInterval, resync, staleAfter, "
                   "rateLimitHold, notify"),
    ({"resync": "soon"}, "resync is 'soon', expected a duration like 30s or 10m, or a number "
                         "of seconds"),
    ({"fetchInterval": True}, "fetchInterval is true, expected a duration"),
    ({"notify": [{"command": "x", "timeout": 0}]}, "notify[0].timeout is 0, expected more "
                                                   "than 0"),
    ({"notify": ["ok", {"url": "http://h/"}]}, "notify[1].url is not a known field"),
    ({"notify": ["ok", {"webhook": "ftp://h/"}]}, "notify[1].webhook is 'ftp://h/', expected "
                                                  "an http:// or https:// URL"),
    ({"notify": ["ok", {"command": "x", "events": []}]}, "notify[1].events is empty"),
    ({"notify": ["ok", {"command": "x", "events": ["merged; rm -rf /"]}]},
     "notify[1].events[0] is 'merged; rm -rf /', expected an event type"),
    ({"notify": ["ok", {"command": "x", "webhook": "http://h/"}]},
     "notify[1] is a mapping, expected a command line"),
])
def test_a_bad_config_names_the_file_the_field_and_the_fix(data: Any, says: str) -> None:
    with pytest.raises(SolError) as caught:
        schemas.validate_config(data, Path("/home/me/sol/sol.yaml"))
    message = caught.value.message
    assert message.startswith(f"/home/me/sol/sol.yaml: {says}"), message
    assert message.endswith(f"; {schemas.CONFIG_FIX}") and "\n" not in message


def plan(**changes: Any) -> dict[str, Any]:
    """A plan as `sol diff --save` writes it."""
    actions = [Action("+", "create", "writ/shop/w1", "create writ", {"spec": {"a": 1}}),
               Action("!", "note", "world/shop", "cannot clone", {})]
    data = {"apiVersion": "sol/v1", "kind": "Plan", "savedAt": 1700000000.5,
            "source": "git+/src@main#specs", "paths": ["git+/src@main#specs"],
            "revision": "a" * 40, "prune": False, "fingerprint": "f" * 64,
            "observed": {"worlds": {}}, "summary": summary(actions),
            "actions": [a.to_dict() for a in actions]}
    return {**data, **changes}


def test_a_saved_plan_is_valid() -> None:
    schemas.validate_plan(json.loads(json.dumps(plan())), "plan.json")


@pytest.mark.parametrize("data, says", [
    ({"kind": "Writ"}, "the plan lacks actions, fingerprint, observed, paths, prune, revision"),
    (plan(kind="Writ"), "kind is 'Writ', expected 'Plan'"),
    (plan(prune="yes"), "prune has the wrong type (str): expected true or false"),
    (plan(actions=[{"op": "?", "kind": "k", "target": "t", "description": "d"}]),
     "actions[0].op is '?', expected '+' or '~' or '-' or '!'"),
])
def test_a_bad_plan_says_it_is_not_a_plan_of_this_sol(data: Any, says: str) -> None:
    with pytest.raises(SolError) as caught:
        schemas.validate_plan(data, "p.json")
    assert caught.value.message == (f"p.json is not a saved plan of this sol ({says}); save "
                                    "one with `sol diff -f SOURCE --save FILE`")


def test_validators_are_compiled_once() -> None:
    assert schemas.validator("config") is schemas.validator("config")


def test_field_paths_read_like_the_file() -> None:
    assert schemas.field_path(["notify", 1, "events", 0]) == "notify[1].events[0]"
    assert schemas.field_path([]) == ""
