"""The tests gate: the repository's own test command, in its own environment, sandboxed.

For pytest, affected tests first, then the whole suite; a failure counts only if it fails again when
re-run alone (else flaky) and does not fail on the base commit too (else known). Any other command's exit
code is the verdict.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from darkfactory.contracts import GateResult
from darkfactory.gates.common import (
    MAX_ITEMS,
    bounded,
    budget,
    details_blob,
    is_regular,
    listed_notes,
    scratch_dir,
    tail,
    transcript,
)
from darkfactory.gates.context import GateContext
from darkfactory.gates.junit import PYTEST_NO_TESTS, JUnitCase, PytestRun, run_pytest
from darkfactory.gates.selection import affected_tests, split_test_command
from darkfactory.sandbox import CommandResult, run_command

MAX_RECHECK = 200
"""Failing tests re-run for flakiness and checked on the base; beyond this every failure counts."""


def _is_pytest(command: Sequence[str]) -> bool:
    return any("pytest" in part for part in command[:3])


class _PytestGate:
    """The tests gate for pytest: affected tests first, then the whole suite; failures re-run once (flaky)
    and checked on the base commit (known) before they count."""

    def __init__(self, ctx: GateContext, scratch: Path) -> None:
        self.ctx = ctx
        self.scratch = scratch
        self.selection, _ = split_test_command(ctx.test_command, ctx.worktree)
        self.outputs: list[str] = []
        self.known: dict[str, JUnitCase] = {}
        self.flaky: dict[str, JUnitCase] = {}
        self.notes: list[str] = []

    def run(self) -> GateResult:
        affected = affected_tests(self.ctx)
        if affected:
            first = self.pytest(self.ctx.worktree, [*self.selection, *affected], "affected")
            failed = self.judge(first, f"{len(affected)} affected test file(s)")
            if failed is not None:
                return failed
        full = self.pytest(self.ctx.worktree, self.ctx.test_command, "full")
        failed = self.judge(full, "")
        if failed is not None:
            return failed
        if full.result.returncode == PYTEST_NO_TESTS:
            return self.result(True, "no tests collected")
        summary = self.tally(full) if full.cases is not None else _pytest_tally(full.result.output)
        return self.result(True, summary or "tests passed")

    def pytest(self, tree: Path, argv: Sequence[str], label: str) -> PytestRun:
        run = run_pytest(self.ctx, tree, argv, self.scratch, label)
        where = "base" if tree != self.ctx.worktree else "change"
        self.outputs.append(f"## {label} ({where})\n{transcript(run.result)}")
        return run

    def judge(self, run: PytestRun, scope: str) -> GateResult | None:
        """The failing result for this run, or None when nothing in it counts."""
        result = run.result
        suffix = f" ({scope}; the full suite was not run)" if scope else ""
        if result.timed_out:
            return self.result(
                False, f"tests timed out after {result.duration_s:.0f}s{suffix}", tail(result.output, 40)
            )
        if result.returncode == PYTEST_NO_TESTS or (result.returncode == 0 and not run.failing):
            return None
        if not run.failing:
            # A non-zero exit with no failing test in the report: a crash, a usage error, no readable report.
            summary = _pytest_tally(result.output) or f"test command exited {result.returncode}"
            return self.result(False, summary + suffix, pytest_feedback(result.output))
        real = self.recheck(run.failing)
        if not real:
            return None
        return self.result(False, self.tally(run, len(real)) + suffix, _failures_feedback(real))

    def recheck(self, failing: list[JUnitCase]) -> list[JUnitCase]:
        """The failures that count: not flaky (they fail again when re-run alone) and not known (they do not
        fail on the base commit too)."""
        pending = [case for case in failing if case.nodeid not in self.known]
        if len(pending) > MAX_RECHECK:
            self.notes.append(f"{len(pending)} failures: too many to re-run or check on the base commit")
            return pending
        # Flaky first, in the same worktree: a test that fails only on its first run there is flaky, and
        # checking the base first would call it known.
        rerunnable = [case for case in pending if "::" in case.nodeid and is_regular(self.ctx.worktree, case.file)]
        flaky: set[str] = set()
        if rerunnable:
            rerun = self.pytest(self.ctx.worktree, [*self.selection, *(c.nodeid for c in rerunnable)], "rerun")
            passed = {case.nodeid for case in rerun.cases or [] if case.outcome == "passed"}
            flaky = {case.nodeid for case in rerunnable if case.nodeid in passed}
            self.flaky.update({case.nodeid: case for case in rerunnable if case.nodeid in flaky})
        still = [case for case in pending if case.nodeid not in flaky]
        base = self.ctx.base_worktree
        if still and base is not None:
            # Whole files on the base: a test the change added would make a node id selection a usage error.
            files = sorted({case.file for case in still if is_regular(base, case.file)})
            if files:
                base_run = self.pytest(base, [*self.selection, *files], "base")
                if base_run.cases is None:
                    self.notes.append("the base commit's tests did not run: no failure could be called known")
                broken = {case.nodeid for case in base_run.failing}
                for case in still:
                    if case.nodeid in broken or case.file in broken:  # a test, or its whole file, fails there
                        self.known[case.nodeid] = case
        return [case for case in still if case.nodeid not in self.known]

    def tally(self, run: PytestRun, failed: int = 0) -> str:
        # Known and flaky over the whole gate: a flaky test seen among the affected tests stays worth a mention.
        known = len(self.known)
        flaky = len(self.flaky.keys() - self.known.keys())
        parts = [f"{failed} failed"] if failed else []
        parts.append(f"{run.count('passed')} passed")
        if known:
            parts.append(f"{known} known failure{'s' if known > 1 else ''}")
        if flaky:
            parts.append(f"{flaky} flaky")
        if run.count("skipped"):
            parts.append(f"{run.count('skipped')} skipped")
        return ", ".join(parts)

    def result(self, passed: bool, summary: str, feedback: str = "") -> GateResult:
        notes = [
            *listed_notes("known failure (fails on the base commit too)", [c.headline for c in self.known.values()]),
            *listed_notes(
                "flaky (passed when re-run)", [c.headline for c in self.flaky.values() if c.nodeid not in self.known]
            ),
            *self.notes,
        ]
        return GateResult(
            gate="tests",
            passed=passed,
            summary=summary,
            feedback=bounded(feedback) if not passed else "",
            details_ref=details_blob(self.ctx, self.outputs),
            notes=notes,
        )


def _failures_feedback(cases: Sequence[JUnitCase]) -> str:
    """Each failing test's id with the end of its short traceback, then a one-line-per-test summary."""
    parts: list[str] = []
    for case in cases[:MAX_ITEMS]:
        body = (case.text or case.message).strip()
        lines = [line[:300] for line in body.splitlines()[-15:]]
        parts.append(f"### {case.nodeid}\n" + "\n".join(lines))
    if len(cases) > MAX_ITEMS:
        parts.append(f"... and {len(cases) - MAX_ITEMS} more failing test(s)")
    parts.append("### summary\n" + "\n".join(f"FAILED {case.headline}" for case in cases[:20]))
    return "\n\n".join(parts)


