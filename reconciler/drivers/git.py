"""The one place sol runs git (decision 0010): `run` spawns every git process.

Every run gets the same treatment: `GIT_TERMINAL_PROMPT=0` (git never waits for a
password nobody will type), stdin closed unless input is given, a C locale, no
`GIT_DIR`-style variables inherited from a hook or a wrapper, no repository discovered
above cwd (SOL_HOME may sit inside the user's own), and one default timeout, after which
git and everything it started (remote helpers, hooks) is killed. A failure is one
`SolError` sentence in one shape: `WHAT: GIT'S REASON (git COMMAND in CWD)[; HINT]`.

Refs under `refs/heads/` are also read here in-process, without a git process (the cast
fast path), and `git_dir` tells a repository from a plain directory the same way.

Kept free of heavy imports: the scripted agent (`python -m ...runtimes.script`) loads it
at every start.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from reconciler.core.errors import SolError

TIMEOUT = 120.0  # seconds: the default; a clone or fetch of a world passes its own
ENV = {
    "GIT_TERMINAL_PROMPT": "0",
    "LC_ALL": "C",
    "LANGUAGE": "C",
    # Abort a transfer that stalls below 1 KB/s for a minute instead of hanging.
    "GIT_HTTP_LOW_SPEED_LIMIT": os.environ.get("GIT_HTTP_LOW_SPEED_LIMIT", "1000"),
    "GIT_HTTP_LOW_SPEED_TIME": os.environ.get("GIT_HTTP_LOW_SPEED_TIME", "60"),
}
ISOLATE = ("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE", "GIT_OBJECT_DIRECTORY",
           "GIT_ALTERNATE_OBJECT_DIRECTORIES", "GIT_NAMESPACE", "GIT_COMMON_DIR",
           "GIT_PREFIX")
"""Variables a git hook or a wrapper may have set; they would point git elsewhere."""
MISSING = "git is not installed or not on PATH; install git and retry"
HEX = frozenset("0123456789abcdef")


def git_reason(text: str) -> str:
    """Git's own explanation: the last fatal/error line, else the last line."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for line in reversed(lines):
        for prefix in ("fatal: ", "error: "):
            if line.startswith(prefix):
                return line[len(prefix):]
    return lines[-1] if lines else "git failed without a message"


def command_name(args: tuple[str, ...]) -> str:
    """The git subcommand in args (`commit` in `-c user.name=x commit -m y`)."""
    skip = False
    for arg in args:
        if skip:
            skip = False
        elif arg in ("-c", "-C", "--git-dir", "--work-tree", "--namespace"):
            skip = True
        elif not arg.startswith("-"):
            return arg
    return args[0] if args else ""


def failure(what: str, reason: str, cwd: Path, command: str, hint: str = "") -> SolError:
    """The one shape of a git failure: what failed, git's reason, where, what to do."""
    return SolError(f"{what}: {reason} (git {command} in {cwd})" + (f"; {hint}" if hint else ""))


@dataclass(frozen=True)
class Done:
    """A finished git process: its status, stdout as bytes, stderr, and where it ran."""

    status: int
    data: bytes
    err: str
    cwd: Path
    command: str

    @cached_property
    def out(self) -> str:
        """stdout as text (invalid UTF-8 replaced)."""
        return self.data.decode("utf-8", "replace")

    @property
    def ok(self) -> bool:
        return self.status == 0

    @property
    def reason(self) -> str:
        """Git's own words for the failure (stdout when stderr is empty, as for a merge)."""
        return git_reason(self.err if self.err.strip() else self.out)

    def error(self, what: str, hint: str = "") -> SolError:
        return failure(what, self.reason, self.cwd, self.command, hint)


