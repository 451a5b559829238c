"""Tracing for the workers: a replay-safe OpenTelemetry TracerProvider (Temporal's), exporting where the
OTEL_* environment or the caller says (the spans themselves: activities/run_trace.py). It needs the Temporal
SDK, so it lives beside the activities, not in the domain library (`darkfactory.telemetry` keeps logging and
the trace ids in log lines)."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import structlog
from opentelemetry import trace

from darkfactory.telemetry import tracing_requested

if TYPE_CHECKING:
    from opentelemetry.sdk.trace.export import SpanExporter


def configure_tracing(service_name: str, exporter: SpanExporter | None = None) -> bool:
    """Make sure a replay-safe TracerProvider is installed and exporting; return whether tracing is on.

    With `exporter` (tests, or a program embedding the worker), spans go to it as each ends. Without, the
    OTEL_* environment decides: `OTEL_TRACES_EXPORTER=console` prints spans; `otlp` (or an OTLP endpoint)
    needs the optional `opentelemetry-exporter-otlp-proto-http` package. Nothing asks: nothing happens.
    Calling it again (every `connect`) adds no second exporter.
    """
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
    from temporalio.contrib.opentelemetry import ReplaySafeTracerProvider, create_tracer_provider

    installed = trace.get_tracer_provider()
    processor: SpanProcessor
    if exporter is not None:
        processor = SimpleSpanProcessor(exporter)
    else:
        if isinstance(installed, ReplaySafeTracerProvider):
            return True
        from_environment = _exporter_from_environment() if tracing_requested() else None
        if from_environment is None:
            return False
        processor = BatchSpanProcessor(from_environment)
    if not isinstance(installed, ReplaySafeTracerProvider):
        if isinstance(installed, TracerProvider):
            # The global provider is set once per process; Temporal's plugin refuses one that is not replay-safe.
            structlog.get_logger(__name__).warning(
                "tracing_off", reason="a TracerProvider that is not replay-safe is already installed"
            )
            return False
        installed = create_tracer_provider(resource=Resource.create({"service.name": service_name}))
        trace.set_tracer_provider(installed)
    installed.add_span_processor(processor)
    return True


def _exporter_from_environment() -> SpanExporter | None:
    from opentelemetry.sdk.trace.export import ConsoleSpanExporter

    if os.environ.get("OTEL_TRACES_EXPORTER", "otlp") == "console":
        return ConsoleSpanExporter()
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    except ImportError:
        structlog.get_logger(__name__).warning(
            "otlp_exporter_missing", hint="pip install opentelemetry-exporter-otlp-proto-http"
        )
        return None
    otlp: SpanExporter = OTLPSpanExporter()  # endpoint, headers, timeout: the OTEL_EXPORTER_OTLP_* variables
    return otlp


def shutdown_tracing() -> None:
    """Flush and stop the tracer provider; spans still batched in memory are exported now.

    Entry points leave through `os._exit` (see worker.exit_cleanly), which skips atexit hooks.
    """
    shutdown = getattr(trace.get_tracer_provider(), "shutdown", None)
    if callable(shutdown):
        shutdown()
