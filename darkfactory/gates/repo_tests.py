"""The tests gate: the repository's own suite, judged against the base measured once.

For pytest: the suite runs in the judged tree (the change's code with the base's tests, see `trees.py`). A task
runs the tests its change affects (by coverage, see `selection.py`; all of them when that cannot be told) and
the merge queue runs the whole suite on the tree it merges; elsewhere, and with `[merge_queue]
full_suite_in_tasks` or `[tests] strict_base`, the whole suite runs, the affected tests first where it is slow.
A failing test counts unless the policy quarantines it, it passes when re-run alone (flaky), or it failed on
the base too and the change does not affect it (pre-existing; `[tests] strict_base` counts those as well; in
a merge check, also one failing on the head the changes land on). A `feature` or `bugfix` task also needs a
witness: a test that fails on the base and passes with the change, either an existing failing test or a
new one that fails when run against the base's code (the witness tree).

Any other test command: its exit code in the judged tree is the verdict, and a witness can only be seen
as "fails on the base, passes now"; without one a feature or bug fix needs a person's approval.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from pathlib import Path

from darkfactory.contracts import GateResult
from darkfactory.gates.common import bounded, details_blob, is_regular, scratch_dir, tail, transcript
from darkfactory.gates.context import GateContext
from darkfactory.gates.junit import PYTEST_NO_TESTS, JUnitCase, PytestRun, run_pytest
from darkfactory.gates.selection import Affected, affected_tests, split_test_command
from darkfactory.gates.suite import MAX_RECHECK, is_pytest, pytest_feedback, pytest_tally, run_tests
from darkfactory.gates.trees import JudgedTree, judged_tree, witness_tree
from darkfactory.gates.verdicts import (
    WITNESS_TYPES,
    Counted,
    Ledger,
    failures_feedback,
    no_witness_feedback,
    vanished,
)
from darkfactory.policy import WHOLE_SUITE_IN_TASK_S
from darkfactory.workspace import GitRun

AFFECTED_FIRST_MIN_S = 10.0
"""Seconds the base's whole suite took (with coverage) from which the affected tests run first, alone."""


def _judged(ctx: GateContext, scratch: Path) -> JudgedTree | None:
    """The judged tree for a task's change; None for the other purposes (a merge, the integration branch),
    whose trees hold changes already judged and run as they are."""
    if ctx.purpose != "task" or not ctx.repo_path:
        return None
    where = (ctx.trees_dir or scratch / "trees") / "judged"
    allowed = ctx.policy.rules_for(ctx.task_type).allow_test_edits
    return judged_tree(ctx.repo_path, ctx.base_sha, ctx.sha, where, worktree=ctx.worktree, test_edits_allowed=allowed)


def _tree_notes(ctx: GateContext, judged: JudgedTree | None) -> list[str]:
    if judged is None:
        return []
    notes: list[str] = []
    if judged.restored:
        shown = ", ".join(judged.restored[:8]) + (" ..." if len(judged.restored) > 8 else "")
        notes.append(
            f"the base's versions of {shown} ran: a `{ctx.task_type}` task may not change existing tests or the "
            "pytest configuration (your edited test files ran beside them as copies)"
        )
    if judged.dropped:
        notes.append(f"not used (a `{ctx.task_type}` task may not add them): {', '.join(judged.dropped[:8])}")
    return notes


