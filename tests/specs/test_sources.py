"""Specs from git (`-f git+REPO@REF#DIR`) with real repositories: read at a ref and never
from the working tree, messages that name `FILE@HASH:LINE`, the applied revision on every
object and in `sol status`, `sol diff` of the next commit, a URL through the cache; and
the daemon polling the ref: a commit of three writs runs, an invalid commit, a ref
force-pushed backwards and a deleted source are refused while the last good revision
keeps running."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import git, make_repo, poll
from helpers import meta, tmux_sessions, world_yaml, writ_status, writ_yaml
from test_prefect import Run, cli_argv, daemon_commands, events

from reconciler.core.errors import SolError
from reconciler.core.home import Home
from reconciler.core.store import Store
from reconciler.specs.sources import GitSource, find, parse, read, resolve

Sol = Callable[..., subprocess.CompletedProcess[str]]
SUSPENDED = "suspend: true\n"  # nothing is cast: writs stay Pending, no tmux session


def commit(repo: Path, files: dict[str, str | None], message: str = "specs") -> str:
    """Write (or, for None, delete) files, commit them all; the new commit's sha."""
    for name, text in files.items():
        path = repo / name
        if text is None:
            path.unlink()
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", message)
    return git(repo, "rev-parse", "HEAD")


def specs_repo(tmp_path: Path, world_source: Path, extra: str = SUSPENDED) -> Path:
    return make_repo(tmp_path / "specsrepo",
                     {"specs/world.yaml": world_yaml("shop", world_source, extra=extra),
                      "README.md": "specs\n"})


def src(repo: Path) -> str:
    return f"git+{repo}@main#specs"



def records(home: Home) -> list:
    store = Store(home.db)
    try:
        return store.list()
    finally:
        store.close()


# ---- the source syntax --------------------------------------------------------------


@pytest.mark.parametrize(("text", "expected"), [
    ("git+.@main#specs", GitSource(".", "main", "specs")),
    ("git+/srv/specs.git@v1.2#deploy/specs/", GitSource("/srv/specs.git", "v1.2",
                                                        "deploy/specs")),
    ("git+https://example.org/org/specs.git@main#specs",
     GitSource("https://example.org/org/specs.git", "main", "specs")),
    ("git+git@example.org:org/specs.git@release/2#.", GitSource(
        "git@example.org:org/specs.git", "release/2", "")),
    ("git+../repo@0123abc", GitSource("../repo", "0123abc", "")),
])
def test_a_git_source_parses(text: str, expected: GitSource) -> None:
    assert parse(text) == expected
    assert parse(str(expected)) == expected


@pytest.mark.parametrize(("text", "why"), [
    ("git+.#specs", "names no ref"),
    ("git+@main#specs", "names no repository"),
    ("git+.@#specs", "not a valid git ref"),
    ("git+.@-x#specs", "not a valid git ref"),
    ("git+.@a..b#specs", "not a valid git ref"),
    ("git+.@main#../outside", "must stay inside the repository"),
    ("./specs", "does not start with git+"),
])
def test_a_bad_git_source_is_one_sentence_saying_what_to_write(text: str, why: str) -> None:
    with pytest.raises(SolError) as raised:
        parse(text)
    message = raised.value.message
    assert why in message and "git+REPO@REF#DIR" in message and "\n" not in message


def test_a_source_mangled_into_a_path_is_recovered() -> None:
    """How the prefect hands its -f values on: Path(value).absolute()."""
    for text in ("git+file:///srv/specs.git@main#specs", "git+https://h.org/s.git@main#s",
                 "git+/srv/specs@main#specs"):
        assert find(Path(text).absolute()) == parse(text)
    assert find(Path("specs").absolute()) is None


# ---- reading at a ref ---------------------------------------------------------------


