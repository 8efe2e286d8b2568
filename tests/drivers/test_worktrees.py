"""worktrees.py against real git: a managed bare clone and worktrees cut from it."""

from __future__ import annotations

import http.server
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import git, make_repo

from reconciler.core.errors import SolError
from reconciler.drivers import git as gitrun
from reconciler.drivers import worktrees

ME = {"author_name": "Agent Smith", "author_email": "smith@sol.invalid"}


def commit_in(path: Path, name: str, text: str, message: str = "change") -> str:
    """Commit a file in a normal repository (the source) and return the new sha."""
    (path / name).write_text(text)
    git(path, "add", "-A")
    git(path, "commit", "-q", "-m", message)
    return git(path, "rev-parse", "HEAD")


@pytest.fixture
def clone(repo: Path, tmp_path: Path) -> Path:
    dest = tmp_path / "world" / "repo"
    worktrees.clone(str(repo), dest, "main")
    return dest


def test_clone_of_a_local_path_is_bare_with_the_origin_refspec(repo: Path, tmp_path: Path):
    git(repo, "branch", "feature")
    dest = tmp_path / "world" / "repo"
    worktrees.clone(str(repo), dest, "main")
    assert worktrees.is_clone(dest)
    assert git(dest, "rev-parse", "--is-bare-repository") == "true"
    assert git(dest, "config", "--get-all", "remote.origin.fetch") == worktrees.REFSPEC
    head = git(repo, "rev-parse", "HEAD")
    assert worktrees.rev(dest, "refs/heads/main") == head
    assert worktrees.rev(dest, "refs/remotes/origin/main") == head
    assert worktrees.rev(dest, "refs/remotes/origin/feature") == head
    assert not worktrees.branch_exists(dest, "feature")
    assert git(dest, "symbolic-ref", "HEAD") == "refs/heads/main"
    assert sorted(p.name for p in dest.parent.iterdir()) == ["repo"]
    worktrees.clone(str(repo), dest, "main")  # idempotent
    assert worktrees.rev(dest, "refs/heads/main") == head


def test_clone_into_an_empty_directory(repo: Path, tmp_path: Path):
    dest = tmp_path / "repo"
    dest.mkdir()
    worktrees.clone(str(repo), dest, "main")
    assert worktrees.is_clone(dest)


def test_clone_of_a_file_url(repo: Path, tmp_path: Path):
    dest = tmp_path / "repo"
    worktrees.clone(repo.as_uri(), dest, "main")
    assert worktrees.rev(dest, "main") == git(repo, "rev-parse", "HEAD")


def test_clone_of_a_missing_branch_says_so_and_leaves_nothing(repo: Path, tmp_path: Path):
    dest = tmp_path / "world" / "repo"
    with pytest.raises(SolError, match=f"branch trunk not found in {repo}"):
        worktrees.clone(str(repo), dest, "trunk")
    assert not dest.exists()
    assert list(dest.parent.iterdir()) == []


def test_clone_of_an_unreachable_source_fails_fast_and_clearly(tmp_path: Path):
    dest = tmp_path / "world" / "repo"
    missing = tmp_path / "no-such-repo"
    started = time.monotonic()
    with pytest.raises(SolError) as caught:
        worktrees.clone(str(missing), dest, "main")
    assert time.monotonic() - started < 20
    message = caught.value.message
    assert message.startswith(f"cannot clone {missing} into {dest}: ")
    assert "does not exist" in message and "\n" not in message
    assert not dest.exists()
    assert list(dest.parent.iterdir()) == []


