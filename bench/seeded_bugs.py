"""Zero broken merges: the factory over real PyPI packages, each with a seeded bug its own suite shows.

For every package in `tests/third_party.py` (cachetools, inflection, toolz, tabulate, isodate, iniconfig),
on a real Temporal dev server with the real gates and a scripted model whose reviewer approves everything
and whose plan carries no acceptance criteria (so nothing but the tests gate can stop a wrong fix):

1. a wrong fix first, then the right one: the wrong one must be sent back, the right one merged, and main's
   suite, run afresh with plain pytest afterwards, must be green;
2. a wrong fix on every attempt: the task must escalate, and main must not move (then it is rejected).

    .venv/bin/python bench/seeded_bugs.py [--packages cachetools,toolz]

Prints one row per package and the number of broken merges (main moved with a failing suite). Needs the
package index once per sdist (cached in ~/.cache/darkfactory-tests).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script: the tests' package definitions live beside it

from temporalio.client import Client, WorkflowHandle  # noqa: E402

from darkfactory.constants import run_workflow_id  # noqa: E402
from darkfactory.contracts import DecisionInput, RunConfig, RunRequest, RunState, Timeouts  # noqa: E402
from darkfactory.settings import FactorySettings  # noqa: E402
from darkfactory.target_env import ensure_target_env  # noqa: E402
from darkfactory.telemetry import configure_logging  # noqa: E402
from darkfactory.worker import ModelClients, build_worker  # noqa: E402
from darkfactory.workflows import FactoryRunWorkflow, TaskWorkflow  # noqa: E402
from tests.conftest import escalation_of, git, start_dev_server  # noqa: E402
from tests.third_party import (  # noqa: E402
    FIX_TASK,
    PACKAGES,
    SeededPackage,
    fix_transcript,
    right_fix_after_wrong,
    seeded_repo,
    wrong_fix,
)

TIMEOUTS = Timeouts(heartbeat_s=10.0, model_call_s=60.0, tools_s=120.0, gates_s=900.0, git_s=60.0)


@dataclass
class Row:
    package: str
    base_failing: int = 0
    merged_at: int | None = None
    main_suite: str = ""
    main_green: bool = False
    escalated: bool = False
    main_moved_when_wrong: bool = True
    seconds: float = 0.0
    reason: str = ""

    @property
    def ok(self) -> bool:
        return self.merged_at == 2 and self.main_green and self.escalated and not self.main_moved_when_wrong


def request(repo: Path, transcript: Path, package: SeededPackage, **config: Any) -> RunRequest:
    return RunRequest(
        run_id=f"seeded-{package.name}-{uuid.uuid4().hex[:8]}",
        repo_path=str(repo),
        spec=f"# {package.name}: {package.bug}\n\nFix the bug; the package's own test suite must pass.\n",
        config=RunConfig(model=f"scripted:{transcript}", ship="merge", timeouts=TIMEOUTS, **config),
    )


def suite_at(repo: Path, ref: str, home: Path) -> tuple[str, set[str]]:
    """The whole suite at `ref` with plain pytest, in the target's environment: its last line and what failed."""
    with tempfile.TemporaryDirectory() as scratch:
        checkout = Path(scratch) / "checkout"
        git(repo, "worktree", "add", "-q", "--detach", str(checkout), ref)
        env = ensure_target_env(checkout, FactorySettings(home=home).envs_dir)
        path = [str(checkout / "src"), str(checkout)] if (checkout / "src").is_dir() else [str(checkout)]
        result = subprocess.run(
            [str(env.python), "-m", "pytest", "-q", "-rfE", "-p", "no:cacheprovider"],
            cwd=checkout,
            env={"PYTHONPATH": ":".join(path), "PATH": f"{env.bin_dir}:/usr/bin:/bin", "HOME": scratch},
            capture_output=True,
            text=True,
            timeout=600,
        )
        git(repo, "worktree", "remove", "--force", str(checkout))
    lines = result.stdout.strip().splitlines() or ["(no output)"]
    return lines[-1], {line.split()[1] for line in lines if line.startswith(("FAILED", "ERROR"))}


