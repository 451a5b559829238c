"""The `factory` CLI: run, demo, status, dev.

Parses, validates input before anything starts, builds a client, starts or watches workflows, prints.
With no TEMPORAL_ADDRESS it uses the embedded dev server (starting it if none listens) and runs a worker
in-process for the duration of the command; with one set it only starts and watches workflows.
"""

from __future__ import annotations

import asyncio
import getpass
import json
import os
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any, cast

import typer
from rich.console import Console
from rich.table import Table
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowHandle
from temporalio.common import SearchAttributePair, TypedSearchAttributes, WorkflowIDReusePolicy
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError

import worker as worker_module
from darkfactory import devserver
from darkfactory.constants import DEFAULT_MODEL, SA_NEEDS_REVIEW, TASK_QUEUE, run_workflow_id, task_workflow_id
from darkfactory.contracts import DecisionInput, RunConfig, RunRequest, RunState, ShipMode, slugify_run_id
from darkfactory.policy import POLICY_PATH, PolicyError, parse_policy
from darkfactory.report import print_progress, print_summary
from darkfactory.scripted import ScriptedTranscript
from darkfactory.settings import FactorySettings, TemporalSettings
from darkfactory.telemetry import configure_logging
from darkfactory.workspace import TargetError, read_file_at, validate_target
from workflows import FactoryRunWorkflow
from workflows.factory_run import REPO, STATUS

app = typer.Typer(add_completion=False, no_args_is_help=True, help="darkfactory: spec in, merged code out.")
EXAMPLES = Path(__file__).resolve().parent / "examples"
POLL_S = 0.5


class UsageError(Exception):
    """Bad input: printed as `error: ...` with exit code 2, before anything is started."""


# --------------------------------------------------------------------------------------------------
# Input


def read_spec(spec: Path | None, spec_text: str | None) -> str:
    if (spec is None) == (spec_text is None):
        raise UsageError("give exactly one of --spec FILE or --spec-text TEXT")
    if spec is not None:
        if not spec.is_file():
            raise UsageError(f"spec file {spec} does not exist")
        text = spec.read_text()
        if not text.strip():
            raise UsageError(f"spec file {spec} is empty; write what you want built into it")
        return text
    assert spec_text is not None
    if not spec_text.strip():
        raise UsageError("--spec-text is empty; say what you want built")
    return spec_text


def resolve_model(model: str | None, remote: bool) -> str:
    chosen = model or os.environ.get("DARKFACTORY_MODEL") or DEFAULT_MODEL
    if chosen.startswith("scripted:"):
        path = Path(chosen.removeprefix("scripted:")).expanduser().resolve()
        try:
            ScriptedTranscript.load(path)
        except Exception as exc:
            raise UsageError(f"scripted transcript {path}: {exc}") from exc
        return f"scripted:{path}"
    if not remote and not os.environ.get("ANTHROPIC_API_KEY"):
        raise UsageError(
            "no model: set ANTHROPIC_API_KEY (and ANTHROPIC_BASE_URL for a gateway) to use Claude, "
            "or pass --model scripted:PATH to play a recorded transcript"
        )
    return chosen


def read_acceptance_tests(directory: Path | None) -> dict[str, str]:
    """The spec's held-out acceptance tests: every test_*.py file in `directory` (not recursive)."""
    if directory is None:
        return {}
    if not directory.is_dir():
        raise UsageError(f"acceptance tests directory {directory} does not exist")
    files = {path.name: path.read_text() for path in sorted(directory.glob("test_*.py")) if path.is_file()}
    if not files:
        raise UsageError(f"{directory} has no test_*.py files; put the held-out acceptance tests there")
    return files


def new_run_id(spec: str) -> str:
    first_line = next((line for line in spec.splitlines() if line.strip()), "run")
    return f"{slugify_run_id(first_line.lstrip('# '))[:32]}-{secrets.token_hex(3)}"


# --------------------------------------------------------------------------------------------------
# Temporal plumbing


class Session:
    """A Temporal client plus, in local mode, the embedded server and an in-process worker."""

    def __init__(self, client: Client, ui_url: str | None, local: bool) -> None:
        self.client = client
        self.ui_url = ui_url
        self.local = local

    def run_url(self, run_id: str) -> str | None:
        if self.ui_url is None:
            return None
        return f"{self.ui_url}/namespaces/{self.client.namespace}/workflows/{run_workflow_id(run_id)}"


