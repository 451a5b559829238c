"""FactoryRunWorkflow: prepare -> plan -> tasks as child workflows in dependency order -> merge each ->
verify the integration branch -> ship -> summary.

Business failures (a bad target, an invalid plan, a task that never passes) end the run with a summary
whose phase is `failed` and whose error names the problem; they do not fail the workflow, so the summary
is always there to read. The `status` query answers the live state at any time.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError

from darkfactory.workflows.budgets import tell_running_tasks
from darkfactory.workflows.escalation import DecisionDesk
from darkfactory.workflows.issue_reports import IssueReporter
from darkfactory.workflows.merge_queue import MergeQueue, integration_gates
from darkfactory.workflows.planning import plan_run
from darkfactory.workflows.run_book import RunBook, RunFailed, failing_gates
from darkfactory.workflows.shipping import Shipping
from darkfactory.workflows.task_rounds import TaskRounds, cancel_all

with workflow.unsafe.imports_passed_through():
    from darkfactory.activities import metrics
    from darkfactory.activities.gates import GateActivities
    from darkfactory.activities.workspace import WorkspaceActivities
    from darkfactory.budget import run_budget_spent
    from darkfactory.constants import TASK_ESCALATION_SIGNAL, TASK_READY_SIGNAL
    from darkfactory.contracts import (
        BaselineSummary,
        BudgetCheck,
        DecisionInput,
        GateReport,
        GateResult,
        MeasureBaseInput,
        Plan,
        PreparedRun,
        PrepareRunInput,
        RunGatesInput,
        RunRequest,
        RunState,
        TaskEscalation,
        TaskResult,
        TaskSummary,
        Usage,
    )
    from darkfactory.plan import blocked_by, ready_tasks
    from darkfactory.policy import GateName
    from darkfactory.triggers.ids import tick_run_id
    from darkfactory.workflows.steps import run_step

INTEGRATION_TASK = "_integration"
"""Worktree name for verifying the integration branch (not a valid task id, so it cannot collide)."""


@workflow.defn
class FactoryRunWorkflow:
    def __init__(self) -> None:
        self._book = RunBook()
        self._queue = MergeQueue(run_step)
        self._desk = DecisionDesk()
        self._shipping = Shipping(self._book, self._desk, run_step)
        self._reporter = IssueReporter()
        self._rounds = TaskRounds(self._book, self._queue)

    @workflow.query
    def status(self) -> RunState | None:
        """The live state of the run (None only before the run method starts)."""
        return self._book.state

    @workflow.run
    async def run(self, request: RunRequest) -> RunState:
        config = request.config
        if config.trigger == "schedule":
            # Every tick of a schedule starts this workflow with the same request; the tick's own id (Temporal
            # appends the tick's time to the workflow id) keeps its branches and tasks apart from other ticks'.
            request = request.model_copy(update={"run_id": tick_run_id(workflow.info().workflow_id, request.run_id)})
        self._reporter.request = request
        self._book.state = RunState(
            run_id=request.run_id,
            repo_path=request.repo_path,
            base_branch=request.base_branch,
            model=config.model,
            scripted=config.scripted,
            phase="preparing",
            ship_mode=config.ship,
            degraded_sandbox=config.degraded_sandbox,
            input_notes=config.input_notes,
        )
        self._book.set_phase("preparing")
        try:
            await self._run(request)
        except RunFailed as exc:
            self._book.update(error=str(exc))
            self._book.set_phase("failed")
        except asyncio.CancelledError:
            # A person cancelled the run: running tasks are cancelled with it (each closes Canceled after telling
            # the run what it spent), an in-flight merge is finished first (see MergeQueue.merge), and the
            # branches stay for inspection.
            for task in self._book.current.tasks:
                if task.state in ("pending", "running", "escalated"):
                    self._book.set_task(task.id, state="cancelled", reason="the run was cancelled")
            self._book.update(error="the run was cancelled; its branches are kept for inspection")
            self._book.set_phase("cancelled")
        if self._reporter.active:
            await self._reporter.ended(self._book.current)
        await self._release(request)
        return self._book.current

    async def _run(self, request: RunRequest) -> None:
        config = request.config
        timeouts = config.timeouts
        prepared: PreparedRun = await run_step(
            WorkspaceActivities.prepare_run,
            PrepareRunInput(
                run_id=request.run_id,
                repo_path=request.repo_path,
                base_branch=request.base_branch,
                acceptance_tests=request.acceptance_tests,
                spec_path=request.spec_path,
            ),
            timeouts.git_s,
        )
        self._book.update(integration_branch=prepared.integration_branch, base_sha=prepared.base_sha)
        if prepared.spec is not None:  # the spec lives in the repository: this is what it says at the base
            request = request.model_copy(update={"spec": prepared.spec})
            self._book.update(input_notes=[*self._book.current.input_notes, *prepared.spec_notes])

        self._book.set_phase("measuring")
        baseline: BaselineSummary = await run_step(
            GateActivities.measure_base,
            MeasureBaseInput(
                run_id=request.run_id,
                repo_path=request.repo_path,
                base_sha=prepared.base_sha,
                config=config,
                policy=prepared.policy,
            ),
            timeouts.gates_s,
            heartbeat_s=max(timeouts.heartbeat_s, 30.0),
        )
        self._book.update(baseline=baseline)
        prepared = prepared.model_copy(update={"baseline": baseline})

        self._book.set_phase("planning")
        planned = await plan_run(request, prepared, _run_budget(prepared, self._book.current.usage))
        plan = planned.plan
        self._book.task_types = {task.id: task.type for task in plan.tasks}
        self._book.update(
            plan_summary=plan.summary,
            tasks=[TaskSummary(id=task.id, title=task.title, type=task.type, state="pending") for task in plan.tasks],
        )
        self._book.spent_outside_tasks(planned.usage)

        self._book.set_phase("running")
        head = await self._run_tasks(request, plan, prepared)
        not_merged = [task.id for task in self._book.current.tasks if task.state != "merged"]
        if not_merged:
            raise RunFailed(f"{len(not_merged)} task(s) did not merge: {', '.join(not_merged)}; nothing shipped")

        self._book.set_phase("verifying")
        await self._verify(request, prepared, head)
        await self._shipping.ship(request, prepared, head)
        self._book.set_phase("shipped")

    async def _verify(self, request: RunRequest, prepared: PreparedRun, head: str) -> None:
        """The integration branch's gates on the final head, before anything ships: those the merge queue's checks
        do not already imply for this very tree."""
        config = request.config
        timeouts = config.timeouts
        gates = integration_gates(prepared.policy)
        kept: list[GateResult] = []
        verified = self._queue.verified
        if verified is not None and verified.head == head and workflow.patched("skip-verified-integration"):
            # The queue's head passed every integration gate on this very tree (in the check of its last batch,
            # judged from the head before it, each batch back to the base the same way; or in a one-task run's
            # task gates): verifying it again would repeat that work. Only mypy, which looks across files, is
            # run again on every file the run changed when more than one batch merged.
            again: list[GateName] = [] if verified.whole_run else [gate for gate in gates if gate == "types"]
            note = f"not run again: this very tree passed it in {verified.where}"
            kept = [g.model_copy(update={"notes": [*g.notes, note]}) for g in verified.gates if g.gate not in again]
            if not again:
                self._book.update(final_gates=kept)
                return
            gates = again
        report: GateReport = await run_step(
            GateActivities.run_gates,
            RunGatesInput(
                run_id=request.run_id,
                task_id=INTEGRATION_TASK,
                attempt=1,
                repo_path=request.repo_path,
                sha=head,
                base_sha=prepared.base_sha,
                config=config,
                # Each task's scope, acceptance and review were judged on its own change.
                policy=prepared.policy.model_copy(update={"gates": gates}),
                baseline=prepared.baseline,
                purpose="integration",
            ),
            timeouts.gates_s,
            heartbeat_s=max(timeouts.heartbeat_s, 30.0),
        )
        order = integration_gates(prepared.policy)
        self._book.update(final_gates=sorted([*kept, *report.results], key=lambda g: order.index(g.gate)))
        if not report.passed:
            metrics.record_gate_failures(workflow.metric_meter(), report.results, "integration")
            raise RunFailed("the integration branch failed its gates after merging: " + failing_gates(report))

    # -- people --------------------------------------------------------------------------------------

    @workflow.signal(name=TASK_ESCALATION_SIGNAL)
    async def task_escalation(self, update: TaskEscalation) -> None:
        """A task started (or stopped) waiting for a person: the run's state shows it as `escalated`, and the
        issue that asked for the run (if any) is told how to answer."""
        state = self._book.state
        task = next((t for t in state.tasks if t.id == update.task_id), None) if state else None
        if task is None or task.state not in ("running", "escalated"):
            return  # late or unknown: the task's own result decides its state
        figures = self._book.heard_from(update)
        if update.escalation is None:
            self._book.set_task(task.id, state="running", escalation=None, **figures)
            return
        self._book.set_task(task.id, state="escalated", escalation=update.escalation, **figures)
        if self._reporter.active:
            await self._reporter.escalated(task.id, update.escalation)

    @workflow.signal(name=TASK_READY_SIGNAL)
    def task_ready(self, result: TaskResult) -> None:
        """A task's gates passed: its result, to merge; the task stays open until told how the merge went."""
        self._rounds.ready[result.task_id] = result

    @workflow.signal
    def approve(self, input: DecisionInput | None = None) -> None:
        """After a rollback: ship the change again despite the failed post-ship check."""
        self._desk.answer("approve", input)

    @workflow.signal
    def reject(self, input: DecisionInput | None = None) -> None:
        """After a rollback: keep it reverted; the run ends failed."""
        self._desk.answer("reject", input)

    async def _run_tasks(self, request: RunRequest, plan: Plan, prepared: PreparedRun) -> str:
        """Run every task whose dependencies are merged, up to `max_parallel` at once; return the final head."""
        self._queue.head = prepared.integration_sha
        # The spec's own held-out tests judge the work as a whole: they gate the tasks nothing depends on.
        sinks = {task.id for task in plan.tasks} - {dep for task in plan.tasks for dep in task.depends_on}
        started: set[str] = set()
        running: dict[str, asyncio.Task[None]] = {}
        while True:
            ended = {t.id for t in self._book.current.tasks if t.state not in ("pending", "running", "escalated")}
            merged = {t.id for t in self._book.current.tasks if t.state == "merged"}
            for task_id, culprit in blocked_by(plan, ended - merged).items():
                if task_id not in started:
                    started.add(task_id)
                    self._book.set_task(
                        task_id, state="failed", reason=f"not started: dependency {culprit!r} did not merge"
                    )
            spent = run_budget_spent(self._book.current.usage, prepared.policy.budget, request.config.max_tokens)
            for task in ready_tasks(plan, merged, started):
                if len(running) >= request.config.max_parallel:
                    break
                started.add(task.id)
                if spent:
                    self._book.set_task(task.id, state="failed", reason=f"not started: {spent}")
                    continue
                running[task.id] = asyncio.create_task(self._rounds.run(request, task, prepared, task.id in sinks))
            if not running:
                return self._queue.head
            try:
                await workflow.wait(list(running.values()), return_when=asyncio.FIRST_COMPLETED)
                for task_id in [task_id for task_id, job in running.items() if job.done()]:
                    running.pop(task_id).result()  # a bug in a task's rounds should fail loudly, not hang the run
                if running and _run_budget(prepared, self._book.current.usage) is not None:
                    await tell_running_tasks(
                        request.run_id, {task_id: self._book.spent_besides(task_id) for task_id in running}
                    )
            except (asyncio.CancelledError, RunFailed):
                # Cancelled, or a merge that could not be done: the other tasks stop too and say what they spent.
                if workflow.patched("cancel-tasks"):
                    await cancel_all(self._rounds, running)
                raise

    async def _release(self, request: RunRequest) -> None:
        try:
            await workflow.execute_activity_method(
                WorkspaceActivities.release_workspaces,
                PrepareRunInput(run_id=request.run_id, repo_path=request.repo_path, base_branch=request.base_branch),
                start_to_close_timeout=timedelta(seconds=request.config.timeouts.git_s),
                summary="release workspaces",
                retry_policy=RetryPolicy(maximum_attempts=3),
            )
        except ActivityError:
            workflow.logger.warning("could not release the run's worktrees; they are only caches")


def _run_budget(prepared: PreparedRun, spent: Usage) -> BudgetCheck | None:
    """The run's `[budget]` for a call outside any task (the plan), or None when the run has no limit."""
    limits = prepared.policy.budget
    if limits.run_tokens is None and limits.run_usd is None:
        return None
    # The plan belongs to no task: only the run's limits apply to it.
    return BudgetCheck(limits=limits.model_copy(update={"task_tokens": None, "task_usd": None}), run_spent=spent)
