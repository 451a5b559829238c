"""The factory's own metrics, and the Prometheus endpoint that serves them with the Temporal SDK's.

Everything goes through the SDK's metric meter, so one endpoint (the SDK runtime's Prometheus exporter)
serves the SDK's worker metrics (`temporal_*`) and these (`darkfactory_*`). Workflows emit through
`workflow.metric_meter()`, which drops emissions while a history is replayed, so a worker that picks a run
up again does not count its tasks twice. Activities emit through `activity.metric_meter()`: tokens and
dollars were spent even when the activity is retried, so they are counted where they are spent.

Counters carry no `_total` suffix, like the SDK's own (`temporal_workflow_completed`); durations are seconds.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import timedelta

from temporalio.common import MetricMeter
from temporalio.runtime import PrometheusConfig, Runtime, TelemetryConfig

from darkfactory.contracts import GateResult, Usage
from darkfactory.model_seam import SCRIPTED_PREFIX

METRICS_BIND_ENV = "DARKFACTORY_METRICS_BIND"
"""`HOST:PORT` (or a port alone, on loopback) where `factory-worker` serves `/metrics`."""

TASKS_ENDED = "darkfactory_tasks_ended"
TASK_ESCALATIONS = "darkfactory_task_escalations"
TASK_ATTEMPTS = "darkfactory_task_attempts"
TIME_TO_MERGE = "darkfactory_task_time_to_merge"
GATE_FAILURES = "darkfactory_gate_failures"
MERGE_QUEUE_DEPTH = "darkfactory_merge_queue_depth"
MODEL_CALLS = "darkfactory_model_calls"
MODEL_CALL_FAILURES = "darkfactory_model_call_failures"
MODEL_CALL_DURATION = "darkfactory_model_call_duration"
MODEL_TOKENS = "darkfactory_model_tokens"
MODEL_COST = "darkfactory_model_cost_usd"

TOKEN_KINDS = {
    "input": "input_tokens",
    "output": "output_tokens",
    "cache_read": "cache_read_input_tokens",
    "cache_write": "cache_creation_input_tokens",
}
"""The `kind` label of MODEL_TOKENS -> the Usage field it counts."""

HISTOGRAM_BUCKETS: dict[str, list[float]] = {
    TIME_TO_MERGE: [30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400, 43200, 86400],
    MODEL_CALL_DURATION: [0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300],
    MODEL_COST: [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5],
}
"""Seconds and dollars: the exporter's defaults (0.05 s .. 10 s) would put every merge in the last bucket."""


class MetricsBindError(ValueError):
    """The metrics address cannot be served: its syntax, or the exporter could not bind it."""


# -- the endpoint ----------------------------------------------------------------------------------


def parse_bind(value: str) -> str:
    """`9464`, `HOST:9464` or `[::1]:9464` as the exporter wants it (an IP literal); a bare port is loopback."""
    text = value.strip()
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = "127.0.0.1", text
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if host == "localhost":
        host = "127.0.0.1"
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise MetricsBindError(f"metrics address {value!r}: expected PORT or HOST:PORT, e.g. 127.0.0.1:9464")
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise MetricsBindError(
            f"metrics address {value!r}: the host must be an IP address (127.0.0.1, 0.0.0.0, [::1]), not {host!r}"
        ) from None
    return f"[{ip}]:{int(port)}" if ip.version == 6 else f"{ip}:{int(port)}"


@dataclass(frozen=True)
class MetricsEndpoint:
    """A Temporal runtime whose Prometheus exporter serves `/metrics` at `address`."""

    runtime: Runtime
    """Connect the worker's client with it (one runtime per process: each has its own threads)."""
    address: str

    @property
    def url(self) -> str:
        return f"http://{self.address}/metrics"


