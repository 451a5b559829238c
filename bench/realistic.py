"""Figure 5, a realistic run: independent tasks on a real PyPI package (its own sdist and suite), every model
turn answered after a seeded random delay, through the real Anthropic SDK.

The package is tabulate 0.10.0 from `tests/third_party.py` (fetched once with pip and cached): of the cached
packages its suite is the slowest here (about 3 s, 280 tests, `test_cli` starts subprocesses). Each task adds
`tabulate/ext_XX.py` (a preset table style over the package's own `tabulate()`) and `test/test_ext_XX.py`, in
4 to 8 model turns (about 6): it looks at the package, writes the module and the test, runs its test with
the shell tool, refines a docstring, looks again, then says it is done. Each turn is answered after a delay
drawn from `random.Random(seed)`, uniform in [3, 15] s; the plan call too. The delays sit at the seam where
the model's answer is produced: a responder around the transcript's, in the local Messages API server.

limit = max(model-bound, plain CPU / cores): model-bound = the plan's delay + the slowest task's summed
delays (with max_parallel >= tasks every task runs at once); plain CPU = the CPU seconds of `plain.py` doing
the same work (git, edit, ruff, the package's whole suite per task; one more suite and a fast-forward at the
end). efficiency = limit / measured, measured from starting the run to its summary (everything merged).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import sys
import tarfile
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness import CHEAP_GATES, EDIT, ROOT, Bench, git, progress, require_success, run_request
from history import CATEGORIES, GATE_ACTIVITIES, activity_spans, histories, stacked_checks, suite_runs, wall_shares
from plain import PlainRun, plain_script

from darkfactory.contracts import Timeouts
from darkfactory.policy import Policy
from darkfactory.scripted import context_from_request
from darkfactory.testing.fake_messages_api import FakeMessagesServer, FakeReply, ScriptResponder

PACKAGE = "tabulate"
MODEL = "claude-sonnet-5-5"
TIMEOUTS = Timeouts(heartbeat_s=10.0, model_call_s=120.0, tools_s=120.0, gates_s=900.0, git_s=60.0)
FORMATS = ("plain", "simple", "grid", "pipe", "orgtbl", "rst", "github", "psql", "presto", "pretty", "rounded_grid")


@dataclass(frozen=True)
class RealisticSettings:
    tasks: int
    max_parallel: int
    delay_min_s: float
    delay_max_s: float
    turns_min: int
    turns_max: int
    seed: int


FULL = RealisticSettings(tasks=16, max_parallel=16, delay_min_s=3.0, delay_max_s=15.0, turns_min=4, turns_max=8, seed=7)
QUICK = RealisticSettings(tasks=4, max_parallel=4, delay_min_s=0.5, delay_max_s=2.0, turns_min=4, turns_max=8, seed=7)


# --------------------------------------------------------------------------------------------------
# The workload: what each task writes, in how many turns, and how long each turn's answer takes


def task_id(index: int) -> str:
    return f"ext-{index:02d}"


def module_path(index: int) -> str:
    return f"{PACKAGE}/ext_{index:02d}.py"


def test_path(index: int) -> str:
    return f"test/test_ext_{index:02d}.py"


def module_text(index: int, *, refined: bool) -> str:
    fmt = FORMATS[index % len(FORMATS)]
    doc = f"Tables in the {fmt!r} format, numbers right-aligned." if refined else f"Preset table style {index}."
    return (
        f'"""{doc}"""\n\nfrom tabulate import tabulate\n\n\n'
        f"def table_{index:02d}(rows: list[list[object]], headers: list[str]) -> str:\n"
        f'    return tabulate(rows, headers=headers, tablefmt="{fmt}", numalign="right")\n'
    )


def test_text(index: int) -> str:
    fmt = FORMATS[index % len(FORMATS)]
    return (
        f"from tabulate import tabulate\nfrom tabulate.ext_{index:02d} import table_{index:02d}\n\n\n"
        f"def test_table_{index:02d}():\n"
        f'    rows = [["a", 1], ["b", {index + 10}]]\n'
        f'    out = table_{index:02d}(rows, ["key", "value"])\n'
        f'    assert out == tabulate(rows, headers=["key", "value"], tablefmt="{fmt}", numalign="right")\n'
        f'    assert "{index + 10}" in out and len(out.splitlines()) >= 3\n'
    )


def _edit(**call: Any) -> dict[str, Any]:
    return {"type": "tool_use", "name": EDIT, "input": call}


def _shell(command: str) -> dict[str, Any]:
    return {"type": "tool_use", "name": "bash", "input": {"command": command}}


def task_turns(index: int, turns: int) -> list[dict[str, Any]]:
    """`turns` model answers: `turns - 1` tool turns (always both files), then "Done."."""
    module, test = module_path(index), test_path(index)
    actions = [
        _edit(command="view", path=f"{PACKAGE}/__init__.py", view_range=[1, 60]),
        _edit(command="create", path=module, file_text=module_text(index, refined=False)),
        _edit(command="create", path=test, file_text=test_text(index)),
        _shell(f"python -m pytest -q -p no:cacheprovider {test} 2>&1 | tail -5"),
        _edit(
            command="str_replace",
            path=module,
            old_str=f'"""Preset table style {index}."""',
            new_str=module_text(index, refined=True).splitlines()[0],
        ),
        _edit(command="view", path=module),
        _shell(f'python -c \'import tabulate.ext_{index:02d} as m; print(m.table_{index:02d}([[1, 2]], ["a", "b"]))\''),
    ]
    answers: list[dict[str, Any]] = [{"content": [action]} for action in actions[: turns - 1]]
    return [*answers, {"content": [{"type": "text", "text": "Done."}], "stop_reason": "end_turn"}]


def final_files(index: int, turns: int) -> dict[str, str]:
    """What task `index` leaves behind (the docstring's refinement is turn 5, so in tasks of 6 turns or more)."""
    return {module_path(index): module_text(index, refined=turns >= 6), test_path(index): test_text(index)}


@dataclass(frozen=True)
class Workload:
    settings: RealisticSettings
    turns: dict[str, int]
    """Task id -> model turns of its one attempt."""
    plan_delay_s: float
    turn_delays: dict[str, float]
    """Call key (`agent:<task>:1:<turn>`) -> seconds before the answer."""

    @classmethod
    def draw(cls, s: RealisticSettings) -> Workload:
        rng = random.Random(s.seed)
        turns = {task_id(i): rng.randint(s.turns_min, s.turns_max) for i in range(s.tasks)}
        plan = rng.uniform(s.delay_min_s, s.delay_max_s)
        delays = {
            f"agent:{task}:1:{turn}": rng.uniform(s.delay_min_s, s.delay_max_s)
            for task, count in turns.items()
            for turn in range(1, count + 1)
        }
        return cls(s, turns, plan, delays)

    def delay_for(self, key: str) -> float:
        if key == "plan":
            return self.plan_delay_s
        if key in self.turn_delays:
            return self.turn_delays[key]
        # A call the script did not plan (a retry): its own draw, the same in every run.
        return random.Random(f"{self.settings.seed}:{key}").uniform(
            self.settings.delay_min_s, self.settings.delay_max_s
        )

    def task_model_s(self, task: str) -> float:
        return sum(self.turn_delays[f"agent:{task}:1:{turn}"] for turn in range(1, self.turns[task] + 1))

    @property
    def model_bound_s(self) -> float:
        return self.plan_delay_s + max(self.task_model_s(t) for t in self.turns)

    def transcript(self) -> dict[str, Any]:
        planned = [
            {
                "id": task_id(i),
                "title": f"Add tabulate.ext_{i:02d}",
                "instructions": f"Create {module_path(i)} with table_{i:02d}() and its test {test_path(i)}.",
                "depends_on": [],
                "scope": sorted(final_files(i, self.turns[task_id(i)])),
            }
            for i in range(self.settings.tasks)
        ]
        summary = "Add one preset table style module per task to tabulate, each with its own test."
        plan = {
            "content": [{"type": "tool_use", "name": "submit_plan", "input": {"summary": summary, "tasks": planned}}]
        }
        work = {task_id(i): [task_turns(i, self.turns[task_id(i)])] for i in range(self.settings.tasks)}
        return {"description": f"bench: {self.settings.tasks} tasks on {PACKAGE}", "plan": plan, "tasks": work}


class DelayedResponder:
    """The transcript's answer to each call, given after the workload's delay for that call's key.

    Each request is on its own server thread, so delays overlap as real model calls do; `stop` cuts them short.
    """

    def __init__(self, script: Path, workload: Workload) -> None:
        self._script = ScriptResponder(script)
        self._workload = workload
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self.delays: list[tuple[str, float]] = []

    def __call__(self, body: dict[str, Any]) -> FakeReply:
        try:
            key = context_from_request(body).key
        except ValueError:
            return self._script(body)  # the script's own 400 explains it
        delay = self._workload.delay_for(key)
        with self._lock:
            self.delays.append((key, delay))
        self._stopping.wait(delay)
        return self._script(body)

    def stop(self) -> None:
        self._stopping.set()


# --------------------------------------------------------------------------------------------------
# The target and the run


def package_repo(dest: Path) -> Path:
    """The pinned sdist of `PACKAGE` as a git repository on `main`, upstream as it is, plus the bench's policy."""
    sys.path.insert(0, str(ROOT))  # the sdist pins and the cache live with the tests
    try:
        from tests.third_party import PACKAGES, fetch_sdist
    finally:
        sys.path.remove(str(ROOT))
    (package,) = [p for p in PACKAGES if p.name == PACKAGE]
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent) as scratch:
        with tarfile.open(fetch_sdist(package)) as archive:
            archive.extractall(scratch, filter="data")
        (unpacked,) = Path(scratch).iterdir()
        shutil.move(unpacked, dest)
    for egg_info in list(dest.rglob("*.egg-info")):
        shutil.rmtree(egg_info)
    (dest / ".factory").mkdir()
    (dest / ".factory" / "policy.toml").write_text(CHEAP_GATES)
    git(dest, "init", "-q", "-b", "main")
    git(dest, "add", "-A", "--force")
    git(dest, "commit", "-q", "-m", f"upstream {package.name} {package.version}")
    return dest