def test_reading_at_a_ref_ignores_the_working_tree_and_other_refs(
        tmp_path: Path, repo: Path, sol_home: Home, sol: Sol) -> None:
    specs = specs_repo(tmp_path, repo)
    first = git(specs, "rev-parse", "HEAD")
    git(specs, "tag", "v1")
    git(specs, "checkout", "-q", "-b", "other")
    commit(specs, {"specs/other.yaml": writ_yaml("elsewhere", "shop")})
    git(specs, "checkout", "-q", "main")
    second = commit(specs, {"specs/writs.yaml": writ_yaml("committed", "shop"),
                            "notes/ignored.yaml": writ_yaml("outside-dir", "shop")})
    # uncommitted: an edit, an untracked file, a staged file; none of them may count
    (specs / "specs/writs.yaml").write_text(writ_yaml("edited", "shop"))
    (specs / "specs/untracked.yaml").write_text(writ_yaml("untracked", "shop"))
    (specs / "specs/staged.yaml").write_text(writ_yaml("staged", "shop"))
    git(specs, "add", "specs/staged.yaml")
    (specs / "specs/.hidden.yaml").write_text("not: [valid")

    source = parse(src(specs))
    assert resolve(source, sol_home) == second
    result = read(source, second, sol_home)
    assert result.ok
    assert sorted(m.name for m in result.manifests) == ["committed", "shop"]
    assert {str(f) for f in result.files} == {f"specs/world.yaml@{second[:7]}",
                                              f"specs/writs.yaml@{second[:7]}"}
    at_tag = read(parse(f"git+{specs}@v1#specs"), resolve(parse(f"git+{specs}@v1#specs"),
                                                          sol_home), sol_home)
    assert [m.name for m in at_tag.manifests] == ["shop"]
    assert resolve(parse(f"git+{specs}@v1#specs"), sol_home) == first

    done = sol("validate", src(specs), cwd=specs)
    assert done.returncode == 0, done.stderr
    assert "1 world, 1 writ in 2 file(s)" in done.stdout and second[:7] in done.stdout
    relative = sol("validate", "git+.@main#specs", cwd=specs / "specs")
    assert relative.returncode == 0, relative.stderr  # "." from inside the repository


def test_problems_name_the_file_at_its_commit_and_the_line(
        tmp_path: Path, repo: Path, sol_home: Home, sol: Sol) -> None:
    specs = specs_repo(tmp_path, repo)
    bad_doc = writ_yaml("lost", "nowhere")
    bad = commit(specs, {"specs/bad.yaml": "# a writ for a world that does not exist\n"
                         + bad_doc})
    done = sol("validate", src(specs))
    assert done.returncode == 1 and "Traceback" not in done.stderr
    first = done.stderr.splitlines()[0]
    match = re.match(rf"specs/bad\.yaml@{bad[:7]}:(\d+):(\d+): .*unknown world 'nowhere'", first)
    assert match, first
    assert int(match[1]) == 2  # the writ's line, after the comment
    applied = sol("apply", "-f", src(specs))
    assert applied.returncode == 1 and applied.stderr.splitlines()[0] == first
    assert f"at commit {bad[:7]}; nothing was applied" in applied.stderr
    assert records(sol_home) == []


