"""The darkfactory benchmarks: `python bench/run.py [--quick] [--seed N]`, or `--realistic` for figure 5.

One Temporal dev server and one fresh factory home for everything; four figures measured in the same run
(overhead, parallel efficiency, throughput, crash cost), printed as a markdown table with the settings used
and written to bench/results.md. `--realistic` measures figure 5 alone (`realistic.py`: tasks on a real PyPI
package with seeded model latencies) and writes its section of bench/results.md; each kind of run keeps the
other's section. Progress goes to stderr. See bench/README.md for what each figure means.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import crash
import overhead
import parallel
import realistic
from harness import Bench, progress

from darkfactory.sandbox import sandbox_tier

RESULTS = Path(__file__).resolve().parent / "results.md"
REALISTIC_HEADING = "## Realistic benchmark"


@dataclass(frozen=True)
class Settings:
    overhead_tasks: int
    overhead_repeats: int
    parallel_tasks: int
    max_parallel: int
    delay_s: float
    crash_tasks: int
    kills: int
    crash_delay_s: float
    seed: int


FULL = Settings(
    overhead_tasks=6,
    overhead_repeats=3,
    parallel_tasks=64,
    max_parallel=16,
    delay_s=2.0,
    crash_tasks=6,
    kills=5,
    crash_delay_s=0.5,
    seed=7,
)
QUICK = Settings(
    overhead_tasks=2,
    overhead_repeats=1,
    parallel_tasks=8,
    max_parallel=4,
    delay_s=0.5,
    crash_tasks=3,
    kills=2,
    crash_delay_s=0.5,
    seed=7,
)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a ~1-minute smoke version with small settings")
    parser.add_argument("--seed", type=int, default=None, help="seed of the crash kill points / realistic delays")
    parser.add_argument(
        "--realistic", action="store_true", help="figure 5 alone: tasks on a real PyPI package, seeded model latency"
    )
    args = parser.parse_args()
    settings = QUICK if args.quick else FULL
    real = realistic.QUICK if args.quick else realistic.FULL
    if args.seed is not None:
        settings = Settings(**{**settings.__dict__, "seed": args.seed})
        real = realistic.RealisticSettings(**{**real.__dict__, "seed": args.seed})
    interrupted = threading.Event()
    try:
        if args.realistic:
            report = asyncio.run(run_realistic(real, quick=args.quick, interrupted=interrupted))
        else:
            report = asyncio.run(run(settings, quick=args.quick, interrupted=interrupted))
    except BaseException:
        # Ctrl-C also reaches the dev server (same process group), so what surfaces may be a broken RPC.
        if interrupted.is_set():
            progress("interrupted")
            return 130
        raise
    print(report)
    write_results(report, realistic=args.realistic)
    progress(f"written to {RESULTS}")
    return 0


def write_results(report: str, *, realistic: bool) -> None:
    """The four figures first, then the realistic run's section; a run replaces its own part only."""
    old = RESULTS.read_text() if RESULTS.exists() else ""
    figures, heading, old_realistic = old.partition(REALISTIC_HEADING)
    kept = (heading + old_realistic).strip() if not realistic else figures.strip()
    parts = [kept, report] if realistic else [report, kept]
    RESULTS.write_text("\n\n".join(part for part in parts if part) + "\n")


def _on_interrupt(interrupted: threading.Event) -> None:
    main_task = asyncio.current_task()

    def interrupt() -> None:
        interrupted.set()
        if main_task is not None:
            main_task.cancel()

    asyncio.get_running_loop().add_signal_handler(signal.SIGINT, interrupt)


async def run_realistic(settings: realistic.RealisticSettings, *, quick: bool, interrupted: threading.Event) -> str:
    load = os.getloadavg()[0]
    _on_interrupt(interrupted)
    async with Bench() as bench:
        tier = sandbox_tier()
        progress(f"sandbox tier: {tier}")
        result = await realistic.measure(bench, settings)
    return realistic.render(result, quick=quick, tier=tier, load=load, date=time.strftime("%Y-%m-%d"))


async def run(settings: Settings, *, quick: bool, interrupted: threading.Event) -> str:
    started = time.monotonic()
    load = os.getloadavg()[0]  # other work on the machine is the main source of noise
    _on_interrupt(interrupted)
    async with Bench() as bench:
        tier = sandbox_tier()
        progress(f"sandbox tier: {tier}")
        cost = await overhead.measure(bench, settings.overhead_tasks, settings.overhead_repeats)
        par = await parallel.measure(bench, settings.parallel_tasks, settings.max_parallel, settings.delay_s)
        crashed = await crash.measure(
            bench, settings.crash_tasks, settings.kills, settings.seed, settings.crash_delay_s
        )
    return render(settings, cost, par, crashed, tier, time.monotonic() - started, load, quick)


