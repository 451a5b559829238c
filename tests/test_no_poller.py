"""Saying when nothing will happen: in remote mode (TEMPORAL_ADDRESS set, so the CLI only starts and watches),
a run whose task queues no worker polls gets a warning naming the queues and the command that serves them;
a worker that polls them silences it, and one that has stopped (the server still lists it for minutes) does
not. Against the session's real Temporal server, `factory` and `factory-worker` as processes."""

from __future__ import annotations

import signal
import subprocess
import uuid
from pathlib import Path

import pytest
from temporalio.testing import WorkflowEnvironment

from tests.conftest import DEMO
from tests.local_cli import FACTORY, WORKER, factory, local_env, read_until

SCRIPTED = f"scripted:{DEMO / 'transcript.json'}"
WARNING = "warning: no worker polls task queues darkfactory, darkfactory-model, darkfactory-gates"


@pytest.fixture
def remote_env(temporal_env: WorkflowEnvironment, factory_home: Path) -> dict[str, str]:
    address = temporal_env.client.service_client.config.target_host
    return local_env(temporal_env, factory_home, TEMPORAL_ADDRESS=address)


def detach(env: dict[str, str], repo: Path, run_id: str) -> subprocess.CompletedProcess[str]:
    args = ["run", "--repo", str(repo), "--spec", str(DEMO / "spec.md"), "--model", SCRIPTED, "--run-id", run_id]
    return factory(env, *args, "--detach", timeout=120)


def test_a_detached_run_no_worker_serves_is_warned_about_naming_its_queues_and_the_worker_command(
    remote_env: dict[str, str], demo_repo: Path, run_ids: list[str]
) -> None:
    run_id = f"unserved-{uuid.uuid4().hex[:8]}"
    run_ids.append(run_id)

    result = detach(remote_env, demo_repo, run_id)

    assert result.returncode == 0, result.stderr[-2000:]
    assert f"Follow it: factory watch {run_id}" in result.stdout
    assert WARNING in result.stdout
    assert f"TEMPORAL_ADDRESS={remote_env['TEMPORAL_ADDRESS']} factory-worker --task-queue darkfactory" in result.stdout


def test_watch_warns_when_no_worker_serves_the_run_and_keeps_watching_until_ctrl_c(
    remote_env: dict[str, str], demo_repo: Path, run_ids: list[str]
) -> None:
    run_id = f"unwatched-{uuid.uuid4().hex[:8]}"
    run_ids.append(run_id)
    assert detach(remote_env, demo_repo, run_id).returncode == 0
    process = subprocess.Popen(
        [str(FACTORY), "watch", run_id], env=remote_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        assert process.stdout is not None
        warned, seen = read_until(process.stdout, WARNING, timeout_s=60)
        assert warned, seen[-3000:]
        assert process.poll() is None, "the warning must not end the watch"
        process.send_signal(signal.SIGINT)
        rest = process.communicate(timeout=60)[0].decode(errors="replace")
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()

    assert process.returncode == 130, (seen + rest)[-3000:]
    assert f"run {run_id} continues. Re-attach: factory watch {run_id}" in rest
    assert "This process's worker" not in rest  # remote mode: the CLI serves nothing


def test_a_polling_worker_silences_the_warning_and_a_stopped_one_does_not(
    remote_env: dict[str, str], demo_repo: Path, tmp_path: Path, run_ids: list[str]
) -> None:
    served, unserved = f"served-{uuid.uuid4().hex[:8]}", f"after-{uuid.uuid4().hex[:8]}"
    run_ids.extend([served, unserved])
    worker = subprocess.Popen([str(WORKER)], env=remote_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        assert worker.stdout is not None
        up, log = read_until(worker.stdout, '"worker_started"', timeout_s=60)
        assert up, log[-3000:]
        with_worker = detach(remote_env, demo_repo, served)
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.communicate(timeout=60)

    without = detach(remote_env, demo_repo, unserved)

    assert with_worker.returncode == 0, with_worker.stderr[-2000:]
    assert "warning" not in with_worker.stdout
    assert without.returncode == 0, without.stderr[-2000:]
    assert WARNING in without.stdout