def test_apply_from_git_records_the_revision_on_every_object_and_in_status(
        tmp_path: Path, repo: Path, sol_home: Home, sol: Sol) -> None:
    specs = specs_repo(tmp_path, repo)
    sha = commit(specs, {"specs/writs.yaml": writ_yaml("a", "shop") + "---\n"
                         + writ_yaml("b", "shop")})
    done = sol("apply", "-f", "git+.@main#specs", cwd=specs)
    assert done.returncode == 0, done.stderr
    assert f"at revision {sha[:7]}" in done.stdout
    objects = records(sol_home)
    assert sorted(r.name for r in objects) == ["a", "b", "shop"]
    assert all(r.status.get("sourceRevision") == sha for r in objects)
    assert all(f"@{sha[:7]}:" in r.origin for r in objects)
    assert f"specs at revision {sha}" in sol("status", check=True).stdout
    listed = json.loads(sol("get", "writs", "-o", "json", check=True).stdout)
    assert {w["status"]["sourceRevision"] for w in listed} == {sha}
    applied = [e for e in events(sol_home, "applied") if e.kind == "Sphere"]
    assert len(applied) == 1 and applied[0].data["revision"] == sha
    assert applied[0].data["summary"] == "Plan: 3 to create, 0 to change, 0 to delete."

    again = sol("apply", "-f", src(specs))  # idempotent: no second event
    assert again.returncode == 0 and "No changes" in again.stdout
    assert len([e for e in events(sol_home, "applied") if e.kind == "Sphere"]) == 1

    (tmp_path / "plain").mkdir()
    for name in ("world.yaml", "writs.yaml"):
        shutil.copy(specs / "specs" / name, tmp_path / "plain" / name)
    assert sol("apply", "-f", str(tmp_path / "plain")).returncode == 0
    assert meta(sol_home, "source_revision") is None  # a directory has no revision
    assert all("sourceRevision" not in r.status for r in records(sol_home))


def test_diff_against_git_shows_what_the_next_commit_changes(
        tmp_path: Path, repo: Path, sol_home: Home, sol: Sol) -> None:
    specs = specs_repo(tmp_path, repo)
    first = commit(specs, {"specs/writs.yaml": writ_yaml("a", "shop")})
    assert sol("apply", "-f", src(specs)).returncode == 0
    clean = sol("diff", "-f", src(specs))
    assert clean.returncode == 0 and f"Revision {first[:7]}" in clean.stdout
    assert "(already applied)" in clean.stdout

    (specs / "specs/writs.yaml").write_text(writ_yaml("a", "shop", title="Edited"))
    assert sol("diff", "-f", src(specs)).returncode == 0  # not committed: not the source
    nxt = commit(specs, {"specs/more.yaml": writ_yaml("b", "shop")})
    text = sol("diff", "-f", src(specs))
    assert text.returncode == 2, text.stderr
    assert f"Revision {nxt[:7]} of {src(specs)} (applied now: {first[:7]})" in text.stdout
    assert "+ writ/shop/b" in text.stdout and "~ writ/shop/a" in text.stdout
    data = json.loads(sol("diff", "-f", src(specs), "-o", "json").stdout)
    assert data["revision"] == nxt and data["appliedRevision"] == first
    specs_part = [a for a in data["actions"] if not a["reconciler"]]
    assert {a["target"] for a in specs_part} == {"writ/shop/a", "writ/shop/b"}
    assert {a["kind"] for a in data["actions"] if a["reconciler"]} <= {"wait", "cast"}
    assert data["summary"].startswith("Plan: 1 to create, 1 to change, 0 to delete")
    assert meta(sol_home, "source_revision") == first  # diff records nothing


def test_a_url_source_is_fetched_into_the_cache_on_every_read(
        tmp_path: Path, repo: Path, sol_home: Home, sol: Sol) -> None:
    specs = specs_repo(tmp_path, repo)
    url = f"git+file://{specs}@main#specs"
    done = sol("apply", "-f", url)
    assert done.returncode == 0, done.stderr
    caches = list((sol_home.root / "sources").iterdir())
    assert len(caches) == 1 and (caches[0] / "HEAD").exists()
    nxt = commit(specs, {"specs/writs.yaml": writ_yaml("late", "shop")})
    data = json.loads(sol("diff", "-f", url, "-o", "json").stdout)
    assert data["revision"] == nxt and [a["target"] for a in data["actions"]
                                        if not a["reconciler"]] == ["writ/shop/late"]


