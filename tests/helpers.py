"""Building blocks for integration tests: manifests written to disk, state read back."""

from __future__ import annotations

import json
import subprocess
import textwrap
from pathlib import Path
from typing import Any

from reconciler.core.home import Home
from reconciler.core.store import Store


def world_yaml(name: str, source: Path, *, max_active: int = 4, extra: str = "") -> str:
    return textwrap.dedent(f"""\
        apiVersion: sol/v1
        kind: World
        metadata: {{name: {name}}}
        spec:
          source: {source}
          runtime: {{name: script}}
          capacity: {{maxActive: {max_active}}}
        """) + textwrap.indent(extra, "  ")


def writ_yaml(name: str, world: str, steps: str = "", *, title: str | None = None,
              extra: str = "") -> str:
    description = "Do the work.\n```sh\n" + steps + "\n```\n" if steps else "Nothing to run."
    doc = {
        "apiVersion": "sol/v1", "kind": "Writ", "metadata": {"name": name, "world": world},
        "spec": {"title": title or f"Writ {name}", "description": description},
    }
    text = json.dumps(doc)  # JSON is YAML: no quoting surprises for test data
    if extra:
        loaded = json.loads(text)
        import ruamel.yaml

        loaded["spec"].update(ruamel.yaml.YAML(typ="safe").load(extra))
        text = json.dumps(loaded)
    return text + "\n"


def write_specs(directory: Path, *docs: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "specs.yaml").write_text("---\n".join(docs))
    return directory


def store(home: Home) -> Store:
    return Store(home.db)


def writ_status(home: Home, world: str, name: str) -> Any:
    s = Store(home.db)
    try:
        return s.get("Writ", world, name)
    finally:
        s.close()


def tmux_sessions(home: Home) -> dict[str, bool]:
    out = subprocess.run(
        ["tmux", "-L", home.socket_name, "list-sessions", "-F",
         "#{session_name} #{pane_dead}"], capture_output=True, text=True,
    )
    result = {}
    for line in out.stdout.splitlines():
        name, dead = line.rsplit(" ", 1)
        result[name] = dead != "1"
    return result


def gone(pid: int) -> bool:
    """No such process, or only a zombie nobody reaped yet (pid 1 may not reap here)."""
    from reconciler.drivers.processes import pid_alive

    return not pid_alive(pid)


def meta(home: Home, key: str) -> str | None:
    s = Store(home.db)
    try:
        return s.get_meta(key)
    finally:
        s.close()


def failure(result: subprocess.CompletedProcess[str]) -> str:
    """The one line a user's mistake prints: exit 1, no traceback, one sentence on stderr."""
    assert "Traceback" not in result.stderr
    assert result.returncode == 1, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]