def merge_queue_settings() -> str:
    """The merge queue's batching policy in force, when this build has one (the defaults: the bench sets none)."""
    if "merge_queue" not in Policy.model_fields:
        return "no `[merge_queue]` policy in this build (one merge at a time)"
    return f"`[merge_queue]` defaults: {Policy().merge_queue!r}"


@dataclass
class RealisticResult:
    settings: RealisticSettings
    workload: Workload
    measured_s: float
    plain: PlainRun
    merged: int
    calls: int
    first_call_s: float
    """When the plan call reached the model server (after the base's suite was measured)."""
    last_answer_s: float
    shares: dict[str, float]
    gates_busy_s: float
    model_busy_s: float
    tests_runs: int
    full_suite_runs: int
    run_level_gates: int
    """`run_gates` in the run's own history: the merge queue's integration-suite runs and the final verification."""
    stacked_checks: int
    """Of those, the checks of batches stacked on one still being checked."""
    merge_queue: str
    notes: list[str] = field(default_factory=list)

    @property
    def cpu_bound_s(self) -> float:
        return self.plain.cpu_s / (os.cpu_count() or 1)

    @property
    def limit_s(self) -> float:
        return max(self.workload.model_bound_s, self.cpu_bound_s)

    @property
    def efficiency(self) -> float:
        return self.limit_s / self.measured_s

    @property
    def full_suite_per_task(self) -> float:
        return self.full_suite_runs / max(self.merged, 1)


