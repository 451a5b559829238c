"""What the gates are given: one commit checked out in a worktree, its base, the policy and the budget."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from darkfactory.blobs import BlobStore
from darkfactory.contracts import GatePurpose
from darkfactory.gates.baseline_data import Baseline
from darkfactory.policy import GateName, Policy, TaskType
from darkfactory.target_env import TargetEnv

DEFAULT_TEST_COMMAND = ("python", "-m", "pytest", "-q", "--tb=short", "-p", "no:cacheprovider")


@dataclass
class GateContext:
    """Everything the gates need about one commit checked out in a worktree."""

    worktree: Path
    sha: str
    changed: list[str]
    """Paths the change added or modified, relative to the worktree."""
    env: TargetEnv
    blobs: BlobStore
    test_command: Sequence[str] = DEFAULT_TEST_COMMAND
    timeout_s: float = 1200.0
    """Budget of the whole gate run, every command included."""
    on_tick: Callable[[], None] | None = None
    gates: Sequence[GateName] = ("syntax", "lint", "tests")
    repo_path: str = ""
    base_sha: str = ""
    """The commit the change is measured against."""
    policy: Policy = field(default_factory=Policy)
    task_type: TaskType = "feature"
    base_worktree: Path | None = None
    """`base_sha` checked out, for telling new problems from ones already there; None: every problem counts."""
    acceptance_dir: Path | None = None
    """Held-out acceptance tests, outside the worktree (the generator never sees them); None: none."""
    secret_values: Sequence[str] = ()
    """The worker's own credential values: an exact match in the change fails the secrets gate."""
    scratch: Path | None = None
    """A writable directory outside the worktree (reports the host reads back). None: a temporary one."""
    deadline: float | None = None
    """`time.monotonic()` by which every gate must be done; None: `timeout_s` after `run_gates` starts."""
    purpose: GatePurpose = "task"
    baseline: Baseline | None = None
    """The run's base suite, measured once. Its commit may be older than `base_sha`: a task branches from the
    integration head as it stands. None: nothing measured, every failure counts."""
    trees_dir: Path | None = None
    """Where the tests gate checks out the trees it builds (the judged tree, the witness tree); None: scratch."""
    acceptance_selection: Sequence[str] | None = None
    """Held-out tests (file names or node ids in `acceptance_dir`) that gate the task; None: all of them."""
    findings_cache: Path | None = None
    """Where the lint and types gates keep the base's findings by base tree (worker-local); None: no caching."""
