"""The backlog: `factory backlog add|list|remove`, one durable BacklogWorkflow per repository.

`add` builds and checks the run's request here (as `factory run` would, with trigger `backlog`) and
signals-with-start the repository's backlog, whose workflow id derives from the repository path, so adding
twice never makes two backlogs; the item id is chosen here, so a retried signal is ignored. `remove` is an
update: the workflow refuses unknown and started items, and the refusal is printed. `list` reads the memo
the workflow publishes, plus adds no worker has seen yet (from the history), so it needs no worker.
Queued items run on factory-worker (`--task-queue`, as for schedules), each as a normal FactoryRun.
"""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from darkfactory.cli.session import UsageError, fail, open_session
from darkfactory.constants import TASK_QUEUE

if TYPE_CHECKING:
    from temporalio.client import Client, WorkflowExecutionDescription

    from darkfactory.contracts import BacklogAdd, BacklogView, HoursWindow, ItemView, RunRequest

# The Temporal SDK, the contracts and the workflows are imported where they are used, so listing the
# commands stays cheap.

app = typer.Typer()
group = typer.Typer(
    name="backlog",
    no_args_is_help=True,
    help="A per-repository queue of specs, run by priority (executed by factory-worker).",
)
app.add_typer(group)

_HOURS = re.compile(r"^(\d{1,2})-(\d{1,2})$")
_NO_WINDOW = ("any", "always")
UPDATE_TIMEOUT = timedelta(seconds=30)
"""How long `remove` waits for a worker to answer."""


def parse_hours(text: str) -> HoursWindow | None:
    """`22-06` (UTC, may wrap midnight); `any` lifts the window (None)."""
    from darkfactory.contracts import HoursWindow

    value = text.strip().lower()
    if value in _NO_WINDOW:
        return None
    match = _HOURS.match(value)
    start, end = (int(part) for part in match.groups()) if match else (-1, -1)
    if not 0 <= start <= 23 or not 0 <= end <= 24 or start == end:
        raise UsageError(
            f"--hours {text!r} is not a window of UTC hours; write START-END with START 0-23 and END 0-24, "
            "different, like 22-06 (it may wrap midnight), or `any` to lift the window"
        )
    return HoursWindow(start=start, end=end)


def repo_path_of(repo: Path) -> str:
    return str(repo.expanduser().resolve())


def title_of(request: RunRequest) -> str:
    if request.spec_path:
        return request.spec_path
    first = next((line for line in request.spec.splitlines() if line.strip()), "")
    return first.lstrip("# ").strip()[:80]


def new_item_id() -> str:
    return uuid.uuid4().hex[:8]


