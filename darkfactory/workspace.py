"""Git as the workspace state: validation, branches, worktrees, snapshots, merges, shipping.

Every function is idempotent for the same input: a worktree is only a cache of a sha and is reset to the
sha it is asked for; snapshot commits use a date chosen by the workflow, so a retried step produces the
same commit sha; ref updates are compare-and-swap; a merge recognises that it was already done.

Host-side git never runs hooks, fsmonitor, pagers, external diff drivers or the user's global config:
sandboxed code could have planted them in the worktree (sandbox-and-security-facts §1.3). Nor does it run the
target repository's own filter, merge or diff drivers (`filter.*.clean/smudge/process`, `merge.*.driver`,
`diff.*.command/textconv`): a `.gitattributes` in the agent's change decides which files they apply to, so
they are overridden with empty values on every call (git-lfs repositories are therefore seen as pointers).
"""

from __future__ import annotations

import functools
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import git

from darkfactory.constants import GIT_AUTHOR_EMAIL, GIT_AUTHOR_NAME, integration_branch, task_branch
from darkfactory.contracts import MergeResult, PreparedRun, ShipMode, ShipResult, WorkspaceRef

_HARDENING = (
    "-c",
    "core.hooksPath=/dev/null",
    "-c",
    "core.fsmonitor=false",
    "-c",
    "core.pager=cat",
    "-c",
    "commit.gpgsign=false",
    "-c",
    "diff.external=",
    "-c",
    "core.autocrlf=false",
    "-c",
    "advice.detachedHead=false",
)

# Files that tools and test runs create as side effects; they never belong in a snapshot.
_SNAPSHOT_EXCLUDES = (":(exclude,glob)**/__pycache__/**", ":(exclude,glob)**/.pytest_cache/**")

TASK_TRAILER = "Factory-Task"


class TargetError(ValueError):
    """The target repository is not usable; the message says what is wrong and what to do."""


class GitError(RuntimeError):
    """A git command failed."""


class ShipError(RuntimeError):
    """Shipping is not possible in the repository's current state; the message says why."""


@dataclass(frozen=True)
class GitRun:
    """Runs hardened git commands in one repository (or worktree) directory."""

    cwd: Path

    index_file: Path | None = None
    """A private index (GIT_INDEX_FILE) for building trees without touching any worktree's index."""

    def status(self, *args: str, commit_time: int | None = None, stdin: BinaryIO | None = None) -> tuple[int, str, str]:
        """Run git; return (exit status, stdout, stderr) without raising on a non-zero status."""
        command = ["git", *_HARDENING, *_driver_overrides(self.cwd), *args]
        env = _git_env(commit_time)
        if self.index_file is not None:
            env["GIT_INDEX_FILE"] = str(self.index_file)
        try:
            status, out, err = git.Git(str(self.cwd)).execute(
                command,
                env=env,
                istream=stdin,
                with_extended_output=True,
                with_exceptions=False,
                strip_newline_in_stdout=True,
            )
        except git.GitCommandNotFound as exc:
            raise GitError("git is not installed (apt-get install git)") from exc
        return int(status), str(out), str(err)

    def __call__(self, *args: str, commit_time: int | None = None, stdin: BinaryIO | None = None) -> str:
        status, out, err = self.status(*args, commit_time=commit_time, stdin=stdin)
        if status != 0:
            raise GitError(f"git {' '.join(args)} failed in {self.cwd}: {err.strip() or out}")
        return out

    def ok(self, *args: str) -> bool:
        return self.status(*args)[0] == 0


_DRIVER_KEYS = r"^(filter|merge|diff)\..+\.(clean|smudge|process|driver|command|textconv)$"


def _driver_overrides(cwd: Path) -> list[str]:
    """`-c key=` for every command-running driver the repository's config defines (includes resolved).

    Reading config runs nothing. The answer is cached per config file and its mtime: one extra git call per
    repository, not one per command."""
    config = _config_file(str(cwd))
    try:
        stamp = os.stat(config).st_mtime_ns if config else 0
    except OSError:
        stamp = 0
    return list(_overrides_for(str(cwd), config, stamp))


@functools.lru_cache(maxsize=256)
def _config_file(cwd: str) -> str:
    status, out, _ = git.Git(cwd).execute(
        ["git", *_HARDENING, "rev-parse", "--path-format=absolute", "--git-common-dir"],
        env=_git_env(None),
        with_extended_output=True,
        with_exceptions=False,
        strip_newline_in_stdout=True,
    )
    return os.path.join(str(out), "config") if status == 0 else ""


