"""A run's report, built from what the run recorded: pure functions, no I/O.

The CLI gathers the facts (`factory_cli/report.py` reads the run's summary and its workflows' histories);
this module turns them into one `RunReport`: the plan's DAG with each task's state, each task's attempts
with their gates, the reviewer's findings and the feedback each attempt was given, a timeline, tokens,
cache-read share and cost, and web-UI links. The same model is printed as text, dumped as JSON and
rendered as one self-contained HTML file (the DAG as SVG laid out here, so the page needs no script).
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal
from urllib.parse import quote

import jinja2
from pydantic import Field

from darkfactory.contracts import (
    Decision,
    Frozen,
    GateResult,
    Plan,
    ReviewVerdict,
    RunState,
    TaskResult,
    TaskSummary,
    Usage,
)
from darkfactory.pricing import estimate_cost_usd

STATE_COLOURS: dict[str, str] = {
    "merged": "#2e8b57",
    "running": "#2f6fd6",
    "pending": "#8c96a0",
    "escalated": "#d99a00",
    "failed": "#c8373c",
    "rejected": "#9c3587",
    "cancelled": "#5f6670",
    "shipped": "#2e8b57",
}
"""Node fill per task state, in the HTML's DAG and badges (a test looks for the merged colour's pixels)."""

PHASE_OF_STEP: dict[str, str] = {
    "prepare_run": "preparing",
    "measure_base": "measuring",
    "plan_run": "planning",
    "merge_task": "running",
    "run_gates:integration": "verifying",
    "ship_run": "shipping",
    "run_gates:post_ship": "checking",
    "revert_shipped": "shipping",
    "release_workspaces": "cleaning up",
}
"""A run workflow's activity (`name:detail` first) -> the phase of the timeline it belongs to."""


# -- the facts, as gathered from Temporal ---------------------------------------------------------------


class StepFacts(Frozen):
    """One activity of the run's workflow, as its history recorded it."""

    name: str
    detail: str = ""
    """What distinguishes it from others of its name (a gate run's purpose)."""
    started: datetime
    ended: datetime | None = None


class AttemptFacts(Frozen):
    """What a task's history says about one attempt."""

    attempt: int
    started: datetime | None = None
    ended: datetime | None = None
    feedback: str = ""
    """The feedback the attempt's first model request carried (gate failures, a person's guidance)."""
    turns: int = 0
    gates: list[GateResult] = Field(default_factory=list)
    """The gates so far (the result's record wins once the task has ended)."""
    review: ReviewVerdict | None = None
    usage: Usage = Field(default_factory=Usage)


class TaskRunFacts(Frozen):
    """One execution of a task's workflow: a task has one per merge round."""

    task_id: str
    workflow_id: str
    run_id: str
    started: datetime
    ended: datetime | None = None
    result: TaskResult | None = None
    attempts: list[AttemptFacts] = Field(default_factory=list)


class RunFacts(Frozen):
    """Everything the report is built from."""

    state: RunState
    plan: Plan | None
    workflow_id: str
    run_id: str
    """The Temporal run id of the run's workflow."""
    started: datetime
    ended: datetime | None = None
    steps: list[StepFacts] = Field(default_factory=list)
    tasks: list[TaskRunFacts] = Field(default_factory=list)
    namespace: str = "default"
    ui_url: str | None = None
    """The Temporal web UI's base URL; None: no links."""


# -- the report -------------------------------------------------------------------------------------------


class Cost(Frozen):
    usd: float | None = None
    """None: unknown, or nothing was paid for (a scripted run); never a made-up $0."""
    status: Literal["estimated", "unknown", "none"]
    note: str

    @property
    def text(self) -> str:
        return f"${self.usd:.4f}" if self.usd is not None else self.status


class AttemptView(Frozen):
    attempt: int
    merge_round: int
    started: datetime | None = None
    ended: datetime | None = None
    duration_s: float | None = None
    turns: int = 0
    stop: str = ""
    """`end_turn` or `turn_limit`; empty while the attempt runs."""
    passed: bool | None = None
    """None: no gate verdict yet."""
    gates: list[GateResult] = Field(default_factory=list)
    feedback: str = ""
    review: ReviewVerdict | None = None
    usage: Usage = Field(default_factory=Usage)
    sha: str = ""