@group.command()
def add(
    repo: Path = typer.Option(..., help="The target git repository (a path every worker can reach)."),
    spec: Path | None = typer.Option(None, help="A spec file; its text is stored in the backlog."),
    spec_text: str | None = typer.Option(None, help="The spec as text."),
    spec_path: str | None = typer.Option(
        None, help="A spec file inside the repository, read at the run's base commit when it starts."
    ),
    priority: int | None = typer.Option(
        None, help="Lower runs first; equal priorities in the order added (default: the backlog's default, 100)."
    ),
    base: str = typer.Option("main", help="Branch the run builds on."),
    ship: str = typer.Option("branch", help="branch, merge, push or pr (as for factory run)."),
    model: str | None = typer.Option(None, help="Claude model, or scripted:PATH."),
    max_attempts: int | None = typer.Option(None, help="Attempts per task before it escalates."),
    concurrency: int | None = typer.Option(
        None, help="Set the backlog's runs at once, 1 to 32 (default 1; it stays until changed)."
    ),
    hours: str | None = typer.Option(
        None, help="Set the UTC hours runs may start in, like 22-06 (kept until changed); `any` lifts it."
    ),
    task_queue: str = typer.Option(TASK_QUEUE, help="The queue factory-worker serves (backlog and its runs)."),
    as_json: bool = typer.Option(False, "--json", help="Print the queued item as JSON."),
) -> None:
    """Queue a spec in the repository's backlog (starting the backlog if it has none)."""
    from pydantic import ValidationError

    from darkfactory.cli.inputs import build_request, explain_invalid
    from darkfactory.contracts import DEFAULT_PRIORITY, BacklogAdd, BacklogItem

    try:
        if sum(given is not None for given in (spec, spec_text, spec_path)) != 1:
            raise UsageError("give exactly one of --spec FILE, --spec-text TEXT or --spec-path PATH_IN_REPO")
        window = parse_hours(hours) if hours is not None else None
        request = build_request(
            repo, spec, spec_text, base, ship, model, None, max_attempts, 30,
            trigger="backlog", spec_path=spec_path, served_here=False,
        )  # fmt: skip
        try:
            item = BacklogItem(
                item_id=new_item_id(),
                priority=DEFAULT_PRIORITY if priority is None else priority,
                title=title_of(request),
                request=request,
            )
            signal = BacklogAdd(
                item=item, concurrency=concurrency, hours=window, any_hours=hours is not None and not window
            )
        except ValidationError as exc:
            raise UsageError(explain_invalid(exc, {"priority": "--priority", "concurrency": "--concurrency"})) from None
        workflow_id = asyncio.run(_add(signal, task_queue))
    except UsageError as exc:
        fail(str(exc))
    if as_json:
        print(json.dumps({"item_id": item.item_id, "run_id": request.run_id, "workflow_id": workflow_id}))
        return
    typer.echo(
        f"queued item {item.item_id} (priority {priority}) as run {request.run_id} in the backlog of "
        f"{request.repo_path}; runs start on factory-worker (queue {task_queue}); "
        f"`factory backlog list --repo {request.repo_path}` shows the queue"
    )


async def add_item(client: Client, signal: BacklogAdd, task_queue: str = TASK_QUEUE) -> str:
    """Signal-with-start the repository's backlog with `signal`; the backlog's workflow id."""
    from temporalio.common import SearchAttributeKey, SearchAttributePair, TypedSearchAttributes
    from temporalio.service import RPCError

    from darkfactory.constants import SA_REPO
    from darkfactory.contracts import BacklogInput, BacklogSettings, backlog_workflow_id
    from darkfactory.workflows import BacklogWorkflow

    repo_path = signal.item.request.repo_path
    workflow_id = backlog_workflow_id(repo_path)
    # Only a new backlog takes these start settings; a running one takes the signal's.
    settings = signal.applied_to(BacklogSettings())
    try:
        await client.start_workflow(
            BacklogWorkflow.run,
            BacklogInput(repo_path=repo_path, settings=settings),
            id=workflow_id,
            task_queue=task_queue,
            start_signal="add",
            start_signal_args=[signal],
            search_attributes=TypedSearchAttributes(
                [SearchAttributePair(SearchAttributeKey.for_keyword(SA_REPO), repo_path)]
            ),
        )
    except RPCError as exc:
        raise UsageError(f"Temporal refused the backlog of {repo_path}: {exc.message}") from None
    return workflow_id


async def _add(signal: BacklogAdd, task_queue: str) -> str:
    session = await open_session()
    return await add_item(session.client, signal, task_queue)


@group.command(name="list")
def list_backlog(
    repo: Path = typer.Option(..., help="The repository whose backlog to show."),
    as_json: bool = typer.Option(False, "--json", help="Print the backlog as JSON."),
) -> None:
    """Show the backlog: queued items in the order they will start, running and recent ones (no worker needed)."""
    repo_path = repo_path_of(repo)
    if not Path(repo_path).is_dir():
        fail(f"repository path {repo_path} does not exist; pass --repo with the repository the backlog is for")
    listing = asyncio.run(_list(repo_path))
    if as_json:
        print(json.dumps(listing, indent=2))
        return
    _print_listing(listing)


