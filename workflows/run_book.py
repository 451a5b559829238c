"""A run's state as one serialisable model (what the `status` query answers), and how a run fails.

Every change goes through `RunBook`, so the search attributes that make runs filterable in the web UI and in
`factory queue`, and the metrics of tasks that end, always agree with the state.
"""

from __future__ import annotations

from datetime import datetime

from temporalio import workflow
from temporalio.exceptions import ApplicationError

from workflows.search_attributes import NEEDS_REVIEW, REPO, STATUS

with workflow.unsafe.imports_passed_through():
    from activities import metrics
    from darkfactory.contracts import GateReport, RunPhase, RunState, TaskState, TaskSummary

ENDED_STATES: tuple[TaskState, ...] = ("merged", "failed", "rejected", "cancelled")


class RunFailed(Exception):
    """Ends the run as `failed` with a message for the summary."""


class RunBook:
    """The run's live state; None only before the run method starts."""

    def __init__(self) -> None:
        self.state: RunState | None = None
        self.task_types: dict[str, str] = {}
        """Task id -> the plan's task type (the metrics' `task_type` label)."""
        self._started: dict[str, datetime] = {}

    @property
    def current(self) -> RunState:
        if self.state is None:
            raise ApplicationError("run state missing", non_retryable=True)
        return self.state

    def update(self, **changes: object) -> None:
        self.state = self.current.model_copy(update=changes)

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
        self.update(tasks=tasks)
        if before is not None:
            self._measure(task_id, before, state)

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
