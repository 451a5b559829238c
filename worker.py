"""The composition root: connects to Temporal, builds model clients, activities and interceptors, runs a worker.

`factory-worker` runs one worker process against `TEMPORAL_ADDRESS` (or the embedded dev server), optionally
serving Prometheus metrics (`--metrics-port`). The CLI reuses `build_worker` to run a worker in-process when no
address is set.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import importlib
import os
import signal
import threading
from collections.abc import Sequence
from datetime import timedelta

import structlog
import typer
from pydantic import SecretStr
from temporalio.client import Client
from temporalio.worker import Worker

from darkfactory import devserver
from darkfactory.activities.audit import AuditActivities, AuditInterceptor
from darkfactory.activities.context import LogContextInterceptor
from darkfactory.activities.gates import GateActivities
from darkfactory.activities.logging_setup import sdk_context_as_fields
from darkfactory.activities.metrics import METRICS_BIND_ENV, MetricsBindError, MetricsEndpoint, serve_metrics
from darkfactory.activities.model import ModelActivities
from darkfactory.activities.notify import NotifyActivities
from darkfactory.activities.workspace import WorkspaceActivities
from darkfactory.blobs import BlobStore
from darkfactory.cli.session import connect, ensure_search_attributes, exit_cleanly
from darkfactory.constants import QUEUE_CLASSES, TASK_QUEUE, queue_name
from darkfactory.model_seam import SCRIPTED_PREFIX, ModelClient
from darkfactory.settings import Credentials, CredentialsError, FactorySettings, TemporalSettings, load_credentials
from darkfactory.strict_sandbox import FLAG, INSTALL, DegradedSandbox, worker_runs_degraded
from darkfactory.telemetry import configure_logging
from darkfactory.workflows import WORKFLOWS

log = structlog.get_logger(__name__)


class ModelClients:
    """One client per model string per process (the SDK client pools connections; transcripts load once).

    `api_key` is handed to the SDK explicitly, so a key read from ANTHROPIC_API_KEY_FILE works; None lets
    the SDK read ANTHROPIC_API_KEY itself.
    """

    def __init__(self, api_key: SecretStr | None = None) -> None:
        self._clients: dict[str, ModelClient] = {}
        self._api_key = api_key

    def __call__(self, model: str) -> ModelClient:
        if model not in self._clients:
            from darkfactory.llm import AnthropicClient, build_model_client  # loaded ahead by `_warm_model_sdk`

            if model.startswith(SCRIPTED_PREFIX) or self._api_key is None:
                self._clients[model] = build_model_client(model)
            else:
                self._clients[model] = AnthropicClient(api_key=self._api_key.get_secret_value())
        return self._clients[model]

    async def aclose(self) -> None:
        """Close the clients' connection pools (the worker calls this when it stops)."""
        for client in self._clients.values():
            close = getattr(client, "aclose", None)
            if close is not None:
                await close()
        self._clients.clear()


class FactoryWorkers:
    """One Temporal worker per resource class this process serves, started and stopped together."""

    def __init__(self, workers: list[Worker], model_clients: ModelClients) -> None:
        self.workers = workers
        self._model_clients = model_clients

    async def __aenter__(self) -> FactoryWorkers:
        for worker in self.workers:
            await worker.__aenter__()
        return self

    async def __aexit__(self, *exc: object) -> None:
        for worker in reversed(self.workers):
            await worker.__aexit__(None, None, None)
        await self._model_clients.aclose()


def build_worker(
    client: Client,
    settings: FactorySettings,
    *,
    task_queue: str = TASK_QUEUE,
    model_clients: ModelClients | None = None,
    max_concurrent_activities: int | None = None,
    serve: Sequence[str] = QUEUE_CLASSES,
    credentials: Credentials | None = None,
) -> FactoryWorkers:
    """Workers for the resource classes in `serve` (all by default), each capped by what limits it:
    workflows and git steps by a thread pool, model calls by the provider's rate limits, gates by cores.

    Model clients use `credentials` (default: read from the environment now) unless `model_clients` is given.
    """
    unknown = set(serve) - set(QUEUE_CLASSES)
    if unknown:
        raise ValueError(f"unknown resource class(es) {sorted(unknown)}; choose from {', '.join(QUEUE_CLASSES)}")
    blobs = BlobStore(settings.blobs_dir)
    if model_clients is None:
        model_clients = ModelClients((credentials or load_credentials()).anthropic_api_key)
    clients = model_clients
    model = ModelActivities(clients, blobs)
    workspace = WorkspaceActivities(settings, blobs)
    gates = GateActivities(settings, blobs)
    notify = NotifyActivities()
    audit = AuditActivities(settings.home)
    # Workflow and activity log lines carry their ids as JSON fields, not in the message text.
    sdk_context_as_fields()
    # Binds the log ids, then writes the run's audit trail from what each activity returned.
    interceptors = [LogContextInterceptor(), AuditInterceptor(settings.home)]
    slots = max_concurrent_activities or settings.max_concurrent_activities
    workers: list[Worker] = []
    if "workflows" in serve:
        workers.append(
            Worker(
                client,
                task_queue=queue_name(task_queue, "workflows"),
                workflows=WORKFLOWS,
                sticky_queue_schedule_to_start_timeout=timedelta(seconds=settings.sticky_timeout_s),
                activities=[
                    workspace.prepare_run,
                    workspace.open_workspace,
                    workspace.run_tools,
                    workspace.merge_task,
                    workspace.restore_branch,
                    workspace.ship_run,
                    workspace.revert_shipped,
                    workspace.release_workspaces,
                    notify.post_issue_comment,
                    audit.record_decision,
                ],
                # git and tools block: they run as sync activities in this pool.
                activity_executor=concurrent.futures.ThreadPoolExecutor(max_workers=slots),
                max_concurrent_activities=slots,
                interceptors=interceptors,
            )
        )
    if "model" in serve:
        _warm_model_sdk()
        workers.append(
            Worker(
                client,
                task_queue=queue_name(task_queue, "model"),
                activities=[model.plan_run, model.agent_turn, model.review_change, model.write_acceptance_tests],
                max_concurrent_activities=settings.model_concurrency,
                # Server-side, for the whole queue across workers: the provider's rate limit is global.
                max_task_queue_activities_per_second=settings.model_calls_per_second,
                interceptors=interceptors,
            )
        )
    if "gates" in serve:
        cores = settings.gate_concurrency or os.cpu_count() or 1
        workers.append(
            Worker(
                client,
                task_queue=queue_name(task_queue, "gates"),
                activities=[gates.measure_base, gates.check_acceptance, gates.run_gates],
                activity_executor=concurrent.futures.ThreadPoolExecutor(max_workers=cores),
                max_concurrent_activities=cores,
                interceptors=interceptors,
            )
        )
    return FactoryWorkers(workers, clients)