async def read_backlog(client: Client, repo_path: str) -> dict[str, Any] | None:
    """The backlog as its memo says, with adds no worker has seen yet; None when the repository has none."""
    from temporalio.service import RPCError, RPCStatusCode

    from darkfactory.contracts import BACKLOG_MEMO, BacklogView, ItemView, backlog_workflow_id

    workflow_id = backlog_workflow_id(repo_path)
    try:
        description = await client.get_workflow_handle(workflow_id).describe()
    except RPCError as exc:
        if exc.status == RPCStatusCode.NOT_FOUND:
            return None
        raise
    view = await description.memo_value(BACKLOG_MEMO, None, type_hint=BacklogView)
    pending: list[BacklogAdd] = []
    if view is None or description.raw_description.HasField("pending_workflow_task"):
        view, pending = await _unseen(client, description, view)
    known = {item.item_id for item in [*view.queued, *view.running, *view.done]}
    fresh: list[ItemView] = []
    settings = view.settings
    for signal in pending:
        item = signal.item
        settings = signal.applied_to(settings)
        if item.item_id in known:
            continue
        known.add(item.item_id)
        fresh.append(
            ItemView(item_id=item.item_id, priority=item.priority, title=item.title, run_id=item.request.run_id,
                     state="pending")
        )  # fmt: skip
    # Pending items arrived after every queued one, so they go last within their priority.
    ranked = [((v.priority, 0, i), v) for i, v in enumerate(view.queued)]
    ranked += [((v.priority, 1, i), v) for i, v in enumerate(fresh)]
    queued = [v for _, v in sorted(ranked, key=lambda pair: pair[0])]
    listing = view.model_copy(update={"queued": queued, "settings": settings}).model_dump(mode="json")
    status = description.status.name.lower() if description.status is not None else "unknown"
    return {"workflow_id": workflow_id, "execution": status, "unseen_by_a_worker": len(fresh), **listing}


async def _unseen(
    client: Client, description: WorkflowExecutionDescription, view: BacklogView | None
) -> tuple[BacklogView, list[BacklogAdd]]:
    """The `add` signals after the last completed workflow task of the current run (no worker has seen them),
    and the view when no worker has published one yet (the run's input)."""
    from temporalio.api.enums.v1 import EventType

    from darkfactory.contracts import BacklogAdd, BacklogInput, BacklogState, backlog_view

    handle = client.get_workflow_handle(description.id, run_id=description.run_id)
    pending: list[BacklogAdd] = []
    async for event in handle.fetch_history_events():
        if event.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED:
            pending.clear()
        elif event.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_STARTED and view is None:
            started = event.workflow_execution_started_event_attributes
            [start] = await client.data_converter.decode(started.input.payloads, [BacklogInput])
            view = backlog_view(start.state or BacklogState(repo_path=start.repo_path, settings=start.settings))
        elif event.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED:
            signaled = event.workflow_execution_signaled_event_attributes
            if signaled.signal_name == "add":
                [signal] = await client.data_converter.decode(signaled.input.payloads, [BacklogAdd])
                pending.append(signal)
    if view is None:
        raise UsageError(f"workflow {description.id} is no backlog (its history has no start input)")
    return view, pending


async def _list(repo_path: str) -> dict[str, Any]:
    from darkfactory.contracts import backlog_workflow_id

    session = await open_session()
    try:
        listing = await read_backlog(session.client, repo_path)
    except UsageError as exc:
        fail(str(exc))
    if listing is None:
        return {"workflow_id": backlog_workflow_id(repo_path), "execution": "none", "repo_path": repo_path,
                "queued": [], "running": [], "done": []}  # fmt: skip
    return listing