def serve_metrics(bind: str) -> MetricsEndpoint:
    """Start serving `/metrics` on `bind` (see `parse_bind`).

    The exporter binds now, synchronously, so a taken port is an error at start rather than a worker that
    silently serves no metrics.
    """
    address = parse_bind(bind)
    try:
        runtime = Runtime(
            telemetry=TelemetryConfig(
                metrics=PrometheusConfig(
                    bind_address=address, durations_as_seconds=True, histogram_bucket_overrides=HISTOGRAM_BUCKETS
                )
            )
        )
    except ValueError as exc:  # the core's own words: "Address already in use (os error 98)", ...
        raise MetricsBindError(f"cannot serve metrics on {address}: {exc}") from None
    return MetricsEndpoint(runtime, address)


# -- model calls (activities) ----------------------------------------------------------------------


def model_label(model: str) -> str:
    """The `model` label: a scripted transcript's path would make one series per file."""
    return "scripted" if model.startswith(SCRIPTED_PREFIX) else model


def cost_of(usage: Usage) -> float | None:
    """The call's cost in USD once it was priced (`pricing.priced_usage`), else None: nothing is recorded for
    an unknown cost, which is never $0."""
    return usage.cost if usage.priced_calls else None


def record_model_call(
    meter: MetricMeter, *, purpose: str, model: str, usage: Usage, duration: timedelta, cost_usd: float | None
) -> None:
    labels = {"purpose": purpose, "model": model_label(model)}
    meter.create_counter(MODEL_CALLS, "Model calls answered", "1").add(1, labels)
    tokens = meter.create_counter(MODEL_TOKENS, "Tokens of answered model calls, by kind", "tokens")
    for kind, field in TOKEN_KINDS.items():
        tokens.add(getattr(usage, field), {**labels, "kind": kind})
    meter.create_histogram_timedelta(MODEL_CALL_DURATION, "Wall time of one model call", "s").record(duration, labels)
    if cost_usd is not None:
        meter.create_histogram_float(MODEL_COST, "Cost of one model call; _sum is the total", "USD").record(
            cost_usd, labels
        )


def record_model_call_failed(meter: MetricMeter, *, purpose: str, model: str, kind: str) -> None:
    meter.create_counter(MODEL_CALL_FAILURES, "Model calls that failed, by error kind", "1").add(
        1, {"purpose": purpose, "model": model_label(model), "kind": kind}
    )


# -- tasks, gates, the merge queue (workflows) -----------------------------------------------------


def record_attempt(meter: MetricMeter, task_type: str, gates: list[GateResult]) -> None:
    """One finished attempt of a task: its result, and each gate it failed."""
    failed = [result for result in gates if not result.passed]
    result = "failed" if failed else "needs_approval" if any(g.needs_approval for g in gates) else "passed"
    meter.create_counter(TASK_ATTEMPTS, "Finished attempts of tasks", "1").add(
        1, {"task_type": task_type, "result": result}
    )
    record_gate_failures(meter, failed, "task")


def record_gate_failures(meter: MetricMeter, results: Iterable[GateResult], purpose: str) -> None:
    """`purpose`: `task` (an attempt's gates), `regression` (after a merge) or `integration` (before shipping)."""
    counter = meter.create_counter(GATE_FAILURES, "Failed gate verdicts", "1")
    for result in results:
        if not result.passed:
            counter.add(1, {"gate": result.gate, "purpose": purpose})


def record_escalation(meter: MetricMeter, task_type: str) -> None:
    meter.create_counter(TASK_ESCALATIONS, "Times a task started waiting for a person", "1").add(
        1, {"task_type": task_type}
    )


def record_task_ended(meter: MetricMeter, outcome: str, task_type: str) -> None:
    meter.create_counter(TASKS_ENDED, "Tasks that reached a final state", "1").add(
        1, {"outcome": outcome, "task_type": task_type}
    )


def record_time_to_merge(meter: MetricMeter, task_type: str, elapsed: timedelta) -> None:
    meter.create_histogram_timedelta(TIME_TO_MERGE, "From a task's start to its merge", "s").record(
        elapsed, {"task_type": task_type}
    )


def set_merge_queue_depth(meter: MetricMeter, run_id: str, depth: int) -> None:
    """Tasks of one run waiting for, or in, a merge. Per run: runs queue independently."""
    meter.create_gauge(MERGE_QUEUE_DEPTH, "Tasks waiting for or in a merge", "1").set(depth, {"run_id": run_id})
