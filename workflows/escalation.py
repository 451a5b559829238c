"""Where a workflow waits for a person: durably, findable, until a decision or the policy's deadline.

Both workflows use one DecisionDesk: a task escalated by its gates or caps, and a run whose shipped change
was rolled back. The signal handlers stay on the workflow classes (Temporal registers them there); they hand
the person's answer to the desk, which records it with who, when, the note and what it answered.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import RetryPolicy, SearchAttributeUpdate
from temporalio.exceptions import ActivityError, ApplicationError, is_cancelled_exception

with workflow.unsafe.imports_passed_through():
    from darkfactory.activities.audit import AuditActivities
    from darkfactory.contracts import AuditDecisionInput, Decision, DecisionAction, DecisionInput, EscalationState
    from darkfactory.policy import Escalation

from darkfactory.workflows.search_attributes import NEEDS_REVIEW, STATUS


class DecisionDesk:
    """The escalation a workflow is waiting on, if any, and every decision made so far."""

    def __init__(self) -> None:
        self.waiting: EscalationState | None = None
        self.decisions: list[Decision] = []
        self._answer: Decision | None = None

    def answer(self, action: DecisionAction, given: DecisionInput | None) -> None:
        """A person's signal. Ignored (and logged) when nothing waits or an answer is already in."""
        if self.waiting is None or self._answer is not None:
            workflow.logger.warning("ignored %s: nothing is waiting for a person", action)
            return
        given = given or DecisionInput()
        self._answer = Decision(
            action=action, note=given.note, by=given.by or "unknown", at=workflow.now(), reason=self.waiting.reason
        )

    async def wait(
        self,
        reason: str,
        policy: Escalation,
        *,
        memo: dict[str, Any],
        status_after: str | None,
        attempt: int = 0,
        sha: str = "",
        notify: Callable[[EscalationState | None], Awaitable[None]] | None = None,
        deadline_veto: str = "",
    ) -> Decision:
        """Mark the workflow as waiting (search attributes + memo, so `factory queue` and the web UI find it),
        wait for a decision or the deadline's default action, record it, and clear the marks. `notify` hears
        the escalation when the wait starts and None when it ends (a task tells its run). `deadline_veto` says
        why the deadline may not approve (the change touches always-protected paths): then it rejects, whatever
        the policy's default action."""
        now = workflow.now()
        deadline = timedelta(hours=policy.deadline_hours) if policy.deadline_hours else None
        self.waiting = EscalationState(
            reason=reason, since=now, attempt=attempt, sha=sha, deadline=now + deadline if deadline else None
        )
        self._answer = None
        workflow.upsert_search_attributes([STATUS.value_set("escalated"), NEEDS_REVIEW.value_set(True)])
        workflow.upsert_memo({"escalation": self.waiting.model_dump(mode="json"), **memo})
        workflow.logger.info("waiting for a person: %s", reason)
        if notify is not None:
            await notify(self.waiting)
        try:
            await workflow.wait_condition(lambda: self._answer is not None, timeout=deadline)
            decision = self._answer
        except TimeoutError:
            decision = Decision(
                action="reject" if deadline_veto else policy.default_action,
                note="the escalation deadline passed" + (f"; {deadline_veto}" if deadline_veto else ""),
                by="policy (deadline)",
                at=workflow.now(),
                reason=reason,
            )
        if decision is None:  # wait_condition returned, so an answer is there
            raise ApplicationError("escalation ended without a decision", non_retryable=True)
        self.decisions.append(decision)
        await _audit(decision, memo)
        self.waiting = None
        updates: list[SearchAttributeUpdate[Any]] = [NEEDS_REVIEW.value_set(False)]
        if status_after is not None:
            updates.append(STATUS.value_set(status_after))
        workflow.upsert_search_attributes(updates)
        workflow.upsert_memo({"escalation": None})
        if notify is not None:
            await notify(None)
        return decision


async def _audit(decision: Decision, memo: dict[str, Any]) -> None:
    """Write the decision to the run's audit trail (an activity: workflows do no I/O). A trail that cannot be
    written is logged, not fatal: the decision itself is in the workflow's history either way."""
    run_id = str(memo.get("run_id") or "")
    if not run_id or not workflow.patched("audit-decisions"):
        return
    try:
        await workflow.execute_activity_method(
            AuditActivities.record_decision,
            AuditDecisionInput(run_id=run_id, task_id=str(memo.get("task_id") or ""), decision=decision),
            start_to_close_timeout=timedelta(seconds=30),
            retry_policy=RetryPolicy(maximum_attempts=5),
            summary=f"audit · {decision.action} by {decision.by}",
        )
    except ActivityError as exc:
        if is_cancelled_exception(exc):
            raise asyncio.CancelledError from exc  # the workflow was cancelled meanwhile: it must still stop
        workflow.logger.error("could not write the decision to the audit trail: %s", exc)
