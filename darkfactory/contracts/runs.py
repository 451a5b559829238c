"""A run's live state, answered by the `status` query; the last one is the run summary."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from darkfactory.contracts.base import Frozen
from darkfactory.contracts.config import SandboxOptOut, ShipMode
from darkfactory.contracts.gates import BaselineSummary, GateResult
from darkfactory.contracts.messages import Usage
from darkfactory.contracts.people import Decision
from darkfactory.contracts.tasks import TaskSummary

RunPhase = Literal[
    "preparing",
    "measuring",
    "planning",
    "running",
    "verifying",
    "shipping",
    "checking",
    "shipped",
    "failed",
    "cancelled",
]


class RunState(Frozen):
    """Live state of a run, answered by the `status` query; the last one is the run summary."""

    run_id: str
    repo_path: str
    base_branch: str
    model: str
    scripted: bool
    phase: RunPhase
    degraded_sandbox: SandboxOptOut | None = None
    """The run's `config.degraded_sandbox`: it runs commands without bubblewrap, allowed by this opt-out."""
    input_notes: list[str] = Field(default_factory=list)
    """The run's `config.input_notes`: what was removed from its spec when it was started."""
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
    baseline: BaselineSummary | None = None
    """The base's suite, measured once at prepare: which tests fail there."""
    error: str = ""

    @property
    def succeeded(self) -> bool:
        return self.phase == "shipped" and all(task.state == "merged" for task in self.tasks)


RunSummary = RunState