async def open_session(stack: AsyncExitStack, *, with_worker: bool) -> Session:
    temporal = TemporalSettings()
    settings = FactorySettings()
    if temporal.remote:
        client = await worker_module.connect(temporal)
        ui = os.environ.get("TEMPORAL_UI_URL")
        return Session(client, ui, local=False)
    config = devserver.DevServerConfig.from_env(settings.home)
    try:
        devserver.ensure_running(config)
    except devserver.DevServerError as exc:
        fail(f"the embedded Temporal server did not start: {exc}")
    client = await worker_module.connect(temporal, config.address)
    await worker_module.ensure_search_attributes(client)
    if with_worker:
        configure_logging(path=settings.logs_dir / "worker.jsonl")
        await stack.enter_async_context(worker_module.build_worker(client, settings))
    return Session(client, config.ui_url, local=True)


async def start_run(session: Session, request: RunRequest, console: Console) -> WorkflowHandle[Any, RunState]:
    """Start the run; a run with this id that already exists is watched instead of started twice."""
    try:
        return await session.client.start_workflow(
            FactoryRunWorkflow.run,
            request,
            id=run_workflow_id(request.run_id),
            task_queue=TASK_QUEUE,
            # A run id names one run forever: a repeated trigger finds it, even after it ended.
            id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
            search_attributes=TypedSearchAttributes(
                [SearchAttributePair(REPO, request.repo_path), SearchAttributePair(STATUS, "preparing")]
            ),
        )
    except WorkflowAlreadyStartedError:
        console.print(f"Run [bold]{request.run_id}[/] already exists; watching it instead of starting it again.")
        return session.client.get_workflow_handle_for(FactoryRunWorkflow.run, run_workflow_id(request.run_id))


async def watch(session: Session, handle: WorkflowHandle[Any, RunState], console: Console) -> RunState:
    """Print progress as the run moves, until it completes; return the summary."""
    result_task = asyncio.ensure_future(handle.result())
    seen: dict[str, str] = {}
    while not result_task.done():
        try:
            state = await handle.query(FactoryRunWorkflow.status, rpc_timeout=_seconds(5))
        except RPCError:
            state = None
        if state is not None:
            run_id = state.run_id
            await print_progress(
                console, state, seen, lambda task, run_id=run_id: _task_progress(session, run_id, task)
            )
        await asyncio.wait([result_task], timeout=POLL_S)
    return result_task.result()


async def _task_progress(session: Session, run_id: str, task_id: str) -> dict[str, Any] | None:
    try:
        handle = session.client.get_workflow_handle(task_workflow_id(run_id, task_id))
        progress: dict[str, Any] = await handle.query("progress", rpc_timeout=_seconds(2))
        return progress
    except RPCError:
        return None


def _seconds(value: float) -> Any:
    from datetime import timedelta

    return timedelta(seconds=value)


# --------------------------------------------------------------------------------------------------
# Commands


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
        )
    except UsageError as exc:
        fail(str(exc))
    summary = asyncio.run(run_and_watch(request, as_json))
    raise typer.Exit(0 if summary.succeeded else 1)


def build_request(
    repo: Path,
    spec: Path | None,
    spec_text: str | None,
    base: str,
    ship: str,
    model: str | None,
    run_id: str | None,
    max_attempts: int | None,
    max_turns: int,
    acceptance_tests: Path | None = None,
    max_parallel: int = 4,
    remote: str = "origin",
    github_repo: str | None = None,
) -> RunRequest:
    text = read_spec(spec, spec_text)
    repo_path = str(repo.expanduser().resolve())
    try:
        base_sha = validate_target(repo_path, base)
        parse_policy(read_file_at(repo_path, base_sha, POLICY_PATH), f"{POLICY_PATH} on {base}")
    except (TargetError, PolicyError) as exc:
        raise UsageError(str(exc)) from exc
    if ship not in ("branch", "merge", "push", "pr"):
        raise UsageError(f"--ship {ship!r} is not a ship mode; use branch, merge, push or pr")
    ship_mode = cast(ShipMode, ship)
    chosen = resolve_model(model, remote=TemporalSettings().remote)
    try:
        config = RunConfig(
            model=chosen,
            ship=ship_mode,
            max_attempts=max_attempts,
            max_turns=max_turns,
            max_parallel=max_parallel,
            remote=remote,
            github_repo=github_repo,
        )
        return RunRequest(
            run_id=run_id or new_run_id(text),
            repo_path=repo_path,
            spec=text,
            base_branch=base,
            config=config,
            acceptance_tests=read_acceptance_tests(acceptance_tests),
        )
    except ValueError as exc:
        raise UsageError(str(exc)) from exc


