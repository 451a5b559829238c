"""The audit trail's writers: an activity interceptor that records what each activity did, and the
activity that records a person's decision (which happens in a workflow, where no I/O may).

The interceptor runs after an activity returns and appends its events to the run's trail (see
`darkfactory.audit`): model calls with usage and cost, each tool call with its summary and status, each
gate result, merges, ships and rollbacks. Keys are the activity's workflow id, activity id and attempt
plus the event's index, so a retried activity writes each event again only if the earlier attempt never
returned (its events were never written), and an audit failure never fails the activity: the work is done;
the failure is logged.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import structlog
from temporalio import activity
from temporalio.worker import ActivityInboundInterceptor, ExecuteActivityInput, Interceptor

from darkfactory import audit
from darkfactory.contracts import AuditDecisionInput, GateReport, RunToolsResult, ShipResult, Usage

log = structlog.get_logger(__name__)
MODEL_PURPOSE = {
    "plan_run": "plan",
    "agent_turn": "agent",
    "review_change": "review",
    "write_acceptance_tests": "acceptance",
}


def _usage(usage: Usage) -> dict[str, Any]:
    return {
        "input_tokens": usage.input_tokens,
        "output_tokens": usage.output_tokens,
        "cache_read_input_tokens": usage.cache_read_input_tokens,
        "cache_creation_input_tokens": usage.cache_creation_input_tokens,
    }


def _model_call(kind: str, arg: Any, result: Any) -> list[tuple[str, dict[str, Any]]]:
    config = getattr(arg, "config", None)
    model = getattr(config, "model", "") or ""
    usage: Usage = getattr(result, "usage", None) or Usage()
    scripted = model.startswith("scripted:")
    cost = None if scripted else usage.cost  # priced by the model activity; None: no price on file
    data: dict[str, Any] = {"purpose": MODEL_PURPOSE[kind], "model": "scripted" if scripted else model}
    data |= {"task_id": getattr(arg, "task_id", None) or getattr(getattr(arg, "task", None), "id", "")}
    data |= {"attempt": getattr(arg, "attempt", 0), "turn": getattr(arg, "turn", 0), **_usage(usage)}
    data["cost_usd"] = cost
    if kind == "review_change":
        verdict = result.verdict
        data |= {"verdict": verdict.verdict, "summary": verdict.summary, "findings": len(verdict.findings)}
    if kind == "agent_turn":
        data |= {"stop_reason": result.stop_reason, "tools_asked": [call.name for call in result.tool_calls]}
    return [("model_call", data)]


def events_of(kind: str, arg: Any, result: Any) -> list[tuple[str, dict[str, Any]]]:
    """What an activity's result says happened, as (kind, data) pairs; none for bookkeeping activities."""
    task_id = getattr(arg, "task_id", "")
    if kind in MODEL_PURPOSE:
        return _model_call(kind, arg, result)
    if kind == "run_tools" and isinstance(result, RunToolsResult):
        return [
            ("tool_call", {"task_id": task_id, "tool": o.name, "summary": o.summary, "is_error": o.is_error})
            for o in result.outcomes
        ]
    if kind == "run_gates" and isinstance(result, GateReport):
        where = {"task_id": task_id or "_integration", "attempt": getattr(arg, "attempt", 0), "sha": result.sha}
        return [("gate", {**where, "gate": g.gate, "passed": g.passed, "summary": g.summary}) for g in result.results]
    if kind == "merge_task":
        return [("merge", {"task_id": task_id, "merged": result.merged, "sha": result.integration_sha})]
    if kind == "ship_run" and isinstance(result, ShipResult):
        ship = {"mode": result.mode, "sha": result.shipped_sha, "target": result.target}
        return [("ship", {**ship, "pushed": result.pushed, "pull_request": result.pull_request_url})]
    if kind == "revert_shipped":
        return [("rollback", {"reverted_by": result, "shipped_sha": getattr(arg, "shipped_sha", "")})]
    return []


def _event(kind: str, key: str, data: dict[str, Any]) -> audit.Event:
    """An event of the running activity, with the ids that lead back to its place in the workflow history."""
    info = activity.info()
    return audit.Event(
        kind=kind,
        key=key,
        data=data,
        workflow_id=info.workflow_id or "",
        workflow_run_id=info.workflow_run_id or "",
        activity_id=info.activity_id,
        attempt=info.attempt,
    )


class AuditInterceptor(Interceptor):
    """Appends each activity's events to its run's trail in `home`."""

    def __init__(self, home: Path) -> None:
        self.home = home

    def intercept_activity(self, next: ActivityInboundInterceptor) -> ActivityInboundInterceptor:
        return _AuditInbound(next, self.home)


class _AuditInbound(ActivityInboundInterceptor):
    def __init__(self, next: ActivityInboundInterceptor, home: Path) -> None:
        super().__init__(next)
        self.home = home

    async def execute_activity(self, input: ExecuteActivityInput) -> Any:
        result = await self.next.execute_activity(input)
        info = activity.info()
        arg = input.args[0] if input.args else None
        run_id = getattr(arg, "run_id", "")
        if not run_id:
            return result
        try:
            found = events_of(info.activity_type, arg, result)
            stem = f"{info.workflow_id}/{info.activity_id}/{info.attempt}"
            events = [_event(kind, f"{stem}/{index}", data) for index, (kind, data) in enumerate(found)]
            audit.append(self.home, run_id, events)
        except Exception as exc:  # the work is done; a trail that cannot be written must not undo it
            log.error("audit_write_failed", run_id=run_id, activity=info.activity_type, error=str(exc))
        return result


class AuditActivities:
    def __init__(self, home: Path) -> None:
        self.home = home

    @activity.defn
    def record_decision(self, input: AuditDecisionInput) -> None:
        """A person's (or the deadline's) decision, keyed by the deciding workflow and the decision's time."""
        info = activity.info()
        decision = input.decision
        data = {"task_id": input.task_id, "action": decision.action, "by": decision.by, "note": decision.note}
        data |= {"reason": decision.reason, "decided_at": decision.at.isoformat()}
        event = _event("decision", f"{info.workflow_id}/decision/{decision.at.isoformat()}", data)
        audit.append(self.home, input.run_id, [event])
