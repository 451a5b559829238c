"""The gate activity: check out one commit (and its base), set up the target's environment, run the gates."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import structlog
from temporalio import activity

from activities.context import heartbeat_ticker
from darkfactory import workspace
from darkfactory.blobs import BlobStore
from darkfactory.contracts import GateReport, GateResult, RunGatesInput
from darkfactory.gates import DEFAULT_TEST_COMMAND, GATES, GateContext, run_gates
from darkfactory.sandbox import CREDENTIAL_MARKERS
from darkfactory.settings import FactorySettings
from darkfactory.target_env import TargetEnvError, ensure_target_env

log = structlog.get_logger(__name__)
MIN_SECRET_LENGTH = 8


def worker_secret_values() -> list[str]:
    """Values of this worker's credential-like environment variables: found verbatim in a change, they fail it."""
    return [
        value
        for name, value in os.environ.items()
        if any(marker in name.upper() for marker in CREDENTIAL_MARKERS) and len(value) >= MIN_SECRET_LENGTH
    ]


class GateActivities:
    def __init__(self, settings: FactorySettings, blobs: BlobStore) -> None:
        self._settings = settings
        self._blobs = blobs

    @activity.defn
    def run_gates(self, input: RunGatesInput) -> GateReport:
        tick = heartbeat_ticker()
        root = self._settings.worktrees_dir / input.run_id
        worktree = workspace.ensure_worktree(input.repo_path, root / input.task_id, input.sha)
        base_worktree = workspace.ensure_worktree(input.repo_path, root / f"{input.task_id}.base", input.base_sha)
        changed = workspace.changed_paths(input.repo_path, input.base_sha, input.sha)
        policy = input.policy
        setup = input.config.setup_commands if input.config.setup_commands is not None else policy.commands.setup
        test_command = input.config.test_command or policy.commands.test or list(DEFAULT_TEST_COMMAND)
        try:
            env = ensure_target_env(worktree, self._settings.envs_dir, setup, on_tick=tick)
        except TargetEnvError as exc:
            failed = GateResult(
                gate="tests",
                passed=False,
                summary="the test environment could not be set up",
                feedback=str(exc)[-3000:],
                details_ref=self._blobs.put_text(str(exc)),
            )
            return GateReport(sha=input.sha, results=[failed])
        with tempfile.TemporaryDirectory(prefix="factory-gates-") as scratch:
            (Path(scratch) / "reports").mkdir()
            acceptance_dir = self._materialise_acceptance(input, Path(scratch))
            report = run_gates(
                GateContext(
                    worktree=worktree,
                    sha=input.sha,
                    changed=changed,
                    env=env,
                    blobs=self._blobs,
                    test_command=test_command,
                    timeout_s=max(input.config.timeouts.gates_s - 60.0, 30.0),
                    on_tick=tick,
                    gates=[gate for gate in policy.gates if gate in GATES],
                    repo_path=input.repo_path,
                    base_sha=input.base_sha,
                    policy=policy,
                    task_type=input.task_type,
                    base_worktree=base_worktree,
                    acceptance_dir=acceptance_dir,
                    secret_values=worker_secret_values(),
                    scratch=Path(scratch) / "reports",
                )
            )
        for result in report.results:
            log.info(
                "gate",
                gate=result.gate,
                passed=result.passed,
                summary=result.summary,
                needs_approval=result.needs_approval,
                duration_s=result.duration_s,
            )
        return report

    def _materialise_acceptance(self, input: RunGatesInput, scratch: Path) -> Path | None:
        """Write the held-out tests outside the worktree, where only the gate runs them."""
        if input.acceptance_ref is None:
            return None
        files: dict[str, str] = self._blobs.get_json(input.acceptance_ref)
        directory = scratch / "acceptance"
        directory.mkdir(parents=True)
        for name, source in files.items():
            (directory / Path(name).name).write_text(source)
        return directory
