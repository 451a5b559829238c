"""FactoryRunWorkflow: prepare -> plan -> tasks as child workflows in dependency order -> merge each ->
verify the integration branch -> ship -> summary.

Business failures (a bad target, an invalid plan, a task that never passes) end the run with a summary
whose phase is `failed` and whose error names the problem; they do not fail the workflow, so the summary
is always there to read. The `status` query answers the live state at any time.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy, SearchAttributeKey, SearchAttributePair, TypedSearchAttributes
from temporalio.exceptions import ActivityError, ApplicationError, ChildWorkflowError

with workflow.unsafe.imports_passed_through():
    from activities.gates import GateActivities
    from activities.model import ModelActivities
    from activities.workspace import WorkspaceActivities
    from darkfactory.constants import SA_NEEDS_REVIEW, SA_REPO, SA_STATUS, task_workflow_id
    from darkfactory.contracts import (
        GateReport,
        MergeResult,
        MergeTaskInput,
        Plan,
        PlanInput,
        PlanResult,
        PreparedRun,
        PrepareRunInput,
        RunGatesInput,
        RunPhase,
        RunRequest,
        RunState,
        ShipInput,
        ShipResult,
        TaskInput,
        TaskResult,
        TaskState,
        TaskSummary,
    )
    from darkfactory.plan import blocked_by, topological_order
    from workflows.task import MODEL_RETRY, STEP_RETRY, TaskWorkflow, _cause

STATUS = SearchAttributeKey.for_keyword(SA_STATUS)
NEEDS_REVIEW = SearchAttributeKey.for_bool(SA_NEEDS_REVIEW)
REPO = SearchAttributeKey.for_keyword(SA_REPO)
INTEGRATION_TASK = "_integration"
"""Worktree name for verifying the integration branch (not a valid task id, so it cannot collide)."""


class RunFailed(Exception):
    """Ends the run as `failed` with a message for the summary."""


@workflow.defn
class FactoryRunWorkflow:
    def __init__(self) -> None:
        self._state: RunState | None = None

    @workflow.query
    def status(self) -> RunState | None:
        """The live state of the run (None only before the run method starts)."""
        return self._state

    @workflow.run
    async def run(self, request: RunRequest) -> RunState:
        config = request.config
        self._state = RunState(
            run_id=request.run_id,
            repo_path=request.repo_path,
            base_branch=request.base_branch,
            model=config.model,
            scripted=config.scripted,
            phase="preparing",
            ship_mode=config.ship,
        )
        self._set_phase("preparing")
        try:
            await self._run(request)
        except RunFailed as exc:
            self._update(error=str(exc))
            self._set_phase("failed")
        finally:
            await self._release(request)
        return self._require_state()

    async def _run(self, request: RunRequest) -> None:
        config = request.config
        timeouts = config.timeouts
        prepared: PreparedRun = await self._activity(
            WorkspaceActivities.prepare_run,
            PrepareRunInput(
                run_id=request.run_id,
                repo_path=request.repo_path,
                base_branch=request.base_branch,
                acceptance_tests=request.acceptance_tests,
            ),
            timeouts.git_s,
        )
        self._update(integration_branch=prepared.integration_branch, base_sha=prepared.base_sha)

        self._set_phase("planning")
        planned: PlanResult = await self._activity(
            ModelActivities.plan_run,
            PlanInput(
                run_id=request.run_id,
                repo_path=request.repo_path,
                base_sha=prepared.base_sha,
                spec=request.spec,
                config=config,
            ),
            timeouts.model_call_s,
            heartbeat_s=timeouts.heartbeat_s,
            retry=MODEL_RETRY,
        )
        plan = planned.plan
        self._update(
            plan_summary=plan.summary,
            tasks=[TaskSummary(id=task.id, title=task.title, state="pending") for task in plan.tasks],
            usage=self._require_state().usage + planned.usage,
        )

        self._set_phase("running")
        head = await self._run_tasks(request, plan, prepared)
        not_merged = [task.id for task in self._require_state().tasks if task.state != "merged"]
        if not_merged:
            raise RunFailed(f"{len(not_merged)} task(s) did not merge: {', '.join(not_merged)}; nothing shipped")

        self._set_phase("verifying")
        report: GateReport = await self._activity(
            GateActivities.run_gates,
            RunGatesInput(
                run_id=request.run_id,
                task_id=INTEGRATION_TASK,
                attempt=1,
                repo_path=request.repo_path,
                sha=head,
                base_sha=prepared.base_sha,
                config=config,
            ),
            timeouts.gates_s,
            heartbeat_s=max(timeouts.heartbeat_s, 30.0),
        )
        self._update(final_gates=report.results)
        if not report.passed:
            raise RunFailed("the integration branch failed its gates after merging: " + _failing(report))

        self._set_phase("shipping")
        shipped: ShipResult = await self._activity(
            WorkspaceActivities.ship_run,
            ShipInput(
                run_id=request.run_id,
                repo_path=request.repo_path,
                base_branch=request.base_branch,
                base_sha=prepared.base_sha,
                integration_branch=prepared.integration_branch,
                integration_sha=head,
                mode=config.ship,
            ),
            timeouts.git_s,
        )
        self._update(shipped_sha=shipped.shipped_sha)
        self._set_phase("shipped")

    async def _run_tasks(self, request: RunRequest, plan: Plan, prepared: PreparedRun) -> str:
        """Run tasks one after another in dependency order; return the integration head."""
        head = prepared.integration_sha
        ended: set[str] = set()
        # The spec's own held-out tests judge the work as a whole: they gate the tasks nothing depends on.
        sinks = {task.id for task in plan.tasks} - {dep for task in plan.tasks for dep in task.depends_on}
        for task in topological_order(plan):
            culprit = blocked_by(plan, ended).get(task.id)
            if culprit is not None:
                self._set_task(task.id, state="failed", reason=f"not started: dependency {culprit!r} did not merge")
                ended.add(task.id)
                continue
            self._set_task(task.id, state="running")
            try:
                result: TaskResult = await workflow.execute_child_workflow(
                    TaskWorkflow.run,
                    TaskInput(
                        run_id=request.run_id,
                        repo_path=request.repo_path,
                        spec=request.spec,
                        task=task,
                        base_sha=head,
                        config=request.config,
                        policy=prepared.policy,
                        acceptance=prepared.acceptance if task.id in sinks else None,
                    ),
                    id=task_workflow_id(request.run_id, task.id),
                    search_attributes=TypedSearchAttributes(
                        [SearchAttributePair(REPO, request.repo_path), SearchAttributePair(STATUS, "running")]
                    ),
                )
            except ChildWorkflowError as exc:
                self._set_task(task.id, state="failed", reason=f"task workflow failed: {_cause(exc)}")
                ended.add(task.id)
                continue
            summary = {
                "attempts": len(result.attempts),
                "usage": result.usage,
                "decisions": result.decisions,
                "gates": result.attempts[-1].gates if result.attempts else [],
            }
            self._update(usage=self._require_state().usage + result.usage)
            if result.outcome != "passed" or result.final_sha is None:
                ended_as: TaskState = "failed" if result.outcome == "passed" else result.outcome
                self._set_task(task.id, state=ended_as, reason=result.reason, **summary)
                ended.add(task.id)
                continue
            merged: MergeResult = await self._activity(
                WorkspaceActivities.merge_task,
                MergeTaskInput(
                    run_id=request.run_id,
                    task_id=task.id,
                    title=task.title,
                    repo_path=request.repo_path,
                    integration_branch=prepared.integration_branch,
                    task_sha=result.final_sha,
                    commit_time=int(workflow.now().timestamp()),
                ),
                request.config.timeouts.git_s,
            )
            if not merged.merged:
                self._set_task(task.id, state="failed", reason=f"merge conflict in {merged.conflict}", **summary)
                ended.add(task.id)
                continue
            head = merged.integration_sha
            self._set_task(
                task.id,
                state="merged",
                merged_sha=head,
                reason=f"merged as {head[:12]}" + (f" ({result.reason})" if result.decisions else ""),
                **summary,
            )
        return head

    async def _activity(
        self,
        method,
        arg,
        timeout_s: float,
        *,
        heartbeat_s: float | None = None,  # type: ignore[no-untyped-def]
        retry: RetryPolicy = STEP_RETRY,
    ):
        """Run an activity; a non-retryable failure ends the run with the activity's own message."""
        try:
            return await workflow.execute_activity_method(
                method,
                arg,
                start_to_close_timeout=timedelta(seconds=timeout_s),
                heartbeat_timeout=timedelta(seconds=heartbeat_s) if heartbeat_s else None,
                retry_policy=retry,
            )
        except ActivityError as exc:
            raise RunFailed(_cause(exc)) from exc

    async def _release(self, request: RunRequest) -> None:
        try:
            await workflow.execute_activity_method(
                WorkspaceActivities.release_workspaces,
                PrepareRunInput(run_id=request.run_id, repo_path=request.repo_path, base_branch=request.base_branch),
                start_to_close_timeout=timedelta(seconds=request.config.timeouts.git_s),
                retry_policy=RetryPolicy(maximum_attempts=3),
            )
        except ActivityError:
            workflow.logger.warning("could not release the run's worktrees; they are only caches")

    # -- state -------------------------------------------------------------------------------------

    def _require_state(self) -> RunState:
        if self._state is None:
            raise ApplicationError("run state missing", non_retryable=True)
        return self._state

    def _update(self, **changes: object) -> None:
        self._state = self._require_state().model_copy(update=changes)

    def _set_phase(self, phase: RunPhase) -> None:
        self._update(phase=phase)
        state = self._require_state()
        workflow.upsert_search_attributes(
            [STATUS.value_set(phase), REPO.value_set(state.repo_path), NEEDS_REVIEW.value_set(False)]
        )

    def _set_task(self, task_id: str, *, state: TaskState, **changes: object) -> None:
        tasks = [
            task.model_copy(update={"state": state, **changes}) if task.id == task_id else task
            for task in self._require_state().tasks
        ]
        self._update(tasks=tasks)


def _failing(report: GateReport) -> str:
    return "; ".join(f"{result.gate}: {result.summary}" for result in report.results if not result.passed)
