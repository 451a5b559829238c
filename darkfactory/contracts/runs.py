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

    def for_memo(self, *, essentials_only: bool = False) -> dict[str, object]:
        """The state as the run's memo keeps it (`SUMMARY_MEMO`): everything `factory status` shows, without
        the gates' feedback texts (bounded, but a memo is rewritten on every change; they stay in the blob
        store and in the final summary)."""

        def short(gates: list[GateResult]) -> list[GateResult]:
            if essentials_only:
                return [GateResult(gate=gate.gate, passed=gate.passed, summary=gate.summary[:200]) for gate in gates]
            return [gate.model_copy(update={"feedback": ""}) for gate in gates]

        tasks = [
            task.model_copy(
                update={"gates": short(task.gates)} | ({"notes": [], "decisions": []} if essentials_only else {})
            )
            for task in self.tasks
        ]
        brief = self.model_copy(
            update={
                "tasks": tasks,
                "final_gates": short(self.final_gates),
                "post_ship_check": short(self.post_ship_check),
            }
        )
        return brief.model_dump(mode="json")

    @property
    def succeeded(self) -> bool:
        return self.phase == "shipped" and all(task.state == "merged" for task in self.tasks)

    # Derived, not stored: the workflow keeps only usage, and usage carries the cost and its split.

    @property
    def cache_read_share(self) -> float | None:
        """Input tokens read from the prompt cache over all input tokens of the run; None before any call."""
        return self.usage.cache_read_share

    @property
    def merged_tasks(self) -> int:
        return sum(1 for task in self.tasks if task.state == "merged")

    @property
    def cost_per_merged_task(self) -> float | None:
        """The run's whole cost (planning, failed attempts, reviews included) over the tasks it merged; None
        when the cost is unknown or nothing merged."""
        cost = self.usage.cost
        return cost / self.merged_tasks if cost is not None and self.merged_tasks else None

    def cost_by_purpose(self) -> dict[str, float | None]:
        """Cost per call purpose (plan, agent, review, acceptance); None where unknown."""
        return {purpose: part.cost for purpose, part in self.usage.by_purpose.items()}

    def usage_by_task_type(self) -> dict[str, Usage]:
        """Usage of the tasks per task type (planning is no task's); empty when the types are not known."""
        by_type: dict[str, Usage] = {}
        for task in self.tasks:
            if task.type is not None:
                by_type[task.type] = by_type.get(task.type, Usage()) + task.usage
        return by_type


RunSummary = RunState
