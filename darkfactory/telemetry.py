"""structlog JSON lines and OpenTelemetry tracing setup. Called by entry points, never at import time.

Traces use the Temporal SDK's replay-safe tracer provider and its OpenTelemetry interceptor (activities/run_trace.py),
so workflow spans last as long as the workflow did, and a workflow replayed on another worker keeps its span ids.
Log lines written inside a span carry its `trace_id` and `span_id`; the Temporal SDK's workflow and activity
loggers' context (which the worker keeps out of their messages, see activities/logging_setup.py) becomes fields.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import TextIO

import structlog
from opentelemetry import trace

_SDK_CONTEXT_FIELDS: dict[str, dict[str, str]] = {
    # The LogRecord attribute the SDK's logger puts its context under, and its keys our lines name differently:
    # in every activity line `run_id` is the factory run's and `attempt` the task attempt's (activities.context).
    "temporal_workflow": {"run_id": "workflow_run_id", "attempt": "workflow_attempt"},
    "temporal_activity": {"attempt": "activity_attempt"},
}


def configure_logging(level: str = "INFO", stream: TextIO | None = None, path: Path | None = None) -> None:
    """JSON lines to `path` (appending) or to `stream` (default stderr); stdlib logging goes the same way.

    The SDK's and our own `logging` records are rendered by structlog too, so one file holds everything
    with the same bound ids (run, task, attempt, activity); a workflow's lines carry its ids as fields.
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
            foreign_pre_chain=[*shared, add_sdk_context],
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


def add_sdk_context(
    logger: object, method_name: str, event_dict: structlog.types.EventDict
) -> structlog.types.EventDict:
    """A processor for stdlib records: the Temporal SDK's workflow or activity context, as separate fields.

    `workflow.logger` and `activity.logger` attach a dict (workflow_id, run_id, workflow_type, namespace,
    task_queue, attempt; for an activity also its id and type) to the record as `temporal_workflow` /
    `temporal_activity`. Fields already on the line win; see `_SDK_CONTEXT_FIELDS` for the renamed keys.
    """
    record = event_dict.get("_record")
    for attribute, renamed in _SDK_CONTEXT_FIELDS.items():
        context = getattr(record, attribute, None)
        if isinstance(context, dict):
            for key, value in context.items():
                event_dict.setdefault(renamed.get(str(key), str(key)), value)
    return event_dict