class _PytestGate:
    """One tests-gate run for pytest: trees, affected tests, the suite, the verdict on each failure, the witness."""

    def __init__(self, ctx: GateContext, scratch: Path) -> None:
        self.ctx = ctx
        self.scratch = scratch
        self.selection, _ = split_test_command(ctx.test_command, ctx.worktree)
        self.outputs: list[str] = []
        self.ledger = Ledger()
        self.judged = _judged(ctx, scratch)
        self.tree = self.judged.path if self.judged else ctx.worktree
        self.ledger.notes.extend(_tree_notes(ctx, self.judged))
        self._base_tree: Path | None = None
        self._shown = self.judged.shown if self.judged else (lambda nodeid: nodeid)
        self._original = self.judged.original_path if self.judged else (lambda nodeid: nodeid)
        self.full_ran = False
        """The whole suite ran (not only the affected tests)."""

    @functools.cached_property
    def affected(self) -> Affected:
        """Computed when first needed: a green base with a quick suite never asks."""
        return affected_tests(self.ctx, self.tree, sorted(self.judged.copies) if self.judged else ())

    def run(self) -> GateResult:
        baseline = self.ctx.baseline
        # A task runs the tests its change affects; the merge queue runs the whole suite once per batch, on the
        # very tree that becomes the integration head (`[merge_queue] full_suite_in_tasks` runs it here too).
        affected_only = _affected_only(self.ctx)
        # Otherwise the affected tests first only pays where the whole suite is slow: pytest's start-up is then
        # most of either run, and a second run is pure cost.
        quick = baseline is not None and baseline.per_test and baseline.duration_s < AFFECTED_FIRST_MIN_S
        first = self.affected.first_files() if affected_only or not quick else []
        if first:
            early = self.pytest(self.tree, [*self.selection, *first], "affected")
            scope = f"{len(first)} affected test file(s); the full suite was not run"
            if affected_only:
                scope = f"{len(first)} test file(s) your change affects; the merge queue runs the whole suite"
            failed = self.judge(early, scope)
            if failed is not None:
                return failed
            if affected_only:
                return self.verdict(early, only_files=set(first))
        self.full_ran = True
        return self.verdict(self.pytest(self.tree, self.ctx.test_command, "full"))

    def verdict(self, run: PytestRun, only_files: set[str] | None = None) -> GateResult:
        """The result of the run that decides (the whole suite, or a task's affected tests)."""
        failed = self.judge(run, "") if only_files is None else None
        failed = failed or self.judge_vanished(run, only_files)
        if failed is not None:
            return failed
        if self.ctx.purpose == "task" and self.ctx.task_type in WITNESS_TYPES:
            missing = self.find_witness(run)
            if missing is not None:
                return missing
        if run.result.returncode == PYTEST_NO_TESTS:
            return self.result(True, "no tests collected")
        summary = self.ledger.tally(run) if run.cases is not None else pytest_tally(run.result.output)
        if only_files is not None:
            summary = f"{summary or 'tests passed'} in {len(only_files)} affected test file(s)"
        return self.result(True, summary or "tests passed")

    def pytest(self, tree: Path, argv: Sequence[str], label: str) -> PytestRun:
        run = run_pytest(self.ctx, tree, argv, self.scratch, label, capture=True)
        self.outputs.append(f"## {label} ({os.path.basename(tree)})\n{transcript(run.result)}")
        return run

    # -- failures ----------------------------------------------------------------------------------

    def judge(self, run: PytestRun, scope: str) -> GateResult | None:
        """The failing result for this run, or None when nothing in it counts."""
        result = run.result
        suffix = f" ({scope})" if scope else ""
        if result.timed_out:
            return self.result(
                False, f"tests timed out after {result.duration_s:.0f}s{suffix}", tail(result.output, 40)
            )
        if result.returncode == PYTEST_NO_TESTS or (result.returncode == 0 and not run.failing):
            return None
        if not run.failing:
            # A non-zero exit with no failing test in the report: a crash, a usage error, no readable report.
            summary = pytest_tally(result.output) or f"test command exited {result.returncode}"
            return self.result(False, summary + suffix, pytest_feedback(result.output))
        counted = self.counted(run.failing)
        if not counted:
            return None
        feedback = failures_feedback(sorted(counted, key=self._focus), self._shown)
        return self.result(False, self.ledger.tally(run, len(counted)) + suffix, feedback)

    def judge_vanished(self, full: PytestRun, only_files: set[str] | None = None) -> GateResult | None:
        """A base test that did not run (or was skipped) counts as failing: in the full suite, or in `only_files`
        (the test files of a task's affected run)."""
        baseline = self.ctx.baseline
        if baseline is None or not baseline.per_test or full.cases is None:
            return None
        # Test files that may rightly differ from the measured base: changed since it was measured (the task
        # branched from a later head), or changed by this very change where its own tests are the ones that run
        # (a `test` task may delete a test; a merge or the integration branch holds such tasks' work).
        moved: set[str] = set()
        git = GitRun(Path(self.ctx.repo_path))
        if baseline.base_sha != self.ctx.base_sha:
            moved |= {
                p for p in git("diff", "--name-only", "-z", baseline.base_sha, self.ctx.base_sha).split("\0") if p
            }
        if self.judged is None or self.ctx.policy.rules_for(self.ctx.task_type).allow_test_edits:
            moved |= {p for p in git("diff", "--name-only", "-z", self.ctx.base_sha, self.ctx.sha).split("\0") if p}
        if only_files is not None:
            moved |= {nodeid.split("::", 1)[0] for nodeid in baseline.outcomes} - only_files
        gone = vanished(baseline, full, self.ctx.policy.tests, self._original, moved)
        if not gone:
            return None
        feedback = "Tests that ran on the base must run with your change too:\n" + "\n".join(
            f"- {item.case.nodeid}: {item.case.message}" for item in gone[:20]
        )
        summary = f"{len(gone)} test(s) of the base did not run or were skipped"
        return self.result(False, summary, feedback + (f"\n- ... and {len(gone) - 20} more" if len(gone) > 20 else ""))

    def _focus(self, item: Counted) -> int:
        """Narrow tests first: one that executed few files on the base (a unit test of the changed code)
        points at the problem more directly than an end-to-end test that runs everything."""
        baseline = self.ctx.baseline
        executed = baseline.coverage_tests.get(self._original(item.case.nodeid)) if baseline else None
        return len(executed) if executed else 1 << 20

    def counted(self, failing: list[JUnitCase]) -> list[Counted]:
        """The failures that count; the others go to the ledger as quarantined, flaky or pre-existing."""
        rules = self.ctx.policy.tests
        pending: list[JUnitCase] = []
        for case in failing:
            if self.ledger.decided(case.nodeid):
                continue
            entry = rules.quarantined(self._original(case.nodeid))
            if entry is not None:
                self.ledger.quarantined[case.nodeid] = (case, entry)
            else:
                pending.append(case)
        if len(pending) > MAX_RECHECK:
            self.ledger.notes.append(f"{len(pending)} failures: too many to re-run or look up on the base")
            return [Counted(case, False, "one of too many failures to check") for case in pending]
        # Flaky first: a test that fails only on its first run is flaky whatever the base says.
        rerunnable = [case for case in pending if "::" in case.nodeid and is_regular(self.tree, case.file)]
        if rerunnable:
            rerun = self.pytest(self.tree, [*self.selection, *(c.nodeid for c in rerunnable)], "rerun")
            passed = {case.nodeid for case in rerun.cases or [] if case.outcome == "passed"}
            self.ledger.flaky.update({case.nodeid: case for case in rerunnable if case.nodeid in passed})
        counted: list[Counted] = []
        unaffected: list[JUnitCase] = []
        inherited: list[JUnitCase] = []
        baseline = self.ctx.baseline
        for case in pending:
            if case.nodeid in self.ledger.flaky:
                continue
            original = self._original(case.nodeid)
            if baseline is None or not baseline.per_test:
                counted.append(Counted(case, False, "the base's tests were not measured, so every failure counts"))
            elif not baseline.failed(original):
                new = self.judged is not None and case.file in self.judged.new_tests
                if _may_be_inherited(self.ctx, self.affected, original):
                    inherited.append(case)
                else:
                    counted.append(Counted(case, False, "a new or changed test" if new else "passed on the base"))
            elif rules.strict_base:
                counted.append(Counted(case, True, "failed on the base too; the policy's strict_base counts it"))
            elif self.affected.covers(original):
                counted.append(Counted(case, True, "failed on the base too, and your change affects code it runs"))
            else:
                unaffected.append(case)
        counted.extend(self._pre_existing(unaffected))
        counted.extend(_inherited(self, inherited))
        return counted

    def _pre_existing(self, unaffected: list[JUnitCase]) -> list[Counted]:
        """Unaffected tests failing on the run's base are pre-existing if they also fail on this change's own
        base (a task branches from the integration head, where another task may have fixed them)."""
        if not unaffected:
            return []
        baseline = self.ctx.baseline
        if baseline is not None and baseline.base_sha == self.ctx.base_sha:
            self.ledger.pre_existing.update({case.nodeid: case for case in unaffected})
            return []
        counted, _ = _failing_there_too(self, unaffected, "base-check", "passed on the commit your change started from")
        return counted

    # -- the witness -------------------------------------------------------------------------------

    def find_witness(self, full: PytestRun) -> GateResult | None:
        """None when a witness exists (noted in the ledger); else the failing result that asks for one."""
        baseline = self.ctx.baseline
        new_files = set(self.judged.new_tests) if self.judged else set()
        rules = self.ctx.policy.tests
        passing = [
            case.nodeid
            for case in full.cases or []
            if case.outcome == "passed" and rules.quarantined(self._original(case.nodeid)) is None
        ]
        existing = [n for n in passing if n.split("::", 1)[0] not in new_files]
        fixed = [n for n in existing if baseline is not None and baseline.per_test and baseline.failed(n)]
        if fixed and baseline is not None and baseline.base_sha != self.ctx.base_sha:
            failing_there = self._fails_on_base(fixed, "witness-existing")
            fixed = [n for n in fixed if n in failing_there]
        witnesses = fixed
        added = [n for n in passing if n.split("::", 1)[0] in new_files]
        if not witnesses and added:
            witnesses = self._new_tests_failing_on_base(added)
        if witnesses:
            self.ledger.witnesses = witnesses
            return None
        still_failing = sorted(self.ledger.pre_existing)
        feedback = no_witness_feedback(self.ctx.task_type, still_failing, added, self._shown)
        return self.result(
            False,
            f"no witness: no test fails without the change and passes with it ({self.ctx.task_type} task)",
            feedback,
        )

    def _new_tests_failing_on_base(self, added: list[str]) -> list[str]:
        """New tests that fail against the base's code: run there by file, re-run alone where a test (not its
        file's collection) failed, so a flaky new test cannot pose as a witness."""
        files = sorted({nodeid.split("::", 1)[0] for nodeid in added})
        first = self._run_on_base(files, "witness-new")
        if first is None:
            return []
        broken_files = {case.nodeid for case in first.failing if "::" not in case.nodeid}
        failed = {case.nodeid for case in first.failing}
        witnesses = [n for n in added if n.split("::", 1)[0] in broken_files]
        again = [n for n in added if n in failed and n not in witnesses]
        if again:
            second = self._run_on_base(again, "witness-rerun")
            if second is not None:
                witnesses += [n for n in again if n in {case.nodeid for case in second.failing}]
        return sorted(witnesses)

    def _fails_on_base(self, nodeids: list[str], label: str) -> set[str]:
        """Which of `nodeids` fail on the change's own base (by node id, or with their whole file)."""
        run = self._run_on_base(sorted({n.split("::", 1)[0] for n in nodeids}), label)
        if run is None:
            self.ledger.notes.append("the tests could not be run on the base commit: nothing was called pre-existing")
            return set()
        failed = {case.nodeid for case in run.failing}
        return {n for n in nodeids if n in failed or n.split("::", 1)[0] in failed}

    def _run_on_base(self, selection: list[str], label: str) -> PytestRun | None:
        tree = self._base()
        if tree is None:
            return None
        run = self.pytest(tree, [*self.selection, *selection], label)
        return run if run.cases is not None else None

    def _base(self) -> Path | None:
        """The change's own base with the change's new test files: the witness tree (built once)."""
        if self._base_tree is None:
            if self.judged is not None:
                where = (self.ctx.trees_dir or self.scratch / "trees") / "witness"
                self._base_tree = witness_tree(self.ctx.repo_path, self.ctx.base_sha, self.judged, where)
            else:
                self._base_tree = self.ctx.base_worktree
        return self._base_tree

    def result(self, passed: bool, summary: str, feedback: str = "") -> GateResult:
        notes = self.ledger.result_notes(self.ctx.policy.tests, self._shown)
        if not passed and notes:
            feedback = feedback + "\n\nAlso:\n" + "\n".join(f"- {note}" for note in notes[:8])
        return GateResult(
            gate="tests",
            passed=passed,
            summary=summary,
            feedback=bounded(feedback) if not passed else "",
            details_ref=details_blob(self.ctx, self.outputs),
            notes=notes,
            # The judged tree is the commit's own tree when the change left every existing test and the
            # configuration alone.
            exact_tree=passed and self.full_ran and (self.judged is None or self.judged.sha == self.ctx.sha),
            full_suite=self.full_ran,
        )


