"""Git activities: prepare a run, open a task's workspace, run the agent's tools, merge, ship, release.

Sync functions run in the worker's thread pool (git and tools block). Each is idempotent for its input:
the sha in the input is the state; a worktree is reset to it before anything happens.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import structlog
from temporalio import activity

from darkfactory import shipping, workspace
from darkfactory.activities.context import heartbeat_ticker
from darkfactory.activities.errors import INVALID_POLICY, INVALID_TARGET, SHIP_REFUSED, business_error, github_error
from darkfactory.agent_tools import AgentTools
from darkfactory.blobs import BlobStore
from darkfactory.contracts import (
    AcceptanceSuite,
    MergeResult,
    MergeTaskInput,
    OpenWorkspaceInput,
    PreparedRun,
    PrepareRunInput,
    RestoreBranchInput,
    RevertShippedInput,
    RunToolsInput,
    RunToolsResult,
    ShipInput,
    ShipResult,
    ToolOutcome,
    WorkspaceRef,
)
from darkfactory.policy import POLICY_PATH, PolicyError, parse_policy
from darkfactory.sandbox import worker_secret_values
from darkfactory.settings import CredentialsError, FactorySettings, load_credentials
from darkfactory.target_env import TargetEnvError, ensure_target_env
from darkfactory.untrusted import clean_untrusted, for_model, redact_secrets

log = structlog.get_logger(__name__)


def credential_kinds(text: str) -> list[str]:
    """The kinds of credential-shaped strings in text the agent is about to write (the worker's own included)."""
    _, kinds = redact_secrets(text, worker_secret_values())
    return kinds


def _write_refusal(input: RunToolsInput) -> Callable[[str], str | None] | None:
    policy, task_type = input.policy, input.task_type
    if policy is None or task_type is None:
        return None
    return lambda path: policy.write_refusal(path, task_type)


def _spec_at(input: PrepareRunInput, base_sha: str) -> tuple[str | None, list[str]]:
    """The spec file of a request that names one, read at the base commit and cleaned as untrusted input."""
    if input.spec_path is None:
        return None, []
    text = workspace.read_file_at(input.repo_path, base_sha, input.spec_path)
    where = f"{input.spec_path} at {input.base_branch} ({base_sha[:12]})"
    if text is None:
        raise workspace.TargetError(
            f"the spec file {where} does not exist; commit it or fix the schedule's --spec-path"
        )
    cleaned = clean_untrusted(text, worker_secret_values())
    if not cleaned.text.strip():
        raise workspace.TargetError(f"the spec file {where} is empty; write what the run should do into it")
    return cleaned.text, [cleaned.summary(input.spec_path)] if cleaned.notes else []


class WorkspaceActivities:
    def __init__(self, settings: FactorySettings, blobs: BlobStore) -> None:
        self._settings = settings
        self._blobs = blobs

    def worktree_path(self, run_id: str, name: str) -> Path:
        return self._settings.worktrees_dir / run_id / name

    @activity.defn
    def prepare_run(self, input: PrepareRunInput) -> PreparedRun:
        try:
            base_sha = workspace.validate_target(input.repo_path, input.base_branch)
            policy = parse_policy(workspace.read_file_at(input.repo_path, base_sha, POLICY_PATH))
            spec, spec_notes = _spec_at(input, base_sha)
            prepared = workspace.prepare_run(input.repo_path, input.run_id, input.base_branch)
        except workspace.TargetError as exc:
            raise business_error(INVALID_TARGET, str(exc)) from exc
        except PolicyError as exc:
            raise business_error(INVALID_POLICY, str(exc)) from exc
        acceptance = None
        if input.acceptance_tests:
            names = [f"{path}::*" for path in sorted(input.acceptance_tests)]
            acceptance = AcceptanceSuite(files_ref=self._blobs.put_json(input.acceptance_tests), names=names)
        prepared = prepared.model_copy(
            update={"policy": policy, "acceptance": acceptance, "spec": spec, "spec_notes": spec_notes}
        )
        log.info("run_prepared", base_sha=prepared.base_sha, branch=prepared.integration_branch)
        return prepared

    @activity.defn
    def open_workspace(self, input: OpenWorkspaceInput) -> WorkspaceRef:
        return workspace.open_task_branch(input.repo_path, input.run_id, input.task_id, input.base_sha, input.reset)

    @activity.defn
    def restore_branch(self, input: RestoreBranchInput) -> None:
        """Undo a merge by moving the integration branch back (compare-and-swap; idempotent)."""
        workspace.restore_branch(input.repo_path, input.branch, input.sha, input.expected)
        log.info("merge_undone", branch=input.branch, back_to=input.sha)

    @activity.defn
    def run_tools(self, input: RunToolsInput) -> RunToolsResult:
        tick = heartbeat_ticker()
        ws = input.workspace
        worktree = workspace.ensure_worktree(ws.repo_path, self.worktree_path(ws.run_id, ws.task_id), ws.sha)
        readonly = [workspace.git_dir(worktree)]
        path_prefix: list[Path] = []
        try:
            env = ensure_target_env(worktree, self._settings.envs_dir, on_tick=tick)
            path_prefix.append(env.bin_dir)
            readonly.extend(env.readonly_paths)
        except TargetEnvError as exc:
            # The agent can still edit files; its commands run without the target's packages.
            log.warning("target_env_unavailable", error=str(exc)[:500])
        tools = AgentTools(
            worktree,
            command_path_prefix=path_prefix,
            command_readonly_paths=readonly,
            on_tick=tick,
            write_refusal=_write_refusal(input),
            find_secrets=credential_kinds,
        )
        transcript = self._blobs.get_json(input.transcript_ref)
        results: list[dict[str, object]] = []
        outcomes: list[ToolOutcome] = []
        wrote = False
        known = worker_secret_values()
        for call in input.tool_calls:
            execution = tools.execute(call)
            wrote = wrote or execution.wrote
            # What the repository holds reaches the model only with credential-shaped strings replaced.
            content = for_model(execution.content, known)
            results.append(
                {"type": "tool_result", "tool_use_id": call.id, "content": content, "is_error": execution.is_error}
            )
            outcomes.append(
                ToolOutcome(tool_use_id=call.id, name=call.name, summary=execution.summary, is_error=execution.is_error)
            )
            log.info("tool_call", tool=call.name, summary=execution.summary, is_error=execution.is_error)
            tick()
        sha = ws.sha
        if wrote:
            message = f"factory: {ws.task_id} attempt {input.attempt} turn {input.turn}"
            sha = workspace.snapshot(worktree, ws, message, input.commit_time)
        transcript["messages"] = [*transcript["messages"], {"role": "user", "content": results}]
        return RunToolsResult(transcript_ref=self._blobs.put_json(transcript), sha=sha, outcomes=outcomes)

    @activity.defn
    def merge_task(self, input: MergeTaskInput) -> MergeResult:
        result = workspace.merge_task(
            input.repo_path,
            input.integration_branch,
            input.task_sha,
            f"{input.task_id}: {input.title}",
            f"{input.run_id}/{input.task_id}",
            input.commit_time,
        )
        log.info(
            "task_merged" if result.merged else "merge_conflict", sha=result.integration_sha, conflict=result.conflict
        )
        return result

    @activity.defn
    def ship_run(self, input: ShipInput) -> ShipResult:
        """Deliver the integration head. Idempotent: a retry after a crash never pushes twice or opens a second
        pull request (the remote is read first; the PR carries the run id as its idempotency key)."""
        try:
            if input.mode in ("branch", "merge"):
                return workspace.ship(
                    input.repo_path,
                    input.mode,
                    input.base_branch,
                    input.base_sha,
                    input.integration_branch,
                    input.integration_sha,
                )
            if input.mode == "push":
                pushed = shipping.push_branch(input.repo_path, input.remote, input.integration_sha, input.base_branch)
                return ShipResult(
                    mode="push",
                    shipped_sha=input.integration_sha,
                    pushed=pushed.pushed,
                    target=f"{input.remote}/{input.base_branch}",
                )
            return self._open_pull_request(input)
        except workspace.ShipError as exc:
            raise business_error(SHIP_REFUSED, str(exc)) from exc
        except shipping.GitHubError as exc:
            raise github_error(exc) from None

    @activity.defn
    def revert_shipped(self, input: RevertShippedInput) -> str:
        """Undo a shipped change with a compensating commit, delivered the same way; returns its sha."""
        ship = input.ship
        message = f"Revert darkfactory run {input.run_id}\n\n{input.reason}\n\nFactory-Revert: {input.run_id}\n"
        revert = workspace.compensating_commit(
            input.repo_path, ship.base_sha, input.shipped_sha, message, input.commit_time
        )
        try:
            if ship.mode == "branch":
                workspace.restore_branch(input.repo_path, ship.integration_branch, revert, input.shipped_sha)
            elif ship.mode == "merge":
                workspace.ship(
                    input.repo_path, "merge", ship.base_branch, input.shipped_sha, ship.integration_branch, revert
                )
            else:
                branch = ship.base_branch if ship.mode == "push" else f"factory/{input.run_id}"
                shipping.push_branch(input.repo_path, ship.remote, revert, branch)
        except workspace.ShipError as exc:
            raise business_error(SHIP_REFUSED, f"could not deliver the rollback: {exc}") from exc
        log.warning("shipped_change_reverted", revert=revert, reason=input.reason[:300])
        return revert

    def _open_pull_request(self, input: ShipInput) -> ShipResult:
        try:
            token = load_credentials().github_key()
        except CredentialsError as exc:
            raise workspace.ShipError(str(exc)) from None
        if not token:
            raise workspace.ShipError("--ship pr needs GITHUB_TOKEN or GITHUB_TOKEN_FILE in the workers' environment")
        owner_repo = input.github_repo
        if owner_repo is None:
            url = workspace.GitRun(Path(input.repo_path))("remote", "get-url", input.remote)
            parsed = shipping.parse_github_remote(url)
            if parsed is None:
                raise workspace.ShipError(f"remote {input.remote!r} is not a GitHub URL; pass --github-repo owner/repo")
            owner_repo = "/".join(parsed)
        owner, repo = owner_repo.split("/", 1)
        head = f"factory/{input.run_id}"
        pushed = shipping.push_branch(input.repo_path, input.remote, input.integration_sha, head)
        api_url = os.environ.get("GITHUB_API_URL", "https://api.github.com")
        with shipping.GitHubClient(api_url=api_url, token=token) as client:
            pull = shipping.open_pull_request(
                client,
                owner,
                repo,
                head,
                input.base_branch,
                input.title or head,
                input.body,
                idempotency_key=f"run-{input.run_id}",
            )
        log.info("pull_request", url=pull.html_url or pull.url, number=pull.number, pushed=pushed.pushed)
        return ShipResult(
            mode="pr",
            shipped_sha=input.integration_sha,
            pushed=pushed.pushed,
            target=f"{input.remote}/{head}",
            pull_request_url=pull.html_url or pull.url,
        )

    @activity.defn
    def release_workspaces(self, input: PrepareRunInput) -> None:
        """Drop the run's worktree caches; branches stay for inspection."""
        root = self._settings.worktrees_dir / input.run_id
        if root.exists():
            shutil.rmtree(root, ignore_errors=True)
        repo = workspace.GitRun(Path(input.repo_path))
        if Path(input.repo_path).is_dir() and repo.ok("rev-parse", "--git-dir"):
            repo("worktree", "prune")
