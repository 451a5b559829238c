"""Running `factory` and `factory-worker` as processes in local mode, against the session's dev server.

Local mode (no TEMPORAL_ADDRESS) reuses whatever Temporal server listens on DARKFACTORY_DEV_PORT, so
pointing it at the session's `start_dev_server()` runs the in-process worker path on a server the tests
own, without starting an embedded one.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from temporalio.testing import WorkflowEnvironment

BIN = Path(sys.executable).parent
FACTORY = BIN / "factory"
WORKER = BIN / "factory-worker"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def local_env(temporal_env: WorkflowEnvironment, home: Path, **extra: str) -> dict[str, str]:
    """Local mode on the test server; no Temporal, Anthropic, GitHub or factory settings inherited."""
    port = temporal_env.client.service_client.config.target_host.rsplit(":", 1)[1]
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("TEMPORAL_", "ANTHROPIC_", "DARKFACTORY_", "OTEL_", "GITHUB_"))
    }
    env.update(
        DARKFACTORY_HOME=str(home),
        DARKFACTORY_DEV_PORT=port,
        DARKFACTORY_DEV_UI_PORT=str(free_port()),
        COLUMNS="200",
    )
    env.update(extra)
    return env


def factory(env: dict[str, str], *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(FACTORY), *args], env=env, capture_output=True, text=True, timeout=timeout)


def branches(repo: Path) -> list[str]:
    out = subprocess.run(
        ["git", "-C", str(repo), "branch", "--format=%(refname:short)"], capture_output=True, text=True, check=True
    )
    return out.stdout.split()


def wait_for_text(path: Path, text: str, timeout_s: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if path.exists() and text in path.read_text(errors="replace"):
            return True
        time.sleep(0.2)
    return False
