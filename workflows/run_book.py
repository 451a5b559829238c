"""A run's state as one serialisable model (what the `status` query answers), and how a run fails.

Every change goes through `RunBook`, so the search attributes that make runs filterable in the web UI and in
`factory queue`, and the metrics of tasks that end, always agree with the state.
"""

from __future__ import annotations

import json
from datetime import datetime

from temporalio import workflow
from temporalio.exceptions import ApplicationError

from darkfactory.workflows.search_attributes import NEEDS_REVIEW, REPO, STATUS

with workflow.unsafe.imports_passed_through():
    from darkfactory.activities import metrics
    from darkfactory.constants import SUMMARY_MEMO
    from darkfactory.contracts import GateReport, RunPhase, RunState, TaskEscalation, TaskState, TaskSummary, Usage

MEMO_LIMIT = 256 * 1024
"""Bytes of JSON the live summary may take in the memo before it keeps only each task's state and figures."""
ENDED_STATES: tuple[TaskState, ...] = ("merged", "failed", "rejected", "cancelled")


class RunFailed(Exception):
    """Ends the run as `failed` with a message for the summary."""


class RunBook:
    """The run's live state; None only before the run method starts.

    The run's usage is always what it spent outside its tasks (the plan) plus every task's usage, work still
    in flight included (a task tells its run what it has spent when it escalates or is cancelled), so a
    cancelled or rejected run reports everything it cost. The state is kept in the run's memo as it changes
    (`SUMMARY_MEMO`), so `factory status` reads it with no worker running."""

    def __init__(self) -> None:
        self.state: RunState | None = None
        self.task_types: dict[str, str] = {}
        """Task id -> the plan's task type (the metrics' `task_type` label)."""
        self.outside_tasks = Usage()
        """What the run spent on calls that belong to no task (the plan)."""
        self._started: dict[str, datetime] = {}
        self._round_base: dict[str, TaskSummary] = {}
        """Task id -> its summary when its current merge round began (its earlier rounds' attempts and usage)."""
        self._memo: dict[str, object] | None = None

    @property
    def current(self) -> RunState:
        if self.state is None:
            raise ApplicationError("run state missing", non_retryable=True)
        return self.state

    def update(self, **changes: object) -> None:
        self.state = self.current.model_copy(update=changes)
        self._keep_in_memo()

    def _keep_in_memo(self) -> None:
        if not workflow.patched("live-summary-memo"):
            return
        memo = self.current.for_memo()
        if len(json.dumps(memo)) > MEMO_LIMIT:  # far below the server's limit: the essentials, not every gate
            memo = self.current.for_memo(essentials_only=True)
        if memo != self._memo:  # each upsert is an event in the history: only when something changed
            workflow.upsert_memo({SUMMARY_MEMO: memo})
            self._memo = memo

    def set_phase(self, phase: RunPhase) -> None:
        self.update(phase=phase)
        workflow.upsert_search_attributes(
            [STATUS.value_set(phase), REPO.value_set(self.current.repo_path), NEEDS_REVIEW.value_set(False)]
        )

    def set_task(self, task_id: str, *, state: TaskState, **changes: object) -> None:
        before = next((task.state for task in self.current.tasks if task.id == task_id), None)
        tasks = [
            task.model_copy(update={"state": state, **changes}) if task.id == task_id else task
            for task in self.current.tasks
        ]
        self.update(tasks=tasks, usage=self._total(tasks))
        if before is not None:
            self._measure(task_id, before, state)

    def spent_outside_tasks(self, usage: Usage) -> None:
        self.outside_tasks = self.outside_tasks + usage
        self.update(usage=self._total(self.current.tasks))

    def _total(self, tasks: list[TaskSummary]) -> Usage:
        total = self.outside_tasks
        for task in tasks:
            total = total + task.usage
        return total

    def begin_round(self, task_id: str) -> None:
        """A task's merge round starts: what the task reports from now on adds to what it has so far."""
        self._round_base[task_id] = self.task(task_id)

    def round_base(self, task_id: str) -> TaskSummary:
        return self._round_base.get(task_id) or self.task(task_id)

    def heard_from(self, update: TaskEscalation) -> dict[str, object]:
        """The summary fields a task's own report (its round so far) gives: attempts, usage, last gates. Empty
        for reports recorded before tasks sent their figures."""
        if not update.attempts and not update.usage.calls:
            return {}
        base = self.round_base(update.task_id)
        return {
            "attempts": base.attempts + update.attempts,
            "usage": base.usage + update.usage,
            "gates": update.gates or base.gates,
        }

    def spent_besides(self, task_id: str) -> Usage:
        """What the run has spent apart from the task's current round (which the task counts itself), for
        the run's budget in that task."""
        total = self.outside_tasks
        for task in self.current.tasks:
            total = total + (self._round_base.get(task_id, task).usage if task.id == task_id else task.usage)
        return total

    def _measure(self, task_id: str, before: TaskState, after: TaskState) -> None:
        if after == "running":
            self._started.setdefault(task_id, workflow.now())
        if after not in ENDED_STATES or before in ENDED_STATES:
            return
        meter = workflow.metric_meter()
        task_type = self.task_types.get(task_id, "unknown")
        metrics.record_task_ended(meter, after, task_type)
        if after == "merged" and task_id in self._started:
            metrics.record_time_to_merge(meter, task_type, workflow.now() - self._started[task_id])

    def task(self, task_id: str) -> TaskSummary:
        return next(task for task in self.current.tasks if task.id == task_id)


def failing_gates(report: GateReport) -> str:
    return "; ".join(f"{result.gate}: {result.summary}" for result in report.results if not result.passed)
