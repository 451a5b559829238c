"""Held-out acceptance tests: the writer's input and answer, and the suite a task is judged by."""

from __future__ import annotations

from pydantic import Field

from darkfactory.contracts.base import BlobRef, Frozen
from darkfactory.contracts.budget import BudgetCheck
from darkfactory.contracts.config import RunConfig
from darkfactory.contracts.messages import Usage
from darkfactory.contracts.plans import PlannedTask
from darkfactory.policy import Policy


class AcceptanceInput(Frozen):
    run_id: str
    task: PlannedTask
    spec: str
    repo_path: str
    base_sha: str
    config: RunConfig
    attempt: int = 1
    """Which writing this is: a later one rewrites tests that passed on the base already."""
    max_attempts: int = 1
    problem: str = ""
    """Why the previous tests were not good enough (they pass on the base, so they prove nothing)."""
    budget: BudgetCheck | None = None
    """The policy's `[budget]` and what is spent; the activity refuses a call that could go past it."""


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
    selection: list[str] | None = None
    """The held-out tests that gate the task: those failing on its base (file names or node ids in the suite).
    None: not checked on the base, all of them gate."""
    notes: list[str] = Field(default_factory=list)
    """What happened to the suite before it gated anything: rewrites, tests dropped for passing on the base."""


class CheckAcceptanceInput(Frozen):
    run_id: str
    task_id: str
    repo_path: str
    base_sha: str
    """The task's base: a held-out test that passes there already proves nothing."""
    files_ref: BlobRef
    config: RunConfig
    policy: Policy = Field(default_factory=Policy)


class AcceptanceCheck(Frozen):
    """The held-out tests run against the task's base."""

    biting: list[str] = Field(default_factory=list)
    """Fail on the base (file names or node ids): these gate the task."""
    toothless: list[str] = Field(default_factory=list)
    """Pass (or skip) on the base already."""
    problem: str = ""
    """Why they could not be run on the base; then all of them gate the task."""
