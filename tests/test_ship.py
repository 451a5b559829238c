"""Shipping by push and pull request on a real Temporal server, against a bare git remote and a local stand-in
for the GitHub REST API. A ship step retried after its side effect pushes once and opens one pull request."""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from pathlib import Path
from typing import Any

import pytest
from temporalio.client import Client, WorkflowHandle

from darkfactory.constants import run_workflow_id
from darkfactory.contracts import RunState, Timeouts
from darkfactory.testing.fake_github import FakeGitHub
from darkfactory.workflows import FactoryRunWorkflow
from tests.conftest import DEMO, git, request_for, run_to_end
from tests.test_durability import Worker
from tests.test_escalation import address, cli, started, with_policy

TOKEN = "ghp_test_not_a_real_token_0123456789"


def bare_remote(repo: Path, tmp_path: Path) -> Path:
    remote = tmp_path / "remote.git"
    git(tmp_path, "init", "-q", "--bare", str(remote))
    git(remote, "config", "core.logAllRefUpdates", "always")
    git(repo, "remote", "add", "origin", str(remote))
    git(repo, "push", "-q", "origin", "main")
    return remote


def reflog_entries(remote: Path, branch: str) -> int:
    return len(git(remote, "reflog", "show", "--format=%H", f"refs/heads/{branch}").splitlines())


async def test_push_delivers_the_result_to_the_remote_base_branch(
    client: Client, factory_home: Path, demo_repo: Path, tmp_path: Path
) -> None:
    remote = bare_remote(demo_repo, tmp_path)

    summary = await run_to_end(
        client, factory_home, request_for(demo_repo, f"scripted:{DEMO / 'transcript.json'}", ship="push")
    )

    assert summary.succeeded, summary.error
    assert git(remote, "rev-parse", "refs/heads/main") == summary.shipped_sha
    assert summary.shipped_to == "origin/main"


