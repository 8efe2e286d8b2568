"""`sol diff` shows everything a pass would do, each line with the reconciler that plans
it: a dead agent's respawn (sentinel) and a resolved writ's merge (forge)."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

from conftest import poll
from helpers import world_yaml, writ_status, writ_yaml, write_specs

from reconciler.core.home import Home, session_name


def live_pane(home: Home, session: str) -> int | None:
    out = subprocess.run(["tmux", "-L", home.socket_name, "list-panes", "-t", session, "-F",
                          "#{pane_dead} #{pane_pid}"], capture_output=True, text=True)
    dead, _, pid = out.stdout.strip().partition(" ")
    return int(pid) if out.returncode == 0 and dead == "0" else None


def test_diff_lists_a_respawn_and_a_merge_each_with_its_reconciler(
        sol_home: Home, repo: Path, tmp_path: Path, sol) -> None:
    specs = write_specs(tmp_path / "specs", world_yaml("shop", repo),
                        writ_yaml("a", "shop", "sleep 600"),
                        writ_yaml("b", "shop", "echo b > b.txt"))
    sol("apply", "-f", str(specs), check=True)
    poll(lambda: writ_status(sol_home, "shop", "b").phase == "Resolved", what="b resolved")
    session = session_name("shop", writ_status(sol_home, "shop", "a").status["agent"])
    pid = poll(lambda: live_pane(sol_home, session), what="a's agent at work")
    os.kill(pid, signal.SIGKILL)
    poll(lambda: live_pane(sol_home, session) is None, what="a's agent dead")

    shown = sol("diff", "-f", str(specs))
    assert shown.returncode == 2, shown.stderr
    lines = shown.stdout.splitlines()
    respawn = [line for line in lines if "writ/shop/a" in line and "respawn" in line]
    assert respawn and respawn[0].endswith("[sentinel]"), shown.stdout
    merge = [line for line in lines if "merge" in line and "sol/b" in line]
    assert merge and merge[0].endswith("[forge]"), shown.stdout
    assert writ_status(sol_home, "shop", "b").phase == "Resolved"  # a diff acts on nothing
    assert live_pane(sol_home, session) is None
