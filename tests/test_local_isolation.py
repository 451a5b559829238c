"""Two local `factory run`s on one machine and one Temporal server do not cross-talk: each process's
in-process worker serves only its own run (task queues of its own), so each run's model calls reach only
the endpoint (and key) that run was started with."""

from __future__ import annotations

import json
import subprocess
import uuid
from pathlib import Path

from temporalio.testing import WorkflowEnvironment

from darkfactory.testing.fake_messages_api import FakeMessagesServer, ScriptResponder
from tests.conftest import DEMO, make_repo
from tests.local_cli import FACTORY, local_env

DEMO_CALLS = 13
"""The demo transcript's calls: plan, 8 agent turns, 2 test writers, 2 reviews."""


def test_two_local_runs_at_once_each_call_only_their_own_endpoint(
    temporal_env: WorkflowEnvironment, factory_home: Path, tmp_path: Path
) -> None:
    names = ("alpha", "beta")
    markers = {name: f"isolation-marker-{name}-{uuid.uuid4().hex[:8]}" for name in names}
    servers = {name: FakeMessagesServer(ScriptResponder(DEMO / "transcript.json")) for name in names}
    processes: dict[str, subprocess.Popen[str]] = {}
    outputs: dict[str, tuple[str, str]] = {}
    for server in servers.values():
        server.__enter__()
    try:
        for name in names:
            repo = make_repo(tmp_path / name / "textkit")
            spec = tmp_path / name / "spec.md"
            # The marker travels in the spec, which every prompt carries: each server can tell whose call it got.
            spec.write_text((DEMO / "spec.md").read_text() + f"\n(Run marker: {markers[name]}.)\n")
            env = local_env(
                temporal_env,
                factory_home,
                ANTHROPIC_BASE_URL=servers[name].base_url,
                ANTHROPIC_API_KEY=f"sk-test-{name}",
            )
            processes[name] = subprocess.Popen(
                [str(FACTORY), "run", "--repo", str(repo), "--spec", str(spec), "--json"],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        for name, process in processes.items():
            outputs[name] = process.communicate(timeout=600)
    finally:
        for process in processes.values():
            if process.poll() is None:
                process.kill()
        for server in servers.values():
            server.__exit__(None, None, None)

    for name in names:
        other = next(n for n in names if n != name)
        stdout, stderr = outputs[name]
        assert processes[name].returncode == 0, stderr[-3000:]
        summary = json.loads(stdout)
        assert summary["phase"] == "shipped"
        requests = servers[name].requests
        bodies = [json.dumps(r.body) for r in requests]
        assert len(requests) == summary["usage"]["calls"] == DEMO_CALLS
        assert all(markers[name] in body for body in bodies), f"{name}'s endpoint got calls without its marker"
        assert not [body for body in bodies if markers[other] in body], f"{name}'s endpoint got {other}'s calls"
        assert all(
            f"sk-test-{name}" in r.headers.get("authorization", "") + r.headers.get("x-api-key", "") for r in requests
        )
        assert "Task queue darkfactory-local-" in stderr
