"""An agent's outpost on a node that shares no disk with the daemon (`spec.sessions.workspace:
node`).

Why: on machines that share nothing, the daemon's outpost under SOL_HOME does not exist
where the agent runs. So the agent works in a clone on its own node, and everything
crosses between the two sides through git and through its session's actor, never
through a shared path:

- The daemon creates the writ's branch in the world's *remote* (a bare repository every
  node can reach: the world's backup by default) before the session starts. The node
  clones it (or, for an outpost it already holds, fast-forwards to it), so an agent cast
  again after its node was lost starts from its last pushed commit.
- A post-commit hook in the node's clone pushes every commit to the remote at once (the
  backup's own hook, pointed there).
- The tether travels with the start call and is written on the node; the agent's
  `sol prime` reads it there. The daemon keeps its own copy, the one that counts.
- `sol resolve` and `sol escalate` on the node cannot write the store: they push the
  branch and leave a request in the node outpost's `outbox/`. The sentinel collects the
  outbox and the hooks' activity through the actor each pass (`collect`) and applies
  them (sentinel_act), so the writ moves exactly as it does for a local agent.

Paths the daemon computed for its own outpost (in argv, env, cwd) are rewritten to the
node's outpost (`rewrite`), so runtimes build one launch for both.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reconciler.core.errors import SolError
from reconciler.core.files import write_private
from reconciler.drivers import backup, git, worktrees

OUTBOX = "outbox"
MIRROR_STATE = "node-mirror.json"
"""In the daemon's outpost: for each file it mirrors by appending, which node file and
how much of it is mirrored already."""
WHOLE = ("activity.json", "claude-session.json")
"""Small files of the node outpost the daemon mirrors whole (hooks' state), besides the
outbox."""
SESSION_LOG = "session.log"
APPENDED = ("claude/projects/*/*.jsonl", "codex/sessions/*/*/*/rollout-*.jsonl")
"""Files mirrored by appending what is new (the CLI's transcripts: the ledger reads the
daemon's copy), besides the session log. Read to the last whole line, so a path in
them is never cut between two collections."""
STAYS = frozenset({"worktree", "tmp", "home", OUTBOX, MIRROR_STATE})
"""What of the daemon's outpost never goes to a node: the node has its own."""
MAX_COLLECT = 256 * 1024
"""Bytes of one file per collection at most: a runaway file must not flood the cluster."""
MAX_BATCH = 4 * 1024 * 1024
"""Bytes of all appended files per collection at most; the rest comes next pass."""

@dataclass(frozen=True)
class NodeWorkspace:
    """What the actor needs to make the agent's outpost on its node."""

    world: str
    agent: str
    remote: str                  # the git URL or path every node can reach
    branch: str                  # sol/<writ>, already in the remote
    local_outpost: str           # the daemon's outpost path, rewritten to the node's
    files: dict[str, str] = field(default_factory=dict)  # outpost-relative path: text
    exclude: tuple[str, ...] = ()  # lines for the clone's info/exclude (sol's own files)


def node_root() -> Path:
    """Where this node keeps outposts: $SOL_NODE_ROOT, else ~/.local/share/sol/nodes."""
    configured = os.environ.get("SOL_NODE_ROOT")
    return Path(configured) if configured else Path.home() / ".local/share/sol/nodes"


def node_outpost(socket_name: str, world: str, agent: str) -> Path:
    return node_root() / socket_name / world / agent


def rewrite(value: str, local: str, node: str) -> str:
    """`value` with the daemon's outpost path replaced by the node's (or back), also in
    the form Claude Code names a project directory after a path (each character that is
    not a letter or digit a dash)."""
    if not local or local == node:
        return value
    return value.replace(local, node).replace(mangled(local), mangled(node))


def mangled(path: str) -> str:
    return re.sub(r"[^A-Za-z0-9]", "-", path)


def prepare(ws: NodeWorkspace, socket_name: str) -> Path:
    """Make (or bring up to date) the agent's outpost on this node; its path.

    A clone this node already holds for this branch keeps its uncommitted files (a
    respawn here, as in a local worktree) and is fast-forwarded to the remote's branch
    when that moved on. One left by an earlier writ of this agent name is removed when
    all of it was pushed, else moved aside (`worktree.<time>`): it may hold what nobody
    pushed."""
    outpost = node_outpost(socket_name, ws.world, ws.agent)
    outpost.mkdir(mode=0o700, parents=True, exist_ok=True)
    worktree = outpost / "worktree"
    what = f"cannot prepare {ws.agent}'s worktree on this node from {ws.remote}"
    if (worktree / ".git").exists():
        _clear_earlier(worktree, ws.branch)
    if not (worktree / ".git").exists():
        temp = Path(tempfile.mkdtemp(prefix=".clone-", dir=outpost))
        try:  # a clone cut short never stands where a worktree is looked for
            git.run(outpost, "clone", "--quiet", "--no-tags", "--branch", ws.branch,
                    ws.remote, str(temp / "worktree"), what=what)
            (temp / "worktree").replace(worktree)
        finally:
            shutil.rmtree(temp, ignore_errors=True)
    else:
        git.run(worktree, "fetch", "--quiet", "origin",
                f"+refs/heads/{ws.branch}:refs/remotes/origin/{ws.branch}", what=what)
        git.run(worktree, "merge", "--quiet", "--ff-only", f"origin/{ws.branch}",
                check=False)  # not a fast-forward: its own commits stay, pushed next commit
    if ws.exclude:
        info = worktree / ".git" / "info" / "exclude"
        info.parent.mkdir(parents=True, exist_ok=True)
        have = info.read_text().splitlines() if info.exists() else []
        info.write_text("\n".join([*have, *(e for e in ws.exclude if e not in have)]) + "\n")
    hook = worktree / ".git" / "hooks" / "post-commit"
    hook.parent.mkdir(parents=True, exist_ok=True)
    hook.write_text(backup.HOOK.format(backup="origin"))  # every commit to the remote
    hook.chmod(0o700)
    (outpost / OUTBOX).mkdir(mode=0o700, exist_ok=True)  # requests name their session
    (outpost / "tmp").mkdir(mode=0o700, exist_ok=True)  # the CLI's TMPDIR
    put_files(outpost, ws.files, ws.local_outpost)
    return outpost


def _clear_earlier(worktree: Path, branch: str) -> None:
    """Make way for `branch` when the clone holds another writ's branch: removed if it
    is clean and all pushed (the hook pushes each commit), else moved aside."""
    held = git.run(worktree, "symbolic-ref", "-q", "--short", "HEAD", check=False).out.strip()
    if held == branch:
        return
    clean = git.run(worktree, "status", "--porcelain", check=False)
    pushed = git.run(worktree, "rev-list", "--count", f"refs/remotes/origin/{held}..HEAD",
                     check=False)
    if held and clean.ok and not clean.out.strip() and pushed.ok and pushed.out.strip() == "0":
        shutil.rmtree(worktree)
    else:
        worktree.replace(worktree.with_name(f"worktree.{time.strftime('%Y%m%dT%H%M%S')}"))


def put_files(outpost: Path, files: dict[str, str], local_outpost: str) -> None:
    """Write files (outpost-relative) into a node outpost, 0600, the daemon's outpost
    path in their names and texts rewritten to this one."""
    for rel, text in files.items():
        path = (outpost / rewrite(rel, local_outpost, str(outpost))).resolve()
        if outpost.resolve() not in path.parents:
            raise SolError(f"refusing to write {rel} outside the outpost {outpost}")
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        write_private(path, rewrite(text, local_outpost, str(outpost)))


def collect(outpost: Path, tokens: dict[str, str], machine: str) -> dict[str, Any]:
    """What the daemon mirrors from a node outpost: small files whole (`files`), what is
    new in the session log and the transcripts (`appends`, with `fresh` naming the files
    read from their start because they are not the ones `tokens` name), and the tokens
    to pass next time. `machine` tells this node's files from another's."""
    files: dict[str, str] = {}
    box = outpost / OUTBOX
    for rel in (*WHOLE, *(f"{OUTBOX}/{p.name}" for p in sorted(box.glob("*.json")))):
        try:
            with (outpost / rel).open("rb") as handle:
                files[rel] = handle.read(MAX_COLLECT).decode("utf-8", "replace")
        except OSError:
            continue
    appends: dict[str, bytes] = {}
    fresh: list[str] = []
    new_tokens = dict(tokens)
    budget = MAX_BATCH
    named = [SESSION_LOG, *sorted(str(p.relative_to(outpost)) for pattern in APPENDED
                                  for p in outpost.glob(pattern))]
    for rel in named:
        if budget <= 0:
            break
        found = _tail(outpost / rel, tokens.get(rel, ""), machine, min(budget, MAX_COLLECT),
                      whole_lines=rel != SESSION_LOG)
        if found is None:
            continue
        chunk, token, restarted = found
        new_tokens[rel] = token
        budget -= len(chunk)
        if chunk:
            appends[rel] = chunk
        if restarted and rel in tokens:
            fresh.append(rel)
    return {"files": files, "appends": appends, "fresh": fresh, "tokens": new_tokens,
            "outpost": str(outpost)}


def _tail(path: Path, token: str, machine: str, limit: int, *, whole_lines: bool
          ) -> tuple[bytes, str, bool] | None:
    """The bytes of `path` past `token` (at most `limit`, to a line end when asked), the
    new token, and whether the file was read from its start because the token names
    another file or a longer one (cut). None when there is no such file."""
    try:
        with path.open("rb") as handle:
            stat = os.fstat(handle.fileno())
            ident = f"{machine}:{stat.st_dev}:{stat.st_ino}"
            seen, _, at = token.rpartition("@")
            offset = int(at) if seen == ident and at.isdigit() else 0
            restarted = seen != ident or stat.st_size < offset
            offset = 0 if stat.st_size < offset else offset
            handle.seek(offset)
            chunk = handle.read(limit)
    except OSError:
        return None
    if whole_lines:
        chunk = chunk[:chunk.rfind(b"\n") + 1]
    return chunk, f"{ident}@{offset + len(chunk)}", restarted


# ---- the agent's side: `sol resolve` and `sol escalate` on a node --------------------


def outbox() -> Path | None:
    """The session's outbox when it runs in a node outpost ($SOL_OUTBOX), else None."""
    value = os.environ.get("SOL_OUTBOX")
    return Path(value) if value else None


def request(box: Path, kind: str, session: str, **data: Any) -> dict[str, Any]:
    """Leave a request for the daemon (resolve, escalate); it is applied once."""
    entry = {"id": uuid.uuid4().hex[:12], "kind": kind, "session": session,
             "at": time.time(), **data}
    box.mkdir(mode=0o700, parents=True, exist_ok=True)
    write_private(box / f"{int(entry['at'] * 1000):015d}-{kind}-{entry['id']}.json",
                   json.dumps(entry))
    return entry


def push(worktree: Path, branch: str) -> str:
    """Push the branch to the remote (origin); the commit pushed."""
    head = git.run(worktree, "rev-parse", "HEAD", what="cannot read HEAD").out.strip()
    git.run(worktree, "push", "--quiet", "--no-verify", "--force", "origin",
            f"HEAD:refs/heads/{branch}",
            what=f"cannot push {branch} to the world's remote "
                 f"({shlex.quote(_origin(worktree))})")
    return head


def _origin(worktree: Path) -> str:
    return git.run(worktree, "remote", "get-url", "origin", check=False).out.strip()


def parse_outbox(files: dict[str, str]) -> list[dict[str, Any]]:
    """The requests among collected files, oldest first; unreadable ones skipped."""
    found = []
    for rel in sorted(files):
        if not rel.startswith(f"{OUTBOX}/"):
            continue
        try:
            entry = json.loads(files[rel])
        except ValueError:
            continue
        if isinstance(entry, dict) and entry.get("kind") in ("resolve", "escalate") \
                and entry.get("id") and entry.get("session"):
            found.append(entry)
    return found


# ---- the daemon's side: the branch in the remote, and back -------------------------


def remote_of(repo: Path, configured: str, *, make: bool = True) -> str:
    """The world's remote: `spec.sessions.remote`, else its backup repository (made
    when missing, unless `make` is false: `sol doctor` only looks)."""
    if configured:
        return configured
    return str((backup.ensure(repo) if make else backup.path_of(repo)).absolute())


def publish_branch(repo: Path, remote: str, branch: str, target: str) -> str:
    """Make sure `branch` is in the remote before a node clones it; its base on `target`.

    The remote is where a node-workspace agent's commits go, so a branch it holds wins:
    the clone takes it (an agent cast again continues from its last pushed commit). A
    new branch starts at the target's tip in the clone and is pushed."""
    what = (f"cannot publish {branch} to the world's remote {remote} (spec.sessions.remote: "
            "this machine and every node must reach it)")
    held = git.run(repo, "ls-remote", "--heads", remote, f"refs/heads/{branch}",
                   what=what).out.split()
    if held:
        fetch_branch(repo, remote, branch)
    elif worktrees.rev(repo, f"refs/heads/{branch}") is None:
        tip = worktrees.rev(repo, f"refs/heads/{target}")
        if tip is None:
            raise SolError(f"cannot make {branch}: branch {target} is not in {repo}; fetch "
                           "the world and retry")
        git.run(repo, "branch", "--no-track", branch, tip, what=what)
    if not held:
        git.run(repo, "push", "--quiet", "--no-verify", remote,
                f"refs/heads/{branch}:refs/heads/{branch}", what=what)
    return worktrees.merge_base(repo, branch, f"refs/heads/{target}")


def fetch_branch(repo: Path, remote: str, branch: str) -> str:
    """The remote's `branch` into the clone (forced: the node's pushes are the truth for
    a branch no local worktree holds); its commit."""
    git.run(repo, "fetch", "--quiet", "--no-tags", remote,
            f"+refs/heads/{branch}:refs/heads/{branch}",
            what=f"cannot fetch {branch} from the world's remote {remote}")
    found = worktrees.rev(repo, f"refs/heads/{branch}")
    if found is None:
        raise SolError(f"branch {branch} is not in the world's remote {remote}")
    return found


def drop_branch(repo: Path, remote: str, branch: str) -> None:
    """Delete a landed writ's branch from the remote; best effort (it is on the target)."""
    git.run(repo, "push", "--quiet", "--no-verify", remote, f":refs/heads/{branch}",
            check=False)
