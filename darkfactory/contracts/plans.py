"""The planner's boundary: the plan (a DAG of tasks) and the planning activity's input and result."""

from __future__ import annotations

from pydantic import Field

from darkfactory.contracts.base import TASK_ID_PATTERN, BlobRef, Frozen
from darkfactory.contracts.budget import BudgetCheck
from darkfactory.contracts.config import RunConfig
from darkfactory.contracts.gates import BaseFailure
from darkfactory.contracts.messages import Usage
from darkfactory.policy import TaskType


class PlannedTask(Frozen):
    """One unit of work the planner hands to a coding agent."""

    id: str = Field(pattern=TASK_ID_PATTERN)
    """Short slug, unique within the plan, e.g. `add-slugify`."""
    title: str = Field(min_length=1, max_length=200)
    instructions: str = Field(min_length=1)
    """What the coding agent must do, self-contained."""
    type: TaskType = "feature"
    depends_on: list[str] = Field(default_factory=list)
    """Ids of tasks that must be merged before this one starts."""
    scope: list[str] = Field(default_factory=list)
    """Path globs the task is expected to touch (hints now; enforced by governance later)."""
    acceptance: list[str] = Field(default_factory=list)
    """Acceptance criteria in plain words."""


class Plan(Frozen):
    """The planner's answer: a summary and a DAG of tasks."""

    summary: str = Field(min_length=1)
    tasks: list[PlannedTask] = Field(min_length=1)


class PlanInput(Frozen):
    run_id: str
    repo_path: str
    base_sha: str
    spec: str
    config: RunConfig
    attempt: int = 1
    problem: str = ""
    """Why the previous plan was refused; the planner fixes it."""
    base_failures: list[BaseFailure] = Field(default_factory=list)
    """Tests that fail on the base commit (the first ones), so the plan can account for them."""
    base_failed: int = 0
    budget: BudgetCheck | None = None
    """The run's limits of policy's `[budget]` and what is spent; the activity refuses a call that could go past it."""
    """How many tests fail on the base in all."""


class PlanResult(Frozen):
    plan: Plan
    usage: Usage
    transcript_ref: BlobRef
    scripted: bool = False
