"""Planning a run: ask the planner for a plan; an invalid one goes back to it with the problem."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from temporalio import workflow
from temporalio.exceptions import ActivityError, ApplicationError, is_cancelled_exception

from darkfactory.workflows.run_book import RunFailed

with workflow.unsafe.imports_passed_through():
    from darkfactory.activities.errors import INVALID_PLAN
    from darkfactory.activities.model import ModelActivities
    from darkfactory.contracts import BudgetCheck, PlanInput, PlanResult, PreparedRun, RunRequest
    from darkfactory.workflows.steps import MODEL_RETRY, cause_of, queue_for


async def plan_run(request: RunRequest, prepared: PreparedRun, budget: BudgetCheck | None) -> PlanResult:
    """Ask for a plan; an invalid one goes back to the planner with the problem, a bounded number of times."""
    config = request.config
    problem = ""
    for attempt in range(1, config.max_plan_attempts + 1):
        try:
            planned: PlanResult = await workflow.execute_activity_method(
                ModelActivities.plan_run,
                PlanInput(
                    run_id=request.run_id,
                    repo_path=request.repo_path,
                    base_sha=prepared.base_sha,
                    spec=request.spec,
                    config=config,
                    attempt=attempt,
                    problem=problem,
                    base_failures=prepared.baseline.failures if prepared.baseline else [],
                    base_failed=prepared.baseline.failed if prepared.baseline else 0,
                    budget=budget,
                ),
                start_to_close_timeout=timedelta(seconds=config.timeouts.model_call_s),
                summary=f"plan · attempt {attempt}",
                heartbeat_timeout=timedelta(seconds=config.timeouts.heartbeat_s),
                retry_policy=MODEL_RETRY,
                task_queue=queue_for(ModelActivities.plan_run),
            )
            return planned
        except ActivityError as exc:
            if is_cancelled_exception(exc):
                raise asyncio.CancelledError from exc  # the run was cancelled while planning
            cause = exc.cause
            if not (isinstance(cause, ApplicationError) and cause.type == INVALID_PLAN):
                raise RunFailed(cause_of(exc)) from exc
            problem = cause.message
            workflow.logger.info("plan %d refused: %s", attempt, problem)
    raise RunFailed(f"{problem} (after {config.max_plan_attempts} planning attempt(s))")
