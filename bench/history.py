"""Where a run's time went, read from its Temporal histories (the run's and each task's)."""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from temporalio.api.history.v1 import HistoryEvent
from temporalio.client import Client

from darkfactory.constants import run_workflow_id, task_workflow_id
from darkfactory.contracts import RunState

_CLOSED = (
    "activity_task_completed_event_attributes",
    "activity_task_failed_event_attributes",
    "activity_task_timed_out_event_attributes",
    "activity_task_canceled_event_attributes",
)


@dataclass(frozen=True)
class Span:
    """One activity, from the moment the workflow scheduled it to the moment its result was recorded."""

    name: str
    scheduled_s: float
    closed_s: float
    started_s: float | None = None
    """When a worker picked it up (its last attempt); before that it waited for a slot."""
    task_id: str = ""
    """The `task_id` of its input, when it has one: for the run's `run_gates`, `_merge`/`_merge.1` are the merge
    queue's checks (`_merge.1`: a batch stacked on one being checked) and `_integration` the final verification."""

    @property
    def duration_s(self) -> float:
        return self.closed_s - self.scheduled_s

    @property
    def running_from_s(self) -> float:
        return self.scheduled_s if self.started_s is None else self.started_s


def _seconds(event: HistoryEvent) -> float:
    return event.event_time.seconds + event.event_time.nanos / 1e9


def activity_spans(events: list[HistoryEvent]) -> list[Span]:
    scheduled: dict[int, tuple[str, float, str]] = {}
    started: dict[int, float] = {}
    spans: list[Span] = []
    for event in events:
        if event.HasField("activity_task_scheduled_event_attributes"):
            attrs = event.activity_task_scheduled_event_attributes
            scheduled[event.event_id] = (attrs.activity_type.name, _seconds(event), _input_task_id(attrs))
            continue
        if event.HasField("activity_task_started_event_attributes"):
            started[event.activity_task_started_event_attributes.scheduled_event_id] = _seconds(event)
            continue
        for field in _CLOSED:
            if event.HasField(field):
                scheduled_id = getattr(event, field).scheduled_event_id
                name, at, task_id = scheduled[scheduled_id]
                spans.append(Span(name, at, _seconds(event), started.get(scheduled_id), task_id))
    return spans


def _input_task_id(attrs: Any) -> str:
    if not attrs.input.payloads:
        return ""
    try:
        given = json.loads(attrs.input.payloads[0].data)
    except ValueError:
        return ""
    return str(given.get("task_id", "")) if isinstance(given, dict) else ""


def completed_results(events: list[HistoryEvent], activity: str) -> list[Any]:
    """The decoded results of `activity`'s completions (JSON payloads, as the pydantic converter writes them)."""
    names: dict[int, str] = {}
    results: list[Any] = []
    for event in events:
        if event.HasField("activity_task_scheduled_event_attributes"):
            names[event.event_id] = event.activity_task_scheduled_event_attributes.activity_type.name
        elif event.HasField("activity_task_completed_event_attributes"):
            done = event.activity_task_completed_event_attributes
            if names.get(done.scheduled_event_id) == activity and done.result.payloads:
                results.append(json.loads(done.result.payloads[0].data))
    return results


@dataclass(frozen=True)
class SuiteRuns:
    """Tests-gate results among a run's `run_gates` completions."""

    tests: int
    """Every tests GateResult."""
    full_suite: int
    """Those with `full_suite: true`: the repository's whole suite ran."""


def suite_runs(all_events: Iterable[list[HistoryEvent]]) -> SuiteRuns:
    tests = full = 0
    for events in all_events:
        for report in completed_results(events, "run_gates"):
            for result in report.get("results", []):
                if result.get("gate") == "tests":
                    tests += 1
                    full += bool(result.get("full_suite"))
    return SuiteRuns(tests, full)


def stacked_checks(events: list[HistoryEvent]) -> int:
    """The merge queue's checks of batches stacked on one still being checked (those run in `_merge.1`)."""
    return sum(span.name == "run_gates" and span.task_id == "_merge.1" for span in activity_spans(events))


async def histories(client: Client, summary: RunState, *, tasks: bool = True) -> list[list[HistoryEvent]]:
    """The events of the run's history and (with `tasks`) of each task workflow's, one list per history."""
    ids = [run_workflow_id(summary.run_id)]
    if tasks:
        ids += [task_workflow_id(summary.run_id, t.id) for t in summary.tasks]
    return [list((await client.get_workflow_handle(i).fetch_history()).events) for i in ids]


async def run_spans(client: Client, summary: RunState, *, tasks: bool = True) -> list[Span]:
    """Every activity span of the run and (with `tasks`) of its task workflows."""
    return [span for events in await histories(client, summary, tasks=tasks) for span in activity_spans(events)]


async def workflow_task_timeouts(client: Client, summary: RunState) -> int:
    """Workflow tasks that timed out: after a kill, those left on the dead worker's sticky queue."""
    return sum(
        event.HasField("workflow_task_timed_out_event_attributes")
        for events in await histories(client, summary)
        for event in events
    )


CATEGORIES = {
    "run_gates": "gates",
    "plan_run": "model",
    "agent_turn": "model",
    "review_change": "model",
    "write_acceptance_tests": "model",
}
"""Activity -> category; everything else is git and tools."""
GATE_ACTIVITIES = ("run_gates", "measure_base")


def by_category(spans: list[Span]) -> dict[str, float]:
    """Summed span time per category: gates, model, git+tools."""
    totals: dict[str, float] = defaultdict(float)
    for span in spans:
        totals[CATEGORIES.get(span.name, "git+tools")] += span.duration_s
    return dict(totals)


def union_s(intervals: Iterable[tuple[float, float]]) -> float:
    """Seconds covered by at least one interval."""
    total = 0.0
    end = float("-inf")
    for a, b in sorted(intervals):
        if b > end:
            total += b - max(a, end)
            end = b
    return total


def wall_shares(spans: list[Span], start: float, end: float) -> dict[str, float]:
    """Splits [start, end] by what was running: a gate activity (`run_gates`, `measure_base`), else a model call
    (the model activities), else neither. Values are seconds and add up to end - start."""
    window = [(max(s.running_from_s, start), min(s.closed_s, end)) for s in spans]
    gates = [w for w, s in zip(window, spans, strict=True) if s.name in GATE_ACTIVITIES and w[1] > w[0]]
    model = [w for w, s in zip(window, spans, strict=True) if CATEGORIES.get(s.name) == "model" and w[1] > w[0]]
    gates_s = union_s(gates)
    either_s = union_s(gates + model)
    return {"gates": gates_s, "model only": either_s - gates_s, "model": union_s(model), "rest": end - start - either_s}


def gate_seconds(summary: RunState) -> dict[str, float]:
    """Summed duration per gate over every task's last attempt and the integration verification."""
    totals: dict[str, float] = defaultdict(float)
    for result in [*(g for t in summary.tasks for g in t.gates), *summary.final_gates]:
        totals[result.gate] += result.duration_s or 0.0
    return dict(totals)