async def run_and_watch(request: RunRequest, as_json: bool) -> RunState:
    console = Console(stderr=as_json)
    async with AsyncExitStack() as stack:
        session = await open_session(stack, with_worker=True)
        handle = await start_run(session, request, console)
        if request.config.scripted:
            console.print("[bold yellow]Scripted model:[/] answers come from a recorded transcript, not from Claude.")
        console.print(f"Run [bold]{request.run_id}[/] started.", highlight=False)
        if url := session.run_url(request.run_id):
            console.print(f"Web UI: {url}", highlight=False)
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
) -> None:
    """Show a run's live state, or its summary once it has ended."""
    state = asyncio.run(fetch_status(run_id))
    if state is None:
        fail(f"run {run_id} has no state yet, or no worker is running to answer; start `factory-worker`")
    if as_json:
        print(state.model_dump_json(indent=2))
    else:
        print_summary(Console(), state, None)


async def fetch_status(run_id: str) -> RunState | None:
    async with AsyncExitStack() as stack:
        session = await open_session(stack, with_worker=False)
        handle = session.client.get_workflow_handle_for(FactoryRunWorkflow.run, run_workflow_id(run_id))
        try:
            description = await handle.describe()
        except RPCError:
            fail(f"no run with id {run_id} in namespace {session.client.namespace}")
        if description.status == WorkflowExecutionStatus.COMPLETED:
            return await handle.result()
        try:
            return await handle.query(FactoryRunWorkflow.status, rpc_timeout=_seconds(5))
        except RPCError:
            return None


QUEUE_QUERY = f'{SA_NEEDS_REVIEW} = true AND ExecutionStatus = "Running"'
"""The same filter works in the web UI's search box."""


@app.command()
def queue(as_json: bool = typer.Option(False, "--json", help="Print the waiting tasks as JSON.")) -> None:
    """List every task waiting for a person, across runs (run, task, reason, since when)."""
    waiting = asyncio.run(list_waiting())
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


async def list_waiting() -> list[dict[str, str]]:
    async with AsyncExitStack() as stack:
        session = await open_session(stack, with_worker=False)
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
        return sorted(waiting, key=lambda item: item["since"])


def _decide(action: str, run_id: str, task_id: str, note: str, by: str | None) -> None:
    try:
        asyncio.run(send_decision(action, run_id, task_id, DecisionInput(note=note, by=by or getpass.getuser())))
    except UsageError as exc:
        fail(str(exc))
    typer.echo(f"{action} sent to " + (f"task {task_id} of run {run_id}" if task_id else f"run {run_id}"))


async def send_decision(action: str, run_id: str, task_id: str, decision: DecisionInput) -> None:
    async with AsyncExitStack() as stack:
        session = await open_session(stack, with_worker=False)
        workflow_id = task_workflow_id(run_id, task_id) if task_id else run_workflow_id(run_id)
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
    run_id: str = typer.Argument(..., help="The run id."),
    task_id: str = typer.Argument("", help="The task id (none: the run itself, waiting after a rollback)."),
    note: str = typer.Option("", help="Why."),
    by: str | None = typer.Option(None, help="Who decides (default: your user name)."),
) -> None:
    """Approve an escalated task as it stands: it is merged."""
    _decide("approve", run_id, task_id, note, by)


@app.command()
def reject(
    run_id: str = typer.Argument(..., help="The run id."),
    task_id: str = typer.Argument("", help="The task id (none: the run itself, waiting after a rollback)."),
    note: str = typer.Option("", help="Why."),
    by: str | None = typer.Option(None, help="Who decides (default: your user name)."),
) -> None:
    """Reject an escalated task: it ends `rejected` and is not merged."""
    _decide("reject", run_id, task_id, note, by)


@app.command()
def retry(
    run_id: str = typer.Argument(..., help="The run id."),
    task_id: str = typer.Argument(..., help="The task id."),
    note: str = typer.Option(..., help="Guidance for the next attempt; it reaches the next model request."),
    by: str | None = typer.Option(None, help="Who decides (default: your user name)."),
) -> None:
    """Send an escalated task back for more attempts, with guidance."""
    _decide("retry", run_id, task_id, note, by)


