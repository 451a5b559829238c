"""Reports: `factory report RUN [--html FILE] [--json]`, what a run did, from its summary and its histories.

The run's summary (its result, or the `status` query while it runs) gives states and tokens; the
workflows' histories give what the summary does not keep: the plan's dependencies, the feedback each
attempt was given, the reviewer's findings, and when each phase, task and attempt started and ended.
Text by default; `--json` for machines; `--html FILE` for one page that works offline.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from darkfactory.cli.history import decode_first
from darkfactory.cli.session import fail, find_run, open_session, seconds
from darkfactory.constants import task_workflow_id

if TYPE_CHECKING:
    from rich.console import Console
    from temporalio.api.history.v1 import HistoryEvent
    from temporalio.client import Client, WorkflowHistory

    from darkfactory.contracts import AgentTurnInput, ReviewInput, RunGatesInput, RunState
    from darkfactory.run_report import AttemptView, RunFacts, RunReport, TaskRunFacts, TaskView

# The Temporal SDK, the contracts and the workflows are imported where they are used: the `factory` CLI
# imports this module to list its commands, and that should not cost seconds.

app = typer.Typer()
FEEDBACK_LINES = 8
"""Lines of an attempt's feedback the text report shows (the JSON and HTML carry all of it)."""


def attempt_inputs() -> dict[str, type[AgentTurnInput | RunGatesInput | ReviewInput]]:
    """A task's activities that belong to an attempt, and the input that says which."""
    from darkfactory.contracts import AgentTurnInput, ReviewInput, RunGatesInput

    return {"agent_turn": AgentTurnInput, "run_gates": RunGatesInput, "review_change": ReviewInput}


