"""Shipping a verified run, and guarding what shipped: the post-ship check, rollback, a person's decision.

The run's ship mode delivers the integration head (`branch`, `merge`, `push`, `pr`; each idempotent). The
policy's `post_ship_check` then runs on what shipped; if it fails, a compensating commit is delivered the
same way and the run waits for a person: approve ships the change again, reject keeps it reverted.
"""

from __future__ import annotations

from temporalio import workflow

from darkfactory.workflows.escalation import DecisionDesk
from darkfactory.workflows.run_book import RunBook, RunFailed, failing_gates
from darkfactory.workflows.steps import ActivityRunner

with workflow.unsafe.imports_passed_through():
    from darkfactory.activities.gates import GateActivities
    from darkfactory.activities.workspace import WorkspaceActivities
    from darkfactory.contracts import (
        Decision,
        GateReport,
        PreparedRun,
        RevertShippedInput,
        RunGatesInput,
        RunRequest,
        RunState,
        ShipInput,
        ShipResult,
    )


class Shipping:
    """Ships the integration head and guards it; the run's state records every step."""

    def __init__(self, book: RunBook, desk: DecisionDesk, run_activity: ActivityRunner) -> None:
        self._book = book
        self._desk = desk
        self._run_activity = run_activity

    async def ship(self, request: RunRequest, prepared: PreparedRun, head: str) -> None:
        config = request.config
        self._book.set_phase("shipping")
        ship_input = ShipInput(
            run_id=request.run_id,
            repo_path=request.repo_path,
            base_branch=request.base_branch,
            base_sha=prepared.base_sha,
            integration_branch=prepared.integration_branch,
            integration_sha=head,
            mode=config.ship,
            remote=config.remote,
            github_repo=config.github_repo,
            title=f"factory: {self._book.current.plan_summary}"[:200],
            body=_pull_request_body(self._book.current),
        )
        shipped: ShipResult = await self._run_activity(WorkspaceActivities.ship_run, ship_input, config.timeouts.git_s)
        self._book.update(
            shipped_sha=shipped.shipped_sha, shipped_to=shipped.target, pull_request_url=shipped.pull_request_url
        )
        await self._check_shipped(request, prepared, ship_input, shipped.shipped_sha)

    async def _check_shipped(self, request: RunRequest, prepared: PreparedRun, ship: ShipInput, sha: str) -> None:
        """Run the policy's post-ship check on what shipped; on failure revert it and wait for a person."""
        check = prepared.policy.commands.post_ship_check
        if not check:
            return
        timeouts = request.config.timeouts
        self._book.set_phase("checking")
        report: GateReport = await self._run_activity(
            GateActivities.run_gates,
            RunGatesInput(
                run_id=request.run_id,
                task_id="_post_ship",
                attempt=1,
                repo_path=request.repo_path,
                sha=sha,
                base_sha=prepared.base_sha,
                config=request.config.model_copy(update={"test_command": check}),
                policy=prepared.policy.model_copy(update={"gates": ["tests"]}),
                purpose="post_ship",
            ),
            timeouts.gates_s,
            heartbeat_s=max(timeouts.heartbeat_s, 30.0),
        )
        self._book.update(post_ship_check=report.results)
        if report.passed:
            return
        reason = f"the post-ship check failed: {failing_gates(report)}"
        revert: str = await self._run_activity(
            WorkspaceActivities.revert_shipped,
            RevertShippedInput(
                run_id=request.run_id,
                repo_path=request.repo_path,
                ship=ship,
                shipped_sha=sha,
                reason=reason,
                commit_time=int(workflow.now().timestamp()),
            ),
            timeouts.git_s,
        )
        self._book.update(rolled_back_sha=revert)
        decision = await self._escalate(request, prepared, f"{reason}; the shipped change was reverted")
        if decision.action != "approve":
            raise RunFailed(
                f"{reason}; the shipped change was reverted by {revert[:12]} and stays reverted "
                f"({decision.action} by {decision.by})"
            )
        # A person accepts the change despite the check: restore it, delivered the same way.
        restored: str = await self._run_activity(
            WorkspaceActivities.revert_shipped,
            RevertShippedInput(
                run_id=request.run_id,
                repo_path=request.repo_path,
                ship=ship.model_copy(update={"base_sha": sha}),
                shipped_sha=revert,
                reason=f"restored: approved by {decision.by}",
                commit_time=int(workflow.now().timestamp()),
            ),
            timeouts.git_s,
        )
        self._book.update(shipped_sha=restored)

    async def _escalate(self, request: RunRequest, prepared: PreparedRun, reason: str) -> Decision:
        decision = await self._desk.wait(
            reason,
            prepared.policy.escalation,
            memo={"run_id": request.run_id, "task_id": ""},
            status_after=None,
            sha=self._book.current.shipped_sha or "",
        )
        self._book.update(decisions=list(self._desk.decisions))
        return decision


def _pull_request_body(state: RunState) -> str:
    lines = [f"Built by darkfactory run `{state.run_id}` from a spec; every task passed its gates.", ""]
    lines += [f"- `{task.id}`: {task.title} ({task.attempts} attempt(s))" for task in state.tasks]
    return "\n".join(lines)
