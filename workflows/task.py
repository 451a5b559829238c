"""TaskWorkflow: one task, from workspace to a gated (or human-approved) commit, one durable turn at a time.

held-out tests -> attempts: (agent_turn -> run_tools)* -> deterministic gates -> reviewer. A failure becomes
the next attempt's feedback, until the policy's caps per cause (lint, tests, review) or in total are spent;
then, or when a change needs approval (protected paths, size), the task escalates: it waits durably for
`approve`, `reject` or `retry` (with guidance) signals, or for the policy's deadline and default action.
Every task ends `passed` (the parent merges it), `failed`, `rejected` or `cancelled`, with its reason.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import timedelta
from functools import partial

from temporalio import workflow
from temporalio.exceptions import ActivityError, is_cancelled_exception

from darkfactory.workflows.budgets import BudgetGuard
from darkfactory.workflows.escalation import DecisionDesk
from darkfactory.workflows.held_out import held_out_suite
from darkfactory.workflows.run_link import RunLink
from darkfactory.workflows.search_attributes import NEEDS_REVIEW, STATUS
from darkfactory.workflows.steps import MODEL_RETRY, STEP_RETRY, Ended, step

with workflow.unsafe.imports_passed_through():
    from darkfactory.activities import metrics
    from darkfactory.activities.gates import GateActivities
    from darkfactory.activities.model import ModelActivities
    from darkfactory.activities.workspace import WorkspaceActivities
    from darkfactory.constants import RUN_SPENT_SIGNAL, TASK_ESCALATION_SIGNAL
    from darkfactory.contracts import (
        AcceptanceSuite,
        AgentTurnInput,
        AgentTurnResult,
        AttemptBrief,
        AttemptRecord,
        BlobRef,
        BudgetCheck,
        Decision,
        DecisionInput,
        EscalationState,
        GateReport,
        GateResult,
        OpenWorkspaceInput,
        ReviewInput,
        ReviewResult,
        RunGatesInput,
        RunToolsInput,
        RunToolsResult,
        TaskEscalation,
        TaskInput,
        TaskOutcome,
        TaskResult,
        Timeouts,
        Usage,
        WorkspaceRef,
    )


@workflow.defn
class TaskWorkflow:
    def __init__(self) -> None:
        self._attempt = 0
        self._turn = 0
        self._phase = "starting"
        self._sha = ""
        self._last_gates: list[GateResult] = []
        self._desk = DecisionDesk()
        self._guard = BudgetGuard()
        self._records: list[AttemptRecord] = []
        self._link = RunLink()

    # -- people ------------------------------------------------------------------------------------

    @workflow.signal
    def approve(self, input: DecisionInput | None = None) -> None:
        """Approve the escalated change as it stands: it is merged."""
        self._desk.answer("approve", input)

    @workflow.signal
    def reject(self, input: DecisionInput | None = None) -> None:
        """Reject the escalated task: it ends `rejected`."""
        self._desk.answer("reject", input)

    @workflow.signal
    def retry(self, input: DecisionInput | None = None) -> None:
        """Try again; the note is guidance that reaches the next model request."""
        self._desk.answer("retry", input)

    @workflow.signal
    def settled(self, word: str) -> None:
        """From the run: how this round's merge went (`merged`, `superseded` by a new round, `failed`, ...)."""
        self._link.settled = word

    @workflow.signal(name=RUN_SPENT_SIGNAL)
    def run_spent(self, spent: Usage) -> None:
        """The run's newer total (sent when another of its tasks ends), for the run's budget."""
        self._guard.heard(spent)

    @workflow.query
    def progress(self) -> dict[str, object]:
        """Where the task stands: attempt, turn, phase, sha, last gate results, escalation and decisions."""
        return {
            "attempt": self._attempt,
            "turn": self._turn,
            "phase": self._phase,
            "sha": self._sha,
            "gates": [r.model_dump(mode="json") for r in self._last_gates],
            "escalation": self._desk.waiting.model_dump(mode="json") if self._desk.waiting else None,
            "decisions": [d.model_dump(mode="json") for d in self._desk.decisions],
        }

    # -- the task ----------------------------------------------------------------------------------

    @workflow.run
    async def run(self, input: TaskInput) -> TaskResult:
        attempts = self._records
        suite: AcceptanceSuite | None = None

        async def escalate(reason: str, deadline_veto: str) -> Decision:
            phase = self._phase
            decision = await self._escalate(input, reason, deadline_veto)
            self._phase = phase
            return decision

        self._guard.start(input.policy.budget, input.run_spent, escalate)
        try:
            ws: WorkspaceRef = await workflow.execute_activity_method(
                WorkspaceActivities.open_workspace,
                OpenWorkspaceInput(
                    run_id=input.run_id,
                    task_id=input.task.id,
                    repo_path=input.repo_path,
                    base_sha=input.base_sha,
                    reset=input.reset_branch,
                ),
                start_to_close_timeout=timedelta(seconds=input.config.timeouts.git_s),
                summary=f"open workspace · {input.task.id}",
                retry_policy=STEP_RETRY,
            )
            self._sha = ws.sha
            suite = await held_out_suite(input, self._set_phase_text, self._guard)
            outcome, reason = await self._work(input, ws, suite, attempts)
        except Ended as ended:
            outcome, reason = ended.outcome, ended.reason
        except (asyncio.CancelledError, ActivityError) as exc:
            if not is_cancelled_exception(exc):
                raise
            if workflow.patched("task-closes-canceled"):
                await self._close_cancelled(input)
                raise asyncio.CancelledError from exc
            outcome, reason = "cancelled", "the task was cancelled"
        self._phase = outcome
        result = TaskResult(
            task_id=input.task.id,
            outcome=outcome,
            final_sha=self._sha,
            base_sha=input.base_sha,
            attempts=attempts,
            reason=reason,
            # Every model call the task made, a refused budget's unfinished attempt included.
            usage=self._guard.spent,
            decisions=self._desk.decisions,
            notes=suite.notes if suite is not None else [],
        )
        final_word: str = outcome
        if outcome == "passed" and workflow.info().parent is not None and workflow.patched("merge-handshake"):
            self._phase = "merging"
            try:
                final_word = await self._link.hand_over(result)
            except asyncio.CancelledError:
                await self._close_cancelled(input)
                raise
        _set_search(final_word, needs_review=False)
        return result

    async def _close_cancelled(self, input: TaskInput) -> None:
        """Cancelled (with its run, or alone): nothing stays in the review filter, and the run hears what the
        task did and spent before the task closes Canceled."""
        self._phase = "cancelled"
        _set_search("cancelled", needs_review=False)
        if self._desk.waiting is not None:
            workflow.upsert_memo({"escalation": None})
        await self._tell_the_run(input, None)

    async def _tell_the_run(self, input: TaskInput, escalation: EscalationState | None) -> None:
        """The run's summary (and `factory status`) shows the task escalated (or not) with its figures so far."""
        figures = {"attempts": len(self._records), "usage": self._guard.spent, "gates": self._last_gates}
        await self._link.signal(
            TASK_ESCALATION_SIGNAL, TaskEscalation(task_id=input.task.id, escalation=escalation, **figures)
        )

    async def _work(
        self, input: TaskInput, ws: WorkspaceRef, suite: AcceptanceSuite | None, attempts: list[AttemptRecord]
    ) -> tuple[TaskOutcome, str]:
        limits = input.policy.limits
        max_attempts = input.config.max_attempts or limits.max_attempts
        failures: Counter[str] = Counter()
        budget = max_attempts
        feedback = input.feedback
        self._attempt = input.first_attempt - 1
        while True:
            self._attempt += 1
            record = await self._attempt_once(input, ws, suite, feedback)
            attempts.append(record)
            metrics.record_attempt(workflow.metric_meter(), input.task.type, record.gates)
            failed = next((r for r in record.gates if not r.passed), None)
            approvals = [f"{r.gate}: {r.needs_approval}" for r in record.gates if r.needs_approval]
            if failed is None and not approvals:
                return "passed", "all gates passed" + (" and the reviewer approved" if _reviewed(input) else "")
            if failed is None:
                reason = "needs a person's approval: " + "; ".join(approvals)
            else:
                cause = "tests" if failed.gate == "acceptance" else failed.gate
                failures[cause] += 1
                feedback = _feedback(record.gates)
                cap = getattr(limits, cause, limits.max_attempts)
                if failures[cause] < cap and len(attempts) < budget:
                    continue
                disagreement = " (every deterministic gate passes; the reviewer disagrees)" if cause == "review" else ""
                reason = (
                    f"attempt caps spent after {len(attempts)} attempt(s); last failure: "
                    f"{failed.gate}: {failed.summary}{disagreement}"
                )
                if input.policy.escalation.on_caps_spent == "fail":
                    return "failed", reason
            decision = await self._escalate(input, reason, _deadline_veto(record.gates))
            if decision.action == "approve":
                return "passed", f"approved by {decision.by}" + (f": {decision.note}" if decision.note else "")
            if decision.action == "reject":
                return "rejected", f"rejected by {decision.by}" + (f": {decision.note}" if decision.note else "")
            # retry: a fresh set of caps, with the person's guidance first in the feedback
            failures.clear()
            budget = len(attempts) + max_attempts
            guidance = f"## Guidance from {decision.by}\n{decision.note}".rstrip()
            feedback = f"{guidance}\n\n{feedback}".strip()

    async def _escalate(self, input: TaskInput, reason: str, deadline_veto: str) -> Decision:
        """Wait, durably, for a person (or the policy's deadline) to decide."""
        self._phase = "escalated"
        metrics.record_escalation(workflow.metric_meter(), input.task.type)
        memo = {"run_id": input.run_id, "task_id": input.task.id, "title": input.task.title}

        async def tell_the_run(escalation: EscalationState | None) -> None:
            await self._tell_the_run(input, escalation)

        decision = await self._desk.wait(
            reason,
            input.policy.escalation,
            memo=memo,
            status_after="running",
            attempt=self._attempt,
            sha=self._sha,
            notify=tell_the_run,
            deadline_veto=deadline_veto,
        )
        self._phase = "deciding"
        return decision

    def _set_phase_text(self, phase: str) -> None:
        self._phase = phase

    async def _attempt_once(
        self, input: TaskInput, ws: WorkspaceRef, suite: AcceptanceSuite | None, feedback: str
    ) -> AttemptRecord:
        config = input.config
        timeouts = config.timeouts
        attempt = self._attempt
        brief = AttemptBrief(
            spec=input.spec,
            task=input.task,
            attempt=attempt,
            max_attempts=input.config.max_attempts or input.policy.limits.max_attempts,
            repo_path=input.repo_path,
            sha=self._sha,
            feedback=feedback,
            acceptance_names=suite.names if suite else [],
        )
        transcript: BlobRef | None = None
        usage = Usage()
        stop = "turn_limit"
        turns = 0
        self._phase = "agent"
        for turn in range(1, config.max_turns + 1):
            self._turn = turns = turn
            turn_input = AgentTurnInput(
                run_id=input.run_id,
                task_id=input.task.id,
                attempt=attempt,
                turn=turn,
                config=config,
                transcript_ref=transcript,
                brief=brief if transcript is None else None,
            )
            answer = await self._guard.call(partial(_agent_turn, turn_input, timeouts))
            usage = usage + answer.usage
            transcript = answer.transcript_ref
            if not answer.tool_calls:
                stop = "end_turn"
                break
            tools: RunToolsResult = await step(
                WorkspaceActivities.run_tools,
                RunToolsInput(
                    run_id=input.run_id,
                    task_id=input.task.id,
                    attempt=attempt,
                    turn=turn,
                    workspace=ws.model_copy(update={"sha": self._sha}),
                    transcript_ref=transcript,
                    tool_calls=answer.tool_calls,
                    commit_time=int(workflow.now().timestamp()),
                    policy=input.policy,
                    task_type=input.task.type,
                ),
                timeouts.tools_s,
                timeouts.heartbeat_s,
                STEP_RETRY,
            )
            transcript = tools.transcript_ref
            self._sha = tools.sha
        self._phase = "gates"
        report: GateReport = await step(
            GateActivities.run_gates,
            RunGatesInput(
                run_id=input.run_id,
                task_id=input.task.id,
                attempt=attempt,
                repo_path=input.repo_path,
                sha=self._sha,
                base_sha=input.base_sha,
                config=config,
                policy=input.policy,
                task_type=input.task.type,
                acceptance_ref=suite.files_ref if suite else None,
                acceptance_selection=suite.selection if suite else None,
                baseline=input.baseline,
            ),
            timeouts.gates_s,
            max(timeouts.heartbeat_s, 30.0),
            STEP_RETRY,
        )
        gates = list(report.results)
        if report.passed and _reviewed(input):
            self._phase = "review"
            review = await _review(input, attempt, self._sha, gates, brief.max_attempts, self._guard)
            usage = usage + review.usage
            gates.append(_review_gate(review))
        self._last_gates = gates
        workflow.logger.info(
            "attempt %d of task %s: %s", attempt, input.task.id, "passed" if all(g.passed for g in gates) else "failed"
        )
        return AttemptRecord(
            attempt=attempt,
            turns=turns,
            final_sha=self._sha,
            stop="end_turn" if stop == "end_turn" else "turn_limit",
            gates=gates,
            usage=usage,
            transcript_ref=transcript,
        )


