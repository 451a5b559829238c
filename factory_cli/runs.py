"""Runs: `factory run` (start one and watch it to the end), `factory status` and `factory cancel`."""

from __future__ import annotations

import asyncio
import functools
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from temporalio.client import WorkflowExecutionStatus, WorkflowHandle
from temporalio.common import SearchAttributeKey
from temporalio.service import RPCError

from darkfactory.constants import SA_REPO, SA_STATUS, TASK_QUEUE, run_workflow_id, task_workflow_id
from darkfactory.contracts import RunRequest, RunState
from darkfactory.report import print_progress, print_summary
from darkfactory.strict_sandbox import FLAG, degraded_note
from factory_cli.inputs import build_request
from factory_cli.launch import start_factory_run
from factory_cli.session import (
    Session,
    UsageError,
    fail,
    find_run,
    local_task_queue,
    open_session,
    seconds,
    serve_locally,
)
from factory_cli.watch import watch_run
from workflows import FactoryRunWorkflow

app = typer.Typer()
POLL_S = 0.5
REPO = SearchAttributeKey.for_keyword(SA_REPO)
STATUS = SearchAttributeKey.for_keyword(SA_STATUS)


@app.command()
def run(
    repo: Path = typer.Option(..., help="The target git repository."),
    spec: Path | None = typer.Option(None, help="A file with the specification."),
    spec_text: str | None = typer.Option(None, help="The specification as text."),
    base: str = typer.Option("main", help="Branch to build on (and to fast-forward with --ship merge)."),
    ship: str = typer.Option(
        "branch",
        help="branch: leave it on factory/<run>/integration; merge: fast-forward --base; push: push to --remote's "
        "--base; pr: push factory/<run> and open a pull request (GITHUB_TOKEN on the workers).",
    ),
    remote: str = typer.Option("origin", help="Remote for --ship push and pr."),
    github_repo: str | None = typer.Option(None, help="owner/repo for --ship pr (default: from the remote's URL)."),
    model: str | None = typer.Option(None, help="Claude model name, or scripted:PATH for a recorded transcript."),
    run_id: str | None = typer.Option(
        None, help="Run id (default: from the spec). A duplicate id does not start twice."
    ),
    max_attempts: int | None = typer.Option(
        None, help="Attempts per task before it escalates (default: the policy's)."
    ),
    max_turns: int = typer.Option(30, help="Model turns per attempt."),
    max_parallel: int = typer.Option(4, help="Tasks run at the same time (those whose dependencies are merged)."),
    acceptance_tests: Path | None = typer.Option(
        None, help="A directory of held-out test_*.py files the spec carries; the agent never sees their code."
    ),
    allow_degraded_sandbox: bool = typer.Option(
        False,
        FLAG,
        help="Local mode: run a real model's commands even where bubblewrap is unusable (unsandboxed, scrubbed "
        "environment only); recorded in the run summary. Without it such a run refuses to start. (Remote workers "
        "decide with factory-worker's own flag.)",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the run summary as JSON on stdout."),
) -> None:
    """Plan a spec, build it task by task in branches, gate it, merge it and ship it. Waits for the end."""
    try:
        request = build_request(
            repo,
            spec,
            spec_text,
            base,
            ship,
            model,
            run_id,
            max_attempts,
            max_turns,
            acceptance_tests,
            max_parallel,
            remote,
            github_repo,
            allow_degraded_sandbox=allow_degraded_sandbox,
        )
    except UsageError as exc:
        fail(str(exc))
    summary = asyncio.run(run_and_watch(request, as_json))
    raise typer.Exit(0 if summary.succeeded else 1)


async def start_run(
    session: Session, request: RunRequest, console: Console, task_queue: str = TASK_QUEUE
) -> WorkflowHandle[Any, RunState]:
    """Start the run; a run with this id that already exists is watched instead of started twice.

    The run's task queue names every queue it uses: its tasks inherit it and its activities run on it plus
    a resource-class suffix (workflows/steps.py), so the queues are part of the run's recorded history.
    """
    if not await start_factory_run(session.client, request, task_queue):
        console.print(f"Run [bold]{request.run_id}[/] already exists; watching it instead of starting it again.")
    return session.client.get_workflow_handle_for(FactoryRunWorkflow.run, run_workflow_id(request.run_id))


async def watch(session: Session, handle: WorkflowHandle[Any, RunState], console: Console) -> RunState:
    """Print progress as the run moves, until it completes; return the summary."""
    result_task = asyncio.ensure_future(handle.result())
    seen: dict[str, str] = {}
    while not result_task.done():
        try:
            state = await handle.query(FactoryRunWorkflow.status, rpc_timeout=seconds(5))
        except RPCError:
            state = None
        if state is not None:
            await print_progress(console, state, seen, functools.partial(_task_progress, session, state.run_id))
        await asyncio.wait([result_task], timeout=POLL_S)
    return result_task.result()


async def _task_progress(session: Session, run_id: str, task_id: str) -> dict[str, Any] | None:
    try:
        handle = session.client.get_workflow_handle(task_workflow_id(run_id, task_id))
        progress: dict[str, Any] = await handle.query("progress", rpc_timeout=seconds(2))
        return progress
    except RPCError:
        return None


async def run_and_watch(request: RunRequest, as_json: bool) -> RunState:
    console = Console(stderr=as_json)
    async with AsyncExitStack() as stack:
        session = await open_session()
        task_queue = TASK_QUEUE
        if session.local:
            # Queues of this process's own, so a second local run's worker never runs this run's steps (with
            # its own key and endpoint), and vice versa; a restarted run is served on the queues it began on.
            task_queue = await session.queue_of_run(request.run_id) or local_task_queue()
            await serve_locally(stack, session, task_queue)
        handle = await start_run(session, request, console, task_queue)
        if request.config.scripted:
            console.print("[bold yellow]Scripted model:[/] answers come from a recorded transcript, not from Claude.")
        if request.config.degraded_sandbox is not None:
            console.print(
                f"[bold yellow]Sandbox {degraded_note(request.config.degraded_sandbox)}:[/] bubblewrap is not "
                "usable here; commands run unsandboxed, with a scrubbed environment only.",
                highlight=False,
            )
        console.print(f"Run [bold]{request.run_id}[/] started.", highlight=False)
        if session.local:
            console.print(
                f"Task queue {task_queue}, served by this process; `factory run --run-id {request.run_id}` or "
                f"`factory-worker --task-queue {task_queue}` resumes the run if it stops.",
                highlight=False,
                markup=False,
            )
        if url := session.run_url(request.run_id):
            console.print(f"Web UI: {url}", highlight=False, soft_wrap=True)  # a link must not wrap
        summary = await watch(session, handle, console)
    if as_json:
        print(summary.model_dump_json(indent=2))
    else:
        print_summary(console, summary, session.run_url(summary.run_id))
    return summary


@app.command()
def status(
    run_id: str = typer.Argument(..., help="The run id (with or without the run- prefix)."),
    as_json: bool = typer.Option(False, "--json", help="Print the state as JSON."),
    live: bool = typer.Option(False, "--watch", help="Redraw the run in place until it ends (tasks, turn, cost)."),
) -> None:
    """Show a run's live state, or its summary once it has ended."""
    if live:
        if as_json:
            fail("--watch redraws for people; use --json without it for the state as JSON")
        ended = asyncio.run(_watch(run_id))
        raise typer.Exit(0 if ended is not None and ended.succeeded else 1)
    state = asyncio.run(fetch_status(run_id))
    if state is None:
        fail(f"run {run_id} has no state yet, or no worker is running to answer; start `factory-worker`")
    if as_json:
        print(state.model_dump_json(indent=2))
    else:
        print_summary(Console(), state, None)


async def _watch(run_id: str) -> RunState | None:
    session = await open_session()
    workflow_id = await find_run(session.client, run_id)
    if workflow_id is None:
        fail(f"no run with id {run_id} in namespace {session.client.namespace}; `factory runs` lists them")
    return await watch_run(
        session, session.client.get_workflow_handle_for(FactoryRunWorkflow.run, workflow_id), Console()
    )


async def fetch_status(run_id: str) -> RunState | None:
    session = await open_session()
    workflow_id = await find_run(session.client, run_id)
    if workflow_id is None:
        fail(f"no run with id {run_id} in namespace {session.client.namespace}; `factory runs` lists them")
    handle = session.client.get_workflow_handle_for(FactoryRunWorkflow.run, workflow_id)
    description = await handle.describe()
    if description.status == WorkflowExecutionStatus.COMPLETED:
        return await handle.result()
    try:
        return await handle.query(FactoryRunWorkflow.status, rpc_timeout=seconds(5))
    except RPCError:
        return None


@app.command()
def cancel(run_id: str = typer.Argument(..., help="The run id.")) -> None:
    """Cancel a run: its tasks stop and end `cancelled`, a merge in flight finishes, branches are kept."""
    try:
        asyncio.run(cancel_run(run_id))
    except UsageError as exc:
        fail(str(exc))
    typer.echo(f"cancellation requested for run {run_id}; `factory status {run_id}` shows when it has stopped")


async def cancel_run(run_id: str) -> None:
    session = await open_session()
    workflow_id = await find_run(session.client, run_id)
    if workflow_id is None:
        raise UsageError(f"no run with id {run_id} in namespace {session.client.namespace}; `factory runs` lists them")
    handle = session.client.get_workflow_handle(workflow_id)
    description = await handle.describe()
    if description.status != WorkflowExecutionStatus.RUNNING:
        status = description.status.name.lower() if description.status is not None else "unknown"
        raise UsageError(f"run {run_id} is not running ({status})")
    await handle.cancel()
