"""The git side of sol: the managed clone of a world and the worktrees cut from it.

Layout (DESIGN section 4): `worlds/<w>/repo` is a BARE clone of the world's source whose
fetch refspec is `+refs/heads/*:refs/remotes/origin/*`, so a fetch only ever moves
`origin/*` and never clobbers sol's local target branch `refs/heads/<branch>`, where the
forge lands work that may not be pushed yet. Outpost and forge worktrees are linked
worktrees of that clone.

Every git process runs through `drivers/git.py` (no prompt, stdin closed, a C locale,
a bounded timeout; one `SolError` shape carrying git's own reason).
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

from reconciler.core.errors import SolError
from reconciler.drivers import git
from reconciler.drivers.git import git_reason as git_reason  # landing.py imports it here
from reconciler.drivers.git import read_ref
from reconciler.drivers.processes import pid_alive

REFSPEC = "+refs/heads/*:refs/remotes/origin/*"
CLONE_TIMEOUT = 1800.0  # seconds; a large first clone over a slow link
FETCH_TIMEOUT = 600.0  # a fetch or a push of a world's source
PARTIAL = ".partial-"  # marks a clone in progress beside its destination


def run_git(cwd: Path, *args: str, timeout: float = git.TIMEOUT, what: str = "",
            env: dict[str, str] | None = None, check: bool = True) -> tuple[int, str, str]:
    """`git.run` as (status, stdout, stderr), for landing.py and recovery.py until they
    call `git.run` themselves; then this goes."""
    done = git.run(cwd, *args, timeout=timeout, what=what, env=env, check=check)
    return done.status, done.out, done.err


def _out(cwd: Path, *args: str, what: str = "", timeout: float = git.TIMEOUT) -> str:
    return git.run(cwd, *args, what=what, timeout=timeout).out.strip()


def _local_source(source: str) -> str:
    """An existing local path becomes absolute, so the clone does not depend on the cwd."""
    if "://" not in source:
        path = Path(source).expanduser()
        if path.exists():
            return str(path.absolute())
    return source


def is_clone(repo: Path) -> bool:
    """True when repo exists and is itself a git repository (parents are not searched)."""
    return git.git_dir(repo) is not None


def rev(repo: Path, ref: str) -> str | None:
    """The commit sha ref names in repo, or None when it names no commit."""
    fast = read_ref(repo, ref)
    if fast is not None:
        return fast
    done = git.run(repo, "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}", check=False,
                   what=f"cannot read {ref} in {repo}")
    if done.status not in (0, 1):
        raise done.error(f"cannot read {ref} in {repo}")
    return done.out.strip() if done.ok else None


def branch_exists(repo: Path, branch: str) -> bool:
    return rev(repo, f"refs/heads/{branch}") is not None


def _remove_stale_partials(dest: Path) -> None:
    """Drop half clones left beside dest by a process that died mid-clone."""
    if not dest.parent.is_dir():
        return
    prefix = f".{dest.name}{PARTIAL}"
    for leftover in dest.parent.glob(f"{prefix}*"):
        pid = leftover.name[len(prefix):].split("-")[0]
        if pid.isdigit() and pid_alive(int(pid)):
            continue
        shutil.rmtree(leftover, ignore_errors=True)


def clone(source: str, dest: Path, branch: str) -> None:
    """Bare-clone source into dest with sol's refspec and local `branch`.

    The clone is made in a temporary directory beside dest and renamed into place, so a
    crash never leaves a half clone at dest. A concurrent clone that wins the rename is
    accepted as success.
    """
    source = _local_source(source)
    if is_clone(dest):
        return
    if dest.exists() and any(dest.iterdir()):
        raise SolError(f"cannot clone {source} into {dest}: the directory exists and is not "
                       "a git clone; move it away and apply again")
    dest.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_partials(dest)
    temp = dest.parent / f".{dest.name}{PARTIAL}{os.getpid()}-{uuid.uuid4().hex[:8]}"
    what = f"cannot clone {source} into {dest}"
    try:
        done = git.run(dest.parent, "clone", "--quiet", "--bare", "--single-branch",
                       "--branch", branch, "--", source, str(temp), timeout=CLONE_TIMEOUT,
                       check=False, what=what)
        if not done.ok:
            if "not found in upstream" in done.reason:
                raise SolError(f"branch {branch} not found in {source}; "
                               "set spec.branch to an existing branch")
            raise done.error(what, "check spec.source and that it is reachable")
        git.run(temp, "config", "remote.origin.fetch", REFSPEC, what=f"cannot configure {temp}")
        git.run(temp, "config", "core.logAllRefUpdates", "true", what=f"cannot configure {temp}")
        git.run(temp, "fetch", "--quiet", "origin", timeout=FETCH_TIMEOUT,
                what=f"cannot fetch {source} into {dest}")
        if rev(temp, f"refs/remotes/origin/{branch}") is None:
            raise SolError(f"branch {branch} not found in {source}; "
                           "set spec.branch to an existing branch")
        if not branch_exists(temp, branch):
            git.run(temp, "update-ref", f"refs/heads/{branch}", f"refs/remotes/origin/{branch}",
                    what=f"cannot create branch {branch} in {dest}")
        git.run(temp, "symbolic-ref", "HEAD", f"refs/heads/{branch}",
                what=f"cannot point HEAD of {dest} at {branch}")
        try:
            os.rename(temp, dest)
        except OSError as exc:
            if not is_clone(dest):
                raise SolError(f"cannot move the new clone into {dest}: {exc.strerror}; "
                               "check permissions of that directory") from exc
    finally:
        shutil.rmtree(temp, ignore_errors=True)


def fetch(repo: Path, branch: str) -> str:
    """Fetch origin and fast-forward local `branch`; returns the local branch sha.

    The local branch moves only when it is an ancestor of origin's (compare-and-set, so a
    concurrent landing by the forge is never overwritten). When they diverged, local
    holds landed work not yet pushed and is left alone.
    """
    git.run(repo, "fetch", "--quiet", "--prune", "origin", timeout=FETCH_TIMEOUT,
            what=f"cannot fetch origin into {repo}")
    remote = rev(repo, f"refs/remotes/origin/{branch}")
    local = rev(repo, f"refs/heads/{branch}")
    if remote is None:
        if local is None:
            raise SolError(f"branch {branch} not found in the source of {repo}; "
                           "set spec.branch to an existing branch")
        return local
    if local is None:
        git.run(repo, "update-ref", f"refs/heads/{branch}", remote, "", check=False)
    elif local != remote and _is_ancestor(repo, local, remote):
        git.run(repo, "update-ref", f"refs/heads/{branch}", remote, local, check=False)
    now = rev(repo, f"refs/heads/{branch}")
    if now is None:
        raise SolError(f"branch {branch} vanished from {repo} during a fetch; apply again")
    return now


def _is_ancestor(repo: Path, ancestor: str, descendant: str) -> bool:
    what = f"cannot compare {ancestor} with {descendant} in {repo}"
    done = git.run(repo, "merge-base", "--is-ancestor", ancestor, descendant, check=False,
                   what=what)
    if done.status not in (0, 1):
        raise done.error(what)
    return done.ok


def _worktrees(repo: Path) -> dict[Path, str | None]:
    """Registered worktrees: resolved path to branch name (None when detached or bare)."""
    out = _out(repo, "worktree", "list", "--porcelain", what=f"cannot list worktrees of {repo}")
    found: dict[Path, str | None] = {}
    current: Path | None = None
    for line in out.splitlines():
        if line.startswith("worktree "):
            current = Path(line[len("worktree "):]).resolve()
            found[current] = None
        elif line.startswith("branch refs/heads/") and current is not None:
            found[current] = line[len("branch refs/heads/"):]
    return found


def add_worktree(repo: Path, path: Path, branch: str, base: str) -> str:
    """A worktree at path on branch; returns the merge-base of branch and base.

    An existing branch is reused as it is, never reset: it may hold an earlier attempt.
    A missing branch is created from base. A worktree already at path on branch is left
    alone, and a stale registration (directory deleted) is pruned first. The common case
    (a new branch at a new path) costs two git processes.
    """
    if not path.exists():
        base_sha = rev(repo, base)
        if base_sha is None:
            raise SolError(f"cannot make a worktree for {branch}: base {base} is not in "
                           f"{repo}; fetch the world and retry")
        path.parent.mkdir(parents=True, exist_ok=True)
        if git.run(repo, "worktree", "add", "--quiet", "--no-track", "-b", branch,
                   str(path.absolute()), base_sha, check=False).ok:
            return base_sha
    git.run(repo, "worktree", "prune", what=f"cannot prune worktrees of {repo}")
    target = path.resolve()
    registered = _worktrees(repo)
    if target in registered:
        if registered[target] != branch:
            raise SolError(f"worktree {path} is on {registered[target] or 'a detached HEAD'}, "
                           f"not {branch}; remove it and apply again")
        return merge_base(repo, branch, base)
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise SolError(f"cannot make a worktree at {path}: it exists and is not a worktree "
                       f"of {repo}; move it away and apply again")
    if rev(repo, base) is None:
        raise SolError(f"cannot make a worktree for {branch}: base {base} is not in {repo}; "
                       "fetch the world and retry")
    path.parent.mkdir(parents=True, exist_ok=True)
    if branch_exists(repo, branch):
        args = ["worktree", "add", "--quiet", str(path.absolute()), branch]
    else:
        args = ["worktree", "add", "--quiet", "--no-track", "-b", branch, str(path.absolute()),
                base]
    what = f"cannot make a worktree at {path} on {branch}"
    done = git.run(repo, *args, check=False, what=what)
    if not done.ok and _worktrees(repo).get(target) != branch:
        raise done.error(what)
    return merge_base(repo, branch, base)


def merge_base(repo: Path, branch: str, base: str) -> str:
    """The commit branch forked from base; SolError when they share no history."""
    what = f"cannot find where {branch} forked from {base} in {repo}"
    done = git.run(repo, "merge-base", branch, base, check=False, what=what)
    if done.ok and done.out.strip():
        return done.out.strip()
    if done.err.strip():
        raise done.error(what)
    raise git.failure(what, "they share no history", repo, done.command)


def remove_worktree(repo: Path, path: Path, *, force: bool = False) -> None:
    """Remove the worktree at path; a no-op when there is none.

    Without force, git refuses when the worktree has uncommitted or untracked files,
    so no work is lost by accident.
    """
    git.run(repo, "worktree", "prune", what=f"cannot prune worktrees of {repo}")
    if path.resolve() not in _worktrees(repo):
        return
    args = ["worktree", "remove", *(["--force"] if force else []), str(path.absolute())]
    git.run(repo, *args, what=f"cannot remove worktree {path}")


def delete_branch(repo: Path, branch: str, *, force: bool = False) -> None:
    """Delete a local branch; a no-op when it is gone. Without force, git refuses a
    branch not merged into the clone's HEAD (the target branch)."""
    if not branch_exists(repo, branch):
        return
    git.run(repo, "branch", "-D" if force else "-d", branch,
            what=f"cannot delete branch {branch} in {repo}")


