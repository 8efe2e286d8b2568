"""Shell completion as a user's shell runs it: the script `sol completion bash` prints,
sourced into a real bash, completing names from a store made by a real `sol apply`;
and `sol --help` listing the agents' own commands apart."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from subprocess import CompletedProcess

import pytest
from helpers import world_yaml, writ_yaml, write_specs

from reconciler.core.home import Home
from reconciler.core.store import Store

Sol = Callable[..., CompletedProcess[str]]
SUSPENDED = "suspend: true\n"


@pytest.fixture
def applied(sol: Sol, sol_home: Home, tmp_path: Path, repo: Path) -> Path:
    """Worlds shop (writs add-x, add-y) and web (writ add-x), nothing dispatched; and an
    agent row, as a cast leaves one."""
    path = write_specs(tmp_path / "specs", world_yaml("shop", repo, extra=SUSPENDED),
                       world_yaml("web", repo, extra=SUSPENDED),
                       writ_yaml("add-x", "shop"), writ_yaml("add-y", "shop"),
                       writ_yaml("add-x", "web"), writ_yaml("fix-z", "web"))
    sol("apply", "-f", str(path), check=True)
    store = Store(sol_home.db)
    store.put_agent("shop", "vega", writ="add-x", runtime="script", state="stopped")
    store.close()
    return path


def in_bash(line: str, script: str) -> list[str]:
    """COMPREPLY after TAB at the end of `line`, in a bash that sourced `script`."""
    words = line.split(" ")
    program = (f"source {script}\n"
               f"COMP_WORDS=({' '.join(repr(w) for w in words)})\n"
               f"COMP_CWORD={len(words) - 1}\n"
               "_sol_completion sol\n"
               'printf "%s\\n" "${COMPREPLY[@]}"\n')
    result = subprocess.run(["bash", "--norc", "--noprofile", "-c", program],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    return [word for word in result.stdout.splitlines() if word]


def complete(line: str) -> list[str]:
    """What `sol` answers the bash script for `line` (click's bash_complete protocol)."""
    words = line.split(" ")
    env = {**os.environ, "_SOL_COMPLETE": "bash_complete", "COMP_WORDS": line,
           "COMP_CWORD": str(len(words) - 1)}
    result = subprocess.run([shutil.which("sol") or "sol"], env=env, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0 and not result.stderr, result.stderr
    return [entry.split(",", 1)[1] for entry in result.stdout.splitlines() if entry]


@pytest.fixture
def script(sol: Sol, tmp_path: Path) -> Path:
    path = tmp_path / "sol.bash"
    path.write_text(sol("completion", "bash", check=True).stdout)
    return path


@pytest.mark.usefixtures("applied")
def test_bash_completes_a_writ_name_from_the_store(script: Path) -> None:
    assert in_bash("sol get writs ", str(script)) == ["add-x", "add-y", "fix-z"]
    assert in_bash("sol describe writ f", str(script)) == ["fix-z"]
    assert in_bash("sol get writs --world shop ", str(script)) == ["add-x", "add-y"]
    assert in_bash("sol get writ web/", str(script)) == ["web/add-x", "web/fix-z"]
    assert in_bash("sol get w", str(script)) == ["worlds", "writs", "world", "writ"]
    assert in_bash("sol describe world ", str(script)) == ["shop", "web"]


@pytest.mark.usefixtures("applied")
def test_agents_and_the_daemons_logs_are_completed() -> None:
    assert complete("sol attach ") == ["vega"]
    assert complete("sol logs ") == ["prefect", "consul", "notifier", "sentinel", "forge",
                                     "vega"]
    assert complete("sol logs s") == ["sentinel"]
    assert complete("sol logs --world ") == ["shop", "web"]
    assert complete("sol get agents shop/") == ["shop/vega"]
    assert complete("sol get mrs ") == []
    assert complete("sol get bogus ") == []


def test_no_store_or_a_broken_one_completes_nothing(sol_home: Home, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    elsewhere = tmp_path / "no-sphere"
    monkeypatch.setenv("SOL_HOME", str(elsewhere))
    assert complete("sol get writs ") == []
    assert not elsewhere.exists()  # a TAB creates nothing
    monkeypatch.setenv("SOL_HOME", str(sol_home.root))
    sol_home.db.write_text("not a database\n")
    assert complete("sol get writs ") == []
    assert complete("sol get w") == ["worlds", "writs", "world", "writ"]


def test_zsh_and_fish_scripts_and_an_unknown_shell(sol: Sol) -> None:
    zsh = sol("completion", "zsh", check=True).stdout
    assert zsh.startswith("#compdef sol") and "_SOL_COMPLETE=zsh_complete" in zsh
    fish = sol("completion", "fish", check=True).stdout
    assert "_SOL_COMPLETE=fish_complete" in fish and "complete --no-files --command sol" in fish
    bad = sol("completion", "tcsh")
    assert bad.returncode == 1 and "'tcsh' is not one of 'bash', 'zsh', 'fish'" in bad.stderr


def test_help_lists_the_agents_commands_apart(sol: Sol) -> None:
    text = sol("--help", check=True).stdout
    people, _, agents = text.partition("Commands used by agents inside their session:")
    assert agents, text
    listed = re.findall(r"^  (\w+)\s", people.split("Commands:", 1)[1], re.M)
    assert sorted(re.findall(r"^  (\w+)\s", agents, re.M)) == ["escalate", "prime", "resolve"]
    assert not {"escalate", "prime", "resolve"} & set(listed)
    assert {"apply", "get", "logs", "completion", "schema"} <= set(listed)
    starts = {line.index(line.split()[1]) for line in text.splitlines()
              if re.match(r"^  \w+\s+\S", line)}
    assert len(starts) == 1  # one column of descriptions for both lists