def _affected_only(ctx: GateContext) -> bool:
    """Whether a task runs only the tests its change affects (`[merge_queue] full_suite_in_tasks`)."""
    policy = ctx.policy
    baseline = ctx.baseline
    # Under `strict_base` every failing test counts, also those no change affects: only the whole suite says.
    if ctx.purpose != "task" or policy.tests.strict_base:
        return False
    if policy.merge_queue.full_suite_in_tasks is not None:
        return not policy.merge_queue.full_suite_in_tasks
    # Unmeasured, nothing tells which tests a change affects but the import graph: the whole suite runs.
    return baseline is not None and baseline.per_test and baseline.duration_s >= WHOLE_SUITE_IN_TASK_S


def _may_be_inherited(ctx: GateContext, affected: Affected, original: str) -> bool:
    """A merge check's failure of a test that passed on the run's base, that the merged changes do not affect:
    it may fail on the head they land on already (where a person approved a change past a failing gate)."""
    baseline = ctx.baseline
    return (
        ctx.purpose == "regression"
        and baseline is not None
        and baseline.base_sha != ctx.base_sha
        and not affected.covers(original)
    )


def _failing_there_too(
    gate: _PytestGate, cases: list[JUnitCase], check: str, reason: str
) -> tuple[list[Counted], set[str]]:
    """Run `cases` on the commit `check` names: those failing there too are pre-existing, the others count (with
    `reason`); also the original ids that failed there."""
    failing_there = gate._fails_on_base([gate._original(case.nodeid) for case in cases], check)
    counted: list[Counted] = []
    for case in cases:
        if gate._original(case.nodeid) in failing_there:
            gate.ledger.pre_existing[case.nodeid] = case
        else:
            counted.append(Counted(case, False, reason))
    return counted, failing_there


