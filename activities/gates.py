"""The gate activity: check out one commit, set up the target's environment, run the gates."""

from __future__ import annotations

import structlog
from temporalio import activity

from activities.context import heartbeat_ticker
from darkfactory import workspace
from darkfactory.blobs import BlobStore
from darkfactory.contracts import GateReport, GateResult, RunGatesInput
from darkfactory.gates import DEFAULT_TEST_COMMAND, GateContext, run_gates
from darkfactory.settings import FactorySettings
from darkfactory.target_env import TargetEnvError, ensure_target_env

log = structlog.get_logger(__name__)


class GateActivities:
    def __init__(self, settings: FactorySettings, blobs: BlobStore) -> None:
        self._settings = settings
        self._blobs = blobs

    @activity.defn
    def run_gates(self, input: RunGatesInput) -> GateReport:
        tick = heartbeat_ticker()
        path = self._settings.worktrees_dir / input.run_id / input.task_id
        worktree = workspace.ensure_worktree(input.repo_path, path, input.sha)
        changed = workspace.changed_paths(input.repo_path, input.base_sha, input.sha)
        try:
            env = ensure_target_env(worktree, self._settings.envs_dir, input.config.setup_commands, on_tick=tick)
        except TargetEnvError as exc:
            details = self._blobs.put_text(str(exc))
            failed = GateResult(
                gate="tests",
                passed=False,
                summary="the test environment could not be set up",
                feedback=str(exc)[-3000:],
                details_ref=details,
            )
            return GateReport(sha=input.sha, results=[failed])
        report = run_gates(
            GateContext(
                worktree=worktree,
                sha=input.sha,
                changed=changed,
                env=env,
                blobs=self._blobs,
                test_command=input.config.test_command or DEFAULT_TEST_COMMAND,
                timeout_s=max(input.config.timeouts.gates_s - 60.0, 30.0),
                on_tick=tick,
            )
        )
        for result in report.results:
            log.info(
                "gate", gate=result.gate, passed=result.passed, summary=result.summary, duration_s=result.duration_s
            )
        return report
