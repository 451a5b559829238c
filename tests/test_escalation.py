"""Durable human escalation on a real Temporal server: queue, approve, reject, retry, deadlines."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from temporalio.client import Client, WorkflowHandle

from darkfactory.constants import SA_NEEDS_REVIEW, SA_REPO, SA_STATUS, run_workflow_id, task_workflow_id
from darkfactory.contracts import RunRequest, RunState
from darkfactory.scripted import context_from_request
from darkfactory.testing.fake_messages_api import FakeMessagesServer, ScriptResponder
from darkfactory.workflows import FactoryRunWorkflow
from tests.conftest import (
    demo_transcript,
    escalation_of,
    factory_worker,
    git,
    request_for,
    time_skipping_server,
    write_transcript,
)

BIN = Path(sys.executable).parent
GIVE_UP = [{"content": [{"type": "text", "text": "I think it is fine as it is."}], "stop_reason": "end_turn"}]
APPROVE = {
    "content": [
        {
            "type": "tool_use",
            "name": "submit_review",
            "input": {"verdict": "approve", "summary": "Correct and tested.", "findings": []},
        }
    ]
}


def never_passing(tmp_path: Path, *, then_fix: bool = False) -> Path:
    """add-slugify keeps its bug for two attempts (the cap in these tests); a third attempt fixes it."""
    transcript = demo_transcript()
    buggy, fix = transcript["tasks"]["add-slugify"]
    transcript["tasks"]["add-slugify"] = [buggy, GIVE_UP, *([fix] if then_fix else [])]
    transcript["reviews"]["add-slugify"] = [APPROVE, APPROVE, APPROVE]
    return write_transcript(tmp_path / "transcript.json", transcript)


def with_policy(repo: Path, text: str) -> None:
    (repo / ".factory").mkdir(exist_ok=True)
    (repo / ".factory" / "policy.toml").write_text(text)
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "factory policy")


@asynccontextmanager
async def started(client: Client, home: Path, request: RunRequest) -> AsyncIterator[WorkflowHandle[Any, RunState]]:
    task_queue = f"esc-{uuid.uuid4().hex}"
    async with factory_worker(client, home, task_queue):
        yield await client.start_workflow(
            FactoryRunWorkflow.run, request, id=run_workflow_id(request.run_id), task_queue=task_queue
        )


def cli(env_address: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TEMPORAL_", "ANTHROPIC_"))}
    env["TEMPORAL_ADDRESS"] = env_address
    return subprocess.run([str(BIN / "factory"), *args], env=env, capture_output=True, text=True, timeout=120)


def address(client: Client) -> str:
    return client.service_client.config.target_host


async def test_a_task_that_never_passes_waits_in_the_queue_and_temporal_signal_approve_merges_it(
    client: Client, factory_home: Path, demo_repo: Path, tmp_path: Path
) -> None:
    request = request_for(demo_repo, f"scripted:{never_passing(tmp_path)}", ship="branch", max_attempts=2)
    async with started(client, factory_home, request) as handle:
        progress = await escalation_of(client, request.run_id, "add-slugify")
        assert "attempt caps spent after 2 attempt(s)" in progress["escalation"]["reason"]

        queue = cli(address(client), "queue", "--json")
        assert queue.returncode == 0, queue.stderr
        waiting = [item for item in json.loads(queue.stdout) if item["run_id"] == request.run_id]
        assert [(w["task_id"], "tests" in w["reason"]) for w in waiting] == [("add-slugify", True)]
        # The same search attributes make it a filter in the web UI.
        ui_filter = f'{SA_NEEDS_REVIEW} = true AND {SA_STATUS} = "escalated" AND {SA_REPO} = "{demo_repo}"'
        assert [w.id async for w in client.list_workflows(ui_filter)] == [
            task_workflow_id(request.run_id, "add-slugify")
        ]

        signal = subprocess.run(
            [
                str(BIN / "temporal"),
                "workflow",
                "signal",
                "--address",
                address(client),
                "--workflow-id",
                task_workflow_id(request.run_id, "add-slugify"),
                "--name",
                "approve",
                "--input",
                '{"by": "ana", "note": "known issue, ship it"}',
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert signal.returncode == 0, signal.stderr
        summary = await handle.result()

    if os.environ.get("DARKFACTORY_RECORD_HISTORIES"):
        from tests.test_replay import record_history

        await record_history(client, request.run_id, "escalated_then_approved")
    slug = next(task for task in summary.tasks if task.id == "add-slugify")
    assert slug.state == "merged" and "approved by ana: known issue, ship it" in slug.reason
    [decision] = slug.decisions
    assert (decision.action, decision.by, decision.note) == ("approve", "ana", "known issue, ship it")
    assert "attempt caps spent" in decision.reason
    assert f"{request.run_id}/add-slugify" in git(demo_repo, "log", "--format=%B", summary.integration_branch or "")
    assert [w async for w in client.list_workflows(f'{SA_NEEDS_REVIEW} = true AND {SA_REPO} = "{demo_repo}"')] == []


async def test_reject_ends_the_task_rejected_and_merges_nothing(
    client: Client, factory_home: Path, demo_repo: Path, tmp_path: Path
) -> None:
    request = request_for(demo_repo, f"scripted:{never_passing(tmp_path)}", max_attempts=2)
    async with started(client, factory_home, request) as handle:
        await escalation_of(client, request.run_id, "add-slugify")
        answer = cli(address(client), "reject", request.run_id, "add-slugify", "--note", "wrong approach", "--by", "bo")
        assert answer.returncode == 0, answer.stderr
        summary = await handle.result()

    late = cli(address(client), "approve", request.run_id, "add-slugify")
    assert late.returncode == 2 and "not waiting for a person" in late.stderr
    slug, export = summary.tasks
    assert (slug.state, slug.reason) == ("rejected", "rejected by bo: wrong approach")
    assert [(d.action, d.by) for d in slug.decisions] == [("reject", "bo")]
    assert export.state == "failed" and "did not merge" in export.reason
    assert summary.phase == "failed" and summary.shipped_sha is None
    assert "Factory-Task" not in git(demo_repo, "log", "--format=%B", summary.integration_branch or "main")


async def test_retry_guidance_reaches_the_next_model_request_and_the_task_then_merges(
    client: Client, factory_home: Path, demo_repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    guidance = "Strip leading and trailing dashes from the result."
    with FakeMessagesServer(ScriptResponder(never_passing(tmp_path, then_fix=True))) as server:
        monkeypatch.setenv("ANTHROPIC_BASE_URL", server.base_url)
        monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-test-retry")
        request = request_for(demo_repo, "claude-sonnet-5-5", max_attempts=2)
        async with started(client, factory_home, request) as handle:
            await escalation_of(client, request.run_id, "add-slugify")
            answer = cli(address(client), "retry", request.run_id, "add-slugify", "--note", guidance, "--by", "cy")
            assert answer.returncode == 0, answer.stderr
            summary = await handle.result()
        requests = server.requests

    assert summary.succeeded, summary.error
    third = next(r for r in requests if context_from_request(r.body).key == "agent:add-slugify:3:1")
    first_message = json.dumps(third.body["messages"][0]["content"])
    assert guidance in first_message and "Guidance from cy" in first_message
    assert [(d.action, d.by) for d in summary.tasks[0].decisions] == [("retry", "cy")]


async def test_a_protected_path_escalates_even_when_every_gate_passes(
    client: Client, factory_home: Path, demo_repo: Path
) -> None:
    # The policy lets feature tasks propose the protected file (else the editor refuses it at once).
    policy = 'protected = ["textkit/__init__.py"]\n[task_types.feature]\npropose_protected = ["textkit/*"]\n'
    with_policy(demo_repo, policy)
    request = request_for(demo_repo, f"scripted:{Path(__file__).parents[1] / 'examples/demo/transcript.json'}")
    async with started(client, factory_home, request) as handle:
        progress = await escalation_of(client, request.run_id, "export-slugify")
        assert all(gate["passed"] for gate in progress["gates"])
        assert "textkit/__init__.py" in progress["escalation"]["reason"]
        answer = cli(address(client), "approve", request.run_id, "export-slugify", "--by", "di")
        assert answer.returncode == 0, answer.stderr
        summary = await handle.result()

    assert summary.succeeded, summary.error
    export = summary.tasks[1]
    assert export.state == "merged" and [(d.action, d.by) for d in export.decisions] == [("approve", "di")]


async def test_an_unanswered_escalation_takes_the_policys_default_action_at_its_deadline(
    factory_home: Path, demo_repo: Path, tmp_path: Path
) -> None:
    with_policy(demo_repo, '[escalation]\ndeadline_hours = 48\ndefault_action = "reject"\n')
    request = request_for(demo_repo, f"scripted:{never_passing(tmp_path)}", max_attempts=2)
    async with time_skipping_server() as env, started(env.client, factory_home, request) as handle:
        summary = await handle.result()  # two simulated days pass in no time

    slug = summary.tasks[0]
    assert slug.state == "rejected"
    [decision] = slug.decisions
    assert (decision.action, decision.by, decision.note) == (
        "reject",
        "policy (deadline)",
        "the escalation deadline passed",
    )


async def test_a_per_cause_cap_from_the_policy_escalates_before_the_total_cap(
    client: Client, factory_home: Path, demo_repo: Path, tmp_path: Path
) -> None:
    with_policy(demo_repo, "[limits]\nmax_attempts = 5\ntests = 1\n")
    request = request_for(demo_repo, f"scripted:{never_passing(tmp_path)}")
    async with started(client, factory_home, request) as handle:
        progress = await escalation_of(client, request.run_id, "add-slugify")
        assert progress["attempt"] == 1
        assert "attempt caps spent after 1 attempt(s); last failure: tests" in progress["escalation"]["reason"]
        answer = cli(address(client), "reject", request.run_id, "add-slugify", "--by", "ed")
        assert answer.returncode == 0, answer.stderr
        summary = await handle.result()
    assert summary.tasks[0].state == "rejected"
