"""People: `factory queue` lists what waits for a person; `approve`, `reject` and `retry` answer it."""

from __future__ import annotations

import asyncio
import getpass
import json
from typing import TYPE_CHECKING

import typer

from darkfactory.cli.session import UsageError, fail, find_run, open_session
from darkfactory.constants import SA_NEEDS_REVIEW, run_workflow_id, task_workflow_id

if TYPE_CHECKING:
    from darkfactory.contracts import DecisionInput

app = typer.Typer()

QUEUE_QUERY = f'{SA_NEEDS_REVIEW} = true AND ExecutionStatus = "Running"'
"""The same filter works in the web UI's search box."""


@app.command()
def queue(as_json: bool = typer.Option(False, "--json", help="Print the waiting tasks as JSON.")) -> None:
    """List every task waiting for a person, across runs (run, task, reason, since when)."""
    from rich.console import Console
    from rich.table import Table

    waiting, signal_example = asyncio.run(list_waiting())
    if as_json:
        print(json.dumps(waiting, indent=2))
        return
    console = Console()
    if not waiting:
        console.print("No task is waiting for a person.")
        return
    table = Table()
    for column in ("run", "task", "since", "reason"):
        table.add_column(column)
    for item in waiting:
        table.add_row(item["run_id"], item["task_id"] or "(run)", item["since"], item["reason"])
    console.print(table)
    console.print(f"Answer with: factory approve|reject|retry RUN TASK [--note TEXT]   (web UI filter: {QUEUE_QUERY})")
    console.print(f"or a Temporal signal: {signal_example}", highlight=False, markup=False, soft_wrap=True)


async def list_waiting() -> tuple[list[dict[str, str]], str]:
    """The waiting tasks, oldest first, and the `temporal workflow signal` that answers the first of them,
    aimed at the server in use."""
    session = await open_session()
    waiting = []
    async for execution in session.client.list_workflows(QUEUE_QUERY):
        memo = await execution.memo()
        escalation = memo.get("escalation") or {}
        waiting.append(
            {
                "run_id": str(memo.get("run_id", "")),
                "task_id": str(memo.get("task_id", "")),
                "workflow_id": execution.id,
                "reason": str(escalation.get("reason", "")),
                "since": str(escalation.get("since", "")),
                "deadline": str(escalation.get("deadline") or ""),
            }
        )
    waiting.sort(key=lambda item: item["since"])
    workflow_id = waiting[0]["workflow_id"] if waiting else "run-RUN-task-TASK"
    example = session.temporal_command(
        "workflow", "signal", "--workflow-id", workflow_id, "--name", "approve", "--input", """'{"by": "ana"}'"""
    )
    return waiting, example


def _decide(action: str, run_id: str, task_id: str, note: str, by: str | None) -> None:
    from darkfactory.contracts import DecisionInput

    try:
        asyncio.run(send_decision(action, run_id, task_id, DecisionInput(note=note, by=by or getpass.getuser())))
    except UsageError as exc:
        fail(str(exc))
    typer.echo(f"{action} sent to " + (f"task {task_id} of run {run_id}" if task_id else f"run {run_id}"))


async def send_decision(action: str, run_id: str, task_id: str, decision: DecisionInput) -> None:
    from temporalio.client import WorkflowExecutionStatus
    from temporalio.service import RPCError

    from darkfactory.triggers.ids import run_id_of_workflow

    session = await open_session()
    # A schedule tick's run may be named by its workflow id; its tasks' ids derive from its run id.
    run_workflow = await find_run(session.client, run_id) or run_workflow_id(run_id)
    workflow_id = task_workflow_id(run_id_of_workflow(run_workflow), task_id) if task_id else run_workflow
    what = f"task {task_id} of run {run_id}" if task_id else f"run {run_id}"
    handle = session.client.get_workflow_handle(workflow_id)
    try:
        description = await handle.describe()
    except RPCError:
        raise UsageError(f"{what} does not exist (no workflow {workflow_id})") from None
    memo = await description.memo()
    if description.status != WorkflowExecutionStatus.RUNNING or not memo.get("escalation"):
        raise UsageError(f"{what} is not waiting for a person; see `factory queue`")
    await handle.signal(action, decision)


@app.command()
def approve(
    run_id: str = typer.Argument(..., metavar="RUN_ID", help="The run id."),
    task_id: str = typer.Argument(
        "", metavar="TASK_ID", help="The task id (none: the run itself, waiting after a rollback)."
    ),
    note: str = typer.Option("", help="Why."),
    by: str | None = typer.Option(None, help="Who decides (default: your user name)."),
) -> None:
    """Approve an escalated task as it stands: it is merged."""
    _decide("approve", run_id, task_id, note, by)


@app.command()
def reject(
    run_id: str = typer.Argument(..., metavar="RUN_ID", help="The run id."),
    task_id: str = typer.Argument(
        "", metavar="TASK_ID", help="The task id (none: the run itself, waiting after a rollback)."
    ),
    note: str = typer.Option("", help="Why."),
    by: str | None = typer.Option(None, help="Who decides (default: your user name)."),
) -> None:
    """Reject an escalated task: it ends `rejected` and is not merged."""
    _decide("reject", run_id, task_id, note, by)


@app.command()
def retry(
    run_id: str = typer.Argument(..., metavar="RUN_ID", help="The run id."),
    task_id: str = typer.Argument(..., metavar="TASK_ID", help="The task id."),
    note: str = typer.Option(..., help="Guidance for the next attempt; it reaches the next model request."),
    by: str | None = typer.Option(None, help="Who decides (default: your user name)."),
) -> None:
    """Send an escalated task back for more attempts, with guidance."""
    _decide("retry", run_id, task_id, note, by)
