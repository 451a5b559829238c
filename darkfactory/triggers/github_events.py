"""Which GitHub webhook deliveries start a run, and the spec they start it with.

Two events do: `issues` with action `labeled` and the repository's configured label, and `issue_comment`
with action `created` whose body starts with `/factory run`, written by someone GitHub calls the
repository's OWNER, MEMBER or COLLABORATOR (anyone else can comment on a public issue). Pull requests are
issues to GitHub; their comments are ignored. Everything else is answered 202 and ignored, with the reason.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from darkfactory.contracts import IssueRef
from darkfactory.triggers.serve_config import RepoTriggers, ServeConfig

COMMAND = "/factory run"
TRUSTED_ASSOCIATIONS = frozenset({"OWNER", "MEMBER", "COLLABORATOR"})


class _Loose(BaseModel):
    model_config = ConfigDict(extra="ignore")


class _User(_Loose):
    login: str


class _Label(_Loose):
    name: str


class _Issue(_Loose):
    number: int
    title: str
    body: str | None = None
    state: str = "open"
    html_url: str = ""
    pull_request: dict[str, Any] | None = None


class _Comment(_Loose):
    body: str
    author_association: str
    user: _User


class _Repository(_Loose):
    full_name: str


class _Event(_Loose):
    action: str | None = None
    issue: _Issue | None = None
    label: _Label | None = None
    comment: _Comment | None = None
    repository: _Repository | None = None
    sender: _User | None = None


@dataclass(frozen=True)
class IssueWork:
    """An issue someone asked the factory to work on."""

    full_name: str
    issue: IssueRef
    repo: RepoTriggers
    spec: str
    asked_by: str


@dataclass(frozen=True)
class Ignored:
    reason: str


def issue_spec(full_name: str, issue: _Issue) -> str:
    """The issue's title and body as the spec (cleaned as untrusted text when the request is built)."""
    body = (issue.body or "").strip() or "(the issue has no description)"
    return f"# {issue.title.strip()}\n\n{body}\n\n(From GitHub issue {full_name}#{issue.number} {issue.html_url})\n"


def _asked(event: str, payload: _Event, repo: RepoTriggers) -> str | Ignored:
    """Who asked for a run, or why this delivery asks for none."""
    if event == "issues":
        if payload.action != "labeled" or payload.label is None:
            return Ignored(f"issues.{payload.action}: only the label {repo.label!r} starts a run")
        if payload.label.name != repo.label:
            return Ignored(f"label {payload.label.name!r} is not {repo.label!r}")
        return payload.sender.login if payload.sender else "someone"
    if event == "issue_comment":
        comment = payload.comment
        if payload.action != "created" or comment is None:
            return Ignored(f"issue_comment.{payload.action}: only a new comment can ask for a run")
        first_line = comment.body.strip().splitlines()[0].strip() if comment.body.strip() else ""
        if first_line != COMMAND and not first_line.startswith(COMMAND + " "):
            return Ignored(f"the comment does not start with {COMMAND}")
        if comment.author_association not in TRUSTED_ASSOCIATIONS:
            return Ignored(
                f"{comment.user.login} is {comment.author_association}, not an owner, member or collaborator"
            )
        return comment.user.login
    return Ignored(f"event {event!r} is not handled")


def issue_work(event: str, payload: dict[str, Any], config: ServeConfig) -> IssueWork | Ignored:
    if event == "ping":
        return Ignored("ping")
    try:
        parsed = _Event.model_validate(payload)
    except ValidationError as exc:
        return Ignored(f"{event} payload without the expected fields ({exc.error_count()} problems)")
    if parsed.repository is None or parsed.issue is None:
        return Ignored(f"event {event!r} has no issue")
    full_name = parsed.repository.full_name
    repo = config.repo(full_name)
    if repo is None:
        return Ignored(f"repository {full_name} is not in the serve config")
    if parsed.issue.pull_request is not None:
        return Ignored(f"{full_name}#{parsed.issue.number} is a pull request")
    if parsed.issue.state != "open":
        return Ignored(f"{full_name}#{parsed.issue.number} is {parsed.issue.state}")
    asked = _asked(event, parsed, repo)
    if isinstance(asked, Ignored):
        return asked
    owner, name = full_name.split("/", 1)
    return IssueWork(
        full_name=full_name,
        issue=IssueRef(owner=owner, repo=name, number=parsed.issue.number),
        repo=repo,
        spec=issue_spec(full_name, parsed.issue),
        asked_by=asked,
    )
