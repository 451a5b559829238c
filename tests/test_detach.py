"""Runs are first-class: `factory run --detach` returns at once, `factory watch RUN_ID` re-attaches to the run
(serving it in local mode when nothing does), a run id names one request, and Ctrl-C stops the watching, not
the run. Local mode, as `factory` runs as a process, on the session's real Temporal server."""

from __future__ import annotations

import json
import signal
import subprocess
import uuid
from pathlib import Path

import pytest
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.testing import WorkflowEnvironment

from darkfactory.constants import run_workflow_id
from tests.conftest import DEMO, make_repo, request_for
from tests.local_cli import FACTORY, factory, local_env, read_until

SCRIPTED = f"scripted:{DEMO / 'transcript.json'}"


@pytest.fixture
def env(temporal_env: WorkflowEnvironment, factory_home: Path) -> dict[str, str]:
    return local_env(temporal_env, factory_home)


def run_args(repo: Path, run_id: str, *extra: str) -> list[str]:
    return [
        "run",
        "--repo",
        str(repo),
        "--spec",
        str(DEMO / "spec.md"),
        "--model",
        SCRIPTED,
        "--run-id",
        run_id,
        *extra,
    ]


async def executions(client: Client, run_id: str) -> int:
    return len([w async for w in client.list_workflows(f"WorkflowId = '{run_workflow_id(run_id)}'")])


async def test_a_detached_run_waits_for_a_worker_and_factory_watch_serves_it_to_its_summary(
    env: dict[str, str], client: Client, demo_repo: Path, run_ids: list[str]
) -> None:
    run_id = f"detached-{uuid.uuid4().hex[:8]}"
    run_ids.append(run_id)

    detached = factory(env, *run_args(demo_repo, run_id, "--detach"), timeout=120)

    assert detached.returncode == 0, detached.stderr[-2000:]
    assert f"factory watch {run_id}" in detached.stdout
    assert "factory-worker --task-queue darkfactory-local-" in detached.stdout
    assert "/namespaces/default/workflows/run-" in detached.stdout
    description = await client.get_workflow_handle(run_workflow_id(run_id)).describe()
    assert description.status == WorkflowExecutionStatus.RUNNING

    watched = factory(env, "watch", run_id, "--json")

    assert watched.returncode == 0, watched.stderr[-3000:]
    assert "had no worker, so this process serves it" in watched.stderr
    summary = json.loads(watched.stdout)
    assert summary["run_id"] == run_id and summary["phase"] == "shipped"

    # An ended run re-attaches too: straight to its summary, with no worker.
    again = factory(env, "watch", run_id, "--json", timeout=120)
    assert again.returncode == 0, again.stderr[-2000:]
    assert json.loads(again.stdout) == summary


@pytest.mark.parametrize("differs", ["spec", "repo"])
async def test_a_different_request_under_an_existing_run_id_is_refused_and_nothing_starts(
    differs: str, env: dict[str, str], client: Client, demo_repo: Path, tmp_path: Path, run_ids: list[str]
) -> None:
    run_id = f"taken-{uuid.uuid4().hex[:8]}"
    run_ids.append(run_id)
    first = factory(env, *run_args(demo_repo, run_id, "--detach"), timeout=120)
    assert first.returncode == 0, first.stderr[-2000:]
    if differs == "spec":
        other = tmp_path / "other-spec.md"
        other.write_text("# Add a shout() helper\n\nshout('hi') returns 'HI!'.\n")
        args = ["run", "--repo", str(demo_repo), "--spec", str(other), "--model", SCRIPTED, "--run-id", run_id]
    else:
        args = run_args(make_repo(tmp_path / "elsewhere" / "textkit"), run_id)

    # Not detached: were it not refused, this process would serve the first run and watch it to the end.
    refused = factory(env, *args, timeout=120)

    assert refused.returncode == 2, refused.stdout[-2000:] + refused.stderr[-2000:]
    assert refused.stderr.startswith(f"error: run {run_id} already exists with ")
    assert ("different spec" in refused.stderr) == (differs == "spec")
    assert (f"repository {demo_repo}, not " in refused.stderr) == (differs == "repo")
    assert "started" not in refused.stdout
    assert await executions(client, run_id) == 1
    description = await client.get_workflow_handle(run_workflow_id(run_id)).describe()
    assert description.status == WorkflowExecutionStatus.RUNNING  # nobody served it


async def test_a_run_started_before_its_request_was_in_the_memo_is_compared_by_its_start_input(
    env: dict[str, str], client: Client, demo_repo: Path, tmp_path: Path, run_ids: list[str]
) -> None:
    request = request_for(demo_repo, SCRIPTED, run_id=f"old-{uuid.uuid4().hex[:8]}")
    run_ids.append(request.run_id)
    await client.start_workflow(
        "FactoryRunWorkflow", request, id=run_workflow_id(request.run_id), task_queue=f"tq-{uuid.uuid4().hex}"
    )
    other = tmp_path / "other-spec.md"
    other.write_text("# Something else entirely\n")

    refused = factory(
        env, "run", "--repo", str(demo_repo), "--spec", str(other), "--model", SCRIPTED, "--run-id", request.run_id
    )

    assert refused.returncode == 2, refused.stdout[-2000:] + refused.stderr[-2000:]
    assert "different spec" in refused.stderr


async def test_ctrl_c_stops_watching_says_how_the_run_goes_on_and_leaves_it_running(
    env: dict[str, str], client: Client, demo_repo: Path, run_ids: list[str]
) -> None:
    run_id = f"interrupted-{uuid.uuid4().hex[:8]}"
    run_ids.append(run_id)
    process = subprocess.Popen(
        [str(FACTORY), *run_args(demo_repo, run_id)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        assert process.stdout is not None
        started, seen = read_until(process.stdout, f"Run {run_id} started.", timeout_s=120)
        assert started, seen[-3000:]
        process.send_signal(signal.SIGINT)
        rest = process.communicate(timeout=120)[0].decode(errors="replace")
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()

    out = seen + rest
    assert process.returncode == 130, out[-3000:]
    assert f"run {run_id} continues. Re-attach: factory watch {run_id}" in out
    assert "This process's worker stops with it" in out
    assert "factory-worker --task-queue darkfactory-local-" in out
    description = await client.get_workflow_handle(run_workflow_id(run_id)).describe()
    assert description.status == WorkflowExecutionStatus.RUNNING
