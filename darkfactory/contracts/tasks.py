"""One task's workflow boundary: its input, its attempts and its result."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from darkfactory.contracts.acceptance import AcceptanceSuite
from darkfactory.contracts.base import BlobRef, Frozen
from darkfactory.contracts.config import RunConfig
from darkfactory.contracts.gates import BaselineSummary, GateResult
from darkfactory.contracts.messages import Usage
from darkfactory.contracts.people import Decision, EscalationState
from darkfactory.contracts.plans import PlannedTask
from darkfactory.policy import Policy, TaskType

TaskOutcome = Literal["passed", "failed", "rejected", "cancelled"]


TerminalState = Literal["merged", "failed", "rejected", "cancelled"]


TaskState = Literal["pending", "running", "escalated", "merged", "failed", "rejected", "cancelled"]
"""`escalated` is a wait for a person, not an end (see TerminalState)."""


class AttemptRecord(Frozen):
    attempt: int
    turns: int
    final_sha: str
    stop: Literal["end_turn", "turn_limit"]
    gates: list[GateResult]
    """Every gate that ran on this attempt, the reviewer's verdict last."""
    usage: Usage
    transcript_ref: BlobRef | None


class TaskInput(Frozen):
    run_id: str
    repo_path: str
    spec: str
    task: PlannedTask
    base_sha: str
    """The integration head the task branches from."""
    config: RunConfig
    policy: Policy = Field(default_factory=Policy)
    """The policy at the run's base commit."""
    acceptance: AcceptanceSuite | None = None
    """Held-out tests the spec carried for this task; None: generate them from the acceptance criteria."""
    first_attempt: int = 1
    """Attempt numbers continue across merge rounds (a task re-attempted on a new integration head)."""
    feedback: str = ""
    """Why this round exists (a merge conflict, a regression); the first attempt's request carries it."""
    reset_branch: bool = False
    """Move the task branch to `base_sha` first (a new round starts from the new integration head)."""
    baseline: BaselineSummary | None = None
    """The run's base, measured once: the tests gate judges failures against it."""
    run_spent: Usage = Field(default_factory=Usage)
    """What the run had spent when the task started (for the run's `[budget]`; the run updates it by signal)."""


class TaskResult(Frozen):
    task_id: str
    outcome: TaskOutcome
    final_sha: str | None
    base_sha: str
    attempts: list[AttemptRecord]
    reason: str
    usage: Usage
    decisions: list[Decision] = Field(default_factory=list)
    notes: list[str] = Field(default_factory=list)
    """Things people should know that are not failures (held-out tests rewritten or dropped)."""


class TaskEscalation(Frozen):
    """A task tells its run that it waits for a person (`escalation`) or no longer does (None), and what it has
    done so far in this round: the run's summary shows it while the task is still open (or being cancelled)."""

    task_id: str
    escalation: EscalationState | None = None
    attempts: int = 0
    """Attempts finished in this round (0 in signals recorded before it was sent)."""
    usage: Usage = Field(default_factory=Usage)
    """Every model call of this round so far."""
    gates: list[GateResult] = Field(default_factory=list)
    """The last finished attempt's gate results."""


class TaskSummary(Frozen):
    id: str
    title: str
    state: TaskState
    type: TaskType | None = None
    """The planned task's type, for costs by type; None in summaries recorded before it was kept."""
    reason: str = ""
    attempts: int = 0
    gates: list[GateResult] = Field(default_factory=list)
    """The last attempt's gate results."""
    merged_sha: str | None = None
    usage: Usage = Field(default_factory=Usage)
    decisions: list[Decision] = Field(default_factory=list)
    """Every human (or deadline) decision on this task, with who, when and the note."""
    escalation: EscalationState | None = None
    """While `escalated`: why, since when, until when."""
    notes: list[str] = Field(default_factory=list)
