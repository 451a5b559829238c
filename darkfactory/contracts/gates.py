"""The gates' boundary: one gate's verdict, a report of a gate run, and the gate activity's input."""

from __future__ import annotations

from pydantic import Field

from darkfactory.contracts.base import BlobRef, Frozen
from darkfactory.contracts.config import RunConfig
from darkfactory.policy import GateName, Policy, TaskType


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
