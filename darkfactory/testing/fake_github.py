"""A local HTTP server standing in for the GitHub REST API's pull request endpoints.

It keeps pull requests in memory and behaves like GitHub where shipping depends on it: a bearer token
when one is configured (401 "Bad credentials" otherwise), 404 for repositories it does not know (when
told which it knows), 422 "A pull request already exists" for a second open PR head→base, newest-first
pagination. Tests read back every request and steer failures: the next creates answer 502, or create
the PR and then drop the connection (the side effect happened but the client saw an error), or lists
answer empty for a while (GitHub's lists lag its writes).

Routes: GET/POST /repos/{owner}/{repo}/pulls, GET /repos/{owner}/{repo}/pulls/{number}, and an issue's
comments, GET/POST /repos/{owner}/{repo}/issues/{number}/comments (`drop_after_next_creates` applies to
comment posts too).
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs, urlsplit

from darkfactory.testing.loopback import LoopbackServer

__all__ = ["FakeGitHub", "GitHubRequest"]

_DOCS = "https://docs.github.com/rest"


@dataclass(frozen=True)
class GitHubRequest:
    """One request as it arrived."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    """Header names lower-cased."""
    body: dict[str, Any] | None


@dataclass
class _Reply:
    status: int
    body: Any = None
    drop: bool = False
    """Close the connection without answering."""


class FakeGitHub(LoopbackServer):
    """GitHub's pulls endpoints on 127.0.0.1, served from a daemon thread. Use as a context manager."""

    def __init__(
        self, token: str | None = None, *, repos: Iterable[str] | None = None, host: str = "127.0.0.1"
    ) -> None:
        """`token`: the bearer token every request must carry (None: no check). `repos`: the `owner/repo`
        names that exist (None: every name exists)."""
        super().__init__(host=host)
        self.token = token
        self.repos = None if repos is None else {r.lower() for r in repos}
        self._create_holds: list[threading.Event] = []
        self._released = threading.Event()
        self._requests: list[GitHubRequest] = []
        self._pulls: list[dict[str, Any]] = []
        self._comments: list[dict[str, Any]] = []
        self._fail_creates: list[int] = []
        self._drop_creates = 0
        self._stale_lists = 0

    # -- lifecycle

    thread_name = "fake-github"

    def _before_stop(self) -> None:
        self._released.set()  # a parked create must not keep the server from stopping

    @property
    def api_url(self) -> str:
        return self.url

    # -- what tests read and steer

    @property
    def requests(self) -> list[GitHubRequest]:
        with self._lock:
            return list(self._requests)

    def count(self, method: str, path_suffix: str = "") -> int:
        """How many requests with `method` arrived (whose path ends with `path_suffix`, when given)."""
        return sum(1 for r in self.requests if r.method == method and r.path.endswith(path_suffix))

    @property
    def pulls(self) -> list[dict[str, Any]]:
        """Every PR, oldest first, as GitHub's JSON (copies)."""
        with self._lock:
            return [json.loads(json.dumps(p)) for p in self._pulls]

    @property
    def comments(self) -> list[dict[str, Any]]:
        """Every issue comment, oldest first (copies); each has `issue` ("owner/repo#n") and `body`."""
        with self._lock:
            return [dict(c) for c in self._comments]

    def add_pull(
        self, owner: str, repo: str, head: str, base: str, *, title: str = "seeded", body: str = "", state: str = "open"
    ) -> dict[str, Any]:
        """Put a PR in place as if someone had opened it; no duplicate check."""
        with self._lock:
            return self._new_pull(owner, repo, head, base, title, body, state)

    def fail_next_creates(self, count: int, status: int = 502) -> None:
        """The next `count` creates answer `status` without creating anything."""
        with self._lock:
            self._fail_creates.extend([status] * count)

    def drop_after_next_creates(self, count: int = 1) -> None:
        """The next `count` creates create the PR, then close the connection without answering."""
        with self._lock:
            self._drop_creates += count

    def hold_next_create(self) -> threading.Event:
        """Park the next create until `release()`; the returned Event says it arrived. After release the PR
        is created and answered — to a client that may be dead by then (a worker killed mid-ship)."""
        arrived = threading.Event()
        with self._lock:
            self._create_holds.append(arrived)
        return arrived

    def release(self) -> None:
        self._released.set()

    def stale_next_lists(self, count: int) -> None:
        """The next `count` list calls answer `[]`, like GitHub's lists lagging its writes."""
        with self._lock:
            self._stale_lists += count

    # -- serving

    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        length = int(handler.headers.get("content-length") or 0)
        raw = handler.rfile.read(length) if length else b""
        split = urlsplit(handler.path)
        query = {k: v[-1] for k, v in parse_qs(split.query).items()}
        headers = {k.lower(): v for k, v in handler.headers.items()}
        if handler.command == "POST" and split.path.endswith(("/pulls", "/comments")):
            with self._lock:
                arrived = self._create_holds.pop(0) if self._create_holds else None
            if arrived is not None:
                arrived.set()
                self._released.wait(timeout=300)
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
            reply = _Reply(400, {"message": "Problems parsing JSON", "documentation_url": _DOCS})
        else:
            reply = self._route(handler.command, split.path, query, headers, body)
        with self._lock:
            self._requests.append(GitHubRequest(handler.command, split.path, query, headers, body))
        if reply.drop:
            handler.close_connection = True
            with contextlib.suppress(OSError):
                handler.connection.shutdown(socket.SHUT_RDWR)
            return
        self._send(handler, reply)

    def _route(self, method: str, path: str, query: dict[str, str], headers: dict[str, str], body: Any) -> _Reply:
        if self.token is not None and headers.get("authorization") not in {
            f"Bearer {self.token}",
            f"token {self.token}",
        }:
            return _Reply(401, {"message": "Bad credentials", "documentation_url": _DOCS, "status": "401"})
        parts = path.strip("/").split("/")
        if len(parts) < 4 or parts[0] != "repos" or parts[3] not in ("pulls", "issues"):
            return _not_found()
        owner, repo = parts[1], parts[2]
        if self.repos is not None and f"{owner}/{repo}".lower() not in self.repos:
            return _not_found()
        if parts[3] == "issues":
            if len(parts) != 6 or not parts[4].isdigit() or parts[5] != "comments":
                return _not_found()
            return self._issue_comments(method, f"{owner}/{repo}#{int(parts[4])}", query, body)
        if len(parts) == 5 and method == "GET" and parts[4].isdigit():
            return self._get(owner, repo, int(parts[4]))
        if len(parts) != 4:
            return _not_found()
        if method == "GET":
            return self._list(owner, repo, query)
        if method == "POST":
            return self._create(owner, repo, body)
        return _not_found()

    def _get(self, owner: str, repo: str, number: int) -> _Reply:
        with self._lock:
            for pull in self._pulls:
                if _in_repo(pull, owner, repo) and pull["number"] == number:
                    return _Reply(200, pull)
        return _not_found()

    def _list(self, owner: str, repo: str, query: dict[str, str]) -> _Reply:
        state = query.get("state", "open")
        per_page = min(int(query.get("per_page", "30")), 100)
        page = max(int(query.get("page", "1")), 1)
        with self._lock:
            if self._stale_lists > 0:
                self._stale_lists -= 1
                return _Reply(200, [])
            found = [
                p
                for p in reversed(self._pulls)  # GitHub's default order: newest first
                if _in_repo(p, owner, repo)
                and (state == "all" or p["state"] == state)
                and ("head" not in query or p["head"]["label"].lower() == _label(owner, query["head"]).lower())
                and ("base" not in query or p["base"]["ref"] == query["base"])
            ]
        return _Reply(200, found[(page - 1) * per_page : page * per_page])

    def _create(self, owner: str, repo: str, body: Any) -> _Reply:
        if not isinstance(body, dict):
            return _Reply(400, {"message": "Problems parsing JSON", "documentation_url": _DOCS})
        missing = [f for f in ("title", "head", "base") if not isinstance(body.get(f), str) or not body[f]]
        if missing:
            errors = [{"resource": "PullRequest", "code": "missing_field", "field": f} for f in missing]
            return _Reply(422, {"message": "Validation Failed", "errors": errors, "documentation_url": _DOCS})
        with self._lock:
            if self._fail_creates:
                return _Reply(self._fail_creates.pop(0), {"message": "Server Error"})
            label = _label(owner, body["head"])
            if any(
                _in_repo(p, owner, repo)
                and p["state"] == "open"
                and p["head"]["label"] == label
                and p["base"]["ref"] == body["base"]
                for p in self._pulls
            ):
                error = {
                    "resource": "PullRequest",
                    "code": "custom",
                    "message": f"A pull request already exists for {label}.",
                }
                return _Reply(422, {"message": "Validation Failed", "errors": [error], "documentation_url": _DOCS})
            pull = self._new_pull(owner, repo, body["head"], body["base"], body["title"], str(body.get("body") or ""))
            if self._drop_creates > 0:
                self._drop_creates -= 1
                return _Reply(201, pull, drop=True)
        return _Reply(201, pull)

    def _issue_comments(self, method: str, issue: str, query: dict[str, str], body: Any) -> _Reply:
        if method == "GET":
            per_page = min(int(query.get("per_page", "30")), 100)
            page = max(int(query.get("page", "1")), 1)
            with self._lock:
                found = [c for c in self._comments if c["issue"] == issue]
            return _Reply(200, found[(page - 1) * per_page : page * per_page])
        if method != "POST":
            return _not_found()
        if not isinstance(body, dict) or not isinstance(body.get("body"), str) or not body["body"]:
            return _Reply(422, {"message": "Validation Failed", "documentation_url": _DOCS})
        with self._lock:
            if self._fail_creates:
                return _Reply(self._fail_creates.pop(0), {"message": "Server Error"})
            number = len(self._comments) + 1
            owner_repo, _, issue_number = issue.partition("#")
            comment = {
                "id": number,
                "issue": issue,
                "body": body["body"],
                "html_url": f"https://github.com/{owner_repo}/issues/{issue_number}#issuecomment-{number}",
            }
            self._comments.append(comment)
            if self._drop_creates > 0:
                self._drop_creates -= 1
                return _Reply(201, comment, drop=True)
        return _Reply(201, comment)

    def _new_pull(
        self, owner: str, repo: str, head: str, base: str, title: str, body: str, state: str = "open"
    ) -> dict[str, Any]:
        number = len(self._pulls) + 1
        label = _label(owner, head)
        pull = {
            "number": number,
            "url": f"{self.api_url}/repos/{owner}/{repo}/pulls/{number}",
            "html_url": f"https://github.com/{owner}/{repo}/pull/{number}",
            "state": state,
            "title": title,
            "body": body,
            "head": {"label": label, "ref": label.partition(":")[2]},
            "base": {"label": f"{owner}:{base}", "ref": base, "repo": {"full_name": f"{owner}/{repo}"}},
        }
        self._pulls.append(pull)
        return pull

    def _send(self, handler: BaseHTTPRequestHandler, reply: _Reply) -> None:
        payload = json.dumps(reply.body).encode("utf-8") if reply.body is not None else b""
        try:
            handler.send_response(reply.status)
            handler.send_header("content-type", "application/json; charset=utf-8")
            handler.send_header("content-length", str(len(payload)))
            handler.end_headers()
            handler.wfile.write(payload)
            handler.wfile.flush()
        except OSError:
            handler.close_connection = True


def _label(owner: str, head: str) -> str:
    return head if ":" in head else f"{owner}:{head}"


def _in_repo(pull: dict[str, Any], owner: str, repo: str) -> bool:
    return bool(pull["base"]["repo"]["full_name"].lower() == f"{owner}/{repo}".lower())


def _not_found() -> _Reply:
    return _Reply(404, {"message": "Not Found", "documentation_url": _DOCS, "status": "404"})
