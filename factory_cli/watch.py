"""`factory status RUN --watch`: the run redrawn in place as it moves, until it ends.

Each redraw asks the run for its state (the `status` query) and each running task for its progress (the
task workflow's `progress` query: attempt, turn, phase), so it shows the current turn or gate, the time
since the run started, tokens and cost so far. On a terminal it redraws in place; piped, it prints once
at the end. Links are printed on lines of their own and never wrapped, so they can be clicked and copied.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from darkfactory.cli.session import Session, seconds
from darkfactory.constants import task_workflow_id
from darkfactory.contracts import RunState

if TYPE_CHECKING:
    from temporalio.client import WorkflowHandle

REDRAW_S = 1.0
STATE_STYLE = {"merged": "green", "running": "cyan", "escalated": "yellow", "failed": "red", "cancelled": "red"}


def _elapsed(since: datetime | None) -> str:
    if since is None:
        return "?"
    total = int((datetime.now(UTC) - since).total_seconds())
    return (
        f"{total // 3600}h{total % 3600 // 60:02d}m{total % 60:02d}s"
        if total >= 3600
        else f"{total // 60}m{total % 60:02d}s"
    )


def _cost(state: RunState) -> str:
    if state.scripted:
        return "no cost (scripted)"
    cost = state.usage.cost
    return "unknown" if cost is None else f"${cost:.4f}"


def render(state: RunState, progress: dict[str, dict[str, Any]], started: datetime | None) -> Group:
    usage = state.usage
    header = Text.assemble(
        (f"run {state.run_id}", "bold"),
        f"  {state.phase}  ·  {_elapsed(started)}  ·  {usage.total_tokens} tokens  ·  {_cost(state)}",
    )
    table = Table(expand=False)
    for column in ("task", "state", "attempt", "now", "reason"):
        table.add_column(column)
    for task in state.tasks:
        now = progress.get(task.id) or {}
        doing = f"turn {now.get('turn')} ({now.get('phase')})" if now else ""
        attempt = str(now.get("attempt") or task.attempts or "")
        table.add_row(task.id, Text(task.state, STATE_STYLE.get(task.state, "")), attempt, doing, task.reason)
    return Group(header, table)


async def _progress(session: Session, state: RunState) -> dict[str, dict[str, Any]]:
    from temporalio.service import RPCError

    found: dict[str, dict[str, Any]] = {}
    for task in state.tasks:
        if task.state != "running":
            continue
        try:
            handle = session.client.get_workflow_handle(task_workflow_id(state.run_id, task.id))
            found[task.id] = await handle.query("progress", rpc_timeout=seconds(2))
        except RPCError:
            continue
    return found


async def watch_run(session: Session, handle: WorkflowHandle[Any, RunState], console: Console) -> RunState | None:
    """Redraw until the run ends; its summary then (None when it ended without one: failed, terminated).
    With no worker to answer the query, the state the run last kept in its memo is drawn."""
    from temporalio.service import RPCError

    from darkfactory.cli.run_state import memo_state
    from darkfactory.workflows import FactoryRunWorkflow

    started = (await handle.describe()).start_time
    result = asyncio.ensure_future(handle.result())
    state: RunState | None = None
    with Live(console=console, auto_refresh=False, transient=False) as live:
        while not result.done():
            try:
                state = await handle.query(FactoryRunWorkflow.status, rpc_timeout=seconds(5))
            except RPCError:  # no worker answers: what the run kept in its memo, else the last state
                state = await memo_state(handle) or state
            if state is not None:
                live.update(render(state, await _progress(session, state), started), refresh=True)
            await asyncio.wait([result], timeout=REDRAW_S)
        try:
            state = result.result()
        except Exception:  # the run failed or was terminated: the last state seen is what there is
            return None
        live.update(render(state, {}, started), refresh=True)
    console.line()  # Live leaves the cursor at the end of its last line
    if url := session.run_url(state.run_id):
        console.print(f"Web UI: {url}", soft_wrap=True, highlight=False)
    return state
