"""Specs from git: `-f git+REPO@REF#DIR` reads the manifests as committed at REF, never
the working tree, so what is applied is exactly what a planner committed.

A local REPO (a path) is read in place; a URL is fetched into a bare cache under
`$SOL_HOME/sources/<hash>` (refreshed on every resolve). The files under DIR are listed
with `git ls-tree` and read in one `git cat-file --batch`, then validated by
`manifests.load_texts` under display names like `specs/writs.yaml@abc1234`, so every
message reads `specs/writs.yaml@abc1234:12:3: ...`.

`GitSync` is daemon mode for such a source: poll the ref, apply each new commit, refuse
(and report with the hash) a commit that is invalid or older than the one applied, and
never prune: the last good revision keeps running.
"""

from __future__ import annotations

import hashlib
import os
import re
import time
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath

from loguru import logger

from reconciler.core.errors import SolError
from reconciler.core.home import Home
from reconciler.core.locks import flock
from reconciler.core.plan import Action
from reconciler.core.report import ReportOnce
from reconciler.drivers import git
from reconciler.drivers.sphere import Sphere
from reconciler.specs import record as recording
from reconciler.specs.manifests import LoadResult, load_texts

PREFIX = "git+"
SHORT = 7
SYNTAX = "write git+REPO@REF#DIR, like git+.@main#specs"
POLL = 15.0  # seconds between two looks at the ref (env SOL_SOURCE_POLL)
URL_RE = re.compile(r"^[a-z][a-z0-9+.-]*://", re.IGNORECASE)
SCP_RE = re.compile(r"^[^/@:]+@[^/:]+:")  # user@host:path
COLLAPSED_RE = re.compile(r"^([a-z][a-z0-9+.-]*):/(?!/)", re.IGNORECASE)
BAD_REF = re.compile(r"[\s~^:?*\[\\]|\.\.|@\{|^-|^/|/$|\.lock$|\.$")
INVALID_META = "specs_invalid"


@dataclass(frozen=True)
class GitSource:
    """`git+REPO@REF#DIR`: a repository (path or URL), a ref, a directory ("" = root)."""

    repo: str
    ref: str
    dir: str = ""

    def __str__(self) -> str:
        return f"{PREFIX}{self.repo}@{self.ref}" + (f"#{self.dir}" if self.dir else "")

    @property
    def remote(self) -> bool:
        return bool(URL_RE.match(self.repo) or SCP_RE.match(self.repo))

    def absolute(self) -> GitSource:
        """A local repository by absolute path, so the source means the same from any cwd
        (the daemon runs in SOL_HOME)."""
        if self.remote:
            return self
        return replace(self, repo=os.path.abspath(os.path.expanduser(self.repo)))


def is_git(text: str | Path) -> bool:
    """Whether a -f value names a git source rather than a file or directory."""
    return str(text).startswith(PREFIX)


def parse(text: str) -> GitSource:
    """`git+REPO@REF#DIR` to a GitSource; SolError naming what is wrong otherwise."""
    def bad(why: str) -> SolError:
        return SolError(f"{text!r} is not a git source: {why}; {SYNTAX}")

    if not is_git(text):
        raise bad("it does not start with git+")
    body, directory = text[len(PREFIX):], ""
    if "#" in body:
        body, directory = body.rsplit("#", 1)
    if "@" not in body:
        raise bad("it names no ref (@REF)")
    repo, ref = body.rsplit("@", 1)
    if not repo:
        raise bad("it names no repository")
    if not ref or BAD_REF.search(ref) or any(ord(c) < 32 for c in ref):
        raise bad(f"{ref!r} is not a valid git ref")
    parts = PurePosixPath(directory.strip("/")).parts if directory.strip("/") else ()
    if ".." in parts or any(ord(c) < 32 for c in directory):
        raise bad(f"directory {directory!r} must stay inside the repository")
    return GitSource(repo, ref, "/".join(p for p in parts if p != "."))


def find(value: str | Path) -> GitSource | None:
    """The git source in a -f value, also after `Path(value).absolute()` mangled it (the
    cwd prepended, `//` collapsed): how the prefect hands its paths on."""
    text = str(value)
    if not is_git(text):
        cwd = os.getcwd().rstrip("/") + "/"
        if not text.startswith(cwd + PREFIX):
            return None
        text = text[len(cwd):]
    source = parse(text)
    match = COLLAPSED_RE.match(source.repo)
    if match:
        scheme, rest = match.group(1), source.repo[match.end():]
        source = replace(source, repo=f"{scheme}://{'/' if scheme == 'file' else ''}{rest}")
    return source


# ---- git ----------------------------------------------------------------------------


def _git(where: Path, source: GitSource, *args: str, what: str,
         input: bytes | None = None) -> git.Done:
    """git in where (ext:: stays off, the git default); a local repository is the user's
    own path, so git may find it above where. Never raises for a non-zero exit."""
    return git.run(where, "--literal-pathspecs", *args, what=what, input=input, check=False,
                   discover=not source.remote)


