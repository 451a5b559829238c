"""Runs: `factory run` (start one and watch it to the end, or --detach), `factory watch`, `factory status`
and `factory cancel`."""

from __future__ import annotations

import asyncio
import json
from contextlib import AsyncExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.console import Console

from darkfactory.cli.attach import attach, follow, print_detached
from darkfactory.cli.inputs import build_request
from darkfactory.cli.launch import conflict_with_existing, start_factory_run
from darkfactory.cli.pollers import warn_if_unserved
from darkfactory.cli.session import (
    Session,
    UsageError,
    fail,
    find_run,
    local_task_queue,
    open_session,
    serve_locally,
)
from darkfactory.cli.watch import watch_run
from darkfactory.constants import TASK_QUEUE, run_workflow_id
from darkfactory.contracts import RunRequest, RunState
from darkfactory.report import print_summary
from darkfactory.strict_sandbox import FLAG, degraded_note

if TYPE_CHECKING:
    from temporalio.client import WorkflowHandle

app = typer.Typer()


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
        None,
        help="Run id (default: from the spec). The same request under an existing id watches that run; a "
        "different spec, repository or base branch is refused.",
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
    detach: bool = typer.Option(
        False,
        "--detach",
        help="Start the run and return at once, printing its id, Web UI link and `factory watch RUN_ID`. In local "
        "mode nothing serves a detached run until `factory watch RUN_ID` (serves it while watching) or "
        "`factory-worker --task-queue Q` (the queue printed) runs.",
    ),
) -> None:
    """Plan a spec, build it task by task in branches, gate it, merge it and ship it. Waits for the end.

    Ctrl-C stops watching, not the run (exit 130); `factory watch RUN_ID` re-attaches. A run id already used
    by a different spec, repository or base branch is refused (exit 2); the same request again is watched.
    """
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
    try:
        if detach:
            asyncio.run(start_detached(request, as_json))
            raise typer.Exit(0)
        summary = asyncio.run(run_and_watch(request, as_json))
    except KeyboardInterrupt:
        raise typer.Exit(130) from None
    raise typer.Exit(0 if summary.succeeded else 1)


@app.command("watch")
def watch_command(
    run_id: str = typer.Argument(..., metavar="RUN_ID", help="The run id (with or without the run- prefix)."),
    as_json: bool = typer.Option(False, "--json", help="Print the run summary as JSON on stdout."),
) -> None:
    """Re-attach to a run, running or ended, and show it to the end like `factory run`, then its summary.

    In local mode a running run whose task queues no worker serves is served by this process while it
    watches. Exit 0 if the run shipped, 1 otherwise, 130 on Ctrl-C (the run continues).
    """
    try:
        summary = asyncio.run(attach(run_id, as_json))
    except KeyboardInterrupt:
        raise typer.Exit(130) from None
    raise typer.Exit(0 if summary is not None and summary.succeeded else 1)


async def start_run(
    session: Session, request: RunRequest, console: Console, task_queue: str = TASK_QUEUE
) -> WorkflowHandle[Any, RunState]:
    """Start the run; a run with this id that already exists is watched instead of started twice.

    The run's task queue names every queue it uses: its tasks inherit it and its activities run on it plus
    a resource-class suffix (workflows/steps.py), so the queues are part of the run's recorded history.
    """
    from darkfactory.workflows import FactoryRunWorkflow

    if not await start_factory_run(session.client, request, task_queue):
        console.print(f"Run [bold]{request.run_id}[/] already exists; watching it instead of starting it again.")
    return session.client.get_workflow_handle_for(FactoryRunWorkflow.run, run_workflow_id(request.run_id))


async def _open_for(request: RunRequest) -> Session:
    """The session, once the request is known not to clash with a run of the same id (else exit 2)."""
    session = await open_session()
    if problem := await conflict_with_existing(session.client, request):
        fail(problem)
    return session


async def _queue_for(session: Session, run_id: str) -> str:
    """Local mode: queues of this process's own, so a second local run's worker never runs this run's steps
    (with its own key and endpoint), and vice versa; a restarted run is served on the queues it began on."""
    if not session.local:
        return TASK_QUEUE
    return await session.queue_of_run(run_id) or local_task_queue()


