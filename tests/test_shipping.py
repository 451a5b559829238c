"""Shipping to a remote: pushes against a real bare repository, pull requests against a local fake GitHub."""

from __future__ import annotations

from pathlib import Path

import pytest

from darkfactory.shipping import (
    GitHubClient,
    GitHubError,
    PullRequest,
    PushResult,
    idempotency_marker,
    open_pull_request,
    parse_github_remote,
    push_branch,
)
from darkfactory.testing.fake_github import FakeGitHub
from darkfactory.workspace import GitError, ShipError
from tests.conftest import git

TOKEN = "ghp_s3cr3tTokenValue0123456789"


def _commit(repo: Path, name: str) -> str:
    (repo / name).write_text(f"{name}\n")
    git(repo, "add", name)
    git(repo, "commit", "-q", "-m", f"add {name}")
    return git(repo, "rev-parse", "HEAD")


@pytest.fixture
def remote(tmp_path: Path) -> Path:
    bare = tmp_path / "remote.git"
    bare.mkdir()
    git(bare, "init", "-q", "--bare", "-b", "main")
    # Bare repositories keep no reflog by default; this one does, so tests can see every ref update.
    git(bare, "config", "core.logAllRefUpdates", "always")
    return bare


@pytest.fixture
def work(tmp_path: Path) -> Path:
    repo = tmp_path / "work"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    _commit(repo, "a.txt")
    return repo


def _remote_sha(remote: Path, branch: str) -> str:
    return git(remote, "rev-parse", f"refs/heads/{branch}")


def _reflog(remote: Path, branch: str) -> list[str]:
    return git(remote, "reflog", "show", "--format=%H", f"refs/heads/{branch}").splitlines()


# --------------------------------------------------------------------------------------------------
# push_branch


def test_push_creates_the_remote_branch(work: Path, remote: Path) -> None:
    sha = git(work, "rev-parse", "HEAD")
    result = push_branch(str(work), str(remote), sha, "factory/run-1")
    assert result == PushResult(pushed=True, already=False, sha=sha, remote_branch="factory/run-1")
    assert _remote_sha(remote, "factory/run-1") == sha


def test_pushing_the_same_sha_again_pushes_nothing(work: Path, remote: Path) -> None:
    sha = git(work, "rev-parse", "HEAD")
    push_branch(str(work), str(remote), sha, "factory/run-1")
    before = _reflog(remote, "factory/run-1")
    result = push_branch(str(work), str(remote), sha, "factory/run-1")
    assert (result.pushed, result.already, result.previous_sha) == (False, True, sha)
    assert _reflog(remote, "factory/run-1") == before == [sha]


def test_remote_at_an_ancestor_is_fast_forwarded(work: Path, remote: Path) -> None:
    first = git(work, "rev-parse", "HEAD")
    push_branch(str(work), str(remote), first, "out")
    second = _commit(work, "b.txt")
    result = push_branch(str(work), str(remote), second, "out")
    assert (result.pushed, result.already, result.previous_sha) == (True, False, first)
    assert _reflog(remote, "out") == [second, first]


def test_a_local_ref_name_is_resolved_to_its_sha(work: Path, remote: Path) -> None:
    result = push_branch(str(work), str(remote), "main", "out")
    assert result.sha == git(work, "rev-parse", "main") == _remote_sha(remote, "out")


def test_diverged_remote_branch_is_refused_naming_both_shas(work: Path, remote: Path, tmp_path: Path) -> None:
    base = git(work, "rev-parse", "HEAD")
    push_branch(str(work), str(remote), base, "out")
    other = tmp_path / "other"
    git(tmp_path, "clone", "-q", str(remote), str(other))
    git(other, "checkout", "-q", "out")
    theirs = _commit(other, "theirs.txt")
    git(other, "push", "-q", "origin", "out")
    ours = _commit(work, "ours.txt")

    with pytest.raises(ShipError, match="remote branch moved") as caught:
        push_branch(str(work), str(remote), ours, "out")
    assert theirs[:12] in str(caught.value) and ours[:12] in str(caught.value)
    assert _remote_sha(remote, "out") == theirs