def test_a_missing_repository_or_ref_or_a_mixed_source_is_one_sentence(
        tmp_path: Path, repo: Path, sol: Sol) -> None:
    specs = specs_repo(tmp_path, repo)
    cases = {
        f"git+{tmp_path}/nope@main#specs": "does not exist",
        f"git+{specs}@nope#specs": "ref nope not found",
        f"git+{tmp_path}@main#specs": "is not a git repository",
        "git+.#specs": "names no ref",
    }
    for source, why in cases.items():
        done = sol("apply", "-f", source, cwd=tmp_path)
        assert done.returncode == 1 and why in done.stderr, (source, done.stderr)
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    mixed = sol("diff", "-f", src(specs), "-f", str(specs / "specs"))
    assert mixed.returncode == 1 and "must be the only -f" in mixed.stderr


# ---- the daemon ---------------------------------------------------------------------


@pytest.fixture
def daemon(sol_home: Home, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Run]:
    monkeypatch.setenv("SOL_SOURCE_POLL", "1")
    with daemon_commands(sol_home, tmp_path) as run:
        yield run


def live(home: Home) -> set[str]:
    return {name for name, alive in tmux_sessions(home).items() if alive}


def phase(home: Home, name: str) -> str | None:
    record = writ_status(home, "shop", name)
    return record.phase if record else None


def test_the_daemon_applies_a_commit_of_three_writs_within_its_poll_and_they_run(
        sol_home: Home, repo: Path, tmp_path: Path, daemon: Run) -> None:
    specs = specs_repo(tmp_path, repo, extra="")
    up = subprocess.run(cli_argv("up", "-f", "git+.@main#specs"), cwd=specs,
                        capture_output=True, text=True, timeout=60)  # "." is the cwd's repo
    assert up.returncode == 0, up.stderr
    assert f"Polling {src(specs)} every 1s" in up.stdout
    poll(lambda: [r for r in records(sol_home) if r.kind == "World" and r.phase == "Ready"],
         what="world ready")
    again = daemon("up", "-f", src(specs))
    assert again.returncode == 0 and "already running" in again.stdout, again.stderr
    other = daemon("up", "-f", f"git+{specs}@other#specs")
    assert other.returncode == 1 and "sol down" in other.stderr

    sha = commit(specs, {"specs/writs.yaml": "---\n".join(
        writ_yaml(name, "shop", f"echo {name} > {name}.txt") for name in ("w1", "w2", "w3"))})
    committed = time.monotonic()
    poll(lambda: all(writ_status(sol_home, "shop", n) for n in ("w1", "w2", "w3")),
         timeout=10, what="the three writs recorded")
    took = time.monotonic() - committed
    print(f"\ncommit -> recorded {took:.2f}s (poll 1s)")
    assert took < 5
    assert all(writ_status(sol_home, "shop", n).status["sourceRevision"] == sha
               for n in ("w1", "w2", "w3"))
    done = ("Resolved", "Merging", "Merged")
    poll(lambda: all(phase(sol_home, n) in done for n in ("w1", "w2", "w3")), timeout=60,
         what="the three writs ran")
    applied = [e for e in events(sol_home, "applied") if e.kind == "Sphere"]
    assert applied[-1].data["revision"] == sha
    assert applied[-1].data["summary"].startswith("Plan: 3 to create")
    status = subprocess.run([sys.executable, "-m", "reconciler", "status"],
                            capture_output=True, text=True, timeout=60)
    assert f"specs at revision {sha}" in status.stdout