def render(
    s: Settings,
    cost: overhead.OverheadResult,
    par: parallel.ParallelResult,
    crashed: crash.CrashResult,
    tier: str,
    wall_s: float,
    load: float,
    quick: bool,
) -> str:
    n = cost.tasks
    rounds = ", ".join(f"{r.factory_s:.1f}/{r.plain_s:.1f}" for r in cost.samples)
    sandbox = tier if tier == "bwrap" else f"{tier} (bubblewrap missing or unusable: gates ran unsandboxed)"
    lines = [
        f"## darkfactory benchmarks{' (--quick)' if quick else ''}",
        "",
        "| figure | result | target | measured as |",
        "| --- | --- | --- | --- |",
        f"| 1. Overhead | **{cost.ratio:.2f}x** (factory {cost.factory_s:.1f} s vs plain {cost.plain_s:.1f} s; "
        f"{cost.factory_s / n:.2f} vs {cost.plain_s / n:.2f} s per task) | <= 1.15x | {n} sequential tasks, scripted "
        "model (zero latency), vs a plain script doing the same git + edit + ruff + pytest; medians of "
        f"{len(cost.samples)} rounds (factory/plain s: {rounds}) |",
        f"| 2. Parallel efficiency | **{par.efficiency:.0%}** (ideal {par.ideal_s:.1f} s / measured "
        f"{par.measured_s:.1f} s) | | {par.tasks} independent tasks, max_parallel={par.max_parallel}, every model "
        f"call {par.delay_s:.1f} s over the real SDK |",
        f"| 3. Throughput | **{par.per_hour:.0f} merged tasks/hour** | | the same run: {par.tasks} / "
        f"{par.measured_s:.1f} s x 3600 |",
        f"| full-suite runs per merged task | **{par.full_suite_per_task:.2f}** | | the same run: "
        f"{par.full_suite_runs} `run_gates` tests results with `full_suite: true` / {par.tasks} merged tasks "
        f"({par.tests_runs} tests results in all) |",
        f"| 4. Crash cost | **{crashed.per_kill:.2f} repeated model calls per kill** ({crashed.repeated} over "
        f"{crashed.kills} SIGKILLs) | <= 1 | {crashed.tasks} sequential tasks, worker SIGKILLed at seeded random "
        "model-request counts, new worker started |",
        "",
        "Settings: "
        + "; ".join(
            [
                f"{os.cpu_count()} cores, Python {platform.python_version()}",
                "one Temporal dev server (SQLite file, journal_mode=wal, synchronous=1) for all figures",
                "`factory-worker` subprocesses, fresh DARKFACTORY_HOME",
                f"sandbox tier {sandbox}",
                'policy `gates = ["scope", "secrets", "syntax", "lint", "tests"]`',
                "target: examples/demo/repo (textkit); each task adds `textkit/m_XX.py` and its test",
                f"parallel: DARKFACTORY_MODEL_CONCURRENCY={s.max_parallel}, "
                f"DARKFACTORY_MAX_CONCURRENT_ACTIVITIES={s.max_parallel}, gate slots = cores",
                f"crash: heartbeat_s={crash.HEARTBEAT_S}, model delay {s.crash_delay_s} s, seed {s.seed}",
                f"whole benchmark {wall_s:.0f} s wall, 1-minute load average {load:.2f} before it started",
            ]
        )
        + ".",
        "",
        "Overhead breakdown (the median factory run and its plain run; orchestration = wall - activity time):",
        "",
        "| where | factory s | per task | plain s | per task |",
        "| --- | --- | --- | --- | --- |",
    ]
    rows = [
        ("gates / plain ruff + pytest", "gates", ("lint", "tests")),
        ("git and tools / plain git + edit", "git+tools", ("git", "edit")),
        ("model calls (scripted)", "model", ()),
        ("Temporal orchestration", "orchestration", ()),
    ]
    typical = cost.typical
    for label, key, plain_keys in rows:
        factory_s = typical.factory_parts.get(key, 0.0)
        plain_s = sum(typical.plain_parts.get(k, 0.0) for k in plain_keys)
        plain_cells = f"{plain_s:.1f} | {plain_s / n:.2f}" if plain_keys else "- | -"
        lines.append(f"| {label} | {factory_s:.1f} | {factory_s / n:.2f} | {plain_cells} |")
    timed_gates = sorted(((g, t) for g, t in typical.gates.items() if t >= 0.05), key=lambda item: -item[1])
    gates = ", ".join(f"{name} {seconds:.1f} s" for name, seconds in timed_gates) + "; the others < 0.05 s"
    lines += [
        "",
        f"Factory gate time by gate ({n} tasks + the integration verification): {gates}.",
        "",
        f"Parallel run: {par.calls} model calls, peak {par.peak_in_flight} in flight at the server; the last model "
        f"answer went out at {par.last_answer_s:.1f} s; the merge queue checked {par.regression_gates} batches' trees "
        f"({par.stacked_checks} of them stacked on a batch still being checked); gate activities took "
        f"{par.gates_s:.0f} s in all, {par.regression_s:.0f} s of it the merge queue's checks; final verification "
        f"{par.verify_s:.1f} s (0: the queue's last check had passed on that very tree).",
        "",
        f"Crash run: kills at model requests {crashed.kill_points}; calls in flight at each kill {crashed.in_flight}; "
        f"{crashed.requests} requests for {crashed.distinct} distinct calls; recovery (kill → the new worker's next "
        f"model request) {', '.join(f'{r:.1f}' for r in crashed.recovery_s)} s; every task merged; the run took "
        f"{crashed.wall_s:.1f} s against {crashed.baseline_s:.1f} s without kills: "
        f"{crashed.lost_per_kill_s:.1f} s lost per kill ({crashed.workflow_task_timeouts} workflow task(s) timed out "
        "on a dead worker's sticky queue).",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