def test_remote_sha_known_locally_but_not_an_ancestor_is_refused(work: Path, remote: Path) -> None:
    base = git(work, "rev-parse", "HEAD")
    git(work, "checkout", "-q", "-b", "side")
    side = _commit(work, "side.txt")
    push_branch(str(work), str(remote), side, "out")
    git(work, "checkout", "-q", "main")
    main = _commit(work, "main.txt")
    assert base != main
    with pytest.raises(ShipError, match="remote branch moved"):
        push_branch(str(work), str(remote), main, "out")


def test_unreachable_remote_error_carries_no_credentials(work: Path) -> None:
    sha = git(work, "rev-parse", "HEAD")
    url = f"http://x-access-token:{TOKEN}@127.0.0.1:9/owner/repo.git"
    with pytest.raises(GitError) as caught:
        push_branch(str(work), url, sha, "out")
    assert TOKEN not in str(caught.value) and TOKEN not in repr(caught.value)
    assert "127.0.0.1:9" in str(caught.value)


def test_a_configured_remote_name_is_pushed_to(work: Path, remote: Path) -> None:
    git(work, "remote", "add", "upstream", str(remote))
    result = push_branch(str(work), "upstream", "HEAD", "out")
    assert result.pushed and _remote_sha(remote, "out") == result.sha


def test_unknown_remote_name_is_refused(work: Path) -> None:
    with pytest.raises(ShipError, match="no remote named 'origin'"):
        push_branch(str(work), "origin", "HEAD", "out")


@pytest.mark.parametrize("branch", ["-x", "bad..name", "with space"])
def test_invalid_branch_names_are_refused(work: Path, remote: Path, branch: str) -> None:
    with pytest.raises(ShipError, match="not a valid branch name"):
        push_branch(str(work), str(remote), "HEAD", branch)


def test_unknown_commit_is_refused(work: Path, remote: Path) -> None:
    with pytest.raises(ShipError, match="does not exist"):
        push_branch(str(work), str(remote), "0" * 40, "out")


# --------------------------------------------------------------------------------------------------
# GitHub pull requests


def _open(client: GitHubClient, key: str = "run-1") -> PullRequest:
    return open_pull_request(client, "acme", "widgets", "factory/run-1", "main", "Factory run 1", "What changed.", key)


def test_open_pull_request_creates_one_pr_with_the_marker_and_headers() -> None:
    with FakeGitHub(token=TOKEN) as fake, GitHubClient(fake.api_url, token=TOKEN) as client:
        pr = _open(client)
        [stored] = fake.pulls
        assert pr == client.find_open_pr("acme", "widgets", "factory/run-1", "main")
        assert (stored["head"]["ref"], stored["base"]["ref"]) == ("factory/run-1", "main")
        assert stored["body"].startswith("What changed.") and idempotency_marker("run-1") in stored["body"]
        [post] = [r for r in fake.requests if r.method == "POST"]
        assert post.path == "/repos/acme/widgets/pulls"
        assert post.headers["authorization"] == f"Bearer {TOKEN}"
        assert post.headers["accept"] == "application/vnd.github+json"
        assert post.headers["x-github-api-version"] == "2022-11-28"


def test_opening_again_returns_the_same_pr_with_one_post() -> None:
    with FakeGitHub(token=TOKEN) as fake, GitHubClient(fake.api_url, token=TOKEN) as client:
        first = _open(client)
        second = _open(client)
        assert first == second
        assert fake.count("POST") == 1 and len(fake.pulls) == 1


