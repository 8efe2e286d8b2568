"""The bundled scripted agent, run as a real process in a real git worktree.

A stand-in `sol` first on PATH records how the agent calls it (resolve, escalate), so
these tests see exactly what the agent asks of sol without needing the rest of sol.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from reconciler.core.home import Home
from reconciler.core.model import Runtime
from reconciler.core.tether import Tether, write
from reconciler.drivers.runtimes import launch
from reconciler.drivers.runtimes.script import blocks
from tests.conftest import git, make_repo

SOL_STANDIN = f"""#!{sys.executable}
import json, os, sys
with open(os.environ["SOL_RECORD"], "a") as out:
    out.write(json.dumps({{"argv": sys.argv[1:], "cwd": os.getcwd()}}) + "\\n")
"""


class Agent:
    """One outpost: a worktree on sol/<writ>, a tether, and a way to run the agent."""

    def __init__(self, tmp_path: Path, home: Home) -> None:
        self.home = home
        self.repo = make_repo(tmp_path / "clone")
        self.worktree = tmp_path / "outpost" / "worktree"
        git(self.repo, "worktree", "add", "-q", "-b", "sol/demo", str(self.worktree))
        self.start = git(self.worktree, "rev-parse", "HEAD")
        self.tether_path = home.tether("shop", "a1")
        bindir = tmp_path / "standin-bin"
        bindir.mkdir()
        (bindir / "sol").write_text(SOL_STANDIN)
        (bindir / "sol").chmod(0o755)
        self.bindir = bindir
        self.record = tmp_path / "sol-calls.jsonl"

    def run(self, description: str, title: str = "Make the change", attempt: int = 1,
            timeout: float = 60, **env_extra: str) -> subprocess.CompletedProcess[str]:
        tether = Tether(world="shop", writ="demo", agent="a1", title=title,
                        description=description, kind="code", branch="sol/demo",
                        base=self.start, attempt=attempt, generation="g", session="s1")
        write(self.tether_path, tether)
        spec = launch(Runtime("script"), tether=tether, home=self.home, agent="a1",
                      tether_path=self.tether_path, worktree=self.worktree)
        env = dict(spec.env, SOL_RECORD=str(self.record), **env_extra)
        env["PATH"] = f"{self.bindir}{os.pathsep}{env['PATH']}"
        return subprocess.run(spec.argv, env=env, cwd=self.worktree, capture_output=True,
                              text=True, timeout=timeout)

    def calls(self) -> list[list[str]]:
        if not self.record.exists():
            return []
        return [json.loads(line)["argv"] for line in self.record.read_text().splitlines()]

    def head(self) -> str:
        return git(self.worktree, "rev-parse", "HEAD")


@pytest.fixture
def agent(tmp_path: Path, sol_home: Home) -> Agent:
    return Agent(tmp_path, sol_home)


def test_blocks_run_in_order_and_are_committed_with_the_title(agent: Agent) -> None:
    description = """Write two lines, in order.

```sh
echo one > out.txt
```

Some prose; the next block is Python and must not run:

```python
touch python-ran
```

