"""How workflows run activities: retry policies, the task queue of each resource class, and failures.

Model calls and gates run on task queues of their own (DESIGN §6), derived from the workflow's own queue
so tests can use unique ones. A non-retryable activity failure ends a task `failed` with the message the
activity wrote for people (`Ended`), never a traceback.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError, is_cancelled_exception

from darkfactory.workflows.run_book import RunFailed

with workflow.unsafe.imports_passed_through():
    from darkfactory.activities.errors import OVER_BUDGET
    from darkfactory.activities.gates import GateActivities
    from darkfactory.activities.model import ModelActivities
    from darkfactory.constants import queue_name
    from darkfactory.contracts import TaskOutcome

MODEL_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=0.5),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(minutes=2),
    maximum_attempts=10,
)
"""The first retry comes quickly: most are a worker that died mid-call (found by the heartbeat timeout) or a
dropped connection. Ten attempts span about four minutes of backoff, as eight from 2 s did, for an overloaded
API that sends no retry-after (one that does is retried when it says: `next_retry_delay`)."""
STEP_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1), maximum_interval=timedelta(seconds=30), maximum_attempts=5
)
RESOURCE_CLASS = {
    ModelActivities.plan_run: "model",
    ModelActivities.agent_turn: "model",
    ModelActivities.review_change: "model",
    ModelActivities.write_acceptance_tests: "model",
    GateActivities.run_gates: "gates",
    GateActivities.check_acceptance: "gates",
    GateActivities.measure_base: "gates",
}
"""Which task queue an activity runs on; everything else (git, tools) runs with the workflows."""


ActivityRunner = Callable[..., Awaitable[Any]]
"""A workflow's way of running an activity (its timeouts, queues and failure handling)."""


def activity_summary(method: Any, arg: Any) -> str:
    """What the web UI's timeline shows for the activity (Temporal user metadata), e.g.
    `agent turn 3 · add-slugify · attempt 2`: the activity's name, then whichever of turn, task and attempt
    its input carries."""
    name = getattr(method, "__name__", str(method)).replace("_", " ")
    turn = getattr(arg, "turn", None)
    parts = [f"{name} {turn}" if turn is not None else name]
    task = getattr(arg, "task_id", None) or getattr(getattr(arg, "task", None), "id", None)
    if task:
        parts.append(str(task))
    attempt = getattr(arg, "attempt", None)
    if attempt is not None:
        parts.append(f"attempt {attempt}")
    return " · ".join(parts)


def queue_of(resource_class: str) -> str:
    return queue_name(workflow.info().task_queue, resource_class)


def queue_for(method: object) -> str:
    return queue_of(RESOURCE_CLASS.get(method, "workflows"))  # type: ignore[call-overload]


class Ended(Exception):
    """Ends the task with an outcome and a reason."""

    def __init__(self, outcome: TaskOutcome, reason: str) -> None:
        super().__init__(reason)
        self.outcome = outcome
        self.reason = reason


class OverBudget(Exception):
    """A model call was refused before it was made: it could go past the policy's `[budget]`. The message has
    the figures; the task escalates with them (see workflows/budgets.py)."""


def over_budget(exc: ActivityError) -> OverBudget | None:
    cause = exc.cause
    if isinstance(cause, ApplicationError) and cause.type == OVER_BUDGET:
        return OverBudget(cause.message)
    return None


async def step(method: Any, arg: Any, timeout_s: float, heartbeat_s: float, retry: RetryPolicy) -> Any:
    """One activity of a task; a non-retryable failure ends the task `failed` with its message (a refused
    model call raises OverBudget instead)."""
    try:
        return await workflow.execute_activity_method(
            method,
            arg,
            start_to_close_timeout=timedelta(seconds=timeout_s),
            heartbeat_timeout=timedelta(seconds=heartbeat_s),
            retry_policy=retry,
            task_queue=queue_for(method),
            summary=activity_summary(method, arg),
        )
    except ActivityError as exc:
        if is_cancelled_exception(exc):
            raise asyncio.CancelledError from exc  # the workflow was cancelled: not a failure of the step
        refused = over_budget(exc)
        if refused is not None:
            raise refused from exc
        raise Ended("failed", cause_of(exc)) from exc


async def run_step(
    method: Any, arg: Any, timeout_s: float, *, heartbeat_s: float | None = None, retry: RetryPolicy = STEP_RETRY
) -> Any:
    """One activity of a run; a non-retryable failure ends the run with the activity's own message."""
    try:
        return await workflow.execute_activity_method(
            method,
            arg,
            start_to_close_timeout=timedelta(seconds=timeout_s),
            heartbeat_timeout=timedelta(seconds=heartbeat_s) if heartbeat_s else None,
            retry_policy=retry,
            task_queue=queue_for(method),
            summary=activity_summary(method, arg),
        )
    except ActivityError as exc:
        if is_cancelled_exception(exc):
            raise asyncio.CancelledError from exc
        raise RunFailed(cause_of(exc)) from exc


def cause_of(exc: BaseException) -> str:
    """The message of the first ApplicationError under an activity failure: the one written for people."""
    current: BaseException | None = exc
    while current is not None:
        if isinstance(current, ApplicationError) and current.message:
            return current.message
        current = current.__cause__
    return str(exc)
