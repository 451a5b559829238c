"""Figure 1, overhead: a factory run with a zero-latency scripted model against a plain script doing the same
git, edit, lint and test work directly, on the same N tasks, one after another.

The plain script (`plain.py`) is what a careful person would run by hand for each task: a worktree on a new
branch from the integration head, write the two files, ruff on them, the repository's pytest in the target
environment the factory uses (not sandboxed), commit, squash-merge into the integration branch; at the end ruff
and pytest on the integration branch and a fast-forward of `main` (the factory's final verification and ship).
"""

from __future__ import annotations

import statistics
import uuid
from dataclasses import dataclass
from pathlib import Path

from harness import Bench, progress, require_success, run_request, task_files, timed, write_transcript
from history import by_category, gate_seconds, run_spans
from plain import plain_script

from darkfactory.contracts import Timeouts
from darkfactory.target_env import TargetEnv

TIMEOUTS = Timeouts(heartbeat_s=10.0, model_call_s=60.0, tools_s=120.0, gates_s=600.0, git_s=60.0)


@dataclass(frozen=True)
class Sample:
    """One factory run and one plain run of the same tasks."""

    factory_s: float
    plain_s: float
    factory_parts: dict[str, float]
    """Summed activity time per category (gates, model, git+tools) plus `orchestration`: the rest of the wall."""
    gates: dict[str, float]
    """Summed seconds per gate (every task plus the integration verification)."""
    plain_parts: dict[str, float]
    """Seconds per kind of step of the plain script (git, edit, lint, tests)."""


@dataclass
class OverheadResult:
    tasks: int
    samples: list[Sample]

    @property
    def factory_s(self) -> float:
        return statistics.median(s.factory_s for s in self.samples)

    @property
    def plain_s(self) -> float:
        return statistics.median(s.plain_s for s in self.samples)

    @property
    def ratio(self) -> float:
        return self.factory_s / self.plain_s

    @property
    def typical(self) -> Sample:
        """The sample whose factory time is the median: its breakdown is the one shown."""
        return sorted(self.samples, key=lambda s: s.factory_s)[len(self.samples) // 2]


async def measure(bench: Bench, tasks: int, repeats: int) -> OverheadResult:
    env = bench.target_env(bench.repo("env-seed"))
    queue = f"bench-overhead-{uuid.uuid4().hex[:8]}"
    worker = bench.start_worker(queue)
    await bench.wait_polling(queue, worker)

    # Warm-up, not measured: the worker's first workflow, the sandbox probe, ruff's and pytest's first runs.
    progress("overhead: warm-up run (1 task) and plain warm-up")
    await _factory(bench, queue, 1, "warmup")
    _plain(bench.repo("plain-warmup"), 1, env, bench.root / "plain-warmup")

    samples: list[Sample] = []
    for number in range(1, repeats + 1):
        factory_s, parts, gates = await _factory(bench, queue, tasks, f"factory-{number}")
        with timed() as plain:
            plain_parts = _plain(bench.repo(f"plain-{number}"), tasks, env, bench.root / f"plain-{number}")
        samples.append(Sample(factory_s, plain[0], parts, gates, plain_parts))
        progress(
            f"overhead {number}/{repeats}: {tasks} sequential tasks: factory {factory_s:.1f}s, plain {plain[0]:.1f}s"
        )
    worker.stop()
    return OverheadResult(tasks, samples)


async def _factory(bench: Bench, queue: str, tasks: int, name: str) -> tuple[float, dict[str, float], dict[str, float]]:
    repo = bench.repo(f"overhead-{name}")
    script = write_transcript(bench.root, tasks)
    request = run_request(repo, f"scripted:{script}", max_parallel=1, timeouts=TIMEOUTS)
    with timed() as wall:
        handle = await bench.start_run(request, queue)
        summary = await handle.result()
    require_success(summary, "overhead")
    parts = by_category(await run_spans(bench.client, summary))
    # A sequential run's activities never overlap, so what they do not cover is Temporal's own time.
    parts["orchestration"] = wall[0] - sum(parts.values())
    return wall[0], parts, gate_seconds(summary)


def _plain(repo: Path, tasks: int, env: TargetEnv, scratch: Path) -> dict[str, float]:
    """The same work, done directly (`plain.py`); returns seconds per kind of step."""
    return plain_script(repo, [task_files(i) for i in range(tasks)], env, scratch).parts
