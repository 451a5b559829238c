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
from types import TracebackType
from typing import Any
from urllib.parse import unquote, urlsplit

import httpx

from darkfactory.contracts import Frozen
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


# --------------------------------------------------------------------------------------------------
# GitHub

_OWNER = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,38})$")
_REPO = re.compile(r"^[A-Za-z0-9._-]{1,100}$")
_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,199}$")
_PAGE_SIZE = 100
_MAX_PAGES = 10
"""Marker scans stop after this many pages of open PRs (newest first, where a retry's PR is)."""


class GitHubError(Exception):
    """A GitHub API call failed. `retryable` decides whether Temporal tries again; the message is safe to log."""

    def __init__(
        self,
        message: str,
        kind: str = "unexpected",
        retryable: bool = False,
        retry_after_s: float | None = None,
        status: int | None = None,
    ) -> None:
        # All fields go into args so the exception pickles (process pools, Temporal failure converters).
        super().__init__(message, kind, retryable, retry_after_s, status)
        self.message = message
        self.kind = kind
        self.retryable = retryable
        self.retry_after_s = retry_after_s
        self.status = status

    def __str__(self) -> str:
        return self.message

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(kind={self.kind!r}, retryable={self.retryable}, status={self.status}, "
            f"message={self.message!r})"
        )


class PullRequestExists(GitHubError):
    """GitHub's 422 "A pull request already exists for owner:branch"."""


class PullRequest(Frozen):
    """A pull request as the factory records it."""

    number: int
    url: str
    """API URL."""
    html_url: str
    """The page people open."""
    head: str
    """Head branch name."""
    base: str
    state: str

    @classmethod
    def from_api(cls, data: dict[str, Any]) -> PullRequest:
        return cls(
            number=int(data["number"]),
            url=str(data.get("url", "")),
            html_url=str(data.get("html_url", "")),
            head=str(data["head"]["ref"]),
            base=str(data["base"]["ref"]),
            state=str(data.get("state", "")),
        )


