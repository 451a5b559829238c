"""Per-activity context: structlog ids bound from the activity's input, and heartbeats while waiting."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import structlog
from temporalio import activity
from temporalio.worker import ActivityInboundInterceptor, ExecuteActivityInput, Interceptor

_INPUT_IDS = ("run_id", "task_id", "attempt", "turn")


class LogContextInterceptor(Interceptor):
    """Binds run, task, attempt and activity ids to every log line an activity writes."""

    def intercept_activity(self, next: ActivityInboundInterceptor) -> ActivityInboundInterceptor:
        return _BindingInbound(next)


class _BindingInbound(ActivityInboundInterceptor):
    async def execute_activity(self, input: ExecuteActivityInput) -> Any:
        info = activity.info()
        ids: dict[str, Any] = {
            "activity": info.activity_type,
            "activity_id": info.activity_id,
            "activity_attempt": info.attempt,
            "workflow_id": info.workflow_id,
        }
        if input.args:
            ids.update({name: getattr(input.args[0], name) for name in _INPUT_IDS if hasattr(input.args[0], name)})
        # contextvars propagate into the thread that runs a sync activity (the SDK copies the context).
        with structlog.contextvars.bound_contextvars(**ids):
            return await self.next.execute_activity(input)


def heartbeat_ticker() -> Callable[[], None]:
    """A callback for long blocking work: heartbeats (the SDK throttles them) so a dead worker is noticed."""

    def tick() -> None:
        activity.heartbeat()

    return tick


@contextlib.asynccontextmanager
async def heartbeating(interval_s: float) -> AsyncIterator[None]:
    """Heartbeat in the background while an async activity awaits something slow (a model call)."""

    async def beat() -> None:
        while True:
            activity.heartbeat()
            await asyncio.sleep(interval_s)

    task = asyncio.create_task(beat())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