@functools.lru_cache(maxsize=256)
def _overrides_for(cwd: str, config: str, stamp: int) -> tuple[str, ...]:
    status, out, _ = git.Git(cwd).execute(
        ["git", *_HARDENING, "config", "--get-regexp", _DRIVER_KEYS],
        env=_git_env(None),
        with_extended_output=True,
        with_exceptions=False,
        strip_newline_in_stdout=True,
    )
    if status != 0:  # 1: no such keys
        return ()
    keys = sorted({line.split(" ", 1)[0] for line in str(out).splitlines() if line.strip()})
    overrides: list[str] = []
    for key in keys:
        overrides += ["-c", f"{key}="]
        if key.startswith("filter.") and key.endswith((".clean", ".smudge", ".process")):
            overrides += ["-c", f"{key.rsplit('.', 1)[0]}.required=false"]
    return tuple(_dedupe_pairs(overrides))


def _dedupe_pairs(args: list[str]) -> list[str]:
    seen: set[str] = set()
    out: list[str] = []
    for flag, value in zip(args[::2], args[1::2], strict=True):
        if value not in seen:
            seen.add(value)
            out += [flag, value]
    return out


def _git_env(commit_time: int | None) -> dict[str, str]:
    env = {
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_GLOBAL": os.devnull,
        "GIT_TERMINAL_PROMPT": "0",
        "GIT_AUTHOR_NAME": GIT_AUTHOR_NAME,
        "GIT_AUTHOR_EMAIL": GIT_AUTHOR_EMAIL,
        "GIT_COMMITTER_NAME": GIT_AUTHOR_NAME,
        "GIT_COMMITTER_EMAIL": GIT_AUTHOR_EMAIL,
    }
    if commit_time is not None:
        stamp = f"@{commit_time} +0000"
        env["GIT_AUTHOR_DATE"] = stamp
        env["GIT_COMMITTER_DATE"] = stamp
    return env


# --------------------------------------------------------------------------------------------------
# Validation and branches


def validate_target(repo_path: str, base_branch: str) -> str:
    """Check that the target is a usable repository with the base branch; return the base sha.

    Raises TargetError with a message that names the problem and what to do. Creates nothing.
    """
    path = Path(repo_path)
    if not path.is_absolute():
        raise TargetError(f"repository path {repo_path!r} must be absolute")
    if not path.exists():
        raise TargetError(f"repository path {repo_path} does not exist; pass --repo with a git repository")
    if not path.is_dir():
        raise TargetError(f"repository path {repo_path} is not a directory; pass --repo with a git repository")
    run = GitRun(path)
    if not run.ok("rev-parse", "--git-dir"):
        raise TargetError(f"{repo_path} is not a git repository; run `git init` there and commit, or pick another")
    top = Path(run("rev-parse", "--show-toplevel")).resolve()
    if top != path.resolve():
        raise TargetError(f"{repo_path} is inside the repository {top}; pass the repository root as --repo")
    if not base_branch or base_branch.startswith("-"):
        raise TargetError(f"base branch {base_branch!r} is not a valid branch name")
    if not run.ok("rev-parse", "--verify", "--quiet", f"refs/heads/{base_branch}^{{commit}}"):
        branches = run("for-each-ref", "--format=%(refname:short)", "refs/heads").split()
        known = ", ".join(branches) if branches else "none (the repository has no commits)"
        raise TargetError(f"branch {base_branch!r} does not exist in {repo_path} (branches: {known}); pass --base")
    return run("rev-parse", f"refs/heads/{base_branch}")


def branch_sha(repo_path: str, branch: str) -> str | None:
    run = GitRun(Path(repo_path))
    if not run.ok("rev-parse", "--verify", "--quiet", f"refs/heads/{branch}^{{commit}}"):
        return None
    return run("rev-parse", f"refs/heads/{branch}")


def ensure_branch(repo_path: str, branch: str, sha: str) -> str:
    """Create `branch` at `sha` unless it exists; return the branch's sha (an existing branch is kept)."""
    existing = branch_sha(repo_path, branch)
    if existing is not None:
        return existing
    run = GitRun(Path(repo_path))
    # The empty old value makes this create-only: a concurrent creator wins and we read its value.
    if not run.ok("update-ref", f"refs/heads/{branch}", sha, ""):
        existing = branch_sha(repo_path, branch)
        if existing is None:
            raise GitError(f"could not create branch {branch} at {sha[:12]} in {repo_path}")
        return existing
    return sha


def prepare_run(repo_path: str, run_id: str, base_branch: str) -> PreparedRun:
    """Validate the target and create the run's integration branch at the base head (idempotent)."""
    base_sha = validate_target(repo_path, base_branch)
    branch = integration_branch(run_id)
    head = ensure_branch(repo_path, branch, base_sha)
    return PreparedRun(base_sha=base_sha, integration_branch=branch, integration_sha=head)


