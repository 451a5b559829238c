"""Crash and failure behaviour on a real Temporal server with the real Anthropic SDK over HTTP.

A worker process is SIGKILLed in the middle of the agent loop; a new worker finishes the run, and the local
Messages API server counts the model calls: none made before the kill is made again. Rate limits are
retried after the server's `retry-after`; a 400 is not retried.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from darkfactory.constants import run_workflow_id
from darkfactory.contracts import Timeouts
from darkfactory.scripted import context_from_request
from darkfactory.testing.fake_messages_api import FakeMessagesServer, FakeReply, ScriptResponder
from darkfactory.workflows import FactoryRunWorkflow
from tests.conftest import DEMO, git, request_for, run_to_end

WORKER = Path(sys.executable).parent / "factory-worker"
MODEL = "claude-sonnet-5-5"


def call_key(body: dict[str, Any]) -> str:
    return context_from_request(body).key


class Worker:
    """A `factory-worker` process in its own process group, so a SIGKILL takes all of it."""

    def __init__(self, env: dict[str, str], task_queue: str, log: Path) -> None:
        self._log = log.open("ab")
        self.process = subprocess.Popen(
            [str(WORKER), "--task-queue", task_queue],
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def kill(self) -> None:
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()
        self._log.close()


@pytest.fixture
def worker_env(temporal_env: WorkflowEnvironment, factory_home: Path) -> Iterator[dict[str, str]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TEMPORAL_", "ANTHROPIC_", "DARKFACTORY_"))}
    env.update(
        TEMPORAL_ADDRESS=temporal_env.client.service_client.config.target_host,
        DARKFACTORY_HOME=str(factory_home),
        ANTHROPIC_API_KEY="sk-test-kill",
    )
    yield env


async def test_a_worker_killed_mid_agent_loop_costs_at_most_the_call_in_flight(
    client: Client, worker_env: dict[str, str], demo_repo: Path, tmp_path: Path
) -> None:
    task_queue = f"kill-{uuid.uuid4().hex}"
    timeouts = Timeouts(heartbeat_s=3.0, model_call_s=120.0, tools_s=120.0, gates_s=600.0, git_s=60.0)
    request = request_for(demo_repo, MODEL, timeouts=timeouts)
    with FakeMessagesServer(ScriptResponder(DEMO / "transcript.json")) as server:
        env = {**worker_env, "ANTHROPIC_BASE_URL": server.base_url}
        in_flight = "agent:add-slugify:1:2"
        arrived = server.hold_when(lambda body: call_key(body) == in_flight)
        first = Worker(env, task_queue, tmp_path / "worker-1.log")
        second: Worker | None = None
        try:
            handle = await client.start_workflow(
                FactoryRunWorkflow.run, request, id=run_workflow_id(request.run_id), task_queue=task_queue
            )
            assert await asyncio.to_thread(arrived.wait, 120), "the held model call never arrived"
            before_kill = Counter(call_key(r.body) for r in server.requests)
            first.kill()
            server.release()  # the answer goes to a dead socket
            second = Worker(env, task_queue, tmp_path / "worker-2.log")
            summary = await asyncio.wait_for(handle.result(), timeout=300)
        finally:
            first.stop()
            if second is not None:
                second.stop()
        calls = Counter(call_key(r.body) for r in server.requests)

    assert summary.succeeded, summary.error
    assert summary.shipped_sha == git(demo_repo, "rev-parse", "main")
    assert before_kill == Counter(
        {"plan": 1, "acceptance:add-slugify:1:0": 1, "agent:add-slugify:1:1": 1, in_flight: 1}
    )
    repeated = {key: count - 1 for key, count in calls.items() if count > 1}
    assert repeated == {in_flight: 1}, f"calls repeated after the kill: {repeated}"
    assert sum(calls.values()) == 13 + 1


class FlakyFirst:
    """Answers the first matching request with `reply`, everything else from the demo transcript."""

    def __init__(self, reply: FakeReply, *, times: int = 1) -> None:
        self.script = ScriptResponder(DEMO / "transcript.json")
        self.reply = reply
        self.remaining = times

    def __call__(self, body: dict[str, Any]) -> FakeReply:
        if call_key(body) == "plan" and self.remaining > 0:
            self.remaining -= 1
            return self.reply
        return self.script(body)


async def test_rate_limit_is_retried_after_the_servers_retry_after(
    client: Client, factory_home: Path, demo_repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    retry_after_s = 4
    limited = FakeReply.error(429, "rate_limit_error", "slow down", headers={"retry-after": str(retry_after_s)})
    with FakeMessagesServer(FlakyFirst(limited)) as server:
        monkeypatch.setenv("ANTHROPIC_BASE_URL", server.base_url)
        monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-test-429")
        summary = await run_to_end(client, factory_home, request_for(demo_repo, MODEL))
        plans = [r for r in server.requests if call_key(r.body) == "plan"]

    assert summary.succeeded, summary.error
    assert len(plans) == 2
    # The retry waited for retry-after, not for the retry policy's 2 s initial interval.
    assert plans[1].at - plans[0].at >= retry_after_s


async def test_a_bad_request_is_not_retried_and_fails_the_run_with_the_reason(
    client: Client, factory_home: Path, demo_repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bad = FakeReply.error(400, "invalid_request_error", "max_tokens: too large for this model")
    with FakeMessagesServer(FlakyFirst(bad, times=100)) as server:
        monkeypatch.setenv("ANTHROPIC_BASE_URL", server.base_url)
        monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-test-400")
        summary = await run_to_end(client, factory_home, request_for(demo_repo, MODEL))
        count = server.request_count()

    assert summary.phase == "failed"
    assert "max_tokens: too large for this model" in summary.error
    assert count == 1