@app.command()
def report(
    run_id: str = typer.Argument(..., metavar="RUN_ID", help="The run id (with or without the run- prefix)."),
    html: Path | None = typer.Option(None, "--html", help="Write a self-contained HTML report to this file."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """What a run did: the plan's DAG, each task's attempts and gates, findings, feedback, timeline, cost."""
    if html is not None and not html.parent.is_dir():
        fail(f"cannot write {html}: the directory {html.parent} does not exist")
    from rich.console import Console

    from darkfactory.run_report import render_html

    result = asyncio.run(gather_report(run_id))
    if html is not None:
        html.write_text(render_html(result), encoding="utf-8")
    if as_json:
        print(result.model_dump_json(indent=2))
    elif html is not None:
        typer.echo(f"report written to {html}")
    else:
        print_report(Console(), result)


async def gather_report(run_id: str) -> RunReport:
    from darkfactory.run_report import build_report

    session = await open_session()
    workflow_id = await find_run(session.client, run_id)
    if workflow_id is None:
        fail(f"no run with id {run_id} in namespace {session.client.namespace}; `factory runs` lists them")
    facts = await gather(session.client, workflow_id, session.ui_url)
    return build_report(facts)


async def gather(client: Client, workflow_id: str, ui_url: str | None) -> RunFacts:
    from temporalio.client import WorkflowExecutionStatus
    from temporalio.service import RPCError

    from darkfactory.contracts import PlanResult, RunGatesInput
    from darkfactory.run_report import RunFacts, StepFacts
    from darkfactory.workflows import FactoryRunWorkflow

    handle = client.get_workflow_handle_for(FactoryRunWorkflow.run, workflow_id)
    description = await handle.describe()
    state: RunState | None = None
    if description.status == WorkflowExecutionStatus.COMPLETED:
        state = await handle.result()
    else:
        try:
            state = await handle.query(FactoryRunWorkflow.status, rpc_timeout=seconds(5))
        except RPCError:
            state = None
    if state is None:
        status = description.status.name.lower() if description.status is not None else "unknown"
        fail(
            f"run {workflow_id} ({status}) has no state yet, or no worker answers for it; start `factory-worker "
            f"--task-queue {description.task_queue}`"
        )
    history = await client.get_workflow_handle(workflow_id, run_id=description.run_id).fetch_history()
    plan: PlanResult | None = None
    steps: list[StepFacts] = []
    children: list[tuple[str, str]] = []
    for event, end in _activities(history):
        name = event.activity_task_scheduled_event_attributes.activity_type.name
        detail = ""
        if name == "run_gates":
            gates_input = await decode_first(
                client, event.activity_task_scheduled_event_attributes.input, RunGatesInput
            )
            detail = gates_input.purpose if gates_input is not None else ""
        if name == "plan_run" and end is not None and end.HasField("activity_task_completed_event_attributes"):
            plan = await decode_first(client, end.activity_task_completed_event_attributes.result, PlanResult) or plan
        steps.append(StepFacts(name=name, detail=detail, started=_time(event), ended=_time(end) if end else None))
    for event in history.events:
        if event.HasField("child_workflow_execution_started_event_attributes"):
            execution = event.child_workflow_execution_started_event_attributes.workflow_execution
            children.append((execution.workflow_id, execution.run_id))
    tasks = [await _task_run(client, state, child_id, child_run) for child_id, child_run in children]
    return RunFacts(
        state=state,
        plan=plan.plan if plan is not None else None,
        workflow_id=workflow_id,
        run_id=description.run_id or "",
        started=_time(history.events[0]),
        ended=_closed(history),
        steps=steps,
        tasks=[task for task in tasks if task is not None],
        namespace=client.namespace,
        ui_url=ui_url,
    )


async def _task_run(client: Client, state: RunState, workflow_id: str, run_id: str) -> TaskRunFacts | None:
    from darkfactory.contracts import (
        AgentTurnInput,
        AgentTurnResult,
        GateReport,
        GateResult,
        ReviewInput,
        ReviewResult,
        RunGatesInput,
        TaskResult,
        Usage,
    )
    from darkfactory.run_report import AttemptFacts, TaskRunFacts

    task_id = next((t.id for t in state.tasks if task_workflow_id(state.run_id, t.id) == workflow_id), None)
    if task_id is None:
        return None
    history = await client.get_workflow_handle(workflow_id, run_id=run_id).fetch_history()
    attempts: dict[int, dict[str, Any]] = {}
    for event, end in _activities(history):
        scheduled = event.activity_task_scheduled_event_attributes
        kind = attempt_inputs().get(scheduled.activity_type.name)
        arg = await decode_first(client, scheduled.input, kind) if kind is not None else None
        if arg is None:
            continue
        facts = attempts.setdefault(arg.attempt, {"attempt": arg.attempt, "started": _time(event), "gates": []})
        facts["ended"] = _time(end) if end is not None else None
        if isinstance(arg, AgentTurnInput):
            facts["turns"] = max(facts.get("turns", 0), arg.turn)
            if arg.brief is not None:
                facts["feedback"] = arg.brief.feedback
        if end is None or not end.HasField("activity_task_completed_event_attributes"):
            continue
        done = end.activity_task_completed_event_attributes.result
        if isinstance(arg, AgentTurnInput) and (answer := await decode_first(client, done, AgentTurnResult)):
            facts["usage"] = facts.get("usage", Usage()) + answer.usage
        elif isinstance(arg, RunGatesInput) and (gates := await decode_first(client, done, GateReport)):
            facts["gates"] = list(gates.results)
        elif isinstance(arg, ReviewInput) and (review := await decode_first(client, done, ReviewResult)):
            verdict = review.verdict
            facts["review"] = verdict
            facts["usage"] = facts.get("usage", Usage()) + review.usage
            facts["gates"] = [
                *facts["gates"],
                GateResult(gate="review", passed=verdict.verdict == "approve", summary=verdict.summary),
            ]
    result = None
    closing = history.events[-1] if history.events else None
    if closing is not None and closing.HasField("workflow_execution_completed_event_attributes"):
        result = await decode_first(client, closing.workflow_execution_completed_event_attributes.result, TaskResult)
    return TaskRunFacts(
        task_id=task_id,
        workflow_id=workflow_id,
        run_id=run_id,
        started=_time(history.events[0]),
        ended=_closed(history),
        result=result,
        attempts=[AttemptFacts.model_validate(facts) for facts in attempts.values()],
    )


def _activities(history: WorkflowHistory) -> list[tuple[HistoryEvent, HistoryEvent | None]]:
    """Each activity's scheduled event with the event that ended it (None while it runs)."""
    scheduled: dict[int, HistoryEvent] = {}
    ended: dict[int, HistoryEvent] = {}
    for event in history.events:
        if event.HasField("activity_task_scheduled_event_attributes"):
            scheduled[event.event_id] = event
        for attributes in (
            event.activity_task_completed_event_attributes,
            event.activity_task_failed_event_attributes,
            event.activity_task_timed_out_event_attributes,
            event.activity_task_canceled_event_attributes,
        ):
            if attributes.scheduled_event_id:
                ended[attributes.scheduled_event_id] = event
    return [(event, ended.get(event_id)) for event_id, event in scheduled.items()]


def _closed(history: WorkflowHistory) -> datetime | None:
    last = history.events[-1] if history.events else None
    if last is None:
        return None
    closing = (
        "workflow_execution_completed_event_attributes",
        "workflow_execution_failed_event_attributes",
        "workflow_execution_timed_out_event_attributes",
        "workflow_execution_terminated_event_attributes",
        "workflow_execution_canceled_event_attributes",
        "workflow_execution_continued_as_new_event_attributes",
    )
    return _time(last) if last.WhichOneof("attributes") in closing else None


def _time(event: HistoryEvent) -> datetime:
    return event.event_time.ToDatetime(tzinfo=UTC)


# -- text ------------------------------------------------------------------------------------------------


def _share(value: float | None) -> str:
    return f"{value:.1%}" if value is not None else "n/a"


def _duration(value: float | None) -> str:
    return f"{value:.1f} s" if value is not None else "running"


def _link(console: Console, label: str, url: str) -> None:
    # A link on a line of its own, never wrapped or cropped, so it stays clickable and copyable at any width.
    console.print(f"{label}{url}", soft_wrap=True, crop=False, overflow="ignore", highlight=False, markup=False)


def print_report(console: Console, report: RunReport) -> None:
    from rich.table import Table

    verdict = "[bold green]shipped[/]" if report.succeeded else f"[bold red]{report.phase}[/]"
    console.print(f"Run [bold]{report.run_id}[/]: {verdict} ({_duration(report.duration_s)})", highlight=False)
    if report.error:
        console.print(report.error, style="red", highlight=False, markup=False)
    if report.plan_summary:
        console.print(f"Plan: {report.plan_summary}", highlight=False, markup=False)
    usage = report.usage
    model = "scripted (recorded transcript, not Claude)" if report.scripted else report.model
    console.print(
        f"Model {model}: {usage.calls} call(s), {usage.total_tokens} tokens ({usage.input_tokens} input, "
        f"{usage.output_tokens} output, {usage.cache_creation_input_tokens} cache-write, "
        f"{usage.cache_read_input_tokens} cache-read); cache-read share {_share(report.cache_read_share)}; "
        f"cost {report.cost.text} ({report.cost.note})",
        highlight=False,
        markup=False,
    )
    parts = [f"{purpose} {cost.text}" for purpose, cost in report.cost_by_purpose.items()]
    per_merged = report.cost_per_merged_task
    console.print(
        f"Cost per merged task: {per_merged.text}" + (f"; by purpose: {', '.join(parts)}" if parts else ""),
        highlight=False,
        markup=False,
    )
    console.print("\n[bold]DAG[/] (by dependency depth)")
    for depth in sorted({t.depth for t in report.tasks}):
        for task in (t for t in report.tasks if t.depth == depth):
            after = f" <- {', '.join(task.depends_on)}" if task.depends_on else ""
            console.print(f"  {'   ' * depth}{task.id} ({task.state}){after}", highlight=False, markup=False)
    table = Table(show_lines=False)
    # Task ids stay whole (people copy them into `factory approve`); the other columns give way.
    table.add_column("task", no_wrap=True, min_width=max((len(t.id) for t in report.tasks), default=4))
    table.add_column("state", no_wrap=True)
    table.add_column("depends on", overflow="fold")
    for column in ("attempts", "tokens", "cached", "cost", "time"):
        table.add_column(column)
    for task in report.tasks:
        time = _duration((task.ended - task.started).total_seconds()) if task.started and task.ended else "-"
        table.add_row(
            task.id,
            task.state,
            ", ".join(task.depends_on) or "-",
            str(len(task.attempts)),
            str(task.usage.total_tokens),
            _share(task.cache_read_share),
            task.cost.text,
            time,
        )
    if report.tasks:
        console.print(table)
    for task in report.tasks:
        _print_task(console, task)
    _print_timeline(console, report)
    if report.final_gates:
        gates = " ".join(f"{g.gate}:{'ok' if g.passed else 'FAIL'}" for g in report.final_gates)
        console.print(f"\nIntegration gates: {gates}", highlight=False, markup=False)
    if report.shipped_sha:
        console.print(
            f"Shipped {report.shipped_sha[:12]} to {report.shipped_to or report.base_branch}", highlight=False
        )
    if report.pull_request_url:
        _link(console, "Pull request: ", report.pull_request_url)
    if report.link:
        _link(console, "Web UI: ", report.link)


def _print_task(console: Console, task: TaskView) -> None:
    from rich.markup import escape

    console.print(f"\n[bold]{escape(task.id)}[/]: {escape(task.title)} ({task.state})", highlight=False)
    if task.reason:
        console.print(f"  {task.reason}", highlight=False, markup=False)
    for attempt in task.attempts:
        _print_attempt(console, attempt)
    for decision in task.decisions:
        console.print(
            f"  decision: {decision.action} by {decision.by} at {decision.at:%Y-%m-%d %H:%M} UTC {decision.note}",
            highlight=False,
            markup=False,
        )
    for note in task.notes:
        console.print(f"  note: {note}", highlight=False, markup=False)
    for link in task.links:
        _link(console, "  web UI: ", link)


def _print_attempt(console: Console, attempt: AttemptView) -> None:
    verdict = {True: "passed", False: "failed", None: "in progress"}[attempt.passed]
    console.print(
        f"  attempt {attempt.attempt} (round {attempt.merge_round}): {verdict}, {attempt.turns} turn(s), "
        f"{attempt.usage.total_tokens} tokens, {_duration(attempt.duration_s)}",
        highlight=False,
        markup=False,
    )
    if attempt.feedback:
        lines = attempt.feedback.splitlines()
        console.print("    feedback given:", highlight=False)
        for line in lines[:FEEDBACK_LINES]:
            console.print(f"      {line}", highlight=False, markup=False)
        if len(lines) > FEEDBACK_LINES:
            console.print(f"      ... {len(lines) - FEEDBACK_LINES} more line(s) (--json or --html has them)")
    for gate in attempt.gates:
        mark = "ok  " if gate.passed else "FAIL"
        console.print(f"    {mark} {gate.gate}: {gate.summary}", highlight=False, markup=False)
    if attempt.review is not None:
        console.print(
            f"    reviewer: {attempt.review.verdict}: {attempt.review.summary}", highlight=False, markup=False
        )
        for finding in attempt.review.findings:
            where = f"{finding.file}:{finding.line}" if finding.line else finding.file
            console.print(f"      [{finding.severity}] {where}: {finding.message}", highlight=False, markup=False)


def _print_timeline(console: Console, report: RunReport) -> None:
    if not report.timeline:
        return
    from rich.table import Table

    table = Table(title="Timeline", show_lines=False)
    for column in ("start", "duration", "what"):
        table.add_column(column)
    for entry in report.timeline:
        indent = {"phase": "", "task": "  ", "attempt": "    "}[entry.kind]
        table.add_row(f"+{entry.offset_s:.1f} s", _duration(entry.duration_s), f"{indent}{entry.label}")
    console.print()
    console.print(table)