def _warm_model_sdk() -> None:
    """Import the model SDK beside the worker's start instead of before it: it takes seconds (the anthropic
    package's types), and a worker that replaces a killed one should poll at once. The first model call waits
    for it only if it is not done by then, and such a call is a retry that waits out a heartbeat timeout anyway."""
    threading.Thread(
        target=importlib.import_module, args=("darkfactory.llm",), name="warm-model-sdk", daemon=True
    ).start()


async def run_worker(
    task_queue: str,
    max_concurrent: int | None,
    serve: Sequence[str] = QUEUE_CLASSES,
    *,
    credentials: Credentials | None = None,
    degraded_sandbox: bool = False,
    metrics: MetricsEndpoint | None = None,
) -> None:
    """Serve until SIGINT/SIGTERM, reporting metrics through `metrics` when given."""
    credentials = credentials or load_credentials()
    temporal = TemporalSettings()
    settings = FactorySettings()
    address = temporal.address
    if address is None:
        config = devserver.DevServerConfig.from_env(settings.home)
        devserver.ensure_running(config)
        address = config.address
    client = await connect(temporal, address, runtime=metrics.runtime if metrics else None)
    await ensure_search_attributes(client)
    if credentials.anthropic_api_key is None and "model" in serve:
        log.warning("no_anthropic_key", hint="only scripted:... models will work on this worker")
    if degraded_sandbox:
        log.warning(
            "sandbox_degraded",
            opted_out_by=FLAG,
            hint=f"commands run unsandboxed with a scrubbed environment; {INSTALL}",
        )
    worker = build_worker(
        client,
        settings,
        task_queue=task_queue,
        max_concurrent_activities=max_concurrent,
        serve=serve,
        credentials=credentials,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    log.info(
        "worker_started",
        address=address,
        namespace=client.namespace,
        task_queue=task_queue,
        serves=list(serve),
        pid=os.getpid(),
        metrics=metrics.url if metrics else None,
    )
    async with worker:
        await stop.wait()
    log.info("worker_stopped")


app = typer.Typer(add_completion=False, help="Run a darkfactory worker (workflows and activities).")


@app.command()
def serve(
    task_queue: str = typer.Option(TASK_QUEUE, help="Task queue to poll."),
    max_concurrent: int | None = typer.Option(
        None, help="Activity slots (default DARKFACTORY_MAX_CONCURRENT_ACTIVITIES or 8)."
    ),
    log_level: str = typer.Option("INFO", help="Log level."),
    serve: str = typer.Option(
        ",".join(QUEUE_CLASSES), help="Resource classes to serve: workflows, model, gates (comma-separated)."
    ),
    allow_degraded_sandbox: bool = typer.Option(
        False,
        FLAG,
        help="Serve even where bubblewrap is unusable: commands run unsandboxed, with a scrubbed environment "
        "only. Without it such a worker refuses to start (unless it serves only model calls).",
    ),
    metrics_bind: str | None = typer.Option(
        None,
        "--metrics-port",
        "--metrics-bind",
        envvar=METRICS_BIND_ENV,
        metavar="[HOST:]PORT",
        help="Serve Prometheus metrics (the SDK's temporal_* and the factory's darkfactory_*) at "
        "http://HOST:PORT/metrics; a port alone listens on 127.0.0.1. Off by default.",
    ),
) -> None:
    """Serve the factory's workflows and activities until SIGINT/SIGTERM. Logs are JSON lines on stderr.

    Exit codes: 0 stopped by a signal, 2 refused to start (configuration), 1 anything else.
    """
    classes = [name.strip() for name in serve.split(",") if name.strip()]
    # Before connecting or serving anything: a refused worker takes no task, so makes no model call.
    try:
        # The exporter binds when the runtime is built: a taken port stops the worker here, not silently later.
        metrics = serve_metrics(metrics_bind) if metrics_bind else None
        degraded = worker_runs_degraded(classes, flag=allow_degraded_sandbox)
        credentials = load_credentials()
    except (MetricsBindError, DegradedSandbox, CredentialsError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    configure_logging(log_level)
    asyncio.run(
        run_worker(
            task_queue, max_concurrent, classes, credentials=credentials, degraded_sandbox=degraded, metrics=metrics
        )
    )


def main(argv: Sequence[str] | None = None) -> None:
    exit_cleanly(lambda: app(args=list(argv) if argv is not None else None))


if __name__ == "__main__":
    main()
