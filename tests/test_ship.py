"""Shipping by push and pull request on a real Temporal server, against a bare git remote and a local stand-in
for the GitHub REST API. A ship step retried after its side effect pushes once and opens one pull request."""

from __future__ import annotations

from pathlib import Path

import pytest
from temporalio.client import Client

from darkfactory.testing.fake_github import FakeGitHub
from tests.conftest import DEMO, git, request_for, run_to_end

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
