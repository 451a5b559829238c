"""Git steps: preparing a run, task workspaces, merges, shipping and rollback."""

from __future__ import annotations

from pydantic import Field

from darkfactory.contracts.acceptance import AcceptanceSuite
from darkfactory.contracts.base import Frozen
from darkfactory.contracts.config import ShipMode
from darkfactory.contracts.gates import BaselineSummary
from darkfactory.policy import Policy


class PrepareRunInput(Frozen):
    run_id: str
    repo_path: str
    base_branch: str
    acceptance_tests: dict[str, str] = Field(default_factory=dict)
    spec_path: str | None = None
    """Read the run's spec from this file at the base commit (cleaned as untrusted input)."""


class PreparedRun(Frozen):
    base_sha: str
    integration_branch: str
    integration_sha: str
    policy: Policy = Field(default_factory=Policy)
    """`.factory/policy.toml` at the base commit (defaults where it has none)."""
    acceptance: AcceptanceSuite | None = None
    """The spec's held-out acceptance tests, stored in the blob store."""
    baseline: BaselineSummary | None = None
    """The base's suite, measured after preparing (set by the run workflow)."""
    spec: str | None = None
    """The spec read from `spec_path` at the base commit, cleaned; None when the request carried its spec."""
    spec_notes: list[str] = Field(default_factory=list)
    """What cleaning removed from that spec."""


class OpenWorkspaceInput(Frozen):
    run_id: str
    task_id: str
    repo_path: str
    base_sha: str
    reset: bool = False
    """Move an existing task branch to `base_sha` (a new merge round)."""


class RestoreBranchInput(Frozen):
    """Move a branch back from `expected` to `sha` (undo a merge that broke the integration suite)."""

    run_id: str
    repo_path: str
    branch: str
    sha: str
    expected: str


class WorkspaceRef(Frozen):
    """A task's workspace: its branch and the sha it stands at. A worktree on disk is only a cache."""

    repo_path: str
    run_id: str
    task_id: str
    branch: str
    sha: str


class MergeTaskInput(Frozen):
    run_id: str
    task_id: str
    title: str
    repo_path: str
    integration_branch: str
    task_sha: str
    commit_time: int


class MergeResult(Frozen):
    merged: bool
    integration_sha: str
    conflict: str = ""
    """Conflicting paths when `merged` is False."""


class ShipInput(Frozen):
    run_id: str
    repo_path: str
    base_branch: str
    base_sha: str
    integration_branch: str
    integration_sha: str
    mode: ShipMode
    remote: str = "origin"
    github_repo: str | None = None
    title: str = ""
    body: str = ""


class RevertShippedInput(Frozen):
    """Undo a shipped change with a compensating commit, delivered the way the change was."""

    run_id: str
    repo_path: str
    ship: ShipInput
    shipped_sha: str
    reason: str
    commit_time: int


class ShipResult(Frozen):
    mode: ShipMode
    shipped_sha: str
    target: str
    """What now carries the result: the branch name (`remote/branch` for push and pr)."""
    pushed: bool = False
    """A push happened in this activity (False when the remote already had the sha: a retry)."""
    pull_request_url: str | None = None
