"""Pydantic models that cross every boundary: activity inputs and results, workflow state, queries.

They travel through Temporal's pydantic data converter, so they must stay small (ids, shas, blob refs,
short summaries) and must not build clocks or random values in defaults: workflows construct some of them.
One input model per activity keeps fields addable without breaking recorded histories.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from darkfactory.policy import GateName, Policy, TaskType

TASK_ID_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,47}$"
RUN_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"


class Frozen(BaseModel):
    """Immutable value crossing a boundary; unknown fields are refused so typos fail loudly."""

    model_config = ConfigDict(frozen=True, extra="forbid")


# --------------------------------------------------------------------------------------------------
# Blobs


class BlobRef(Frozen):
    """A claim check for a content-addressed blob (transcript, log, diff)."""

    digest: str = Field(pattern=r"^[0-9a-f]{64}$")
    """sha256 of the content; also its address in the store."""
    size: int
    """Length of the content in bytes."""


# --------------------------------------------------------------------------------------------------
# Models (the Messages API shape)


class Usage(Frozen):
    """Token usage of one or more model calls, including prompt-cache tokens."""

    input_tokens: int = 0
    output_tokens: int = 0
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0
    calls: int = 0
    """How many model calls this usage covers."""

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            input_tokens=self.input_tokens + other.input_tokens,
            output_tokens=self.output_tokens + other.output_tokens,
            cache_creation_input_tokens=self.cache_creation_input_tokens + other.cache_creation_input_tokens,
            cache_read_input_tokens=self.cache_read_input_tokens + other.cache_read_input_tokens,
            calls=self.calls + other.calls,
        )

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens + self.cache_creation_input_tokens + self.cache_read_input_tokens


CallPurpose = Literal["plan", "agent", "review", "acceptance"]


class CallContext(Frozen):
    """Where a model call sits in a run. Clients may use it for logging; the scripted client keys on it."""

    purpose: CallPurpose
    run_id: str
    task_id: str | None = None
    attempt: int = 0
    turn: int = 0

    @property
    def key(self) -> str:
        if self.purpose == "plan":
            return "plan" if self.attempt <= 1 else f"plan:{self.attempt}"
        return f"{self.purpose}:{self.task_id}:{self.attempt}:{self.turn}"


class ModelRequest(Frozen):
    """One Messages API request. `messages` and `tools` are Messages API JSON, passed through as-is."""

    model: str
    system: str
    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]] = Field(default_factory=list)
    tool_choice: dict[str, Any] | None = None
    max_tokens: int = 8192


class ModelResponse(Frozen):
    """One Messages API response, reduced to what the factory uses."""

    id: str
    model: str
    content: list[dict[str, Any]]
    """Content blocks as Messages API JSON (`text`, `tool_use`, ...)."""
    stop_reason: str | None
    usage: Usage
    scripted: bool = False
    """True when the answer came from a recorded transcript, not a model."""

    @property
    def tool_calls(self) -> list[ToolCall]:
        return [
            ToolCall(id=block["id"], name=block["name"], input=dict(block.get("input") or {}))
            for block in self.content
            if block.get("type") == "tool_use"
        ]

    @property
    def text(self) -> str:
        return "\n".join(block.get("text", "") for block in self.content if block.get("type") == "text")


class ToolCall(Frozen):
    """A tool_use block the model asked for."""

    id: str
    name: str
    input: dict[str, Any]


class ToolOutcome(Frozen):
    """What one tool call did, for the audit trail and the UI (the full text is in the transcript)."""

    tool_use_id: str
    name: str
    summary: str
    is_error: bool = False


# --------------------------------------------------------------------------------------------------
# Plans


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


# --------------------------------------------------------------------------------------------------
# Configuration of a run


ShipMode = Literal["branch", "merge", "push", "pr"]


class Timeouts(Frozen):
    """Activity timeouts in seconds. Tight heartbeats make a dead worker cost seconds, not minutes."""

    model_call_s: float = 300.0
    """Start-to-close of one model call."""
    heartbeat_s: float = 20.0
    """Heartbeat timeout of long activities; a killed worker's step is retried after this."""
    tools_s: float = 300.0
    """Start-to-close of one batch of tool calls."""
    gates_s: float = 1800.0
    """Start-to-close of one gate run (tests included)."""
    git_s: float = 120.0
    """Start-to-close of git bookkeeping steps (prepare, open, merge, ship)."""


