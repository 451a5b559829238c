"""What every command shares: the Temporal session, in local mode an in-process worker, and failing cleanly.

Where Temporal is comes from `factory --address HOST:PORT --namespace NS` (the `temporal` CLI's flags; the
root callback passes them to `use_connection`), else from TEMPORAL_ADDRESS / TEMPORAL_NAMESPACE; a flag wins
over its variable. No address is local mode: the embedded dev server (started if none listens), and
`factory run` serves its run with a worker in this process, on task queues of its own (`local_task_queue`),
so two runs on one machine never execute each other's steps with each other's credentials and model endpoint.

Imports stay light so `factory --help` and `factory queue` start at once: the Temporal client loads when a
session opens, the worker (and with it the workflows, activities and model SDK) only when this process
serves a run.
"""

from __future__ import annotations

import os
import secrets
import sys
import traceback
from collections.abc import Callable
from contextlib import AsyncExitStack
from datetime import timedelta
from typing import TYPE_CHECKING, NoReturn

import typer

from darkfactory.constants import SEARCH_ATTRIBUTES, TASK_QUEUE, run_workflow_id

if TYPE_CHECKING:
    from temporalio.client import Client, Plugin
    from temporalio.runtime import Runtime

    from darkfactory.settings import TemporalSettings

LOCAL_QUEUE_INFIX = "-local-"
"""A local run's task queue is `darkfactory-local-<id>`; its model and gates queues add their suffixes."""

_flags: dict[str, str] = {}
"""`--address` / `--namespace` as given to the root command (set once, by `use_connection`, before any
command runs)."""


class UsageError(Exception):
    """Bad input: printed as `error: ...` with exit code 2, before anything is started."""


def fail(message: str) -> NoReturn:
    """Print `error: ...` (each line of `message`, one problem a line) and exit 2."""
    for line in message.splitlines() or [""]:
        typer.echo(f"error: {line}", err=True)
    raise typer.Exit(2)


def seconds(value: float) -> timedelta:
    return timedelta(seconds=value)


def local_task_queue() -> str:
    """A task queue for this process alone (the pid for people reading the web UI, random bits for uniqueness)."""
    return f"{TASK_QUEUE}{LOCAL_QUEUE_INFIX}{os.getpid()}-{secrets.token_hex(3)}"


def use_connection(address: str | None, namespace: str | None) -> None:
    """Record the root command's `--address` / `--namespace`; None leaves the environment's value."""
    _flags.clear()
    _flags.update({name: value for name, value in (("address", address), ("namespace", namespace)) if value})


def temporal_settings() -> TemporalSettings:
    """How to reach Temporal: the flags over TEMPORAL_*; `UsageError` naming the flag or variable when invalid."""
    from darkfactory.settings import SettingsError, load_temporal_settings

    try:
        return load_temporal_settings(_flags.get("address"), _flags.get("namespace"))
    except SettingsError as exc:
        raise UsageError(str(exc)) from None


def is_remote() -> bool:
    """Whether an address was given (flag or variable): remote mode, where workers elsewhere run the runs."""
    return temporal_settings().remote


def temporal_command(address: str, namespace: str, *args: str) -> str:
    """A `temporal ...` command line for people to copy, aimed at the server in use (never a default port)."""
    return " ".join(["temporal", *args, "--address", address, "--namespace", namespace])


class Session:
    """A Temporal client plus, in local mode, the embedded server's web UI."""

    def __init__(self, client: Client, ui_url: str | None, local: bool) -> None:
        self.client = client
        self.ui_url = ui_url
        self.local = local

    @property
    def address(self) -> str:
        """The frontend this session talks to, as `--address` takes it."""
        return self.client.service_client.config.target_host

    def temporal_command(self, *args: str) -> str:
        """`temporal <args> --address <this server> --namespace <this namespace>`, for printed examples."""
        return temporal_command(self.address, self.client.namespace, *args)

    def run_url(self, run_id: str) -> str | None:
        if self.ui_url is None:
            return None
        return f"{self.ui_url}/namespaces/{self.client.namespace}/workflows/{run_workflow_id(run_id)}"

    async def queue_of_run(self, run_id: str) -> str | None:
        """The task queue an existing run was started on (None: no such run), so a restart serves that one."""
        from temporalio.service import RPCError

        try:
            description = await self.client.get_workflow_handle(run_workflow_id(run_id)).describe()
        except RPCError:
            return None
        return description.task_queue


