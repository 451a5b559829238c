"""The `factory serve` HTTP app: GitHub and alert webhooks in, FactoryRuns started, nothing waited on.

Each hook checks its signature over the raw body first (401 and nothing started when it is wrong or
missing), then parses (400 for malformed JSON), then decides (`darkfactory.triggers`): an event that asks
for no run is 202 and logged with the reason. A run is started reject-duplicate under an id derived from
what asked for it, so a redelivery or a second label answers `duplicate` and starts nothing. The response
comes as soon as the workflow is started; the run reports back on the issue itself when it ends.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import git
import structlog
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from temporalio.client import Client
from temporalio.service import RPCError

from darkfactory.cli.inputs import build_request
from darkfactory.cli.launch import start_factory_run
from darkfactory.cli.session import UsageError
from darkfactory.constants import TASK_QUEUE, run_workflow_id
from darkfactory.contracts import IssueRef, RunRequest, ShipMode, Trigger
from darkfactory.settings import Credentials
from darkfactory.triggers.alerts import AlertWork, alertmanager_work, sentry_work
from darkfactory.triggers.github_events import Ignored, issue_work
from darkfactory.triggers.ids import alert_run_id, issue_run_id
from darkfactory.triggers.serve_config import RepoTriggers, ServeConfig
from darkfactory.triggers.signatures import bearer_valid, github_signature_valid, sentry_signature_valid

log = structlog.get_logger(__name__)
RECENT_COMMITS = 10


class Launcher:
    """Starts runs on the deployment's task queue and says when a run id was started (for alert windows)."""

    def __init__(self, client: Client, task_queue: str = TASK_QUEUE) -> None:
        self.client = client
        self.task_queue = task_queue

    async def start(self, request: RunRequest) -> bool:
        return await start_factory_run(self.client, request, self.task_queue)

    async def started_at(self, run_id: str) -> datetime | None:
        try:
            return (await self.client.get_workflow_handle(run_workflow_id(run_id)).describe()).start_time
        except RPCError:
            return None


def _answer(result: str, status: int = 202, **fields: Any) -> JSONResponse:
    return JSONResponse({"result": result, **fields}, status_code=status)


async def _body(request: Request, limit: int) -> bytes | None:
    """The raw body, or None once it is over `limit` bytes (not read further)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        return None
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def _json(body: bytes) -> dict[str, Any] | None:
    try:
        payload = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    return payload if isinstance(payload, dict) else None


def recent_commits(repo: RepoTriggers) -> list[str]:
    """The base branch's last commits, newest first: what shipped recently is the first suspect."""
    try:
        log_text = git.Repo(repo.path).git.log(f"-{RECENT_COMMITS}", "--format=%h %cI %an: %s", repo.base)
    except (git.GitError, OSError):
        return []
    return [line for line in str(log_text).splitlines() if line.strip()]


