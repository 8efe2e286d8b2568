"""A world's backup: agents' commits kept where one `rm -rf` of the clone cannot take them.

Every worktree of a world lives in its managed clone's `worktrees/`, so deleting the
clone took every agent commit not yet landed. Each world therefore has a sol-owned bare
repository beside its clone (`worlds/<w>/backup.git`). A `post-commit` hook installed in
the clone pushes the branch of every commit made in an agent's or envoy's worktree
there, at once; the forge saves the target branch there after each landing (with
`push: false` the clone holds the only copy). When the clone is made again, its branches
come back from the backup and each worktree whose clone vanished is re-attached in
place, its uncommitted files untouched.
"""

from __future__ import annotations

import shlex
from pathlib import Path

from reconciler.core.errors import SolError
from reconciler.drivers import git
from reconciler.drivers.worktrees import rev

HOOK = """#!/bin/sh
# Installed by sol: every commit of an agent or envoy branch is pushed at once to a
# repository of the world's (its backup, or the remote of a node's clone), so losing
# this clone loses no committed work.
branch=$(git symbolic-ref -q --short HEAD) || exit 0
case "$branch" in
  sol/*|envoy/*) git push -q --no-verify --force {backup} "HEAD:refs/heads/$branch" \\
                   >/dev/null 2>&1 || true ;;
esac
exit 0
"""


def path_of(repo: Path) -> Path:
    """The backup of the clone at `worlds/<w>/repo`."""
    return repo.parent / "backup.git"


def ensure(repo: Path) -> Path:
    """Make the backup and the clone's hook if either is missing; cheap when both exist."""
    backup = path_of(repo)
    if not (backup / "HEAD").exists():
        backup.mkdir(parents=True, exist_ok=True)
        git.run(backup, "init", "--quiet", "--bare", what=f"cannot create backup {backup}")
    hook = repo / "hooks" / "post-commit"
    text = HOOK.format(backup=shlex.quote(str(backup.absolute())))
    try:
        if not hook.exists() or hook.read_text() != text:
            hook.parent.mkdir(parents=True, exist_ok=True)
            hook.write_text(text)
            hook.chmod(0o700)
    except OSError as exc:
        raise SolError(f"cannot install sol's post-commit hook in {repo}: {exc.strerror}") \
            from exc
    return backup


def save(repo: Path, branch: str) -> None:
    """Keep `branch` of the clone in the backup (after a landing); best effort."""
    backup = path_of(repo)
    if (backup / "HEAD").exists():
        git.run(repo, "push", "-q", "--no-verify", "--force", str(backup.absolute()),
                f"refs/heads/{branch}:refs/heads/{branch}", check=False)


def restore(repo: Path, target: str) -> list[str]:
    """After a new clone: bring back agents' branches, and the target when the backup's
    is ahead of the source's (landed but never pushed). The branches restored."""
    backup = path_of(repo)
    if not (backup / "HEAD").exists():
        return []
    listed = git.run(backup, "for-each-ref", "--format=%(refname)", "refs/heads/sol/",
                     "refs/heads/envoy/", check=False)
    restored = []
    for ref in listed.out.split():
        if rev(repo, ref) is None and git.run(repo, "fetch", "-q", str(backup.absolute()),
                                              f"{ref}:{ref}", check=False).ok:
            restored.append(ref.removeprefix("refs/heads/"))
    kept = rev(backup, f"refs/heads/{target}")
    mine = rev(repo, f"refs/heads/{target}")
    if kept and kept != mine:
        git.run(repo, "fetch", "-q", str(backup.absolute()), f"refs/heads/{target}:refs/sol/kept",
                check=False)
        ahead = git.run(repo, "merge-base", "--is-ancestor", mine or kept, kept, check=False)
        if ahead.ok and rev(repo, "refs/sol/kept"):
            git.run(repo, "update-ref", f"refs/heads/{target}", kept, check=False)
            restored.append(target)
        git.run(repo, "update-ref", "-d", "refs/sol/kept", check=False)
    return restored


def reattach(repo: Path, worktree: Path, branch: str) -> bool:
    """Re-attach a worktree whose clone was made again: register it anew on `branch`
    and point its `.git` file there, keeping every file in it (a mixed reset refreshes
    only the index). False when it needs nothing or cannot be done."""
    pointer = worktree / ".git"
    try:
        line = pointer.read_text().strip()
    except OSError:
        return False
    if not line.startswith("gitdir: ") or Path(line.removeprefix("gitdir: ")).exists():
        return False
    if rev(repo, f"refs/heads/{branch}") is None:
        return False
    temp = worktree.parent / f".{worktree.name}-reattach"
    git.run(repo, "worktree", "prune", check=False)
    if not git.run(repo, "worktree", "add", "--quiet", "--no-checkout", str(temp.absolute()),
                   branch, check=False).ok:
        return False
    new = (temp / ".git").read_text().strip().removeprefix("gitdir: ")
    pointer.write_text(f"gitdir: {new}\n")
    Path(new, "gitdir").write_text(f"{pointer.absolute()}\n")
    (temp / ".git").unlink()
    temp.rmdir()
    git.run(worktree, "reset", "--quiet", what=f"cannot refresh the index of {worktree}")
    return True