def open_task_branch(repo_path: str, run_id: str, task_id: str, base_sha: str, reset: bool = False) -> WorkspaceRef:
    """Create the task branch at `base_sha` (or find it; with `reset`, move it there) and describe the workspace."""
    branch = task_branch(run_id, task_id)
    sha = ensure_branch(repo_path, branch, base_sha)
    if reset and sha != base_sha:
        _advance_ref(Path(repo_path), branch, base_sha, sha)
        sha = base_sha
    return WorkspaceRef(repo_path=repo_path, run_id=run_id, task_id=task_id, branch=branch, sha=sha)


# --------------------------------------------------------------------------------------------------
# Worktrees and snapshots


def ensure_worktree(repo_path: str, path: Path, sha: str) -> Path:
    """Make `path` a clean worktree of `repo_path` at `sha` (detached), creating it if missing.

    Whatever a crashed step left behind is discarded: the sha is the state, the directory a cache.
    """
    repo = GitRun(Path(repo_path))
    if path.exists() and not (path / ".git").exists():
        shutil.rmtree(path)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        repo("worktree", "prune")
        repo("worktree", "add", "--force", "--detach", str(path), sha)
        return path
    wt = GitRun(path)
    wt("reset", "--quiet", "--hard", sha)
    wt("clean", "-ffdxq")
    return path


def remove_worktree(repo_path: str, path: Path) -> None:
    if path.exists():
        shutil.rmtree(path, ignore_errors=True)
    GitRun(Path(repo_path))("worktree", "prune")


def snapshot(worktree: Path, workspace: WorkspaceRef, message: str, commit_time: int) -> str:
    """Commit everything in the worktree on top of `workspace.sha` and move the task branch there.

    Returns the new sha, or `workspace.sha` when nothing changed. The same worktree content, message
    and time always give the same sha, so a retried step converges on one commit.
    """
    wt = GitRun(worktree)
    wt("add", "--all", "--", ".", *_SNAPSHOT_EXCLUDES)
    if wt.ok("diff", "--cached", "--quiet", workspace.sha):
        return workspace.sha
    tree = wt("write-tree")
    new_sha = wt("commit-tree", tree, "-p", workspace.sha, "-m", message, commit_time=commit_time)
    wt("reset", "--quiet", "--soft", new_sha)
    _advance_ref(Path(workspace.repo_path), workspace.branch, new_sha, workspace.sha)
    return new_sha


def compensating_commit(repo_path: str, base_sha: str, shipped_sha: str, message: str, commit_time: int) -> str:
    """A commit on top of `shipped_sha` whose tree is `base_sha`'s: it undoes everything shipped since the base.
    The same inputs always give the same sha, so a retried rollback converges on one commit."""
    run = GitRun(Path(repo_path))
    tree = run("rev-parse", f"{base_sha}^{{tree}}")
    return run("commit-tree", tree, "-p", shipped_sha, "-m", message, commit_time=commit_time)


def restore_branch(repo_path: str, branch: str, sha: str, expected: str) -> None:
    """Move `branch` back to `sha` if it stands at `expected` (idempotent: already at `sha` is success)."""
    _advance_ref(Path(repo_path), branch, sha, expected)


def _advance_ref(repo_path: Path, branch: str, new_sha: str, expected_old: str) -> None:
    """Compare-and-swap a branch from `expected_old` to `new_sha`; already at `new_sha` is success."""
    run = GitRun(repo_path)
    if run.ok("update-ref", f"refs/heads/{branch}", new_sha, expected_old):
        return
    current = branch_sha(str(repo_path), branch)
    if current == new_sha:
        return
    raise GitError(
        f"branch {branch} moved to {str(current)[:12]} while the factory expected {expected_old[:12]}; "
        "someone else is writing to it"
    )


def changed_paths(repo_path: str, base_sha: str, sha: str) -> list[str]:
    """Paths that exist at `sha` and differ from `base_sha` (added, copied, modified, renamed)."""
    out = GitRun(Path(repo_path))("diff", "--name-only", "--no-renames", "--diff-filter=ACMR", base_sha, sha)
    return [line for line in out.splitlines() if line]


def diff_text(repo_path: str, base_sha: str, sha: str) -> str:
    return GitRun(Path(repo_path))("diff", "--no-ext-diff", "--no-textconv", base_sha, sha)


# --------------------------------------------------------------------------------------------------
# Merge and ship


