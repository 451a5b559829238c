"""`factory transcript` and `factory prune`: a real scripted run on the real Temporal server, then the agent's
conversation read back from the blob store, and the run's branches and worktrees removed once it has ended."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from temporalio.client import WorkflowExecutionStatus
from temporalio.testing import WorkflowEnvironment

from darkfactory.constants import run_workflow_id
from darkfactory.contracts import RunState
from darkfactory.workflows import FactoryRunWorkflow
from tests.conftest import DEMO, demo_transcript, git, make_repo, request_for, run_to_end
from tests.local_cli import branches, local_env

TRANSCRIPT = (
    "from darkfactory.cli.session import exit_cleanly; from darkfactory.cli.transcript import app; exit_cleanly(app)"
)
PRUNE = "from darkfactory.cli.session import exit_cleanly; from darkfactory.cli.prune import app; exit_cleanly(app)"
"""Each command group run the way `factory` runs its groups (starter.main mounts them)."""


def cli(program: str, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", program, *args], env=env, capture_output=True, text=True, timeout=300, cwd=DEMO
    )


class Ran:
    def __init__(self, state: RunState, repo: Path, env: dict[str, str]) -> None:
        self.state = state
        self.repo = repo
        self.env = env

    def transcript(self, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return cli(TRANSCRIPT, env or self.env, *args)


@pytest_asyncio.fixture(scope="module")
async def ran(temporal_env: WorkflowEnvironment, factory_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Ran:
    """One scripted demo run to its end (add-slugify fails its tests gate once, then passes), shipped by merge."""
    repo = make_repo(tmp_path_factory.mktemp("transcript") / "textkit")
    state = await run_to_end(
        temporal_env.client, factory_home, request_for(repo, f"scripted:{DEMO / 'transcript.json'}")
    )
    assert state.succeeded, state.error
    return Ran(state, repo, local_env(temporal_env, factory_home))


def scripted_calls(task_id: str, attempt: int) -> list[tuple[str, dict[str, Any]]]:
    turns = demo_transcript()["tasks"][task_id][attempt - 1]
    return [(b["name"], b["input"]) for turn in turns for b in turn["content"] if b["type"] == "tool_use"]


# -- transcript --------------------------------------------------------------------------------------------


def test_transcript_defaults_to_the_last_attempt_and_shows_its_tool_calls_and_the_feedback_it_got(ran: Ran) -> None:
    result = ran.transcript(ran.state.run_id, "add-slugify")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "attempt 2 of 2" in out
    assert "→ str_replace_based_edit_tool: str_replace textkit/slug.py (-1/+1 lines)" in out
    assert "→ bash: $ python -m pytest -q tests/test_slug.py" in out
    feedback = out.index("Feedback this attempt started with:")
    assert "## Gate `tests` failed" in out[feedback : out.index("── turn 1")]
    assert "PASS tests" in out and "PASS review" in out


def test_an_earlier_attempt_shows_its_own_calls_results_and_failing_gate(ran: Ran) -> None:
    result = ran.transcript(ran.state.run_id, "add-slugify", "--attempt", "1")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "attempt 1 of 2" in out and "Feedback this attempt started with" not in out
    calls = [line for line in out.splitlines() if line.startswith("→ ")]
    assert calls == [
        "→ str_replace_based_edit_tool: view textkit",
        "→ str_replace_based_edit_tool: create textkit/slug.py (8 lines)",
        "→ str_replace_based_edit_tool: create tests/test_slug.py (9 lines)",
    ]
    assert out.count("← str_replace_based_edit_tool result:") == 3
    assert "FAIL tests" in out and "turn 3 · assistant" in out


def test_json_has_every_call_the_scripted_model_made_with_its_untruncated_result(ran: Ran) -> None:
    for attempt in (1, 2):
        result = ran.transcript(ran.state.run_id, "add-slugify", "--attempt", str(attempt), "--json")
        assert result.returncode == 0, result.stderr
        data = json.loads(result.stdout)
        assert (data["attempt"], data["attempts"]) == (attempt, 2)
        messages = data["transcript"]["messages"]
        uses = [b for m in messages if m["role"] == "assistant" for b in m["content"] if b["type"] == "tool_use"]
        assert [(b["name"], b["input"]) for b in uses] == scripted_calls("add-slugify", attempt)
        results = {
            b["tool_use_id"] for m in messages if m["role"] == "user" for b in m["content"] if "tool_use_id" in b
        }
        assert results == {b["id"] for b in uses}
    assert "FAILED tests/test_slug.py::test_slugify_drops_punctuation_and_outer_spaces" in json.dumps(messages[0])


def test_text_cuts_the_long_brief_and_says_how_to_see_all_of_it(ran: Ran) -> None:
    out = ran.transcript(ran.state.run_id, "add-slugify").stdout
    brief = out[out.index("── user: the attempt's brief") : out.index("── turn 1")]
    assert f"more line(s); `factory transcript {ran.state.run_id} add-slugify --attempt 2 --json` shows all" in brief
    assert "── turn 1 · tool results" in out


def test_an_attempt_out_of_range_is_an_error_naming_the_attempts_there_are(ran: Ran) -> None:
    result = ran.transcript(ran.state.run_id, "add-slugify", "--attempt", "3")
    assert result.returncode == 2
    assert "error: task add-slugify of run" in result.stderr and "no attempt 3; its attempts are 1, 2" in result.stderr
    assert result.stdout == ""


def test_an_unknown_task_names_the_tasks_the_run_started(ran: Ran) -> None:
    result = ran.transcript(ran.state.run_id, "no-such-task")
    assert result.returncode == 2
    assert "has no task no-such-task" in result.stderr and "add-slugify, export-slugify" in result.stderr


def test_an_unknown_run_is_an_error(ran: Ran) -> None:
    result = ran.transcript("never-ran-" + uuid.uuid4().hex[:6], "add-slugify")
    assert result.returncode == 2 and "error: no run with id never-ran-" in result.stderr


def test_a_transcript_missing_from_this_hosts_blob_store_says_where_to_run_it(ran: Ran, tmp_path: Path) -> None:
    result = ran.transcript(ran.state.run_id, "export-slugify", env={**ran.env, "DARKFACTORY_HOME": str(tmp_path)})
    assert result.returncode == 2
    assert "the transcript of attempt 1 of task export-slugify is missing" in result.stderr
    assert "DARKFACTORY_HOME" in result.stderr


# -- prune -------------------------------------------------------------------------------------------------


def factory_branches(repo: Path) -> list[str]:
    return [branch for branch in branches(repo) if branch.startswith("factory/")]


def test_prune_keeps_a_shipped_runs_branches_unless_asked_and_a_dry_run_changes_nothing(ran: Ran) -> None:
    repo = ran.repo
    before = factory_branches(repo)
    assert f"factory/{ran.state.run_id}/integration" in before
    kept = cli(PRUNE, ran.env, "--repo", str(repo))
    assert kept.returncode == 0, kept.stderr
    assert f"kept         factory/{ran.state.run_id}/integration" in kept.stdout and "--include-shipped" in kept.stdout
    listed = cli(PRUNE, ran.env, "--repo", str(repo), "--dry-run", "--include-shipped")
    assert listed.returncode == 0, listed.stderr
    for branch in before:
        assert f"would remove {branch} (run {ran.state.run_id}, shipped to main)" in listed.stdout
    assert factory_branches(repo) == before


def test_prune_include_shipped_removes_a_finished_runs_branches_and_leaves_main(ran: Ran, tmp_path: Path) -> None:
    repo = tmp_path / "copy"
    shutil.copytree(ran.repo, repo)  # the other tests here read the run's own repository
    git(repo, "branch", "mine")
    main, head = git(repo, "rev-parse", "main"), git(repo, "symbolic-ref", "HEAD")
    assert factory_branches(repo)
    result = cli(PRUNE, ran.env, "--repo", str(repo), "--include-shipped")
    assert result.returncode == 0, result.stderr
    assert f"removed      factory/{ran.state.run_id}/add-slugify" in result.stdout
    assert factory_branches(repo) == []
    assert sorted(branches(repo)) == ["main", "mine"]
    assert (git(repo, "rev-parse", "main"), git(repo, "symbolic-ref", "HEAD")) == (main, head)
    assert git(repo, "status", "--porcelain") == ""


async def test_a_running_runs_branches_and_worktrees_are_kept_until_it_has_ended(
    temporal_env: WorkflowEnvironment, factory_home: Path, demo_repo: Path
) -> None:
    # No worker serves this queue: the run stays running, with the branches and worktree a run would have.
    request = request_for(demo_repo, f"scripted:{DEMO / 'transcript.json'}")
    run_id = request.run_id
    handle = await temporal_env.client.start_workflow(
        FactoryRunWorkflow.run, request, id=run_workflow_id(run_id), task_queue=f"nobody-{uuid.uuid4().hex}"
    )
    mine = [f"factory/{run_id}/integration", f"factory/{run_id}/add-slugify"]
    for branch in mine:
        git(demo_repo, "branch", branch, "main")
    worktree = factory_home / "worktrees" / run_id / "add-slugify"
    git(demo_repo, "worktree", "add", "--detach", str(worktree), "main")
    env = local_env(temporal_env, factory_home)
    try:
        kept = cli(PRUNE, env, "--repo", str(demo_repo), "--include-shipped")
        assert kept.returncode == 0, kept.stderr
        assert f"kept         factory/{run_id}/integration (run {run_id}: running" in kept.stdout
        assert sorted(factory_branches(demo_repo)) == sorted(mine) and worktree.is_dir()
    finally:
        await handle.terminate("the test is done with it")
    assert (await handle.describe()).status == WorkflowExecutionStatus.TERMINATED
    young = cli(PRUNE, env, "--repo", str(demo_repo), "--older-than", "1w")
    assert young.returncode == 0, young.stderr
    assert "not yet 1w" in young.stdout and sorted(factory_branches(demo_repo)) == sorted(mine)
    pruned = cli(PRUNE, env, "--repo", str(demo_repo))
    assert pruned.returncode == 0, pruned.stderr
    assert f"removed      worktree {worktree.resolve()} (run {run_id}, terminated)" in pruned.stdout
    assert factory_branches(demo_repo) == [] and not worktree.exists()
    assert str(worktree) not in git(demo_repo, "worktree", "list")


def test_branches_of_a_run_temporal_does_not_know_are_kept(temporal_env: WorkflowEnvironment, demo_repo: Path) -> None:
    ghost = f"factory/ghost-{uuid.uuid4().hex[:8]}/integration"
    git(demo_repo, "branch", ghost, "main")
    result = cli(PRUNE, local_env(temporal_env, demo_repo.parent / "home"), "--repo", str(demo_repo))
    assert result.returncode == 0, result.stderr
    assert f"kept         {ghost}" in result.stdout and "no such run in namespace default" in result.stdout
    assert factory_branches(demo_repo) == [ghost]


def test_a_bad_duration_is_a_clear_error(temporal_env: WorkflowEnvironment, demo_repo: Path) -> None:
    result = cli(
        PRUNE, local_env(temporal_env, demo_repo.parent / "home"), "--repo", str(demo_repo), "--older-than", "7x"
    )
    assert result.returncode == 2
    assert "error: --older-than '7x' is not a duration; write it like 30m, 12h, 7d or 2w" in result.stderr