~~~bash
echo two >> out.txt
echo "streamed: $(wc -l < out.txt)"
~~~
"""
    done = agent.run(description, title="Add out.txt")
    assert done.returncode == 0, done.stdout + done.stderr
    assert (agent.worktree / "out.txt").read_text() == "one\ntwo\n"
    assert not (agent.worktree / "python-ran").exists()
    assert "streamed: 2" in done.stdout and "block 2/2" in done.stdout
    assert git(agent.worktree, "log", "-1", "--format=%s") == "Add out.txt"
    assert git(agent.worktree, "log", "-1", "--format=%an <%ae>") == "sol agent a1 <a1@shop.sol>"
    assert git(agent.worktree, "rev-parse", "--abbrev-ref", "HEAD") == "sol/demo"
    assert git(agent.worktree, "rev-parse", "HEAD~1") == agent.start
    assert git(agent.worktree, "status", "--porcelain") == ""
    assert agent.calls() == [["resolve"]]


def test_failing_block_escalates_with_its_tail_and_commits_nothing(agent: Agent) -> None:
    description = """```sh
touch first.txt
```
```bash
echo starting
for i in $(seq 1 30); do echo "line $i"; done
exit 3
```
```sh
touch third.txt
```
"""
    done = agent.run(description)
    assert done.returncode != 0
    [call] = agent.calls()
    assert call[0] == "escalate"
    message = call[1]
    assert message.startswith("block 2 failed (exit 3): ")
    assert "line 30" in message and "line 11" in message
    assert "line 10\n" not in message and "starting" not in message  # only the last 20
    assert not (agent.worktree / "third.txt").exists()
    assert agent.head() == agent.start


def test_blocks_run_with_bash_e(agent: Agent) -> None:
    done = agent.run("```sh\ntouch before\nfalse\ntouch after\n```\n")
    assert done.returncode != 0
    assert (agent.worktree / "before").exists() and not (agent.worktree / "after").exists()
    assert agent.calls()[0][:1] == ["escalate"]
    assert agent.calls()[0][1].startswith("block 1 failed (exit 1)")


def test_attempt_number_is_visible_to_blocks(agent: Agent) -> None:
    description = """```sh
if [ "$SOL_ATTEMPT" -lt 2 ]; then echo "broken on attempt $SOL_ATTEMPT"; exit 1; fi
echo fixed > fix.txt
```
"""
    first = agent.run(description, attempt=1)
    assert first.returncode != 0
    assert "broken on attempt 1" in agent.calls()[0][1]
    assert agent.head() == agent.start
    second = agent.run(description, attempt=2)
    assert second.returncode == 0, second.stderr
    assert (agent.worktree / "fix.txt").read_text() == "fixed\n"
    assert agent.calls()[1] == ["resolve"]
    assert agent.head() != agent.start


def test_manifest_text_outside_blocks_is_never_executed(agent: Agent, tmp_path: Path) -> None:
    keep = Path(os.environ["HOME"]) / "keep"
    keep.write_text("still here")
    title = """Fix "it" 'now' $(touch pwned1) `touch pwned2`; touch pwned3 ; rm -rf ~"""
    description = (
        "Run $(touch pwned4) and `touch pwned5`; touch pwned6 ; rm -rf ~\n"
        "    touch pwned7\n"
        "```text\ntouch pwned8\n```\n"
        "```sh\nprintf '%s\\n' \"$SOL_WRIT\" > writ.txt\n```\n"
    )
    done = agent.run(description, title=title)
    assert done.returncode == 0, done.stderr
    assert git(agent.worktree, "log", "-1", "--format=%s") == title
    assert (agent.worktree / "writ.txt").read_text() == "demo\n"
    assert not [p for p in tmp_path.rglob("pwned*")]
    assert keep.read_text() == "still here"
    assert title in done.stdout


def test_no_block_resolves_without_committing(agent: Agent) -> None:
    (agent.worktree / "stray.txt").write_text("left by someone\n")
    done = agent.run("Nothing to run here, only prose.\n")
    assert done.returncode == 0
    assert agent.head() == agent.start
    assert agent.calls() == [["resolve"]]


def test_failing_commit_escalates(agent: Agent) -> None:
    hooks = Path(git(agent.worktree, "rev-parse", "--path-format=absolute", "--git-path",
                     "hooks"))
    hooks.mkdir(parents=True, exist_ok=True)
    (hooks / "pre-commit").write_text("#!/bin/sh\necho refused by hook >&2\nexit 1\n")
    (hooks / "pre-commit").chmod(0o755)
    done = agent.run("```sh\necho x > x.txt\n```\n")
    assert done.returncode != 0
    [call] = agent.calls()
    assert call[0] == "escalate" and "git commit failed" in call[1]
    assert "refused by hook" in call[1]


def test_agent_without_tether_says_so(tmp_path: Path) -> None:
    cmd = [sys.executable, "-P", "-m", "reconciler.drivers.runtimes.script"]
    env = {k: v for k, v in os.environ.items() if k != "SOL_TETHER"}
    missing = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True)
    assert missing.returncode == 2 and "SOL_TETHER is not set" in missing.stderr
    bad = tmp_path / "tether.json"
    bad.write_text("{not json")
    corrupt = subprocess.run(cmd, env=dict(env, SOL_TETHER=str(bad)), cwd=tmp_path,
                             capture_output=True, text=True)
    assert corrupt.returncode == 2 and "corrupt" in corrupt.stderr
    assert "Traceback" not in corrupt.stderr


def test_a_worktree_package_cannot_shadow_the_agent(agent: Agent) -> None:
    shadow = agent.worktree / "reconciler" / "runtimes"
    shadow.mkdir(parents=True)
    (agent.worktree / "reconciler" / "__init__.py").write_text("raise SystemExit(42)\n")
    (shadow / "__init__.py").write_text("")
    git(agent.worktree, "add", "-A")
    git(agent.worktree, "commit", "-q", "-m", "a project that has its own reconciler")
    done = agent.run("```sh\necho ok > ok.txt\n```\n")
    assert done.returncode == 0, done.stderr
    assert agent.calls() == [["resolve"]]


# -- block extraction ------------------------------------------------------------------

def test_blocks_follow_commonmark_fences() -> None:
    text = """intro ```sh not a fence```
