"""Agent runtimes: how a session starts the agent of a writ (DESIGN section 9).

A runtime turns a tether into a `Launch`: the argv to run in the session (a list, never
a shell string built from manifest data), its environment, and the persona file the
caster writes into the worktree (and keeps out of git through the exclude file).
"""

from __future__ import annotations

import os
import shlex
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from reconciler.core.errors import SolError
from reconciler.core.model import Runtime, WorldSpec, WritSpec
from reconciler.drivers import git, hook
from reconciler.drivers.runtimes import claude, codex
from reconciler.drivers.runtimes.personas import persona

if TYPE_CHECKING:
    from reconciler.core.home import Home
    from reconciler.core.tether import Tether

__all__ = [
    "NAMES", "PERSONA_FILES", "Launch", "check", "effective_runtime", "launch", "persona",
    "session_path", "sol_bin_dir",
]

NAMES = ("claude", "codex", "command", "script")
# The file each CLI reads its standing orders from, next to the project's own.
PERSONA_FILES = {"claude": "CLAUDE.local.md", "codex": "AGENTS.override.md"}
# Words a `command` line may start with that are not programs on PATH.
_SHELL_WORDS = frozenset(
    "! . : [ [[ { ( alias bg builtin case cd command declare echo enable eval exec exit "
    "export false fg for function if let local printf pushd read readonly set shift "
    "source test time trap true type ulimit umask unset until wait while".split()
)


@dataclass(frozen=True)
class Launch:
    """What a session runs: argv with env in the worktree, after writing `files`."""

    argv: list[str]
    env: dict[str, str]
    files: dict[str, str] = field(default_factory=dict)
    exclude: list[str] = field(default_factory=list)


def sol_bin_dir() -> Path:
    """The directory of the `sol` that is running, so sessions call the same installation."""
    here = Path(sys.executable).parent
    if (here / "sol").is_file():
        return here.absolute()
    found = shutil.which("sol")
    if found:
        return Path(found).parent.absolute()
    return here.absolute()


def session_path(path: str | None = None) -> str:
    """PATH as a session sees it: sol's own directory first, then `path` without it."""
    first = str(sol_bin_dir())
    rest = os.environ.get("PATH", "") if path is None else path
    entries = [first, *(p for p in rest.split(os.pathsep) if p and p != first)]
    return os.pathsep.join(entries)


def effective_runtime(world: WorldSpec, writ: WritSpec) -> Runtime:
    """The writ's runtime when it names one, else the world's."""
    return writ.runtime if writ.runtime is not None else world.runtime


def _command_program(runtime: Runtime) -> str | None:
    """The program a `command` line starts, or None when a shell word leads it."""
    line = (runtime.command or "").strip()
    if not line:
        raise SolError("runtime command has no command line: set runtime.command, "
                       'for example {name: command, command: "aider --yes"}')
    try:
        words = shlex.split(line, comments=True)
    except ValueError as exc:
        raise SolError(f"runtime command line {line!r} cannot be parsed ({exc}): "
                       "fix its quoting") from exc
    for word in words:
        name, sep, _ = word.partition("=")
        if sep and name.isidentifier():
            continue  # a leading VAR=value assignment
        return None if word in _SHELL_WORDS else word
    return None


def check(runtime: Runtime) -> None:
    """Refuse a runtime whose program is not installed, before anything is cast."""
    if runtime.name not in NAMES:
        raise SolError(f"runtime {runtime.name} is unknown: use one of {', '.join(NAMES)}")
    if runtime.name == "script":
        return
    program = runtime.name if runtime.name != "command" else _command_program(runtime)
    if program is None:
        return
    if "/" in program:
        if os.path.isabs(program) and not os.access(program, os.X_OK):
            raise SolError(f"runtime command {program} is not an executable file; "
                           "fix runtime.command")
        return  # relative to the worktree: only the session can tell
    if shutil.which(program, path=session_path()) is None:
        label = runtime.name if runtime.name != "command" else f"command {program}"
        raise SolError(f"runtime {label} not found on PATH; install it or choose another "
                       "runtime")
    refusal = claude.root_refusal(runtime.sandboxed) if runtime.name == "claude" else None
    if refusal:
        raise SolError(refusal)


def _env(tether: Tether, home: Home, agent: str, tether_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("TMUX", "TMUX_PANE")}
    identity = f"sol agent {agent}"
    email = f"{agent}@{tether.world}.sol"
    env.update({
        "SOL_HOME": str(home.root.absolute()),
        "SOL_WORLD": tether.world,
        "SOL_WRIT": tether.writ,
        "SOL_AGENT": agent,
        "SOL_TETHER": str(Path(tether_path).absolute()),
        "SOL_SESSION": str(tether.session),
        "SOL_ATTEMPT": str(tether.attempt),
        "PATH": session_path(env.get("PATH", "")),
        "GIT_AUTHOR_NAME": identity,
        "GIT_AUTHOR_EMAIL": email,
        "GIT_COMMITTER_NAME": identity,
        "GIT_COMMITTER_EMAIL": email,
    })
    return env


