"""Figures 2 and 3, parallel efficiency and throughput: N independent tasks, `max_parallel` at once, every model
call answered by the local Messages API server after a fixed delay, through the real Anthropic SDK.

ideal = delay (the plan) + calls per task x delay x ceil(N / max_parallel): what the run would take if only
model latency cost time. The measured time includes everything else: tools, gates on 2 cores, the merge
queue (one merge at a time, each followed by the integration suite when other work merged meanwhile) and
the integration branch's final verification.
"""

from __future__ import annotations

import math
import time
import uuid
from dataclasses import dataclass

from harness import CALLS_PER_TASK, Bench, progress, require_success, run_request, timed, write_transcript
from history import histories, run_spans, suite_runs, workflow_task_timeouts

from darkfactory.contracts import Timeouts
from darkfactory.testing.fake_messages_api import FakeMessagesServer, RecordedRequest, ScriptResponder

MODEL = "claude-sonnet-5-5"
TIMEOUTS = Timeouts(heartbeat_s=10.0, model_call_s=120.0, tools_s=120.0, gates_s=900.0, git_s=60.0)


@dataclass
class ParallelResult:
    tasks: int
    max_parallel: int
    delay_s: float
    measured_s: float
    calls: int
    peak_in_flight: int
    last_answer_s: float
    """When the last model answer went out, from the run's start."""
    verify_s: float
    """The integration branch's final verification (all gates)."""
    regression_gates: int
    """The merge queue's checks of batches (and their bisection steps)."""
    gates_s: float
    """Every gate activity's time, summed (they overlap: two run at once on two cores)."""
    regression_s: float
    """The merge queue's checks, summed (two overlap at most: a batch stacked on one being checked)."""
    stacked_checks: int = 0
    """Of those, the checks of batches stacked on one being checked."""
    sticky_timeouts: int = 0
    """Workflow tasks whose sticky queue timed out with the worker alive (busy): each replayed the history."""
    tests_runs: int = 0
    """Tests-gate results among the run's `run_gates` completions (tasks, merge queue, final verification)."""
    full_suite_runs: int = 0
    """Those with `full_suite: true`: the repository's whole suite ran."""

    @property
    def full_suite_per_task(self) -> float:
        return self.full_suite_runs / self.tasks

    @property
    def ideal_s(self) -> float:
        return self.delay_s + CALLS_PER_TASK * self.delay_s * math.ceil(self.tasks / self.max_parallel)

    @property
    def efficiency(self) -> float:
        return self.ideal_s / self.measured_s

    @property
    def per_hour(self) -> float:
        return self.tasks / self.measured_s * 3600


async def measure(bench: Bench, tasks: int, max_parallel: int, delay_s: float) -> ParallelResult:
    repo = bench.repo("parallel")
    bench.target_env(repo)
    script = write_transcript(bench.root, tasks)
    queue = f"bench-parallel-{uuid.uuid4().hex[:8]}"
    with FakeMessagesServer(ScriptResponder(script), delay_s=delay_s) as server:
        worker = bench.start_worker(
            queue,
            {
                "ANTHROPIC_BASE_URL": server.base_url,
                "DARKFACTORY_MODEL_CONCURRENCY": str(max_parallel),
                "DARKFACTORY_MAX_CONCURRENT_ACTIVITIES": str(max_parallel),
            },
        )
        await bench.wait_polling(queue, worker)
        progress(f"parallel: {tasks} tasks, max_parallel={max_parallel}, model delay {delay_s:.1f}s over the real SDK")
        request = run_request(repo, MODEL, max_parallel=max_parallel, timeouts=TIMEOUTS)
        with timed() as wall:
            started = time.monotonic()  # the fake server stamps arrivals on this clock
            handle = await bench.start_run(request, queue)
            summary = await handle.result()
        requests = server.requests
    worker.stop()
    require_success(summary, "parallel")
    progress(f"parallel: {wall[0]:.1f}s for {tasks} merged tasks")
    spans = await run_spans(bench.client, summary)
    gates = [s for s in spans if s.name == "run_gates"]
    # The run's own history holds the merge queue's checks and the final verification (skipped when the queue's
    # last check already passed on that very tree).
    run_level = [s for s in await run_spans(bench.client, summary, tasks=False) if s.name == "run_gates"]
    regressions = [s for s in run_level if s.task_id.startswith("_merge")]
    verify = [s for s in run_level if s.task_id == "_integration"]
    suites = suite_runs(await histories(bench.client, summary))
    return ParallelResult(
        tasks=tasks,
        max_parallel=max_parallel,
        delay_s=delay_s,
        measured_s=wall[0],
        calls=len(requests),
        peak_in_flight=_peak(requests, delay_s),
        last_answer_s=max(r.at for r in requests) + delay_s - started,
        verify_s=sum(s.duration_s for s in verify),
        regression_gates=len(regressions),
        stacked_checks=sum(s.task_id == "_merge.1" for s in regressions),
        gates_s=sum(s.duration_s for s in gates),
        regression_s=sum(s.duration_s for s in regressions),
        sticky_timeouts=await workflow_task_timeouts(bench.client, summary),
        tests_runs=suites.tests,
        full_suite_runs=suites.full_suite,
    )


def _peak(requests: list[RecordedRequest], delay_s: float) -> int:
    """Most model calls the server was answering at once (each is held `delay_s`)."""
    edges = sorted([(r.at, 1) for r in requests] + [(r.at + delay_s, -1) for r in requests])
    peak = current = 0
    for _at, step in edges:
        current += step
        peak = max(peak, current)
    return peak
