"""What a run reports about itself, on a real Temporal server: its live state with no worker running (the
run's memo), an escalated task's figures, and a cancel that leaves nothing for a person to review and
keeps every token the cancelled work spent."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from temporalio.client import Client, WorkflowExecutionStatus, WorkflowHandle

from darkfactory.constants import SA_NEEDS_REVIEW, SA_REPO, SA_STATUS, SUMMARY_MEMO, run_workflow_id, task_workflow_id
from darkfactory.contracts import RunState
from darkfactory.workflows import FactoryRunWorkflow
from tests.conftest import demo_transcript, escalation_of, factory_worker, request_for, run_to_end, write_transcript
from tests.test_escalation import address, cli, never_passing
from tests.test_replay import record_history


async def until_memo(handle: WorkflowHandle[Any, RunState], ready: Callable[[RunState], bool]) -> RunState:
    """Wait, event by event (long-polling the history, no sleeping), until the run's memo shows `ready`."""
    async for _event in handle.fetch_history_events(wait_new_event=True):
        memo = await (await handle.describe()).memo_value(SUMMARY_MEMO, None)
        if memo is not None and ready(state := RunState.model_validate(memo)):
            return state
    raise AssertionError("the run ended before its memo showed the state")


def escalated(state: RunState) -> bool:
    return any(task.state == "escalated" for task in state.tasks)


async def test_status_of_an_escalated_task_with_no_worker_and_a_cancel_that_leaves_nothing_to_review(
    client: Client, factory_home: Path, demo_repo: Path, tmp_path: Path
) -> None:
    request = request_for(demo_repo, f"scripted:{never_passing(tmp_path)}", ship="branch", max_attempts=2)
    task_queue = f"status-{uuid.uuid4().hex}"
    async with factory_worker(client, factory_home, task_queue):
        handle = await client.start_workflow(
            FactoryRunWorkflow.run, request, id=run_workflow_id(request.run_id), task_queue=task_queue
        )
        await escalation_of(client, request.run_id, "add-slugify")
        await until_memo(handle, escalated)
    # The worker is gone: the state comes from the server alone.

    shown = cli(address(client), "status", request.run_id, "--json")
    assert shown.returncode == 0, shown.stderr
    state = RunState.model_validate(json.loads(shown.stdout))
    slug = next(task for task in state.tasks if task.id == "add-slugify")
    assert slug.state == "escalated" and slug.attempts == 2
    assert slug.escalation is not None and "attempt caps spent after 2 attempt(s)" in slug.escalation.reason
    assert [gate.gate for gate in slug.gates if not gate.passed] == ["tests"]
    assert slug.usage.calls >= 2 and state.usage.calls > slug.usage.calls  # the plan is the run's too
    people = cli(address(client), "status", request.run_id)
    assert people.returncode == 0, people.stderr
    assert "add-slugify: escalated after 2 attempt(s), waiting for a person since" in people.stdout

    cancel = cli(address(client), "cancel", request.run_id)
    assert cancel.returncode == 0, cancel.stderr
    async with factory_worker(client, factory_home, task_queue):
        summary = await handle.result()

    if os.environ.get("DARKFACTORY_RECORD_HISTORIES"):
        await record_history(client, request.run_id, "cancelled_mid_escalation")
    assert summary.phase == "cancelled"
    slug = next(task for task in summary.tasks if task.id == "add-slugify")
    assert slug.state == "cancelled" and slug.attempts == 2 and slug.usage.calls >= 2
    plan_calls = 1
    assert summary.usage.calls == plan_calls + sum(task.usage.calls for task in summary.tasks)
    child = await client.get_workflow_handle(task_workflow_id(request.run_id, "add-slugify")).describe()
    assert child.status == WorkflowExecutionStatus.CANCELED  # cancelled, not terminated
    assert child.search_attributes[SA_STATUS] == ["cancelled"]
    review = f'{SA_NEEDS_REVIEW} = true AND {SA_REPO} = "{demo_repo}"'
    assert [w.id async for w in client.list_workflows(review)] == []


async def test_a_merged_tasks_search_attributes_say_merged_like_the_summary(
    client: Client, factory_home: Path, demo_repo: Path, tmp_path: Path
) -> None:
    transcript = write_transcript(tmp_path / "transcript.json", demo_transcript())
    summary = await run_to_end(client, factory_home, request_for(demo_repo, f"scripted:{transcript}"))
    assert summary.succeeded, summary.error
    if os.environ.get("DARKFACTORY_RECORD_HISTORIES"):
        await record_history(client, summary.run_id, "merged_after_handshake")

    for task in summary.tasks:
        child = await client.get_workflow_handle(task_workflow_id(summary.run_id, task.id)).describe()
        assert child.status == WorkflowExecutionStatus.COMPLETED
        assert (child.search_attributes[SA_STATUS], child.search_attributes[SA_NEEDS_REVIEW]) == (["merged"], [False])
    run = await client.get_workflow_handle(run_workflow_id(summary.run_id)).describe()
    memo = RunState.model_validate(await run.memo_value(SUMMARY_MEMO))
    assert memo.phase == "shipped" and [t.state for t in memo.tasks] == ["merged"] * len(summary.tasks)