def tracked(worktree: Path, name: str) -> bool:
    """Whether the project itself tracks `name`; sol must not overwrite such a file."""
    try:
        done = git.run(worktree, "--literal-pathspecs", "ls-files", "--", name, check=False)
    except SolError:
        return False
    return done.ok and bool(done.out.strip())


def persona_files(runtime: Runtime, worktree: Path, text: str
                  ) -> tuple[dict[str, str], list[str], bool]:
    """The persona file for the CLI and its exclude line; the last value says the project
    tracks that file itself, so sol leaves it alone and the SessionStart hook carries the
    orders instead."""
    name = PERSONA_FILES[runtime.name]
    if runtime.name == "codex" and (Path(worktree) / "AGENTS.md").is_file():
        text += ("\n## The project's own instructions\n\nThis file takes the place of the "
                 "project's `AGENTS.md` for Codex. Read `AGENTS.md` yourself and follow it "
                 "wherever it does not contradict the orders above.\n")
    if tracked(Path(worktree), name):
        return {}, [], True
    return {name: text}, [f"/{name}"], False


def cli_launch(runtime: Runtime, *, env: dict[str, str], station: Path, worktree: Path,
               home: Home, text: str, prompt: str, resume: str | None = None,
               codex_home: Path | None = None) -> Launch:
    """claude or codex, unattended: persona file, config, argv with no secret and no
    assignment text in it (`text` goes to a file, `prompt` is a fixed sentence).
    `codex_home`: the agent's own CODEX_HOME instead of the sphere's (an agent on its
    node takes its whole outpost there)."""
    files, exclude, owned = persona_files(runtime, worktree, text)
    if runtime.name == "claude":
        directory = claude.config_dir(station)
        claude.seed(directory, worktree=Path(worktree).absolute(), home_root=home.root,
                    env=env)
        env = claude.session_env(env, directory, sandboxed=runtime.sandboxed)
        if owned:
            station.mkdir(mode=0o700, parents=True, exist_ok=True)
            (station / "persona.md").write_text(text, encoding="utf-8")
            env["SOL_PERSONA_CONTEXT"] = str(station / "persona.md")
        return Launch(claude.argv(runtime.model, prompt=prompt, resume=resume), env, files,
                      exclude)
    directory = (codex_home or home.codex_home).absolute()
    codex.seed(directory, worktree=Path(worktree).absolute(), env=env)
    return Launch(codex.argv(runtime.model, prompt=prompt, resume=resume),
                  codex.session_env(env, directory), files, exclude)


def _agent_launch(runtime: Runtime, tether: Tether, env: dict[str, str],
                  worktree: Path, target: str | None, station: Path, home: Home,
                  codex_home: Path | None) -> Launch:
    """claude and codex for a writ: a respawn of the same attempt resumes the CLI's
    conversation; a new attempt starts a fresh one, its feedback in the persona."""
    resume = None
    if runtime.name == "claude":
        seen = hook.read(station / hook.CONVERSATION) or {}
        if seen.get("writ") == tether.writ and str(seen.get("attempt")) == str(tether.attempt):
            resume = str(seen.get("id") or "") or None
        prompt = claude.RESUMED if resume else claude.KICKOFF
    else:
        resume = codex.resume_id(station, (codex_home or home.codex_home).absolute(),
                                 Path(worktree), tether.writ, tether.attempt)
        prompt = codex.RESUMED if resume else codex.KICKOFF
    return cli_launch(runtime, env=env, station=station, worktree=worktree, home=home,
                      text=persona(tether, target=target), prompt=prompt, resume=resume,
                      codex_home=codex_home)


def launch(runtime: Runtime, *, tether: Tether, home: Home, agent: str, tether_path: Path,
           worktree: Path, target: str | None = None,
           codex_home: Path | None = None) -> Launch:
    """The session's argv, env and persona file for `runtime`; nothing is run here.
    `target` names the world's target branch in the persona when the tether does not;
    `codex_home` gives the agent a CODEX_HOME of its own (cli_launch)."""
    env = _env(tether, home, agent, tether_path)
    if runtime.name == "script":
        # -P: a worktree that holds a `reconciler` package must not shadow sol's own.
        return Launch([sys.executable, "-P", "-m", "reconciler.drivers.runtimes.script"], env)
    if runtime.name == "command":
        _command_program(runtime)
        return Launch(["bash", "-c", runtime.command or ""], env)
    if runtime.name in PERSONA_FILES:
        refusal = claude.root_refusal(runtime.sandboxed) if runtime.name == "claude" else None
        if refusal:
            raise SolError(refusal)
        return _agent_launch(runtime, tether, env, worktree, target,
                             Path(tether_path).parent, home, codex_home)
    raise SolError(f"runtime {runtime.name} is unknown: use one of {', '.join(NAMES)}")