def commits_beyond(repo: Path, branch: str, base: str) -> int:
    """How many commits branch has that base does not."""
    out = _out(repo, "rev-list", "--count", f"{base}..{branch}",
               what=f"cannot count commits of {branch} beyond {base}")
    return int(out or 0)


def is_merged(repo: Path, branch: str, target: str) -> bool:
    """True when the tip of branch is reachable from target (plain ancestry)."""
    for ref in (branch, target):
        if rev(repo, ref) is None:
            raise SolError(f"cannot tell whether {branch} is merged: {ref} is not in {repo}")
    return _is_ancestor(repo, branch, target)


def is_ancestor(repo: Path, ancestor: str, descendant: str) -> bool:
    """True when commit `ancestor` is reachable from `descendant`."""
    return _is_ancestor(repo, ancestor, descendant)


def merge_trees(repo: Path, ours: str, theirs: str) -> tuple[str | None, list[str], str]:
    """Three-way merge of two commits into a tree, in the object store alone (no
    worktree, no index): (tree, [], "") or, on a conflict, (None, the conflicted files,
    git's reason). The merge base is theirs and ours' own, as `git merge` finds it."""
    what = f"cannot merge {theirs[:12]} onto {ours[:12]} in {repo}"
    done = git.run(repo, "merge-tree", "--write-tree", "--name-only", ours, theirs,
                   check=False, what=what)
    if done.status == 0:
        return done.out.split("\n", 1)[0].strip(), [], ""
    if done.status != 1:
        return None, [], git_reason(done.err or done.out)
    head, _, messages = done.out.partition("\n\n")
    files = list(dict.fromkeys(line for line in head.splitlines()[1:] if line))
    conflicts = [line for line in messages.splitlines() if line.startswith("CONFLICT")]
    return None, files, git_reason("\n".join(conflicts) or messages)


