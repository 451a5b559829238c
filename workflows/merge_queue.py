"""The merge queue: one merge into the integration branch at a time, each checked against the head it lands on.

A task's change was gated on the head it branched from. When nothing else merged since, its own gates ran on
exactly the tree the merge produces; otherwise the combination is new and the regression gate runs on it.
A conflict, or a merge that breaks the suite (undone by a compare-and-swap of the branch), is returned as the
problem for the task's next round on the new head.

The queue also knows when its head is a tree that already passed every integration gate, the whole suite run
in that very tree (`verified`): the run's one merge, onto its base, of a task whose last attempt passed them all
there. The run's final verification would only repeat that, so it is skipped.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

from temporalio import workflow

from darkfactory.workflows.steps import ActivityRunner

with workflow.unsafe.imports_passed_through():
    from darkfactory.activities import metrics
    from darkfactory.activities.gates import GateActivities
    from darkfactory.activities.workspace import WorkspaceActivities
    from darkfactory.contracts import (
        GateReport,
        GateResult,
        MergeResult,
        MergeTaskInput,
        PlannedTask,
        PreparedRun,
        RestoreBranchInput,
        RunGatesInput,
        RunRequest,
    )
    from darkfactory.policy import GateName, Policy

NOT_AT_INTEGRATION: tuple[GateName, ...] = ("scope", "acceptance", "review")
"""Gates judged on each task's own change, not on the integration branch."""


def integration_gates(policy: Policy) -> list[GateName]:
    return [gate for gate in policy.gates if gate not in NOT_AT_INTEGRATION]


@dataclass(frozen=True)
class Verified:
    """The head is a tree on which every integration gate passed: in this task's gates, the suite in that tree."""

    head: str
    task_id: str
    gates: list[GateResult]


def passed_everything_there(policy: Policy, gates: list[GateResult]) -> list[GateResult] | None:
    """The integration gates' results among a task's last gates when every one passed and the tests ran in the
    commit's own tree; None otherwise (a gate missing or failed, a person's approval, a judged tree)."""
    found = {result.gate: result for result in gates}
    needed = integration_gates(policy)
    if not all(gate in found and found[gate].passed for gate in needed):
        return None
    if "tests" in needed and not found["tests"].exact_tree:
        return None
    return [found[gate] for gate in needed]


class MergeQueue:
    """Serialises merges into the run's integration branch and knows where its head stands."""

    def __init__(self, run_activity: ActivityRunner) -> None:
        self._run_activity = run_activity
        self._lock = asyncio.Lock()
        self._depth = 0
        self.head = ""
        self.verified: Verified | None = None

    async def merge(
        self,
        request: RunRequest,
        task: PlannedTask,
        prepared: PreparedRun,
        base: str,
        sha: str,
        on_merged_while_cancelled: Callable[[], None],
        gates: list[GateResult] | None = None,
    ) -> str:
        """Merge one task, one merge at a time; '' on success, else the problem for the task's next round.

        Started merges always finish: cancelling the run waits for the merge in flight, and a merge that
        landed is reported through `on_merged_while_cancelled` before the cancellation goes on.
        """
        self._set_depth(request.run_id, +1)
        try:
            async with self._lock:
                job = asyncio.ensure_future(self._merge_locked(request, task, prepared, base, sha, gates or []))
                try:
                    return await asyncio.shield(job)
                except asyncio.CancelledError:
                    problem = await job
                    if not problem:
                        on_merged_while_cancelled()
                    raise
        finally:
            self._set_depth(request.run_id, -1)

    def _set_depth(self, run_id: str, change: int) -> None:
        self._depth += change
        metrics.set_merge_queue_depth(workflow.metric_meter(), run_id, self._depth)

    async def _merge_locked(
        self,
        request: RunRequest,
        task: PlannedTask,
        prepared: PreparedRun,
        base: str,
        sha: str,
        gates: list[GateResult],
    ) -> str:
        timeouts = request.config.timeouts
        previous = self.head
        merged: MergeResult = await self._run_activity(
            WorkspaceActivities.merge_task,
            MergeTaskInput(
                run_id=request.run_id,
                task_id=task.id,
                title=task.title,
                repo_path=request.repo_path,
                integration_branch=prepared.integration_branch,
                task_sha=sha,
                commit_time=int(workflow.now().timestamp()),
            ),
            timeouts.git_s,
        )
        if not merged.merged:
            return (
                f"## Merge conflict\nWhile you worked, other tasks were merged into the integration branch, and "
                f"your change conflicts with them in: {merged.conflict}. Make the change again on top of the "
                f"current code (your workspace now holds it)."
            )
        if merged.integration_sha == previous or previous == base:
            # Nothing else was merged since the task branched: its own gates already ran on this very tree.
            self.head = merged.integration_sha
            # Verified only when this was the run's one merge onto its base: the task's gates then looked at every
            # file the run changed (lint, types and secrets check the files changed since their base).
            passed = passed_everything_there(prepared.policy, gates) if base == previous == prepared.base_sha else None
            self.verified = Verified(self.head, task.id, passed) if passed is not None else None
            return ""
        # Other work was merged meanwhile: the combination has never been tested. Run the regression gate.
        report: GateReport = await self._run_activity(
            GateActivities.run_gates,
            RunGatesInput(
                run_id=request.run_id,
                task_id=f"{task.id}.regression",
                attempt=1,
                repo_path=request.repo_path,
                sha=merged.integration_sha,
                base_sha=previous,
                config=request.config,
                policy=prepared.policy.model_copy(update={"gates": ["tests"]}),
                task_type=task.type,
                baseline=prepared.baseline,
                purpose="regression",
            ),
            timeouts.gates_s,
            heartbeat_s=max(timeouts.heartbeat_s, 30.0),
        )
        if report.passed:
            self.head = merged.integration_sha
            self.verified = None  # only the suite ran on this combination
            return ""
        metrics.record_gate_failures(workflow.metric_meter(), report.results, "regression")
        await self._run_activity(
            WorkspaceActivities.restore_branch,
            RestoreBranchInput(
                run_id=request.run_id,
                repo_path=request.repo_path,
                branch=prepared.integration_branch,
                sha=previous,
                expected=merged.integration_sha,
            ),
            timeouts.git_s,
        )
        workflow.logger.info("merge of %s reverted: it broke the integration suite", task.id)
        return (
            "## Regression\nYour change passed its own checks but broke the test suite once combined with work "
            "merged meanwhile; the merge was reverted. Make the change work on top of the current code.\n\n"
            + report.feedback
        )
