"""Following a run: printing its progress to the end (`factory run`, `factory watch RUN_ID`), starting one
detached (`factory run --detach`) and what Ctrl-C leaves behind.

A run lives on the server, not in the CLI: Ctrl-C stops watching, never the run. In local mode the run is
served by the CLI's in-process worker, which stops with the CLI; `factory watch RUN_ID` serves a run whose
queues nobody serves while it watches, and `factory-worker --task-queue Q` serves it with no one watching.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from contextlib import AsyncExitStack
from typing import TYPE_CHECKING, Any

from rich.console import Console

from darkfactory.cli.pollers import unserved_queues, warn_if_unserved
from darkfactory.cli.run_state import memo_state
from darkfactory.cli.session import Session, fail, find_run, open_session, seconds, serve_locally
from darkfactory.constants import task_workflow_id
from darkfactory.contracts import RunState
from darkfactory.report import print_progress, print_summary

if TYPE_CHECKING:
    from temporalio.client import WorkflowHandle

POLL_S = 0.5


def worker_hint(run_id: str, task_queue: str) -> str:
    return (
        f"`factory watch {run_id}` serves it while it watches; `factory-worker --task-queue {task_queue}` keeps it "
        "moving with no one watching"
    )


def print_detached(session: Session, console: Console, run_id: str, task_queue: str) -> None:
    console.print(
        f"Run {run_id} continues without this process. Follow it: factory watch {run_id}",
        highlight=False,
        markup=False,
        soft_wrap=True,
    )
    if session.local:
        console.print(
            f"Nothing serves its task queue {task_queue} yet: {worker_hint(run_id, task_queue)}.",
            highlight=False,
            markup=False,
            soft_wrap=True,  # commands to copy must not wrap
        )


def print_continues(console: Console, run_id: str, task_queue: str, served_here: bool) -> None:
    """What Ctrl-C leaves: the run on the server, and (local mode) no worker once this one has stopped."""
    console.print(
        f"\nStopped watching; run {run_id} continues. Re-attach: factory watch {run_id}",
        highlight=False,
        markup=False,
        soft_wrap=True,
    )
    if served_here:
        console.print(
            f"This process's worker stops with it, so nothing serves task queue {task_queue}: "
            f"{worker_hint(run_id, task_queue)}.",
            highlight=False,
            markup=False,
            soft_wrap=True,
        )


async def watch(session: Session, handle: WorkflowHandle[Any, RunState], console: Console) -> RunState:
    """Print progress as the run moves, until it completes; return the summary. With no worker to answer the
    query, the state the run last kept in its memo is shown."""
    from temporalio.service import RPCError

    from darkfactory.workflows import FactoryRunWorkflow

    result_task = asyncio.ensure_future(handle.result())
    seen: dict[str, str] = {}
    try:
        while not result_task.done():
            try:
                state: RunState | None = await handle.query(FactoryRunWorkflow.status, rpc_timeout=seconds(5))
            except RPCError:
                state = await memo_state(handle)
            if state is not None:
                await print_progress(console, state, seen, functools.partial(_task_progress, session, state.run_id))
            await asyncio.wait([result_task], timeout=POLL_S)
    finally:
        if not result_task.done():
            result_task.cancel()
    return result_task.result()


async def _task_progress(session: Session, run_id: str, task_id: str) -> dict[str, Any] | None:
    from temporalio.service import RPCError

    try:
        handle = session.client.get_workflow_handle(task_workflow_id(run_id, task_id))
        progress: dict[str, Any] = await handle.query("progress", rpc_timeout=seconds(2))
        return progress
    except RPCError:
        return None


async def follow(
    session: Session,
    handle: WorkflowHandle[Any, RunState],
    console: Console,
    *,
    run_id: str,
    task_queue: str,
    served_here: bool,
) -> RunState:
    """Watch to the end; in remote mode warn, alongside, when no worker serves the run's queues; on Ctrl-C
    say how the run goes on (asyncio.run then raises KeyboardInterrupt)."""
    warning = None if session.local else asyncio.create_task(warn_if_unserved(session.client, task_queue, console))
    try:
        return await watch(session, handle, console)
    except asyncio.CancelledError:
        print_continues(console, run_id, task_queue, served_here)
        raise
    finally:
        if warning is not None:
            warning.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await warning


async def attach(run_id: str, as_json: bool) -> RunState | None:
    """`factory watch`: follow a run that exists (running or ended) to its summary; None when it ended without
    one (failed, terminated, timed out). In local mode a running run nobody serves is served from here."""
    from temporalio.client import WorkflowExecutionStatus, WorkflowFailureError

    from darkfactory.workflows import FactoryRunWorkflow

    console = Console(stderr=as_json)
    async with AsyncExitStack() as stack:
        session = await open_session()
        workflow_id = await find_run(session.client, run_id)
        if workflow_id is None:
            fail(f"no run with id {run_id} in namespace {session.client.namespace}; `factory runs` lists them")
        handle = session.client.get_workflow_handle_for(FactoryRunWorkflow.run, workflow_id)
        description = await handle.describe()
        task_queue = description.task_queue
        running = description.status == WorkflowExecutionStatus.RUNNING
        served_here = False
        if running and session.local and await unserved_queues(session.client, task_queue):
            await serve_locally(stack, session, task_queue)
            served_here = True
        status = description.status.name.lower() if description.status is not None else "unknown"
        console.print(
            f"Watching run {run_id} ({status})"
            + (f"; its task queue {task_queue} had no worker, so this process serves it." if served_here else "."),
            highlight=False,
            markup=False,
            soft_wrap=True,
        )
        if url := session.run_url(workflow_id):
            console.print(f"Web UI: {url}", highlight=False, soft_wrap=True)
        try:
            if running:
                summary = await follow(
                    session, handle, console, run_id=run_id, task_queue=task_queue, served_here=served_here
                )
            else:
                summary = await handle.result()
        except WorkflowFailureError as exc:
            ended = (await handle.describe()).status
            how = ended.name.lower() if ended is not None else "unknown"
            console.print(f"Run {run_id} ended {how} without a summary: {exc.cause}", highlight=False, markup=False)
            return None
    if as_json:
        print(summary.model_dump_json(indent=2))
    else:
        print_summary(console, summary, session.run_url(summary.run_id))
    return summary
