"""`factory prune [--repo PATH] [--older-than 7d] [--dry-run] [--include-shipped]`: drop finished runs' git state.

A run leaves branches `factory/<run>/...` in the target repository (its integration branch and one per task)
and worktree caches under DARKFACTORY_HOME's `worktrees/<run>/` on the host that ran its steps. Runs keep them
for inspection; this removes them once Temporal says the run has ended. A running (or escalated, waiting)
run's branches are never touched, nor those of a run Temporal does not know (another namespace or server),
nor a branch checked out in a worktree of the user's; a shipped run's are kept unless `--include-shipped`,
because with `--ship branch` its integration branch is what it shipped. Branches are deleted compare-and-swap
(only at the sha listed), so one that moves meanwhile stays.
"""

from __future__ import annotations

import asyncio
import re
import shutil
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import typer

from darkfactory.cli.session import fail, find_run, open_session

app = typer.Typer()
UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION = re.compile(r"(\d+)([smhdw])")


def parse_duration(text: str) -> timedelta:
    """`30m`, `12h`, `7d`, `2w`, or parts of them together (`1d12h`); ValueError on anything else."""
    spelled = text.strip().lower()
    if not spelled or _DURATION.sub("", spelled):
        raise ValueError(text)
    return timedelta(seconds=sum(int(n) * UNITS[unit] for n, unit in _DURATION.findall(spelled)))


@dataclass
class RunGitState:
    """One run's branches (name -> sha) and worktrees in the repository, and whether they may go."""

    run_id: str
    branches: dict[str, str] = field(default_factory=dict)
    worktrees: list[Path] = field(default_factory=list)
    status: str = "unknown"
    keep: str = ""
    """Why it stays; empty: it goes."""


@app.command("prune")
def prune(
    repo: Path = typer.Option(Path("."), "--repo", help="The target git repository (default: this directory)."),
    older_than: str | None = typer.Option(
        None, "--older-than", help="Only runs that ended at least this long ago: 30m, 12h, 7d, 2w (default: any)."
    ),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print what would be removed; remove nothing."),
    include_shipped: bool = typer.Option(
        False, "--include-shipped", help="Remove shipped runs' branches too (with --ship branch: the result)."
    ),
) -> None:
    """Remove the branches `factory/<run>/...` and worktrees of runs that have ended. Running runs are kept."""
    from darkfactory.settings import FactorySettings
    from darkfactory.workspace import GitRun

    age: timedelta | None = None
    if older_than is not None:
        try:
            age = parse_duration(older_than)
        except ValueError:
            fail(f"--older-than {older_than!r} is not a duration; write it like 30m, 12h, 7d or 2w")
    path = repo.expanduser().resolve()
    if not path.is_dir() or not GitRun(path).ok("rev-parse", "--git-dir"):
        fail(f"{path} is not a git repository; pass --repo with the repository the runs worked on")
    runs = collect(path, FactorySettings().worktrees_dir)
    if not runs:
        typer.echo(f"no factory branches or worktrees in {path}")
        return
    asyncio.run(judge(runs, age, include_shipped))
    verb = "would remove" if dry_run else "removed"
    removed = 0
    for run in runs:
        if run.keep:
            for branch in run.branches:
                typer.echo(f"kept         {branch} (run {run.run_id}: {run.keep})")
            continue
        stuck = set() if dry_run else remove(path, run, FactorySettings().worktrees_dir)
        for worktree in run.worktrees:
            typer.echo(f"{verb:<12} worktree {worktree} (run {run.run_id}, {run.status})")
        for branch in run.branches:
            typer.echo(f"{'left' if branch in stuck else verb:<12} {branch} (run {run.run_id}, {run.status})")
        removed += len(run.branches) + len(run.worktrees) - len(stuck)
    typer.echo(f"{verb} {removed} branch(es) and worktree(s)" + (" (dry run: nothing changed)" if dry_run else ""))


