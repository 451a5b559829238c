"""The deterministic gates: scope, secrets, syntax, lint, types, tests, acceptance. Cheapest first; the first
failure stops the run.

Each gate returns a binary verdict, a one-line summary, compact feedback for the next attempt (the failing
items with a little context, bounded in size — aider's linter does the same) and the full output as a blob.
Nothing here calls a model: code that does not compile never reaches a reviewer.

A gate judges the change, not the repository: lint findings and type errors already present on the base
commit are notes. A failing test is different: it counts unless it is quarantined, flaky (passes re-run
alone), or failed on the base too *and* the change does not affect it (see `repo_tests.py`). A test that
was red before and that the change touches is exactly what must not be merged red.

The code under test writes the worktree and the scratch directory, so the host reads anything there without
following symlinks and only from regular files: a planted link must not pull, say, the worker's ssh key
into feedback that goes to a model.
"""

from __future__ import annotations

import contextlib
import dataclasses
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from darkfactory.contracts import GateReport, GateResult
from darkfactory.gates.acceptance import acceptance_gate
from darkfactory.gates.common import read_regular_file
from darkfactory.gates.context import DEFAULT_TEST_COMMAND, GateContext
from darkfactory.gates.lint import lint_gate
from darkfactory.gates.repo_tests import tests_gate
from darkfactory.gates.scope import scope_gate
from darkfactory.gates.secrets import secrets_gate
from darkfactory.gates.syntax import syntax_gate
from darkfactory.gates.typecheck import types_gate
from darkfactory.policy import GateName

__all__ = [
    "DEFAULT_TEST_COMMAND",
    "GATES",
    "GateContext",
    "acceptance_gate",
    "lint_gate",
    "read_regular_file",
    "run_gates",
    "scope_gate",
    "secrets_gate",
    "syntax_gate",
    "tests_gate",
    "types_gate",
]


def run_gates(ctx: GateContext) -> GateReport:
    """Run the configured gates in order, stopping at the first failure.

    Names without a gate here are skipped: "review" calls a model, so the workflow runs it after these.
    """
    results: list[GateResult] = []
    with contextlib.ExitStack() as stack:
        if ctx.scratch is None:
            scratch = stack.enter_context(tempfile.TemporaryDirectory(prefix="darkfactory-gates-"))
            ctx = dataclasses.replace(ctx, scratch=Path(scratch))
        if ctx.deadline is None:
            ctx = dataclasses.replace(ctx, deadline=time.monotonic() + ctx.timeout_s)
        for name in ctx.gates:
            gate = GATES.get(name)
            if gate is None:
                continue
            started = time.monotonic()
            result = gate(ctx)
            results.append(result.model_copy(update={"duration_s": round(time.monotonic() - started, 3)}))
            if not result.passed:
                break
    return GateReport(sha=ctx.sha, results=results)


GATES: dict[GateName, Callable[[GateContext], GateResult]] = {
    "scope": scope_gate,
    "secrets": secrets_gate,
    "syntax": syntax_gate,
    "lint": lint_gate,
    "types": types_gate,
    "tests": tests_gate,
    "acceptance": acceptance_gate,
}
"""The deterministic gates by name. "review" is not here: it calls a model, so the workflow runs it."""
