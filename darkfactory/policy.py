"""Governance as data: the schema of `.factory/policy.toml` and the decisions it implies. Pure.

A repository without the file gets the defaults. Unknown keys are refused and every error names the key,
so a typo never silently weakens a rule. The policy in force is the one at the run's base commit: a
change to `.factory/` by the agent cannot loosen its own rules (and always needs approval).
"""

from __future__ import annotations

import fnmatch
import shlex
import tomllib
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

POLICY_PATH = ".factory/policy.toml"
ALWAYS_PROTECTED = (".factory/**", ".github/workflows/**", ".gitlab-ci.yml", ".ci/**", ".circleci/**",
                    "Jenkinsfile", "azure-pipelines.yml", ".pre-commit-config.yaml")  # fmt: skip
"""CI configuration and the policy itself: a change here always needs a person, whatever the file says."""
TEST_PATH_GLOBS = ("tests/**", "test/**", "**/tests/**", "**/test_*.py", "**/*_test.py", "test_*.py", "*_test.py",
                   "**/conftest.py", "conftest.py")  # fmt: skip


GateName = Literal["scope", "secrets", "syntax", "lint", "types", "tests", "acceptance", "review"]
TaskType = Literal["feature", "bugfix", "refactor", "test", "docs"]
ALL_GATES: tuple[GateName, ...] = ("scope", "secrets", "syntax", "lint", "types", "tests", "acceptance", "review")
MANDATORY_GATES: tuple[GateName, ...] = ("scope", "secrets")


class PolicyError(ValueError):
    """The policy file is invalid; the message names the key and what is wrong."""


