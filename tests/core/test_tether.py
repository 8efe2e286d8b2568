"""tether.py: the assignment file survives crashes, refuses garbage clearly, renders verbatim."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reconciler.core import tether
from reconciler.core.errors import SolError

NASTY = 'Run `make` then "echo $(rm -rf ~)"; it\'s fine\n  indented $HOME \\n\n'


def sample(**changes: object) -> tether.Tether:
    values: dict[str, object] = dict(
        world="shop", writ="add-rate-limit", agent="a1", title="Add rate limiting",
        description=NASTY, kind="code", branch="sol/add-rate-limit", base="a" * 40,
        attempt=1, generation="0123456789ab", session="sess-1",
        runtime={"name": "script"},
        gates=[{"name": "tests", "run": "pytest -q", "timeout": 600.0},
               {"name": "lint", "run": "ruff check .", "timeout": 90}],
        created_at=1700000000.0, updated_at=1700000001.5,
    )
    values.update(changes)
    return tether.Tether(**values)  # type: ignore[arg-type]


def test_round_trip(tmp_path: Path):
    path = tmp_path / "outpost" / "tether.json"
    original = sample(feedback="gate tests failed:\nE   assert 1 == 2")
    tether.write(path, original)
    assert tether.read(path) == original
    assert json.loads(path.read_text())["version"] == 1


def test_unknown_keys_are_tolerated_on_read(tmp_path: Path):
    path = tmp_path / "tether.json"
    data = json.loads(sample().to_json())
    data["addedByANewerMinorVersion"] = {"x": 1}
    path.write_text(json.dumps(data))
    assert tether.read(path) == sample()


@settings(max_examples=50, deadline=None)
@given(description=st.text(), title=st.text(), feedback=st.none() | st.text(),
       attempt=st.integers(min_value=1, max_value=10**6))
def test_any_text_survives_the_file(description: str, title: str, feedback: str | None,
                                    attempt: int):
    t = sample(description=description, title=title, feedback=feedback, attempt=attempt)
    assert tether.Tether.from_dict(json.loads(t.to_json())) == t


def test_write_leaves_no_temporary_files(tmp_path: Path):
    path = tmp_path / "outpost" / "tether.json"
    tether.write(path, sample())
    tether.write(path, sample(attempt=2))
    assert [p.name for p in path.parent.iterdir()] == ["tether.json"]
    assert tether.read(path).attempt == 2


def test_a_crash_mid_write_leaves_the_old_tether(tmp_path: Path):
    path = tmp_path / "tether.json"
    tether.write(path, sample(attempt=1))
    # What a writer killed before its rename leaves behind: a torn temp file.
    torn = tmp_path / ".tether.json.crash.tmp"
    torn.write_text(sample(attempt=2).to_json()[:40])
    assert tether.read(path) == sample(attempt=1)
    tether.write(path, sample(attempt=3))
    assert tether.read(path).attempt == 3


def test_a_failed_write_keeps_the_old_tether_and_says_why(tmp_path: Path):
    path = tmp_path / "tether.json"
    tether.write(path, sample(attempt=1))
    os.chmod(tmp_path, 0o500)
    try:
        if os.access(tmp_path, os.W_OK):
            pytest.skip("running as a user who can write a read-only directory")
        with pytest.raises(SolError, match=f"cannot write the tether at {path}"):
            tether.write(path, sample(attempt=2))
    finally:
        os.chmod(tmp_path, 0o700)
    assert tether.read(path).attempt == 1


def test_a_write_that_cannot_serialize_changes_nothing(tmp_path: Path):
    path = tmp_path / "outpost" / "tether.json"
    tether.write(path, sample(attempt=1))
    with pytest.raises(TypeError):
        tether.write(path, sample(attempt=2, runtime={"bad": object()}))
    assert [p.name for p in path.parent.iterdir()] == ["tether.json"]
    assert tether.read(path).attempt == 1


def test_a_write_under_a_file_is_a_sol_error(tmp_path: Path):
    blocker = tmp_path / "outpost"
    blocker.write_text("not a directory")
    with pytest.raises(SolError, match=f"cannot write the tether at {blocker}/tether.json"):
        tether.write(blocker / "tether.json", sample())


def test_a_missing_tether_says_there_is_no_assignment(tmp_path: Path):
    path = tmp_path / "tether.json"
    with pytest.raises(SolError, match=f"no tether at {path}: this session has no assignment"):
        tether.read(path)


@pytest.mark.parametrize("text, why", [
    ("{not json", "is corrupt"),
    ("", "is corrupt"),
    ("[1, 2]", "not a JSON object"),
    ('{"world": "shop"}', "lacks agent, attempt, base, branch"),
    (json.dumps({**json.loads(sample().to_json()), "attempt": "2"}), "attempt has the wrong"),
    (json.dumps({**json.loads(sample().to_json()), "gates": [{"name": "x"}]}), "gates must"),
    (json.dumps({**json.loads(sample().to_json()), "version": 9}), "upgrade sol"),
])
def test_a_bad_tether_names_the_file_and_the_recovery(tmp_path: Path, text: str, why: str):
    path = tmp_path / "tether.json"
    path.write_text(text)
    with pytest.raises(SolError) as caught:
        tether.read(path)
    message = caught.value.message
    assert str(path) in message and why in message
    assert "sol apply" in message
    assert "\n" not in message


def test_a_tether_that_is_a_directory_is_a_sol_error(tmp_path: Path):
    path = tmp_path / "tether.json"
    path.mkdir()
    with pytest.raises(SolError, match=f"cannot read the tether at {path}"):
        tether.read(path)


def test_clear_is_idempotent(tmp_path: Path):
    path = tmp_path / "tether.json"
    tether.write(path, sample())
    tether.clear(path)
    assert not path.exists()
    tether.clear(path)
    with pytest.raises(SolError, match="no tether"):
        tether.read(path)


def test_render_gives_the_whole_assignment_with_the_description_verbatim():
    text = tether.render(sample(), worktree=Path("/sol/worlds/shop/outposts/a1/worktree"))
    assert NASTY.rstrip("\n") in text
    for needle in ("a1", "world shop", "writ add-rate-limit", "Add rate limiting",
                   "sol/add-rate-limit", "a" * 12, "attempt 1",
                   "/sol/worlds/shop/outposts/a1/worktree",
                   "tests: pytest -q (timeout 10m)", "lint: ruff check . (timeout 90s)",
                   "sol resolve", 'sol escalate "'):
        assert needle in text, needle
    assert "previous attempt" not in text


def test_render_shows_the_feedback_of_the_previous_attempt():
    feedback = "gate tests failed (exit 1):\nE   assert 'x' == `y`"
    text = tether.render(sample(attempt=2, feedback=feedback))
    assert "attempt 2" in text
    assert "previous attempt was sent back" in text
    assert feedback in text
    assert text.index(feedback) < text.index("sol resolve")


def test_render_of_an_analysis_writ_promises_no_gates():
    text = tether.render(sample(kind="analysis"))
    assert "analysis writ" in text and "pytest -q" not in text
    assert "sol resolve" in text


def test_render_of_a_world_without_gates():
    assert "runs no gates" in tether.render(sample(gates=[]))


def test_the_schema_and_the_dataclass_agree():
    from dataclasses import MISSING, fields

    from reconciler.core.schemas import schema

    shape = schema("tether")
    assert set(shape["properties"]) == {f.name for f in fields(tether.Tether)}
    assert set(shape["required"]) == {f.name for f in fields(tether.Tether)
                                      if f.default is MISSING and f.default_factory is MISSING}


@pytest.mark.parametrize("change, why", [
    ({"gates": [{"name": "x", "run": ["make"]}]}, "the tether's gates[0].run has the wrong type"),
    ({"feedback": 3}, "the tether's feedback has the wrong type (int)"),
    ({"attempt": True}, "the tether's attempt has the wrong type (bool): expected an integer"),
    ({"runtime": "script"}, "the tether's runtime has the wrong type (str): expected a mapping"),
])
def test_a_tether_off_its_schema_names_the_field(tmp_path: Path, change: dict, why: str):
    path = tmp_path / "tether.json"
    path.write_text(json.dumps({**json.loads(sample().to_json()), **change}))
    with pytest.raises(SolError) as caught:
        tether.read(path)
    assert caught.value.message.startswith(f"the tether at {path} is unusable: {why}")


def test_a_tether_that_turns_bad_after_a_good_read_is_refused(tmp_path: Path):
    path = tmp_path / "tether.json"
    tether.write(path, sample())
    assert tether.read(path) == tether.read(path) == sample()  # the second skips the schema
    first = tether.read(path)
    first.gates.append({"name": "mutated", "run": "x"})
    assert tether.read(path) == sample()  # every read is a fresh object
    path.write_text(sample().to_json().replace('"attempt": 1', '"attempt": "1"'))
    with pytest.raises(SolError, match="attempt has the wrong type"):
        tether.read(path)
