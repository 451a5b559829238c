"""The GitHub REST calls the factory makes (pull requests for shipping, comments on the issues that asked
for runs), over httpx, with one table from status to error kind and retryability.

Nothing here retries: Temporal owns retries, and errors say whether one would help. The token never
appears in messages, reprs or results.
"""

from __future__ import annotations

import re
from types import TracebackType
from typing import Any

import httpx

from darkfactory.contracts import Frozen
from darkfactory.errors import ServiceCallError

OWNER_NAME = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,38})$")
REPO_NAME = re.compile(r"^[A-Za-z0-9._-]{1,100}$")
_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,199}$")
_PAGE_SIZE = 100
_MAX_PAGES = 10
"""Marker scans stop after this many pages of open PRs (newest first, where a retry's PR is)."""


class GitHubError(ServiceCallError):
    """A GitHub API call failed. `retryable` decides whether Temporal tries again; the message is safe to log."""


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

    def issue_comments(self, owner: str, repo: str, number: int, page: int) -> list[dict[str, Any]]:
        """One page (oldest first, as GitHub lists them) of an issue's comments."""
        comments: list[dict[str, Any]] = self._call(
            "GET",
            f"{_repo_path(owner, repo)}/issues/{number}/comments",
            params={"per_page": str(_PAGE_SIZE), "page": str(page)},
            what=f"listing the comments of {owner}/{repo}#{number}",
        )
        return comments

    def create_issue_comment(self, owner: str, repo: str, number: int, body: str) -> str:
        """Comment on an issue; the comment's page URL."""
        data = self._call(
            "POST",
            f"{_repo_path(owner, repo)}/issues/{number}/comments",
            json={"body": body},
            what=f"commenting on {owner}/{repo}#{number}",
        )
        return str(data.get("html_url", ""))

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
    if not OWNER_NAME.match(owner):
        raise GitHubError(f"{owner!r} is not a GitHub owner name", kind="bad_request")
    if not REPO_NAME.match(repo) or repo in {".", ".."}:
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


def comment_once(client: GitHubClient, owner: str, repo: str, number: int, body: str, key: str) -> tuple[str, bool]:
    """Post `body` on the issue unless a comment with the key's marker is there; (its URL, posted now).

    Looks before posting, so a retry after a crash (or a dropped connection) that followed the post finds the
    comment instead of posting it twice. Scans at most the first _MAX_PAGES pages of comments.
    """
    marker = idempotency_marker(key)
    for page in range(1, _MAX_PAGES + 1):
        comments = client.issue_comments(owner, repo, number, page)
        for comment in comments:
            if marker in str(comment.get("body") or ""):
                return str(comment.get("html_url", "")), False
        if len(comments) < _PAGE_SIZE:
            break
    return client.create_issue_comment(owner, repo, number, f"{body.rstrip()}\n\n{marker}\n"), True
