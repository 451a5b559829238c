"""`factory serve` over real HTTP: a subprocess serving the hooks, a real Temporal server, the local GitHub
stand-in for the result comments, and an in-process worker executing the runs the hooks start."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from pydantic import SecretStr
from temporalio.client import Client
from temporalio.service import RPCError

from darkfactory.cli.serve_app import Launcher, WebhookApp
from darkfactory.constants import run_workflow_id
from darkfactory.contracts import IssueRef, RunRequest
from darkfactory.settings import Credentials
from darkfactory.testing.fake_github import FakeGitHub
from darkfactory.triggers.ids import issue_run_id
from darkfactory.triggers.serve_config import parse_serve_config
from darkfactory.triggers.signatures import hmac_sha256_hex
from darkfactory.workflows import FactoryRunWorkflow
from tests.conftest import DEMO, escalation_of, factory_worker, git, request_for
from tests.test_escalation import BIN, address, cli, never_passing, started
from tests.test_replay import record_history

TRANSCRIPT = f"scripted:{DEMO / 'transcript.json'}"
WEBHOOK_SECRET = "webhook-secret-for-the-tests"
ALERT_TOKEN = "alertmanager-token-for-the-tests"
SENTRY_SECRET = "sentry-client-secret-for-the-tests"
GITHUB_TOKEN = "ghp_fake_token_for_the_issue_comments"


def serve_config(repo: Path, full_name: str, queue: str, **settings: str) -> str:
    extra = "".join(f'{key} = "{value}"\n' for key, value in settings.items())
    return (
        f'[server]\ntask_queue = "{queue}"\nmax_body_bytes = 4096\n\n'
        f'[repos."{full_name}"]\npath = "{repo}"\nmodel = "{TRANSCRIPT}"\n{extra}'
    )


@asynccontextmanager
async def served(client: Client, home: Path, config_text: str) -> AsyncIterator[str]:
    """`factory serve` in a subprocess (no worker of its own); yields its base URL."""
    config = home / f"serve-{uuid.uuid4().hex}.toml"
    config.write_text(config_text)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TEMPORAL_", "ANTHROPIC_", "GITHUB_"))}
    env |= {
        "TEMPORAL_ADDRESS": address(client),
        "DARKFACTORY_HOME": str(home),
        "DARKFACTORY_GITHUB_WEBHOOK_SECRET": WEBHOOK_SECRET,
        "DARKFACTORY_ALERTMANAGER_TOKEN": ALERT_TOKEN,
        "DARKFACTORY_SENTRY_CLIENT_SECRET": SENTRY_SECRET,
    }
    errors = config.with_suffix(".err")
    with errors.open("w") as stderr:
        command = [str(BIN / "factory"), "serve", "--config", str(config), "--port", "0", "--no-worker"]
        process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=stderr, text=True)
    try:
        assert process.stdout is not None
        first = await asyncio.to_thread(process.stdout.readline)
        assert first.startswith("listening on http://"), errors.read_text()
        yield first.removeprefix("listening on ").strip()
    finally:
        process.terminate()
        process.wait(timeout=30)


async def post_github(http: httpx.AsyncClient, event: str, payload: Any, *, delivery: str = "") -> httpx.Response:
    body = json.dumps(payload).encode()
    headers = {
        "X-GitHub-Event": event,
        "X-GitHub-Delivery": delivery or uuid.uuid4().hex,
        "X-Hub-Signature-256": "sha256=" + hmac_sha256_hex(WEBHOOK_SECRET, body),
        "Content-Type": "application/json",
    }
    return await http.post("/hooks/github", content=body, headers=headers)


def labelled(full_name: str, number: int, label: str = "factory") -> dict[str, Any]:
    return {
        "action": "labeled",
        "label": {"name": label},
        "issue": {"number": number, "title": "Add slugify", "body": (DEMO / "spec.md").read_text()},
        "repository": {"full_name": full_name},
        "sender": {"login": "alice"},
    }


def commented(full_name: str, number: int, association: str) -> dict[str, Any]:
    return {
        "action": "created",
        "issue": {"number": number, "title": "Add slugify", "body": "..."},
        "comment": {"body": "/factory run", "author_association": association, "user": {"login": "someone"}},
        "repository": {"full_name": full_name},
    }


async def run_exists(client: Client, run_id: str) -> bool:
    try:
        await client.get_workflow_handle(run_workflow_id(run_id)).describe()
    except RPCError:
        return False
    return True


async def started_request(client: Client, run_id: str) -> RunRequest:
    """The RunRequest a run was started with, from the first event of its history."""
    history = await client.get_workflow_handle(run_workflow_id(run_id)).fetch_history()
    payloads = history.events[0].workflow_execution_started_event_attributes.input.payloads
    [request] = await client.data_converter.decode(payloads, [RunRequest])
    assert isinstance(request, RunRequest)
    return request


async def test_a_labelled_issue_starts_one_run_that_merges_and_answers_on_the_issue_once(
    client: Client, factory_home: Path, demo_repo: Path, monkeypatch: Any
) -> None:
    full_name, number = f"acme/widgets-{uuid.uuid4().hex[:6]}", 7
    queue = f"serve-{uuid.uuid4().hex}"
    run_id = issue_run_id(full_name, number)
    with FakeGitHub(token=GITHUB_TOKEN) as github:
        monkeypatch.setenv("GITHUB_TOKEN", GITHUB_TOKEN)  # the worker's, for the comment
        monkeypatch.setenv("GITHUB_API_URL", github.api_url)
        github.drop_after_next_creates(1)  # the comment is made, the worker sees an error and retries
        config = serve_config(demo_repo, full_name, queue, ship="merge")
        async with served(client, factory_home, config) as url, httpx.AsyncClient(base_url=url) as http:
            first = await post_github(http, "issues", labelled(full_name, number), delivery="delivery-1")
            assert (first.status_code, first.json()) == (202, {"result": "started", "run_id": run_id})
            # GitHub redelivers; someone labels it again; an owner asks by comment: still the one run.
            for again in (
                await post_github(http, "issues", labelled(full_name, number), delivery="delivery-1"),
                await post_github(http, "issues", labelled(full_name, number)),
                await post_github(http, "issue_comment", commented(full_name, number, "OWNER")),
            ):
                assert (again.status_code, again.json()) == (202, {"result": "duplicate", "run_id": run_id})

        request = await started_request(client, run_id)
        assert (request.config.trigger, request.config.ship, request.config.report_to.full_name) == (  # type: ignore[union-attr]
            "issue",
            "merge",
            full_name,
        )
        assert request.spec.startswith("# Add slugify")
        async with factory_worker(client, factory_home, queue):
            summary = await client.get_workflow_handle_for(FactoryRunWorkflow.run, run_workflow_id(run_id)).result()

    assert summary.succeeded, summary.error
    assert git(demo_repo, "rev-parse", "main") == summary.shipped_sha
    answers = [comment for comment in github.comments if comment["issue"] == f"{full_name}#{number}"]
    assert len(answers) == 1, answers  # posted once, though the post was retried
    # The retry looked first and found the comment its dropped post had made.
    assert (github.count("POST", f"/issues/{number}/comments"), github.count("GET", f"/issues/{number}/comments")) == (
        1,
        2,
    )
    assert summary.shipped_sha is not None and summary.shipped_sha[:12] in answers[0]["body"]
    if os.environ.get("DARKFACTORY_RECORD_HISTORIES"):
        await record_history(client, run_id, "issue_reported_once")


async def test_unsigned_malformed_outsider_unknown_and_oversized_requests_start_nothing(
    client: Client, factory_home: Path, demo_repo: Path
) -> None:
    full_name, number = f"acme/widgets-{uuid.uuid4().hex[:6]}", 9
    run_id = issue_run_id(full_name, number)
    config = serve_config(demo_repo, full_name, f"unserved-{uuid.uuid4().hex}")
    async with served(client, factory_home, config) as url, httpx.AsyncClient(base_url=url) as http:
        assert (await http.get("/healthz")).json() == {"ok": True, "repos": [full_name]}
        body = json.dumps(labelled(full_name, number)).encode()
        headers = {"X-GitHub-Event": "issues", "Content-Type": "application/json"}
        forged = "sha256=" + hmac_sha256_hex("a guessed secret", body)
        unsigned = await http.post("/hooks/github", content=body, headers=headers)
        bad = await http.post("/hooks/github", content=body, headers={**headers, "X-Hub-Signature-256": forged})
        assert (unsigned.status_code, bad.status_code) == (401, 401)
        # Signed, but the body changed on the way: the signature is over the raw bytes.
        good_signature = "sha256=" + hmac_sha256_hex(WEBHOOK_SECRET, body)
        tampered = await http.post(
            "/hooks/github", content=body.replace(b"Add slugify", b"Rm -rf all"),
            headers={**headers, "X-Hub-Signature-256": good_signature},
        )  # fmt: skip
        assert tampered.status_code == 401

        malformed = b'{"action": "labeled",'
        signature = "sha256=" + hmac_sha256_hex(WEBHOOK_SECRET, malformed)
        broken = await http.post(
            "/hooks/github", content=malformed, headers={**headers, "X-Hub-Signature-256": signature}
        )
        assert broken.status_code == 400

        outsider = await post_github(http, "issue_comment", commented(full_name, number, "NONE"))
        assert outsider.status_code == 202 and outsider.json()["result"] == "ignored"
        assert "not an owner, member or collaborator" in outsider.json()["reason"]
        push = await post_github(http, "push", {"ref": "refs/heads/main"})
        assert (push.status_code, push.json()["result"]) == (202, "ignored")
        other_label = await post_github(http, "issues", labelled(full_name, number, label="bug"))
        assert other_label.json()["result"] == "ignored"

        huge = await post_github(http, "issues", {**labelled(full_name, number), "padding": "x" * 5000})
        assert huge.status_code == 413
    assert not await run_exists(client, run_id)


def alert(group: str, status: str = "firing") -> dict[str, Any]:
    return {
        "version": "4",
        "status": status,
        "groupKey": group,
        "commonLabels": {"alertname": "SlugifyErrors", "severity": "page"},
        "commonAnnotations": {"summary": "slugify raises on unicode titles"},
        "alerts": [{"status": status, "startsAt": "2026-12-03T04:00:00Z", "fingerprint": "f00d"}],
    }


async def test_two_deliveries_of_one_alert_start_one_diagnosis_run_that_ships_as_a_pull_request(
    client: Client, factory_home: Path, demo_repo: Path
) -> None:
    full_name, group = f"acme/widgets-{uuid.uuid4().hex[:6]}", f'{{}}:{{alertname="{uuid.uuid4().hex}"}}'
    config = serve_config(demo_repo, full_name, f"unserved-{uuid.uuid4().hex}")
    bearer = {"Authorization": f"Bearer {ALERT_TOKEN}"}
    async with served(client, factory_home, config) as url, httpx.AsyncClient(base_url=url) as http:
        refused = await http.post("/hooks/alert", json=alert(group), headers={"Authorization": "Bearer guessed"})
        assert refused.status_code == 401
        first = await http.post("/hooks/alert", json=alert(group), headers=bearer)
        second = await http.post("/hooks/alert", json=alert(group), headers=bearer)
        resolved = await http.post("/hooks/alert", json=alert(group, "resolved"), headers=bearer)

        sentry_body = json.dumps(
            {"action": "created", "data": {"issue": {"id": uuid.uuid4().hex, "title": "KeyError: 'slug'"}}}
        ).encode()
        sentry = await http.post(
            "/hooks/alert",
            content=sentry_body,
            headers={
                "Sentry-Hook-Resource": "issue",
                "Sentry-Hook-Signature": hmac_sha256_hex(SENTRY_SECRET, sentry_body),
            },
        )
    assert first.status_code == 202 and first.json()["result"] == "started", first.json()
    run_id = first.json()["run_id"]
    assert second.json() == {"result": "duplicate", "run_id": run_id}
    assert resolved.json()["result"] == "ignored"
    assert sentry.json()["result"] == "started" and sentry.json()["run_id"] != run_id

    request = await started_request(client, run_id)
    assert (request.config.trigger, request.config.ship) == ("alert", "pr")  # at most a PR by default
    assert request.spec.startswith("# Diagnose: slugify raises on unicode titles")
    assert "since 2026-12-03T04:00:00Z" in request.spec
    assert git(demo_repo, "log", "-1", "--format=%s") in request.spec  # the commits shipped recently
    listed = [
        execution.id
        async for execution in client.list_workflows(f"FactoryTrigger = 'alert' AND FactoryRepo = '{demo_repo}'")
    ]
    assert sorted(listed) == sorted([run_workflow_id(run_id), run_workflow_id(sentry.json()["run_id"])])
    for workflow_id in listed:
        await client.get_workflow_handle(workflow_id).terminate("test over")


async def test_an_alert_repeated_across_a_window_edge_is_still_one_run_and_a_later_one_is_new(
    client: Client, factory_home: Path, demo_repo: Path
) -> None:
    """The dedupe window in-process, with the clock at the seam: the same hooks, a real Temporal server."""
    full_name, group = f"acme/widgets-{uuid.uuid4().hex[:6]}", uuid.uuid4().hex
    config = parse_serve_config(serve_config(demo_repo, full_name, f"unserved-{uuid.uuid4().hex}"), "serve.toml")
    edge = datetime(2026, 12, 3, 5, 0, tzinfo=UTC)  # a window boundary (60-minute windows)
    now = [edge - timedelta(minutes=1)]
    credentials = Credentials(darkfactory_alertmanager_token=SecretStr(ALERT_TOKEN))
    webhooks = WebhookApp(config, credentials, Launcher(client, config.server.task_queue), clock=lambda: now[0])
    transport = httpx.ASGITransport(app=webhooks.app)
    bearer = {"Authorization": f"Bearer {ALERT_TOKEN}"}
    results = []
    async with httpx.AsyncClient(transport=transport, base_url="http://serve") as http:
        for moment in (edge - timedelta(minutes=1), edge + timedelta(minutes=1), edge + timedelta(minutes=61)):
            now[0] = moment
            results.append((await http.post("/hooks/alert", json=alert(group), headers=bearer)).json())
    assert [result["result"] for result in results] == ["started", "duplicate", "started"]
    assert results[0]["run_id"] == results[1]["run_id"] != results[2]["run_id"]
    for result in (results[0], results[2]):
        await client.get_workflow_handle(run_workflow_id(result["run_id"])).terminate("test over")


def test_bad_serve_input_is_refused_before_anything_listens(client: Client, tmp_path: Path, demo_repo: Path) -> None:
    def serve(config_text: str | None, **env: str) -> subprocess.CompletedProcess[str]:
        config = tmp_path / "serve.toml"
        if config_text is not None:
            config.write_text(config_text)
        clean = {k: v for k, v in os.environ.items() if not k.startswith(("TEMPORAL_", "DARKFACTORY_"))}
        clean |= {"TEMPORAL_ADDRESS": address(client), "DARKFACTORY_HOME": str(tmp_path), **env}
        command = [str(BIN / "factory"), "serve", "--config", str(config), "--port", "0", "--no-worker"]
        return subprocess.run(command, env=clean, capture_output=True, text=True, timeout=60)

    secret = {"DARKFACTORY_GITHUB_WEBHOOK_SECRET": WEBHOOK_SECRET}
    cases = [
        (serve(None, **secret), "no serve config at"),
        (serve('[repos."a/b"]\npath = "/x"\nship = "yolo"', **secret), 'repos."a/b".ship: Input should be'),
        (serve(f'[repos."a/b"]\npath = "{tmp_path / "nowhere"}"', **secret), 'repos."a/b".path:'),
        (serve(f'[repos."a/b"]\npath = "{demo_repo}"'), "no webhook secret is set"),
    ]
    for result, message in cases:
        assert result.returncode == 2, (message, result.stdout, result.stderr)
        assert message in result.stderr and "listening" not in result.stdout, (message, result.stderr)
    assert WEBHOOK_SECRET not in "".join(result.stdout + result.stderr for result, _ in cases)


async def test_an_issue_run_that_escalates_says_so_on_the_issue_with_the_commands_that_answer_it(
    client: Client, factory_home: Path, demo_repo: Path, tmp_path: Path, monkeypatch: Any
) -> None:
    issue = IssueRef(owner="acme", repo=f"widgets-{uuid.uuid4().hex[:6]}", number=3)
    model = f"scripted:{never_passing(tmp_path, then_fix=True)}"
    request = request_for(demo_repo, model, ship="branch", max_attempts=2, trigger="issue", report_to=issue)
    with FakeGitHub(token=GITHUB_TOKEN) as github:
        monkeypatch.setenv("GITHUB_TOKEN", GITHUB_TOKEN)
        monkeypatch.setenv("GITHUB_API_URL", github.api_url)
        async with started(client, factory_home, request) as handle:
            await escalation_of(client, request.run_id, "add-slugify")
            # The command the comment names is the one that answers it.
            retried = cli(address(client), "retry", request.run_id, "add-slugify", "--note", "handle empty titles")
            assert retried.returncode == 0, retried.stderr
            summary = await handle.result()

    assert summary.succeeded, summary.error
    bodies = [comment["body"] for comment in github.comments if comment["issue"] == f"{issue.full_name}#3"]
    [escalated] = [body for body in bodies if "waits for a person" in body]
    [outcome] = [body for body in bodies if body != escalated]
    assert f"factory retry {request.run_id} add-slugify" in escalated
    assert "attempt caps spent after 2 attempt(s)" in escalated
    assert f"run `{request.run_id}` left its work on branch `{summary.shipped_to}`" in outcome
