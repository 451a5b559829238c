"""A run's state as any client can read it, with or without a worker running.

A run that completed returns its summary. A run still going (or one that ended without a summary: failed,
terminated) keeps its live state in its memo (`SUMMARY_MEMO`, written by the workflow as the state changes),
which the server answers alone; runs started before the memo existed are asked by query, which needs a worker.
"""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING, Any

from darkfactory.constants import SUMMARY_MEMO

if TYPE_CHECKING:
    from temporalio.client import WorkflowExecutionDescription, WorkflowHandle

    from darkfactory.contracts import RunState


async def read_run_state(handle: WorkflowHandle[Any, RunState]) -> RunState | None:
    """The run's summary once it completed, else its live state; None when neither is there yet."""
    from temporalio.client import WorkflowExecutionStatus
    from temporalio.service import RPCError

    from darkfactory.contracts import RunState

    description = await handle.describe()
    if description.status == WorkflowExecutionStatus.COMPLETED:
        return await handle.result()
    kept = await _from_memo(description)
    if kept is not None:
        return kept
    try:
        state: RunState | None = await handle.query("status", result_type=RunState, rpc_timeout=timedelta(seconds=5))
    except RPCError:
        return None
    return state


async def memo_state(handle: WorkflowHandle[Any, RunState]) -> RunState | None:
    """The live state the run keeps in its memo; None for a run that keeps none (or a server that is gone)."""
    from temporalio.service import RPCError

    try:
        return await _from_memo(await handle.describe())
    except RPCError:
        return None


async def _from_memo(description: WorkflowExecutionDescription) -> RunState | None:
    from darkfactory.contracts import RunState

    try:
        kept = await description.memo_value(SUMMARY_MEMO, None, type_hint=RunState)
    except ValueError:  # a memo of another shape (a newer or older factory)
        return None
    return kept if isinstance(kept, RunState) else None