@app.command()
def cancel(run_id: str = typer.Argument(..., help="The run id.")) -> None:
    """Cancel a run: its tasks stop and end `cancelled`, a merge in flight finishes, branches are kept."""
    try:
        asyncio.run(cancel_run(run_id))
    except UsageError as exc:
        fail(str(exc))
    typer.echo(f"cancellation requested for run {run_id}; `factory status {run_id}` shows when it has stopped")


async def cancel_run(run_id: str) -> None:
    async with AsyncExitStack() as stack:
        session = await open_session(stack, with_worker=False)
        handle = session.client.get_workflow_handle(run_workflow_id(run_id))
        try:
            description = await handle.describe()
        except RPCError:
            raise UsageError(f"no run with id {run_id} in namespace {session.client.namespace}") from None
        if description.status != WorkflowExecutionStatus.RUNNING:
            raise UsageError(f"run {run_id} is not running ({description.status.name.lower()})")
        await handle.cancel()


@app.command()
def demo(
    keep: bool = typer.Option(False, help="Keep the demo repository instead of deleting it afterwards."),
) -> None:
    """Run the offline demo: a sample repo, a two-task spec and a scripted model (no API key needed)."""
    source = EXAMPLES / "demo" / "repo"
    if not source.is_dir():
        fail(f"demo files are missing at {source}; install darkfactory from a checkout (pip install -e .)")
    workdir = Path(tempfile.mkdtemp(prefix="darkfactory-demo-"))
    repo = workdir / "textkit"
    shutil.copytree(source, repo)
    _init_repo(repo)
    console = Console()
    console.print(f"Demo repository: {repo} (a copy of examples/demo/repo)", highlight=False)
    request = build_request(
        repo,
        EXAMPLES / "demo" / "spec.md",
        None,
        "main",
        "merge",
        f"scripted:{EXAMPLES / 'demo' / 'transcript.json'}",
        None,
        None,
        30,
    )
    summary = asyncio.run(run_and_watch(request, as_json=False))
    if summary.succeeded:
        log = subprocess.run(["git", "-C", str(repo), "log", "--oneline", "-5", "main"], capture_output=True, text=True)
        console.print("\nmain after the run:\n" + log.stdout, highlight=False)
    console.print(
        "[bold yellow]The model in this demo was scripted:[/] every answer came from "
        "examples/demo/transcript.json. Set ANTHROPIC_API_KEY and use `factory run` for Claude."
    )
    if not keep:
        shutil.rmtree(workdir, ignore_errors=True)
    else:
        console.print(f"Kept {repo}", highlight=False)
    raise typer.Exit(0 if summary.succeeded else 1)


def _init_repo(repo: Path) -> None:
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "demo",
        "GIT_AUTHOR_EMAIL": "demo@example.invalid",
        "GIT_COMMITTER_NAME": "demo",
        "GIT_COMMITTER_EMAIL": "demo@example.invalid",
    }
    for args in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-q", "-m", "textkit: initial import"]):
        subprocess.run(["git", "-C", str(repo), *args], check=True, env=env)


@app.command()
def dev(
    stop: bool = typer.Option(False, "--stop", help="Stop the embedded server started by run, demo or dev."),
    show_status: bool = typer.Option(False, "--status", help="Say whether the embedded server is running."),
) -> None:
    """Run the embedded Temporal dev server in the foreground (SQLite in the data dir, UI on :8233)."""
    config = devserver.DevServerConfig.from_env(FactorySettings().home)
    if stop:
        stopped = devserver.stop(config)
        typer.echo("stopped" if stopped else "no embedded server was running")
        return
    if show_status:
        state = devserver.status(config)
        typer.echo(
            f"{'listening' if state.listening else 'not running'} on {state.address}; "
            f"UI {state.ui_url}; database {state.db_path}"
        )
        return
    typer.echo(f"Temporal dev server on {config.address}, UI {config.ui_url}, database {config.db_path}")
    try:
        code = devserver.run_foreground(config)
    except devserver.DevServerError as exc:
        fail(str(exc))
    raise typer.Exit(code)


def fail(message: str) -> Any:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


def main(argv: Sequence[str] | None = None) -> None:
    worker_module.exit_cleanly(lambda: app(args=list(argv) if argv is not None else None))


if __name__ == "__main__":
    main()
