"""The scripted agent: runs the `sh`/`bash` blocks of a writ description, then resolves.

An honest runtime (DESIGN section 9): it reads only its tether, runs each fenced block
in order in the worktree with `bash -e`, commits what changed with the writ title as
subject, and hands over to `sol resolve`. A failing block becomes `sol escalate` with
the tail of its output. Only fenced blocks run; the rest of the description is prose.

Run as `python -m reconciler.drivers.runtimes.script` inside a session.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from reconciler.core.errors import SolError
from reconciler.drivers import git

LANGUAGES = frozenset({"sh", "bash"})
TAIL_LINES = 20
DRAIN_SECONDS = 1.0
# CommonMark fences: up to three spaces, then three or more backticks or tildes.
_OPEN = re.compile(r"^(?P<indent> {0,3})(?P<fence>`{3,}|~{3,})(?P<info>.*)$")


@dataclass(frozen=True)
class Block:
    number: int  # 1-based, among the blocks that run
    language: str
    code: str


def _closes(line: str, fence: str) -> bool:
    stripped = line.lstrip(" ")
    if len(line) - len(stripped) > 3:
        return False
    body = stripped.rstrip()
    return len(body) >= len(fence) and set(body) == {fence[0]}


def blocks(description: str) -> list[Block]:
    """Every fenced block whose info string starts with `sh` or `bash`, in order."""
    found: list[Block] = []
    lines = description.splitlines()
    i = 0
    while i < len(lines):
        match = _OPEN.match(lines[i])
        i += 1
        if not match:
            continue
        fence, info = match.group("fence"), match.group("info").strip()
        if fence[0] == "`" and "`" in info:
            continue  # not a fence: CommonMark forbids backticks in its info string
        indent = len(match.group("indent"))
        body: list[str] = []
        while i < len(lines) and not _closes(lines[i], fence):
            line = lines[i]
            strip = min(indent, len(line) - len(line.lstrip(" ")))
            body.append(line[strip:])
            i += 1
        i += 1  # the closing fence (or the end of an unclosed block)
        language = info.split()[0].lower() if info.split() else ""
        if language in LANGUAGES:
            found.append(Block(len(found) + 1, language, "\n".join(body) + "\n"))
    return found


def _sol() -> list[str]:
    """The `sol` of this session (PATH starts with it); the running one otherwise."""
    found = shutil.which("sol")
    return [found] if found else [sys.executable, "-P", "-m", "reconciler"]


def _say(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def _pump(stream: IO[bytes], tail: deque[str]) -> None:
    """Copy a block's output to our stdout (the session log) and keep its last lines."""
    for raw in stream:
        line = raw.decode("utf-8", "replace")
        sys.stdout.write(line)
        sys.stdout.flush()
        tail.append(line.rstrip("\n"))


def _block_file(code: str) -> tuple[int, str]:
    """An open descriptor holding `code`, and the path bash reads it by."""
    if hasattr(os, "memfd_create"):
        fd = os.memfd_create("sol-block", 0)  # not inheritable: passed to bash by pass_fds
        path = f"/dev/fd/{fd}"
    else:
        fd, path = tempfile.mkstemp(prefix="sol-block-", suffix=".sh")
    with open(fd, "wb", closefd=False) as handle:
        handle.write(code.encode())
    return fd, path


def run_block(block: Block, total: int) -> tuple[int, list[str]]:
    """Run one block with `bash -e`, streaming its output; its exit code and output tail."""
    _say(f"--- block {block.number}/{total} ({block.language}) ---")
    tail: deque[str] = deque(maxlen=TAIL_LINES)
    # The block is text from a manifest: it goes to bash in a file only we can read,
    # never on argv (where `ps` shows it to every local user); stdin stays closed for its
    # commands. On Linux that file is anonymous (memfd), so an agent stopped mid-block
    # (SIGHUP skips `finally`) leaves nothing behind in /tmp.
    fd, script = _block_file(block.code)
    try:
        proc = subprocess.Popen(
            ["bash", "-e", script], stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, pass_fds=(fd,),
        )
        assert proc.stdout is not None
        reader = threading.Thread(target=_pump, args=(proc.stdout, tail), daemon=True)
        reader.start()
        code = proc.wait()
    finally:
        os.close(fd)
        if not script.startswith("/dev/fd/"):
            os.unlink(script)
    # A process the block left in the background may hold the pipe open: do not wait on it.
    reader.join(timeout=DRAIN_SECONDS)
    return code, list(tail)


def _git(*args: str) -> git.Done:
    """git in the worktree (the session's cwd), as the session's identity."""
    return git.run(Path.cwd(), *args, what=f"git {git.command_name(args)} failed", check=False)


def commit(title: str) -> str | None:
    """Commit everything that changed with `title` as subject; git's whole complaint (a
    hook's output included) if it fails, for the person the writ escalates to."""
    try:
        added = _git("add", "-A")
        if not added.ok:
            return f"git add failed: {(added.err or added.out).strip()}"
        if _git("diff", "--cached", "--quiet").ok:
            _say("nothing changed: nothing to commit")
            return None
        done = _git("commit", "-q", "-m", title)
        if not done.ok:
            return f"git commit failed: {(done.err or done.out).strip()}"
        _say(f"committed: {_git('rev-parse', '--short', 'HEAD').out.strip()} {title}")
    except SolError as exc:  # git missing, or it hung past its timeout
        return exc.message
    return None


def escalate(message: str) -> int:
    """Tell sol this writ needs a person; the agent's own exit code."""
    _say(f"escalating: {message}")
    subprocess.run([*_sol(), "escalate", message])
    return 1


def main() -> int:
    """Read the tether, run the blocks, commit, resolve (or escalate)."""
    from reconciler.core.tether import read

    path = os.environ.get("SOL_TETHER")
    if not path:
        print("sol script agent: SOL_TETHER is not set; run it inside a sol session",
              file=sys.stderr)
        return 2
    try:
        tether = read(Path(path))
    except SolError as exc:
        print(f"sol script agent: {exc.message}", file=sys.stderr)
        return 2
    todo = blocks(tether.description)
    _say(f"sol script agent {tether.agent}: writ {tether.writ} of world {tether.world}, "
         f"attempt {tether.attempt}, branch {tether.branch}")
    _say(f"title: {tether.title}")
    _say(f"{len(todo)} block(s) to run")
    for block in todo:
        code, tail = run_block(block, len(todo))
        if code != 0:
            output = "\n".join(tail) if tail else "(no output)"
            return escalate(f"block {block.number} failed (exit {code}): {output}")
    if todo:
        problem = commit(tether.title)
        if problem:
            return escalate(problem)
    _say("resolving")
    sol = _sol()
    os.execvp(sol[0], [*sol, "resolve"])
    return 0  # not reached: exec replaces this process


if __name__ == "__main__":
    sys.exit(main())
