"""The launcher: a session's argv and environment travel in a 0600 file, never on a
command line, and the file is gone once the agent runs."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from conftest import poll

from reconciler.core.home import Home
from reconciler.drivers import launcher
from reconciler.drivers.sessions import TmuxSessions


def test_a_session_gets_its_environment_from_a_private_file_that_is_then_deleted(
        sol_home: Home, tmp_path: Path) -> None:
    sessions = TmuxSessions(sol_home.socket_name, launch_dir=sol_home.run / "launch")
    out = tmp_path / "env.txt"
    secret = "sk-ant-never-on-argv-42"
    sessions.start("sol-w-a", ["sh", "-c", f'printf %s "$API_KEY" > {out}; sleep 60'],
                   cwd=tmp_path, env={"API_KEY": secret, "PATH": os.environ["PATH"]},
                   log=tmp_path / "a.log")
    poll(lambda: out.exists() and out.read_text() == secret, what="the agent to see its env")
    assert list((sol_home.run / "launch").iterdir()) == []  # read, then deleted
    assert (sol_home.run / "launch").stat().st_mode & 0o777 == 0o700
    server = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert secret not in server
    sessions.kill_server()


def test_a_launch_file_is_private_and_quotes_everything(tmp_path: Path) -> None:
    path = tmp_path / "d" / "x.sh"
    out = tmp_path / "out.txt"
    hostile = "$(touch pwned); `id` 'q' \"d\" \\ ;"
    launcher.write(path, ["sh", "-c", f'printf %s "$V" > {out}'], {"V": hostile}, tmp_path)
    assert path.stat().st_mode & 0o777 == 0o600
    done = subprocess.run(launcher.command(path), capture_output=True, text=True, timeout=30,
                          env={"LEAK": "x"})
    assert done.returncode == 0, done.stderr
    assert out.read_text() == hostile and not (tmp_path / "pwned").exists()
    assert not path.exists()  # deleted before the agent ran
    missing = subprocess.run(launcher.command(tmp_path / "missing.sh"), capture_output=True,
                             text=True, timeout=30)
    assert missing.returncode != 0
