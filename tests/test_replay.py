"""Replay recorded workflow histories against the current workflow code.

A change that breaks determinism (a reordered activity, a new step without `workflow.patched`) fails
here before it reaches a worker with runs in flight. Re-record after an intentional, versioned change:
`DARKFACTORY_RECORD_HISTORIES=1 pytest tests/test_factory_run.py -k happy_path` and
`DARKFACTORY_RECORD_HISTORIES=1 pytest tests/test_escalation.py -k signal_approve` (a task that escalates,
tells its run, and is approved by a signal), and
`DARKFACTORY_RECORD_HISTORIES=1 pytest tests/test_backlog.py -k priority` (a backlog that starts three runs
one at a time and continues-as-new), and
`DARKFACTORY_RECORD_HISTORIES=1 pytest tests/test_serve.py -k labelled` (an issue's run that comments on
the issue once, though the post is retried), and
`DARKFACTORY_RECORD_HISTORIES=1 pytest tests/test_budget.py -k starts_no_new_task` (a task refused a call by
the run's budget, approved to go on; then the run starts no new task), and
`DARKFACTORY_RECORD_HISTORIES=1 pytest tests/test_run_status.py` (a run cancelled while its task waits for a
person: the task tells the run what it spent and closes Canceled; and a run whose gated tasks wait for their
merge and close `merged`), and
`DARKFACTORY_RECORD_HISTORIES=1 pytest tests/test_verify_once.py -k bisected` (four tasks merged as one batch,
which goes red: bisected, the task before the culprit kept, the culprit sent back to a second round, the two
after it merged in the next batch; `bisected_batch_before_stacking` is the three-task version recorded before
`patched("speculative-batches")` and `patched("types-against-run-base")`).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from temporalio.client import Client, WorkflowHistory
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Replayer

from darkfactory.constants import run_workflow_id
from darkfactory.workflows import WORKFLOWS

HISTORIES = Path(__file__).parent / "histories"


async def record_history(client: Client, run_id: str, name: str) -> None:
    """Save the run's history and its task workflows' histories as one JSON file."""
    run_handle = client.get_workflow_handle(run_workflow_id(run_id))
    histories = {run_handle.id: json.loads((await run_handle.fetch_history()).to_json())}
    async for execution in client.list_workflows(f"WorkflowId STARTS_WITH '{run_handle.id}-task-'"):
        handle = client.get_workflow_handle(execution.id)
        histories[execution.id] = json.loads((await handle.fetch_history()).to_json())
    HISTORIES.mkdir(exist_ok=True)
    (HISTORIES / f"{name}.json").write_text(json.dumps(histories, indent=1))


def recorded() -> list[tuple[str, str, str]]:
    cases = []
    for path in sorted(HISTORIES.glob("*.json")):
        for workflow_id, history in json.loads(path.read_text()).items():
            cases.append((path.stem, workflow_id, json.dumps(history)))
    return cases


def test_histories_are_recorded_for_the_run_and_its_tasks() -> None:
    ids = {workflow_id for _, workflow_id, _ in recorded()}
    assert any("-task-" not in i for i in ids), "no FactoryRun history recorded"
    assert any("-task-" in i for i in ids), "no Task history recorded"


@pytest.mark.parametrize(("name", "workflow_id", "history"), recorded(), ids=lambda v: str(v)[:40])
async def test_recorded_history_replays_on_the_current_code(name: str, workflow_id: str, history: str) -> None:
    replayer = Replayer(workflows=WORKFLOWS, data_converter=pydantic_data_converter)
    await replayer.replay_workflow(WorkflowHistory.from_json(workflow_id, history))
