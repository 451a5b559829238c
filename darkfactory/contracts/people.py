"""People and the reviewer: decisions on escalated work, escalation state, the AI review."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from darkfactory.contracts.base import BlobRef, Frozen
from darkfactory.contracts.budget import BudgetCheck
from darkfactory.contracts.config import RunConfig
from darkfactory.contracts.gates import GateResult
from darkfactory.contracts.messages import Usage
from darkfactory.contracts.plans import PlannedTask

DecisionAction = Literal["approve", "reject", "retry"]


class DecisionInput(BaseModel):
    """What a person sends with `approve`, `reject` or `retry` (all optional, so a bare
    `temporal workflow signal --name approve` works). Unknown keys are ignored: people type these by hand."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    note: str = ""
    """Why; for `retry`, the guidance that reaches the next model request."""
    by: str = ""
    """Who decided; empty is recorded as `unknown`."""


class Decision(Frozen):
    """A decision on an escalated task, as recorded."""

    action: DecisionAction
    note: str = ""
    by: str = "unknown"
    at: datetime
    reason: str
    """What the task was escalated for."""


class EscalationState(Frozen):
    reason: str
    since: datetime
    attempt: int
    sha: str
    deadline: datetime | None = None


class ReviewFinding(Frozen):
    file: str = Field(description="Path of the file, relative to the repository root.")
    line: int | None = Field(default=None, description="Line in the new version of the file, if it applies.")
    severity: Literal["blocker", "major", "minor"] = "major"
    message: str = Field(min_length=1, description="What is wrong and what to do instead.")


class ReviewVerdict(Frozen):
    """The reviewer's answer, through the `submit_review` tool."""

    verdict: Literal["approve", "request_changes"]
    summary: str = Field(min_length=1)
    findings: list[ReviewFinding] = Field(default_factory=list)


class ReviewInput(Frozen):
    run_id: str
    task_id: str
    attempt: int
    repo_path: str
    base_sha: str
    sha: str
    spec: str
    task: PlannedTask
    gates: list[GateResult]
    model: str
    config: RunConfig
    max_attempts: int = 3
    budget: BudgetCheck | None = None
    """The policy's `[budget]` and what is spent; the activity refuses a call that could go past it."""


class ReviewResult(Frozen):
    verdict: ReviewVerdict
    usage: Usage
    transcript_ref: BlobRef
    scripted: bool = False


class AuditDecisionInput(Frozen):
    """A decision to write to the run's audit trail (the workflow decides; an activity writes)."""

    run_id: str
    task_id: str = ""
    decision: Decision