@pytest.fixture
def auth_server() -> Iterator[str]:
    """A real HTTP server that demands a password, as a private https remote would."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="private"')
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            return

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/org/shop.git"
    server.shutdown()
    server.server_close()


def test_clone_never_prompts_for_a_password(auth_server: str, tmp_path: Path):
    started = time.monotonic()
    with pytest.raises(SolError, match=f"cannot clone {auth_server} into .*: could not read "
                       "Username .*terminal prompts disabled"):
        worktrees.clone(auth_server, tmp_path / "repo", "main")
    assert time.monotonic() - started < 20


def test_a_hanging_source_is_killed_after_the_timeout(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch):
    with socket.socket() as listener:  # accepts connections, never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/shop.git"
        monkeypatch.setattr(worktrees, "CLONE_TIMEOUT", 1.0)
        started = time.monotonic()
        with pytest.raises(SolError, match="did not finish within 1s and was stopped"):
            worktrees.clone(url, tmp_path / "repo", "main")
        assert time.monotonic() - started < 15
    assert not any(p.name.startswith((".repo", "repo")) for p in tmp_path.iterdir())


def test_clone_refuses_a_directory_that_is_not_a_clone(repo: Path, tmp_path: Path):
    dest = tmp_path / "repo"
    dest.mkdir()
    (dest / "notes.txt").write_text("mine")
    with pytest.raises(SolError, match="exists and is not a git clone"):
        worktrees.clone(str(repo), dest, "main")
    assert (dest / "notes.txt").read_text() == "mine"


def test_clone_removes_the_leftovers_of_a_dead_clone(repo: Path, tmp_path: Path):
    dest = tmp_path / "repo"
    leftover = tmp_path / f".repo{worktrees.PARTIAL}999999999-deadbeef"
    (leftover / "objects").mkdir(parents=True)
    worktrees.clone(str(repo), dest, "main")
    assert not leftover.exists()
    assert worktrees.is_clone(dest)


def test_concurrent_clones_of_one_world_both_succeed(repo: Path, tmp_path: Path):
    dest = tmp_path / "world" / "repo"
    errors: list[BaseException] = []

    def run() -> None:
        try:
            worktrees.clone(str(repo), dest, "main")
        except BaseException as exc:  # noqa: BLE001 (reported by the assertion below)
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert worktrees.rev(dest, "refs/heads/main") == git(repo, "rev-parse", "HEAD")
    assert sorted(p.name for p in dest.parent.iterdir()) == ["repo"]


def test_is_clone_and_rev_never_look_above_the_directory(repo: Path, tmp_path: Path):
    inside = repo / "sub"
    inside.mkdir()
    assert not worktrees.is_clone(inside)
    assert not worktrees.is_clone(tmp_path / "nothing")
    with pytest.raises(SolError, match="not a git repository"):
        worktrees.rev(inside, "HEAD")
    with pytest.raises(SolError, match="does not exist"):
        worktrees.rev(tmp_path / "nothing", "HEAD")


def test_rev_and_branch_exists(clone: Path):
    assert worktrees.rev(clone, "refs/heads/nope") is None
    assert worktrees.branch_exists(clone, "main")
    assert not worktrees.branch_exists(clone, "nope")


def test_fetch_fast_forwards_the_local_branch(repo: Path, clone: Path):
    new = commit_in(repo, "a.txt", "a")
    assert worktrees.fetch(clone, "main") == new
    assert worktrees.rev(clone, "refs/heads/main") == new


def test_fetch_creates_a_missing_local_branch(repo: Path, clone: Path):
    dev = commit_in(repo, "dev.txt", "dev")
    git(repo, "branch", "dev")
    git(repo, "reset", "-q", "--hard", "HEAD~1")
    assert worktrees.fetch(clone, "dev") == dev  # the world's spec.branch changed
    git(clone, "update-ref", "-d", "refs/heads/main")
    assert worktrees.fetch(clone, "main") == git(repo, "rev-parse", "main")
    with pytest.raises(SolError, match="branch trunk not found in the source of"):
        worktrees.fetch(clone, "trunk")


def land(clone: Path, message: str) -> str:
    """What the forge does: a new commit on the local target branch, not pushed."""
    tree = git(clone, "rev-parse", "main^{tree}")
    sha = git(clone, "commit-tree", tree, "-p", "main", "-m", message)
    git(clone, "update-ref", "refs/heads/main", sha)
    return sha


def test_fetch_leaves_a_diverged_local_branch_alone(repo: Path, clone: Path):
    landed = land(clone, "landed by the forge")
    assert worktrees.fetch(clone, "main") == landed  # ahead of origin: kept
    upstream = commit_in(repo, "b.txt", "b")
    assert worktrees.fetch(clone, "main") == landed
    assert worktrees.rev(clone, "refs/heads/main") == landed
    assert worktrees.rev(clone, "refs/remotes/origin/main") == upstream


def test_fetch_from_a_vanished_source_is_a_sol_error(repo: Path, clone: Path):
    shutil.rmtree(repo)
    with pytest.raises(SolError, match=f"cannot fetch origin into {clone}: "):
        worktrees.fetch(clone, "main")


def test_add_worktree_creates_the_branch_from_base(clone: Path, tmp_path: Path):
    path = tmp_path / "outposts" / "a1" / "worktree"
    base = worktrees.add_worktree(clone, path, "sol/fix", "main")
    assert base == worktrees.rev(clone, "main")
    assert (path / "README.md").read_text() == "# test\n"
    assert git(path, "rev-parse", "--abbrev-ref", "HEAD") == "sol/fix"
    assert worktrees.branch_exists(clone, "sol/fix")
    assert "branch.sol/fix" not in git(clone, "config", "--list")  # no upstream tracking


def test_add_worktree_reuses_a_branch_without_resetting_it(repo: Path, clone: Path,
                                                           tmp_path: Path):
    path = tmp_path / "wt"
    first_base = worktrees.add_worktree(clone, path, "sol/fix", "main")
    (path / "work.txt").write_text("attempt 1")
    work = worktrees.commit_all(path, "attempt 1", **ME)
    worktrees.remove_worktree(clone, path)
    assert not path.exists()
    commit_in(repo, "upstream.txt", "moved on")
    worktrees.fetch(clone, "main")
    again = worktrees.add_worktree(clone, path, "sol/fix", "main")
    assert again == first_base
    assert git(path, "rev-parse", "HEAD") == work
    assert (path / "work.txt").read_text() == "attempt 1"
    assert worktrees.commits_beyond(clone, "sol/fix", "main") == 1


def test_add_worktree_twice_is_a_no_op(clone: Path, tmp_path: Path):
    path = tmp_path / "wt"
    base = worktrees.add_worktree(clone, path, "sol/fix", "main")
    (path / "draft.txt").write_text("uncommitted")
    assert worktrees.add_worktree(clone, path, "sol/fix", "main") == base
    assert (path / "draft.txt").read_text() == "uncommitted"


def test_add_worktree_after_the_directory_was_deleted(clone: Path, tmp_path: Path):
    path = tmp_path / "wt"
    worktrees.add_worktree(clone, path, "sol/fix", "main")
    (path / "work.txt").write_text("kept")
    work = worktrees.commit_all(path, "work", **ME)
    shutil.rmtree(path)
    worktrees.add_worktree(clone, path, "sol/fix", "main")
    assert git(path, "rev-parse", "HEAD") == work
    assert (path / "work.txt").read_text() == "kept"


def test_add_worktree_refuses_what_it_must_not_touch(clone: Path, tmp_path: Path):
    path = tmp_path / "wt"
    worktrees.add_worktree(clone, path, "sol/fix", "main")
    with pytest.raises(SolError, match="is on sol/fix, not sol/other"):
        worktrees.add_worktree(clone, path, "sol/other", "main")
    with pytest.raises(SolError, match="already checked out|already used by worktree"):
        worktrees.add_worktree(clone, tmp_path / "second", "sol/fix", "main")
    with pytest.raises(SolError, match="base nope is not in"):
        worktrees.add_worktree(clone, tmp_path / "third", "sol/new", "nope")
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "keep.txt").write_text("user data")
    with pytest.raises(SolError, match="exists and is not a worktree"):
        worktrees.add_worktree(clone, occupied, "sol/new", "main")
    assert (occupied / "keep.txt").read_text() == "user data"


def test_commit_all_without_any_git_identity(clone: Path, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch):
    for var in ("GIT_AUTHOR_NAME", "GIT_AUTHOR_EMAIL", "GIT_COMMITTER_NAME",
                "GIT_COMMITTER_EMAIL", "EMAIL"):
        monkeypatch.delenv(var, raising=False)
    path = tmp_path / "wt"
    worktrees.add_worktree(clone, path, "sol/fix", "main")
    assert worktrees.commit_all(path, "nothing", **ME) is None
    (path / "new.txt").write_text("new")
    (path / "README.md").unlink()
    sha = worktrees.commit_all(path, "add new, drop readme", **ME)
    assert sha == git(path, "rev-parse", "HEAD")
    who = git(path, "log", "-1", "--format=%an|%ae|%cn|%ce|%s")
    assert who == "Agent Smith|smith@sol.invalid|Agent Smith|smith@sol.invalid|add new, drop readme"
    assert git(path, "show", "--name-status", "--format=", "HEAD").splitlines() == [
        "D\tREADME.md", "A\tnew.txt"]
    assert not worktrees.dirty(path)
    assert worktrees.commit_all(path, "again", **ME) is None


def test_dirty_sees_changes_and_untracked_files(clone: Path, tmp_path: Path):
    path = tmp_path / "wt"
    worktrees.add_worktree(clone, path, "sol/fix", "main")
    assert not worktrees.dirty(path)
    (path / "README.md").write_text("changed")
    assert worktrees.dirty(path)
    git(path, "checkout", "--", "README.md")
    (path / "untracked.txt").write_text("new")
    assert worktrees.dirty(path)


def test_exclude_keeps_persona_files_out_of_git(clone: Path, tmp_path: Path):
    path = tmp_path / "wt"
    worktrees.add_worktree(clone, path, "sol/fix", "main")
    (path / "CLAUDE.local.md").write_text("you are an agent")
    assert worktrees.dirty(path)
    worktrees.exclude(path, ["CLAUDE.local.md", "AGENTS.override.md"])
    worktrees.exclude(path, ["CLAUDE.local.md"])
    assert not worktrees.dirty(path)
    assert git(path, "status", "--porcelain") == ""
    assert worktrees.commit_all(path, "nothing to save", **ME) is None
    shared = (clone / "info" / "exclude").read_text().splitlines()
    assert shared.count("CLAUDE.local.md") == 1 and shared.count("AGENTS.override.md") == 1
    # The exclude file lives in the clone's common dir: every worktree of the world sees it.
    other = tmp_path / "other"
    worktrees.add_worktree(clone, other, "sol/other", "main")
    (other / "AGENTS.override.md").write_text("persona")
    assert not worktrees.dirty(other)
    # An excluded file does not make a worktree count as holding unsaved work.
    worktrees.remove_worktree(clone, path)
    assert not path.exists()


def test_remove_worktree_is_idempotent_and_keeps_uncommitted_work(clone: Path,
                                                                  tmp_path: Path):
    path = tmp_path / "wt"
    worktrees.remove_worktree(clone, path)  # never existed
    worktrees.add_worktree(clone, path, "sol/fix", "main")
    (path / "unsaved.txt").write_text("work in progress")
    with pytest.raises(SolError, match=f"cannot remove worktree {path}: .*untracked"):
        worktrees.remove_worktree(clone, path)
    assert (path / "unsaved.txt").exists()
    worktrees.remove_worktree(clone, path, force=True)
    assert not path.exists()
    worktrees.remove_worktree(clone, path, force=True)
    assert worktrees.branch_exists(clone, "sol/fix")


def test_delete_branch_refuses_unmerged_work_unless_forced(clone: Path, tmp_path: Path):
    path = tmp_path / "wt"
    worktrees.add_worktree(clone, path, "sol/fix", "main")
    (path / "x.txt").write_text("x")
    worktrees.commit_all(path, "x", **ME)
    with pytest.raises(SolError, match="cannot delete branch sol/fix"):
        worktrees.delete_branch(clone, "sol/fix", force=True)  # checked out in a worktree
    worktrees.remove_worktree(clone, path)
    with pytest.raises(SolError, match="not fully merged"):
        worktrees.delete_branch(clone, "sol/fix")
    assert worktrees.branch_exists(clone, "sol/fix")
    worktrees.delete_branch(clone, "sol/fix", force=True)
    assert not worktrees.branch_exists(clone, "sol/fix")
    worktrees.delete_branch(clone, "sol/fix")
    worktrees.delete_branch(clone, "sol/fix", force=True)


def test_is_merged_and_commits_beyond(clone: Path, tmp_path: Path):
    path = tmp_path / "wt"
    worktrees.add_worktree(clone, path, "sol/fix", "main")
    assert worktrees.commits_beyond(path, "sol/fix", "main") == 0
    assert worktrees.is_merged(clone, "sol/fix", "main")
    (path / "x.txt").write_text("x")
    tip = worktrees.commit_all(path, "x", **ME)
    assert tip is not None
    assert worktrees.commits_beyond(path, "sol/fix", "main") == 1
    assert not worktrees.is_merged(clone, "sol/fix", "main")
    git(clone, "update-ref", "refs/heads/main", tip)
    assert worktrees.is_merged(clone, "sol/fix", "main")
    assert worktrees.commits_beyond(clone, "sol/fix", "main") == 0
    worktrees.remove_worktree(clone, path)
    worktrees.delete_branch(clone, "sol/fix")  # merged: no force needed
    with pytest.raises(SolError, match="sol/fix is not in"):
        worktrees.is_merged(clone, "sol/fix", "main")


def test_git_failures_carry_gits_reason_in_one_sentence(tmp_path: Path):
    plain = make_repo(tmp_path / "plain")
    with pytest.raises(SolError) as caught:
        worktrees.commits_beyond(plain, "nope", "main")
    assert caught.value.message.startswith("cannot count commits of nope beyond main: ")
    assert "\n" not in caught.value.message


# ---- the one git wrapper (drivers/git.py) ----------------------------------------------


def test_a_git_failure_names_what_git_said_the_command_and_the_repository(clone: Path):
    with pytest.raises(SolError) as caught:
        gitrun.run(clone, "-c", "x.y=z", "rev-list", "--count", "nope..main",
                   what="cannot count")
    message = caught.value.message
    assert message.startswith("cannot count: ")
    assert f"(git rev-list in {clone})" in message and "\n" not in message
    done = gitrun.run(clone, "rev-parse", "--verify", "--quiet", "nope", check=False)
    assert (done.status, done.ok, done.out) == (1, False, "")
    assert done.error("cannot read nope", "fetch first").message.endswith(
        f"(git rev-parse in {clone}); fetch first")


def test_git_ignores_an_inherited_git_dir_and_never_looks_above_cwd(
        clone: Path, repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("GIT_DIR", str(repo / ".git"))  # as inside another repo's hook
    assert gitrun.run(clone, "rev-parse", "--is-bare-repository").out.strip() == "true"
    inside = repo / "sub"
    inside.mkdir()
    with pytest.raises(SolError, match="not a git repository"):
        gitrun.run(inside, "rev-parse", "HEAD")
    assert gitrun.run(inside, "rev-parse", "HEAD", discover=True).out.strip() == \
        git(repo, "rev-parse", "HEAD")


def test_input_and_binary_output_pass_through(clone: Path):
    sha = gitrun.run(clone, "hash-object", "-w", "--stdin", input=b"\xff\x00bytes\n").out
    done = gitrun.run(clone, "cat-file", "blob", sha.strip())
    assert done.data == b"\xff\x00bytes\n" and "\ufffd" in done.out


def test_a_hanging_git_is_killed_with_what_it_started(tmp_path: Path):
    plain = make_repo(tmp_path / "plain")
    hook = plain / ".git" / "hooks" / "pre-commit"
    hook.write_text("#!/bin/sh\nsleep 300 &\nwait\n")  # a child that holds the pipes
    hook.chmod(0o755)
    (plain / "f").write_text("x")
    gitrun.run(plain, "add", "f")
    started = time.monotonic()
    with pytest.raises(SolError, match="did not finish within 0.5s and was stopped"):
        gitrun.run(plain, "commit", "-q", "-m", "x", timeout=0.5, what="cannot commit")
    assert time.monotonic() - started < 10


def test_a_missing_cwd_or_git_is_one_sentence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    with pytest.raises(SolError, match=f"cannot look: {tmp_path}/gone does not exist"):
        gitrun.run(tmp_path / "gone", "status", what="cannot look")
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(SolError, match="git is not installed or not on PATH"):
        gitrun.run(tmp_path, "status")
    assert gitrun.version() is None


def test_refs_are_read_without_git_loose_packed_and_from_a_worktree(clone: Path,
                                                                   tmp_path: Path):
    main = git(clone, "rev-parse", "refs/heads/main")
    assert gitrun.read_ref(clone, "refs/heads/main") == main
    git(clone, "branch", "sol/packed", "main")
    git(clone, "pack-refs", "--all")
    assert not (clone / "refs" / "heads" / "sol" / "packed").exists()
    assert gitrun.read_ref(clone, "refs/heads/sol/packed") == main
    path = tmp_path / "wt"
    worktrees.add_worktree(clone, path, "sol/fix", "main")
    assert gitrun.git_dir(path) == clone / "worktrees" / "wt"
    assert gitrun.read_ref(path, "refs/heads/main") == main  # through commondir
    for ref in ("refs/heads/nope", "HEAD", "refs/heads/../../HEAD", "refs/tags/v1"):
        assert gitrun.read_ref(clone, ref) is None, ref  # the caller asks git
    assert gitrun.git_dir(clone) == clone and gitrun.git_dir(tmp_path) is None
