"""A task's spending against the policy's `[budget]`, and a run telling its tasks what it has spent.

Every model call of a task goes through its BudgetGuard. The call's activity is given the limits and what
the task and the run have spent, and refuses (OverBudget) a call that could go past them before anything is
sent. Then the task escalates with the figures: approve or retry grants one more of each budget and makes the
refused call; reject ends the task `rejected`. A deadline never raises a budget, so it rejects.

The run's figure in a task is what the run had spent when the task started plus the task's own; the run
signals a newer total whenever one of its tasks ends. Tasks running side by side do not see each other's
calls in flight, so with `max_parallel` > 1 a run can pass its budget by what its other running tasks spend
before they end; it starts no new task once its budget is spent (workflows/factory_run.py).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol, TypeVar

from temporalio import workflow
from temporalio.exceptions import ApplicationError

from darkfactory.workflows.steps import Ended, OverBudget

with workflow.unsafe.imports_passed_through():
    from darkfactory.budget import raised
    from darkfactory.constants import RUN_SPENT_SIGNAL, task_workflow_id
    from darkfactory.contracts import BudgetCheck, Decision, Usage
    from darkfactory.policy import BudgetLimits

DEADLINE_VETO = "a deadline never raises a budget"
GO_ON = "approve or retry to go on with one more of each budget; reject to end the task"


class _Spends(Protocol):
    @property
    def usage(self) -> Usage: ...


Result = TypeVar("Result", bound=_Spends)
Escalate = Callable[[str, str], Awaitable[Decision]]
"""The task's way of waiting for a person: (reason, deadline veto) -> decision."""


class BudgetGuard:
    """What a task has spent, and the budget each of its model calls is checked against."""

    def __init__(self) -> None:
        self.limits = BudgetLimits()
        self.spent = Usage()
        """Everything the task's model calls spent (refused calls spend nothing)."""
        self.run_spent = Usage()
        """What the run had spent outside this task, as last heard."""
        self.grants = 0
        self._escalate: Escalate | None = None

    def start(self, limits: BudgetLimits, run_spent: Usage, escalate: Escalate) -> None:
        self.limits = limits
        self.heard(run_spent)
        self._escalate = escalate

    def heard(self, run_spent: Usage) -> None:
        """The run's newer total (spending only grows, so an older figure arriving late is ignored)."""
        if run_spent.calls >= self.run_spent.calls:
            self.run_spent = run_spent

    def check(self) -> BudgetCheck | None:
        if not self.limits.any:
            return None  # no `[budget]`: activity inputs stay as they were before budgets existed
        return BudgetCheck(
            limits=raised(self.limits, self.grants), task_spent=self.spent, run_spent=self.run_spent + self.spent
        )

    async def call(self, make: Callable[[BudgetCheck | None], Awaitable[Result]]) -> Result:
        """Make one model call within budget; a refused call escalates and, when a person says go on, is
        made again with the budget raised."""
        while True:
            try:
                result = await make(self.check())
            except OverBudget as refused:
                if self._escalate is None:
                    raise Ended("failed", str(refused)) from refused
                decision = await self._escalate(f"{refused} ({GO_ON})", DEADLINE_VETO)
                if decision.action == "reject":
                    note = f": {decision.note}" if decision.note else ""
                    raise Ended("rejected", f"{refused}; rejected by {decision.by}{note}") from refused
                self.grants += 1
                continue
            self.spent = self.spent + result.usage
            return result


async def tell_running_tasks(run_id: str, spent: dict[str, Usage]) -> None:
    """Give each running task what the run has spent apart from the task's own round (which the task counts
    itself), so its calls are checked against the run's budget."""
    for task_id, spent_besides in spent.items():
        handle = workflow.get_external_workflow_handle(task_workflow_id(run_id, task_id))
        try:
            await handle.signal(RUN_SPENT_SIGNAL, spent_besides)
        except ApplicationError as exc:  # the task just ended: its result is on its way to the run
            workflow.logger.info("could not tell task %s what the run spent: %s", task_id, exc)