def test_an_invalid_commit_is_refused_with_its_hash_and_lines_and_nothing_changes(
        sol_home: Home, repo: Path, tmp_path: Path, daemon: Run) -> None:
    specs = specs_repo(tmp_path, repo, extra="")
    good = commit(specs, {"specs/writs.yaml": writ_yaml("steady", "shop", "sleep 600")})
    assert daemon("up", "-f", src(specs)).returncode == 0
    poll(lambda: phase(sol_home, "steady") == "Working" and live(sol_home),
         what="the steady writ's session")
    sessions, before = live(sol_home), writ_status(sol_home, "shop", "steady")
    cycle = (writ_yaml("c1", "shop", extra="dependsOn: [c2]") + "---\n"
             + writ_yaml("c2", "shop", extra="dependsOn: [c1]"))
    bad = commit(specs, {"specs/bad.yaml": cycle + "---\n" + writ_yaml("stray", "nowhere"),
                         "specs/writs.yaml": writ_yaml("steady", "shop", "sleep 600",
                                                       title="Changed in a bad commit")})
    reported = poll(lambda: [e for e in events(sol_home, "specs-invalid")
                             if e.data.get("revision") == bad], timeout=10, what="refused")
    notice = meta(sol_home, "specs_invalid")
    assert notice and notice.startswith(f"commit {bad[:7]}: specs/bad.yaml@{bad[:7]}:")
    problems = reported[0].data["problems"]
    assert any("cycle" in p for p in problems) and any("unknown world" in p for p in problems)
    assert all(re.match(rf"specs/bad\.yaml@{bad[:7]}:\d+:\d+: ", p) for p in problems)
    assert f"revision {good[:7]} keeps running" in reported[0].message
    status = subprocess.run([sys.executable, "-m", "reconciler", "status"],
                            capture_output=True, text=True, timeout=60)
    assert f"specs invalid: {notice}" in status.stdout and good in status.stdout
    time.sleep(2.5)  # two more polls of the same bad commit: silent, still nothing applied
    assert len(events(sol_home, "specs-invalid")) == 1
    after = writ_status(sol_home, "shop", "steady")
    assert (after.generation, after.phase, after.status["sourceRevision"]) == (
        before.generation, "Working", good)
    assert {r.name for r in records(sol_home)} == {"shop", "steady"}
    assert meta(sol_home, "source_revision") == good and live(sol_home) == sessions

    fixed = commit(specs, {"specs/bad.yaml": writ_yaml("c1", "shop", "sleep 600")})
    poll(lambda: meta(sol_home, "specs_invalid") is None, timeout=10, what="valid again")
    assert meta(sol_home, "source_revision") == fixed and writ_status(sol_home, "shop", "c1")


def test_a_ref_forced_backwards_or_a_deleted_source_is_reported_and_nothing_is_pruned(
        sol_home: Home, repo: Path, tmp_path: Path, daemon: Run) -> None:
    specs = specs_repo(tmp_path, repo, extra="")
    base = commit(specs, {"specs/writs.yaml": writ_yaml("keeper", "shop", "sleep 600")})
    assert daemon("up", "-f", src(specs)).returncode == 0
    poll(lambda: phase(sol_home, "keeper") == "Working", what="keeper working")
    ahead = commit(specs, {"specs/more.yaml": writ_yaml("second", "shop", "sleep 600")})
    poll(lambda: phase(sol_home, "second") == "Working", timeout=15, what="second working")
    poll(lambda: len(live(sol_home)) == 2, what="two sessions")
    sessions = live(sol_home)

    git(specs, "reset", "-q", "--hard", base)  # the ref moves back: a force-push
    poll(lambda: "moved backwards" in (meta(sol_home, "specs_invalid") or ""), timeout=10,
         what="backwards reported")
    assert meta(sol_home, "specs_invalid") == (
        f"commit {base[:7]}: ref main moved backwards from {ahead[:7]} to {base[:7]} "
        "(force-pushed?): not applied")
    shutil.rmtree(specs)  # the source disappears
    poll(lambda: "does not exist" in (meta(sol_home, "specs_invalid") or ""), timeout=10,
         what="a missing source reported")
    for name in ("keeper", "second"):
        record = writ_status(sol_home, "shop", name)
        assert record.phase == "Working" and not record.orphaned
        assert record.status["sourceRevision"] == ahead
    assert meta(sol_home, "source_revision") == ahead
    for kind in ("cancelled", "orphaned", "pruned"):
        assert events(sol_home, kind) == [], kind
    assert live(sol_home) == sessions
