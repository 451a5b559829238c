"""The plain script the factory is compared with: the same git, edit, lint and test work, done directly.

What a careful person would run by hand for each task: a worktree on a new branch from the integration head,
write the task's files, ruff on them, the repository's pytest in the target environment the factory uses (not
sandboxed), commit, squash-merge into the integration branch; at the end ruff and pytest on the integration
branch and a fast-forward of `main` (the factory's final verification and ship). Figure 1 times it against
a sequential factory run; figure 5 takes its CPU time as the work no scheduler can avoid.
"""

from __future__ import annotations

import resource
import subprocess
import time
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from harness import git

from darkfactory.gates import DEFAULT_TEST_COMMAND
from darkfactory.gates.lint import ruff_binary
from darkfactory.target_env import TargetEnv, setup_environment


@dataclass(frozen=True)
class PlainRun:
    parts: dict[str, float]
    """Wall seconds per kind of step: git, edit, lint, tests."""
    cpu_s: float
    """User + system CPU seconds of every process the script ran (git, ruff, pytest and what they started)."""

    @property
    def wall_s(self) -> float:
        return sum(self.parts.values())


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def plain_script(
    repo: Path,
    changes: Sequence[Mapping[str, str]],
    env: TargetEnv,
    scratch: Path,
    *,
    final_lint: Sequence[str] | None = None,
) -> PlainRun:
    """Every change in `changes` (path -> text) as one task, one after another, then verify and ship.

    The final ruff covers `final_lint` (default: the whole tree, as figure 1 always did); a third-party package
    passes the changed files, as the factory's new-only lint sees it, since upstream code is not ours to lint.
    """
    parts: dict[str, float] = defaultdict(float)
    cpu_before = _children_cpu()

    def step(kind: str, argv: list[str], cwd: Path, *, environ: dict[str, str] | None = None) -> None:
        started = time.perf_counter()
        result = subprocess.run(argv, cwd=cwd, env=environ, capture_output=True, text=True)
        parts[kind] += time.perf_counter() - started
        if result.returncode != 0:
            raise RuntimeError(f"plain script: {' '.join(argv)} failed in {cwd}:\n{result.stdout}{result.stderr}")

    def git_step(cwd: Path, *args: str) -> None:
        started = time.perf_counter()
        git(cwd, *args)
        parts["git"] += time.perf_counter() - started

    ruff = str(ruff_binary())
    test_env = setup_environment(env.bin_dir)
    test = [str(env.python), *DEFAULT_TEST_COMMAND[1:]]
    integration = "plain/integration"
    integration_tree = scratch / "integration"
    git_step(repo, "worktree", "add", "-q", "-b", integration, str(integration_tree), "main")
    for index, files in enumerate(changes):
        branch = f"plain/task-{index:02d}"
        tree = scratch / f"task-{index:02d}"
        git_step(repo, "worktree", "add", "-q", "-b", branch, str(tree), integration)
        started = time.perf_counter()
        for path, text in files.items():
            (tree / path).parent.mkdir(parents=True, exist_ok=True)
            (tree / path).write_text(text)
        parts["edit"] += time.perf_counter() - started
        step("lint", [ruff, "check", "--no-cache", "--", *files], tree)
        step("tests", test, tree, environ=test_env)
        git_step(tree, "add", "-A")
        git_step(tree, "commit", "-q", "-m", f"task {index}")
        git_step(integration_tree, "merge", "--squash", "-q", branch)
        git_step(integration_tree, "commit", "-q", "-m", f"task {index} (squashed)")
        git_step(repo, "worktree", "remove", "--force", str(tree))
    step("lint", [ruff, "check", "--no-cache", "--", *(final_lint or ["."])], integration_tree)
    step("tests", test, integration_tree, environ=test_env)
    git_step(repo, "merge", "--ff-only", "-q", integration)
    git_step(repo, "worktree", "remove", "--force", str(integration_tree))
    return PlainRun(dict(parts), _children_cpu() - cpu_before)