def tree_of(repo: Path, commit: str) -> str:
    """The tree a commit records."""
    return _out(repo, "rev-parse", f"{commit}^{{tree}}", what=f"cannot read {commit} in {repo}")


def commit_tree(repo: Path, tree: str, parents: list[str], message: str, *,
                author: tuple[str, str], committer: tuple[str, str]) -> str:
    """A commit of `tree` on `parents`, made in the object store; no ref moves. The
    message goes through stdin (a writ's title is no business of `ps`); no hook runs and
    nothing is signed, as in `commit_all`."""
    env = {"GIT_AUTHOR_NAME": author[0], "GIT_AUTHOR_EMAIL": author[1],
           "GIT_COMMITTER_NAME": committer[0], "GIT_COMMITTER_EMAIL": committer[1]}
    args = [arg for parent in parents for arg in ("-p", parent)]
    return git.run(repo, "-c", "commit.gpgsign=false", "commit-tree", tree, *args, "-F", "-",
                   input=message.encode(), env=env,
                   what=f"cannot commit tree {tree[:12]} in {repo}").out.strip()


def dirty(worktree: Path) -> bool:
    """True when the worktree has changes or untracked files that are not excluded."""
    out = _out(worktree, "status", "--porcelain", "--untracked-files=normal",
               what=f"cannot read the status of {worktree}")
    return bool(out)


