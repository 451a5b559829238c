"""The worker's Prometheus endpoint: the SDK's runtime metrics and the factory's own, scraped after a real run."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from temporalio.testing import WorkflowEnvironment

from darkfactory.activities.metrics import MetricsBindError, parse_bind, serve_metrics
from darkfactory.settings import TemporalSettings
from darkfactory.worker import connect
from tests.conftest import DEMO, request_for, run_to_end

FACTORY_WORKER = Path(sys.executable).parent / "factory-worker"
_SAMPLE = re.compile(r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>.*)\})? (?P<value>\S+)$")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')

Sample = tuple[str, dict[str, str], float]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def scrape(url: str) -> list[Sample]:
    """The exposition text as (name, labels, value) samples."""
    response = httpx.get(url, timeout=10)
    response.raise_for_status()
    samples = []
    for line in response.text.splitlines():
        match = _SAMPLE.match(line)
        if match and not line.startswith("#"):
            labels = dict(_LABEL.findall(match["labels"] or ""))
            samples.append((match["name"], labels, float(match["value"])))
    return samples


def total(samples: list[Sample], name: str, **labels: str) -> float:
    """The sum over every series of `name` whose labels include `labels`."""
    return sum(value for n, have, value in samples if n == name and labels.items() <= have.items())


async def test_a_demo_run_is_counted_on_the_worker_metrics_endpoint(
    temporal_env: WorkflowEnvironment, factory_home: Path, demo_repo: Path
) -> None:
    # The endpoint belongs to the runtime the worker's client is connected with, as in `factory-worker`.
    endpoint = serve_metrics(f"127.0.0.1:{free_port()}")
    target = temporal_env.client.service_client.config.target_host
    client = await connect(TemporalSettings(address=target), runtime=endpoint.runtime)
    request = request_for(demo_repo, f"scripted:{DEMO / 'transcript.json'}")

    summary = await run_to_end(client, factory_home, request)

    assert summary.succeeded, summary.error
    samples = scrape(endpoint.url)
    # The SDK's own worker metrics.
    assert total(samples, "temporal_workflow_completed", workflow_type="FactoryRunWorkflow") == 1
    assert total(samples, "temporal_workflow_completed", workflow_type="TaskWorkflow") == 2
    assert total(samples, "temporal_activity_execution_latency_count", activity_type="agent_turn") > 0
    # Tasks by outcome and type; add-slugify failed its tests gate once, then passed.
    assert total(samples, "darkfactory_tasks_ended", outcome="merged", task_type="feature") == 2
    assert total(samples, "darkfactory_tasks_ended") == 2
    assert total(samples, "darkfactory_task_attempts", result="failed") == 1
    assert total(samples, "darkfactory_task_attempts", result="passed") == 2
    assert total(samples, "darkfactory_gate_failures", gate="tests", purpose="task") == 1
    assert total(samples, "darkfactory_gate_failures") == 1
    assert total(samples, "darkfactory_task_escalations") == 0
    # Every model call and every token of the run's summary, by kind.
    usage = summary.usage
    assert total(samples, "darkfactory_model_calls") == usage.calls
    assert total(samples, "darkfactory_model_calls", purpose="agent", model="scripted") > 0
    assert total(samples, "darkfactory_model_tokens", kind="input") == usage.input_tokens > 0
    assert total(samples, "darkfactory_model_tokens", kind="output") == usage.output_tokens > 0
    assert total(samples, "darkfactory_model_tokens", kind="cache_read") == usage.cache_read_input_tokens
    assert total(samples, "darkfactory_model_tokens", kind="cache_write") == usage.cache_creation_input_tokens
    assert total(samples, "darkfactory_model_call_duration_count", purpose="plan") == 1
    # Time to merge: one observation per merged task, in buckets sized for minutes and hours.
    assert total(samples, "darkfactory_task_time_to_merge_count") == 2
    assert total(samples, "darkfactory_task_time_to_merge_sum") > 0
    buckets = {labels["le"] for name, labels, _ in samples if name == "darkfactory_task_time_to_merge_bucket"}
    assert {"30", "3600", "86400"} <= buckets
    # The merge queue drained.
    depth = [
        v for n, labels, v in samples if n == "darkfactory_merge_queue_depth" and labels["run_id"] == request.run_id
    ]
    assert depth == [0]


@pytest.mark.parametrize(
    ("given", "address"),
    [
        ("9464", "127.0.0.1:9464"),
        ("0.0.0.0:9464", "0.0.0.0:9464"),
        ("localhost:9464", "127.0.0.1:9464"),
        ("[::1]:9464", "[::1]:9464"),
    ],
)
def test_a_metrics_address_may_be_a_port_or_host_and_port(given: str, address: str) -> None:
    assert parse_bind(given) == address


@pytest.mark.parametrize("given", ["nonsense", "127.0.0.1:0", "127.0.0.1:70000", "metrics.example:9464", ""])
def test_a_metrics_address_that_cannot_be_bound_is_refused_with_the_reason(given: str) -> None:
    with pytest.raises(MetricsBindError, match="metrics address"):
        parse_bind(given)


def run_worker_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, "COLUMNS": "200", "TEMPORAL_ADDRESS": "127.0.0.1:1", **(env or {})}
    return subprocess.run(
        [str(FACTORY_WORKER), *args], capture_output=True, text=True, env=environment, timeout=60, check=False
    )


def test_factory_worker_help_documents_the_metrics_flag_and_its_variable() -> None:
    result = run_worker_cli("--help")

    assert result.returncode == 0, result.stderr
    assert "--metrics-port" in result.stdout
    assert "DARKFACTORY_METRICS_BIND" in result.stdout


def test_factory_worker_with_a_malformed_metrics_address_exits_2_before_connecting() -> None:
    result = run_worker_cli("--metrics-port", "not-an-address")

    assert result.returncode == 2
    assert "error: metrics address 'not-an-address': expected PORT or HOST:PORT" in result.stderr


def test_factory_worker_whose_metrics_port_is_taken_exits_2_naming_the_address() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]

        result = run_worker_cli(env={"DARKFACTORY_METRICS_BIND": f"127.0.0.1:{port}"})

    assert result.returncode == 2
    assert f"error: cannot serve metrics on 127.0.0.1:{port}" in result.stderr
    assert "in use" in result.stderr
