"""The on-disk layout of a sphere (everything under one SOL_HOME), in one place."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from reconciler.core.errors import SolError

DATA_DIR = Path(__file__).parent.parent / "_data"
SOURCE_ROOT = Path(__file__).parent.parent.parent


def data_path(name: str) -> Path:
    """A shipped data folder (schemas, manifests, examples), installed or in a checkout."""
    installed = DATA_DIR / name
    return installed if installed.exists() else SOURCE_ROOT / name


def default_home() -> Path:
    return Path(os.environ.get("SOL_HOME") or Path.home() / "sol").expanduser().absolute()


@dataclass(frozen=True)
class Home:
    """Paths of one SOL_HOME; the only place that knows the layout of DESIGN section 4."""

    root: Path

    @classmethod
    def from_env(cls) -> Home:
        return cls(default_home())

    @property
    def db(self) -> Path:
        return self.root / "sol.db"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def run(self) -> Path:
        return self.root / "run"

    def wake_file(self, child: str) -> Path:
        """The one file that wakes a daemon child (`consul`, `sentinel-<world>`, ...)."""
        return self.run / f"{child}.wake"

    @property
    def config(self) -> Path:
        return self.root / "sol.yaml"

    @property
    def codex_home(self) -> Path:
        """The sphere's CODEX_HOME, seeded by the codex runtime; the ledger reads its
        `sessions/`."""
        return self.root / "codex"

    def world_dir(self, world: str) -> Path:
        return self.root / "worlds" / world

    def repo(self, world: str) -> Path:
        return self.world_dir(world) / "repo"

    def outposts(self, world: str) -> Path:
        return self.world_dir(world) / "outposts"

    def outpost(self, world: str, agent: str) -> Path:
        return self.outposts(world) / agent

    def worktree(self, world: str, agent: str) -> Path:
        return self.outpost(world, agent) / "worktree"

    def tether(self, world: str, agent: str) -> Path:
        return self.outpost(world, agent) / "tether.json"

    def forge_worktree(self, world: str) -> Path:
        return self.world_dir(world) / "forge" / "worktree"

    def agent_log(self, world: str, agent: str) -> Path:
        return self.logs / "agents" / f"{world}-{agent}.log"

    def gate_log(self, world: str, writ: str, attempt: int, gate: str) -> Path:
        return self.logs / "gates" / world / f"{writ}-{attempt}-{gate}.log"

    @property
    def socket_name(self) -> str:
        """tmux -L name: short and stable however deep SOL_HOME is."""
        digest = hashlib.sha1(str(self.root.absolute()).encode()).hexdigest()[:12]
        return f"sol-{digest}"

    def init(self) -> None:
        """Create the layout, private to the user (0700): it holds agents' environments,
        transcripts and logs. Idempotent."""
        try:
            for path in (self.root, self.logs, self.run, self.root / "worlds"):
                path.mkdir(mode=0o700, parents=True, exist_ok=True)
                if path.stat().st_mode & 0o077:
                    path.chmod(0o700)
        except OSError as exc:
            raise SolError(
                f"cannot create SOL_HOME {self.root}: {exc.strerror}; "
                "set SOL_HOME to a writable directory"
            ) from exc


def private(path: Path) -> None:
    """Make a file of the sphere readable by the user alone (0600), if it is not."""
    try:
        if path.stat().st_mode & 0o077:
            path.chmod(0o600)
    except OSError:
        pass


def session_name(world: str, agent: str) -> str:
    return f"sol-{world}-{agent}"
