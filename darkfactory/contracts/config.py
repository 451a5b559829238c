"""What shapes a run, fixed when it starts: the request, its configuration and timeouts."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, model_validator

from darkfactory.contracts.base import RUN_ID_PATTERN, Frozen

ShipMode = Literal["branch", "merge", "push", "pr"]
Trigger = Literal["cli", "schedule", "issue", "alert", "backlog"]
"""What started a run (the `FactoryTrigger` search attribute): `factory run`, a Temporal Schedule's tick, a
GitHub issue or comment, a monitoring alert, or the repository's backlog."""
SandboxOptOut = Literal["flag", "policy", "scripted"]
"""Why a run may run commands without bubblewrap: `--allow-degraded-sandbox`, the policy's
`[sandbox] allow_degraded`, or a scripted model (its commands come from a recorded transcript)."""


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


class IssueRef(Frozen):
    """A GitHub issue a triggered run answers on: its outcome (and any escalation) is posted as a comment."""

    owner: str = Field(pattern=r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,38})$")
    repo: str = Field(pattern=r"^[A-Za-z0-9._-]{1,100}$")
    number: int = Field(ge=1)

    @property
    def full_name(self) -> str:
        return f"{self.owner}/{self.repo}"


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
    degraded_sandbox: SandboxOptOut | None = None
    """Set when the run was started where bubblewrap is unusable: the opt-out that allowed it. None: the
    sandbox was not degraded where the starter could see (in remote mode each worker checks its own)."""
    input_notes: list[str] = Field(default_factory=list)
    """What was removed from the spec before any prompt, blob or history saw it (secrets redacted, hidden
    text stripped), e.g. "spec: 1 secret redacted (anthropic-api-key)"."""
    trigger: Trigger = "cli"
    """What started the run; a `schedule` run takes its run id from its tick (see `triggers.ids`)."""
    report_to: IssueRef | None = None
    """The issue that asked for the run (issue triggers): the outcome is posted there when a token is set."""

    @property
    def scripted(self) -> bool:
        return self.model.startswith("scripted:")


class RunRequest(Frozen):
    """What a person (or schedule, or webhook) hands in."""

    run_id: str = Field(pattern=RUN_ID_PATTERN)
    repo_path: str = Field(min_length=1)
    """Absolute path of the target git repository, reachable from every worker."""
    spec: str = ""
    spec_path: str | None = None
    """A spec file in the repository, read at the base commit when the run prepares (so a schedule's spec
    can change under version control); the text read replaces `spec`."""
    base_branch: str = "main"
    config: RunConfig
    acceptance_tests: dict[str, str] = Field(default_factory=dict)
    """Held-out acceptance tests the spec carries ({file name: source}); they gate the plan's final tasks."""

    @model_validator(mode="after")
    def _spec_given(self) -> RunRequest:
        if not self.spec.strip() and not self.spec_path:
            raise ValueError("the spec is empty: give a file with content or a non-blank --spec-text")
        return self


def slugify_run_id(text: str) -> str:
    """A run id fragment from free text: lowercase, dashes, bounded."""
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return slug[:40] or "run"
