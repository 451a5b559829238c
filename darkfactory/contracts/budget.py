"""What a model call must know to stay within the policy's `[budget]`: the limits and what is spent."""

from __future__ import annotations

from pydantic import Field

from darkfactory.contracts.base import Frozen
from darkfactory.contracts.messages import Usage
from darkfactory.policy import BudgetLimits


class BudgetCheck(Frozen):
    """Given to a model activity: the limits, and what the task and its run had spent when it was scheduled."""

    limits: BudgetLimits
    task_spent: Usage = Field(default_factory=Usage)
    run_spent: Usage = Field(default_factory=Usage)
    """The run's spend including this task's (as far as the task knows: tasks running beside it add theirs
    when they end, so the run's check is exact between tasks and conservative within them)."""