class _Config(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


Argv = list[str]


def _argv(value: object) -> object:
    """Commands may be written as a string (split like a shell would, without running one) or as argv."""
    if isinstance(value, str):
        return shlex.split(value)
    return value


class Commands(_Config):
    setup: list[Argv] | None = None
    """Commands that install the test environment, run in a fresh venv with its bin first on PATH.
    None: pytest plus the repository's requirements*.txt."""
    test: Argv | None = None
    """The test command. None: `python -m pytest -q`."""
    post_ship_check: Argv | None = None
    """Run on what was shipped; if it fails, the shipped change is reverted and the run escalates."""

    @field_validator("setup", mode="before")
    @classmethod
    def _setup_argv(cls, value: object) -> object:
        return [_argv(item) for item in value] if isinstance(value, list) else value

    @field_validator("test", "post_ship_check", mode="before")
    @classmethod
    def _test_argv(cls, value: object) -> object:
        return _argv(value)


class TaskTypeRules(_Config):
    allowed: list[str] = Field(default_factory=lambda: ["**"])
    """Path globs a task of this type may touch."""
    denied: list[str] = Field(default_factory=list)
    """Path globs it may never touch (checked before `allowed`)."""
    allow_test_edits: bool = False
    """May it delete, skip or weaken existing tests? Only `test` tasks may, by default."""
    propose_protected: list[str] = Field(default_factory=list)
    """Protected path globs the agent of this type may write; such a change still waits for a person.
    Without an entry here the agent's editor refuses the write at once."""


def _default_task_types() -> dict[TaskType, TaskTypeRules]:
    return {"test": TaskTypeRules(allow_test_edits=True), "docs": TaskTypeRules(allowed=["**/*.md", "docs/**"])}


class Limits(_Config):
    max_attempts: int = Field(default=3, ge=1, le=20)
    """Attempts per task, whatever failed, before it escalates."""
    lint: int = Field(default=3, ge=1)
    """Attempts that may fail on lint."""
    tests: int = Field(default=3, ge=1)
    """Attempts that may fail on tests (and held-out acceptance tests)."""
    review: int = Field(default=2, ge=1)
    """Attempts the reviewer may send back while every deterministic gate passes."""
    max_diff_lines: int = Field(default=800, ge=1)
    """Added plus removed lines above which a change needs a person's approval. A binary file counts one
    line per `BINARY_BYTES_PER_LINE` bytes of its new content."""
    max_binary_bytes: int = Field(default=1 << 20, ge=0)
    """A binary file in a change larger than this fails the scope gate."""
    acceptance_rewrites: int = Field(default=2, ge=0, le=5)
    """Times the writer of held-out tests is asked again when some of its tests already pass on the base."""


class Escalation(_Config):
    deadline_hours: float | None = Field(default=72.0, gt=0)
    """How long an escalated task waits for a person; None waits forever."""
    default_action: Literal["approve", "reject"] = "reject"
    """What happens at the deadline."""
    on_caps_spent: Literal["escalate", "fail"] = "escalate"
    """When the attempt caps are spent: wait for a person, or end the task `failed`."""


class QuarantinedTest(_Config):
    test: str = Field(min_length=1)
    """A pytest node id, or the start of one: a file (`tests/test_net.py`), a class, a test, a parametrized case."""
    reason: str = Field(min_length=1)
    """Why it is ignored (an owner, a ticket); every run summary lists it."""

    def covers(self, nodeid: str) -> bool:
        return nodeid == self.test or nodeid.startswith((f"{self.test}::", f"{self.test}["))


class SuiteRules(_Config):
    """`[tests]`: what counts as a failure of the repository's test suite."""

    strict_base: bool = False
    """Count every failing test, also one that fails on the base and that the change does not affect."""
    quarantine: list[QuarantinedTest] = Field(default_factory=list)
    """The only way to ignore a test: its failures never count, and it is listed in every summary."""

    @field_validator("quarantine", mode="before")
    @classmethod
    def _with_reasons(cls, value: object) -> object:
        if isinstance(value, list):
            for item in value:
                if isinstance(item, str):
                    raise ValueError(
                        f'{item!r} has no reason; write each entry as {{ test = {item!r}, reason = "why" }}'
                    )
        return value

    def quarantined(self, nodeid: str) -> QuarantinedTest | None:
        return next((entry for entry in self.quarantine if entry.covers(nodeid)), None)


class SandboxRules(_Config):
    """`[sandbox]`: how untrusted code (tests, setup, the agent's shell) is isolated."""

    allow_degraded: bool = False
    """Run with a real model even where bubblewrap is unusable (commands then see the worker's host). The
    opt-out is recorded in the run summary; `--allow-degraded-sandbox` does the same for one run."""


class Review(_Config):
    enabled: bool = True
    model: str | None = None
    """Reviewer model; None uses the run's model (a different model gives a more independent review)."""


WHOLE_SUITE_IN_TASK_S = 2.0
"""Seconds the base's whole suite took (measured with coverage) below which a task runs all of it by default."""


class MergeQueueRules(_Config):
    """`[merge_queue]`: how tasks whose gates passed reach the integration branch."""

    batch: int = Field(default=8, ge=1, le=64)
    """Ready tasks merged together onto the head and checked with one run of the integration gates (the whole
    suite among them). A failing batch is bisected: the task that broke it goes back, the others merge."""
    wait_s: float = Field(default=5.0, ge=0, le=600)
    """How long a batch that is not full waits for more ready tasks, while other tasks are still working."""
    full_suite_in_tasks: bool | None = None
    """Run the whole suite in each task's gates too (true), or only the tests its change affects (false), the
    merge queue running the whole suite once per batch on the exact tree that becomes the integration head.
    Unset: the affected tests where the base's suite takes `WHOLE_SUITE_IN_TASK_S` or more, else the whole suite
    (finding the affected tests then costs about as much as running them all, and a task whose whole suite passed
    in its own tree needs no second run in the queue when nothing merged meanwhile)."""


class BudgetLimits(_Config):
    """`[budget]`: tokens (all of them: input, cache, output) and list-price dollars, per task and per run.
    None: no limit. Enforced before each model call (`darkfactory.budget`)."""

    task_tokens: int | None = Field(default=None, ge=1)
    task_usd: float | None = Field(default=None, gt=0)
    run_tokens: int | None = Field(default=None, ge=1)
    run_usd: float | None = Field(default=None, gt=0)

    @property
    def any(self) -> bool:
        return any(limit is not None for limit in (self.task_tokens, self.task_usd, self.run_tokens, self.run_usd))


class Policy(_Config):
    """The whole policy file. Every section is optional."""

    commands: Commands = Field(default_factory=Commands)
    gates: list[GateName] = Field(default_factory=lambda: list(ALL_GATES))
    """The gates to run, in order (cheapest first is the point). `scope` and `secrets` always run first,
    listed or not: a repository's policy cannot switch off what keeps CI changes and credentials out."""
    protected: list[str] = Field(default_factory=list)
    """Path globs whose change needs a person's approval, in addition to CI config and `.factory/`."""
    task_types: dict[TaskType, TaskTypeRules] = Field(default_factory=_default_task_types)
    limits: Limits = Field(default_factory=Limits)
    escalation: Escalation = Field(default_factory=Escalation)
    review: Review = Field(default_factory=Review)
    tests: SuiteRules = Field(default_factory=SuiteRules)
    sandbox: SandboxRules = Field(default_factory=SandboxRules)
    budget: BudgetLimits = Field(default_factory=BudgetLimits)
    """`[budget]`: task_tokens, task_usd, run_tokens, run_usd (see `darkfactory.budget`)."""
    merge_queue: MergeQueueRules = Field(default_factory=MergeQueueRules)

    def rules_for(self, task_type: TaskType) -> TaskTypeRules:
        # A file that configures one type keeps the defaults of the others (docs stay docs-only).
        defaults = _default_task_types()
        return self.task_types.get(task_type) or defaults.get(task_type) or TaskTypeRules()

    def is_protected(self, path: str) -> bool:
        return matches(path, [*ALWAYS_PROTECTED, *self.protected])

    def write_refusal(self, path: str, task_type: TaskType) -> str | None:
        """Why an agent of this task type may not write `path` (a repo-relative path), or None if it may.

        The editor asks before writing, so an attack on CI or the policy fails at the tool instead of
        becoming a person's approval request; the scope gate checks the same rules again on the commit."""
        rules = self.rules_for(task_type)
        if self.is_protected(path):
            if matches(path, rules.propose_protected):
                return None
            return (
                f"{path} is a protected path (CI configuration, the factory policy or the policy's `protected` "
                f"list); a {task_type} task may not change it"
            )
        if matches(path, rules.denied):
            return f"{path} matches a path a {task_type} task may never touch ({', '.join(rules.denied)})"
        if not matches(path, rules.allowed):
            return f"{path} is outside what a {task_type} task may touch ({', '.join(rules.allowed)})"
        return None


BINARY_BYTES_PER_LINE = 80
"""How many bytes of a binary file count as one line against `limits.max_diff_lines`."""


def is_always_protected(path: str) -> bool:
    """CI configuration and the policy itself: no repository's policy can let such a change through unattended."""
    return matches(path, ALWAYS_PROTECTED)


def matches(path: str, globs: list[str] | tuple[str, ...]) -> bool:
    """Glob match where `**/` also matches no directory at all (`**/x.py` matches `x.py`)."""
    for pattern in globs:
        if fnmatch.fnmatchcase(path, pattern):
            return True
        if pattern.startswith("**/") and fnmatch.fnmatchcase(path, pattern[3:]):
            return True
    return False


def is_test_path(path: str) -> bool:
    return matches(path, TEST_PATH_GLOBS)


def parse_policy(text: str | None, source: str = POLICY_PATH) -> Policy:
    """The policy from the file's text (None: no file, the defaults). Raises PolicyError naming the key."""
    if text is None:
        return Policy()
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise PolicyError(f"{source} is not valid TOML: {exc}") from exc
    try:
        policy = Policy.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in error['loc']) or '(top level)'}: {error['msg']}"
            for error in exc.errors()[:5]
        )
        raise PolicyError(f"{source}: {problems}") from exc
    # The repository's file may order and add gates, never drop these (the factory's own runs may: the
    # integration branch's whole-tree check has no scope to judge).
    gates = [*MANDATORY_GATES, *(gate for gate in policy.gates if gate not in MANDATORY_GATES)]
    return policy.model_copy(update={"gates": gates})