class RunConfig(Frozen):
    """Everything that shapes a run, fixed when it starts (workflows read no environment)."""

    model: str
    """A Claude model name, or `scripted:/path/to/transcript.json`."""
    max_attempts: int | None = Field(default=None, ge=1, le=20)
    """Attempts per task before it escalates; None: the policy's `limits.max_attempts`."""
    max_turns: int = Field(default=30, ge=1, le=500)
    """Model turns per attempt."""
    max_tokens: int = Field(default=8192, ge=256)
    """`max_tokens` of each model call."""
    ship: ShipMode = "branch"
    remote: str = "origin"
    """The git remote `push` and `pr` ship to (a name or a URL)."""
    github_repo: str | None = None
    """`owner/repo` for `pr`; None: read from the remote's GitHub URL."""
    max_plan_attempts: int = Field(default=3, ge=1, le=10)
    """Plans the planner may submit before an invalid one fails the run."""
    max_parallel: int = Field(default=4, ge=1, le=64)
    """Tasks whose dependencies are merged run at the same time, up to this many."""
    timeouts: Timeouts = Field(default_factory=Timeouts)
    test_command: list[str] | None = None
    """The target's test command (argv). None: `python -m pytest -q`."""
    setup_commands: list[list[str]] | None = None
    """Commands (argv) that install the target's test environment after the venv exists. None: defaults."""

    @property
    def scripted(self) -> bool:
        return self.model.startswith("scripted:")


class RunRequest(Frozen):
    """What a person (or schedule, or webhook) hands in."""

    run_id: str = Field(pattern=RUN_ID_PATTERN)
    repo_path: str = Field(min_length=1)
    """Absolute path of the target git repository, reachable from every worker."""
    spec: str
    base_branch: str = "main"
    config: RunConfig
    acceptance_tests: dict[str, str] = Field(default_factory=dict)
    """Held-out acceptance tests the spec carries ({file name: source}); they gate the plan's final tasks."""

    @field_validator("spec")
    @classmethod
    def _spec_not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("the spec is empty: give a file with content or a non-blank --spec-text")
        return value


# --------------------------------------------------------------------------------------------------
# Gates


class GateResult(Frozen):
    """One deterministic gate's verdict on one commit. Binary: scores are not verdicts."""

    gate: GateName
    passed: bool
    summary: str
    """One line for people and the UI."""
    feedback: str = ""
    """Compact failure text for the next attempt's prompt (bounded in size); empty when passed."""
    details_ref: BlobRef | None = None
    """Full output in the blob store."""
    duration_s: float = 0.0
    needs_approval: str = ""
    """Passed, but a person must approve before merging (protected path, large diff); says why."""
    notes: list[str] = Field(default_factory=list)
    """Things worth knowing that are not failures: flaky tests, failures already present on the base."""


class GateReport(Frozen):
    """The gates run on one commit, cheapest first, stopping at the first failure."""

    sha: str
    results: list[GateResult]

    @property
    def passed(self) -> bool:
        return all(result.passed for result in self.results)

    @property
    def needs_approval(self) -> list[str]:
        return [f"{r.gate}: {r.needs_approval}" for r in self.results if r.needs_approval]

    @property
    def first_failure(self) -> GateResult | None:
        return next((r for r in self.results if not r.passed), None)

    @property
    def feedback(self) -> str:
        return "\n\n".join(
            f"## Gate `{r.gate}` failed: {r.summary}\n{r.feedback}".rstrip() for r in self.results if not r.passed
        )


# --------------------------------------------------------------------------------------------------
# Activity inputs and results


class PrepareRunInput(Frozen):
    run_id: str
    repo_path: str
    base_branch: str
    acceptance_tests: dict[str, str] = Field(default_factory=dict)


class PreparedRun(Frozen):
    base_sha: str
    integration_branch: str
    integration_sha: str
    policy: Policy = Field(default_factory=Policy)
    """`.factory/policy.toml` at the base commit (defaults where it has none)."""
    acceptance: AcceptanceSuite | None = None
    """The spec's held-out acceptance tests, stored in the blob store."""


class PlanInput(Frozen):
    run_id: str
    repo_path: str
    base_sha: str
    spec: str
    config: RunConfig
    attempt: int = 1
    problem: str = ""
    """Why the previous plan was refused; the planner fixes it."""


class PlanResult(Frozen):
    plan: Plan
    usage: Usage
    transcript_ref: BlobRef
    scripted: bool = False


class OpenWorkspaceInput(Frozen):
    run_id: str
    task_id: str
    repo_path: str
    base_sha: str
    reset: bool = False
    """Move an existing task branch to `base_sha` (a new merge round)."""


class RestoreBranchInput(Frozen):
    """Move a branch back from `expected` to `sha` (undo a merge that broke the integration suite)."""

    run_id: str
    repo_path: str
    branch: str
    sha: str
    expected: str


class WorkspaceRef(Frozen):
    """A task's workspace: its branch and the sha it stands at. A worktree on disk is only a cache."""

    repo_path: str
    run_id: str
    task_id: str
    branch: str
    sha: str


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


class RunToolsResult(Frozen):
    transcript_ref: BlobRef
    """The transcript with the tool results appended."""
    sha: str
    """The workspace snapshot after the calls (unchanged when nothing was written)."""
    outcomes: list[ToolOutcome]


class RunGatesInput(Frozen):
    run_id: str
    task_id: str
    attempt: int
    repo_path: str
    sha: str
    base_sha: str
    """The commit the change is measured against (which files it touched)."""
    config: RunConfig
    policy: Policy = Field(default_factory=Policy)
    task_type: TaskType = "feature"
    acceptance_ref: BlobRef | None = None
    """Held-out acceptance tests ({path: source} JSON blob), run outside the worktree."""


