"""TmuxSessions against a real tmux server on a private socket (see conftest)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from pathlib import Path

import pytest
from conftest import poll

from reconciler.core.errors import SolError
from reconciler.core.home import Home, session_name
from reconciler.drivers.sessions import (
    Ending,
    SessionBackend,
    TmuxSessions,
    last_words,
    tmux_version,
)

WEIRD = "it's \"q\" $(touch pwned1) `touch pwned2` ; touch pwned3 #{pane_id} %Y ~ a;"


@pytest.fixture
def tmux(sol_home: Home) -> TmuxSessions:
    return TmuxSessions(sol_home.socket_name, launch_dir=sol_home.run / "launch")


def sock_dir() -> Path:
    return Path(os.environ["TMUX_TMPDIR"]) / f"tmux-{os.getuid()}"


def start_sh(backend: TmuxSessions, name: str, script: str, workdir: Path,
             env: dict[str, str] | None = None) -> Path:
    """Start `sh -c script` in workdir; returns the session's log path."""
    log = workdir / "logs" / f"{name}.log"
    backend.start(name, ["sh", "-c", script], cwd=workdir, env=env or {}, log=log)
    return log


def kill_9(backend: TmuxSessions, name: str) -> int:
    """SIGKILL the session's process, as a crashing agent would die."""
    pid = backend.pane_pid(name)
    assert isinstance(pid, int) and pid > 1
    os.kill(pid, signal.SIGKILL)
    return pid


def read(path: Path) -> str:
    return path.read_text() if path.exists() else ""


def test_tmux_sessions_is_a_session_backend(tmux: TmuxSessions) -> None:
    backend: SessionBackend = tmux
    assert backend.list() == {}


def test_output_reaches_recent_output_and_log(tmux: TmuxSessions, tmp_path: Path) -> None:
    name = session_name("shop", "toast")
    log = start_sh(tmux, name, "echo first; echo second; read x; echo later; exec sleep 600",
                   tmp_path)
    assert log.parent.is_dir()
    poll(lambda: "second" in tmux.recent_output(name), what="output in the pane")
    poll(lambda: "first\nsecond" in read(log).replace("\r\n", "\n"), what="output in the log")
    assert tmux.recent_output(name, lines=1) == "second"
    assert tmux.is_alive(name) and tmux.exists(name)
    assert tmux.list() == {name: True}
    quiet_since = log.stat().st_mtime_ns
    tmux.send_text(name, "go")
    poll(lambda: "later" in read(log), what="later output in the log")
    assert log.stat().st_mtime_ns > quiet_since, "the log's mtime is the last output"
    assert read(log).startswith("first"), "the log is appended, not rewritten"


def test_env_arrives_and_callers_tmux_does_not_leak(
    tmux: TmuxSessions, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TMUX", "/tmp/users-own-tmux,1,0")
    monkeypatch.setenv("TMUX_PANE", "%77")
    name = "sol-w-env"
    script = 'printf "world=%s weird=%s tmux=%s pane=%s\\n" "$SOL_WORLD" "$WEIRD" "$TMUX" ' \
             '"$TMUX_PANE"; exec sleep 600'
    log = start_sh(tmux, name, script, tmp_path,
                   env={"SOL_WORLD": "shop", "WEIRD": WEIRD, "TMUX": "/tmp/evil,1,0"})
    line = poll(lambda: next((x for x in read(log).splitlines() if "world=" in x), None),
                what="the env line")
    assert f"world=shop weird={WEIRD} " in str(line)
    assert "users-own-tmux" not in str(line) and "evil" not in str(line)
    assert "pane=%77" not in str(line)
    assert os.environ["TMUX"] == "/tmp/users-own-tmux,1,0", "caller's env is restored"
    global_env = subprocess.run(
        ["tmux", "-L", tmux.socket_name, "show-environment", "-g"],
        capture_output=True, text=True, env={k: v for k, v in os.environ.items()
                                             if k not in ("TMUX", "TMUX_PANE")},
    ).stdout
    assert "users-own-tmux" not in global_env and "%77" not in global_env


def test_exit_leaves_a_dead_pane_with_its_output(tmux: TmuxSessions, tmp_path: Path) -> None:
    name = "sol-w-quick"
    log = start_sh(tmux, name, "echo goodbye; read x; exit 3", tmp_path)
    poll(lambda: "goodbye" in tmux.recent_output(name), what="output")
    tmux.send_text(name, "exit now")
    poll(lambda: not tmux.is_alive(name), what="the pane to die")
    assert tmux.exists(name)
    assert tmux.list() == {name: False}
    assert tmux.pane_pid(name) is None
    assert "goodbye" in tmux.recent_output(name)
    assert "goodbye" in read(log)


def test_kill_9_makes_the_session_dead_not_gone(tmux: TmuxSessions, tmp_path: Path) -> None:
    name = "sol-w-victim"
    start_sh(tmux, name, "exec sleep 600", tmp_path)
    pid = tmux.pane_pid(name)
    assert isinstance(pid, int) and pid > 1
    poll(lambda: Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"sleep"),
         what="the pane process to exec argv")
    os.kill(pid, signal.SIGKILL)
    poll(lambda: not tmux.is_alive(name), what="is_alive to notice kill -9")
    assert tmux.exists(name)
    assert tmux.pane_pid(name) is None
    poll(lambda: not Path(f"/proc/{pid}").exists(), what="tmux to reap the process")


