"""The coding agent's loop: the brief of an attempt, one model turn, one batch of tool calls."""

from __future__ import annotations

from pydantic import Field

from darkfactory.contracts.base import BlobRef, Frozen
from darkfactory.contracts.budget import BudgetCheck
from darkfactory.contracts.config import RunConfig
from darkfactory.contracts.git import WorkspaceRef
from darkfactory.contracts.messages import ToolCall, ToolOutcome, Usage
from darkfactory.contracts.plans import PlannedTask
from darkfactory.policy import Policy, TaskType


class AttemptBrief(Frozen):
    """What the first request of an attempt is built from."""

    spec: str
    task: PlannedTask
    attempt: int
    max_attempts: int
    repo_path: str
    sha: str
    """The workspace sha the attempt starts from (for the repository listing)."""
    feedback: str = ""
    """Compact failure text from the previous attempt's gates; empty on attempt 1."""
    acceptance_names: list[str] = Field(default_factory=list)
    """Names of the held-out acceptance tests (never their code)."""


class AgentTurnInput(Frozen):
    run_id: str
    task_id: str
    attempt: int
    turn: int
    config: RunConfig
    transcript_ref: BlobRef | None
    """None on the first turn of an attempt: the activity builds the first request from `brief`."""
    brief: AttemptBrief | None = None
    budget: BudgetCheck | None = None
    """The policy's `[budget]` and what is spent; the activity refuses a call that could go past it."""


class AgentTurnResult(Frozen):
    transcript_ref: BlobRef
    """The transcript with the model's answer appended."""
    stop_reason: str | None
    tool_calls: list[ToolCall]
    text: str
    """The model's text this turn, truncated for history."""
    usage: Usage
    scripted: bool = False


class RunToolsInput(Frozen):
    run_id: str
    task_id: str
    attempt: int
    turn: int
    workspace: WorkspaceRef
    transcript_ref: BlobRef
    tool_calls: list[ToolCall]
    commit_time: int
    """Unix time used as the snapshot commit's date, fixed by the workflow so a retry yields the same sha."""
    policy: Policy | None = None
    """The run's policy and the task's type: the agent's tools refuse writes the task may not make.
    None (histories recorded before the tools knew): every path but `.git` may be written, as then."""
    task_type: TaskType | None = None


class RunToolsResult(Frozen):
    transcript_ref: BlobRef
    """The transcript with the tool results appended."""
    sha: str
    """The workspace snapshot after the calls (unchanged when nothing was written)."""
    outcomes: list[ToolOutcome]
