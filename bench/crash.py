"""Figure 4, crash cost: model calls made again per worker SIGKILL.

A run of N sequential tasks is served by `factory-worker` subprocesses; the model is the local Messages API
server (answers after a short delay, over the real SDK). At seeded random request counts the benchmark waits
until that many model requests have arrived (it watches the server, not a clock), SIGKILLs the worker's
process group, and starts a new worker. Every call is keyed by its place in the run (plan, or task:attempt:
turn), so repeated calls = requests - distinct keys. The factory promises at most the call in flight per
kill; the figure also reports how many calls were in flight at each kill and how long recovery took.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness import CALLS_PER_TASK, Bench, progress, require_success, run_request, write_transcript
from history import workflow_task_timeouts

from darkfactory.contracts import Timeouts
from darkfactory.scripted import context_from_request
from darkfactory.testing.fake_messages_api import FakeMessagesServer, FakeReply, RecordedRequest, ScriptResponder

MODEL = "claude-sonnet-5-5"
HEARTBEAT_S = 2.5
TIMEOUTS = Timeouts(heartbeat_s=HEARTBEAT_S, model_call_s=60.0, tools_s=60.0, gates_s=300.0, git_s=30.0)
"""Tight heartbeats and git timeouts: a killed worker's step is retried seconds later, not minutes."""


@dataclass
class CrashResult:
    tasks: int
    kills: int
    kill_points: list[int]
    """Request counts at which a worker was killed."""
    requests: int
    distinct: int
    in_flight: list[int]
    """Model calls arrived but not yet answered at each kill."""
    recovery_s: list[float]
    """From each kill to the next model request (by the new worker)."""
    wall_s: float
    baseline_s: float
    """The same run without kills."""
    workflow_task_timeouts: int
    """Workflow tasks that timed out in the killed run (left on a dead worker's sticky queue)."""

    @property
    def lost_per_kill_s(self) -> float:
        return (self.wall_s - self.baseline_s) / self.kills

    @property
    def repeated(self) -> int:
        return self.requests - self.distinct

    @property
    def per_kill(self) -> float:
        return self.repeated / self.kills


class CountingResponder:
    """The transcript's answers, counting them, so the benchmark knows how many calls are still in flight."""

    def __init__(self, script: Path) -> None:
        self._script = ScriptResponder(script)
        self._lock = threading.Lock()
        self.answered = 0

    def __call__(self, body: dict[str, Any]) -> FakeReply:
        reply = self._script(body)
        with self._lock:
            self.answered += 1
        return reply


def kill_points(rng: random.Random, calls: int, kills: int) -> list[int]:
    """`kills` request counts in 1..calls, at least 2 apart, so every new worker gets somewhere first."""
    while True:
        points = sorted(rng.sample(range(1, calls + 1), kills))
        if all(b - a >= 2 for a, b in itertools.pairwise(points)):
            return points


async def measure(bench: Bench, tasks: int, kills: int, seed: int, delay_s: float) -> CrashResult:
    script = write_transcript(bench.root, tasks)
    points = kill_points(random.Random(seed), 1 + CALLS_PER_TASK * tasks, kills)
    progress(f"crash: the same {tasks} sequential tasks without kills first, for the time a kill costs")
    baseline = await _run(bench, script, [], delay_s)
    progress(f"crash: {baseline.wall_s:.1f}s without kills; now SIGKILL at model requests {points} (seed {seed})")
    killed = await _run(bench, script, points, delay_s)
    keys = [context_from_request(r.body).key for r in killed.requests]
    recovery = [min((r.at for r in killed.requests if r.at > at), default=at) - at for at in killed.killed_at]
    result = CrashResult(
        tasks=tasks,
        kills=kills,
        kill_points=points,
        requests=len(keys),
        distinct=len(set(keys)),
        in_flight=killed.in_flight,
        recovery_s=recovery,
        wall_s=killed.wall_s,
        baseline_s=baseline.wall_s,
        workflow_task_timeouts=killed.workflow_task_timeouts,
    )
    progress(f"crash: {result.repeated} call(s) repeated over {kills} kills; run took {killed.wall_s:.1f}s")
    return result


@dataclass
class _Run:
    wall_s: float
    requests: list[RecordedRequest]
    in_flight: list[int]
    killed_at: list[float]
    workflow_task_timeouts: int


async def _run(bench: Bench, script: Path, points: list[int], delay_s: float) -> _Run:
    """One run on a fresh repository, its worker SIGKILLed and replaced as each request count in `points` arrives."""
    repo = bench.repo(f"crash-{len(points)}-kills")
    bench.target_env(repo)
    queue = f"bench-crash-{uuid.uuid4().hex[:8]}"
    responder = CountingResponder(script)
    in_flight: list[int] = []
    killed_at: list[float] = []
    with FakeMessagesServer(responder, delay_s=delay_s) as server:
        extra = {"ANTHROPIC_BASE_URL": server.base_url}
        worker = bench.start_worker(queue, extra)
        await bench.wait_polling(queue, worker)
        request = run_request(repo, MODEL, max_parallel=1, timeouts=TIMEOUTS)
        started = time.monotonic()
        handle = await bench.start_run(request, queue)
        for point in points:
            while server.request_count() < point:
                if time.monotonic() - started > 600:
                    raise TimeoutError(f"crash: request {point} never arrived")
                await asyncio.sleep(0.02)
            in_flight.append(server.request_count() - responder.answered)
            worker.kill()
            killed_at.append(time.monotonic())
            progress(f"crash: killed the worker at request {point} ({in_flight[-1]} call(s) in flight); new worker")
            worker = bench.start_worker(queue, extra)
        summary = await asyncio.wait_for(handle.result(), timeout=600)
        wall = time.monotonic() - started
        requests = server.requests
    worker.stop()
    require_success(summary, "crash")
    return _Run(wall, requests, in_flight, killed_at, await workflow_task_timeouts(bench.client, summary))