async def measure(bench: Bench, s: RealisticSettings) -> RealisticResult:
    workload = Workload.draw(s)
    repo = package_repo(bench.root / "repos" / "realistic")
    progress(f"realistic: {PACKAGE} target environment")
    env = bench.target_env(repo)
    script = bench.root / "realistic-transcript.json"
    script.write_text(json.dumps(workload.transcript()))
    queue = f"bench-realistic-{uuid.uuid4().hex[:8]}"
    responder = DelayedResponder(script, workload)
    with FakeMessagesServer(responder) as server:
        worker = bench.start_worker(
            queue,
            {
                "ANTHROPIC_BASE_URL": server.base_url,
                "DARKFACTORY_MODEL_CONCURRENCY": str(s.max_parallel),
                "DARKFACTORY_MAX_CONCURRENT_ACTIVITIES": str(s.max_parallel),
            },
        )
        try:
            await bench.wait_polling(queue, worker)
            progress(
                f"realistic: {s.tasks} tasks on {PACKAGE}, max_parallel={s.max_parallel}, "
                f"{sum(workload.turns.values())} turns of {s.delay_min_s:g}-{s.delay_max_s:g} s (seed {s.seed}); "
                f"model-bound {workload.model_bound_s:.1f} s"
            )
            request = run_request(repo, MODEL, max_parallel=s.max_parallel, timeouts=TIMEOUTS)
            # Histories stamp events with the wall clock, the fake server stamps arrivals with the monotonic one.
            started_at, started = time.time(), time.monotonic()
            handle = await bench.start_run(request, queue)
            summary = await handle.result()
            measured = time.monotonic() - started
        finally:
            responder.stop()
        requests = server.requests
    worker.stop()
    require_success(summary, "realistic")
    progress(f"realistic: {measured:.1f}s for {len(summary.tasks)} merged tasks; now the plain script")
    plain_repo = package_repo(bench.root / "repos" / "realistic-plain")
    changes = [final_files(i, workload.turns[task_id(i)]) for i in range(s.tasks)]
    changed = sorted(p for files in changes for p in files)
    plain = plain_script(plain_repo, changes, env, bench.root / "realistic-plain", final_lint=changed)
    progress(f"realistic: plain script {plain.wall_s:.1f}s wall, {plain.cpu_s:.1f}s CPU")

    events = await histories(bench.client, summary)
    spans = [span for history in events for span in activity_spans(history)]
    runs = suite_runs(events)
    keys = [context_from_request(r.body).key for r in requests]
    notes = []
    if len(set(keys)) != len(keys) or set(keys) - {"plan", *workload.turn_delays}:
        notes.append(
            f"{len(keys)} model calls for {len(set(keys))} distinct keys (retries or calls the script did not plan)"
        )

    def busy(names: tuple[str, ...]) -> float:
        return sum(span.closed_s - span.running_from_s for span in spans if span.name in names)

    return RealisticResult(
        settings=s,
        workload=workload,
        measured_s=measured,
        plain=plain,
        merged=sum(t.state == "merged" for t in summary.tasks),
        calls=len(requests),
        first_call_s=min(r.at for r in requests) - started,
        last_answer_s=max(r.at + workload.delay_for(k) for r, k in zip(requests, keys, strict=True)) - started,
        shares=wall_shares(spans, started_at, started_at + measured),
        gates_busy_s=busy(GATE_ACTIVITIES),
        model_busy_s=busy(tuple(name for name, kind in CATEGORIES.items() if kind == "model")),
        tests_runs=runs.tests,
        full_suite_runs=runs.full_suite,
        run_level_gates=sum(span.name == "run_gates" for span in activity_spans(events[0])),
        stacked_checks=stacked_checks(events[0]),
        merge_queue=merge_queue_settings(),
        notes=notes,
    )


