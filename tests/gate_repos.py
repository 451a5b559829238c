"""Real git repositories for the static gates' tests: commit files on a base and describe the change.

One place for what four test modules had each written: writing files (text, bytes, symlinks, deletions),
committing them, and the GateContext of "this commit against the one before" without a target environment
(the static gates need none)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from darkfactory.blobs import BlobStore
from darkfactory.gates import GateContext
from darkfactory.policy import GateName, Policy, TaskType
from darkfactory.target_env import TargetEnv
from darkfactory.workspace import changed_paths
from tests.conftest import git


@dataclass(frozen=True)
class Link:
    """A symlink to commit, pointing at `target` as written."""

    target: str


Content = str | bytes | Link | None
"""Text, bytes, a symlink, or None to delete the file."""


def write(repo: Path, files: dict[str, Content]) -> None:
    for path, content in files.items():
        target = repo / path
        if content is None:
            target.unlink()
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, Link):
            os.symlink(content.target, target)
        elif isinstance(content, bytes):
            target.write_bytes(content)
        else:
            target.write_text(content)


def commit(repo: Path, files: dict[str, Content], message: str = "change") -> str:
    write(repo, files)
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "--allow-empty", "-m", message)
    return git(repo, "rev-parse", "HEAD")


def new_repo(path: Path, files: dict[str, Content]) -> Path:
    """A repository at `path` whose first commit (on `main`) holds `files`."""
    path.mkdir(parents=True)
    git(path, "init", "-q", "-b", "main")
    commit(path, files, "base")
    return path


def change_context(
    repo: Path,
    files: dict[str, Content],
    *,
    policy: Policy | None = None,
    task_type: TaskType = "feature",
    secret_values: Sequence[str] = (),
    gates: Sequence[GateName] = ("syntax", "lint", "tests"),
) -> GateContext:
    """Commit `files` on top of the current head and describe that change to the gates."""
    base = git(repo, "rev-parse", "HEAD")
    sha = commit(repo, files)
    return GateContext(
        worktree=repo,
        sha=sha,
        changed=changed_paths(str(repo), base, sha),
        env=TargetEnv(root=repo.parent, fingerprint="x"),
        blobs=BlobStore(repo.parent / "blobs"),
        gates=gates,
        repo_path=str(repo),
        base_sha=base,
        policy=policy or Policy(),
        task_type=task_type,
        secret_values=secret_values,
    )
