"""Each task of a run to its end: a child workflow per merge round, until its change merges cleanly.

Each round branches from the integration head as it stands. A round whose gates pass signals its result
(`task_ready`) and stays open while the merge queue merges it; it is then told how the merge went (`settled`),
so its search attributes end with the summary's word. A merge conflict, or a merge that breaks the integration
suite in combination with work merged meanwhile, sends the task to a new round on the new head with that
problem as feedback; after MERGE_ROUNDS the task fails with it.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from temporalio import workflow
from temporalio.common import SearchAttributePair, TypedSearchAttributes
from temporalio.exceptions import ChildWorkflowError, FailureError, is_cancelled_exception
from temporalio.workflow import ChildWorkflowHandle

from darkfactory.workflows.merge_queue import MergeQueue
from darkfactory.workflows.run_book import RunBook, RunFailed
from darkfactory.workflows.search_attributes import REPO, STATUS

with workflow.unsafe.imports_passed_through():
    from darkfactory.constants import task_workflow_id
    from darkfactory.contracts import PlannedTask, PreparedRun, RunRequest, TaskInput, TaskResult, TaskState
    from darkfactory.workflows.steps import cause_of
    from darkfactory.workflows.task import TaskWorkflow

MERGE_ROUNDS = 3
"""Rounds a task gets to merge cleanly (conflicts, regressions) before it fails."""


class TaskRounds:
    """The run's tasks, round by round, against its book and its merge queue."""

    def __init__(self, book: RunBook, queue: MergeQueue) -> None:
        self._book = book
        self._queue = queue
        self.ready: dict[str, TaskResult] = {}
        """Task id -> the result its round signalled when its gates passed (it waits to hear how the merge went)."""
        self.working: set[str] = set()
        """Tasks whose round is running its attempts: the merge queue's batch waits a little for them."""
        queue.working = lambda: len(self.working)
        self.stopping = False
        """Set when the run stops its tasks: a cancellation swallowed while waiting on a child (the SDK turns it
        into a cancel request) must not let a task start another round."""

    async def run(self, request: RunRequest, task: PlannedTask, prepared: PreparedRun, sink: bool) -> None:
        """One task to its end: a child workflow per merge round, until its change merges cleanly.

        Each round branches from the integration head as it stands. A merge conflict, or a merge that breaks
        the integration suite in combination with work merged meanwhile, sends the task to a new round on
        the new head with that problem as feedback; after MERGE_ROUNDS the task fails with it.
        """
        config = request.config
        feedback = ""
        first_attempt = 1
        summary: dict[str, object] = {}
        for merge_round in range(1, MERGE_ROUNDS + 1):
            if self.stopping:
                self._book.set_task(task.id, state="cancelled", reason="the run was cancelled")
                return
            base = self._queue.head
            policy = prepared.policy
            if not workflow.patched("merge-batches"):
                # A run begun before batches merges without the queue's whole suite: its tasks run all of it.
                queue_rules = policy.merge_queue.model_copy(update={"full_suite_in_tasks": True})
                policy = policy.model_copy(update={"merge_queue": queue_rules})
            self._book.set_task(task.id, state="running")
            self._book.begin_round(task.id)
            handle = await workflow.start_child_workflow(
                TaskWorkflow.run,
                TaskInput(
                    run_id=request.run_id,
                    repo_path=request.repo_path,
                    spec=request.spec,
                    task=task,
                    base_sha=base,
                    config=config,
                    policy=policy,
                    acceptance=prepared.acceptance if sink else None,
                    first_attempt=first_attempt,
                    feedback=feedback,
                    reset_branch=merge_round > 1,
                    baseline=prepared.baseline,
                    run_spent=self._book.spent_besides(task.id),
                ),
                id=task_workflow_id(request.run_id, task.id),
                static_summary=f"task {task.id}: {task.title}",
                search_attributes=TypedSearchAttributes(
                    [SearchAttributePair(REPO, request.repo_path), SearchAttributePair(STATUS, "running")]
                ),
            )
            self.working.add(task.id)
            try:
                result = await self._round_result(handle, task.id)
            except ChildWorkflowError as exc:
                # Cancelled on its own (the run goes on without it), or a bug: either way it keeps its figures.
                cancelled = is_cancelled_exception(exc)
                self._book.set_task(
                    task.id,
                    state="cancelled" if cancelled else "failed",
                    reason="the task was cancelled" if cancelled else f"task workflow failed: {cause_of(exc)}",
                )
                return
            finally:
                self.working.discard(task.id)
            first_attempt += len(result.attempts)
            previous = self._book.task(task.id)
            base_summary = self._book.round_base(task.id)
            summary = {
                "attempts": base_summary.attempts + len(result.attempts),
                "usage": base_summary.usage + result.usage,
                "decisions": [*previous.decisions, *result.decisions],
                "gates": result.attempts[-1].gates if result.attempts else [],
                "notes": result.notes,
                "escalation": None,
            }
            if result.outcome != "passed" or result.final_sha is None:
                ended_as: TaskState = "failed" if result.outcome == "passed" else result.outcome
                self._book.set_task(task.id, state=ended_as, reason=result.reason, **summary)
                await _settle(handle, ended_as)
                return
            self._book.set_task(task.id, state="running", **summary)
            try:
                problem = await self._queue.merge(
                    request,
                    task,
                    prepared,
                    base,
                    result.final_sha,
                    lambda: self._set_merged(task.id),
                    result.attempts[-1].gates if result.attempts else [],
                )
            except asyncio.CancelledError:
                await _settle(handle, "merged" if self._book.task(task.id).state == "merged" else "cancelled")
                raise
            except RunFailed:  # the merge itself could not be done: the run fails, the task is told so
                await _settle(handle, "failed")
                raise
            if not problem:
                head = self._queue.merged_as.get(task.id, self._queue.head)
                reason = f"merged as {head[:12]}" + (f" ({result.reason})" if result.decisions else "")
                self._book.set_task(task.id, state="merged", merged_sha=head, reason=reason, **summary)
                await _settle(handle, "merged")
                return
            feedback = problem
            await _settle(handle, "superseded" if merge_round < MERGE_ROUNDS else "failed")
        self._book.set_task(
            task.id, state="failed", reason=f"not merged after {MERGE_ROUNDS} round(s): {feedback[:300]}", **summary
        )

    async def _round_result(self, handle: ChildWorkflowHandle[Any, TaskResult], task_id: str) -> TaskResult:
        """The round's result: signalled when its gates passed (the task then waits for `_settle`), or the
        task's own once it ended otherwise (or was recorded before tasks signalled). A cancelled run cancels the
        task and waits for it to close, so what it spent is known (it tells the run before it closes)."""
        try:
            await workflow.wait_condition(lambda: task_id in self.ready or handle.done())
        except asyncio.CancelledError:
            handle.cancel()
            with contextlib.suppress(ChildWorkflowError):
                await handle
            raise
        if task_id in self.ready:
            return self.ready.pop(task_id)
        return await handle

    def _set_merged(self, task_id: str) -> None:
        head = self._queue.merged_as.get(task_id, self._queue.head)
        self._book.set_task(task_id, state="merged", merged_sha=head, reason=f"merged as {head[:12]}")


async def _settle(handle: ChildWorkflowHandle[Any, TaskResult], word: TaskState | str) -> None:
    """Tell a task waiting on its merge how it went (its search attributes end with the summary's word) and let
    it close; nothing to do for a task that already closed."""
    if handle.done():
        return
    try:
        await handle.signal(TaskWorkflow.settled, word)
        await handle
    except FailureError as exc:  # closed meanwhile (a person cancelled or terminated it): the summary has its end
        workflow.logger.warning("a task closed before it heard how its merge went: %s", exc)


async def cancel_all(rounds: TaskRounds, running: dict[str, asyncio.Task[None]]) -> None:
    """Cancel the running tasks and wait for each to record its end (`TaskRounds._round_result`)."""
    rounds.stopping = True
    for job in running.values():
        job.cancel()
    await workflow.wait(list(running.values()))
    for job in running.values():
        if not job.cancelled() and job.exception() is not None:
            workflow.logger.warning("a task did not stop cleanly: %s", job.exception())
