"""Traces of a run, read from an in-memory exporter: one trace from the client's start through the workflows,
their activities and each model call, with real durations, and nothing else (queries made while it runs start
no trace; a person's signal sent outside any span joins the run's); log lines written inside a span carry its ids."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import threading
import uuid
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from darkfactory.activities.tracing import configure_tracing
from darkfactory.constants import run_workflow_id, task_workflow_id
from darkfactory.contracts import DecisionInput, RunRequest, RunState
from darkfactory.settings import TemporalSettings
from darkfactory.testing.loopback import LoopbackServer
from darkfactory.worker import connect
from darkfactory.workflows import FactoryRunWorkflow
from tests.conftest import DEMO, escalation_of, factory_worker, request_for
from tests.test_escalation import never_passing
from tests.test_metrics import free_port, scrape, total

FACTORY_WORKER = Path(sys.executable).parent / "factory-worker"


@pytest.fixture(scope="module")
def exporter() -> InMemorySpanExporter:
    """The process's tracer provider (installed once; `connect` then adds Temporal's plugin) exporting here."""
    exporter = InMemorySpanExporter()
    assert configure_tracing("darkfactory-test", exporter=exporter)
    return exporter


class OtlpCollector(LoopbackServer):
    """Receives OTLP/HTTP trace exports (protobuf), as a collector would, and keeps the spans' names and ids."""

    thread_name = "otlp-collector"

    def __init__(self) -> None:
        super().__init__()
        self.spans: list[tuple[str, bytes, int]] = []
        """(name, trace id, duration in ns) of every span received."""
        self._spans_lock = threading.Lock()

    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

        body = handler.rfile.read(int(handler.headers["Content-Length"]))
        export = ExportTraceServiceRequest.FromString(body) if handler.path == "/v1/traces" else None
        if export is not None:
            with self._spans_lock:
                self.spans += [
                    (span.name, span.trace_id, span.end_time_unix_nano - span.start_time_unix_nano)
                    for resource in export.resource_spans
                    for scope in resource.scope_spans
                    for span in scope.spans
                ]
        handler.send_response(200 if export is not None else 404)
        handler.send_header("Content-Type", "application/x-protobuf")
        handler.send_header("Content-Length", "0")
        handler.end_headers()


def duration_ns(span: ReadableSpan) -> int:
    assert span.start_time is not None and span.end_time is not None
    return span.end_time - span.start_time


async def watched_to_end(client: Client, home: Path, request: RunRequest) -> tuple[RunState, int]:
    """Run `request` on a fresh task queue while polling it as `factory status` does (describe, then the status
    query) at every new event of its history; the summary and how many status queries were made."""
    task_queue = f"tq-{uuid.uuid4().hex}"
    queries = 0
    async with factory_worker(client, home, task_queue):
        handle = await client.start_workflow(
            FactoryRunWorkflow.run, request, id=run_workflow_id(request.run_id), task_queue=task_queue
        )
        async for event in handle.fetch_history_events(wait_new_event=True):
            if event.HasField("workflow_execution_completed_event_attributes"):
                break
            await handle.describe()
            await handle.query(FactoryRunWorkflow.status)
            queries += 1
        return await handle.result(), queries


def run_start(spans: list[ReadableSpan], request: RunRequest) -> ReadableSpan:
    return next(
        s
        for s in spans
        if s.name == "StartWorkflow:FactoryRunWorkflow"
        and (s.attributes or {}).get("temporalWorkflowID") == run_workflow_id(request.run_id)
    )


def ancestry(span: ReadableSpan, by_id: dict[int, ReadableSpan]) -> list[str]:
    """The names of `span` and its parents up to the trace's root."""
    names = [span.name]
    while span.parent is not None:
        span = by_id[span.parent.span_id]
        names.append(span.name)
    return names


