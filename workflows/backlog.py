"""BacklogWorkflow: one per repository, working through queued specs as FactoryRuns.

Items arrive by the `add` signal (the CLI signals-with-start, so a repository never gets two backlogs) and
leave by the `remove` update, whose validator refuses unknown and already started items. The lowest
priority starts first, FIFO within a priority, at most `concurrency` runs at once and, with an hours window,
only while `workflow.now()` is inside it: outside it the workflow waits on a timer until the window opens.

Runs are child workflows with parent-close ABANDON (stopping the backlog stops no run) and the usual run
workflow id and search attributes, so `factory runs --trigger backlog` and the web UI find them. The queue
is published in the memo after every change, so `factory backlog list` reads it with no worker running.

History is bounded by continue-as-new, carrying the state: when the backlog falls idle after some work, and
when Temporal suggests it. A child's completion is only delivered to the run that started it, so the
backlog first stops starting runs and waits for the running ones to end.
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import datetime, timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import SearchAttributePair, TypedSearchAttributes, WorkflowIDReusePolicy
from temporalio.exceptions import ApplicationError, ChildWorkflowError, WorkflowAlreadyStartedError

from darkfactory.workflows.search_attributes import REPO, STATUS, TRIGGER

with workflow.unsafe.imports_passed_through():
    from darkfactory.constants import run_workflow_id
    from darkfactory.contracts import (
        BACKLOG_MEMO,
        BacklogAdd,
        BacklogEntry,
        BacklogInput,
        BacklogState,
        BacklogView,
        ItemView,
        RunRequest,
        backlog_view,
        item_view,
    )
    from darkfactory.workflows.factory_run import FactoryRunWorkflow

KEPT_DONE = 50
"""Ended or removed items kept in the state and memo (the runs themselves stay findable in `factory runs`)."""
KEPT_STARTED = 200
KEPT_SEEN = 2000
"""Accepted item ids remembered for deduplication: far more than a retried signal could lag behind."""


def _search_attributes(request: RunRequest) -> TypedSearchAttributes:
    # As `factory_cli.launch.run_search_attributes` sets them for every other trigger.
    return TypedSearchAttributes(
        [
            SearchAttributePair(REPO, request.repo_path),
            SearchAttributePair(STATUS, "preparing"),
            SearchAttributePair(TRIGGER, "backlog"),
        ]
    )


@workflow.defn
class BacklogWorkflow:
    @workflow.init
    def __init__(self, input: BacklogInput) -> None:
        # Set before any handler runs: signal-with-start delivers `add` before the run method starts.
        self._state = input.state or BacklogState(repo_path=input.repo_path, settings=input.settings)
        self._changes = 0
        """Bumped by every handler and every run's end: what the main loop waits on."""
        self._worked = False
        """This run of the workflow changed something; only then does falling idle continue-as-new (a
        fresh run is idle too, and would otherwise continue-as-new forever)."""
        self._waiting_until: datetime | None = None
        self._published: Any = workflow.memo().get(BACKLOG_MEMO)  # what continue-as-new carried over
        self._children: set[asyncio.Task[None]] = set()

    @workflow.signal
    def add(self, add: BacklogAdd) -> None:
        state, item = self._state, add.item
        if item.item_id in state.seen:
            workflow.logger.info("item %s is in the backlog already; the repeated add is ignored", item.item_id)
            return
        if item.request.repo_path != state.repo_path:
            workflow.logger.warning("item %s is for %s, not this backlog's repository", item.item_id, state.repo_path)
            return
        state.seen = [*state.seen, item.item_id][-KEPT_SEEN:]
        state.queued.append(BacklogEntry(item=item, seq=state.next_seq, added_at=workflow.now()))
        state.next_seq += 1
        state.settings = add.applied_to(state.settings)
        self._changed()

    @workflow.update
    def remove(self, item_id: str) -> ItemView:
        """Take a queued item off the backlog before it starts; it is listed as removed."""
        entry = next(e for e in self._state.queued if e.item.item_id == item_id)
        self._state.queued.remove(entry)
        removed = entry.model_copy(update={"ended_at": workflow.now(), "outcome": "removed"})
        self._ended(removed)
        return item_view(removed, "removed")

    @remove.validator
    def _check_remove(self, item_id: str) -> None:
        state = self._state
        if any(e.item.item_id == item_id for e in state.queued):
            return
        running = next((e for e in state.running if e.item.item_id == item_id), None)
        if running is not None:
            raise ApplicationError(
                f"item {item_id} has started already, as run {running.item.request.run_id}; "
                f"`factory cancel {running.item.request.run_id}` stops it"
            )
        done = next((e for e in state.done if e.item.item_id == item_id), None)
        if done is not None:
            raise ApplicationError(f"item {item_id} is not queued any more (it was {done.outcome})")
        raise ApplicationError(f"no item {item_id} in the backlog of {state.repo_path}")

    @workflow.query
    def backlog(self) -> BacklogView:
        return self._view()

    @workflow.run
    async def run(self, input: BacklogInput) -> None:
        while not self._time_to_continue():
            wait = self._dispatch()
            self._publish()
            await self._next_change(wait)
        await workflow.wait_condition(workflow.all_handlers_finished)
        carried = BacklogInput(repo_path=self._state.repo_path, settings=self._state.settings, state=self._state)
        workflow.continue_as_new(carried, memo={BACKLOG_MEMO: self._view().model_dump(mode="json")})

    async def _next_change(self, timeout: timedelta | None) -> None:
        """Until a handler or a run's end changes something, or `timeout` passes (the hours window opens)."""
        seen = self._changes
        with contextlib.suppress(TimeoutError):
            await workflow.wait_condition(lambda: self._changes != seen, timeout=timeout)

    def _draining(self) -> bool:
        return workflow.info().is_continue_as_new_suggested()

    def _time_to_continue(self) -> bool:
        state = self._state
        return not state.running and (self._draining() or (self._worked and not state.queued))

    def _dispatch(self) -> timedelta | None:
        """Start what may start now; how long until the hours window opens when queued items wait for it."""
        state = self._state
        self._waiting_until = None
        if not state.queued or self._draining():
            return None
        hours, now = state.settings.hours, workflow.now()
        if hours is not None and not hours.contains(now):
            self._waiting_until = hours.opens_after(now)
            return self._waiting_until - now
        while state.queued and len(state.running) < state.settings.concurrency:
            entry = min(state.queued, key=lambda e: e.order)
            state.queued.remove(entry)
            started = entry.model_copy(update={"started_at": now})
            state.running.append(started)
            state.started = [*state.started, entry.item.item_id][-KEPT_STARTED:]
            state.max_running = max(state.max_running, len(state.running))
            # Both start commands of one dispatch go out in the same workflow task.
            task = asyncio.create_task(self._run_child(started))
            self._children.add(task)
            task.add_done_callback(self._children.discard)
            self._worked = True
        return None

    async def _run_child(self, entry: BacklogEntry) -> None:
        request = entry.item.request
        try:
            handle = await workflow.start_child_workflow(
                FactoryRunWorkflow.run,
                request,
                id=run_workflow_id(request.run_id),
                parent_close_policy=workflow.ParentClosePolicy.ABANDON,
                id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
                search_attributes=_search_attributes(request),
                static_summary=f"backlog · {request.repo_path} · item {entry.item.item_id}: {entry.item.title}"[:200],
            )
        except WorkflowAlreadyStartedError:
            self._finish(entry, "skipped", f"a run with id {request.run_id} exists already")
            return
        try:
            summary = await handle
        except ChildWorkflowError as exc:  # terminated, timed out, or failed outright
            self._finish(entry, "failed", str(exc.cause or exc))
            return
        self._finish(entry, summary.phase, summary.error)

    def _finish(self, entry: BacklogEntry, outcome: str, error: str) -> None:
        self._state.running = [e for e in self._state.running if e.item.item_id != entry.item.item_id]
        self._ended(entry.model_copy(update={"ended_at": workflow.now(), "outcome": outcome, "error": error}))

    def _ended(self, entry: BacklogEntry) -> None:
        self._state.done = [*self._state.done, entry][-KEPT_DONE:]
        self._changed()

    def _changed(self) -> None:
        self._changes += 1
        self._worked = True

    def _view(self) -> BacklogView:
        return backlog_view(self._state, self._waiting_until)

    def _publish(self) -> None:
        """The memo `factory backlog list` reads; upserted only when it changed (each upsert is an event)."""
        view = self._view().model_dump(mode="json")
        if view != self._published:
            workflow.upsert_memo({BACKLOG_MEMO: view})
            self._published = view
