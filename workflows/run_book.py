"""A run's state as one serialisable model (what the `status` query answers), and how a run fails.

Every change goes through `RunBook`, so the search attributes that make runs filterable in the web UI and in
`factory queue` always agree with the state.
"""

from __future__ import annotations

from temporalio import workflow
from temporalio.exceptions import ApplicationError

from workflows.search_attributes import NEEDS_REVIEW, REPO, STATUS

with workflow.unsafe.imports_passed_through():
    from darkfactory.contracts import GateReport, RunPhase, RunState, TaskState, TaskSummary


class RunFailed(Exception):
    """Ends the run as `failed` with a message for the summary."""


class RunBook:
    """The run's live state; None only before the run method starts."""

    def __init__(self) -> None:
        self.state: RunState | None = None

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
        tasks = [
            task.model_copy(update={"state": state, **changes}) if task.id == task_id else task
            for task in self.current.tasks
        ]
        self.update(tasks=tasks)

    def task(self, task_id: str) -> TaskSummary:
        return next(task for task in self.current.tasks if task.id == task_id)


def failing_gates(report: GateReport) -> str:
    return "; ".join(f"{result.gate}: {result.summary}" for result in report.results if not result.passed)
