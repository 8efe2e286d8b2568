"""Runtimes: what a session runs for each runtime, its environment and its persona file.

claude and codex are exercised against stand-in executables on PATH that record their
argv, working directory and environment, run as real processes in a real git worktree.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from reconciler.core.errors import SolError
from reconciler.core.home import Home
from reconciler.core.model import Gate, Runtime, WorldSpec, WritSpec
from reconciler.core.tether import Tether
from reconciler.drivers.runtimes import (
    Launch,
    check,
    codex,
    effective_runtime,
    launch,
    persona,
    session_path,
    sol_bin_dir,
)
from reconciler.drivers.runtimes.claude import KICKOFF
from tests.conftest import git, make_repo

NASTY_TITLE = """Fix "quotes" and 'singles' $(touch pwned) `touch pwned` ; rm -rf ~"""
NASTY_DESCRIPTION = (
    "Do it \"now\" and 'then': $(touch pwned)\n"
    "`touch pwned` ; rm -rf ~ && touch pwned\n"
    "$HOME ${PATH} \\n %s {} ```\n"
)
RECORDER = """#!{python}
import json, os, sys
with open(os.environ["STANDIN_RECORD"], "a") as out:
    out.write(json.dumps({{
        "argv": sys.argv, "cwd": os.getcwd(),
        "env": {{k: v for k, v in os.environ.items()
                if k.startswith(("SOL_", "GIT_AUTHOR", "GIT_COMMITTER")) or k in ("PATH", "TMUX")}},
    }}) + "\\n")
"""


def make_tether(**overrides: object) -> Tether:
    values: dict[str, object] = dict(
        world="shop", writ="add-limit", agent="a1", title="Add rate limiting",
        description="Limit the API.\n", kind="code", branch="sol/add-limit",
        base="0123456789abcdef0123456789abcdef01234567", attempt=1, generation="g1",
        session="s-1", runtime={"name": "claude"},
        gates=[{"name": "tests", "run": "pytest -q", "timeout": 600},
               {"name": "lint", "run": "ruff check .", "timeout": 90}],
    )
    values.update(overrides)
    return Tether(**values)  # type: ignore[arg-type]


@pytest.fixture
def worktree(tmp_path: Path) -> Path:
    """A real git worktree on branch sol/add-limit, as the caster makes them."""
    repo = make_repo(tmp_path / "clone")
    path = tmp_path / "outpost" / "worktree"
    git(repo, "worktree", "add", "-q", "-b", "sol/add-limit", str(path))
    return path


@pytest.fixture
def standins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """`claude` and `codex` stand-ins first on PATH; each call appends a JSON line."""
    bindir = tmp_path / "standin-bin"
    bindir.mkdir()
    for name in ("claude", "codex"):
        script = bindir / name
        script.write_text(RECORDER.format(python=sys.executable))
        script.chmod(0o755)
    record = tmp_path / "record.jsonl"
    monkeypatch.setenv("STANDIN_RECORD", str(record))
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    return record


def do_launch(runtime: Runtime, tether: Tether, sol_home: Home, worktree: Path,
              **kwargs: object) -> Launch:
    return launch(runtime, tether=tether, home=sol_home, agent=tether.agent,
                  tether_path=sol_home.tether(tether.world, tether.agent), worktree=worktree,
                  **kwargs)  # type: ignore[arg-type]


def cast_files(result: Launch, worktree: Path) -> None:
    """What the caster does with a Launch: write the files, extend the exclude file."""
    for name, text in result.files.items():
        (worktree / name).write_text(text)
    exclude = Path(git(worktree, "rev-parse", "--path-format=absolute", "--git-path",
                       "info/exclude"))
    exclude.parent.mkdir(parents=True, exist_ok=True)
    with exclude.open("a") as out:
        out.writelines(pattern + "\n" for pattern in result.exclude)


def records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# -- environment -----------------------------------------------------------------------

def test_env_names_the_agent_and_starts_path_with_sol(
        sol_home: Home, worktree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TMUX", "/tmp/tmux-0/default,1,0")
    monkeypatch.setenv("TMUX_PANE", "%1")
    tether = make_tether(attempt=3, session="sess-9")
    env = do_launch(Runtime("script"), tether, sol_home, worktree).env
    assert env["SOL_HOME"] == str(sol_home.root)
    assert (env["SOL_WORLD"], env["SOL_WRIT"], env["SOL_AGENT"]) == ("shop", "add-limit", "a1")
    assert env["SOL_TETHER"] == str(sol_home.tether("shop", "a1"))
    assert (env["SOL_SESSION"], env["SOL_ATTEMPT"]) == ("sess-9", "3")
    assert env["PATH"].split(os.pathsep)[0] == str(sol_bin_dir())
    assert env["PATH"].split(os.pathsep).count(str(sol_bin_dir())) == 1
    assert env["GIT_AUTHOR_NAME"] == env["GIT_COMMITTER_NAME"] == "sol agent a1"
    assert env["GIT_AUTHOR_EMAIL"] == env["GIT_COMMITTER_EMAIL"] == "a1@shop.sol"
    assert "TMUX" not in env and "TMUX_PANE" not in env
    assert env["HOME"] == os.environ["HOME"]  # the rest of the environment is inherited


def test_sol_bin_dir_is_the_running_installation() -> None:
    assert (sol_bin_dir() / "sol").is_file()
    assert sol_bin_dir() == Path(sys.executable).parent.absolute()


def test_session_path_puts_sol_first_once() -> None:
    first = str(sol_bin_dir())
    assert session_path(f"/usr/bin{os.pathsep}{first}{os.pathsep}/bin").split(os.pathsep) == [
        first, "/usr/bin", "/bin"]


# -- script and command ----------------------------------------------------------------

def test_script_launch_runs_the_bundled_agent(sol_home: Home, worktree: Path) -> None:
    result = do_launch(Runtime("script"), make_tether(), sol_home, worktree)
    assert result.argv == [sys.executable, "-P", "-m", "reconciler.drivers.runtimes.script"]
    assert result.files == {} and result.exclude == []


def test_command_launch_runs_the_users_line_with_tether_in_env(
        sol_home: Home, worktree: Path) -> None:
    line = 'cat "$SOL_TETHER" > seen.json; printf %s "$SOL_WRIT" > writ.txt'
    tether = make_tether(title=NASTY_TITLE, description=NASTY_DESCRIPTION)
    from reconciler.core.tether import write
    write(sol_home.tether("shop", "a1"), tether)
    result = do_launch(Runtime("command", command=line), tether, sol_home, worktree)
    assert result.argv == ["bash", "-c", line]
    assert result.files == {} and result.exclude == []
    subprocess.run(result.argv, env=result.env, cwd=worktree, check=True, timeout=30)
    assert json.loads((worktree / "seen.json").read_text())["title"] == NASTY_TITLE
    assert (worktree / "writ.txt").read_text() == "add-limit"
    assert not list(worktree.rglob("pwned")) and not (worktree.parent / "pwned").exists()


# -- claude and codex ------------------------------------------------------------------

def cli_args(argv: list[str]) -> list[str]:
    """The CLI's own argv: codex runs behind `sh -c 'umask 077 && exec "$@"' codex`."""
    if argv[:3] == ["/bin/sh", "-c", 'umask 077 && exec "$@"']:
        return argv[4:]
    return argv


