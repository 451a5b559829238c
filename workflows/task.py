"""TaskWorkflow: one task, from workspace to a gated commit, one durable model turn at a time.

open workspace -> attempts: (agent_turn -> run_tools)* until the model ends its turn or the turn cap,
then the gates; a failed gate becomes the next attempt's feedback; after the attempt cap the task fails
with its diagnostics. Merging is the parent's job (it serialises merges).
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from activities.gates import GateActivities
    from activities.model import ModelActivities
    from activities.workspace import WorkspaceActivities
    from darkfactory.contracts import (
        AgentTurnInput,
        AgentTurnResult,
        AttemptBrief,
        AttemptRecord,
        BlobRef,
        GateReport,
        OpenWorkspaceInput,
        RunGatesInput,
        RunToolsInput,
        RunToolsResult,
        TaskInput,
        TaskResult,
        Usage,
        WorkspaceRef,
    )

MODEL_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=2),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(minutes=2),
    maximum_attempts=8,
)
STEP_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1), maximum_interval=timedelta(seconds=30), maximum_attempts=5
)


@workflow.defn
class TaskWorkflow:
    def __init__(self) -> None:
        self._attempt = 0
        self._turn = 0
        self._phase = "starting"
        self._sha = ""
        self._last_gates: GateReport | None = None

    @workflow.query
    def progress(self) -> dict[str, object]:
        """Where the task stands: attempt, turn, phase, workspace sha and the last gate results."""
        return {
            "attempt": self._attempt,
            "turn": self._turn,
            "phase": self._phase,
            "sha": self._sha,
            "gates": [r.model_dump(mode="json") for r in self._last_gates.results] if self._last_gates else [],
        }

    @workflow.run
    async def run(self, input: TaskInput) -> TaskResult:
        config = input.config
        timeouts = config.timeouts
        ws: WorkspaceRef = await workflow.execute_activity_method(
            WorkspaceActivities.open_workspace,
            OpenWorkspaceInput(
                run_id=input.run_id, task_id=input.task.id, repo_path=input.repo_path, base_sha=input.base_sha
            ),
            start_to_close_timeout=timedelta(seconds=timeouts.git_s),
            retry_policy=STEP_RETRY,
        )
        self._sha = ws.sha
        attempts: list[AttemptRecord] = []
        usage = Usage()
        feedback = ""
        for attempt in range(1, config.max_attempts + 1):
            self._attempt = attempt
            record = await self._attempt_once(input, ws, attempt, feedback)
            attempts.append(record)
            usage = usage + record.usage
            if all(result.passed for result in record.gates):
                self._phase = "passed"
                return TaskResult(
                    task_id=input.task.id,
                    outcome="passed",
                    final_sha=self._sha,
                    base_sha=input.base_sha,
                    attempts=attempts,
                    reason="all gates passed",
                    usage=usage,
                )
            feedback = self._last_gates.feedback if self._last_gates else ""
        self._phase = "failed"
        last = attempts[-1]
        failing = [f"{result.gate}: {result.summary}" for result in last.gates if not result.passed]
        reason = f"gates still failing after {len(attempts)} attempt(s): " + "; ".join(failing)
        return TaskResult(
            task_id=input.task.id,
            outcome="failed",
            final_sha=self._sha,
            base_sha=input.base_sha,
            attempts=attempts,
            reason=reason,
            usage=usage,
        )

    async def _attempt_once(self, input: TaskInput, ws: WorkspaceRef, attempt: int, feedback: str) -> AttemptRecord:
        config = input.config
        timeouts = config.timeouts
        brief = AttemptBrief(
            spec=input.spec,
            task=input.task,
            attempt=attempt,
            max_attempts=config.max_attempts,
            repo_path=input.repo_path,
            sha=self._sha,
            feedback=feedback,
        )
        transcript: BlobRef | None = None
        usage = Usage()
        stop: str = "turn_limit"
        turns = 0
        self._phase = "agent"
        for turn in range(1, config.max_turns + 1):
            self._turn = turns = turn
            answer: AgentTurnResult = await workflow.execute_activity_method(
                ModelActivities.agent_turn,
                AgentTurnInput(
                    run_id=input.run_id,
                    task_id=input.task.id,
                    attempt=attempt,
                    turn=turn,
                    config=config,
                    transcript_ref=transcript,
                    brief=brief if transcript is None else None,
                ),
                start_to_close_timeout=timedelta(seconds=timeouts.model_call_s),
                heartbeat_timeout=timedelta(seconds=timeouts.heartbeat_s),
                retry_policy=MODEL_RETRY,
            )
            usage = usage + answer.usage
            transcript = answer.transcript_ref
            if not answer.tool_calls:
                stop = "end_turn"
                break
            tools: RunToolsResult = await workflow.execute_activity_method(
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
                ),
                start_to_close_timeout=timedelta(seconds=timeouts.tools_s),
                heartbeat_timeout=timedelta(seconds=timeouts.heartbeat_s),
                retry_policy=STEP_RETRY,
            )
            transcript = tools.transcript_ref
            self._sha = tools.sha
        self._phase = "gates"
        report: GateReport = await workflow.execute_activity_method(
            GateActivities.run_gates,
            RunGatesInput(
                run_id=input.run_id,
                task_id=input.task.id,
                attempt=attempt,
                repo_path=input.repo_path,
                sha=self._sha,
                base_sha=input.base_sha,
                config=config,
            ),
            start_to_close_timeout=timedelta(seconds=timeouts.gates_s),
            heartbeat_timeout=timedelta(seconds=max(timeouts.heartbeat_s, 30.0)),
            retry_policy=STEP_RETRY,
        )
        self._last_gates = report
        workflow.logger.info(
            "attempt %d of task %s: gates %s", attempt, input.task.id, "passed" if report.passed else "failed"
        )
        return AttemptRecord(
            attempt=attempt,
            turns=turns,
            final_sha=self._sha,
            stop="end_turn" if stop == "end_turn" else "turn_limit",
            gates=report.results,
            usage=usage,
            transcript_ref=transcript,
        )
