"""Where a run's time went, read from its Temporal histories (the run's and each task's)."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

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

    @property
    def duration_s(self) -> float:
        return self.closed_s - self.scheduled_s


def _seconds(event: HistoryEvent) -> float:
    return event.event_time.seconds + event.event_time.nanos / 1e9


def activity_spans(events: list[HistoryEvent]) -> list[Span]:
    scheduled: dict[int, tuple[str, float]] = {}
    spans: list[Span] = []
    for event in events:
        if event.HasField("activity_task_scheduled_event_attributes"):
            name = event.activity_task_scheduled_event_attributes.activity_type.name
            scheduled[event.event_id] = (name, _seconds(event))
            continue
        for field in _CLOSED:
            if event.HasField(field):
                name, at = scheduled[getattr(event, field).scheduled_event_id]
                spans.append(Span(name, at, _seconds(event)))
    return spans


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


def by_category(spans: list[Span]) -> dict[str, float]:
    """Summed span time per category: gates, model, git+tools."""
    totals: dict[str, float] = defaultdict(float)
    for span in spans:
        totals[CATEGORIES.get(span.name, "git+tools")] += span.duration_s
    return dict(totals)


def gate_seconds(summary: RunState) -> dict[str, float]:
    """Summed duration per gate over every task's last attempt and the integration verification."""
    totals: dict[str, float] = defaultdict(float)
    for result in [*(g for t in summary.tasks for g in t.gates), *summary.final_gates]:
        totals[result.gate] += result.duration_s or 0.0
    return dict(totals)