@pytest.mark.parametrize(("name", "flag", "model_flag", "persona_file"), [
    ("claude", "--dangerously-skip-permissions", "--model", "CLAUDE.local.md"),
    ("codex", "--dangerously-bypass-approvals-and-sandbox", "-m", "AGENTS.override.md"),
])
def test_agent_cli_launch(sol_home: Home, worktree: Path, name: str, flag: str,
                          model_flag: str, persona_file: str) -> None:
    tether = make_tether()
    plain = do_launch(Runtime(name, sandboxed=True), tether, sol_home, worktree)
    kickoff = KICKOFF if name == "claude" else codex.KICKOFF
    # the assignment is in the file, not argv
    assert cli_args(plain.argv) == [name, flag, kickoff]
    assert model_flag not in plain.argv
    assert plain.files == {persona_file: persona(tether)}
    assert plain.exclude == [f"/{persona_file}"]
    modelled = do_launch(Runtime(name, model="big-1", sandboxed=True), tether, sol_home,
                         worktree)
    assert cli_args(modelled.argv)[:4] == [name, flag, model_flag, "big-1"]
    assert modelled.argv[-1] == plain.argv[-1]


@pytest.mark.parametrize("name", ["claude", "codex"])
def test_standin_cli_runs_in_the_worktree_with_verbatim_prompt(
        sol_home: Home, worktree: Path, standins: Path, name: str) -> None:
    tether = make_tether(title=NASTY_TITLE, description=NASTY_DESCRIPTION)
    result = do_launch(Runtime(name, model="m-2", sandboxed=True), tether, sol_home, worktree)
    cast_files(result, worktree)
    done = subprocess.run(result.argv, env=result.env, cwd=worktree, timeout=30)
    assert done.returncode == 0
    [seen] = records(standins)
    assert Path(seen["argv"][0]).name == name
    assert seen["argv"][1:] == cli_args(result.argv)[1:]
    assert Path(seen["cwd"]) == worktree.resolve()
    # no manifest text on any command line
    assert seen["argv"][-1] == (KICKOFF if name == "claude" else codex.KICKOFF)
    assert seen["env"]["SOL_WRIT"] == "add-limit" and "TMUX" not in seen["env"]
    assert seen["env"]["PATH"].split(os.pathsep)[0] == str(sol_bin_dir())
    text = (worktree / next(iter(result.files))).read_text()
    assert NASTY_TITLE in text and NASTY_DESCRIPTION in text
    # Nothing of the manifest text ran, and the persona file stays out of git.
    assert not list(worktree.parent.parent.rglob("pwned"))
    assert git(worktree, "status", "--porcelain") == ""
    assert git(worktree, "rev-parse", "--abbrev-ref", "HEAD") == "sol/add-limit"


