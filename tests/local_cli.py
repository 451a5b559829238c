"""Running `factory` and `factory-worker` as processes in local mode, against the session's dev server.

Local mode (no TEMPORAL_ADDRESS) reuses whatever Temporal server listens on DARKFACTORY_DEV_PORT, so
pointing it at the session's `start_dev_server()` runs the in-process worker path on a server the tests
own, without starting an embedded one.
"""

from __future__ import annotations

import os
import selectors
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import IO

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


def read_until(stream: IO[bytes], text: str, timeout_s: float = 60.0) -> tuple[bool, str]:
    """Read a process's output until `text` appears (True) or it closes or `timeout_s` passes (False); and
    what was read. Waits on the pipe itself, never on the clock."""
    seen = b""
    deadline = time.monotonic() + timeout_s
    with selectors.DefaultSelector() as selector:
        selector.register(stream, selectors.EVENT_READ)
        while text.encode() not in seen:
            left = deadline - time.monotonic()
            if left <= 0 or not selector.select(left):
                return False, seen.decode(errors="replace")
            chunk = os.read(stream.fileno(), 65536)
            if not chunk:
                return False, seen.decode(errors="replace")
            seen += chunk
    return True, seen.decode(errors="replace")
