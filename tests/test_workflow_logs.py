"""Workflow log lines as JSON: the message plain, the workflow's ids as fields, as activity lines carry theirs."""

from __future__ import annotations

import io
import json
import logging
import uuid
from pathlib import Path
from typing import Any

import structlog
from temporalio.client import Client

from darkfactory.constants import queue_name, run_workflow_id, task_workflow_id
from darkfactory.workflows import FactoryRunWorkflow
from tests.conftest import DEMO, factory_worker, request_for


def lines_of(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines() if line]


async def test_a_workflow_log_line_has_a_plain_message_and_the_workflows_ids_as_fields(
    client: Client, factory_home: Path, demo_repo: Path, log_stream: io.StringIO
) -> None:
    request = request_for(demo_repo, f"scripted:{DEMO / 'transcript.json'}")
    task_queue = f"tq-{uuid.uuid4().hex}"
    async with factory_worker(client, factory_home, task_queue):
        summary = await client.execute_workflow(
            FactoryRunWorkflow.run, request, id=run_workflow_id(request.run_id), task_queue=task_queue
        )
    assert summary.succeeded, summary.error
    child = await client.get_workflow_handle(task_workflow_id(request.run_id, "add-slugify")).describe()

    lines = lines_of(log_stream)
    workflow_lines = [line for line in lines if line.get("logger") == "temporalio.workflow"]
    [attempt] = [line for line in workflow_lines if line["event"].startswith("attempt 1 of task add-slugify")]
    # The demo's first attempt at add-slugify fails its tests; nothing is appended to the message.
    assert attempt["event"] == "attempt 1 of task add-slugify: failed"
    assert attempt["level"] == "info"
    assert {key: attempt.get(key) for key in ("workflow_id", "workflow_run_id", "workflow_type")} == {
        "workflow_id": child.id,
        "workflow_run_id": child.run_id,
        "workflow_type": "TaskWorkflow",
    }
    assert attempt.get("task_queue") == queue_name(task_queue, "workflows")
    assert attempt.get("namespace") == client.namespace
    assert attempt.get("workflow_attempt") == 1
    # `run_id` keeps one meaning across the file: the factory run's, as the same run's activity lines bind it.
    assert "run_id" not in attempt
    activity_lines = [line for line in lines if line.get("workflow_id") == child.id and "activity" in line]
    assert activity_lines and {line["run_id"] for line in activity_lines} == {request.run_id}
    assert all("({" not in line["event"] for line in workflow_lines)


def test_the_sdk_loggers_context_becomes_fields_and_the_lines_own_fields_win(log_stream: io.StringIO) -> None:
    # The record as temporalio.activity.logger makes it inside an activity whose ids the interceptor bound.
    details = {
        "activity_id": "7",
        "activity_type": "run_gates",
        "attempt": 3,
        "namespace": "default",
        "task_queue": "tq-gates",
        "workflow_id": "run-t-1-task-a",
        "workflow_run_id": "0199-run",
        "workflow_type": "TaskWorkflow",
    }
    with structlog.contextvars.bound_contextvars(run_id="t-1", attempt=2, workflow_id="run-t-1-task-a"):
        sdk_logger = logging.getLogger("temporalio.activity")
        sdk_logger.warning("Completing activity as failed", extra={"temporal_activity": details})

    [line] = lines_of(log_stream)
    assert line["event"] == "Completing activity as failed"
    assert (line["run_id"], line["attempt"], line["activity_attempt"]) == ("t-1", 2, 3)
    assert (line["activity_type"], line["activity_id"], line["workflow_run_id"]) == ("run_gates", "7", "0199-run")
    assert (line["task_queue"], line["workflow_type"]) == ("tq-gates", "TaskWorkflow")