class GitHubClient:
    """The few GitHub REST calls shipping needs, over httpx (pass `http_client` to use your own)."""

    def __init__(
        self,
        api_url: str = "https://api.github.com",
        token: str | None = None,
        http_client: httpx.Client | None = None,
        timeout_s: float = 30.0,
    ) -> None:
        self._api_url = api_url.rstrip("/")
        self._token = token
        self._owns_http = http_client is None
        self._http = http_client or httpx.Client(timeout=httpx.Timeout(timeout_s, connect=min(10.0, timeout_s)))

    def __repr__(self) -> str:
        # Never the token, not even masked: reprs end up in logs and tracebacks.
        return f"GitHubClient(api_url={self._api_url!r}, authenticated={self._token is not None})"

    def close(self) -> None:
        if self._owns_http:
            self._http.close()

    def __enter__(self) -> GitHubClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- calls

    def find_open_pr(self, owner: str, repo: str, head_branch: str, base: str) -> PullRequest | None:
        """The open PR from `head_branch` (in `owner`'s repository unless given as `user:branch`) to `base`."""
        head = head_branch if ":" in head_branch else f"{owner}:{head_branch}"
        pulls = self._call(
            "GET",
            f"{_repo_path(owner, repo)}/pulls",
            params={"state": "open", "head": head, "base": base},
            what=f"listing pull requests of {owner}/{repo}",
        )
        return PullRequest.from_api(pulls[0]) if pulls else None

    def find_pr_with_marker(self, owner: str, repo: str, marker: str) -> PullRequest | None:
        """The newest open PR whose body contains `marker` (scans at most the newest 1000 open PRs)."""
        for page in range(1, _MAX_PAGES + 1):
            pulls = self._call(
                "GET",
                f"{_repo_path(owner, repo)}/pulls",
                params={"state": "open", "per_page": str(_PAGE_SIZE), "page": str(page)},
                what=f"listing pull requests of {owner}/{repo}",
            )
            for data in pulls:
                if marker in str(data.get("body") or ""):
                    return PullRequest.from_api(data)
            if len(pulls) < _PAGE_SIZE:
                break
        return None

    def create_pr(self, owner: str, repo: str, head: str, base: str, title: str, body: str) -> PullRequest:
        """Open a PR. Raises PullRequestExists when one is already open for head→base."""
        data = self._call(
            "POST",
            f"{_repo_path(owner, repo)}/pulls",
            json={"title": title, "head": head, "base": base, "body": body},
            what=f"creating a pull request {head} -> {base} in {owner}/{repo}",
        )
        return PullRequest.from_api(data)

    def _call(
        self,
        method: str,
        path: str,
        *,
        what: str,
        params: dict[str, str] | None = None,
        json: dict[str, Any] | None = None,
    ) -> Any:
        headers = {"Accept": "application/vnd.github+json", "X-GitHub-Api-Version": "2022-11-28"}
        if self._token is not None:
            headers["Authorization"] = f"Bearer {self._token}"
        try:
            response = self._http.request(method, f"{self._api_url}{path}", params=params, json=json, headers=headers)
        except httpx.TimeoutException as exc:
            raise GitHubError(f"{what}: GitHub did not answer in time", kind="timeout", retryable=True) from exc
        except httpx.TransportError as exc:
            # For a POST the request may have taken effect: the idempotent callers look before creating again.
            raise GitHubError(
                f"{what}: the connection to {self._api_url} failed ({type(exc).__name__}: {exc})",
                kind="connection",
                retryable=True,
            ) from exc
        if response.status_code >= 400:
            raise self._status_error(response, what)
        try:
            return response.json()
        except ValueError as exc:
            raise GitHubError(
                f"{what}: GitHub answered {response.status_code} with a body that is not JSON",
                kind="malformed_response",
                retryable=True,
                status=response.status_code,
            ) from exc

    def _status_error(self, response: httpx.Response, what: str) -> GitHubError:
        """One table from status to error kind, retryability and a message that says what to do."""
        status = response.status_code
        detail = self._safe(_error_detail(response))
        retry_after = _retry_after(response)
        if status == 401:
            return GitHubError(
                f"{what}: GitHub rejected the credentials (401: {detail}); set a valid token",
                kind="authentication",
                status=status,
            )
        rate_limited = status == 429 or (
            status == 403
            and (
                response.headers.get("x-ratelimit-remaining") == "0"
                or retry_after is not None
                or "rate limit" in detail.lower()
            )
        )
        if rate_limited:
            return GitHubError(
                f"{what}: GitHub rate limit ({status}: {detail})",
                kind="rate_limit",
                retryable=True,
                retry_after_s=retry_after if retry_after is not None else 60.0,
                status=status,
            )
        if status == 403:
            return GitHubError(
                f"{what}: the token may not do this (403: {detail}); it needs pull requests: write on the repository",
                kind="permission",
                status=status,
            )
        if status == 404:
            return GitHubError(
                f"{what}: not found (404: {detail}); check owner/repo — GitHub also answers 404 when the token "
                "cannot see a private repository",
                kind="not_found",
                status=status,
            )
        if status == 422:
            cls = PullRequestExists if "pull request already exists" in detail.lower() else GitHubError
            return cls(f"{what}: GitHub refused it (422: {detail})", kind="validation", status=status)
        if status >= 500:
            return GitHubError(
                f"{what}: GitHub server error ({status}: {detail})", kind="server", retryable=True, status=status
            )
        return GitHubError(f"{what}: GitHub answered {status}: {detail}", kind="bad_request", status=status)

    def _safe(self, text: str) -> str:
        # GitHub does not echo tokens, but a proxy or a future message might.
        if self._token:
            text = text.replace(self._token, "***")
        return text[:500]


def _repo_path(owner: str, repo: str) -> str:
    if not _OWNER.match(owner):
        raise GitHubError(f"{owner!r} is not a GitHub owner name", kind="bad_request")
    if not _REPO.match(repo) or repo in {".", ".."}:
        raise GitHubError(f"{repo!r} is not a GitHub repository name", kind="bad_request")
    return f"/repos/{owner}/{repo}"


def _error_detail(response: httpx.Response) -> str:
    """GitHub's `message` plus the messages of its `errors` list (where 422s say what was wrong)."""
    try:
        data = response.json()
    except ValueError:
        return response.reason_phrase or "no details"
    if not isinstance(data, dict):
        return response.reason_phrase or "no details"
    parts = [str(data.get("message") or response.reason_phrase or "no details")]
    for error in data.get("errors") or []:
        if isinstance(error, dict) and error.get("message"):
            parts.append(str(error["message"]))
        elif isinstance(error, dict) and error.get("code"):
            parts.append(f"{error.get('field', '')} {error['code']}".strip())
    return "; ".join(parts)


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def idempotency_marker(key: str) -> str:
    """The HTML comment that ties a PR to the factory step that opened it (invisible on GitHub)."""
    if not _KEY.match(key):
        raise GitHubError(f"idempotency key {key!r} must match {_KEY.pattern}", kind="bad_request")
    return f"<!-- darkfactory:{key} -->"


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
        if _OWNER.match(owner) and _REPO.match(repo) and repo not in {".", ".."}:
            return owner, repo
    return None