async def test_a_pull_request_ship_retried_after_its_side_effect_pushes_once_and_opens_one_pr(
    client: Client, factory_home: Path, demo_repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    remote = bare_remote(demo_repo, tmp_path)
    with FakeGitHub(token=TOKEN) as github:
        # The first create succeeds on GitHub's side, then the connection drops: the activity fails after its
        # side effect, exactly as if the worker had died there, and Temporal retries it.
        github.drop_after_next_creates(1)
        monkeypatch.setenv("GITHUB_TOKEN", TOKEN)
        monkeypatch.setenv("GITHUB_API_URL", github.api_url)
        request = request_for(demo_repo, f"scripted:{DEMO / 'transcript.json'}", ship="pr", github_repo="acme/textkit")

        summary = await run_to_end(client, factory_home, request)
        pulls = github.pulls
        creates = github.count("POST", "/pulls")
        lookups = github.count("GET", "/pulls")

    assert summary.succeeded, summary.error
    head = f"factory/{request.run_id}"
    assert len(pulls) == 1 and creates == 1
    assert lookups >= 2  # the ship step ran again after the dropped connection, and found its pull request
    assert pulls[0]["head"]["ref"] == head and pulls[0]["base"]["ref"] == "main"
    assert f"darkfactory:run-{request.run_id}" in pulls[0]["body"]
    assert summary.pull_request_url and str(pulls[0]["number"]) in summary.pull_request_url
    assert git(remote, "rev-parse", f"refs/heads/{head}") == summary.shipped_sha
    assert reflog_entries(remote, head) == 1  # one push, although the ship step ran twice
    assert git(remote, "rev-parse", "refs/heads/main") == git(demo_repo, "rev-parse", "main")  # main untouched


async def test_a_pull_request_without_a_token_fails_the_run_with_what_to_set(
    client: Client, factory_home: Path, demo_repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bare_remote(demo_repo, tmp_path)
    monkeypatch.delenv("GITHUB_TOKEN", raising=False)
    request = request_for(demo_repo, f"scripted:{DEMO / 'transcript.json'}", ship="pr", github_repo="acme/textkit")

    summary = await run_to_end(client, factory_home, request)

    assert summary.phase == "failed" and "GITHUB_TOKEN" in summary.error


CHECK_FAILS = """[commands]
post_ship_check = "python -c 'import sys, textkit; sys.exit(1 if hasattr(textkit, \\"slugify\\") else 0)'"
"""


async def rolled_back(client: Client, handle: WorkflowHandle[Any, RunState]) -> RunState:
    """Follow the run event by event until it waits for a person after a rollback (no sleeping)."""
    async for _event in handle.fetch_history_events(wait_new_event=True):
        state = await handle.query(FactoryRunWorkflow.status)
        if state and state.rolled_back_sha:
            return state
    raise AssertionError("the run ended without rolling back")


@pytest.mark.parametrize("answer", ["reject", "approve"])
async def test_a_failing_post_ship_check_reverts_the_shipped_change_and_waits_for_a_person(
    client: Client, factory_home: Path, demo_repo: Path, answer: str
) -> None:
    with_policy(demo_repo, CHECK_FAILS)
    base_tree = git(demo_repo, "rev-parse", "main^{tree}")
    request = request_for(demo_repo, f"scripted:{DEMO / 'transcript.json'}", ship="merge")
    async with started(client, factory_home, request) as handle:
        state = await rolled_back(client, handle)
        # Reverted on main (and its checkout) by one compensating commit, and the run is in the queue.
        assert git(demo_repo, "rev-parse", "main") == state.rolled_back_sha
        assert git(demo_repo, "rev-parse", "main^{tree}") == base_tree
        assert not (demo_repo / "textkit" / "slug.py").exists()
        queue = cli(address(client), "queue", "--json")
        assert [(w["run_id"], w["task_id"]) for w in json.loads(queue.stdout) if w["run_id"] == request.run_id] == [
            (request.run_id, "")
        ]
        sent = cli(address(client), answer, request.run_id, "--by", "fay")
        assert sent.returncode == 0, sent.stderr
        summary = await handle.result()

    assert [(d.action, d.by) for d in summary.decisions] == [(answer, "fay")]
    assert "post-ship check failed" in summary.decisions[0].reason
    if answer == "reject":
        assert summary.phase == "failed" and "stays reverted" in summary.error
        assert git(demo_repo, "rev-parse", "main^{tree}") == base_tree
    else:
        assert summary.phase == "shipped"
        assert git(demo_repo, "rev-parse", "main") == summary.shipped_sha
        assert (demo_repo / "textkit" / "slug.py").exists()
    subjects = git(demo_repo, "log", "--format=%s", "main").splitlines()
    assert f"Revert darkfactory run {request.run_id}" in subjects


async def test_a_worker_killed_while_opening_the_pull_request_leaves_one_push_and_one_pr(
    client: Client, factory_home: Path, demo_repo: Path, tmp_path: Path
) -> None:
    remote = bare_remote(demo_repo, tmp_path)
    queue = f"ship-kill-{uuid.uuid4().hex}"
    request = request_for(
        demo_repo,
        f"scripted:{DEMO / 'transcript.json'}",
        ship="pr",
        github_repo="acme/textkit",
        timeouts=Timeouts(heartbeat_s=3.0, git_s=10.0),
    )
    with FakeGitHub(token=TOKEN) as github:
        arrived = github.hold_next_create()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("TEMPORAL_", "GITHUB_", "DARKFACTORY_"))}
        env.update(
            TEMPORAL_ADDRESS=address(client),
            DARKFACTORY_HOME=str(factory_home),
            GITHUB_TOKEN=TOKEN,
            GITHUB_API_URL=github.api_url,
        )
        first = Worker(env, queue, tmp_path / "worker-1.log")
        second: Worker | None = None
        try:
            handle = await client.start_workflow(
                FactoryRunWorkflow.run, request, id=run_workflow_id(request.run_id), task_queue=queue
            )
            assert await asyncio.to_thread(arrived.wait, 180), "the pull request was never opened"
            first.kill()  # mid-ship: pushed, and the create request is in flight
            github.release()  # the PR is created; its answer goes to a dead worker
            second = Worker(env, queue, tmp_path / "worker-2.log")
            summary = await asyncio.wait_for(handle.result(), timeout=300)
        finally:
            first.stop()
            if second is not None:
                second.stop()
        pulls = github.pulls
        creates = github.count("POST", "/pulls")

    assert summary.succeeded, summary.error
    head = f"factory/{request.run_id}"
    assert len(pulls) == 1 and creates == 1
    assert reflog_entries(remote, head) == 1
    assert git(remote, "rev-parse", f"refs/heads/{head}") == summary.shipped_sha
