"""Finding runs: `factory runs` lists FactoryRuns through Temporal visibility (the same filter works in the
web UI's search box, and it prints it), by repository, status and what triggered them."""

from __future__ import annotations

import asyncio
import json
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from darkfactory.cli.session import UsageError, fail, open_session
from darkfactory.constants import SA_REPO, SA_STATUS, SA_TRIGGER

if TYPE_CHECKING:
    from temporalio.client import Client

app = typer.Typer()

TRIGGERS = ("cli", "schedule", "issue", "alert", "backlog")


def runs_query(repo: str | None = None, status: str | None = None, trigger: str | None = None) -> str:
    """The visibility query for FactoryRuns, narrowed by repository path, status and trigger."""
    clauses = ["WorkflowType = 'FactoryRunWorkflow'"]
    if repo is not None:
        clauses.append(f"{SA_REPO} = {json.dumps(repo)}")
    if status is not None:
        clauses.append(f"{SA_STATUS} = {json.dumps(status)}")
    if trigger is not None:
        if trigger not in TRIGGERS:
            raise UsageError(f"--trigger {trigger!r} is not a trigger; use one of {', '.join(TRIGGERS)}")
        clauses.append(f"{SA_TRIGGER} = {json.dumps(trigger)}")
    return " AND ".join(clauses)


async def list_runs(client: Client, query: str, limit: int) -> list[dict[str, Any]]:
    from temporalio.common import SearchAttributeKey

    from darkfactory.triggers.ids import run_id_of_workflow

    # The keys spelled here, not imported from `workflows`: that would load every workflow to list them.
    repo, status, trigger = (SearchAttributeKey.for_keyword(name) for name in (SA_REPO, SA_STATUS, SA_TRIGGER))
    found: list[dict[str, Any]] = []
    async for execution in client.list_workflows(query, limit=limit):
        attributes = execution.typed_search_attributes
        found.append(
            {
                "run_id": run_id_of_workflow(execution.id),
                "workflow_id": execution.id,
                "trigger": attributes.get(trigger) or "cli",
                "status": attributes.get(status) or "",
                "execution": execution.status.name.lower() if execution.status is not None else "unknown",
                "repo": attributes.get(repo) or "",
                "started": _iso(execution.start_time),
                "closed": _iso(execution.close_time),
            }
        )
    return found


def _iso(moment: datetime | None) -> str:
    return moment.isoformat(timespec="seconds") if moment is not None else ""


@app.command(name="runs")
def runs_command(
    repo: Path | None = typer.Option(None, help="Only runs on this repository (its path)."),
    status: str | None = typer.Option(None, help="Only runs in this phase: running, shipped, failed, cancelled…"),
    trigger: str | None = typer.Option(None, help=f"Only runs started by: {', '.join(TRIGGERS)}."),
    limit: int = typer.Option(50, min=1, help="At most this many, newest first."),
    as_json: bool = typer.Option(False, "--json", help="Print the runs as JSON."),
) -> None:
    """List runs, newest first: what started them, their phase, repository and start time."""
    repo_path = str(repo.expanduser().resolve()) if repo is not None else None
    try:
        query = runs_query(repo_path, status, trigger)
    except UsageError as exc:
        fail(str(exc))
    found = asyncio.run(_list(query, limit))
    if as_json:
        print(json.dumps(found, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    console = Console()
    if not found:
        console.print("No runs match.", highlight=False)
    else:
        table = Table()
        for column in ("run", "trigger", "status", "started", "repo"):
            table.add_column(column, overflow="fold")
        for run in found:
            status_text = run["status"] if run["execution"] in ("running", "completed") else run["execution"]
            table.add_row(run["run_id"], run["trigger"], status_text, run["started"], run["repo"])
        console.print(table)
    console.print(f"Web UI filter: {query}", highlight=False, markup=False, soft_wrap=True)


async def _list(query: str, limit: int) -> list[dict[str, Any]]:
    session = await open_session()
    return await list_runs(session.client, query, limit)
