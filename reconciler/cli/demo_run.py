"""`sol demo`: the bundled example, end to end, on the scripted runtime.

A temporary SOL_HOME, a fresh git repository made from examples/demo/project, the demo
manifests applied, and the whole loop (worlds, consul, sentinel, forge) run in this
process until every writ has landed. Progress is the event feed, live.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from reconciler.controllers import registry
from reconciler.core.errors import SolError
from reconciler.core.home import Home, data_path
from reconciler.core.model import DONE, MERGED, TERMINAL
from reconciler.drivers import git
from reconciler.drivers.sphere import Sphere
from reconciler.specs.manifests import validate

IDENTITY = {"GIT_AUTHOR_NAME": "sol demo", "GIT_AUTHOR_EMAIL": "demo@sol.invalid",
            "GIT_COMMITTER_NAME": "sol demo", "GIT_COMMITTER_EMAIL": "demo@sol.invalid"}
SHOWN = {"cast", "resolved", "merging", "gate-passed", "gate-failed", "sent-back", "merged",
         "failed", "escalated", "session-died", "respawned", "cloned", "push-failed"}


def make_project(root: Path) -> Path:
    """A git repository holding the demo project, with a repo-local identity."""
    project = root / "project"
    shutil.copytree(data_path("examples") / "demo" / "project", project)
    for args in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-q", "-m", "calc: add"]):
        git.run(project, *args, env=IDENTITY, what=f"cannot make the demo project {project}")
    return project


def make_specs(root: Path, project: Path) -> Path:
    specs = root / "specs"
    shutil.copytree(data_path("examples") / "demo" / "specs", specs)
    world = specs / "world.yaml"
    world.write_text(world.read_text().replace("./project", str(project)))
    return specs


def _forge_loop(home: Home, stop: threading.Event) -> None:
    """The forge in its own thread (own connection), so gates never pause dispatch."""
    sphere = Sphere(home)
    try:
        while not stop.is_set():
            for world in sphere.store.list("World"):
                registry.run_owner(sphere, "forge", world.name)
            stop.wait(0.2)
    finally:
        sphere.close()


def run(echo: Callable[[str], None], timeout: float = 170.0) -> int:
    """Run the demo; returns the exit code (0 only if everything landed)."""
    if importlib.util.find_spec("pytest") is None:  # the project's gate would fail 3 times
        echo("sol demo: its project's quality gate runs pytest, which is not installed "
             "here: pip install 'sol[demo]' (or pytest), then run sol demo again")
        return 1
    root = Path(tempfile.mkdtemp(prefix="sol-demo-"))
    home = Home(root / "home")
    os.environ["SOL_HOME"] = str(home.root)
    os.environ.pop("TMUX", None)
    project = make_project(root)
    specs = make_specs(root, project)
    echo(f"sol demo: SOL_HOME={home.root}")
    echo(f"  project {project} (a tiny Python calculator with a pytest gate)")
    manifests = validate([specs])
    sphere = Sphere(home)
    start = time.monotonic()
    registry.apply(sphere, manifests)
    stop = threading.Event()
    forge_thread = threading.Thread(target=_forge_loop, args=(home, stop), daemon=True)
    forge_thread.start()
    seen = 0
    try:
        while True:
            for event in sphere.store.events(after=seen):
                seen = event.id
                if event.type in SHOWN:
                    echo(f"  {time.monotonic() - start:5.1f}s  {event.type:<12} "
                         f"{event.name:<14} {event.message}")
            writs = sphere.store.list("Writ")
            if writs and all(w.phase in TERMINAL for w in writs):
                break
            if time.monotonic() - start > timeout:
                echo(f"sol demo: not finished after {timeout:.0f}s")
                break
            registry.reconcile_once(sphere, skip=("forge", "notifier"))
            time.sleep(0.2)
    finally:
        stop.set()
        forge_thread.join(timeout=60)
    # a final pass: caravan phases and world heads
    registry.reconcile_once(sphere, skip=("forge", "notifier"))
    writs = sphere.store.list("Writ")
    ok = all(w.phase == (DONE if w.spec.get("kind") == "analysis" else MERGED) for w in writs)
    echo("")
    from reconciler.cli.describe import render_status
    from reconciler.cli.view import render_table

    echo(render_table("Writ", [w.to_object() for w in writs]))
    echo("")
    echo(render_status(sphere))
    echo("")
    if home.repo("demo").is_dir():
        log = git.run(home.repo("demo"), "log", "--oneline", "main", check=False)
        echo("git log --oneline main (the target branch in the managed clone):")
        echo(log.out.rstrip())
        echo("")
    elapsed = time.monotonic() - start
    if ok:
        echo(f"sol demo: every writ landed in {elapsed:.1f}s. Look around with "
             f"SOL_HOME={home.root} sol get writs / sol describe writ add-multiply")
    else:
        bad = ", ".join(f"{w.name} ({w.phase})" for w in writs
                        if w.phase not in (MERGED, DONE))
        echo(f"sol demo: FAILED after {elapsed:.1f}s: not landed: {bad}")
    try:
        sphere.sessions.kill_server()
    except SolError:
        pass
    return 0 if ok else 1