def merge_task(
    repo_path: str, branch: str, task_sha: str, message: str, task_key: str, commit_time: int
) -> MergeResult:
    """Squash-merge `task_sha` into `branch` as one commit carrying a `Factory-Task: <key>` trailer.

    Uses `git merge-tree --write-tree`, so no worktree is touched; a retry finds its own commit by the
    trailer and returns it instead of merging twice.
    """
    run = GitRun(Path(repo_path))
    head = branch_sha(repo_path, branch)
    if head is None:
        raise GitError(f"integration branch {branch} does not exist in {repo_path}")
    if _head_carries_task(run, head, task_key):
        return MergeResult(merged=True, integration_sha=head)
    status, out, _err = run.status("merge-tree", "--write-tree", "--no-messages", "--name-only", head, task_sha)
    lines = out.splitlines()
    if status == 1:
        conflicts = sorted(set(lines[1:])) if len(lines) > 1 else []
        return MergeResult(merged=False, integration_sha=head, conflict=", ".join(conflicts) or "conflict")
    if status != 0:
        raise GitError(f"git merge-tree failed in {repo_path}: {_err.strip()}")
    tree = lines[0].strip()
    if tree == run("rev-parse", f"{head}^{{tree}}"):
        return MergeResult(merged=True, integration_sha=head)
    full_message = f"{message}\n\n{TASK_TRAILER}: {task_key}\n"
    new_sha = run("commit-tree", tree, "-p", head, "-m", full_message, commit_time=commit_time)
    _advance_ref(Path(repo_path), branch, new_sha, head)
    return MergeResult(merged=True, integration_sha=new_sha)


def _head_carries_task(run: GitRun, head: str, task_key: str) -> bool:
    trailers = run("log", "-1", "--format=%(trailers:key=" + TASK_TRAILER + ",valueonly)", head)
    return task_key in {line.strip() for line in trailers.splitlines()}


def tasks_on_branch(repo_path: str, base_sha: str, branch: str) -> list[str]:
    """Task keys merged onto `branch` since `base_sha`, oldest first."""
    run = GitRun(Path(repo_path))
    out = run(
        "log",
        "--reverse",
        "--first-parent",
        "--format=%(trailers:key=" + TASK_TRAILER + ",valueonly)",
        f"{base_sha}..refs/heads/{branch}",
    )
    return [line.strip() for line in out.splitlines() if line.strip()]


def ship(
    repo_path: str, mode: ShipMode, base_branch: str, base_sha: str, integration: str, integration_sha: str
) -> ShipResult:
    """Deliver the integration head by `mode`. `branch` leaves it where it is; `merge` fast-forwards base."""
    if mode == "branch":
        return ShipResult(mode=mode, shipped_sha=integration_sha, target=integration)
    current = branch_sha(repo_path, base_branch)
    if current == integration_sha:
        return ShipResult(mode=mode, shipped_sha=integration_sha, target=base_branch)
    if current != base_sha:
        raise ShipError(
            f"branch {base_branch} moved from {base_sha[:12]} to {str(current)[:12]} during the run; "
            f"the result stays on {integration} — merge it by hand"
        )
    checked_out = _worktree_with_branch(repo_path, base_branch)
    if checked_out is not None:
        wt = GitRun(checked_out)
        if wt("status", "--porcelain", "--untracked-files=no"):
            raise ShipError(
                f"{base_branch} is checked out in {checked_out} with uncommitted changes; "
                f"commit or stash them, then fast-forward to {integration} by hand"
            )
        # Fast-forward the checkout so its files match the branch, not only the ref.
        wt("merge", "--ff-only", "--quiet", integration_sha)
    else:
        _advance_ref(Path(repo_path), base_branch, integration_sha, base_sha)
    return ShipResult(mode=mode, shipped_sha=integration_sha, target=base_branch)


def _worktree_with_branch(repo_path: str, branch: str) -> Path | None:
    out = GitRun(Path(repo_path))("worktree", "list", "--porcelain")
    current: Path | None = None
    for line in out.splitlines():
        if line.startswith("worktree "):
            current = Path(line.removeprefix("worktree "))
        elif line == f"branch refs/heads/{branch}" and current is not None and not _is_bare(current):
            return current
    return None


def _is_bare(path: Path) -> bool:
    return not (path / ".git").exists() and (path / "HEAD").exists()


def list_branches(repo_path: str, prefix: str = "") -> list[str]:
    out = GitRun(Path(repo_path))("for-each-ref", "--format=%(refname:short)", f"refs/heads/{prefix}")
    return [line for line in out.splitlines() if line]


def git_dir(path: Path) -> Path:
    """The common .git directory of a repository or worktree."""
    return Path(GitRun(path)("rev-parse", "--path-format=absolute", "--git-common-dir"))


def read_file_at(repo_path: str, sha: str, path: str) -> str | None:
    """A file's text at a commit, or None when the commit has no such file."""
    status, out, _err = GitRun(Path(repo_path)).status("show", f"{sha}:{path}")
    return out if status == 0 else None


def diff_stat(repo_path: str, base_sha: str, sha: str) -> str:
    return GitRun(Path(repo_path))("diff", "--shortstat", base_sha, sha).strip() or "no changes"


def read_files(repo_path: str, sha: str, paths: Sequence[str]) -> dict[str, str]:
    run = GitRun(Path(repo_path))
    return {path: run("show", f"{sha}:{path}") for path in paths}