class TaskView(Frozen):
    id: str
    title: str
    type: str = ""
    state: str
    reason: str = ""
    depends_on: list[str] = Field(default_factory=list)
    depth: int = 0
    """Layer in the DAG: 0 for no dependencies, else one more than the deepest dependency."""
    attempts: list[AttemptView] = Field(default_factory=list)
    usage: Usage = Field(default_factory=Usage)
    cache_read_share: float | None = None
    cost: Cost
    started: datetime | None = None
    ended: datetime | None = None
    links: list[str] = Field(default_factory=list)
    """The web UI's page of each of the task's workflow executions."""
    decisions: list[Decision] = Field(default_factory=list)
    notes: list[str] = Field(default_factory=list)


class Edge(Frozen):
    source: str
    target: str
    """`target` depends on `source`."""


class TimelineEntry(Frozen):
    kind: Literal["phase", "task", "attempt"]
    label: str
    task_id: str | None = None
    start: datetime
    end: datetime | None = None
    offset_s: float
    """Seconds from the run's start."""
    duration_s: float | None = None


class RunReport(Frozen):
    run_id: str
    workflow_id: str
    phase: str
    succeeded: bool
    error: str = ""
    model: str
    scripted: bool
    repo_path: str
    base_branch: str
    plan_summary: str = ""
    integration_branch: str | None = None
    shipped_sha: str | None = None
    shipped_to: str = ""
    pull_request_url: str | None = None
    started: datetime
    ended: datetime | None = None
    duration_s: float | None = None
    tasks: list[TaskView]
    edges: list[Edge]
    timeline: list[TimelineEntry]
    final_gates: list[GateResult] = Field(default_factory=list)
    usage: Usage
    cache_read_share: float | None = None
    """Cache-read input tokens over all input tokens (uncached, cache writes and reads); None: no input."""
    cost: Cost
    cost_per_merged_task: Cost
    """The whole run's cost (planning, failed attempts and reviews included) over the tasks it merged."""
    cost_by_purpose: dict[str, Cost] = Field(default_factory=dict)
    """Planning, agent turns, reviews and acceptance tests."""
    link: str | None = None
    """The run's page in the web UI."""


def cost_of(model: str, scripted: bool, usage: Usage) -> Cost:
    """As priced when each call was made; usage recorded before calls were priced is estimated at today's list
    price of the run's model. Unknown (never $0) when a call has no price; nothing for a scripted run."""
    if scripted:
        return Cost(status="none", note="a scripted run calls no model")
    usd, note = usage.cost, "at list prices when each call was made"
    if usage.calls and not usage.priced_calls:
        usd, note = estimate_cost_usd(model, usage), f"estimated at today's list price of {model}"
    if usd is None:
        return Cost(status="unknown", note=f"no price on file for a model this used (the run's is {model})")
    return Cost(usd=usd, status="estimated", note=note)


def _per_merged(cost: Cost, merged: int) -> Cost:
    if cost.usd is None:
        return cost
    if not merged:
        return Cost(status="none", note="no task merged")
    return cost.model_copy(update={"usd": cost.usd / merged, "note": f"{cost.note}, over {merged} merged task(s)"})


def workflow_link(facts: RunFacts, workflow_id: str, run_id: str) -> str | None:
    if facts.ui_url is None:
        return None
    base = facts.ui_url.rstrip("/")
    return (
        f"{base}/namespaces/{quote(facts.namespace, safe='')}/workflows/{quote(workflow_id, safe='')}/{run_id}/history"
    )


def _seconds(start: datetime | None, end: datetime | None) -> float | None:
    return round((end - start).total_seconds(), 3) if start is not None and end is not None else None


def _depths(dependencies: dict[str, list[str]]) -> dict[str, int]:
    depths: dict[str, int] = {}

    def depth(task_id: str, path: frozenset[str]) -> int:
        if task_id not in depths:
            known = [d for d in dependencies.get(task_id, []) if d in dependencies and d not in path]
            depths[task_id] = 1 + max((depth(d, path | {task_id}) for d in known), default=-1)
        return depths[task_id]

    for task_id in dependencies:
        depth(task_id, frozenset())
    return depths


