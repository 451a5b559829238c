"""The acceptance gate: held-out tests, kept outside the worktree, run against the change.

Feedback names each failing test and its failure message, never the tests' source: the generator must
meet the criteria, not copy the tests.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path

from darkfactory.contracts import GateResult
from darkfactory.gates.common import bounded, is_regular, scratch_dir, transcript
from darkfactory.gates.context import GateContext
from darkfactory.gates.junit import PYTEST_NO_TESTS, JUnitCase, PytestRun, nodeid_resolver, run_pytest
from darkfactory.gates.selection import is_test_file

ACCEPTANCE_LABEL = "acceptance"
"""How held-out tests are named in feedback, instead of the directory they live in."""


def _has_test_files(directory: Path) -> bool:
    return directory.is_dir() and any(is_test_file(path.name) for path in directory.rglob("*.py"))


def held_out_run(
    ctx: GateContext, directory: Path, scratch: Path, selection: Sequence[str] | None, label: str
) -> PytestRun:
    """The held-out tests in `directory` (or only `selection`: file names and node ids in it) against the code
    in `ctx.worktree`."""
    # Our own empty configuration: the worktree's (which the generator writes) must not be able to
    # deselect, skip or reconfigure the held-out tests.
    config = scratch / f"acceptance-{uuid.uuid4().hex[:12]}.ini"
    config.write_text("[pytest]\n")
    targets = [str(directory)] if selection is None else [str(directory / entry) for entry in selection]
    argv = ["python", "-m", "pytest", "-q", "--tb=no", "-p", "no:cacheprovider", "-c", str(config),
            "--rootdir", str(ctx.worktree), *targets]  # fmt: skip
    return run_pytest(
        ctx, ctx.worktree, argv, scratch, label, resolve=_acceptance_resolver(directory), readonly=[directory]
    )


def bite_on_base(ctx: GateContext) -> tuple[list[str], list[str], str]:
    """Run the held-out tests against the base (checked out in `ctx.worktree`): (those that fail there, those
    that pass or skip there, a problem when they could not run). Entries are file names or node ids in the
    held-out directory; a file that does not even import on the base bites as a whole."""
    directory = ctx.acceptance_dir
    if directory is None or not _has_test_files(directory):
        return [], [], ""
    with scratch_dir(ctx) as scratch:
        run = held_out_run(ctx, directory, scratch, None, "acceptance-base")
    if run.cases is None or not run.cases:
        return [], [], f"the held-out tests did not run on the base (exit {run.result.returncode})"
    prefix = f"{ACCEPTANCE_LABEL}/"
    biting = sorted(case.nodeid.removeprefix(prefix) for case in run.cases if case.failed)
    toothless = sorted(case.nodeid.removeprefix(prefix) for case in run.cases if not case.failed)
    return biting, toothless, ""


def acceptance_gate(ctx: GateContext) -> GateResult:
    """The held-out acceptance tests against the change. Feedback names each failing test and its failure
    message, never the tests' source: the generator must meet the criteria, not copy the tests."""
    directory = ctx.acceptance_dir
    if directory is None or not _has_test_files(directory):
        return GateResult(gate="acceptance", passed=True, summary="no held-out acceptance tests")
    if ctx.acceptance_selection is not None and not ctx.acceptance_selection:
        summary = "no held-out acceptance tests gate this task (every one passed on the base already)"
        return GateResult(gate="acceptance", passed=True, summary=summary)
    with scratch_dir(ctx) as scratch:
        run = held_out_run(ctx, directory, scratch, ctx.acceptance_selection, "acceptance")
    hide = _hider(directory)
    details = ctx.blobs.put_text(hide(transcript(run.result)))
    result = run.result
    if result.timed_out:
        return GateResult(
            gate="acceptance",
            passed=False,
            summary=f"acceptance tests timed out after {result.duration_s:.0f}s",
            details_ref=details,
        )
    if result.returncode == PYTEST_NO_TESTS or run.cases == []:
        return GateResult(
            gate="acceptance", passed=False, summary="no acceptance test was collected", details_ref=details
        )
    if run.cases is None or (result.returncode != 0 and not run.failing):
        # Only pytest's own status lines: anything more could quote the tests.
        status = [hide(line) for line in result.output.splitlines() if line.startswith(("ERROR", "FAILED"))]
        return GateResult(
            gate="acceptance",
            passed=False,
            summary=f"acceptance tests did not run (exit {result.returncode})",
            feedback=bounded("\n".join(status[:20])),
            details_ref=details,
        )
    # A held-out test that skips shows nothing about the change: it must run and pass.
    failing = [case for case in run.cases if case.failed or case.outcome == "skipped"]
    if not failing:
        return GateResult(
            gate="acceptance", passed=True, summary=f"acceptance: {len(run.cases)} passed", details_ref=details
        )
    items = [f"- {case.nodeid}: {hide(_acceptance_message(case))}" for case in failing[:20]]
    if len(failing) > 20:
        items.append(f"- ... and {len(failing) - 20} more")
    return GateResult(
        gate="acceptance",
        passed=False,
        summary=f"acceptance: {len(failing)} of {len(run.cases)} held-out test(s) failed",
        feedback=bounded(
            "Held-out acceptance tests failed (their code is not shown; meet the task's acceptance criteria):\n"
            + "\n".join(items)
        ),
        details_ref=details,
    )


def _acceptance_resolver(directory: Path) -> Callable[[str, str], str]:
    resolve = nodeid_resolver(directory, drop_prefix=True)

    def shown(classname: str, name: str) -> str:
        nodeid = resolve(classname, name)
        if is_regular(directory, nodeid.split("::", 1)[0]):
            return f"{ACCEPTANCE_LABEL}/{nodeid}"
        return f"{ACCEPTANCE_LABEL}::{name.rsplit('.', 1)[-1]}"

    return shown


def _acceptance_message(case: JUnitCase) -> str:
    """The failure message; for a collection error (whose message is only "collection failure") the
    exception line, never the traceback's source lines."""
    message = case.message.strip()
    if case.outcome == "skipped":
        return f"skipped ({message})" if message else "skipped"
    if case.outcome == "error" or not message:
        raised = [line[1:].strip() for line in case.text.splitlines() if line.startswith("E ")]
        if raised:
            message = f"{message}: {raised[-1]}" if message else raised[-1]
    lines = message.splitlines()
    shown = "\n  ".join(line[:300] for line in lines[:10])
    return shown + ("\n  ..." if len(lines) > 10 else "")


def _hider(directory: Path) -> Callable[[str], str]:
    paths = sorted({str(directory), os.path.realpath(directory)}, key=len, reverse=True)

    def hide(text: str) -> str:
        for path in paths:
            text = text.replace(path, ACCEPTANCE_LABEL)
        return text

    return hide
