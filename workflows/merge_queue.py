"""The merge queue: tasks whose gates passed reach the integration branch in batches, in order.

A ready task joins the queue as a ticket. When a batch may start, the first ticket's task leads the next one:
it waits a little for more (`[merge_queue] wait_s`, only while other tasks are still working), takes up to
`batch` tickets and runs them as a `MergeBatch` (merge in order, the integration gates once, bisection when
red). Each task then hears its own outcome: merged, or the problem for its next round (a conflict, a change
that broke the integration gates in combination with work merged before it).

A batch may start while the one before it is still being checked (`patched("speculative-batches")`): it is
stacked on that batch's commits and checked at the same time, and it counts only if the batch below keeps
every merge (see `MergeBatch.stackable`). Two checks run at once at most, and batches end in order.

Nothing becomes the queue's head without the integration gates, the whole suite among them, passing on that
very tree, judged against the head before it; so the queue's head is `verified` (see `Verified.whole_run` for
what that implies for the run as a whole), and the run's final verification would mostly repeat it.

Runs recorded before batches (`patched("merge-batches")`) replay the old path: one merge at a time, the
regression suite only when other work was merged meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

from temporalio import workflow

from darkfactory.workflows.merge_batch import Checked, MergeBatch, Ticket, integration_gates
from darkfactory.workflows.run_book import RunFailed
from darkfactory.workflows.steps import ActivityRunner

with workflow.unsafe.imports_passed_through():
    from darkfactory.activities import metrics
    from darkfactory.activities.gates import GateActivities
    from darkfactory.activities.workspace import WorkspaceActivities
    from darkfactory.contracts import (
        GateReport,
        GateResult,
        MergeResult,
        MergeTaskInput,
        PlannedTask,
        PreparedRun,
        RestoreBranchInput,
        RunGatesInput,
        RunRequest,
    )
    from darkfactory.policy import Policy

__all__ = ["MergeQueue", "Verified", "integration_gates"]


@dataclass(frozen=True)
class Verified:
    """The head is a tree on which every integration gate passed, the suite run in that very tree."""

    head: str
    where: str
    """Where they passed, for the summary: a task's gates, or one of the merge queue's checks."""
    gates: list[GateResult]
    whole_run: bool = True
    """Judged against the run's base, or the types gate was (`MergeBatch._types_from_run_base`). Otherwise against
    the head before the last batch, with every earlier batch checked the same way back to the base: that implies
    the verdict on the whole run for the gates that look at each file or line on its own (secrets, syntax, lint)
    and for the suite, not for mypy, which follows imports across files (a later change can break a file an
    earlier one changed)."""


def passed_everything_there(policy: Policy, gates: list[GateResult]) -> list[GateResult] | None:
    """The integration gates' results among a task's last gates when every one passed and the tests ran in the
    commit's own tree; None otherwise (a gate missing or failed, a person's approval, a judged tree)."""
    found = {result.gate: result for result in gates}
    needed = integration_gates(policy)
    if not all(gate in found and found[gate].passed for gate in needed):
        return None
    if "tests" in needed and not found["tests"].exact_tree:
        return None
    return [found[gate] for gate in needed]


class MergeQueue:
    """Batches merges into the run's integration branch and knows where its head stands."""

    def __init__(self, run_activity: ActivityRunner) -> None:
        self._run_activity = run_activity
        self._lock = asyncio.Lock()
        self._depth = 0
        self.head = ""
        self.verified: Verified | None = None
        self.working: Callable[[], int] = lambda: 0
        """How many tasks are still working towards the queue: a batch waits for them only while there are."""
        self._waiting: list[Ticket] = []
        self._leading = False
        self._flights: list[MergeBatch] = []
        """Batches started and not yet ended, oldest first; a second one is stacked on the first."""
        self._batches = 0
        self._broken: BaseException | None = None
        self._chain_intact = True
        """Every merge so far passed the queue's check: False once a change a person approved past a failing gate
        is merged (the head is then never verified, and the final verification runs)."""
        self.merged_as: dict[str, str] = {}
        """Task id -> the integration commit that carries it (a batch's head may carry later tasks too)."""

    async def merge(
        self,
        request: RunRequest,
        task: PlannedTask,
        prepared: PreparedRun,
        base: str,
        sha: str,
        on_merged_while_cancelled: Callable[[], None],
        gates: list[GateResult] | None = None,
    ) -> str:
        """Merge one task; '' on success, else the problem for the task's next round.

        Started merges always finish: cancelling the run waits for the batch in flight, and a merge that
        landed is reported through `on_merged_while_cancelled` before the cancellation goes on.
        """
        self._set_depth(request.run_id, +1)
        try:
            if workflow.patched("merge-batches"):
                ticket = Ticket(task, base, sha, gates or [])
                return await self._merge_batched(request, prepared, ticket, on_merged_while_cancelled)
            async with self._lock:
                job = asyncio.ensure_future(self._merge_locked(request, task, prepared, base, sha, gates or []))
                try:
                    return await asyncio.shield(job)
                except asyncio.CancelledError:
                    problem = await job
                    if not problem:
                        on_merged_while_cancelled()
                    raise
        finally:
            self._set_depth(request.run_id, -1)

    async def _merge_batched(
        self, request: RunRequest, prepared: PreparedRun, ticket: Ticket, on_merged_while_cancelled: Callable[[], None]
    ) -> str:
        self._waiting.append(ticket)
        try:
            while ticket.problem is None:
                await workflow.wait_condition(
                    lambda: ticket.problem is not None or self._broken is not None or self._leads(ticket)
                )
                if ticket.problem is None and self._broken is not None:
                    raise RunFailed(str(self._broken))
                if ticket.problem is None:
                    await self._lead(request, prepared)
        except asyncio.CancelledError:
            if ticket.started:  # in the batch in flight: it finishes, and this task hears how it went
                await workflow.wait_condition(
                    lambda: ticket.problem is not None or self._broken is not None or not ticket.started
                )
                if ticket.problem is None and ticket in self._waiting:  # put back for a later batch: not merged
                    self._waiting.remove(ticket)
                if ticket.problem == "":
                    self.merged_as[ticket.task.id] = ticket.merged_sha
                    on_merged_while_cancelled()
            elif ticket in self._waiting:
                self._waiting.remove(ticket)
            raise
        if ticket.problem == "":
            self.merged_as[ticket.task.id] = ticket.merged_sha
        return ticket.problem

    def _leads(self, ticket: Ticket) -> bool:
        return not self._leading and bool(self._waiting) and self._waiting[0] is ticket and self._may_start()

    def _may_start(self) -> bool:
        """No batch in flight, or one whose check is out and that a next batch may be stacked on (not one holding
        a change approved past a failure, nor for one: those go alone)."""
        if not self._flights:
            return True
        return (
            len(self._flights) == 1
            and self._flights[0].stackable
            and bool(self._waiting)
            and not self._waiting[0].approved_past_a_failure
        )

    async def _lead(self, request: RunRequest, prepared: PreparedRun) -> None:
        """Take the next batch from the front of the queue and start it; stay with it to its end unless a next
        batch may be stacked on it (then only until its merges are done)."""
        self._leading = True
        try:
            rules = prepared.policy.merge_queue
            if len(self._waiting) < rules.batch and self.working() > 0 and rules.wait_s > 0:
                # A durable timer: the batch fills while the other tasks finish their gates, or goes as it is.
                with contextlib.suppress(asyncio.TimeoutError):
                    await workflow.wait_condition(
                        lambda: len(self._waiting) >= rules.batch or self.working() == 0,
                        timeout=timedelta(seconds=rules.wait_s),
                    )
            while not self._may_start():  # the batch below went red meanwhile: wait for it to end
                await workflow.wait_condition(self._may_start)
            if self._broken is not None:  # a batch could not be merged meanwhile: the run fails, nothing starts
                return
            if self._waiting[0].approved_past_a_failure:
                tickets = self._waiting[:1]  # alone: the queue's check would only repeat the failure approved
            else:
                tickets = [t for t in self._waiting if not t.approved_past_a_failure][: rules.batch]
            self._waiting = [t for t in self._waiting if t not in tickets]
            for ticket in tickets:
                ticket.started = True
            self._batches += 1
            below = self._flights[-1] if self._flights else None
            batch = MergeBatch(self._run_activity, request, prepared, self._batches, below, self._chain_intact)
            if below is not None:
                below.above = batch
            self._flights.append(batch)
            job = asyncio.ensure_future(self._fly(batch, tickets, prepared.base_sha))
            try:
                await workflow.wait_condition(lambda: batch.merged or job.done())
                if not job.done() and workflow.patched("speculative-batches"):
                    return  # the batch goes on by itself; the next one may be stacked on it
                error = await asyncio.shield(job)
            except asyncio.CancelledError:
                await job  # a started batch always finishes
                raise
            if error is not None:
                raise error
        finally:
            self._leading = False

    async def _fly(self, batch: MergeBatch, tickets: list[Ticket], base_sha: str) -> BaseException | None:
        """Run a batch to its end and move the head; when the merge itself could not be done, every task of the
        queue hears it (returned too, for the leader that waits for it)."""
        try:
            checked = await batch.run(batch.below.tip if batch.below is not None else self.head, tickets)
        except Exception as exc:
            batch.failed = True
            self._broken = exc
            return exc
        finally:
            self._flights.remove(batch)
        if checked.discarded:
            # After the tasks the batch below put back: they were ahead of these in the queue.
            earlier = batch.below.outcome.requeue if batch.below is not None and batch.below.outcome else []
            at = max((self._waiting.index(t) + 1 for t in earlier if t in self._waiting), default=0)
            self._waiting[at:at] = checked.requeue
        else:
            self._moved(checked, base_sha)
        return None

    def _moved(self, checked: Checked, base_sha: str) -> None:
        if checked.approved:
            self._chain_intact = False
            self.verified = None
        elif checked.gates is not None and self._chain_intact:
            # Each check judged what its batch added to the head before it, back to the run's base.
            whole_run = self.head == base_sha or checked.types_whole_run
            self.verified = Verified(checked.head, checked.where, checked.gates, whole_run=whole_run)
        self.head = checked.head
        # Tasks after a culprit go first in the next batch: they waited longest.
        self._waiting[:0] = checked.requeue

    def _set_depth(self, run_id: str, change: int) -> None:
        self._depth += change
        metrics.set_merge_queue_depth(workflow.metric_meter(), run_id, self._depth)

    async def _merge_locked(
        self,
        request: RunRequest,
        task: PlannedTask,
        prepared: PreparedRun,
        base: str,
        sha: str,
        gates: list[GateResult],
    ) -> str:
        timeouts = request.config.timeouts
        previous = self.head
        merged: MergeResult = await self._run_activity(
            WorkspaceActivities.merge_task,
            MergeTaskInput(
                run_id=request.run_id,
                task_id=task.id,
                title=task.title,
                repo_path=request.repo_path,
                integration_branch=prepared.integration_branch,
                task_sha=sha,
                commit_time=int(workflow.now().timestamp()),
            ),
            timeouts.git_s,
        )
        if not merged.merged:
            return (
                f"## Merge conflict\nWhile you worked, other tasks were merged into the integration branch, and "
                f"your change conflicts with them in: {merged.conflict}. Make the change again on top of the "
                f"current code (your workspace now holds it)."
            )
        if merged.integration_sha == previous or previous == base:
            # Nothing else was merged since the task branched: its own gates already ran on this very tree.
            self.head = merged.integration_sha
            # Verified only when this was the run's one merge onto its base: the task's gates then looked at every
            # file the run changed (lint, types and secrets check the files changed since their base).
            passed = passed_everything_there(prepared.policy, gates) if base == previous == prepared.base_sha else None
            self.verified = Verified(self.head, f"task {task.id}'s gates", passed) if passed is not None else None
            return ""
        # Other work was merged meanwhile: the combination has never been tested. Run the regression gate.
        report: GateReport = await self._run_activity(
            GateActivities.run_gates,
            RunGatesInput(
                run_id=request.run_id,
                task_id=f"{task.id}.regression",
                attempt=1,
                repo_path=request.repo_path,
                sha=merged.integration_sha,
                base_sha=previous,
                config=request.config,
                policy=prepared.policy.model_copy(update={"gates": ["tests"]}),
                task_type=task.type,
                baseline=prepared.baseline,
                purpose="regression",
            ),
            timeouts.gates_s,
            heartbeat_s=max(timeouts.heartbeat_s, 30.0),
        )
        if report.passed:
            self.head = merged.integration_sha
            self.verified = None  # only the suite ran on this combination
            return ""
        metrics.record_gate_failures(workflow.metric_meter(), report.results, "regression")
        await self._run_activity(
            WorkspaceActivities.restore_branch,
            RestoreBranchInput(
                run_id=request.run_id,
                repo_path=request.repo_path,
                branch=prepared.integration_branch,
                sha=previous,
                expected=merged.integration_sha,
            ),
            timeouts.git_s,
        )
        workflow.logger.info("merge of %s reverted: it broke the integration suite", task.id)
        return (
            "## Regression\nYour change passed its own checks but broke the test suite once combined with work "
            "merged meanwhile; the merge was reverted. Make the change work on top of the current code.\n\n"
            + report.feedback
        )
