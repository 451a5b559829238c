"""Telling the issue that asked for a run what became of it: each escalation with how to answer it, and
the outcome. Only runs started by an issue trigger (`config.report_to`) post anything."""

from __future__ import annotations

from temporalio import workflow

from darkfactory.workflows.run_book import RunFailed
from darkfactory.workflows.steps import run_step

with workflow.unsafe.imports_passed_through():
    from darkfactory.activities.notify import NotifyActivities
    from darkfactory.contracts import EscalationState, IssueCommentInput, RunRequest, RunState
    from darkfactory.triggers.comments import escalation_comment, outcome_comment


class IssueReporter:
    def __init__(self) -> None:
        self.request: RunRequest | None = None

    @property
    def active(self) -> bool:
        return self.request is not None and self.request.config.report_to is not None

    async def escalated(self, task_id: str, escalation: EscalationState) -> None:
        if self.request is not None:
            run_id = self.request.run_id
            key = f"{run_id}:escalation:{task_id}:{escalation.attempt}"
            await self._post(key, escalation_comment(run_id, task_id, escalation))

    async def ended(self, state: RunState) -> None:
        await self._post(f"{state.run_id}:outcome", outcome_comment(state))
        await workflow.wait_condition(workflow.all_handlers_finished)  # escalation comments still in flight

    async def _post(self, key: str, body: str) -> None:
        """A comment that cannot be posted (GitHub down, no permission) is logged; it does not fail the run."""
        request = self.request
        if request is None or request.config.report_to is None:
            return
        try:
            await run_step(
                NotifyActivities.post_issue_comment,
                IssueCommentInput(run_id=request.run_id, issue=request.config.report_to, key=key, body=body),
                request.config.timeouts.git_s,
            )
        except RunFailed as exc:
            workflow.logger.warning("could not comment on the issue: %s", exc)
