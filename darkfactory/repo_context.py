"""What the model roles are told about a repository snapshot: the files, an outline, README and project file.

Every role's prompt starts with it (`prompts.repository_context`), right after the instructions, so each call
about the same commit shares that prefix in the prompt cache, and the agent starts knowing what it would
otherwise spend its first turns fetching: which files exist, how big they are, where each top-level function
and class is defined, and how the project is built and tested. Everything is read from git objects at one
commit, never from a worktree, so the same commit always yields byte-identical text.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from darkfactory.workspace import GitRun

__all__ = ["RepoFile", "RepoSnapshot", "read_snapshot"]

MAX_LISTED_FILES = 300
MAX_OUTLINE_CHARS = 12_000
"""Outline text kept; a larger repository's outline stops there, with a note."""
MAX_OUTLINE_LINE = 160
README_NAMES = ("README.md", "README.rst", "README.txt", "README")
README_LINES = 40
PROJECT_NAMES = ("pyproject.toml", "setup.cfg", "setup.py")
PROJECT_LINES = 60
_DEFINITION = r"^(async def|def|class) "


@dataclass(frozen=True)
class RepoFile:
    path: str
    size: int | None = None
    """Bytes; None for a submodule or when unknown."""


@dataclass(frozen=True)
class RepoSnapshot:
    """A repository at one commit, as far as the prompts need it."""

    sha: str
    files: list[RepoFile] = field(default_factory=list)
    """Every tracked file, in git's order."""
    outline: dict[str, list[str]] = field(default_factory=dict)
    """Python file -> its top-level definitions as `line: text`, in git's order, within MAX_OUTLINE_CHARS."""
    outline_truncated: bool = False
    readme: tuple[str, str] | None = None
    """(name, first README_LINES lines)."""
    project: tuple[str, str] | None = None
    """(name, first PROJECT_LINES lines) of the project's build file."""

    @classmethod
    def of_paths(cls, sha: str, paths: list[str], readme: str = "") -> RepoSnapshot:
        """A snapshot from a bare file list (tests, and callers without the repository at hand)."""
        return cls(sha=sha, files=[RepoFile(path) for path in paths], readme=("README", readme) if readme else None)

    @property
    def paths(self) -> list[str]:
        return [file.path for file in self.files]

    @property
    def listed(self) -> list[RepoFile]:
        return self.files[:MAX_LISTED_FILES]

    @property
    def listing_truncated(self) -> bool:
        return len(self.files) > MAX_LISTED_FILES


def read_snapshot(repo_path: str, sha: str) -> RepoSnapshot:
    """Read the snapshot of `sha` in `repo_path` (three git commands, whatever the repository's size)."""
    git = GitRun(Path(repo_path))
    files = _files(git, sha)
    paths = {file.path for file in files}
    outline, truncated = _outline(git, sha)
    return RepoSnapshot(
        sha=sha,
        files=files,
        outline=outline,
        outline_truncated=truncated,
        readme=_head(git, sha, next((n for n in README_NAMES if n in paths), None), README_LINES),
        project=_head(git, sha, next((n for n in PROJECT_NAMES if n in paths), None), PROJECT_LINES),
    )


def _files(git: GitRun, sha: str) -> list[RepoFile]:
    files: list[RepoFile] = []
    for record in git("ls-tree", "-r", "-l", "-z", sha).split("\0"):
        meta, tab, path = record.partition("\t")
        if not tab:
            continue
        size = meta.split()[-1]
        files.append(RepoFile(path=path, size=int(size) if size.isdigit() else None))
    return files


def _outline(git: GitRun, sha: str) -> tuple[dict[str, list[str]], bool]:
    # -z separates path, line number and text by NUL, so paths with colons parse; -I skips binary files.
    status, out, _err = git.status("grep", "-n", "-z", "-I", "-E", _DEFINITION, sha, "--", "*.py")
    if status != 0:  # 1: no Python definitions at all
        return {}, False
    outline: dict[str, list[str]] = {}
    used = 0
    for line in out.splitlines():
        name, _, rest = line.partition("\0")
        number, _, text = rest.partition("\0")
        path = name.removeprefix(f"{sha}:")
        entry = f"{number}: {text.rstrip()}"[:MAX_OUTLINE_LINE]
        cost = len(entry) + (len(path) + 1 if path not in outline else 0)
        if used + cost > MAX_OUTLINE_CHARS:
            return outline, True
        outline.setdefault(path, []).append(entry)
        used += cost
    return outline, False


def _head(git: GitRun, sha: str, name: str | None, lines: int) -> tuple[str, str] | None:
    if name is None:
        return None
    status, out, _err = git.status("show", f"{sha}:{name}")
    return (name, "\n".join(out.splitlines()[:lines])) if status == 0 else None