def test_ending_is_the_exit_status_or_the_signal_tmux_recorded(
    tmux: TmuxSessions, tmp_path: Path
) -> None:
    start_sh(tmux, "sol-w-exits", "exit 3", tmp_path)
    start_sh(tmux, "sol-w-killed", "exec sleep 600", tmp_path)
    assert tmux.ending("sol-w-killed") is None, "a live session has not ended"
    assert tmux.ending("sol-w-nobody") is None, "nor has a missing one"
    kill_9(tmux, "sol-w-killed")
    poll(lambda: tmux.ending("sol-w-exits") == Ending(status=3), what="the exit status")
    poll(lambda: tmux.ending("sol-w-killed") == Ending(signal=9), what="the signal")
    assert (str(Ending(status=3)), str(Ending(signal=9))) == ("status 3", "signal 9")


def test_last_words_skip_blanks_and_the_dead_pane_notice() -> None:
    pane = "working\nError: rate limited\n\n\nPane is dead (signal 9, Thu Dec  3 12:13)\n"
    assert last_words(pane) == "Error: rate limited"
    assert last_words("  done  \n") == "done"
    assert last_words("\nPane is dead (status 0, Thu)") == ""


def test_list_filters_by_prefix_and_is_one_tmux_call(
    tmux: TmuxSessions, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    start_sh(tmux, "sol-a-live", "exec sleep 600", tmp_path)
    start_sh(tmux, "sol-a-dead", "exit 0", tmp_path)
    start_sh(tmux, "other-x", "exec sleep 600", tmp_path)
    poll(lambda: tmux.list() == {"sol-a-live": True, "sol-a-dead": False},
         what="list() to show the dead session")
    assert tmux.list(prefix="other-") == {"other-x": True}
    assert set(tmux.list(prefix="")) == {"sol-a-live", "sol-a-dead", "other-x"}

    real = shutil.which("tmux")
    calls = tmp_path / "calls"
    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "tmux").write_text(f'#!/bin/sh\necho "$*" >> "{calls}"\nexec "{real}" "$@"\n')
    (shim / "tmux").chmod(0o755)
    monkeypatch.setenv("PATH", f"{shim}{os.pathsep}{os.environ['PATH']}")
    assert len(tmux.list()) == 2
    assert len(read(calls).splitlines()) == 1, read(calls)
    assert tmux.is_alive("sol-a-live")
    assert len(read(calls).splitlines()) == 2, read(calls)


def test_list_without_a_server_is_empty(tmux: TmuxSessions) -> None:
    assert tmux.list() == {}
    assert not tmux.exists("sol-w-a") and not tmux.is_alive("sol-w-a")
    assert tmux.pane_pid("sol-w-a") is None


def test_exact_names_do_not_match_prefixes(tmux: TmuxSessions, tmp_path: Path) -> None:
    start_sh(tmux, "sol-w-ab", "exec sleep 600", tmp_path)
    assert not tmux.exists("sol-w-a")
    tmux.stop("sol-w-a")
    assert tmux.is_alive("sol-w-ab")


def test_stop_is_idempotent(tmux: TmuxSessions, tmp_path: Path) -> None:
    tmux.stop("sol-w-none")
    start_sh(tmux, "sol-w-keep", "exec sleep 600", tmp_path)
    start_sh(tmux, "sol-w-gone", "exec sleep 600", tmp_path)
    tmux.stop("sol-w-gone")
    assert not tmux.exists("sol-w-gone")
    tmux.stop("sol-w-gone")
    assert tmux.list() == {"sol-w-keep": True}