```sh
echo 1
```
````bash
echo "```"
````
~~~ bash title="x"
echo 3
~~~
  ```sh
  echo 4
    indented
  ```
```SH
echo 5
```
```shell
echo no
```
```
echo no
```
``` sh `bad`
echo no
```bash
echo unclosed
"""
    found = blocks(text)
    assert [b.number for b in found] == [1, 2, 3, 4, 5, 6]
    assert found[0].code == "echo 1\n"
    assert found[1].code == 'echo "```"\n'
    assert found[2].code == "echo 3\n"
    assert found[3].code == "echo 4\n  indented\n"
    assert found[4].code == "echo 5\n"
    assert found[5].code == "echo unclosed\n"
    assert all("no" not in b.code for b in found)


def test_tilde_fence_is_not_closed_by_backticks() -> None:
    [block] = blocks("~~~sh\necho a\n```\necho b\n~~~\n")
    assert block.code == "echo a\n```\necho b\n"


def test_a_block_can_kill_its_agent(agent: Agent, tmp_path: Path) -> None:
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    done = agent.run("```sh\necho x > x.txt\nkill -9 $PPID\nsleep 1\n```\n", timeout=30,
                     TMPDIR=str(scratch))
    assert done.returncode == -9
    assert agent.calls() == [] and agent.head() == agent.start
    assert list(scratch.iterdir()) == []  # a killed agent leaves no block file behind


def test_a_background_process_does_not_hold_the_agent(agent: Agent) -> None:
    done = agent.run("```sh\n(sleep 5; echo late) &\necho done > bg.txt\n```\n", timeout=20)
    assert done.returncode == 0, done.stderr
    assert agent.calls() == [["resolve"]]
    assert git(agent.worktree, "log", "-1", "--format=%s") == "Make the change"


def test_a_blocks_text_never_reaches_a_command_line_or_a_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`ps` shows every argv to every local user: the block reaches bash through an
    anonymous file (memfd), which only this user's processes can open and which leaves
    nothing behind in the temporary directory."""
    import tempfile

    from reconciler.drivers.runtimes.script import run_block

    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    [block] = blocks("```sh\n# MARKER-secret-words\nps -o args= -p $$\n```\n")
    code, tail = run_block(block, 1)
    assert code == 0
    assert "MARKER" not in tail[-1] and tail[-1].startswith("bash -e /dev/fd/")
    assert list(scratch.iterdir()) == []