def _inherited(gate: _PytestGate, cases: list[JUnitCase]) -> list[Counted]:
    """Of those, the ones failing on the head too are not the merged changes' doing; the others count."""
    if not cases:
        return []
    reason = "passed on the base and on the head this change lands on"
    counted, failing_there = _failing_there_too(gate, cases, "head-check", reason)
    if failing_there:
        gate.ledger.notes.append(
            f"{len(failing_there)} test(s) fail on the head these changes land on too (a change approved past a "
            "failing gate): not counted against them"
        )
    return counted


def tests_gate(ctx: GateContext) -> GateResult:
    """The repository's test command, in its own environment, sandboxed, judged against the base."""
    with scratch_dir(ctx) as scratch:
        if is_pytest(ctx.test_command):
            return _PytestGate(ctx, scratch).run()
        return _opaque_gate(ctx, scratch)


def _opaque_gate(ctx: GateContext, scratch: Path) -> GateResult:
    """A test command other than pytest: its exit code, in the judged tree, is the verdict."""
    judged = _judged(ctx, scratch)
    result = run_tests(ctx, judged.path if judged else None)
    details = ctx.blobs.put_text(transcript(result))
    notes = _tree_notes(ctx, judged)
    base_exit = ctx.baseline.exit_code if ctx.baseline is not None else None
    if result.timed_out or result.returncode != 0:
        summary = (
            f"tests timed out after {result.duration_s:.0f}s"
            if result.timed_out
            else f"test command exited {result.returncode}"
        )
        if base_exit not in (None, 0):
            notes.append(
                f"the test command fails on the base too (exit {base_exit}); with a command other than pytest the "
                "factory cannot tell which failures were there before, so every failure counts"
            )
        return GateResult(
            gate="tests", passed=False, summary=summary, feedback=bounded(tail(result.output, 40)),
            details_ref=details, notes=notes, full_suite=True,
        )  # fmt: skip
    needs_approval = ""
    if ctx.purpose == "task" and ctx.task_type in WITNESS_TYPES and base_exit in (None, 0):
        needs_approval = (
            "no witness could be checked: the test command is not pytest, so the factory cannot see a test that "
            "fails without the change"
        )
    return GateResult(
        gate="tests", passed=True, summary="tests passed", details_ref=details, notes=notes,
        needs_approval=needs_approval, full_suite=True,
    )  # fmt: skip