class MergeTaskInput(Frozen):
    run_id: str
    task_id: str
    title: str
    repo_path: str
    integration_branch: str
    task_sha: str
    commit_time: int


class MergeResult(Frozen):
    merged: bool
    integration_sha: str
    conflict: str = ""
    """Conflicting paths when `merged` is False."""


class ShipInput(Frozen):
    run_id: str
    repo_path: str
    base_branch: str
    base_sha: str
    integration_branch: str
    integration_sha: str
    mode: ShipMode
    remote: str = "origin"
    github_repo: str | None = None
    title: str = ""
    body: str = ""


class RevertShippedInput(Frozen):
    """Undo a shipped change with a compensating commit, delivered the way the change was."""

    run_id: str
    repo_path: str
    ship: ShipInput
    shipped_sha: str
    reason: str
    commit_time: int


class ShipResult(Frozen):
    mode: ShipMode
    shipped_sha: str
    target: str
    """What now carries the result: the branch name (`remote/branch` for push and pr)."""
    pushed: bool = False
    """A push happened in this activity (False when the remote already had the sha: a retry)."""
    pull_request_url: str | None = None


# --------------------------------------------------------------------------------------------------
# Tasks and runs


TaskOutcome = Literal["passed", "failed", "rejected", "cancelled"]
TerminalState = Literal["merged", "failed", "rejected", "cancelled"]
TaskState = Literal["pending", "running", "merged", "failed", "rejected", "cancelled"]


class AttemptRecord(Frozen):
    attempt: int
    turns: int
    final_sha: str
    stop: Literal["end_turn", "turn_limit"]
    gates: list[GateResult]
    """Every gate that ran on this attempt, the reviewer's verdict last."""
    usage: Usage
    transcript_ref: BlobRef | None


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


class ReviewResult(Frozen):
    verdict: ReviewVerdict
    usage: Usage
    transcript_ref: BlobRef
    scripted: bool = False


class AcceptanceInput(Frozen):
    run_id: str
    task: PlannedTask
    spec: str
    repo_path: str
    base_sha: str
    config: RunConfig


class AcceptanceTestFile(Frozen):
    path: str = Field(pattern=r"^test_[a-z0-9_]{1,60}\.py$", description="A file name like test_slugify.py.")
    content: str = Field(min_length=1, description="The pytest module's source.")


class AcceptanceTests(Frozen):
    """What the acceptance-test writer submits through the `submit_tests` tool."""

    files: list[AcceptanceTestFile] = Field(min_length=1, max_length=10)


class AcceptanceSuite(Frozen):
    """Held-out tests for one task: stored as a blob of {path: source}; only names travel further."""

    files_ref: BlobRef | None = None
    names: list[str] = Field(default_factory=list)
    usage: Usage = Field(default_factory=Usage)


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


class TaskResult(Frozen):
    task_id: str
    outcome: TaskOutcome
    final_sha: str | None
    base_sha: str
    attempts: list[AttemptRecord]
    reason: str
    usage: Usage
    decisions: list[Decision] = Field(default_factory=list)


class TaskSummary(Frozen):
    id: str
    title: str
    state: TaskState
    reason: str = ""
    attempts: int = 0
    gates: list[GateResult] = Field(default_factory=list)
    """The last attempt's gate results."""
    merged_sha: str | None = None
    usage: Usage = Field(default_factory=Usage)
    decisions: list[Decision] = Field(default_factory=list)
    """Every human (or deadline) decision on this task, with who, when and the note."""


RunPhase = Literal[
    "preparing", "planning", "running", "verifying", "shipping", "checking", "shipped", "failed", "cancelled"
]


class RunState(Frozen):
    """Live state of a run, answered by the `status` query; the last one is the run summary."""

    run_id: str
    repo_path: str
    base_branch: str
    model: str
    scripted: bool
    phase: RunPhase
    integration_branch: str | None = None
    base_sha: str | None = None
    plan_summary: str = ""
    tasks: list[TaskSummary] = Field(default_factory=list)
    usage: Usage = Field(default_factory=Usage)
    ship_mode: ShipMode = "branch"
    shipped_sha: str | None = None
    shipped_to: str = ""
    """Where the result went: a branch, or `remote/branch`."""
    pull_request_url: str | None = None
    post_ship_check: list[GateResult] = Field(default_factory=list)
    rolled_back_sha: str | None = None
    """The compensating commit that undid the shipped change after its post-ship check failed."""
    decisions: list[Decision] = Field(default_factory=list)
    """Run-level decisions (after a rollback)."""
    final_gates: list[GateResult] = Field(default_factory=list)
    error: str = ""

    @property
    def succeeded(self) -> bool:
        return self.phase == "shipped" and all(task.state == "merged" for task in self.tasks)


RunSummary = RunState


def slugify_run_id(text: str) -> str:
    """A run id fragment from free text: lowercase, dashes, bounded."""
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return slug[:40] or "run"


PreparedRun.model_rebuild()