def render(r: RealisticResult, *, quick: bool, tier: str, load: float, date: str) -> str:
    s, w = r.settings, r.workload
    cores = os.cpu_count() or 1
    slowest = max(w.turns, key=w.task_model_s)
    turns = sum(w.turns.values())
    wall = r.measured_s
    share = {k: v / wall for k, v in r.shares.items()}
    which = "model-bound" if w.model_bound_s >= r.cpu_bound_s else "CPU-bound"
    lines = [
        f"## Realistic benchmark: {s.tasks} tasks on {PACKAGE}{' (--quick)' if quick else ''}",
        "",
        f"{date}, {cores} cores, sandbox tier {tier}, 1-minute load average {load:.2f} before the run.",
        "",
        "| measure | value | how |",
        "| --- | --- | --- |",
        f"| time to merge everything | **{wall:.1f} s** | from starting the run to its summary: {r.merged}/{s.tasks} "
        "tasks merged, integration verified, main fast-forwarded |",
        f"| limit | **{r.limit_s:.1f} s** ({which}) | max(model-bound {w.model_bound_s:.1f} s, plain CPU "
        f"{r.plain.cpu_s:.1f} s / {cores} cores = {r.cpu_bound_s:.1f} s) |",
        f"| efficiency | **{r.efficiency:.0%}** | limit / time to merge everything |",
        f"| full-suite runs per merged task | **{r.full_suite_per_task:.2f}** | {r.full_suite_runs} `run_gates` "
        f"tests results with `full_suite: true` / {r.merged} merged tasks ({r.tests_runs} tests results in all) |",
        f"| wall time in gate activities | {share['gates']:.0%} ({r.shares['gates']:.0f} s) | at least one "
        f"`run_gates` or `measure_base` running ({r.gates_busy_s:.0f} s of them summed, on {cores} gate slots) |",
        f"| wall time in model calls only | {share['model only']:.0%} ({r.shares['model only']:.0f} s) | model "
        f"calls in flight, no gate running (calls in flight at all: {share['model']:.0%}; {r.model_busy_s:.0f} s "
        "summed) |",
        f"| the rest | {share['rest']:.0%} ({r.shares['rest']:.0f} s) | neither: git and tool activities, merges, "
        "Temporal |",
        "",
        "Model-bound: the plan's delay "
        f"{w.plan_delay_s:.1f} s + the slowest task's ({slowest}, {w.turns[slowest]} turns) summed delays "
        f"{w.task_model_s(slowest):.1f} s; {turns} turns over {s.tasks} tasks ({turns / s.tasks:.1f} a task), each "
        f"answered after a delay uniform in [{s.delay_min_s:g}, {s.delay_max_s:g}] s from `random.Random({s.seed})`; "
        f"{r.calls} model calls reached the server. Where the time beyond the model-bound went: the plan call "
        f"arrived at {r.first_call_s:.1f} s (the base's suite is measured first); the last answer went out at "
        f"{r.last_answer_s:.1f} s, {r.last_answer_s - r.first_call_s - w.model_bound_s:.1f} s more than the model "
        "time after the plan call (the tools between turns, scheduling, CPU shared with the gates); the run ended "
        f"{wall - r.last_answer_s:.1f} s after that (the last "
        "task's gates, the merge queue, the final verification). Plain "
        f"script: {r.plain.wall_s:.1f} s wall, {r.plain.cpu_s:.1f} s CPU (tests {r.plain.parts.get('tests', 0):.1f} s "
        f"wall over {s.tasks + 1} suite runs, lint {r.plain.parts.get('lint', 0):.1f} s, git "
        f"{r.plain.parts.get('git', 0):.1f} s). Run-level `run_gates` (merge queue integration suites and the final "
        f"verification): {r.run_level_gates}, {r.stacked_checks} of them of a batch stacked on one being checked. "
        f"Merge queue: {r.merge_queue}. Settings: max_parallel={s.max_parallel}, "
        f"DARKFACTORY_MODEL_CONCURRENCY={s.max_parallel}, DARKFACTORY_MAX_CONCURRENT_ACTIVITIES={s.max_parallel}, gate "
        f"slots = cores, policy {CHEAP_GATES.strip()}, one `factory-worker` subprocess, the real Anthropic SDK against "
        "the local Messages API server.",
    ]
    if r.notes:
        lines += ["", "Notes: " + "; ".join(r.notes) + "."]
    return "\n".join(lines)