def _attempts(runs: list[TaskRunFacts]) -> list[AttemptView]:
    views: list[AttemptView] = []
    for merge_round, execution in enumerate(runs, start=1):
        records = {r.attempt: r for r in execution.result.attempts} if execution.result else {}
        seen = {a.attempt: a for a in execution.attempts}
        for number in sorted(set(records) | set(seen)):
            record, facts = records.get(number), seen.get(number) or AttemptFacts(attempt=number)
            gates = record.gates if record else facts.gates
            views.append(
                AttemptView(
                    attempt=number,
                    merge_round=merge_round,
                    started=facts.started,
                    ended=facts.ended,
                    duration_s=_seconds(facts.started, facts.ended),
                    turns=record.turns if record else facts.turns,
                    stop=record.stop if record else "",
                    passed=all(g.passed for g in gates) if gates else None,
                    gates=gates,
                    feedback=facts.feedback,
                    review=facts.review,
                    usage=record.usage if record else facts.usage,
                    sha=record.final_sha if record else "",
                )
            )
    return views


def _task_view(facts: RunFacts, summary: TaskSummary, depends_on: list[str], depth: int, kind: str) -> TaskView:
    runs = [t for t in facts.tasks if t.task_id == summary.id]
    links = [link for t in runs if (link := workflow_link(facts, t.workflow_id, t.run_id))]
    ends = [t.ended for t in runs]
    return TaskView(
        id=summary.id,
        title=summary.title,
        type=kind,
        state=summary.state,
        reason=summary.reason,
        depends_on=depends_on,
        depth=depth,
        attempts=_attempts(runs),
        usage=summary.usage,
        cache_read_share=summary.usage.cache_read_share,
        cost=cost_of(facts.state.model, facts.state.scripted, summary.usage),
        started=runs[0].started if runs else None,
        ended=ends[-1] if ends and None not in ends else None,
        links=links,
        decisions=summary.decisions,
        notes=summary.notes,
    )


def _timeline(facts: RunFacts, tasks: list[TaskView]) -> list[TimelineEntry]:
    spans: dict[str, tuple[datetime, datetime | None]] = {}

    def widen(label: str, start: datetime, end: datetime | None) -> None:
        if label in spans:
            first, last = spans[label]
            end = None if end is None or last is None else max(end, last)
            start = min(start, first)
        spans[label] = (start, end)

    for step in facts.steps:
        label = PHASE_OF_STEP.get(f"{step.name}:{step.detail}") or PHASE_OF_STEP.get(step.name, step.name)
        widen(label, step.started, step.ended)
    for execution in facts.tasks:
        widen("running", execution.started, execution.ended)

    def entry(
        kind: Literal["phase", "task", "attempt"],
        label: str,
        start: datetime,
        end: datetime | None,
        task_id: str | None = None,
    ) -> TimelineEntry:
        offset = _seconds(facts.started, start) or 0.0
        return TimelineEntry(
            kind=kind,
            label=label,
            task_id=task_id,
            start=start,
            end=end,
            offset_s=offset,
            duration_s=_seconds(start, end),
        )

    entries = [entry("phase", label, start, end) for label, (start, end) in spans.items()]
    for task in tasks:
        if task.started is not None:
            entries.append(entry("task", f"task {task.id}", task.started, task.ended, task.id))
        for attempt in task.attempts:
            if attempt.started is not None:
                label = f"attempt {attempt.attempt} of {task.id}"
                entries.append(entry("attempt", label, attempt.started, attempt.ended, task.id))
    return sorted(entries, key=lambda e: (e.start, ("phase", "task", "attempt").index(e.kind)))