def test_stop_ends_what_the_session_left_out_of_its_tree(tmux: TmuxSessions,
                                                         tmp_path: Path) -> None:
    """A tool command the agent started and that left its tree (re-parented: a daemon
    of its own, or one started as the session was being listed) is found by the session
    id every agent process inherits, and ended with the session."""
    from reconciler.drivers.processes import marked

    mark = f"mark-{os.getpid()}-{tmp_path.name}"
    start_sh(tmux, "sol-w-left", "setsid -f sleep 300; exec sleep 301", tmp_path,
             env={"PATH": os.environ["PATH"], "SOL_SESSION": mark})
    poll(lambda: len(marked(mark)) == 2, what="the session and its re-parented tool")
    assert any(p.ppid() != tmux.pane_pid("sol-w-left") for p in marked(mark))
    tmux.stop("sol-w-left")
    assert marked(mark) == []


def test_send_text_arrives_verbatim_and_is_not_executed(
    tmux: TmuxSessions, tmp_path: Path
) -> None:
    name = "sol-w-reader"
    got = tmp_path / "got"
    canary = tmp_path / "canary"
    canary.mkdir()
    script = f'while IFS= read -r line; do printf "%s\\n" "$line" >> {got.name}; done'
    start_sh(tmux, name, script, tmp_path)
    texts = [WEIRD + f' ; rm -rf {canary}', "-n", ";", "x" * 3000]
    for text in texts:
        tmux.send_text(name, text)
    poll(lambda: len(read(got).splitlines()) == len(texts), what="every line to be read")
    assert read(got).splitlines() == texts
    assert canary.is_dir()
    assert not list(tmp_path.glob("pwned*"))


def test_argv_is_not_run_through_a_shell(tmux: TmuxSessions, tmp_path: Path) -> None:
    workdir = tmp_path / "work dir #{session_name} it's"
    workdir.mkdir()
    name = "sol-w-argv"
    log = tmp_path / "log dir #x %Y ;'" / "out;"
    words = [WEIRD, "$HOME", "a b", "*"]
    script = 'printf "[%s]\\n" "$@"; exec sleep 600'
    tmux.start(name, ["sh", "-c", script, "sh", *words], cwd=workdir, env={}, log=log)
    poll(lambda: "[*]" in read(log), what="the log at its odd path")
    assert [line.strip() for line in read(log).splitlines()] == [f"[{w}]" for w in words]
    assert not list(workdir.glob("pwned*")) and not list(tmp_path.glob("pwned*"))
    pwd_log = tmp_path / "pwd.log"
    tmux.start("sol-w-pwd", ["sh", "-c", "pwd; exec sleep 600"], cwd=workdir, env={},
               log=pwd_log)
    poll(lambda: str(workdir) in read(pwd_log), what="pwd to print the odd cwd")


def test_missing_program_is_a_dead_pane_not_a_crash(tmux: TmuxSessions, tmp_path: Path) -> None:
    name = "sol-w-missing"
    tmux.start(name, ["no-such-program-xyz"], cwd=tmp_path, env={}, log=tmp_path / "m.log")
    poll(lambda: not tmux.is_alive(name), what="the pane to die")
    assert tmux.exists(name) and tmux.list() == {name: False}
    assert (tmp_path / "m.log").exists()


def test_start_refuses_a_live_name_and_replaces_a_dead_one(
    tmux: TmuxSessions, tmp_path: Path
) -> None:
    name = "sol-w-twice"
    log = start_sh(tmux, name, "echo one; exec sleep 600", tmp_path)
    with pytest.raises(SolError, match="already running"):
        start_sh(tmux, name, "echo two", tmp_path)
    assert tmux.is_alive(name)
    poll(lambda: "one" in read(log), what="the first output")
    kill_9(tmux, name)
    poll(lambda: not tmux.is_alive(name), what="the pane to die")
    start_sh(tmux, name, "echo three; exec sleep 600", tmp_path)
    poll(lambda: "three" in tmux.recent_output(name), what="the new session's output")
    assert "one" not in tmux.recent_output(name)
    poll(lambda: "three" in read(log), what="the log to be appended")
    assert "one" in read(log) and "two" not in read(log)