class WebhookApp:
    """The hooks, with the config, the secrets and a launcher; `app` is the ASGI application."""

    def __init__(
        self,
        config: ServeConfig,
        credentials: Credentials,
        launcher: Launcher,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.config = config
        self.credentials = credentials
        self.launcher = launcher
        self.clock = clock
        self.app = Starlette(
            routes=[
                Route("/healthz", self.healthz, methods=["GET"]),
                Route("/hooks/github", self.github, methods=["POST"]),
                Route("/hooks/alert", self.alert, methods=["POST"]),
            ]
        )

    async def healthz(self, request: Request) -> JSONResponse:
        return JSONResponse({"ok": True, "repos": sorted(self.config.repos)})

    async def _read(self, request: Request) -> bytes | JSONResponse:
        body = await _body(request, self.config.server.max_body_bytes)
        if body is None:
            return _answer("too large", 413, limit=self.config.server.max_body_bytes)
        return body

    async def github(self, request: Request) -> JSONResponse:
        event = request.headers.get("x-github-event", "")
        delivery = request.headers.get("x-github-delivery", "")
        body = await self._read(request)
        if isinstance(body, JSONResponse):
            return body
        secret = self.credentials.secret("darkfactory_github_webhook_secret")
        if secret is None or not github_signature_valid(secret, body, request.headers.get("x-hub-signature-256")):
            log.warning("webhook_refused", hook="github", github_event=event, delivery=delivery, reason="bad signature")
            return _answer("bad signature", 401)
        payload = _json(body)
        if payload is None:
            return _answer("malformed JSON", 400)
        work = issue_work(event, payload, self.config)
        if isinstance(work, Ignored):
            log.info("webhook_ignored", hook="github", github_event=event, delivery=delivery, reason=work.reason)
            return _answer("ignored", reason=work.reason)
        run_id = issue_run_id(work.full_name, work.issue.number)
        response = await self._start(work.repo, work.full_name, work.spec, run_id, work.repo.ship, "issue", work.issue)
        asked_by = work.asked_by
        log.info("webhook_run", hook="github", github_event=event, delivery=delivery, run_id=run_id, asked_by=asked_by)
        return response

    async def alert(self, request: Request) -> JSONResponse:
        body = await self._read(request)
        if isinstance(body, JSONResponse):
            return body
        sentry_signature = request.headers.get("sentry-hook-signature")
        if sentry_signature is not None:
            secret, source = self.credentials.secret("darkfactory_sentry_client_secret"), "sentry"
            allowed = secret is not None and sentry_signature_valid(secret, body, sentry_signature)
        else:
            secret, source = self.credentials.secret("darkfactory_alertmanager_token"), "alertmanager"
            allowed = secret is not None and bearer_valid(secret, request.headers.get("authorization"))
        if not allowed:
            log.warning("webhook_refused", hook="alert", source=source, reason="bad signature or token")
            return _answer("bad signature", 401)
        payload = _json(body)
        if payload is None:
            return _answer("malformed JSON", 400)
        work = (
            sentry_work(request.headers.get("sentry-hook-resource"), payload, self.config)
            if source == "sentry"
            else alertmanager_work(payload, self.config)
        )
        if isinstance(work, Ignored):
            log.info("webhook_ignored", hook="alert", source=source, reason=work.reason)
            return _answer("ignored", reason=work.reason)
        return await self._start_alert(work)

    async def _start_alert(self, work: AlertWork) -> JSONResponse:
        """One run per alert per window; an alert repeated just after a window's edge is still the same one."""
        window = timedelta(minutes=self.config.server.alert_window_minutes)
        now = self.clock()
        bucket = int(now.timestamp() // window.total_seconds())
        previous = alert_run_id(work.source, work.key, bucket - 1)
        started = await self.launcher.started_at(previous)
        if started is not None and now - started < window:
            log.info("webhook_duplicate", hook="alert", source=work.source, run_id=previous)
            return _answer("duplicate", run_id=previous)
        spec = work.spec(await run_in_threadpool(recent_commits, work.repo))
        run_id = alert_run_id(work.source, work.key, bucket)
        response = await self._start(work.repo, work.full_name, spec, run_id, work.repo.alert_ship, "alert", None)
        log.info("webhook_run", hook="alert", source=work.source, run_id=run_id)
        return response

    async def _start(
        self,
        repo: RepoTriggers,
        full_name: str,
        spec: str,
        run_id: str,
        ship: ShipMode,
        trigger: Trigger,
        report_to: IssueRef | None,
    ) -> JSONResponse:
        def build() -> RunRequest:
            return build_request(
                Path(repo.path), None, spec, repo.base, ship, repo.model, run_id, repo.max_attempts,
                repo.max_turns, remote=repo.remote, github_repo=full_name, trigger=trigger,
                report_to=report_to, served_here=False,
            )  # fmt: skip

        try:
            request = await run_in_threadpool(build)
        except UsageError as exc:  # the clone or its policy is broken: the sender cannot fix it, we can
            log.error("webhook_unstartable", run_id=run_id, repo=full_name, error=str(exc))
            return _answer("cannot start", 503, run_id=run_id, error=str(exc))
        started = await self.launcher.start(request)
        return _answer("started" if started else "duplicate", run_id=run_id)
