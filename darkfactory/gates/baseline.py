"""Measuring the base once: its suite with per-test coverage, in the target's environment and the sandbox.

pytest runs the base commit's whole suite with pytest-cov's `--cov-context=test` (coverage.py dynamic
contexts), so one run answers which tests fail on the base and which files each test executes. Tests that
fail are re-run alone: one that passes then is flaky on the base, never "failing" (it must not become a
witness by passing later). A suite that cannot run under coverage is measured without it, and says so;
a test command other than pytest gives only its exit code.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

from pydantic import BaseModel, ValidationError

from darkfactory.gates.baseline_data import Baseline, BaseOutcome
from darkfactory.gates.common import read_regular_file, tail, transcript
from darkfactory.gates.context import GateContext
from darkfactory.gates.junit import PytestRun, run_pytest, source_roots
from darkfactory.gates.selection import split_test_command
from darkfactory.gates.suite import MAX_RECHECK, is_pytest, run_tests
from darkfactory.sandbox import run_command
from darkfactory.toolbox import COVERAGE_TOOLS, tool_dir, tool_script, tool_site

COVERAGE_MAP_LIMIT = 64 << 20
"""Bytes of the per-test coverage map the host reads back."""
MESSAGE_LIMIT = 300


class _CoverageMap(BaseModel):
    """What `sandboxed/coverage_map.py` writes; validated, since code under test could have written it."""

    files: list[str]
    tests: dict[str, list[int]]


def measure_base(ctx: GateContext, scratch: Path) -> tuple[Baseline, str]:
    """The base's suite measured in `ctx.worktree` (a checkout of the base); returns it and a transcript."""
    started = time.monotonic()
    if not is_pytest(ctx.test_command):
        result = run_tests(ctx)
        note = "the test command is not pytest: only its exit code is known, not which tests fail"
        return _exit_code_only(ctx, result.returncode, [note], started), transcript(result)
    outputs: list[str] = []
    notes: list[str] = []
    tools = tool_dir(ctx.env.root.parent, "coverage", COVERAGE_TOOLS, requirements=False)
    data_file = scratch / f"coverage-{uuid.uuid4().hex[:12]}"
    config = scratch / f"coveragerc-{uuid.uuid4().hex[:12]}"
    # Our own coverage configuration: the repository's (fail_under, omit, a data file in the tree) must not
    # change what is measured or fail the run.
    config.write_text(f"[run]\ndata_file = {data_file}\nbranch = False\nparallel = False\n")
    with_coverage = [*ctx.test_command, "-p", "pytest_cov", f"--cov={ctx.worktree}", "--cov-context=test",
                     "--cov-report=", f"--cov-config={config}"]  # fmt: skip
    run = run_pytest(
        ctx,
        ctx.worktree,
        with_coverage,
        scratch,
        "base",
        readonly=[tools],
        capture=False,
        extra_path=[tool_site(tools)],
    )
    outputs.append(f"## base suite with coverage\n{transcript(run.result)}")
    coverage: _CoverageMap | None = None
    if run.cases is None:
        notes.append("the suite did not run under coverage (" + _last_line(run) + "); measured without it")
        run = run_pytest(ctx, ctx.worktree, ctx.test_command, scratch, "base-plain")
        outputs.append(f"## base suite\n{transcript(run.result)}")
    else:
        coverage = _read_coverage(ctx, tools, data_file, scratch, outputs)
        if coverage is None:
            notes.append("per-test coverage could not be read back; affected tests come from the import graph")
    if run.cases is None:
        notes.append("the base's suite gave no readable report (" + _last_line(run) + ")")
        return _exit_code_only(ctx, run.result.returncode, notes, started), "\n\n".join(outputs)
    outcomes: dict[str, BaseOutcome] = {case.nodeid: case.outcome for case in run.cases}
    messages = {case.nodeid: _first_line(case.message or case.text) for case in run.failing}
    flaky = _flaky(ctx, run, scratch, outputs, notes)
    for nodeid in flaky:
        outcomes[nodeid] = "passed"
        messages.pop(nodeid, None)
    baseline = Baseline(
        base_sha=ctx.sha,
        test_command=list(ctx.test_command),
        per_test=True,
        exit_code=run.result.returncode,
        outcomes=outcomes,
        messages=messages,
        flaky=flaky,
        coverage_files=coverage.files if coverage else None,
        coverage_tests=coverage.tests if coverage else {},
        notes=notes,
        duration_s=round(time.monotonic() - started, 3),
    )
    return baseline, "\n\n".join(outputs)


def _exit_code_only(ctx: GateContext, exit_code: int, notes: list[str], started: float) -> Baseline:
    """A base known only by its test command's exit code: every failure of a change will count."""
    return Baseline(
        base_sha=ctx.sha,
        test_command=list(ctx.test_command),
        per_test=False,
        exit_code=exit_code,
        notes=notes,
        duration_s=round(time.monotonic() - started, 3),
    )


def _flaky(ctx: GateContext, run: PytestRun, scratch: Path, outputs: list[str], notes: list[str]) -> list[str]:
    """Failing tests that pass when re-run alone (in one run of just them)."""
    failing = [case.nodeid for case in run.failing if "::" in case.nodeid]
    if not failing:
        return []
    if len(failing) > MAX_RECHECK:
        notes.append(f"{len(failing)} tests fail on the base: too many to re-run; none is called flaky")
        return []
    selection, _ = split_test_command(ctx.test_command, ctx.worktree)
    rerun = run_pytest(ctx, ctx.worktree, [*selection, *failing], scratch, "base-rerun")
    outputs.append(f"## failing tests re-run alone\n{transcript(rerun.result)}")
    passed = {case.nodeid for case in rerun.cases or [] if case.outcome == "passed"}
    return sorted(nodeid for nodeid in failing if nodeid in passed)


def _read_coverage(
    ctx: GateContext, tools: Path, data_file: Path, scratch: Path, outputs: list[str]
) -> _CoverageMap | None:
    """The per-test map, extracted inside the sandbox (the data file is SQLite the suite could have written)."""
    if not data_file.exists():
        return None
    out = scratch / f"coverage-map-{uuid.uuid4().hex[:12]}.json"
    result = run_command(
        ["python", str(tool_script(tools, "coverage_map.py")), str(data_file), str(ctx.worktree), str(out)],
        cwd=ctx.worktree,
        env={"PYTHONPATH": ":".join([str(tool_site(tools)), *source_roots(ctx.worktree)])},
        path_prefix=[ctx.env.bin_dir],
        readonly_paths=[*ctx.env.readonly_paths, tools],
        writable_paths=[scratch],
        timeout_s=600.0,
        on_tick=ctx.on_tick,
    )
    if not result.ok:
        outputs.append(f"## coverage map\n{transcript(result)}")
        return None
    data = read_regular_file(out, COVERAGE_MAP_LIMIT)
    if data is None:
        return None
    try:
        parsed = _CoverageMap.model_validate(json.loads(data))
    except (ValueError, ValidationError):
        return None
    if any(index < 0 or index >= len(parsed.files) for indices in parsed.tests.values() for index in indices):
        return None
    return parsed


def _first_line(text: str) -> str:
    line = next((line.strip() for line in text.splitlines() if line.strip()), "")
    return line[:MESSAGE_LIMIT]


def _last_line(run: PytestRun) -> str:
    lines: Sequence[str] = tail(run.result.output, 3).splitlines()
    return (lines[-1].strip() if lines else f"exit {run.result.returncode}")[:200]
