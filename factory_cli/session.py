"""What every command shares: the Temporal session, in local mode an in-process worker, and failing cleanly.

With no TEMPORAL_ADDRESS the CLI uses the embedded dev server (starting it if none listens); `factory run`
then serves its run with a worker in this process, on task queues of its own (`local_task_queue`), so two
runs on one machine never execute each other's steps with each other's credentials and model endpoint.
"""

from __future__ import annotations

import os
import secrets
from contextlib import AsyncExitStack
from datetime import timedelta
from typing import NoReturn

import typer
from temporalio.client import Client
from temporalio.service import RPCError

import worker as worker_module
from darkfactory import devserver
from darkfactory.constants import TASK_QUEUE, run_workflow_id
from darkfactory.settings import CredentialsError, FactorySettings, TemporalSettings, load_credentials
from darkfactory.telemetry import configure_logging
from darkfactory.triggers.ids import workflow_id_candidates

LOCAL_QUEUE_INFIX = "-local-"
"""A local run's task queue is `darkfactory-local-<id>`; its model and gates queues add their suffixes."""


class UsageError(Exception):
    """Bad input: printed as `error: ...` with exit code 2, before anything is started."""


def fail(message: str) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


def seconds(value: float) -> timedelta:
    return timedelta(seconds=value)


def local_task_queue() -> str:
    """A task queue for this process alone (the pid for people reading the web UI, random bits for uniqueness)."""
    return f"{TASK_QUEUE}{LOCAL_QUEUE_INFIX}{os.getpid()}-{secrets.token_hex(3)}"


class Session:
    """A Temporal client plus, in local mode, the embedded server's web UI."""

    def __init__(self, client: Client, ui_url: str | None, local: bool) -> None:
        self.client = client
        self.ui_url = ui_url
        self.local = local

    def run_url(self, run_id: str) -> str | None:
        if self.ui_url is None:
            return None
        return f"{self.ui_url}/namespaces/{self.client.namespace}/workflows/{run_workflow_id(run_id)}"

    async def queue_of_run(self, run_id: str) -> str | None:
        """The task queue an existing run was started on (None: no such run), so a restart serves that one."""
        try:
            description = await self.client.get_workflow_handle(run_workflow_id(run_id)).describe()
        except RPCError:
            return None
        return description.task_queue


async def find_run(client: Client, run_id: str) -> str | None:
    """The workflow id of the run `run_id` names (a run id, a workflow id, or a schedule tick's run id in
    either spelling), or None when there is no such run."""
    for workflow_id in workflow_id_candidates(run_id):
        try:
            await client.get_workflow_handle(workflow_id).describe()
        except RPCError:
            continue
        return workflow_id
    return None


async def open_session() -> Session:
    """Connect: to TEMPORAL_ADDRESS, or to the embedded dev server (started if none listens)."""
    temporal = TemporalSettings()
    settings = FactorySettings()
    if temporal.remote:
        client = await worker_module.connect(temporal)
        return Session(client, os.environ.get("TEMPORAL_UI_URL"), local=False)
    config = devserver.DevServerConfig.from_env(settings.home)
    try:
        devserver.ensure_running(config)
    except devserver.DevServerError as exc:
        fail(f"the embedded Temporal server did not start: {exc}")
    client = await worker_module.connect(temporal, config.address)
    await worker_module.ensure_search_attributes(client)
    return Session(client, config.ui_url, local=True)


async def serve_locally(stack: AsyncExitStack, session: Session, task_queue: str) -> None:
    """Run a worker in this process on `task_queue` (and its model and gates queues) until the stack closes."""
    settings = FactorySettings()
    try:
        credentials = load_credentials()
    except CredentialsError as exc:
        fail(str(exc))
    configure_logging(path=settings.logs_dir / "worker.jsonl")
    await stack.enter_async_context(
        worker_module.build_worker(session.client, settings, task_queue=task_queue, credentials=credentials)
    )
