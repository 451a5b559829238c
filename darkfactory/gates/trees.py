"""The trees the tests gate runs: the change's code with the base's tests, and the base's code with the new tests.

A change cannot weaken a test it cannot edit. Unless its task type allows test edits, the suite runs in the
*judged tree*: the change's tree, but every test file, helper and `conftest.py` that exists on the base is
the base's version, the pytest configuration files are the base's, and `conftest.py` files the change adds
are left out (a conftest hook can deselect any test), as are a new `sitecustomize.py` or package metadata
(which could set PYTEST_ADDOPTS or load a plugin before any test runs). Test files the change adds run as
they are; a test file it edits runs as the base has it, and the change's version runs beside it as a copy,
so new tests written into an existing file count too. An early `return` in a test, an edited expected constant, a
deselecting conftest hook or `addopts = -k ...` therefore change nothing about what the base's tests check.

The *witness tree* is the base's tree plus the test files that only the judged tree has: a new test that
fails there and passes in the judged tree shows that the change, not the test, makes the difference.

Both are commits built with git plumbing on a private index (deterministic: the same inputs give the same
sha) and checked out as worktrees that are only caches.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from darkfactory.policy import is_test_path
from darkfactory.workspace import GitRun, ensure_worktree

PYTEST_CONFIG_FILES = frozenset({"pytest.toml", ".pytest.toml", "pytest.ini", ".pytest.ini", "pyproject.toml",
                                 "tox.ini", "setup.cfg"})  # fmt: skip
"""Where pytest reads its configuration (pytest 9's discovery order); the base's versions are used."""
COPY_MARK = "__change"
"""Inserted into the name of a copy of an edited test file: `test_x.py` -> `test_x__change.py`."""
_NULL_SHA = "0" * 40


@dataclass(frozen=True)
class _Entry:
    mode: str
    sha: str


def is_pytest_config(path: str) -> bool:
    return os.path.basename(path) in PYTEST_CONFIG_FILES


def is_conftest(path: str) -> bool:
    return os.path.basename(path) == "conftest.py"


def runs_at_startup(path: str) -> bool:
    """Files an interpreter or pytest picks up on its own from a directory on sys.path: `sitecustomize.py`,
    `usercustomize.py`, and installed-package metadata (a `pytest11` entry point there loads a plugin)."""
    parts = path.split("/")
    return parts[-1] in ("sitecustomize.py", "usercustomize.py") or any(
        part.endswith((".dist-info", ".egg-info")) for part in parts[:-1]
    )


def _guarded(path: str) -> bool:
    """A file whose base version the judged tree uses: tests, their helpers and data, pytest configuration."""
    return is_test_path(path) or is_pytest_config(path)


def copy_name(path: str) -> str | None:
    """The name of the change's copy of an edited test module, or None when pytest would not collect one."""
    directory, name = os.path.split(path)
    if name.startswith("test_") and name.endswith(".py"):
        copy = f"{name[:-3]}{COPY_MARK}.py"
    elif name.endswith("_test.py"):
        copy = f"{name[: -len('_test.py')]}{COPY_MARK}_test.py"
    else:
        return None
    return os.path.join(directory, copy) if directory else copy


@dataclass(frozen=True)
class JudgedTree:
    """The tree the suite runs in, and how it differs from the change."""

    sha: str
    path: Path
    copies: dict[str, str] = field(default_factory=dict)
    """Copy -> the existing test file whose changed version it holds."""
    new_tests: list[str] = field(default_factory=list)
    """Test-path files the base does not have: the change's new ones and the copies."""
    restored: list[str] = field(default_factory=list)
    """Existing tests and configuration the change edited or deleted; the base's versions run."""
    dropped: list[str] = field(default_factory=list)
    """conftest.py and pytest configuration files the change added; not used."""

    def shown(self, nodeid: str) -> str:
        """A node id as the agent knows it: a copy's tests under the file they were written in."""
        path, _, rest = nodeid.partition("::")
        original = self.copies.get(path)
        if original is None:
            return nodeid
        return f"{original}::{rest} (your version of the file)" if rest else f"{original} (your version)"

    def original_path(self, nodeid: str) -> str:
        path, sep, rest = nodeid.partition("::")
        return self.copies.get(path, path) + sep + rest


def judged_tree(
    repo_path: str, base_sha: str, sha: str, where: Path, *, worktree: Path, test_edits_allowed: bool = False
) -> JudgedTree:
    """Build (or find) the judged tree of the change `base_sha..sha` and check it out at `where` (or use the
    change's own `worktree` when the two trees are the same).

    With `test_edits_allowed` the change's tests run as they are; its added and edited test files are then
    the `new_tests` that a witness may come from.
    """
    run = GitRun(Path(repo_path))
    base = _entries(run, base_sha)
    change = _entries(run, sha)
    if test_edits_allowed:
        changed_tests = sorted(path for path, entry in change.items() if is_test_path(path) and base.get(path) != entry)
        return JudgedTree(sha=sha, path=worktree, new_tests=changed_tests)
    edits: dict[str, _Entry | None] = {}
    copies: dict[str, str] = {}
    restored: list[str] = []
    dropped: list[str] = []
    for path, entry in base.items():
        if _guarded(path) and change.get(path) != entry:
            edits[path] = entry
            restored.append(path)
            copy = copy_name(path) if path in change else None
            if copy is not None and copy not in change and copy not in base:
                edits[copy] = change[path]
                copies[copy] = path
    for added in change:
        if added not in base and (is_conftest(added) or is_pytest_config(added) or runs_at_startup(added)):
            edits[added] = None
            dropped.append(added)
    new_tests = sorted({path for path in change if path not in base and is_test_path(path)} - set(dropped))
    judged_sha = _overlay(run, sha, edits, "factory: the change judged by the base's tests")
    checkout = worktree if judged_sha == sha else ensure_worktree(repo_path, where, judged_sha)
    return JudgedTree(
        sha=judged_sha,
        path=checkout,
        copies=copies,
        new_tests=sorted({*new_tests, *copies}),
        restored=sorted(restored),
        dropped=sorted(dropped),
    )


def witness_tree(repo_path: str, base_sha: str, judged: JudgedTree, where: Path) -> Path:
    """The base's tree plus the judged tree's new test files, checked out at `where`."""
    run = GitRun(Path(repo_path))
    entries = _entries(run, judged.sha)
    edits: dict[str, _Entry | None] = {path: entries[path] for path in judged.new_tests if path in entries}
    witness_sha = _overlay(run, base_sha, edits, "factory: the base's code with the change's new tests")
    return ensure_worktree(repo_path, where, witness_sha)


def _entries(run: GitRun, sha: str) -> dict[str, _Entry]:
    entries: dict[str, _Entry] = {}
    for record in run("ls-tree", "-r", "-z", "--full-tree", sha).split("\0"):
        if not record:
            continue
        meta, path = record.split("\t", 1)
        mode, _kind, object_sha = meta.split(" ")
        entries[path] = _Entry(mode, object_sha)
    return entries


def _overlay(run: GitRun, start: str, edits: dict[str, _Entry | None], message: str) -> str:
    """A commit on top of `start` whose tree is `start`'s with `edits` applied (None removes a path)."""
    if not edits:
        return start
    with tempfile.TemporaryDirectory(prefix="factory-index-") as scratch:
        indexed = GitRun(run.cwd, index_file=Path(scratch) / "index")
        indexed("read-tree", start)
        # Removals first, so a path that turns from a file into a directory (or back) is free when added.
        removals = [f"0 {_NULL_SHA}\t{path}\0" for path, entry in edits.items() if entry is None]
        additions = [f"{entry.mode} {entry.sha}\t{path}\0" for path, entry in edits.items() if entry is not None]
        listing = Path(scratch) / "index-info"
        for lines in (removals, additions):
            if lines:
                listing.write_text("".join(lines))
                with listing.open("rb") as stdin:
                    indexed("update-index", "-z", "--index-info", stdin=stdin)
        tree = indexed("write-tree")
    if tree == run("rev-parse", f"{start}^{{tree}}"):
        return start
    # A fixed date: the same trees always give the same commit, so a retried gate finds its worktree ready.
    return run("commit-tree", tree, "-p", start, "-m", message, commit_time=0)
