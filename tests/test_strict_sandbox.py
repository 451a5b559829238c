"""Strict by default: with a real model and a degraded sandbox, `factory run` and `factory-worker` refuse to
start (before any model call or branch) unless opted out, and the opt-out is recorded in the run summary.

`DARKFACTORY_SANDBOX=none` forces the degraded tier; the "real model" is the SDK against a local Messages
API server, so a request that escaped the check would show up on it.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from temporalio.testing import WorkflowEnvironment

from darkfactory.sandbox import sandbox_tier
from darkfactory.testing.fake_messages_api import FakeMessagesServer, ScriptResponder
from tests.conftest import DEMO, git
from tests.local_cli import WORKER, branches, factory, local_env, read_until

FLAG = "--allow-degraded-sandbox"
INSTALL = "apt-get install -y bubblewrap"


@pytest.fixture
def server() -> Iterator[FakeMessagesServer]:
    with FakeMessagesServer(ScriptResponder(DEMO / "transcript.json")) as fake:
        yield fake


@pytest.fixture
def degraded_env(temporal_env: WorkflowEnvironment, factory_home: Path, server: FakeMessagesServer) -> dict[str, str]:
    """A real-model configuration (the SDK, a key, a local endpoint) where the sandbox is degraded."""
    return local_env(
        temporal_env,
        factory_home,
        DARKFACTORY_SANDBOX="none",
        ANTHROPIC_BASE_URL=server.base_url,
        ANTHROPIC_API_KEY="sk-test-strict-sandbox",
    )


def _run(env: dict[str, str], repo: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return factory(env, "run", "--repo", str(repo), "--spec", str(DEMO / "spec.md"), "--json", *extra)


def test_run_with_a_real_model_refuses_a_degraded_sandbox_before_any_model_call_or_branch(
    degraded_env: dict[str, str], server: FakeMessagesServer, demo_repo: Path
) -> None:
    result = _run(degraded_env, demo_repo)

    assert result.returncode == 2, result.stderr[-2000:]
    assert INSTALL in result.stderr and FLAG in result.stderr
    assert "allow_degraded" in result.stderr  # the policy opt-out is named too
    assert server.requests == []
    assert branches(demo_repo) == ["main"]


def test_run_with_the_flag_runs_degraded_and_the_summary_and_status_say_so(
    degraded_env: dict[str, str], server: FakeMessagesServer, demo_repo: Path
) -> None:
    result = _run(degraded_env, demo_repo, FLAG)

    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout)
    assert summary["phase"] == "shipped" and summary["degraded_sandbox"] == "flag"
    assert len(server.requests) > 0
    assert f"Sandbox degraded (opted out by {FLAG})" in result.stderr
    status = factory(degraded_env, "status", summary["run_id"])
    assert status.returncode == 0, status.stderr
    assert f"sandbox: degraded (opted out by {FLAG})" in status.stdout


def test_the_policy_key_opts_a_repository_out_and_is_recorded(
    degraded_env: dict[str, str], server: FakeMessagesServer, demo_repo: Path
) -> None:
    (demo_repo / ".factory").mkdir()
    (demo_repo / ".factory" / "policy.toml").write_text("[sandbox]\nallow_degraded = true\n")
    git(demo_repo, "add", "-A")
    git(demo_repo, "commit", "-q", "-m", "this repository accepts a degraded sandbox")

    result = _run(degraded_env, demo_repo)

    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout)
    assert summary["phase"] == "shipped" and summary["degraded_sandbox"] == "policy"
    assert len(server.requests) > 0
    status = factory(degraded_env, "status", summary["run_id"])
    assert "sandbox: degraded (opted out by [sandbox] allow_degraded = true in .factory/policy.toml)" in status.stdout


def test_a_scripted_model_may_run_degraded_and_says_so_on_the_console(
    degraded_env: dict[str, str], server: FakeMessagesServer, demo_repo: Path
) -> None:
    result = _run(degraded_env, demo_repo, "--model", f"scripted:{DEMO / 'transcript.json'}")

    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout)["degraded_sandbox"] == "scripted"
    assert "Sandbox degraded (scripted model" in result.stderr
    assert server.requests == []  # the scripted model never calls the API


def test_the_sandboxed_path_records_no_opt_out(
    temporal_env: WorkflowEnvironment, factory_home: Path, demo_repo: Path
) -> None:
    if sandbox_tier() != "bwrap":  # pragma: no cover - CI installs bubblewrap
        pytest.skip("bubblewrap is not usable here")
    env = local_env(temporal_env, factory_home)  # the machine's own tier

    result = _run(env, demo_repo, "--model", f"scripted:{DEMO / 'transcript.json'}")

    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout)["degraded_sandbox"] is None
    assert "Sandbox degraded" not in result.stderr


# -- factory-worker ---------------------------------------------------------------------------------


def test_worker_refuses_a_degraded_sandbox_before_serving_anything(
    degraded_env: dict[str, str], server: FakeMessagesServer
) -> None:
    result = subprocess.run([str(WORKER)], env=degraded_env, capture_output=True, text=True, timeout=120)

    assert result.returncode == 2, result.stderr[-2000:]
    assert INSTALL in result.stderr and FLAG in result.stderr
    assert "worker_started" not in result.stderr
    assert server.requests == []


@pytest.mark.parametrize("args", [[FLAG], ["--serve", "model"]], ids=["with-the-flag", "model-calls-only"])
def test_worker_starts_degraded_with_the_flag_or_when_it_runs_no_commands(
    degraded_env: dict[str, str], tmp_path: Path, args: list[str]
) -> None:
    worker = subprocess.Popen(
        [str(WORKER), "--task-queue", f"strict-{tmp_path.name}", *args],
        env=degraded_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    assert worker.stdout is not None
    try:
        started, text = read_until(worker.stdout, '"worker_started"')
    finally:
        worker.terminate()
        worker.wait(timeout=60)
        worker.stdout.close()

    assert started, text[-2000:]
    assert ('"sandbox_degraded"' in text) == (FLAG in args)
