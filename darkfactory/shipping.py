"""Shipping beyond the local repository: push a branch to a remote, open a GitHub pull request.

Both are idempotent, because a worker can die between the side effect and recording it and Temporal
will run the step again:

- `push_branch` reads the remote ref first and pushes only a fast-forward, leased on the value it read
  (compare-and-swap); a remote already at the sha is success without a push.
- `open_pull_request` looks for an open PR for head→base, then for one carrying its idempotency marker
  (an HTML comment in the body), before creating; GitHub's 422 "already exists" is read as success.

Nothing here retries: Temporal owns retries, and errors say whether one would help. The GitHub token and
any credentials embedded in a remote URL never appear in messages, reprs or results.
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import unquote, urlsplit

from darkfactory.contracts import Frozen
from darkfactory.github import (
    OWNER_NAME,
    REPO_NAME,
    GitHubClient,
    GitHubError,
    PullRequest,
    PullRequestExists,
    idempotency_marker,
)
from darkfactory.workspace import GitError, GitRun, ShipError

__all__ = [
    "GitHubClient",
    "GitHubError",
    "PullRequest",
    "PullRequestExists",
    "PushResult",
    "idempotency_marker",
    "open_pull_request",
    "parse_github_remote",
    "push_branch",
]

# --------------------------------------------------------------------------------------------------
# Pushing

# Repository config could have been planted by code the factory ran; these override what would execute
# a command (ssh wrapper, credential helper, remote-side programs) or hang waiting for a person.
_NETWORK_HARDENING = (
    "-c",
    "core.sshCommand=ssh -o BatchMode=yes",
    "-c",
    "credential.helper=",
    "-c",
    "protocol.ext.allow=never",
    # A stalled connection fails after a minute instead of outliving the activity's timeout.
    "-c",
    "http.lowSpeedLimit=1",
    "-c",
    "http.lowSpeedTime=60",
)

_SHA = re.compile(r"^[0-9a-f]{40}([0-9a-f]{24})?$")
_URL_USERINFO = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://)[^/@\s]+@")


class PushResult(Frozen):
    """What `push_branch` did to the remote branch."""

    pushed: bool
    """True when this call moved (or created) the remote branch."""
    already: bool
    """True when the remote branch was already at the sha, so nothing was pushed."""
    sha: str = ""
    remote_branch: str = ""
    previous_sha: str | None = None
    """The remote branch before the call; None when it did not exist."""


def push_branch(repo_path: str, remote: str, local_ref_sha: str, remote_branch: str) -> PushResult:
    """Make `refs/heads/<remote_branch>` on `remote` point at `local_ref_sha`, by fast-forward only.

    `remote` is a remote name or a URL/path. Raises ShipError when the remote branch has moved to a commit
    that is not an ancestor of the sha (someone else pushed), or for unusable input; GitError when the
    remote cannot be reached (worth retrying).
    """
    if not remote or remote.startswith("-"):
        raise ShipError(f"remote {_display_remote(remote)!r} is not a remote name, URL or path")
    ref = f"refs/heads/{remote_branch}"
    run = GitRun(Path(repo_path))
    if remote_branch.startswith("-") or not run.ok("check-ref-format", ref):
        raise ShipError(f"{remote_branch!r} is not a valid branch name")
    if local_ref_sha.startswith("-") or not run.ok("rev-parse", "--verify", "--quiet", f"{local_ref_sha}^{{commit}}"):
        raise ShipError(f"commit {local_ref_sha!r} does not exist in {repo_path}")
    sha = run("rev-parse", "--verify", f"{local_ref_sha}^{{commit}}")
    # A bare word is a remote name; a missing one is configuration to fix, not something a retry cures.
    bare_word = not any(c in remote for c in "/:\\") and not (Path(repo_path) / remote).exists()
    if bare_word and remote not in run("remote").split():
        raise ShipError(f"{repo_path} has no remote named {remote!r}; add it or pass a URL")

    current = _remote_ref(run, remote, ref)
    if current == sha:
        return PushResult(pushed=False, already=True, sha=sha, remote_branch=remote_branch, previous_sha=current)
    if current is not None and not _is_ancestor(run, current, sha):
        raise _moved(remote, remote_branch, current, sha)

    # The lease turns the push into compare-and-swap on the value just read (empty: must not exist yet).
    status, _out, err = run.status(
        *_NETWORK_HARDENING,
        "push",
        "--porcelain",
        "--no-verify",
        "--receive-pack=git-receive-pack",
        f"--force-with-lease={ref}:{current or ''}",
        remote,
        f"{sha}:{ref}",
    )
    if status == 0:
        return PushResult(pushed=True, already=False, sha=sha, remote_branch=remote_branch, previous_sha=current)
    # Rejected or failed midway: the remote decides what happened.
    after = _remote_ref(run, remote, ref)
    if after == sha:
        return PushResult(pushed=False, already=True, sha=sha, remote_branch=remote_branch, previous_sha=current)
    if after != current:
        raise _moved(remote, remote_branch, str(after), sha)
    raise GitError(
        f"git push of {sha[:12]} to {remote_branch} on {_display_remote(remote)} failed: {_redact(err.strip(), remote)}"
    )


def _remote_ref(run: GitRun, remote: str, ref: str) -> str | None:
    status, out, err = run.status(*_NETWORK_HARDENING, "ls-remote", "--upload-pack=git-upload-pack", remote, ref)
    if status != 0:
        raise GitError(f"cannot read {ref} from {_display_remote(remote)}: {_redact(err.strip(), remote)}")
    # ls-remote matches patterns by path suffix (refs/heads/x also matches refs/heads/y/refs/heads/x).
    for line in out.splitlines():
        value, _, name = line.partition("\t")
        if name == ref and _SHA.match(value):
            return value
    return None


def _is_ancestor(run: GitRun, ancestor: str, sha: str) -> bool:
    # A commit we do not have cannot be in our sha's history.
    if not run.ok("cat-file", "-e", f"{ancestor}^{{commit}}"):
        return False
    return run.ok("merge-base", "--is-ancestor", ancestor, sha)


def _moved(remote: str, branch: str, remote_sha: str, sha: str) -> ShipError:
    return ShipError(
        f"remote branch moved; {branch} on {_display_remote(remote)} is at {remote_sha[:12]}, which is not an "
        f"ancestor of {sha[:12]} (someone else pushed to it); the factory does not force-push — "
        "pick another branch or reconcile by hand"
    )


def _display_remote(remote: str) -> str:
    return _URL_USERINFO.sub(r"\1", remote)


def _redact(text: str, remote: str) -> str:
    """Text from git with any credentials of URLs (and of `remote`'s own userinfo) removed."""
    text = _URL_USERINFO.sub(r"\1***@", text)
    if "://" in remote:
        userinfo = urlsplit(remote).netloc.rpartition("@")[0]
        for secret in {userinfo, unquote(userinfo), *userinfo.split(":"), *unquote(userinfo).split(":")}:
            if len(secret) >= 4:
                text = text.replace(secret, "***")
    return text


def open_pull_request(
    client: GitHubClient,
    owner: str,
    repo: str,
    head: str,
    base: str,
    title: str,
    body: str,
    idempotency_key: str,
) -> PullRequest:
    """Open a PR for head→base, or return the one an earlier attempt (or anyone) already opened.

    Looks before creating — an open PR for head→base, then an open PR carrying the key's marker — so a
    retry after a crash that followed the create finds the PR instead of opening a second one. A create
    that loses a race (422 "already exists") returns the winner.
    """
    marker = idempotency_marker(idempotency_key)
    existing = client.find_open_pr(owner, repo, head, base) or client.find_pr_with_marker(owner, repo, marker)
    if existing is not None:
        return existing
    full_body = f"{body.rstrip()}\n\n{marker}\n" if body.strip() else f"{marker}\n"
    try:
        return client.create_pr(owner, repo, head, base, title, full_body)
    except PullRequestExists as exc:
        found = client.find_open_pr(owner, repo, head, base) or client.find_pr_with_marker(owner, repo, marker)
        if found is not None:
            return found
        # GitHub's lists lag its writes now and then; the next attempt will see it.
        raise GitHubError(
            f"GitHub says a pull request {head} -> {base} exists in {owner}/{repo} but does not list it yet",
            kind="not_listed_yet",
            retryable=True,
            status=exc.status,
        ) from exc


_GITHUB_REMOTE = (
    re.compile(r"^https://(?:[^/@\s]+@)?github\.com/(?P<owner>[^/\s]+)/(?P<repo>[^/\s]+?)(?:\.git)?/?$", re.I),
    re.compile(r"^ssh://git@github\.com(?::22)?/(?P<owner>[^/\s]+)/(?P<repo>[^/\s]+?)(?:\.git)?/?$", re.I),
    re.compile(r"^git@github\.com:(?P<owner>[^/\s]+)/(?P<repo>[^/\s]+?)(?:\.git)?/?$", re.I),
)


def parse_github_remote(url: str) -> tuple[str, str] | None:
    """(owner, repo) of a github.com remote URL (https, ssh or scp-like), or None for anything else."""
    for pattern in _GITHUB_REMOTE:
        match = pattern.match(url.strip())
        if match is None:
            continue
        owner, repo = match["owner"], match["repo"]
        if OWNER_NAME.match(owner) and REPO_NAME.match(repo) and repo not in {".", ".."}:
            return owner, repo
    return None
