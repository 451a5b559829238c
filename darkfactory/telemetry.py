"""structlog JSON lines and OpenTelemetry tracing setup. Called by entry points, never at import time."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import TextIO

import structlog


def configure_logging(level: str = "INFO", stream: TextIO | None = None, path: Path | None = None) -> None:
    """JSON lines to `path` (appending) or to `stream` (default stderr); stdlib logging goes the same way.

    The SDK's and our own `logging` records are rendered by structlog too, so one file holds everything
    with the same bound ids (run, task, attempt, activity).
    """
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        handler: logging.Handler = logging.FileHandler(path)
    else:
        handler = logging.StreamHandler(stream or sys.stderr)
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                structlog.processors.JSONRenderer(),
            ],
        )
    )
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(level)
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )


def tracing_requested() -> bool:
    """True when the standard OTEL_* environment asks for traces to be exported."""
    exporter = os.environ.get("OTEL_TRACES_EXPORTER", "")
    return bool(
        os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        or (exporter and exporter != "none")
    )


def configure_tracing(service_name: str) -> bool:
    """Install a TracerProvider exporting as OTEL_* asks; return False (and do nothing) when nothing asks.

    `OTEL_TRACES_EXPORTER=console` prints spans; `otlp` (or an OTLP endpoint) needs the optional
    `opentelemetry-exporter-otlp-proto-http` package.
    """
    if not tracing_requested():
        return False
    from opentelemetry import trace
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter

    exporter_name = os.environ.get("OTEL_TRACES_EXPORTER", "otlp")
    exporter: SpanExporter
    if exporter_name == "console":
        exporter = ConsoleSpanExporter()
    else:
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        except ImportError:
            structlog.get_logger(__name__).warning(
                "otlp_exporter_missing", hint="pip install opentelemetry-exporter-otlp-proto-http"
            )
            return False
        exporter = OTLPSpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
    provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    return True


def shutdown_tracing() -> None:
    """Flush and stop the tracer provider; spans still batched in memory are exported now.

    Entry points leave through `os._exit` (see worker.exit_cleanly), which skips atexit hooks.
    """
    from opentelemetry import trace

    shutdown = getattr(trace.get_tracer_provider(), "shutdown", None)
    if callable(shutdown):
        shutdown()