def test_hooks_touch_the_hook_file(sol_home: Home, tmp_path: Path) -> None:
    hook_file = tmp_path / "hook dir 'q' $x #{y} %Y" / "changed;"
    hook_file.parent.mkdir()
    tmux = TmuxSessions(sol_home.socket_name, hook_file=hook_file,
                        launch_dir=sol_home.run / "launch")
    start_sh(tmux, "sol-w-keep", "exec sleep 600", tmp_path)
    start_sh(tmux, "sol-w-hooked", "exec sleep 600", tmp_path)
    assert not hook_file.exists()
    kill_9(tmux, "sol-w-hooked")
    poll(lambda: not tmux.is_alive("sol-w-hooked"), what="the pane to die")
    poll(hook_file.exists, what="pane-died to touch the hook file")
    hook_file.unlink()
    tmux.stop("sol-w-hooked")
    poll(hook_file.exists, what="session-closed to touch the hook file")


def test_error_paths_raise_sol_error(tmux: TmuxSessions, tmp_path: Path) -> None:
    with pytest.raises(SolError, match="does not exist"):
        tmux.recent_output("sol-w-none")
    with pytest.raises(SolError, match="does not exist"):
        tmux.send_text("sol-w-none", "hi")
    with pytest.raises(SolError, match="not valid"):
        start_sh(tmux, "sol-w.a:b", "true", tmp_path)
    with pytest.raises(SolError, match="no such directory"):
        tmux.start("sol-w-a", ["true"], cwd=tmp_path / "nope", env={}, log=tmp_path / "l")
    with pytest.raises(SolError, match="environment variable"):
        tmux.start("sol-w-a", ["true"], cwd=tmp_path, env={"A=B": "c"}, log=tmp_path / "l")
    with pytest.raises(SolError, match="needs a command"):
        tmux.start("sol-w-a", [], cwd=tmp_path, env={}, log=tmp_path / "l")
    start_sh(tmux, "sol-w-done", "exit 0", tmp_path)
    poll(lambda: not tmux.is_alive("sol-w-done"), what="the pane to die")
    with pytest.raises(SolError, match="has exited"):
        tmux.send_text("sol-w-done", "hi")


def test_missing_tmux_is_a_clear_sol_error(
    tmux: TmuxSessions, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(SolError, match="tmux is not installed"):
        tmux.list()
    with pytest.raises(SolError, match="tmux is not installed"):
        start_sh(tmux, "sol-w-a", "true", tmp_path)
    assert tmux_version() is None


def test_tmux_version_is_at_least_3_2() -> None:
    version = tmux_version()
    assert version is not None and version >= (3, 2)


def test_attach_argv_targets_our_server_and_session(
    tmux: TmuxSessions, tmp_path: Path
) -> None:
    start_sh(tmux, "sol-w-att", "exec sleep 600", tmp_path)
    argv = tmux.attach_argv("sol-w-att")
    assert tmux.socket_name in argv and "=sol-w-att" in argv
    found = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True)
    assert "not a terminal" in found.stderr
    missing = subprocess.run(tmux.attach_argv("sol-w-nope"), stdin=subprocess.DEVNULL,
                             capture_output=True, text=True)
    assert "can't find session" in missing.stderr


def test_kill_server_ends_everything(tmux: TmuxSessions, tmp_path: Path) -> None:
    start_sh(tmux, "sol-w-a", "exec sleep 600", tmp_path)
    start_sh(tmux, "sol-w-b", "exec sleep 600", tmp_path)
    tmux.kill_server()
    assert tmux.list() == {}
    assert not tmux.exists("sol-w-a")
    tmux.kill_server()
    start_sh(tmux, "sol-w-a", "exec sleep 600", tmp_path)
    assert tmux.list() == {"sol-w-a": True}, "a start right after kill_server works"


def test_the_default_server_is_never_touched(tmux: TmuxSessions, tmp_path: Path) -> None:
    name = "sol-w-private"
    start_sh(tmux, name, "echo hi; exec sleep 600", tmp_path)
    poll(lambda: "hi" in tmux.recent_output(name), what="output")
    tmux.send_text(name, "hello")
    tmux.list()
    assert tmux.socket_name in {p.name for p in sock_dir().iterdir()}
    tmux.stop(name)
    tmux.kill_server()
    assert "default" not in {p.name for p in sock_dir().iterdir()}