def test_crash_after_create_is_recovered_without_a_second_pr() -> None:
    with FakeGitHub(token=TOKEN) as fake, GitHubClient(fake.api_url, token=TOKEN) as client:
        fake.drop_after_next_creates(1)
        with pytest.raises(GitHubError) as caught:
            _open(client)
        assert caught.value.retryable and caught.value.kind == "connection"
        pr = _open(client)
        assert len(fake.pulls) == 1 and fake.count("POST") == 1
        assert pr.number == fake.pulls[0]["number"]


def test_server_error_on_create_is_retryable_and_the_retry_creates() -> None:
    with FakeGitHub() as fake, GitHubClient(fake.api_url) as client:
        fake.fail_next_creates(1, status=502)
        with pytest.raises(GitHubError) as caught:
            _open(client)
        assert caught.value.retryable and caught.value.status == 502
        _open(client)
        assert len(fake.pulls) == 1 and fake.count("POST") == 2


def test_pr_carrying_the_marker_is_found_even_from_another_head() -> None:
    with FakeGitHub() as fake, GitHubClient(fake.api_url) as client:
        seeded = fake.add_pull("acme", "widgets", "renamed-head", "main", body=f"x\n{idempotency_marker('run-1')}")
        pr = _open(client)
        assert pr.number == seeded["number"]
        assert fake.count("POST") == 0


def test_422_already_exists_returns_the_existing_pr() -> None:
    with FakeGitHub() as fake, GitHubClient(fake.api_url) as client:
        seeded = fake.add_pull("acme", "widgets", "factory/run-1", "main")
        # Lists lag writes: both lookups miss, the create hits GitHub's duplicate check.
        fake.stale_next_lists(2)
        pr = _open(client)
        assert pr.number == seeded["number"]
        assert fake.count("POST") == 1 and len(fake.pulls) == 1


def test_wrong_token_gives_a_clear_401_without_the_token() -> None:
    wrong = "ghp_wrongTokenValue9876543210"
    with FakeGitHub(token=TOKEN) as fake, GitHubClient(fake.api_url, token=wrong) as client:
        with pytest.raises(GitHubError) as caught:
            _open(client)
        error = caught.value
        assert error.status == 401 and error.kind == "authentication" and not error.retryable
        assert "Bad credentials" in str(error) and "token" in str(error)
        for text in (str(error), repr(error), repr(error.args), repr(client)):
            assert wrong not in text and TOKEN not in text
        assert fake.count("POST") == 0


def test_unknown_repository_is_a_clear_404() -> None:
    with FakeGitHub(repos=["acme/other"]) as fake, GitHubClient(fake.api_url) as client:
        with pytest.raises(GitHubError, match="not found") as caught:
            _open(client)
        assert caught.value.status == 404 and not caught.value.retryable


def test_invalid_idempotency_key_is_refused_before_any_request() -> None:
    with FakeGitHub() as fake, GitHubClient(fake.api_url) as client:
        with pytest.raises(GitHubError, match="idempotency key"):
            _open(client, key="x --> <script>")
        assert fake.requests == []


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://github.com/acme/widgets", ("acme", "widgets")),
        ("https://github.com/acme/widgets.git", ("acme", "widgets")),
        ("https://github.com/acme/widgets/", ("acme", "widgets")),
        ("https://x-access-token:abc@github.com/acme/widgets.git", ("acme", "widgets")),
        ("git@github.com:acme/widgets.git", ("acme", "widgets")),
        ("git@github.com:acme/widgets", ("acme", "widgets")),
        ("ssh://git@github.com/acme/my.repo.git", ("acme", "my.repo")),
        ("https://gitlab.com/acme/widgets.git", None),
        ("https://github.com/acme", None),
        ("https://github.com/acme/widgets/tree/main", None),
        ("git@example.com:acme/widgets.git", None),
        ("/srv/git/widgets.git", None),
        ("", None),
    ],
)
def test_parse_github_remote(url: str, expected: tuple[str, str] | None) -> None:
    assert parse_github_remote(url) == expected
