"""Telling people: the comment a triggered run posts on the issue that asked for it.

Posted at most once per key, even when Temporal retries the step after a post whose answer was lost (the
marker in the comment is looked for before posting). Without a GitHub token on the worker, nothing is
posted and the result says so; that is not a failure of the run.
"""

from __future__ import annotations

import os

import structlog
from temporalio import activity

from darkfactory.activities.errors import github_error
from darkfactory.contracts import IssueCommentInput, IssueCommentResult
from darkfactory.github import GitHubClient, GitHubError, comment_once
from darkfactory.sandbox import worker_secret_values
from darkfactory.settings import load_credentials
from darkfactory.untrusted import redact_secrets

log = structlog.get_logger(__name__)


class NotifyActivities:
    @activity.defn
    def post_issue_comment(self, input: IssueCommentInput) -> IssueCommentResult:
        token = load_credentials().github_key()
        if token is None:
            log.info("issue_comment_skipped", issue=input.issue.full_name, number=input.issue.number)
            return IssueCommentResult(posted=False, skipped="no GitHub token on the worker (GITHUB_TOKEN)")
        # The comment is public: nothing credential-shaped leaves, even if a gate's output quoted one.
        body, _kinds = redact_secrets(input.body, worker_secret_values())
        api_url = os.environ.get("GITHUB_API_URL", "https://api.github.com")
        issue = input.issue
        try:
            with GitHubClient(api_url=api_url, token=token) as client:
                url, posted = comment_once(client, issue.owner, issue.repo, issue.number, body, input.key)
        except GitHubError as exc:
            raise github_error(exc) from None
        log.info("issue_commented", issue=issue.full_name, number=issue.number, key=input.key, posted=posted)
        return IssueCommentResult(posted=posted, url=url)
