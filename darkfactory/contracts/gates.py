"""The gates' boundary: one gate's verdict, a report of a gate run, and the gate activity's input."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from darkfactory.contracts.base import BlobRef, Frozen
from darkfactory.contracts.config import RunConfig
from darkfactory.policy import GateName, Policy, TaskType


class BaseFailure(Frozen):
    """A test that fails on the base commit, as the planner, the summary and the gates show it."""

    nodeid: str
    message: str = ""
    """The first line of its failure message."""


class BaselineSummary(Frozen):
    """The base commit's suite, run once per base tree and test command (with per-test coverage for pytest).

    The full measurement (every test's outcome, which files each test executed) is a blob; history carries
    only its ref, the counts and the first failing tests.
    """

    base_sha: str
    ref: BlobRef | None = None
    """The measurement itself (`darkfactory.gates.baseline.Baseline` as JSON)."""
    per_test: bool = False
    """Per-test results exist (pytest with a readable report); False for other test commands."""
    coverage: bool = False
    """Per-test coverage was measured; without it, affected tests come from the import graph."""
    exit_code: int | None = None
    passed: int = 0
    failed: int = 0
    """Tests that fail on the base (each failed again when re-run alone)."""
    skipped: int = 0
    failures: list[BaseFailure] = Field(default_factory=list)
    """The first failing tests, with their messages (all of them are in the blob)."""
    flaky: list[str] = Field(default_factory=list)
    """Tests that failed in the full run but passed when re-run alone."""
    notes: list[str] = Field(default_factory=list)
    details_ref: BlobRef | None = None
    """The measuring runs' full output."""
    duration_s: float = 0.0
    cached: bool = False
    """Measured by an earlier run on the same base tree and test command."""

    @property
    def red(self) -> bool:
        return self.failed > 0 or (not self.per_test and self.exit_code not in (None, 0))


class MeasureBaseInput(Frozen):
    run_id: str
    repo_path: str
    base_sha: str
    config: RunConfig
    policy: Policy = Field(default_factory=Policy)


GatePurpose = Literal["task", "regression", "integration", "post_ship"]
"""What a gate run judges: a task's change (witness required for features and bug fixes, the base's tests
run against it), a merge combined with work merged meanwhile, the integration branch before shipping, or
the post-ship check."""


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
    exact_tree: bool = False
    """The tests gate only: the whole suite passed in the commit's own tree (not in a judged tree, where the base's
    versions of edited tests and configuration ran). Then this tree needs no second full-suite run."""
    full_suite: bool = False
    """The tests gate only: the repository's whole suite ran (not only the tests the change affects). Counted by
    the benchmarks as full-suite runs."""
    touches_always_protected: bool = False
    """The scope gate only: the change touches CI configuration or the factory policy (`ALWAYS_PROTECTED`), or
    could not be measured. An escalation of such a change is rejected at its deadline, whatever the policy says."""


TYPES_NOT_CONFIGURED = "mypy not configured"
"""The types gate's summary on a tree whose configuration has no mypy: the same whatever the base."""


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
    types_base_sha: str = ""
    """When set, the types gate alone is judged against this older commit (the run's base, in the merge queue's
    checks): mypy follows imports across files, so a change can break the types of a file changed before it."""
    policy: Policy = Field(default_factory=Policy)
    task_type: TaskType = "feature"
    acceptance_ref: BlobRef | None = None
    """Held-out acceptance tests ({path: source} JSON blob), run outside the worktree."""
    acceptance_selection: list[str] | None = None
    """The held-out tests that gate the task (those failing on its base); None: all of them."""
    baseline: BaselineSummary | None = None
    """The run's base measured once: which tests fail there and what each executes. None: unmeasured."""
    purpose: GatePurpose = "task"
