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
