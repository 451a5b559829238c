"""A task's held-out acceptance tests, made to bite before they gate anything.

The spec's own tests, or tests a separate model call writes from the task's acceptance criteria, run on
the task's base first: one that already passes there proves nothing. A written one goes back to its writer
with that problem (up to the policy's `acceptance_rewrites`), then is dropped with a note; a spec-given one
is dropped with a note. Only the tests that fail on the base gate the task.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import timedelta
from functools import partial

from temporalio import workflow
from temporalio.exceptions import ActivityError, is_cancelled_exception

from darkfactory.workflows.budgets import BudgetGuard
from darkfactory.workflows.steps import MODEL_RETRY, STEP_RETRY, Ended, cause_of, over_budget, queue_of, step

with workflow.unsafe.imports_passed_through():
    from darkfactory.activities.gates import GateActivities
    from darkfactory.activities.model import ModelActivities
    from darkfactory.contracts import (
        AcceptanceCheck,
        AcceptanceInput,
        AcceptanceSuite,
        BudgetCheck,
        CheckAcceptanceInput,
        TaskInput,
    )


async def held_out_suite(
    input: TaskInput, set_phase: Callable[[str], None], guard: BudgetGuard
) -> AcceptanceSuite | None:
    """The task's held-out tests: the spec's, or written now from its acceptance criteria; then run on the
    task's base, where only those that fail can gate the task. A written test that passes there already
    goes back to the writer (up to the policy's `acceptance_rewrites`), then is dropped with a note."""
    if "acceptance" not in input.policy.gates:
        return None
    given = input.acceptance is not None
    if input.acceptance is not None:
        suite = input.acceptance
    elif not input.task.acceptance:
        return None
    else:
        set_phase("writing acceptance tests")
        suite = await guard.call(partial(_write, input, 1, ""))
    if suite.files_ref is None:
        return suite
    rewrites = 0 if given else input.policy.limits.acceptance_rewrites
    usage = suite.usage
    notes: list[str] = []
    for rewrite in range(rewrites + 1):
        check: AcceptanceCheck = await step(
            GateActivities.check_acceptance,
            CheckAcceptanceInput(
                run_id=input.run_id,
                task_id=input.task.id,
                repo_path=input.repo_path,
                base_sha=input.base_sha,
                files_ref=suite.files_ref,
                config=input.config,
                policy=input.policy,
            ),
            input.config.timeouts.gates_s,
            max(input.config.timeouts.heartbeat_s, 30.0),
            STEP_RETRY,
        )
        if check.problem or not check.toothless or rewrite == rewrites:
            break
        notes.append(f"held-out tests written again: {', '.join(check.toothless[:10])} passed on the base already")
        problem = "these tests pass on the code as it is now, so they show nothing about the task: " + ", ".join(
            check.toothless[:10]
        )
        set_phase("writing acceptance tests")
        suite = await guard.call(partial(_write, input, rewrite + 2, problem))
        usage = usage + suite.usage
    if check.problem:
        notes.append(f"held-out tests not checked on the base ({check.problem}): all of them gate the task")
        return suite.model_copy(update={"usage": usage, "notes": notes})
    if check.toothless:
        notes.append(f"held-out tests dropped, they pass on the base already: {', '.join(check.toothless[:10])}")
    biting = set(check.biting)
    names = [name for name in suite.names if name in biting or name.split("::", 1)[0] in biting]
    return suite.model_copy(update={"usage": usage, "notes": notes, "selection": check.biting, "names": names})


async def _write(input: TaskInput, attempt: int, problem: str, budget: BudgetCheck | None) -> AcceptanceSuite:
    try:
        suite: AcceptanceSuite = await workflow.execute_activity_method(
            ModelActivities.write_acceptance_tests,
            AcceptanceInput(
                run_id=input.run_id,
                task=input.task,
                spec=input.spec,
                repo_path=input.repo_path,
                base_sha=input.base_sha,
                config=input.config,
                attempt=attempt,
                max_attempts=input.policy.limits.acceptance_rewrites + 1,
                problem=problem,
                budget=budget,
            ),
            start_to_close_timeout=timedelta(seconds=input.config.timeouts.model_call_s),
            summary=f"write acceptance tests · {input.task.id} · attempt {attempt}",
            heartbeat_timeout=timedelta(seconds=input.config.timeouts.heartbeat_s),
            retry_policy=MODEL_RETRY,
            task_queue=queue_of("model"),
        )
    except ActivityError as exc:
        if is_cancelled_exception(exc):
            raise asyncio.CancelledError from exc
        refused = over_budget(exc)
        if refused is not None:
            raise refused from exc
        raise Ended("failed", f"could not write held-out acceptance tests: {cause_of(exc)}") from exc
    return suite