async def find_run(client: Client, run_id: str) -> str | None:
    """The workflow id of the run `run_id` names (a run id, a workflow id, or a schedule tick's run id in
    either spelling), or None when there is no such run."""
    from temporalio.service import RPCError

    from darkfactory.triggers.ids import workflow_id_candidates

    for workflow_id in workflow_id_candidates(run_id):
        try:
            await client.get_workflow_handle(workflow_id).describe()
        except RPCError:
            continue
        return workflow_id
    return None


def _tracing_plugins() -> list[Plugin]:
    """The run-trace plugin (Temporal's OpenTelemetry spans, one trace per run) when traces are asked for.
    Checked on the environment first: setting tracing up loads the SDK's worker, which a command that only
    reads never needs."""
    if "darkfactory.activities.tracing" not in sys.modules:
        if not any(name.startswith("OTEL_") for name in os.environ):
            return []  # nothing can ask for traces: skip loading the logging and tracing libraries
        from darkfactory.telemetry import tracing_requested

        if not tracing_requested():
            return []
    from darkfactory.activities.tracing import configure_tracing

    if not configure_tracing("darkfactory"):
        return []
    from darkfactory.activities.run_trace import RunTracePlugin

    return [RunTracePlugin()]  # one trace per run (activities/run_trace.py)


async def connect(temporal: TemporalSettings, address: str | None = None, *, runtime: Runtime | None = None) -> Client:
    """A client for `address` (default: the settings'), with TLS / API key from the settings, as the worker
    connects (`worker.connect`), without loading the worker. Fails with `error:` naming the address when
    the server cannot be reached."""
    from temporalio.client import Client
    from temporalio.contrib.pydantic import pydantic_data_converter
    from temporalio.service import TLSConfig

    target = address or temporal.address
    if not target:
        raise ValueError("no Temporal address: set TEMPORAL_ADDRESS or start the embedded server")
    tls: TLSConfig | bool = False
    if temporal.use_tls:
        try:
            tls = TLSConfig(
                server_root_ca_cert=temporal.tls_ca.read_bytes() if temporal.tls_ca else None,
                client_cert=temporal.tls_cert.read_bytes() if temporal.tls_cert else None,
                client_private_key=temporal.tls_key.read_bytes() if temporal.tls_key else None,
            )
        except OSError as exc:
            fail(f"{exc.filename}: cannot read it ({exc.strerror}); fix TEMPORAL_TLS_CERT / _KEY / _CA")
    try:
        return await Client.connect(
            target,
            namespace=temporal.namespace,
            api_key=temporal.api_key,
            tls=tls,
            data_converter=pydantic_data_converter,
            plugins=_tracing_plugins(),
            runtime=runtime,
        )
    except RuntimeError as exc:  # the SDK's core reports an unreachable or refusing server so
        reason = _connect_failure(str(exc))
        fail(
            f"cannot reach Temporal at {target} (namespace {temporal.namespace}): {reason}; check --address or "
            "TEMPORAL_ADDRESS (and TEMPORAL_TLS / TEMPORAL_API_KEY), or give neither to use the embedded server"
        )


_CONNECT_FAILURES = {
    "Connection refused": "nothing listens there (connection refused)",
    "dns error": "the host name does not resolve",
    "timed out": "it did not answer in time",
    "InvalidContentType": "it did not answer as a TLS server does",
    "certificate": "its TLS certificate was refused",
}
"""Fragments of the SDK core's connect errors -> what they mean for a person."""


def _connect_failure(error: str) -> str:
    return next((meaning for fragment, meaning in _CONNECT_FAILURES.items() if fragment in error), error)


