"""A run's state as any client can read it, with or without a worker running.

A run that completed returns its summary. A run still going (or one that ended without a summary: failed,
terminated) keeps its live state in its memo (`SUMMARY_MEMO`, written by the workflow as the state changes),
which the server answers alone; runs started before the memo existed are asked by query, which needs a worker.
"""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING, Any

from darkfactory.constants import SUMMARY_MEMO
from darkfactory.contracts import RunState

if TYPE_CHECKING:
    from temporalio.client import WorkflowHandle


async def read_run_state(handle: WorkflowHandle[Any, RunState]) -> RunState | None:
    """The run's summary once it completed, else its live state; None when neither is there yet."""
    from temporalio.client import WorkflowExecutionStatus
    from temporalio.service import RPCError

    description = await handle.describe()
    if description.status == WorkflowExecutionStatus.COMPLETED:
        return await handle.result()
    memo = await description.memo_value(SUMMARY_MEMO, None)
    if memo is not None:
        return RunState.model_validate(memo)
    try:
        state: RunState | None = await handle.query("status", result_type=RunState, rpc_timeout=timedelta(seconds=5))
    except RPCError:
        return None
    return state
