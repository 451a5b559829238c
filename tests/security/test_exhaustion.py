"""Family H: resource exhaustion inside the sandbox. Each is stopped at its cap with a typed reason (the
result's `limit`, `timed_out`, `truncated`, or the errno the command met), leaves no process behind, and
the next command runs normally."""

from __future__ import annotations

import dataclasses
import subprocess
from pathlib import Path

import pytest

from darkfactory.agent_tools import SHELL_TOOL, AgentTools
from darkfactory.contracts import ToolCall
from darkfactory.gates import run_gates
from darkfactory.sandbox import CommandResult, ResourceLimits, run_command
from darkfactory.sandbox_process import CGROUP_PARENT, CGROUP_ROOT
from tests.security.conftest import Host
from tests.security.demo_repos import hostile_change

pytestmark = pytest.mark.family("H")
SMALL = ResourceLimits(memory_bytes=256 << 20, processes=64, file_bytes=8 << 20, open_files=256)
MARKER = "df-exhaustion-marker"


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    path = tmp_path / "wt"
    path.mkdir()
    return path


def run(command: str, workdir: Path, *, timeout_s: float = 30, output_limit: int = 200_000) -> CommandResult:
    return run_command(
        ["bash", "-c", command], cwd=workdir, timeout_s=timeout_s, limits=SMALL, output_limit=output_limit
    )


def assert_recovered(workdir: Path, host: Host) -> None:
    leftovers = subprocess.run(["pgrep", "-f", MARKER], capture_output=True, text=True)
    assert leftovers.stdout == "", "a process outlived its command"
    mine = [
        p
        for c in ("pids", "memory")
        for p in (CGROUP_ROOT / c / CGROUP_PARENT).glob(f"cmd-{__import__('os').getpid()}-*")
    ]
    assert mine == [], "a command's cgroup was left behind"
    after = run("echo fine", workdir)
    assert after.ok and after.output == "fine\n", "the next command did not run normally"
    host.assert_untouched(after.output)


def test_fork_bomb(workdir: Path, host: Host) -> None:
    result = run(f": {MARKER}; bomb() {{ bomb | bomb & }}; bomb; until ! ( : ) 2>/dev/null; do :; done", workdir)
    assert result.limit == "pids_limit", result
    assert_recovered(workdir, host)


def test_memory_bomb(workdir: Path, host: Host) -> None:
    result = run("python3 -c 'x = bytearray(1 << 30); print(len(x))'", workdir)
    assert result.limit == "memory_limit" or "MemoryError" in result.output, result
    assert not result.ok
    assert_recovered(workdir, host)


def test_tmp_fill(workdir: Path, host: Host) -> None:
    # /tmp is a tmpfs charged to the command's memory cgroup: filling it fills the command's own budget.
    limits = dataclasses.replace(SMALL, file_bytes=4 << 30)
    command = ["bash", "-c", f"dd if=/dev/zero of=/tmp/fill bs=1M count=1024; : {MARKER}"]
    result = run_command(command, cwd=workdir, timeout_s=60, limits=limits)
    assert result.limit == "memory_limit" or "No space left" in result.output, result
    assert_recovered(workdir, host)


def test_worktree_fill_meets_the_file_size_cap(workdir: Path, host: Host) -> None:
    result = run("dd if=/dev/zero of=big.bin bs=1M count=64 2>&1; echo rc=$?", workdir)
    assert "File size limit exceeded" in result.output or "File too large" in result.output, result.output
    assert (workdir / "big.bin").stat().st_size <= SMALL.file_bytes
    assert_recovered(workdir, host)


def test_endless_output_is_capped(workdir: Path, host: Host) -> None:
    result = run(f"yes {MARKER}", workdir, timeout_s=3, output_limit=50_000)
    assert result.timed_out and result.truncated and len(result.output) < 60_000
    assert_recovered(workdir, host)


def test_huge_single_line(workdir: Path, host: Host) -> None:
    result = run("head -c 50000000 /dev/zero | tr '\\0' x", workdir, output_limit=20_000)
    assert result.truncated and len(result.output) < 30_000
    assert_recovered(workdir, host)


def test_a_command_that_never_ends_is_stopped_at_the_deadline(workdir: Path, host: Host) -> None:
    result = run(f"tail -f /dev/null; : {MARKER}", workdir, timeout_s=2)
    assert result.timed_out and not result.ok
    assert_recovered(workdir, host)


def test_cpu_spin(workdir: Path, host: Host) -> None:
    result = run(f"while :; do :; done; : {MARKER}", workdir, timeout_s=2)
    assert result.timed_out
    assert_recovered(workdir, host)


def test_output_that_never_stops_does_not_extend_the_deadline(workdir: Path, host: Host) -> None:
    result = run(f"while :; do echo -n .; done; : {MARKER}", workdir, timeout_s=2)
    assert result.timed_out and result.duration_s < 10
    assert_recovered(workdir, host)


def test_daemon_is_killed_with_its_command(workdir: Path, host: Host) -> None:
    result = run(f"setsid bash -c 'tail -f /dev/null; : {MARKER}' >/dev/null 2>&1 & disown; echo started", workdir)
    assert result.ok and result.duration_s < 10
    assert_recovered(workdir, host)


def test_descriptor_exhaustion(workdir: Path, host: Host) -> None:
    result = run("python3 -c 'fs = [open(\"/dev/null\") for _ in range(100000)]'", workdir)
    assert not result.ok and "Too many open files" in result.output
    assert_recovered(workdir, host)


def test_zombie_storm(workdir: Path, host: Host) -> None:
    code = "import os\nfor _ in range(500):\n    if os.fork() == 0:\n        os._exit(0)\nprint('spawned')"
    result = run(f'python3 -c "{code}"', workdir)
    assert result.limit == "pids_limit" or "Resource temporarily unavailable" in result.output, result
    assert_recovered(workdir, host)


def test_core_dump_is_not_written(workdir: Path, host: Host) -> None:
    result = run("ulimit -c; python3 -c 'import os, signal; os.kill(os.getpid(), signal.SIGSEGV)'", workdir)
    assert result.output.startswith("0\n") and not result.ok
    assert not list(workdir.glob("core*"))
    assert_recovered(workdir, host)


def test_agent_shell_reports_a_cap(workdir: Path, host: Host) -> None:
    tools = AgentTools(workdir, command_timeout_s=2)
    result = tools.execute(
        ToolCall(id="t", name=SHELL_TOOL["name"], input={"command": f"tail -f /dev/null; : {MARKER}"})
    )
    assert result.is_error and "timed out after 2 s" in result.content
    assert_recovered(workdir, host)


def test_a_test_that_never_ends_fails_the_gate_in_time(tmp_path: Path, host: Host) -> None:
    forever = f"import threading\n\n\ndef test_forever():\n    threading.Event().wait()  # {MARKER}\n"
    ctx = hostile_change(tmp_path, {"tests/test_forever.py": forever}, timeout_s=20)
    worktree = ctx.worktree
    (result,) = run_gates(dataclasses.replace(ctx)).results
    assert not result.passed
    assert "timed out" in (result.summary + result.feedback).lower(), result.summary
    assert_recovered(worktree, host)
