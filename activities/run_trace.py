"""One trace per run: Temporal's OpenTelemetry spans, without the traces that reads and unparented signals start.

Imported only when tracing is on (factory_cli.session._tracing_plugins), so a CLI without OTEL_* loads none of it.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

from opentelemetry import trace
from temporalio import client, worker
from temporalio import workflow as temporal_workflow
from temporalio.contrib.opentelemetry import OpenTelemetryInterceptor
from temporalio.plugin import SimplePlugin
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner

TRACE_HEADER = "_tracer-data"
"""The Temporal header carrying the W3C trace context (every Temporal SDK's OpenTelemetry integration uses it)."""


class RunTracePlugin(SimplePlugin):
    """Temporal's OpenTelemetry spans (as its `OpenTelemetryPlugin` with `add_temporal_spans`), shaped so that
    a run is one trace: the client's start, the workflows, their children, activities and model calls.

    Left alone, every read would be a trace of its own: a query made outside any span (`factory status`,
    `factory watch`, the web page, each poll) starts a root span in the client and another in the worker;
    116 of the 117 traces of a demo run polled at each history event were queries. So queries make no spans;
    a signal sent outside any span makes none in the client, and the workflow handles it under the span
    that started the workflow, so a person's decision shows in the run's trace. Set on the client (worker.py's
    `connect`); workers built on the client inherit it.
    """

    def __init__(self) -> None:
        super().__init__(
            "darkfactory.RunTracePlugin",
            interceptors=[RunTraceInterceptor()],
            workflow_runner=_pass_opentelemetry_through,
        )


def _pass_opentelemetry_through(runner: worker.WorkflowRunner | None) -> worker.WorkflowRunner:
    # The span context lives in opentelemetry's contextvars: the sandbox must share the module, not re-import it.
    if runner is None:
        raise ValueError("no workflow runner to add OpenTelemetry to")
    if isinstance(runner, SandboxedWorkflowRunner):
        return dataclasses.replace(runner, restrictions=runner.restrictions.with_passthrough_modules("opentelemetry"))
    return runner


class RunTraceInterceptor(client.Interceptor, worker.Interceptor):
    """Temporal's `OpenTelemetryInterceptor` with queries left out and unparented signals joined to the run.

    Each of its interceptors is wrapped by one that holds both the traced chain and the untraced one
    beneath it, so a call can skip the tracing instead of having its span discarded afterwards.
    """

    def __init__(self) -> None:
        self._traced = OpenTelemetryInterceptor(add_temporal_spans=True)

    def intercept_client(self, next: client.OutboundInterceptor) -> client.OutboundInterceptor:
        return _RunTraceClientOutbound(self._traced.intercept_client(next), untraced=next)

    def intercept_activity(self, next: worker.ActivityInboundInterceptor) -> worker.ActivityInboundInterceptor:
        return self._traced.intercept_activity(next)

    def workflow_interceptor_class(
        self, input: worker.WorkflowInterceptorClassInput
    ) -> type[worker.WorkflowInboundInterceptor] | None:
        traced = self._traced.workflow_interceptor_class(input)

        class Inbound(_RunTraceWorkflowInbound):
            traced_class = traced

        return Inbound

    def intercept_nexus_operation(
        self, next: worker.NexusOperationInboundInterceptor
    ) -> worker.NexusOperationInboundInterceptor:
        return self._traced.intercept_nexus_operation(next)


class _RunTraceClientOutbound(client.OutboundInterceptor):
    def __init__(self, traced: client.OutboundInterceptor, *, untraced: client.OutboundInterceptor) -> None:
        super().__init__(traced)
        self._untraced = untraced

    async def query_workflow(self, input: client.QueryWorkflowInput) -> Any:
        return await self._untraced.query_workflow(input)

    async def signal_workflow(self, input: client.SignalWorkflowInput) -> None:
        if trace.get_current_span().get_span_context().is_valid:
            await self.next.signal_workflow(input)
        else:
            await self._untraced.signal_workflow(input)


class _RunTraceWorkflowInbound(worker.WorkflowInboundInterceptor):
    traced_class: ClassVar[type[worker.WorkflowInboundInterceptor]]

    def __init__(self, next: worker.WorkflowInboundInterceptor) -> None:
        super().__init__(self.traced_class(next))
        self._untraced = next

    async def handle_query(self, input: worker.HandleQueryInput) -> Any:
        return await self._untraced.handle_query(input)

    async def handle_signal(self, input: worker.HandleSignalInput) -> None:
        started_by = temporal_workflow.info().headers.get(TRACE_HEADER)
        if TRACE_HEADER not in input.headers and started_by is not None:
            # Sent outside any span (a person's decision from the CLI): under the span that started the workflow.
            input.headers = {**input.headers, TRACE_HEADER: started_by}
        await self.next.handle_signal(input)