def _set_search(status: str, *, needs_review: bool) -> None:
    workflow.upsert_search_attributes([STATUS.value_set(status), NEEDS_REVIEW.value_set(needs_review)])


def _reviewed(input: TaskInput) -> bool:
    return "review" in input.policy.gates and input.policy.review.enabled


async def _review(
    input: TaskInput, attempt: int, sha: str, gates: list[GateResult], max_attempts: int, guard: BudgetGuard
) -> ReviewResult:
    """The separate reviewer's verdict on a change whose deterministic gates passed."""
    review_input = ReviewInput(
        run_id=input.run_id,
        task_id=input.task.id,
        attempt=attempt,
        repo_path=input.repo_path,
        base_sha=input.base_sha,
        sha=sha,
        spec=input.spec,
        task=input.task,
        gates=gates,
        model=input.policy.review.model or input.config.model,
        config=input.config,
        max_attempts=max_attempts,
    )
    timeouts = input.config.timeouts
    review: ReviewResult = await guard.call(
        lambda budget: step(
            ModelActivities.review_change,
            review_input.model_copy(update={"budget": budget}),
            timeouts.model_call_s,
            timeouts.heartbeat_s,
            MODEL_RETRY,
        )
    )
    return review


async def _agent_turn(turn: AgentTurnInput, timeouts: Timeouts, budget: BudgetCheck | None) -> AgentTurnResult:
    given = turn.model_copy(update={"budget": budget})
    answer: AgentTurnResult = await step(
        ModelActivities.agent_turn, given, timeouts.model_call_s, timeouts.heartbeat_s, MODEL_RETRY
    )
    return answer