def collect(repo: Path, worktrees_dir: Path) -> list[RunGitState]:
    """The runs that have branches in `repo`, or worktrees of it under `worktrees_dir`, by run id."""
    from darkfactory.workspace import GitRun

    git = GitRun(repo)
    runs: dict[str, RunGitState] = {}
    listing = git("for-each-ref", "--format=%(objectname) %(refname)", "refs/heads/factory/")
    for line in listing.splitlines():
        sha, ref = line.split(" ", 1)
        branch = ref.removeprefix("refs/heads/")
        parts = branch.split("/")
        if len(parts) >= 2 and parts[1]:  # run ids hold no `/` (RUN_ID_PATTERN)
            runs.setdefault(parts[1], RunGitState(parts[1])).branches[branch] = sha
    checked_out: dict[str, Path] = {}
    current: Path | None = None
    root = worktrees_dir.resolve()
    for line in git("worktree", "list", "--porcelain").splitlines():
        if line.startswith("worktree "):
            current = Path(line.removeprefix("worktree ")).resolve()
            if current.is_relative_to(root) and current != root:
                run_id = current.relative_to(root).parts[0]
                runs.setdefault(run_id, RunGitState(run_id)).worktrees.append(current)
        elif line.startswith("branch refs/heads/") and current is not None and not current.is_relative_to(root):
            checked_out[line.removeprefix("branch refs/heads/")] = current
    for run in runs.values():
        cache = root / run.run_id
        if cache.is_dir() and not run.worktrees:
            run.worktrees.append(cache)  # a cache git no longer knows (pruned), still on disk
        # A branch the user has checked out is theirs now: deleting it would leave that worktree on nothing.
        held = {branch: checked_out[branch] for branch in run.branches if branch in checked_out}
        if held:
            branch, where = next(iter(held.items()))
            run.keep = f"{branch} is checked out in {where}"
    return sorted(runs.values(), key=lambda run: run.run_id)


async def judge(runs: list[RunGitState], age: timedelta | None, include_shipped: bool) -> None:
    """Ask Temporal how each run stands, and set why each one stays (if it does)."""
    from temporalio.client import WorkflowExecutionStatus

    from darkfactory.contracts import RunState

    session = await open_session()
    client = session.client
    now = datetime.now(UTC)
    for run in runs:
        workflow_id = await find_run(client, run.run_id)
        if workflow_id is None:
            run.keep = run.keep or f"no such run in namespace {client.namespace}; delete by hand if it is yours"
            continue
        handle = client.get_workflow_handle(workflow_id, result_type=RunState)
        description = await handle.describe()
        status = description.status
        run.status = status.name.lower() if status is not None else "unknown"
        if status in (None, WorkflowExecutionStatus.RUNNING, WorkflowExecutionStatus.CONTINUED_AS_NEW):
            run.keep = run.keep or f"{run.status}: its branches are in use"
            continue
        if status == WorkflowExecutionStatus.COMPLETED:
            state = await handle.result()
            if state.phase == "shipped":
                run.status = f"shipped to {state.shipped_to}" if state.shipped_to else "shipped"
                if not include_shipped:
                    run.keep = run.keep or f"{run.status}; --include-shipped removes it"
            else:
                run.status = f"ended {state.phase}"
        closed = description.close_time
        if age is not None and closed is not None and now - closed < age:
            ago = _spell(now - closed)
            run.keep = run.keep or f"{run.status} {ago} ago, not yet {_spell(age)}"


def remove(repo: Path, run: RunGitState, worktrees_dir: Path) -> set[str]:
    """Worktrees first (a branch a worktree holds cannot be deleted), then the branches at their listed shas;
    return the branches that stay (one moved since it was listed)."""
    from darkfactory.workspace import GitRun

    git = GitRun(repo)
    for worktree in run.worktrees:
        if not git.ok("worktree", "remove", "--force", "--force", str(worktree)):
            shutil.rmtree(worktree, ignore_errors=True)
    cache = worktrees_dir / run.run_id
    if cache.is_dir():
        shutil.rmtree(cache, ignore_errors=True)
    git("worktree", "prune")
    stuck: set[str] = set()
    for branch, sha in run.branches.items():
        status, _out, err = git.status("update-ref", "-d", f"refs/heads/{branch}", sha)
        if status != 0:
            stuck.add(branch)
            typer.echo(f"could not remove {branch}: {err.strip()}", err=True)
    return stuck


def _spell(span: timedelta) -> str:
    seconds = int(span.total_seconds())
    for unit in ("w", "d", "h", "m"):
        if seconds >= UNITS[unit]:
            return f"{seconds // UNITS[unit]}{unit}"
    return f"{seconds}s"