async def one_package(client: Client, home: Path, package: SeededPackage, work: Path) -> Row:
    row = Row(package.name)
    started = time.monotonic()
    queue = f"seeded-{uuid.uuid4().hex}"
    async with build_worker(client, FactorySettings(home=home), task_queue=queue, model_clients=ModelClients()):
        # 1. A wrong fix, then the right one.
        repo = seeded_repo(work / f"{package.name}-fix", package)
        upstream_commit = git(repo, "rev-parse", "main~1")
        upstream = git(repo, "rev-parse", f"{upstream_commit}:{package.source_file}")
        script = fix_transcript(work, package, "bugfix", wrong_fix(package), right_fix_after_wrong(package), name="fix")
        run = request(repo, script, package)
        fixed: RunState = await client.execute_workflow(
            FactoryRunWorkflow.run, run, id=run_workflow_id(run.run_id), task_queue=queue
        )
        row.base_failing = fixed.baseline.failed if fixed.baseline else -1
        task = fixed.tasks[0]
        row.merged_at = task.attempts if task.state == "merged" else None
        row.reason = task.reason[:300]
        if task.state != "merged":
            failed = [f"{g.gate}: {g.summary}: {g.feedback[:1500]}" for g in task.gates if not g.passed]
            row.reason = " | ".join([row.reason, *failed])
        if git(repo, "rev-parse", f"main:{package.source_file}") != upstream and task.state == "merged":
            row.merged_at = None  # merged something other than the right fix
        # Green means as green as upstream: a test that fails on upstream too (in this environment) is not the
        # factory's doing, and the tests gate lists it as pre-existing.
        row.main_suite, failing = suite_at(repo, "main", home)
        _, upstream_failing = suite_at(repo, upstream_commit, home)
        row.main_green = failing <= upstream_failing
        if failing:
            row.main_suite += (
                f" (fail on upstream too: {', '.join(sorted(failing))[:120]})"
                if row.main_green
                else (f" (NEW: {', '.join(sorted(failing - upstream_failing))[:120]})")
            )

        # 2. A wrong fix on every attempt.
        repo = seeded_repo(work / f"{package.name}-wrong", package)
        before = git(repo, "rev-parse", "main")
        script = fix_transcript(work, package, "bugfix", wrong_fix(package), wrong_fix(package), name="wrong")
        wrong = request(repo, script, package, max_attempts=2)
        handle: WorkflowHandle[Any, RunState] = await client.start_workflow(
            FactoryRunWorkflow.run, wrong, id=run_workflow_id(wrong.run_id), task_queue=queue
        )
        try:
            row.escalated = bool(await escalation_of(client, wrong.run_id, FIX_TASK))
        except AssertionError:  # the task ended without waiting for a person
            row.escalated = False
        row.main_moved_when_wrong = git(repo, "rev-parse", "main") != before
        task_handle = client.get_workflow_handle(f"{run_workflow_id(wrong.run_id)}-task-{FIX_TASK}")
        await task_handle.signal(TaskWorkflow.reject, DecisionInput(by="bench", note="still wrong"))
        await handle.result()
        row.main_moved_when_wrong = row.main_moved_when_wrong or git(repo, "rev-parse", "main") != before
    row.seconds = round(time.monotonic() - started, 1)
    return row


async def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--packages", default="", help="comma-separated names (default: all)")
    args = parser.parse_args(argv)
    wanted = {name for name in args.packages.split(",") if name}
    packages = [p for p in PACKAGES if not wanted or p.name in wanted]
    configure_logging("WARNING", stream=sys.stderr)
    env = await start_dev_server()
    rows: list[Row] = []
    try:
        with tempfile.TemporaryDirectory(prefix="seeded-bugs-") as scratch:
            work = Path(scratch)
            for package in packages:
                rows.append(await one_package(env.client, work / "home", package, work))
                print(f"{rows[-1]}", file=sys.stderr, flush=True)
    finally:
        await env.shutdown()
    print("| package | fails on base | wrong fix, then right: merged at attempt | main's suite afterwards "
          "| every attempt wrong: escalated | main moved |")  # fmt: skip
    print("| --- | --- | --- | --- | --- | --- |")
    for row in rows:
        print(f"| {row.package} | {row.base_failing} | {row.merged_at or 'not merged'} | {row.main_suite} "
              f"| {'yes' if row.escalated else 'NO'} | {'YES' if row.main_moved_when_wrong else 'no'} |")  # fmt: skip
    broken = sum(1 for row in rows if row.merged_at and not row.main_green) + sum(
        1 for row in rows if row.main_moved_when_wrong
    )
    print(f"\n{sum(row.ok for row in rows)}/{len(rows)} packages as expected; broken merges: {broken}")
    return 0 if broken == 0 and all(row.ok for row in rows) else 1


if __name__ == "__main__":
    os.environ.setdefault("PYTHONDONTWRITEBYTECODE", "1")
    raise SystemExit(asyncio.run(main()))