def commit_all(worktree: Path, message: str, *, author_name: str,
               author_email: str) -> str | None:
    """Stage everything and commit it as the given identity; None when nothing changed.

    The identity is passed explicitly (author and committer), so this works on a machine
    with no git identity. Hooks and signing are skipped: sol's gates judge the work, and
    a commit that only saves an agent's work must not be blocked by a local hook or key.
    """
    git.run(worktree, "add", "-A", what=f"cannot stage the changes in {worktree}")
    what = f"cannot read the staged changes in {worktree}"
    staged = git.run(worktree, "diff", "--cached", "--quiet", check=False, what=what)
    if staged.ok:
        return None
    if staged.status != 1:
        raise staged.error(what)
    identity = {"GIT_AUTHOR_NAME": author_name, "GIT_AUTHOR_EMAIL": author_email,
                "GIT_COMMITTER_NAME": author_name, "GIT_COMMITTER_EMAIL": author_email}
    git.run(worktree, "-c", f"user.name={author_name}", "-c", f"user.email={author_email}",
            "-c", "commit.gpgsign=false", "commit", "--quiet", "--no-verify", "-m", message,
            env=identity, what=f"cannot commit in {worktree}")
    return _out(worktree, "rev-parse", "HEAD")


def exclude(worktree: Path, patterns: list[str]) -> None:
    """Add patterns to the exclude file git reads for this worktree, once each.

    Git resolves `info/exclude` through the common directory, so for a linked worktree
    this is the clone's shared `repo/info/exclude`: every worktree of the world sees the
    patterns, which is what persona files (CLAUDE.local.md, AGENTS.override.md) need.
    """
    relative = _out(worktree, "rev-parse", "--git-path", "info/exclude",
                    what=f"cannot find the exclude file of {worktree}")
    path = Path(relative) if Path(relative).is_absolute() else worktree / relative
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        text = path.read_text() if path.exists() else ""
        present = {line.strip() for line in text.splitlines()}
        missing = list(dict.fromkeys(p for p in patterns if p.strip() not in present))
        if not missing:
            return
        lead = "\n" if text and not text.endswith("\n") else ""
        with path.open("a") as handle:
            handle.write(lead + "".join(f"{p}\n" for p in missing))
    except OSError as exc:
        raise SolError(f"cannot update {path}: {exc.strerror}; check its permissions") from exc