def _print_started(session: Session, request: RunRequest, console: Console, task_queue: str, served: bool) -> None:
    if request.config.scripted:
        console.print("[bold yellow]Scripted model:[/] answers come from a recorded transcript, not from Claude.")
    if request.config.degraded_sandbox is not None:
        console.print(
            f"[bold yellow]Sandbox {degraded_note(request.config.degraded_sandbox)}:[/] bubblewrap is not "
            "usable here; commands run unsandboxed, with a scrubbed environment only.",
            highlight=False,
        )
    console.print(f"Run [bold]{request.run_id}[/] started.", highlight=False)
    if served:
        console.print(
            f"Task queue {task_queue}, served by this process; `factory watch {request.run_id}` or "
            f"`factory-worker --task-queue {task_queue}` resumes the run if it stops.",
            highlight=False,
            markup=False,
            soft_wrap=True,
        )
    if url := session.run_url(request.run_id):
        console.print(f"Web UI: {url}", highlight=False, soft_wrap=True)  # a link must not wrap


async def run_and_watch(request: RunRequest, as_json: bool) -> RunState:
    console = Console(stderr=as_json)
    async with AsyncExitStack() as stack:
        session = await _open_for(request)
        task_queue = await _queue_for(session, request.run_id)
        if session.local:
            await serve_locally(stack, session, task_queue)
        handle = await start_run(session, request, console, task_queue)
        _print_started(session, request, console, task_queue, served=session.local)
        summary = await follow(
            session, handle, console, run_id=request.run_id, task_queue=task_queue, served_here=session.local
        )
    if as_json:
        print(summary.model_dump_json(indent=2))
    else:
        print_summary(console, summary, session.run_url(summary.run_id))
    return summary


async def start_detached(request: RunRequest, as_json: bool) -> None:
    """Start the run (or find it, when it exists) and return; in remote mode, warn if no worker serves it."""
    console = Console(stderr=as_json)
    session = await _open_for(request)
    task_queue = await _queue_for(session, request.run_id)
    await start_run(session, request, console, task_queue)
    _print_started(session, request, console, task_queue, served=False)
    print_detached(session, console, request.run_id, task_queue)
    if as_json:
        url = session.run_url(request.run_id)
        print(json.dumps({"run_id": request.run_id, "task_queue": task_queue, "web_ui": url}, indent=2))
    if not session.local:
        await warn_if_unserved(session.client, task_queue, console)


@app.command()
def status(
    run_id: str = typer.Argument(..., metavar="RUN_ID", help="The run id (with or without the run- prefix)."),
    as_json: bool = typer.Option(False, "--json", help="Print the state as JSON."),
    live: bool = typer.Option(False, "--watch", help="Redraw the run in place until it ends (tasks, turn, cost)."),
) -> None:
    """Show a run's live state, or its summary once it has ended."""
    if live:
        if as_json:
            fail("--watch redraws for people; use --json without it for the state as JSON")
        try:
            ended = asyncio.run(_watch(run_id))
        except KeyboardInterrupt:
            typer.echo(f"\nStopped watching; run {run_id} continues. Re-attach: factory watch {run_id}", err=True)
            raise typer.Exit(130) from None
        raise typer.Exit(0 if ended is not None and ended.succeeded else 1)
    state = asyncio.run(fetch_status(run_id))
    if state is None:
        fail(f"run {run_id} has no state yet, or no worker is running to answer; start `factory-worker`")
    if as_json:
        print(state.model_dump_json(indent=2))
    else:
        print_summary(Console(), state, None)


async def _watch(run_id: str) -> RunState | None:
    from darkfactory.workflows import FactoryRunWorkflow

    session = await open_session()
    workflow_id = await find_run(session.client, run_id)
    if workflow_id is None:
        fail(f"no run with id {run_id} in namespace {session.client.namespace}; `factory runs` lists them")
    return await watch_run(
        session, session.client.get_workflow_handle_for(FactoryRunWorkflow.run, workflow_id), Console()
    )


async def fetch_status(run_id: str) -> RunState | None:
    from darkfactory.cli.run_state import read_run_state
    from darkfactory.workflows import FactoryRunWorkflow

    session = await open_session()
    workflow_id = await find_run(session.client, run_id)
    if workflow_id is None:
        fail(f"no run with id {run_id} in namespace {session.client.namespace}; `factory runs` lists them")
    return await read_run_state(session.client.get_workflow_handle_for(FactoryRunWorkflow.run, workflow_id))


@app.command()
def cancel(run_id: str = typer.Argument(..., metavar="RUN_ID", help="The run id.")) -> None:
    """Cancel a run: its tasks stop and end `cancelled`, a merge in flight finishes, branches are kept."""
    try:
        asyncio.run(cancel_run(run_id))
    except UsageError as exc:
        fail(str(exc))
    typer.echo(f"cancellation requested for run {run_id}; `factory status {run_id}` shows when it has stopped")


async def cancel_run(run_id: str) -> None:
    from temporalio.client import WorkflowExecutionStatus

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