def cache_dir(source: GitSource, home: Home) -> Path:
    """One bare cache per URL, so two sources from the same repository share it."""
    return home.root / "sources" / hashlib.sha1(source.repo.encode()).hexdigest()[:16]


def git_dir(source: GitSource, home: Home, *, fetch: bool = True) -> Path:
    """Where to read: the local repository itself, or the fetched cache of a URL."""
    if not source.remote:
        path = Path(source.repo).expanduser()
        if not path.is_dir():
            raise SolError(f"git source {source}: {path} does not exist; pass the path of a "
                           "git repository")
        return path
    cache = cache_dir(source, home)
    with flock(home.run / f"source-{cache.name}.lock"):
        if not (cache / "HEAD").exists():
            cache.mkdir(parents=True, exist_ok=True)
            what = f"git source {source}: cannot create its cache {cache}"
            done = _git(cache, source, "init", "--quiet", "--bare", what=what)
            if not done.ok:
                raise done.error(what)
            fetch = True
        if fetch:
            what = f"git source {source}: cannot fetch {source.repo}"
            done = _git(cache, source, "fetch", "--quiet", "--prune", "--force",
                        "--update-head-ok", "--no-tags", "--end-of-options", source.repo,
                        "+refs/heads/*:refs/heads/*", "+refs/tags/*:refs/tags/*", what=what)
            if not done.ok:
                raise done.error(what)
    return cache


def resolve(source: GitSource, home: Home, *, fetch: bool = True) -> str:
    """The commit REF names now (fetching a URL first)."""
    where = git_dir(source, home, fetch=fetch)
    what = f"git source {source}: cannot read ref {source.ref}"
    done = _git(where, source, "rev-parse", "--verify", "--quiet", "--end-of-options",
                f"{source.ref}^{{commit}}", what=what)
    if done.ok:
        return done.out.strip()
    what = f"git source {source}: {source.repo} is not a git repository"
    check = _git(where, source, "rev-parse", "--git-dir", what=what)
    if not check.ok:
        raise check.error(what, "pass the path or URL of a git repository")
    raise SolError(f"git source {source}: ref {source.ref} not found in {source.repo}; "
                   "commit or push it, or name another ref")


def is_ancestor(source: GitSource, home: Home, older: str, newer: str) -> bool | None:
    """Whether `older` is an ancestor of `newer`; None when git cannot tell (one of them
    is unknown, say after a history rewrite and a gc)."""
    where = git_dir(source, home, fetch=False)
    done = _git(where, source, "merge-base", "--is-ancestor", older, newer,
                what=f"git source {source}: cannot compare {older[:SHORT]} with {newer[:SHORT]}")
    return {0: True, 1: False}.get(done.status)


def _wanted(path: str, directory: str) -> bool:
    """As for a directory on disk: *.yaml/*.yml, no hidden files, no hidden folders."""
    rel = PurePosixPath(path).relative_to(directory) if directory else PurePosixPath(path)
    if len(rel.parts) == 0:  # DIR named a file itself: read whatever its name
        return True
    return (rel.name.endswith((".yaml", ".yml"))
            and not any(part.startswith((".", "#")) for part in rel.parts))


def read(source: GitSource, commit: str, home: Home) -> LoadResult:
    """Every manifest under DIR as committed in `commit`, validated as one set."""
    where = git_dir(source, home, fetch=False)
    what = f"git source {source}: cannot list {commit[:SHORT]}"
    listing = _git(where, source, "ls-tree", "-r", "-z", "--full-tree", commit,
                   *(["--", source.dir] if source.dir else []), what=what)
    if not listing.ok:
        raise listing.error(what)
    blobs: list[tuple[str, str]] = []
    for item in listing.data.split(b"\0"):
        head, _, raw = item.partition(b"\t")
        fields = head.split()
        path = raw.decode("utf-8", "surrogateescape")
        if len(fields) == 3 and fields[1] == b"blob" and fields[0] != b"120000" \
                and _wanted(path, source.dir):
            blobs.append((path, fields[2].decode()))
    texts, problems = [], []
    for (path, _), data in zip(blobs, _cat(where, source, [sha for _, sha in blobs]),
                               strict=True):
        shown = f"{path}@{commit[:SHORT]}"
        try:
            texts.append((shown, data.decode("utf-8-sig")))
        except UnicodeDecodeError as exc:
            line = data.count(b"\n", 0, exc.start) + 1
            problems.append(f"{shown}:{line}:1: not UTF-8 text (byte 0x{data[exc.start]:02x}):"
                            " save the file as UTF-8")
    result = load_texts(texts)
    result.problems = sorted(result.problems + problems)
    return result


def _cat(where: Path, source: GitSource, shas: list[str]) -> list[bytes]:
    """Blob contents in one `git cat-file --batch` call."""
    if not shas:
        return []
    what = f"git source {source}: cannot read {where}"
    done = _git(where, source, "cat-file", "--batch", what=what,
                input="".join(f"{sha}\n" for sha in shas).encode())
    if not done.ok:
        raise done.error(what)
    out, pos, blobs = done.data, 0, []
    for _ in shas:
        end = out.index(b"\n", pos)
        size = int(out[pos:end].split()[2])
        blobs.append(out[end + 1:end + 1 + size])
        pos = end + 1 + size + 1
    return blobs