def tests_gate(ctx: GateContext) -> GateResult:
    """The repository's test command, in its own environment, sandboxed."""
    if _is_pytest(ctx.test_command):
        with scratch_dir(ctx) as scratch:
            return _PytestGate(ctx, scratch).run()
    result = run_tests(ctx)
    details = ctx.blobs.put_text(result.output)
    if result.timed_out:
        return GateResult(
            gate="tests",
            passed=False,
            summary=f"tests timed out after {result.duration_s:.0f}s",
            feedback=bounded(tail(result.output, 40)),
            details_ref=details,
        )
    if result.returncode == 0:
        return GateResult(gate="tests", passed=True, summary="tests passed", details_ref=details)
    return GateResult(
        gate="tests",
        passed=False,
        summary=f"test command exited {result.returncode}",
        feedback=bounded(tail(result.output, 40)),
        details_ref=details,
    )


def run_tests(ctx: GateContext) -> CommandResult:
    """The test command as given, in the worktree (a non-pytest command: its exit code is the verdict)."""
    python_path = [str(ctx.worktree)]
    if (ctx.worktree / "src").is_dir():
        python_path.insert(0, str(ctx.worktree / "src"))
    return run_command(
        list(ctx.test_command),
        cwd=ctx.worktree,
        env={"PYTHONPATH": ":".join(python_path), "VIRTUAL_ENV": str(ctx.env.root)},
        path_prefix=[ctx.env.bin_dir],
        readonly_paths=ctx.env.readonly_paths,
        timeout_s=budget(ctx),
        on_tick=ctx.on_tick,
    )


_TALLY = re.compile(r"^=*\s*((?:\d+ \w+(?:, )?)+)\s+in [\d.]+s", re.MULTILINE)


def _pytest_tally(output: str) -> str:
    found = _TALLY.findall(output)
    return found[-1].strip() if found else ""


def pytest_feedback(output: str) -> str:
    """Failing test ids with their assertion messages and a few lines of context, from `--tb=short` output."""
    sections = re.split(r"^_{3,} (.+?) _{3,}$", output, flags=re.MULTILINE)
    parts: list[str] = []
    # re.split with one group yields [preamble, title1, body1, title2, body2, ...]
    for title, body in zip(sections[1::2], sections[2::2], strict=False):
        keep = [line for line in body.splitlines() if _is_failure_line(line)]
        parts.append(f"### {title.strip()}\n" + "\n".join(keep[-12:]))
        if len(parts) >= MAX_ITEMS:
            break
    summary = re.search(r"^=+ short test summary info =+$(.*?)(?=^=+|\Z)", output, re.MULTILINE | re.DOTALL)
    if summary:
        parts.append("### summary\n" + summary.group(1).strip())
    if not parts:
        return tail(output, 40)
    return "\n\n".join(parts)


def _is_failure_line(line: str) -> bool:
    stripped = line.strip()
    return bool(
        stripped.startswith(("E ", ">", "assert "))
        or re.match(r"^[\w./-]+\.py:\d+: ", stripped)
        or stripped.startswith(("Error", "Exception"))
    )