def build_report(facts: RunFacts) -> RunReport:
    state = facts.state
    planned = {task.id: task for task in facts.plan.tasks} if facts.plan is not None else {}
    dependencies = {t.id: list(planned[t.id].depends_on) if t.id in planned else [] for t in state.tasks}
    depths = _depths(dependencies)
    tasks = [
        _task_view(facts, t, dependencies[t.id], depths[t.id], planned[t.id].type if t.id in planned else "")
        for t in state.tasks
    ]
    edges = [Edge(source=dep, target=t.id) for t in tasks for dep in t.depends_on if dep in dependencies]
    run_cost = cost_of(state.model, state.scripted, state.usage)
    merged = sum(1 for t in tasks if t.state == "merged")
    by_purpose = sorted(state.usage.by_purpose.items())
    return RunReport(
        run_id=state.run_id,
        workflow_id=facts.workflow_id,
        phase=state.phase,
        succeeded=state.succeeded,
        error=state.error,
        model=state.model,
        scripted=state.scripted,
        repo_path=state.repo_path,
        base_branch=state.base_branch,
        plan_summary=state.plan_summary,
        integration_branch=state.integration_branch,
        shipped_sha=state.shipped_sha,
        shipped_to=state.shipped_to,
        pull_request_url=state.pull_request_url,
        started=facts.started,
        ended=facts.ended,
        duration_s=_seconds(facts.started, facts.ended),
        tasks=tasks,
        edges=edges,
        timeline=_timeline(facts, tasks),
        final_gates=state.final_gates,
        usage=state.usage,
        cache_read_share=state.usage.cache_read_share,
        cost=run_cost,
        cost_per_merged_task=_per_merged(run_cost, merged),
        cost_by_purpose={purpose: cost_of(state.model, state.scripted, part) for purpose, part in by_purpose},
        link=workflow_link(facts, facts.workflow_id, facts.run_id),
    )


# -- the DAG's picture ---------------------------------------------------------------------------------


NODE_W, NODE_H, GAP_X, GAP_Y, MARGIN = 220, 64, 90, 28, 20


class NodeBox(Frozen):
    id: str
    title: str
    state: str
    fill: str
    x: int
    y: int
    attempts: int


class DagLayout(Frozen):
    width: int
    height: int
    node_w: int = NODE_W
    node_h: int = NODE_H
    nodes: list[NodeBox]
    paths: list[str]
    """SVG path data of each dependency arrow, from the dependency to the dependent task."""


def layout_dag(report: RunReport) -> DagLayout:
    """Layered left to right by dependency depth; within a layer in plan order."""
    layers: dict[int, list[TaskView]] = {}
    for task in report.tasks:
        layers.setdefault(task.depth, []).append(task)
    boxes: dict[str, NodeBox] = {}
    for depth, members in layers.items():
        for row, task in enumerate(members):
            boxes[task.id] = NodeBox(
                id=task.id,
                title=task.title,
                state=task.state,
                fill=STATE_COLOURS.get(task.state, STATE_COLOURS["pending"]),
                x=MARGIN + depth * (NODE_W + GAP_X),
                y=MARGIN + row * (NODE_H + GAP_Y),
                attempts=len(task.attempts),
            )
    paths = []
    for edge in report.edges:
        a, b = boxes[edge.source], boxes[edge.target]
        x1, y1, x2, y2 = a.x + NODE_W, a.y + NODE_H // 2, b.x - 2, b.y + NODE_H // 2
        middle = (x1 + x2) // 2
        paths.append(f"M{x1},{y1} C{middle},{y1} {middle},{y2} {x2},{y2}")
    columns = max(layers, default=0) + 1
    rows = max((len(members) for members in layers.values()), default=1)
    return DagLayout(
        width=2 * MARGIN + columns * NODE_W + (columns - 1) * GAP_X,
        height=2 * MARGIN + rows * NODE_H + (rows - 1) * GAP_Y,
        nodes=list(boxes.values()),
        paths=paths,
    )


def render_html(report: RunReport) -> str:
    """One self-contained page: inline CSS and SVG, no script, no external resource but the web-UI links."""
    environment = jinja2.Environment(
        loader=jinja2.PackageLoader("darkfactory", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    span = max((e.offset_s + (e.duration_s or 0.0) for e in report.timeline), default=0.0) or 1.0
    return environment.get_template("report.html.j2").render(
        report=report, dag=layout_dag(report), colours=STATE_COLOURS, span=span
    )