def _review_gate(review: ReviewResult) -> GateResult:
    verdict = review.verdict
    findings = "\n".join(
        f"- {f.file}{f':{f.line}' if f.line else ''} [{f.severity}] {f.message}" for f in verdict.findings[:20]
    )
    return GateResult(
        gate="review",
        passed=verdict.verdict == "approve",
        summary=("approved: " if verdict.verdict == "approve" else "changes requested: ") + verdict.summary[:200],
        feedback="" if verdict.verdict == "approve" else f"{verdict.summary}\n{findings}".strip(),
        details_ref=review.transcript_ref,
    )


def _deadline_veto(gates: list[GateResult]) -> str:
    """Why the escalation's deadline may not approve this attempt's change, or "" when the policy decides.

    No repository's policy approves CI configuration or the factory policy unattended; a change the scope gate
    did not measure may touch them."""
    scope = next((result for result in gates if result.gate == "scope"), None)
    if scope is None:
        return "the scope gate did not measure the change, and always-protected paths are rejected at the deadline"
    if scope.touches_always_protected:
        return (
            "the change touches CI configuration or the factory policy, and always-protected paths are rejected "
            "at the deadline"
        )
    return ""


def _feedback(gates: list[GateResult]) -> str:
    return GateReport(sha="", results=gates).feedback
