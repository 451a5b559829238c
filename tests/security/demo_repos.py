"""The demo repository with hostile files committed on it, checked out and set up as the gates see it."""

from __future__ import annotations

from pathlib import Path

from darkfactory.blobs import BlobStore
from darkfactory.gates import GateContext
from darkfactory.target_env import ensure_target_env
from darkfactory.workspace import changed_paths, ensure_worktree
from tests.conftest import git, make_repo
from tests.gate_repos import commit


def hostile_base(tmp_path: Path, files: dict[str, str]) -> GateContext:
    """`files` committed on the demo repository and judged as a run's base (the target itself is hostile)."""
    repo = make_repo(tmp_path / "repo")
    sha = commit(repo, dict(files), "hostile")
    worktree = ensure_worktree(str(repo), tmp_path / "wt", sha)
    return GateContext(
        worktree=worktree,
        sha=sha,
        changed=[],
        env=ensure_target_env(worktree, tmp_path.parent / "envs"),
        blobs=BlobStore(tmp_path / "blobs"),
        repo_path=str(repo),
        base_sha=sha,
    )


def hostile_change(tmp_path: Path, files: dict[str, str], *, timeout_s: float = 1200.0) -> GateContext:
    """`files` committed on the demo repository as a `test` task's change, for the tests gate."""
    repo = make_repo(tmp_path / "repo")
    base_sha = git(repo, "rev-parse", "HEAD")
    sha = commit(repo, dict(files))
    worktree = ensure_worktree(str(repo), tmp_path / "wt", sha)
    return GateContext(
        worktree=worktree,
        sha=sha,
        changed=changed_paths(str(repo), base_sha, sha),
        env=ensure_target_env(worktree, tmp_path.parent / "envs"),
        blobs=BlobStore(tmp_path / "blobs"),
        gates=("tests",),
        repo_path=str(repo),
        base_sha=base_sha,
        base_worktree=ensure_worktree(str(repo), tmp_path / "wt-base", base_sha),
        task_type="test",
        timeout_s=timeout_s,
    )