async def ensure_search_attributes(client: Client) -> None:
    """Register FactoryStatus / FactoryNeedsReview / FactoryRepo / FactoryTrigger if the server lacks them.

    Workflows upsert them; on a server without them the upsert would fail every workflow task.
    """
    from temporalio.api.enums.v1 import IndexedValueType
    from temporalio.api.operatorservice.v1 import AddSearchAttributesRequest, ListSearchAttributesRequest

    listed = await client.operator_service.list_search_attributes(
        ListSearchAttributesRequest(namespace=client.namespace)
    )
    missing = {name: kind for name, kind in SEARCH_ATTRIBUTES.items() if name not in listed.custom_attributes}
    if missing:
        kinds = {
            "Keyword": IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD,
            "Bool": IndexedValueType.INDEXED_VALUE_TYPE_BOOL,
            "Text": IndexedValueType.INDEXED_VALUE_TYPE_TEXT,
            "Int": IndexedValueType.INDEXED_VALUE_TYPE_INT,
        }
        await client.operator_service.add_search_attributes(
            AddSearchAttributesRequest(
                namespace=client.namespace,
                search_attributes={name: kinds[kind] for name, kind in missing.items()},
            )
        )
        import structlog  # once per server, not on every command's path

        structlog.get_logger(__name__).info("search_attributes_registered", names=sorted(missing))


async def open_session() -> Session:
    """Connect: to `--address` or TEMPORAL_ADDRESS, or to the embedded dev server (started if none listens)."""
    from darkfactory import devserver
    from darkfactory.settings import SettingsError, load_factory_settings

    try:
        temporal = temporal_settings()
    except UsageError as exc:
        fail(str(exc))
    if temporal.remote:
        client = await connect(temporal)
        return Session(client, os.environ.get("TEMPORAL_UI_URL"), local=False)
    try:
        config = devserver.DevServerConfig.from_env(load_factory_settings().home)
    except (SettingsError, ValueError) as exc:
        fail(str(exc))
    try:
        devserver.ensure_running(config)
    except devserver.DevServerError as exc:
        fail(f"the embedded Temporal server did not start: {exc}")
    client = await connect(temporal, config.address)
    await ensure_search_attributes(client)
    return Session(client, config.ui_url, local=True)


async def serve_locally(stack: AsyncExitStack, session: Session, task_queue: str) -> None:
    """Run a worker in this process on `task_queue` (and its model and gates queues) until the stack closes."""
    from darkfactory import worker as worker_module
    from darkfactory.settings import CredentialsError, SettingsError, load_credentials, load_factory_settings
    from darkfactory.telemetry import configure_logging

    try:
        settings = load_factory_settings()
        credentials = load_credentials()
    except (SettingsError, CredentialsError) as exc:
        fail(str(exc))
    configure_logging(path=settings.logs_dir / "worker.jsonl")
    await stack.enter_async_context(
        worker_module.build_worker(session.client, settings, task_queue=task_queue, credentials=credentials)
    )


def exit_cleanly(run: Callable[[], object]) -> NoReturn:
    """Run the CLI and leave with its exit code through os._exit (as `worker.exit_cleanly`, without loading
    the worker): the SDK's Rust core can abort the interpreter at exit (sdk-python#300), turning a success
    into SIGABRT. Invalid settings met anywhere print `error:` lines (exit 2), not pydantic's report."""
    code = 0
    try:
        run()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except typer.Exit as exc:  # `fail` outside a command's own handling
        code = exc.exit_code
    except KeyboardInterrupt:
        code = 130
    except Exception as exc:
        code = _unexpected(exc)
    tracing = sys.modules.get("darkfactory.activities.tracing")  # loaded only when this process traced or served
    if tracing is not None:
        tracing.shutdown_tracing()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _unexpected(exc: Exception) -> int:
    """A settings class read where no command expected it to fail is a usage error (2); the rest is a bug (1)."""
    from pydantic import ValidationError

    from darkfactory.settings import SettingsError, is_settings_error, settings_problems

    if isinstance(exc, ValidationError) and is_settings_error(exc):
        exc = settings_problems(exc)
    if isinstance(exc, SettingsError):
        for line in str(exc).splitlines():
            typer.echo(f"error: {line}", err=True)
        return 2
    traceback.print_exception(exc)
    return 1
