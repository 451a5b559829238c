"""The base commit's suite as measured once: every test's outcome and the files each test executed.

Stored as a blob (it can be large: one entry per test) and read back by every gate run of the run. It is
the ground truth for three questions: did this test fail before the change, which tests does a change to
this file affect, and which tests fail on the base at all (the planner and the summary show those).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from darkfactory.contracts import BaseFailure, BaselineSummary, BlobRef

BaseOutcome = Literal["passed", "failed", "error", "skipped"]
MAX_LISTED_FAILURES = 30
"""Failing tests carried in the summary (and so in history); the blob has all of them."""


class Baseline(BaseModel):
    """One measurement of a base commit's suite."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    base_sha: str
    test_command: list[str]
    per_test: bool
    """Per-test outcomes exist (pytest with a readable report)."""
    exit_code: int | None = None
    outcomes: dict[str, BaseOutcome] = Field(default_factory=dict)
    """Node id -> outcome. A test that failed in the full run and passed alone is `passed` (and in `flaky`)."""
    messages: dict[str, str] = Field(default_factory=dict)
    """Node id -> first line of the failure message, for failing tests."""
    flaky: list[str] = Field(default_factory=list)
    coverage_files: list[str] | None = None
    """Files (relative to the tree) some code executed while the suite ran; None: coverage not measured."""
    coverage_tests: dict[str, list[int]] = Field(default_factory=dict)
    """Node id -> indices into `coverage_files` that the test executed (setup, call and teardown)."""
    notes: list[str] = Field(default_factory=list)
    duration_s: float = 0.0

    @property
    def coverage(self) -> bool:
        return self.coverage_files is not None

    def failed(self, nodeid: str) -> bool:
        """Did the test fail on the base? A test whose file failed to collect there failed too."""
        outcome = self.outcomes.get(nodeid) or self.outcomes.get(nodeid.split("::", 1)[0])
        return outcome in ("failed", "error")

    @property
    def failing(self) -> list[str]:
        return sorted(nodeid for nodeid, outcome in self.outcomes.items() if outcome in ("failed", "error"))

    def tests_executing(self, files: set[str]) -> set[str]:
        """Tests that executed any of `files` on the base."""
        if self.coverage_files is None:
            return set()
        wanted = {index for index, path in enumerate(self.coverage_files) if path in files}
        return {nodeid for nodeid, indices in self.coverage_tests.items() if wanted.intersection(indices)}

    def executed_by_some_test(self, path: str) -> bool | None:
        """True: a test's own context ran the file; False: only import or collection did; None: nothing did."""
        if self.coverage_files is None or path not in self.coverage_files:
            return None
        index = self.coverage_files.index(path)
        return any(index in indices for indices in self.coverage_tests.values())

    def summary(self, ref: BlobRef | None, *, cached: bool = False) -> BaselineSummary:
        failing = self.failing
        return BaselineSummary(
            base_sha=self.base_sha,
            ref=ref,
            per_test=self.per_test,
            coverage=self.coverage,
            exit_code=self.exit_code,
            passed=sum(1 for outcome in self.outcomes.values() if outcome == "passed"),
            failed=len(failing),
            skipped=sum(1 for outcome in self.outcomes.values() if outcome == "skipped"),
            failures=[BaseFailure(nodeid=n, message=self.messages.get(n, "")) for n in failing[:MAX_LISTED_FAILURES]],
            flaky=self.flaky[:MAX_LISTED_FAILURES],
            notes=self.notes,
            duration_s=self.duration_s,
            cached=cached,
        )