def run(cwd: Path, *args: str, what: str = "", check: bool = True, timeout: float = TIMEOUT,
        env: Mapping[str, str] | None = None, input: bytes | None = None,
        discover: bool = False) -> Done:
    """Run `git ARGS` in cwd. With check, a non-zero exit raises `failure(what, ...)`;
    without, the caller reads `Done.status`. A timeout, a missing git or a missing cwd
    always raise. `discover` lets git find the repository above cwd (a path a user
    named); sol's own directories never need it."""
    command = command_name(args)
    what = what or "git failed"
    if not cwd.is_dir():
        raise failure(what, f"{cwd} does not exist", cwd, command)
    full = {k: v for k, v in os.environ.items() if k not in ISOLATE}
    full.update(ENV)
    if not discover:
        full["GIT_CEILING_DIRECTORIES"] = str(cwd.resolve().parent)
    full.update(env or {})
    try:
        proc = subprocess.Popen(
            ["git", *args], cwd=cwd, env=full,
            stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    except FileNotFoundError as exc:
        raise SolError(MISSING) from exc
    except OSError as exc:
        raise failure(what, f"cannot start git ({exc.strerror})", cwd, command) from exc
    try:
        data, err = proc.communicate(input, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        _kill(proc)
        raise failure(what, f"did not finish within {timeout:g}s and was stopped", cwd,
                      command, "retry; if it talks to a remote, check that it answers") from exc
    except BaseException:
        _kill(proc)
        raise
    done = Done(proc.returncode, data, err.decode("utf-8", "replace"), cwd, command)
    if check and not done.ok:
        raise done.error(what)
    return done


def _kill(proc: subprocess.Popen[bytes]) -> None:
    """End git and everything it started (remote helpers, hooks hold its pipes), then
    reap it. Not a process group of its own: that costs every git run a slower spawn."""
    import psutil  # only on this rare path: the scripted agent starts without it

    try:
        family = psutil.Process(proc.pid).children(recursive=True)
    except psutil.Error:
        family = []
    proc.kill()
    for child in family:
        try:
            child.kill()
        except psutil.Error:
            pass
    try:
        proc.communicate(timeout=5)
    except subprocess.TimeoutExpired:  # a process it started escaped and holds the pipes
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
        proc.wait()


def version() -> str | None:
    """`git version X.Y.Z`, or None when git is not installed."""
    try:
        return run(Path("/"), "--version").out.strip()
    except SolError:
        return None


# ---- reading a repository without a git process --------------------------------------


def git_dir(path: Path) -> Path | None:
    """The git directory of the repository at path (a worktree with `.git`, or a bare
    repository), or None; parents are never searched."""
    dot = path / ".git"
    try:
        if dot.is_file():
            text = dot.read_text(encoding="utf-8").strip()
            if not text.startswith("gitdir: "):
                return None
            found = Path(text.removeprefix("gitdir: "))
            found = found if found.is_absolute() else path / found
            return found if _is_git_dir(found) else None
    except (OSError, UnicodeDecodeError):
        return None
    for candidate in (dot, path):
        if _is_git_dir(candidate):
            return candidate
    return None


def _is_git_dir(path: Path) -> bool:
    """HEAD, plus objects and refs (a repository) or a commondir (a linked worktree)."""
    return (path / "HEAD").is_file() and (
        ((path / "objects").is_dir() and (path / "refs").is_dir())
        or (path / "commondir").is_file())


def _common_dir(gd: Path) -> Path:
    """Where a linked worktree's shared refs live (the git dir itself otherwise)."""
    try:
        text = (gd / "commondir").read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return gd
    common = Path(text)
    return common if common.is_absolute() else gd / common


def _sha(text: str) -> str | None:
    return text if len(text) in (40, 64) and set(text) <= HEX else None


def read_ref(repo: Path, ref: str) -> str | None:
    """The commit a full branch ref (`refs/heads/main`) names, read from the loose ref
    file or packed-refs; None when it cannot be read that way (absent, symbolic, another
    ref store): the caller then asks git."""
    if not ref.startswith("refs/heads/") or ".." in ref or "//" in ref or ref.endswith("/"):
        return None
    gd = git_dir(repo)
    if gd is None:
        return None
    try:
        common = _common_dir(gd)
        try:
            return _sha((common / ref).read_text(encoding="ascii").strip())
        except FileNotFoundError:
            pass
        with (common / "packed-refs").open(encoding="utf-8", errors="replace") as packed:
            for line in packed:
                sha, _, name = line.rstrip("\n").partition(" ")
                if name == ref:
                    return _sha(sha)
    except (OSError, UnicodeDecodeError):
        return None
    return None
