"""Held-out acceptance tests: the writer's input and answer, and the suite a task is judged by."""

from __future__ import annotations

from pydantic import Field

from darkfactory.contracts.base import BlobRef, Frozen
from darkfactory.contracts.config import RunConfig
from darkfactory.contracts.messages import Usage
from darkfactory.contracts.plans import PlannedTask


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
