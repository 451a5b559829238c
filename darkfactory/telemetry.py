"""structlog JSON lines and OpenTelemetry tracing setup. Called by entry points, never at import time.

Traces use the Temporal SDK's replay-safe tracer provider and its `OpenTelemetryPlugin` (worker.py), so
workflow spans last as long as the workflow did, and a workflow replayed on another worker keeps its span ids.
Log lines written inside a span carry its `trace_id` and `span_id`.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

import structlog
from opentelemetry import trace

if TYPE_CHECKING:
    pass


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
        add_trace_ids,
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


def add_trace_ids(logger: object, method_name: str, event_dict: structlog.types.EventDict) -> structlog.types.EventDict:
    """A structlog processor: the current span's trace and span ids (hex, as tracing UIs show them), if any.

    It runs where the line is logged (structlog's chain, or the stdlib handler's pre-chain in the same thread),
    so the span is the one the code was in.
    """
    context = trace.get_current_span().get_span_context()
    if context.is_valid:
        event_dict.setdefault("trace_id", format(context.trace_id, "032x"))
        event_dict.setdefault("span_id", format(context.span_id, "016x"))
    return event_dict