def load(source: GitSource, home: Home, *, commit: str | None = None
         ) -> tuple[str, LoadResult]:
    """(commit, manifests) at REF now, or at `commit` (a saved plan's revision)."""
    commit = commit or resolve(source, home)
    return commit, read(source, commit, home)


def poll_interval() -> float:
    """Seconds between two polls of a ref: 15, or SOL_SOURCE_POLL (tests shorten it)."""
    raw = os.environ.get("SOL_SOURCE_POLL", "")
    try:
        return max(0.2, float(raw.removesuffix("s"))) if raw else POLL
    except ValueError:
        logger.warning("SOL_SOURCE_POLL={raw} is not a number of seconds; using {d}s",
                       raw=raw, d=POLL)
        return POLL


# ---- daemon mode --------------------------------------------------------------------


class GitSync:
    """Poll REF; apply each new commit (never pruning); refuse, and report once with its
    hash, a commit that is invalid or older than the one applied; a source that is gone
    is reported too. The last good revision keeps running in every refusal.

    A commit on a rewritten history (neither older nor newer than the applied one, say
    an amended commit force-pushed) is new work from the planner and is applied.
    """

    def __init__(self, sphere: Sphere, source: GitSource, *, interval: float | None = None,
                 resync: float | None = None) -> None:
        self.sphere = sphere
        self.source = source
        self.interval = poll_interval() if interval is None else interval
        self.resync = sphere.config.resync if resync is None else resync
        self._next_poll = 0.0
        self._next_resync = 0.0
        self._bad: str | None = None  # a commit already refused as invalid
        self._reported: ReportOnce[tuple[str, ...]] = ReportOnce()

    def due(self, now: float | None = None) -> float:
        return max(0.0, self._next_poll - (time.monotonic() if now is None else now))

    def poll(self, trigger: str = "poll") -> tuple[list[Action], list[str]]:
        """One look at the ref: (actions recorded, problems refused)."""
        now = time.monotonic()
        self._next_poll = now + self.interval
        home, store = self.sphere.home, self.sphere.store
        try:
            commit = resolve(self.source, home)
            last = recording.applied_revision(store, str(self.source))
            fresh = trigger == "start" or now >= self._next_resync
            if commit == last and not fresh:
                self._valid_again(commit)
                return [], []
            if commit == self._bad and not fresh:
                return [], list(self._reported.last or ())
            if last and commit != last and is_ancestor(self.source, home, commit, last):
                return [], self._refuse(trigger, commit, [
                    f"ref {self.source.ref} moved backwards from {last[:SHORT]} to "
                    f"{commit[:SHORT]} (force-pushed?): not applied"])
            result = read(self.source, commit, home)
        except SolError as exc:
            return [], self._refuse(trigger, None, [exc.message])
        problems = result.problems or ([] if not result.empty else [
            f"{self.source}: no manifests at {commit[:SHORT]}: nothing applied and nothing "
            "pruned"])
        if problems:
            self._bad = commit
            return [], self._refuse(trigger, commit, problems)
        actions = recording.record(self.sphere, result.manifests, revision=commit,
                                source=str(self.source))
        self._bad, self._next_resync = None, now + self.resync
        self._valid_again(commit)
        logger.info("specs loaded ({trigger}): revision {rev}, {n} document(s), {c} change(s)",
                    trigger=trigger, rev=commit[:SHORT], n=len(result.manifests),
                    c=len(actions), event="specs-loaded", revision=commit)
        return actions, []

    def _refuse(self, trigger: str, commit: str | None, problems: list[str]) -> list[str]:
        """Report once per distinct refusal (a poll of the same bad commit is silent)."""
        if not self._reported.news(tuple(problems)):
            return problems
        logger.warning("specs not applied ({trigger}): {first}", trigger=trigger,
                       first=problems[0], event="specs-invalid", problems=problems,
                       revision=commit)
        store = self.sphere.store
        last = recording.applied_revision(store, str(self.source))
        first = (f"commit {commit[:SHORT]}: " if commit else "") + problems[0]
        more = len(problems) - 1
        keeps = (f"; revision {last[:SHORT]} keeps running" if last
                 else "; nothing was applied")
        with store.transaction():  # a reader sees both or neither
            store.set_meta(INVALID_META, first)
            store.event("specs-invalid", kind="Sphere",
                        message=first + (f" (and {more} more)" if more else "") + keeps,
                        problems=problems[:100], revision=commit, source=str(self.source))
        return problems

    def _valid_again(self, commit: str) -> None:
        self._reported.clear()
        store = self.sphere.store
        if store.get_meta(INVALID_META) is not None:
            with store.transaction():
                store.set_meta(INVALID_META, None)
                store.event("specs-valid", kind="Sphere", revision=commit,
                            message=f"specs valid again: revision {commit[:SHORT]} of "
                                    f"{self.source} applied")