async def test_a_run_is_one_trace_through_workflows_activities_and_model_calls_and_status_queries_add_none(
    temporal_env: WorkflowEnvironment,
    factory_home: Path,
    demo_repo: Path,
    exporter: InMemorySpanExporter,
    log_stream: io.StringIO,
) -> None:
    target = temporal_env.client.service_client.config.target_host
    client = await connect(TemporalSettings(address=target))
    request = request_for(demo_repo, f"scripted:{DEMO / 'transcript.json'}")
    exporter.clear()  # every span from here on is this run's, or a query's made during it

    summary, queries = await watched_to_end(client, factory_home, request)

    assert summary.succeeded, summary.error
    assert queries > 0
    every = list(exporter.get_finished_spans())
    start = run_start(every, request)
    trace_id = start.context.trace_id
    # One trace: the status queries (and describes) made while it ran started none of their own.
    assert {s.context.trace_id for s in every} == {trace_id}, sorted({s.name for s in every if s.parent is None})
    assert not [s.name for s in every if "Query" in s.name]
    spans = every
    by_id = {s.context.span_id: s for s in spans}
    named = {name: [s for s in spans if s.name == name] for name in {s.name for s in spans}}
    assert start.parent is None  # the client's start is the root: nothing of the run is in another trace

    # Workflows: spans as long as the workflow ran, so the run's covers every step of it.
    run_span = named["RunWorkflow:FactoryRunWorkflow"][0]
    assert len(named["RunWorkflow:TaskWorkflow"]) == 2
    for span in spans:
        assert span.start_time is not None and span.end_time is not None
        if span is not start and span.name != "StartWorkflow:FactoryRunWorkflow":
            assert run_span.start_time is not None and run_span.end_time is not None
            assert run_span.start_time <= span.start_time and span.end_time <= run_span.end_time, span.name
    # Activities, and within each model activity its one model call.
    for name in ("RunActivity:plan_run", "RunActivity:agent_turn", "RunActivity:run_gates", "RunActivity:merge_task"):
        assert named.get(name), f"no {name} span in {sorted(named)}"
    model_calls = named["chat scripted"]
    assert len(model_calls) == summary.usage.calls
    for span in [run_span, *named["RunWorkflow:TaskWorkflow"], *named["RunActivity:agent_turn"], *model_calls]:
        assert duration_ns(span) > 0, span.name
    agent_calls = [s for s in model_calls if (s.attributes or {}).get("darkfactory.purpose") == "agent"]
    assert agent_calls
    call = agent_calls[0]
    chain = ancestry(call, by_id)
    assert chain[:4] == [
        "chat scripted",
        "RunActivity:agent_turn",
        "StartActivity:agent_turn",
        "RunWorkflow:TaskWorkflow",
    ]
    assert chain[-2:] == ["RunWorkflow:FactoryRunWorkflow", "StartWorkflow:FactoryRunWorkflow"]
    attributes = call.attributes or {}
    assert attributes["gen_ai.request.model"] == "scripted"
    assert attributes["darkfactory.run_id"] == request.run_id
    assert attributes["darkfactory.task_id"] in ("add-slugify", "export-slugify")
    assert isinstance(attributes["gen_ai.usage.input_tokens"], int) and attributes["gen_ai.usage.input_tokens"] > 0

    # The log line of a model call, written inside the activity, names the call's span in the run's trace.
    lines: list[dict[str, Any]] = [json.loads(line) for line in log_stream.getvalue().splitlines() if line]
    logged = [line for line in lines if line.get("event") == "model_call" and line.get("purpose") == "agent"]
    assert logged
    assert {line["trace_id"] for line in logged} == {format(trace_id, "032x")}
    assert {line["span_id"] for line in logged} <= {format(s.context.span_id, "016x") for s in agent_calls}
    assert all(line["activity"] == "agent_turn" for line in logged)
    # A workflow's own log lines are in the run's trace too, with the workflow's ids beside them.
    attempts = [line for line in lines if str(line.get("event", "")).startswith("attempt 1 of task add-slugify")]
    assert attempts, [line.get("event") for line in lines if line.get("logger") == "temporalio.workflow"]
    assert {line["trace_id"] for line in attempts} == {format(trace_id, "032x")}
    assert {line["workflow_id"] for line in attempts} == {task_workflow_id(request.run_id, "add-slugify")}