def test_codex_persona_points_to_the_projects_agents_md(
        sol_home: Home, tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "clone", {"AGENTS.md": "Use tabs.\n"})
    path = tmp_path / "wt"
    git(repo, "worktree", "add", "-q", "-b", "sol/add-limit", str(path))
    result = do_launch(Runtime("codex"), make_tether(), sol_home, path)
    assert "Read `AGENTS.md` yourself" in result.files["AGENTS.override.md"]
    claude = do_launch(Runtime("claude", sandboxed=True), make_tether(), sol_home, path)
    assert "AGENTS.md" not in claude.files["CLAUDE.local.md"]


def test_tracked_persona_file_is_never_overwritten(sol_home: Home, tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "clone", {"CLAUDE.local.md": "the project's own\n"})
    path = tmp_path / "wt"
    git(repo, "worktree", "add", "-q", "-b", "sol/add-limit", str(path))
    tether = make_tether()
    result = do_launch(Runtime("claude", sandboxed=True), tether, sol_home, path)
    assert result.files == {} and result.exclude == []
    assert result.argv[-1] == KICKOFF
    # The SessionStart hook prints these orders instead, before `sol prime`.
    assert Path(result.env["SOL_PERSONA_CONTEXT"]).read_text() == persona(tether)


# -- check -----------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["claude", "codex"])
def test_check_refuses_a_cli_missing_from_path(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    with pytest.raises(SolError, match=f"^runtime {name} not found on PATH"):
        check(Runtime(name))
    check(Runtime("script"))  # the bundled agent needs nothing on PATH
    standin = empty / name
    standin.write_text("#!/bin/sh\n")
    standin.chmod(0o755)
    check(Runtime(name, sandboxed=True))


def test_check_command_looks_at_its_program(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}/usr/bin{os.pathsep}/bin")
    with pytest.raises(SolError, match="^runtime command no-such-agent-x not found on PATH"):
        check(Runtime("command", command="FOO=1 no-such-agent-x --yes $SOL_TETHER"))
    check(Runtime("command", command="FOO=1 bash -c 'exit 0'"))
    check(Runtime("command", command="exec no-such-agent-x"))  # a shell word leads: the
    check(Runtime("command", command="./run-agent.sh"))  # session will tell
    with pytest.raises(SolError, match="not an executable file"):
        check(Runtime("command", command="/no/such/agent --yes"))
    with pytest.raises(SolError, match="has no command line"):
        check(Runtime("command"))
    with pytest.raises(SolError, match="cannot be parsed"):
        check(Runtime("command", command="aider 'unbalanced"))
    with pytest.raises(SolError, match="unknown"):
        check(Runtime("gemini"))


def test_effective_runtime_prefers_the_writ() -> None:
    world = WorldSpec(source="x", runtime=Runtime("claude", model="sonnet"))
    assert effective_runtime(world, WritSpec(title="t")) == Runtime("claude", model="sonnet")
    own = Runtime("command", command="aider")
    assert effective_runtime(world, WritSpec(title="t", runtime=own)) == own


# -- persona ---------------------------------------------------------------------------

def test_persona_gives_the_standing_orders() -> None:
    text = persona(make_tether(), target="main")
    assert "this git worktree" in text
    assert "`sol/add-limit`" in text
    assert "Never touch the target branch `main`" in text
    assert "`sol resolve`" in text and '`sol escalate "why"`' in text
    assert "`sol prime`" in text and "Commit as you go" in text
    assert "`tests` (timeout 10m)" in text and "pytest -q" in text
    assert "`lint` (timeout 90s)" in text and "ruff check ." in text
    assert "Add rate limiting" in text and "Limit the API." in text


def test_persona_target_branch_from_the_tether_or_world() -> None:
    assert "target branch `trunk`" in persona(make_tether(base="trunk"))
    assert "target branch of this world" in persona(make_tether())
    gates = [Gate("tests", "make test", 120.0)]
    tether = make_tether(gates=[{"name": g.name, "run": g.run, "timeout": g.timeout}
                                for g in gates], attempt=2, feedback="tests failed")
    text = persona(tether, target="main")
    assert "make test" in text and "attempt 2" in text
    assert "no gates" in persona(make_tether(gates=[]))
    analysis = persona(make_tether(kind="analysis"))
    assert "analysis writ" in analysis and "pytest -q" not in analysis


def test_persona_keeps_manifest_text_verbatim_even_with_fences() -> None:
    description = "Steps:\n````sh\necho ```inner```\n````\n" + NASTY_DESCRIPTION
    text = persona(make_tether(title=NASTY_TITLE, description=description))
    assert NASTY_TITLE in text and description in text
    # The description's own fences cannot close the block that holds it.
    fence = "`" * 5
    assert f"{fence}markdown\n{description}" in text