def _print_listing(listing: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(highlight=False)
    if listing["execution"] == "none":
        console.print(
            f"No backlog for {listing['repo_path']} yet; `factory backlog add --repo ... --spec FILE` starts one.",
            markup=False,
        )
        return
    settings = listing["settings"]
    hours = settings["hours"]
    window = f"{hours['start']:02d}-{hours['end']:02d} UTC" if hours else "any hour"
    console.print(
        f"Backlog of {listing['repo_path']} ({listing['workflow_id']}, {listing['execution']}): "
        f"{settings['concurrency']} at once, {window}",
        markup=False,
    )
    if listing["waiting_until"]:
        console.print(f"Outside its hours: the next run starts at {listing['waiting_until']}", markup=False)
    if listing["unseen_by_a_worker"]:
        console.print(f"{listing['unseen_by_a_worker']} item(s) pending: no worker has seen them yet", markup=False)
    table = Table()
    for column in ("#", "item", "priority", "state", "run", "title"):
        table.add_column(column, overflow="fold")
    rows = [*listing["running"], *listing["queued"], *reversed(listing["done"][-10:])]
    position = 0
    for item in rows:
        queued = item["state"] in ("queued", "pending")
        position += queued
        state = item["outcome"] if item["state"] == "done" else item["state"]
        table.add_row(
            str(position) if queued else "", item["item_id"], str(item["priority"]), state, item["run_id"],
            item["title"],
        )  # fmt: skip
    console.print(table if rows else "Nothing queued.")


@group.command()
def remove(
    item_id: str = typer.Argument(..., metavar="ITEM_ID", help="The item's id, as `factory backlog list` shows it."),
    repo: Path = typer.Option(..., help="The repository whose backlog holds the item."),
) -> None:
    """Take a queued item off the backlog before it starts (a started one is cancelled with `factory cancel`)."""
    from darkfactory.contracts import ITEM_ID_PATTERN

    repo_path = repo_path_of(repo)
    try:
        if not re.match(ITEM_ID_PATTERN, item_id):
            raise UsageError(f"{item_id!r} is not an item id; `factory backlog list --repo {repo}` shows them")
        removed = asyncio.run(_remove(repo_path, item_id))
    except UsageError as exc:
        fail(str(exc))
    typer.echo(f"removed item {removed.item_id} ({removed.title or removed.run_id}) from the backlog of {repo_path}")


async def remove_item(client: Client, repo_path: str, item_id: str) -> ItemView:
    """Remove a queued item (UsageError naming why not: no backlog, unknown or started item, no worker)."""
    from temporalio.client import WorkflowUpdateFailedError, WorkflowUpdateRPCTimeoutOrCancelledError
    from temporalio.exceptions import ApplicationError
    from temporalio.service import RPCError, RPCStatusCode

    from darkfactory.contracts import backlog_workflow_id
    from darkfactory.workflows import BacklogWorkflow

    handle = client.get_workflow_handle_for(BacklogWorkflow.run, backlog_workflow_id(repo_path))
    hint = f"`factory backlog list --repo {repo_path}` shows the queue"
    try:
        return await handle.execute_update(BacklogWorkflow.remove, item_id, rpc_timeout=UPDATE_TIMEOUT)
    except WorkflowUpdateFailedError as exc:
        reason = exc.cause.message if isinstance(exc.cause, ApplicationError) else str(exc.cause)
        raise UsageError(f"{reason}; {hint}") from None
    except WorkflowUpdateRPCTimeoutOrCancelledError:
        raise UsageError(
            f"no worker answered within {UPDATE_TIMEOUT.seconds}s; is factory-worker running on the backlog's "
            "queue? (the removal may still happen when one does)"
        ) from None
    except RPCError as exc:
        if exc.status == RPCStatusCode.NOT_FOUND:
            raise UsageError(f"no backlog for {repo_path}; `factory backlog add` starts one") from None
        raise UsageError(f"Temporal refused the removal: {exc.message}") from None


async def _remove(repo_path: str, item_id: str) -> ItemView:
    session = await open_session()
    return await remove_item(session.client, repo_path, item_id)