async def test_a_persons_signal_sent_outside_any_span_is_handled_in_the_runs_trace(
    temporal_env: WorkflowEnvironment,
    factory_home: Path,
    demo_repo: Path,
    exporter: InMemorySpanExporter,
    tmp_path: Path,
) -> None:
    target = temporal_env.client.service_client.config.target_host
    client = await connect(TemporalSettings(address=target))
    request = request_for(demo_repo, f"scripted:{never_passing(tmp_path)}", ship="branch", max_attempts=2)
    exporter.clear()
    task_queue = f"tq-{uuid.uuid4().hex}"

    async with factory_worker(client, factory_home, task_queue):
        handle = await client.start_workflow(
            FactoryRunWorkflow.run, request, id=run_workflow_id(request.run_id), task_queue=task_queue
        )
        await escalation_of(client, request.run_id, "add-slugify")  # polls the "progress" query meanwhile
        # As `factory approve` sends it: from a client with tracing on, outside any span.
        task = client.get_workflow_handle(task_workflow_id(request.run_id, "add-slugify"))
        await task.signal("approve", DecisionInput(by="ana", note="known issue"))
        summary = await handle.result()

    slug = next(t for t in summary.tasks if t.id == "add-slugify")
    assert [(d.action, d.by) for d in slug.decisions] == [("approve", "ana")]
    every = list(exporter.get_finished_spans())
    trace_id = run_start(every, request).context.trace_id
    assert {s.context.trace_id for s in every} == {trace_id}, sorted({s.name for s in every if s.parent is None})
    by_id = {s.context.span_id: s for s in every}
    [approve] = [s for s in every if s.name == "HandleSignal:approve"]
    assert ancestry(approve, by_id) == [
        "HandleSignal:approve",
        "StartChildWorkflow:TaskWorkflow",
        "RunWorkflow:FactoryRunWorkflow",
        "StartWorkflow:FactoryRunWorkflow",
    ]
    assert not [s.name for s in every if s.name.startswith(("SignalWorkflow:", "QueryWorkflow:", "HandleQuery:"))]


async def test_factory_worker_exports_its_spans_over_otlp_in_the_callers_trace_and_serves_metrics(
    temporal_env: WorkflowEnvironment,
    factory_home: Path,
    demo_repo: Path,
    exporter: InMemorySpanExporter,
    tmp_path: Path,
) -> None:
    pytest.importorskip("opentelemetry.exporter.otlp.proto.http", reason="the optional OTLP exporter")
    target = temporal_env.client.service_client.config.target_host
    task_queue = f"tq-{uuid.uuid4().hex}"
    metrics_port = free_port()
    request = request_for(demo_repo, f"scripted:{DEMO / 'transcript.json'}")
    client = await connect(TemporalSettings(address=target))  # this process's spans: the trace starts here
    with OtlpCollector() as collector, (tmp_path / "worker.log").open("wb") as log:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("TEMPORAL_", "DARKFACTORY_", "OTEL_"))}
        env.update(
            TEMPORAL_ADDRESS=target,
            DARKFACTORY_HOME=str(factory_home),
            DARKFACTORY_METRICS_BIND=f"127.0.0.1:{metrics_port}",
            OTEL_EXPORTER_OTLP_ENDPOINT=collector.url,
            OTEL_SERVICE_NAME="darkfactory-worker",
        )
        worker = subprocess.Popen(
            [str(FACTORY_WORKER), "--task-queue", task_queue], env=env, stdout=log, stderr=subprocess.STDOUT
        )
        try:
            summary = await client.execute_workflow(
                FactoryRunWorkflow.run, request, id=run_workflow_id(request.run_id), task_queue=task_queue
            )
            samples = scrape(f"http://127.0.0.1:{metrics_port}/metrics")
        finally:
            # SIGTERM: the worker stops and flushes its batched spans before it exits.
            worker.send_signal(signal.SIGTERM)
            worker.wait(timeout=60)
        received = list(collector.spans)

    assert summary.succeeded, summary.error
    assert worker.returncode == 0, (tmp_path / "worker.log").read_text()[-2000:]
    start = run_start(list(exporter.get_finished_spans()), request)
    in_trace = [(name, ns) for name, trace_id, ns in received if trace_id == start.context.trace_id.to_bytes(16)]
    names = {name for name, _ in in_trace}
    assert {"RunWorkflow:FactoryRunWorkflow", "RunWorkflow:TaskWorkflow", "RunActivity:agent_turn"} <= names
    assert all(ns > 0 for name, ns in in_trace if name == "RunWorkflow:FactoryRunWorkflow")
    assert len([name for name, _ in in_trace if name == "chat scripted"]) == summary.usage.calls
    # The same process served its metrics: the SDK's and the factory's.
    assert total(samples, "temporal_workflow_completed", workflow_type="FactoryRunWorkflow") == 1
    assert total(samples, "darkfactory_tasks_ended", outcome="merged") == 2
