"""The sandbox, run for real: bubblewrap and the degraded tier, real processes, real files and git repos."""

from __future__ import annotations

import os
import secrets
import select
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from darkfactory import sandbox
from darkfactory.sandbox import CommandResult, ResourceLimits, SandboxUnavailable, run_command, sandbox_tier
from tests.conftest import git

REPO_ROOT = Path(__file__).resolve().parents[1]
SYSTEM_PYTHON = "/usr/bin/python3"
"""Debian's python: under /usr, so visible in the sandbox without extra binds."""


def _bwrap_available() -> bool:
    saved = os.environ.pop(sandbox.SANDBOX_ENV_VAR, None)
    try:
        return sandbox_tier() == "bwrap"
    finally:
        if saved is not None:
            os.environ[sandbox.SANDBOX_ENV_VAR] = saved


@pytest.fixture(params=["bwrap", "none"])
def tier(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Runs a test once per tier, forced through DARKFACTORY_SANDBOX."""
    name = str(request.param)
    if name == "bwrap" and not _bwrap_available():
        pytest.skip("bubblewrap is not usable here (apt-get install bubblewrap)")
    monkeypatch.setenv(sandbox.SANDBOX_ENV_VAR, name)
    return name


@pytest.fixture
def bwrap(monkeypatch: pytest.MonkeyPatch) -> None:
    if not _bwrap_available():
        pytest.skip("bubblewrap is not usable here (apt-get install bubblewrap)")
    monkeypatch.setenv(sandbox.SANDBOX_ENV_VAR, "bwrap")


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    path = tmp_path / "work"
    path.mkdir()
    return path


def make_repo(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    git(path, "init", "-q", "-b", "main")
    (path / "a.txt").write_text("a\n")
    git(path, "add", "a.txt")
    git(path, "commit", "-q", "-m", "init")
    return path


def pids_running(argv: list[str]) -> list[int]:
    """Host pids whose command line is exactly `argv` (a unique marker argument makes this precise)."""
    want = ("\0".join(argv) + "\0").encode()
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if Path(f"/proc/{entry}/cmdline").read_bytes() == want:
                    found.append(int(entry))
            except OSError:
                continue
    return found


def wait_until_gone(argv: list[str], deadline_s: float = 10.0) -> list[int]:
    """Wait for every process running `argv` to exit: a pidfd turns readable at exit, so no polling sleep."""
    deadline = time.monotonic() + deadline_s
    for pid in pids_running(argv):
        try:
            fd = os.pidfd_open(pid)
        except ProcessLookupError:
            continue
        try:
            select.select([fd], [], [], max(deadline - time.monotonic(), 0.0))
        finally:
            os.close(fd)
    return pids_running(argv)


def marker_sleep() -> list[str]:
    """`sleep` with a unique duration, so the test can find exactly this process in /proc."""
    return ["sleep", f"{700 + secrets.randbelow(200)}.{secrets.randbelow(10**6):06d}"]


class FifoGate:
    """An on_tick hook that lets a waiting command finish (by writing to its FIFO) once `ready()` holds.
    The command blocks on `read < gate.fifo`, so no timing assumption is needed."""

    def __init__(self, directory: Path, ready: Callable[[], bool]) -> None:
        self.fifo = directory / "gate.fifo"
        os.mkfifo(self.fifo)
        self._ready = ready
        self.ticks = 0
        self.was_ready = False

    def __call__(self) -> None:
        self.ticks += 1
        if not self._ready():
            return
        self.was_ready = True
        try:
            fd = os.open(self.fifo, os.O_WRONLY | os.O_NONBLOCK)
        except OSError:
            return  # the reader has not opened it yet: try on the next tick
        with os.fdopen(fd, "w") as writer:
            writer.write("go\n")


# --------------------------------------------------------------------------------------------------
# Environment


def test_parent_secrets_are_absent_inside(tier: str, workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-api03-CANARYCANARY")
    monkeypatch.setenv("TEMPORAL_ADDRESS", "10.0.0.1:7233")
    result = run_command(["env"], cwd=workdir)
    assert result.ok, result.output
    assert result.tier == tier
    names = {line.split("=", 1)[0] for line in result.output.splitlines() if "=" in line}
    assert names <= {"PATH", "HOME", "LANG", "TMPDIR", "PYTHONDONTWRITEBYTECODE", "PYTHONHASHSEED", "PWD"}
    assert "CANARY" not in result.output
    assert "TEMPORAL" not in result.output


@pytest.mark.parametrize("name", ["ANTHROPIC_API_KEY", "GITHUB_TOKEN", "client_secret", "DB_PASSWORD", "KEYRING"])
def test_credential_like_env_names_are_refused(name: str, workdir: Path) -> None:
    with pytest.raises(ValueError, match="credential"):
        run_command(["true"], cwd=workdir, env={name: "x"})


def test_extra_env_and_path_prefix_reach_the_command(tier: str, workdir: Path) -> None:
    bin_dir = workdir / "bin"
    bin_dir.mkdir()
    tool = bin_dir / "hello-tool"
    tool.write_text('#!/bin/sh\necho "hello $GREETING_NAME"\n')
    tool.chmod(0o755)
    result = run_command(["hello-tool"], cwd=workdir, env={"GREETING_NAME": "world"}, path_prefix=[bin_dir])
    assert result.ok, result.output
    assert result.output == "hello world\n"


def test_missing_program_is_exit_127(tier: str, workdir: Path) -> None:
    result = run_command(["no-such-program-xyz"], cwd=workdir)
    assert result.returncode == 127
    assert "command not found: no-such-program-xyz" in result.output


def test_home_is_fresh_and_writable(tier: str, workdir: Path) -> None:
    result = run_command(["sh", "-c", 'ls -A "$HOME"; touch "$HOME/x" && echo wrote'], cwd=workdir)
    assert result.ok, result.output
    assert result.output == "wrote\n"


# --------------------------------------------------------------------------------------------------
# Process control and output


def test_timeout_kills_the_process_group(tier: str, workdir: Path) -> None:
    grandchild = marker_sleep()
    seen: list[int] = []

    def look() -> None:
        seen.extend(pids_running(grandchild))

    # The grandchild runs in the background in the command's own process group, like a test's server.
    result = run_command(["sh", "-c", f"{' '.join(grandchild)} & wait"], cwd=workdir, timeout_s=2.5, on_tick=look)
    assert result.timed_out
    assert not result.ok
    assert result.duration_s < 10
    assert seen, "the grandchild never showed up in /proc; the test proves nothing"
    assert wait_until_gone(grandchild) == []


def test_bwrap_kills_a_daemon_that_left_the_process_group(bwrap: None, workdir: Path) -> None:
    daemon = marker_sleep()
    gate = FifoGate(workdir, ready=lambda: bool(pids_running(daemon)))
    # setsid -f: the daemon leaves the command's session, so only the pid namespace can take it down.
    result = run_command(
        ["sh", "-c", f"setsid -f {' '.join(daemon)} >/dev/null 2>&1; read line < gate.fifo; echo done"],
        cwd=workdir,
        timeout_s=30,
        on_tick=gate,
    )
    assert result.ok, result.output
    assert gate.was_ready
    assert wait_until_gone(daemon) == []


def test_on_tick_is_called_while_the_command_runs(tier: str, workdir: Path) -> None:
    gate = FifoGate(workdir, ready=lambda: gate.ticks >= 2)
    result = run_command(["sh", "-c", "read line < gate.fifo; echo $line"], cwd=workdir, on_tick=gate, timeout_s=30)
    assert result.ok, result.output
    assert result.output == "go\n"
    assert gate.ticks >= 2


def test_an_exception_from_on_tick_kills_the_command(tier: str, workdir: Path) -> None:
    child = marker_sleep()

    def cancel() -> None:
        if pids_running(child):
            raise KeyboardInterrupt("cancelled")

    with pytest.raises(KeyboardInterrupt):
        run_command(child, cwd=workdir, timeout_s=30, on_tick=cancel)
    assert wait_until_gone(child) == []


def test_output_is_capped_keeping_head_and_tail(tier: str, workdir: Path) -> None:
    script = "print('HEAD'); print('x' * 1_000_000); print('TAIL')"
    result = run_command([SYSTEM_PYTHON, "-c", script], cwd=workdir, output_limit=1000)
    assert result.ok
    assert result.truncated
    assert result.output.startswith("HEAD\nx")
    assert result.output.endswith("x\nTAIL\n")
    assert "bytes truncated ...]" in result.output
    assert len(result.output) < 1100


def test_stdout_and_stderr_are_interleaved_and_stdin_is_empty(tier: str, workdir: Path) -> None:
    result = run_command(["sh", "-c", "echo out; echo err >&2; cat; echo end"], cwd=workdir, timeout_s=30)
    assert result.output == "out\nerr\nend\n"
    assert not result.truncated


def test_exit_code_is_reported(tier: str, workdir: Path) -> None:
    result = run_command(["sh", "-c", "exit 3"], cwd=workdir)
    assert result.returncode == 3
    assert not result.ok
    assert result.argv == ("sh", "-c", "exit 3")


def test_no_shell_interprets_arguments(tier: str, workdir: Path) -> None:
    result = run_command(["echo", "a;", "touch", "pwned", "$(touch pwned2)"], cwd=workdir)
    assert result.output == "a; touch pwned $(touch pwned2)\n"
    assert not (workdir / "pwned").exists()
    assert not (workdir / "pwned2").exists()


# --------------------------------------------------------------------------------------------------
# bwrap isolation


@pytest.fixture
def listener() -> Iterator[int]:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        yield int(server.getsockname()[1])


def _connect_script(port: int) -> list[str]:
    return [
        SYSTEM_PYTHON,
        "-c",
        f"import socket; socket.create_connection(('127.0.0.1', {port}), timeout=5); print('connected')",
    ]


def test_bwrap_has_no_network(bwrap: None, workdir: Path, listener: int) -> None:
    result = run_command(_connect_script(listener), cwd=workdir, timeout_s=30)
    assert result.returncode != 0
    assert "ConnectionRefusedError" in result.output  # the sandbox's own loopback, nothing listening there


def test_bwrap_network_true_still_hides_the_hosts_loopback(bwrap: None, workdir: Path, listener: int) -> None:
    # Setup needs the package index, never the worker's loopback services (the Temporal frontend).
    result = run_command(_connect_script(listener), cwd=workdir, timeout_s=30, network=True)
    assert result.returncode != 0
    assert "connected" not in result.output
    if shutil.which("slirp4netns"):
        assert not result.notes, result.notes
        # slirp's gateway stands for the host's loopback unless --disable-host-loopback: it must be refused.
        via_gateway = run_command(
            [SYSTEM_PYTHON, "-c", f"import socket; socket.create_connection(('10.0.2.2', {listener}), timeout=5)"],
            cwd=workdir,
            timeout_s=30,
            network=True,
        )
        assert via_gateway.returncode != 0


def test_bwrap_writes_only_to_cwd_and_writable_paths(bwrap: None, tmp_path: Path, workdir: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    extra = tmp_path / "extra"
    extra.mkdir()
    targets = [str(outside / "x"), str(tmp_path / "x"), "/usr/pwned", "/pwned", str(extra / "x"), "inside.txt"]
    script = (
        "import pathlib\n"
        f"for p in {targets!r}:\n"
        "    try:\n"
        "        pathlib.Path(p).write_text('x'); print('ok', p)\n"
        "    except OSError as e:\n"
        "        print('refused', p, e.errno)\n"
    )
    result = run_command([SYSTEM_PYTHON, "-c", script], cwd=workdir, writable_paths=[extra])
    assert result.ok, result.output
    assert f"ok {extra / 'x'}" in result.output
    assert "ok inside.txt" in result.output
    assert "refused /usr/pwned" in result.output
    assert "refused /pwned" in result.output
    assert not (outside / "x").exists()
    assert not (tmp_path / "x").exists()
    assert (workdir / "inside.txt").read_text() == "x"


def test_bwrap_readonly_paths_are_visible_but_not_writable(bwrap: None, tmp_path: Path, workdir: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "f.txt").write_text("content\n")
    result = run_command(
        ["sh", "-c", f"cat {data}/f.txt; echo y > {data}/f.txt || echo refused"], cwd=workdir, readonly_paths=[data]
    )
    assert "content\n" in result.output
    assert "refused" in result.output
    assert (data / "f.txt").read_text() == "content\n"


def test_bwrap_hides_host_secrets(bwrap: None, workdir: Path) -> None:
    result = run_command(["sh", "-c", "cat /etc/shadow; ls /root; ls /run; ls /proc"], cwd=workdir)
    assert "root:" not in result.output
    assert "No such file or directory" in result.output
    pids = [line for line in result.output.split() if line.isdigit()]
    assert len(pids) <= 4  # a fresh pid namespace: only the sandbox's own processes


def test_bwrap_git_dir_is_read_only(bwrap: None, tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    config_before = (repo / ".git" / "config").read_text()
    script = "echo '[core]' >> .git/config; touch .git/hooks/pre-commit; rm -rf .git; echo edited > a.txt"
    result = run_command(["sh", "-c", script], cwd=repo)
    assert "Read-only file system" in result.output
    assert (repo / ".git" / "config").read_text() == config_before
    assert not (repo / ".git" / "hooks" / "pre-commit").exists()
    assert (repo / "a.txt").read_text() == "edited\n"  # the tree itself stays writable
    status = run_command(["git", "status", "--porcelain"], cwd=repo)
    assert status.ok, status.output
    assert status.output == " M a.txt\n"


def test_bwrap_worktree_git_file_and_gitdir_are_read_only(bwrap: None, tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    worktree = tmp_path / "wt"
    git(repo, "worktree", "add", "-q", "-b", "task", str(worktree))
    dot_git = (worktree / ".git").read_text()
    gitdir = dot_git.removeprefix("gitdir:").strip()
    script = (
        f"echo 'gitdir: /tmp' > .git; touch {gitdir}/planted; touch {repo}/.git/hooks/post-checkout; echo b > a.txt"
    )
    result = run_command(["sh", "-c", script], cwd=worktree)
    assert "Read-only file system" in result.output
    assert (worktree / ".git").read_text() == dot_git
    assert not Path(gitdir, "planted").exists()
    assert not (repo / ".git" / "hooks" / "post-checkout").exists()
    status = run_command(["git", "status", "--porcelain"], cwd=worktree)
    assert status.ok, status.output
    assert status.output == " M a.txt\n"


def test_bwrap_runs_a_venv_made_from_this_machines_python(bwrap: None, tmp_path: Path, workdir: Path) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    result = run_command(
        ["python", "-c", "import sys; print(1); print(sys.prefix)"],
        cwd=workdir,
        path_prefix=[venv / "bin"],
        readonly_paths=[venv, Path(sys.base_prefix)],
    )
    assert result.ok, result.output
    assert result.output == f"1\n{venv}\n"


def test_bwrap_symlinked_readonly_path_resolves_inside(bwrap: None, tmp_path: Path, workdir: Path) -> None:
    real = tmp_path / "real-tools"
    real.mkdir()
    tool = real / "tool"
    tool.write_text("#!/bin/sh\necho via-link\n")
    tool.chmod(0o755)
    link = tmp_path / "linked-tools"
    link.symlink_to(real)
    result = run_command(["tool"], cwd=workdir, path_prefix=[link], readonly_paths=[link])
    assert result.ok, result.output
    assert result.output == "via-link\n"


def test_bwrap_argv_profile(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    venv = tmp_path / "repo" / ".venv"
    venv.mkdir()
    argv = sandbox.bwrap_argv(
        "/usr/bin/bwrap",
        ["pytest", "-q"],
        cwd=str(repo),
        env={"PATH": "/usr/bin", "HOME": "/tmp/home"},
        readonly_paths=[venv],
    )
    joined = " ".join(argv)
    for flag in ["--unshare-all", "--disable-userns", "--die-with-parent", "--new-session", "--clearenv"]:
        assert flag in argv
    assert "--share-net" not in argv
    assert "/etc/shadow" not in joined
    assert "/etc/resolv.conf" not in joined
    # Order matters: the tree rw first, then the deeper read-only .git and venv on top, then remount.
    rw = argv.index("--bind")
    assert argv[rw + 1] == str(repo)
    assert argv.index(str(repo / ".git")) > rw
    assert argv.index(str(venv)) > rw
    assert argv.index("--remount-ro") > argv.index(str(venv))
    assert argv[-3:] == ["--", "pytest", "-q"]


# --------------------------------------------------------------------------------------------------
# Degraded tier and tier selection


def _run_in_fresh_python(code: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_degraded_tier_forced_by_env_works_and_warns_once(tmp_path: Path) -> None:
    code = (
        "from pathlib import Path\n"
        "from darkfactory.sandbox import run_command\n"
        f"a = run_command(['echo', 'one'], cwd=Path({str(tmp_path)!r}))\n"
        f"b = run_command(['echo', 'two'], cwd=Path({str(tmp_path)!r}))\n"
        "print(a.tier, a.output.strip(), b.tier, b.output.strip())\n"
    )
    done = _run_in_fresh_python(code, {"PATH": os.environ["PATH"], sandbox.SANDBOX_ENV_VAR: "none"})
    assert done.returncode == 0, done.stderr
    assert done.stdout == "none one none two\n"
    assert done.stderr.count("SANDBOX DEGRADED") == 1
    assert "apt-get install bubblewrap" in done.stderr


def test_degraded_tier_applies_rlimits(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(sandbox.SANDBOX_ENV_VAR, "none")
    result = run_command(["sh", "-c", "ulimit -c; ulimit -n; ulimit -f"], cwd=workdir)
    core, nofile, fsize = result.output.split()
    assert core == "0"
    assert int(nofile) <= ResourceLimits().open_files
    assert fsize != "unlimited"


def test_strict_refuses_the_degraded_tier(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(sandbox.SANDBOX_ENV_VAR, "none")
    marker = workdir / "ran"
    with pytest.raises(SandboxUnavailable, match="apt-get install bubblewrap"):
        run_command(["touch", str(marker)], cwd=workdir, strict=True)
    assert not marker.exists()


def test_forcing_bwrap_without_bubblewrap_raises_with_install_hint(tmp_path: Path) -> None:
    code = (
        "from pathlib import Path\n"
        "from darkfactory.sandbox import SandboxUnavailable, run_command\n"
        "try:\n"
        f"    run_command(['true'], cwd=Path({str(tmp_path)!r}))\n"
        "except SandboxUnavailable as e:\n"
        "    print('refused:', e)\n"
    )
    # No bwrap on PATH: the probe cannot find it.
    done = _run_in_fresh_python(code, {"PATH": str(tmp_path), sandbox.SANDBOX_ENV_VAR: "bwrap"})
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("refused:")
    assert "apt-get install bubblewrap" in done.stdout


def test_unknown_tier_value_is_an_error(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(sandbox.SANDBOX_ENV_VAR, "docker")
    with pytest.raises(ValueError, match="DARKFACTORY_SANDBOX"):
        run_command(["true"], cwd=workdir)


def test_auto_tier_is_bwrap_where_bubblewrap_is_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    # An installed but unusable bwrap (user namespaces off) would silently degrade: make that loud here.
    if shutil.which("bwrap") is None:
        pytest.skip("bubblewrap is not installed (apt-get install bubblewrap)")
    monkeypatch.delenv(sandbox.SANDBOX_ENV_VAR, raising=False)
    assert sandbox_tier() == "bwrap"


def test_command_result_ok() -> None:
    base = CommandResult(
        argv=("x",), returncode=0, output="", timed_out=False, duration_s=0.1, tier="none", truncated=False
    )
    assert base.ok
    assert not CommandResult(("x",), 1, "", False, 0.1, "none", False).ok
    assert not CommandResult(("x",), 0, "", True, 0.1, "none", False).ok
