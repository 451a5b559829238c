"""A task's line to the run that started it: signals up to the run, and the merge handshake.

A task whose gates passed hands its result to the run (`task_ready`) and stays open until the run says how
the merge went (`settled`): the task's `FactoryStatus` then ends with the summary's word (`merged`, not
`passed`). A task started alone (no parent) has no run to tell.
"""

from __future__ import annotations

from temporalio import workflow
from temporalio.exceptions import ApplicationError

with workflow.unsafe.imports_passed_through():
    from darkfactory.constants import TASK_READY_SIGNAL
    from darkfactory.contracts import TaskResult


class RunLink:
    def __init__(self) -> None:
        self.settled: str | None = None
        """The run's word on this round's merge (`merged`, `superseded` by a new round, `failed`, ...)."""

    async def hand_over(self, result: TaskResult) -> str:
        """Give the run the gated change; wait for its word on the merge."""
        await self.signal(TASK_READY_SIGNAL, result)
        await workflow.wait_condition(lambda: self.settled is not None)
        return self.settled or "merged"

    async def signal(self, name: str, arg: object) -> None:
        parent = workflow.info().parent
        if parent is None:
            return
        handle = workflow.get_external_workflow_handle(parent.workflow_id, run_id=parent.run_id)
        try:
            await handle.signal(name, arg)
        except ApplicationError as exc:  # the run is gone: the task's own state still says it all
            workflow.logger.warning("could not signal the run (%s): %s", name, exc)
