"""`sol demo`, the README's first command, runs in the suite as a user runs it."""

from __future__ import annotations

import os
import re
import subprocess
import sys


def test_demo_lands_every_writ_and_exits_zero(sol_home, tmp_path) -> None:
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    result = subprocess.run([sys.executable, "-m", "reconciler", "demo"], capture_output=True,
                            text=True, timeout=170, env=env)
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert "every writ landed" in out
    # the writ whose first attempt breaks the tests is sent back, then lands
    assert re.search(r"gate-failed\s+add-multiply", out)
    assert re.search(r"cast\s+add-multiply .*attempt 2", out)
    log = out[out.index("git log --oneline main"):]
    for title in ("Add subtraction", "Add multiplication", "Add exponentiation",
                  "Add division, defined in terms of multiplication", "Add a command line"):
        assert title in log
    assert log.index("Add a command line") < log.index("Add multiplication")
    assert "5 Merged, 1 Done" in out
    assert "Traceback" not in result.stderr


def test_demo_without_pytest_says_what_to_install_and_starts_nothing(tmp_path) -> None:
    code = ("import runpy, sys; sys.modules['pytest'] = None; sys.argv = ['sol', 'demo']; "
            "runpy.run_module('reconciler', run_name='__main__')")
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60, env=env)
    assert result.returncode == 1
    assert "pip install 'sol[demo]'" in result.stdout and "Traceback" not in result.stderr
    assert not list(tmp_path.glob("sol-demo-*"))
