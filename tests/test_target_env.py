"""The target repository's own environment: built offline, without darkfactory's pytest plugins."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

import pytest

from darkfactory.target_env import TargetEnvError, ensure_target_env, fingerprint
from tests.conftest import DEMO


def test_environment_has_pytest_but_none_of_darkfactorys_plugins(tmp_path: Path) -> None:
    env = ensure_target_env(DEMO / "repo", tmp_path / "envs")

    def imports(module: str) -> bool:
        return subprocess.run([str(env.python), "-c", f"import {module}"], capture_output=True).returncode == 0

    assert imports("pytest")
    assert not imports("pytest_asyncio"), "darkfactory's pytest plugins must not leak into the target's tests"
    assert not imports("temporalio")
    suite = subprocess.run(
        [str(env.python), "-m", "pytest", "-q", "-p", "no:cacheprovider"],
        cwd=DEMO / "repo",
        capture_output=True,
        text=True,
    )
    assert suite.returncode == 0, suite.stdout
    assert "2 passed" in suite.stdout


def test_environment_is_reused_until_the_dependency_files_change(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "pyproject.toml").write_text('[project]\nname = "x"\nversion = "1"\n')
    first = ensure_target_env(repo, tmp_path / "envs")
    assert ensure_target_env(repo, tmp_path / "envs") == first

    (repo / "pyproject.toml").write_text('[project]\nname = "x"\nversion = "2"\n')

    assert fingerprint(repo, None) != first.fingerprint


def test_a_half_built_environment_is_rebuilt(tmp_path: Path) -> None:
    env = ensure_target_env(DEMO / "repo", tmp_path / "envs")
    (env.root / ".ready").unlink()
    (env.root / "bin" / "python").unlink()  # what a crash mid-setup could leave

    rebuilt = ensure_target_env(DEMO / "repo", tmp_path / "envs")

    assert rebuilt.python.exists() and (rebuilt.root / ".ready").exists()


def test_a_suite_that_needs_its_own_plugin_runs_as_in_its_own_ci(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    (repo / "tests").mkdir(parents=True)
    (repo / "pyproject.toml").write_text('[tool.pytest.ini_options]\nasyncio_mode = "auto"\n')
    (repo / "tests" / "test_async.py").write_text(
        "import asyncio\n\n\nasync def test_awaits_a_future():\n"
        "    future = asyncio.get_running_loop().create_future()\n"
        "    future.set_result(7)\n    assert await future == 7\n"
    )
    plain = ensure_target_env(repo, tmp_path / "envs")
    without_plugin = subprocess.run(
        [str(plain.python), "-m", "pytest", "-q", "-p", "no:cacheprovider"], cwd=repo, capture_output=True, text=True
    )
    assert without_plugin.returncode != 0  # our pytest-asyncio did not leak in to make it pass

    setup = [["python", "-m", "pip", "install", "--quiet", "pytest", "pytest-asyncio"]]
    try:
        env = ensure_target_env(repo, tmp_path / "envs", setup)
    except TargetEnvError as exc:
        pytest.skip(f"the package index is not reachable here: {str(exc)[:200]}")
    result = subprocess.run(
        [str(env.python), "-m", "pytest", "-q", "-p", "no:cacheprovider"], cwd=repo, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout
    assert env.fingerprint != plain.fingerprint


EVIL_BACKEND = """
import glob, os, pathlib, socket
found = []
for path in glob.glob('/proc/*/environ'):
    try:
        data = open(path, 'rb').read()
    except OSError:
        continue
    if b'CANARY' in data:
        found.append(path)
try:
    pathlib.Path({marker!r}).write_text('setup ran on the host')
except OSError:
    pass
try:
    socket.create_connection(('127.0.0.1', {port}), timeout=3)
    print('REACHED THE HOST LOOPBACK')
except OSError:
    pass
print('environ with canary:', found)
raise SystemExit('evil backend done')
"""


def test_a_malicious_build_backend_in_a_changed_requirement_gets_nothing_of_the_host(tmp_path: Path) -> None:
    canary = "sk-ant-api03-CANARY" + "x" * 24
    marker = tmp_path / "host-marker"
    # A stand-in for the worker: a process whose initial environment holds the key, as /proc shows it.
    worker = subprocess.Popen(["sleep", "600"], env={"ANTHROPIC_API_KEY": canary})
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listener.setblocking(False)
        port = listener.getsockname()[1]
        repo = tmp_path / "repo"
        (repo / "evilpkg").mkdir(parents=True)
        (repo / "requirements.txt").write_text("./evilpkg\n")
        (repo / "evilpkg" / "pyproject.toml").write_text(
            '[project]\nname = "evilpkg"\nversion = "1"\n'
            '[build-system]\nrequires = []\nbuild-backend = "evil_backend"\nbackend-path = ["."]\n'
        )
        (repo / "evilpkg" / "evil_backend.py").write_text(EVIL_BACKEND.format(marker=str(marker), port=port))

        with pytest.raises(TargetEnvError) as failure:
            ensure_target_env(repo, tmp_path / "envs")

        with pytest.raises(BlockingIOError):
            listener.accept()  # nobody connected to the host's loopback
    worker.kill()
    worker.wait()
    message = str(failure.value)
    assert "evil backend done" in message  # the backend did run (inside the sandbox)
    assert "environ with canary: []" in message
    assert "REACHED" not in message and canary not in message
    assert not marker.exists()
    assert not list((repo / "evilpkg").glob("*.egg-info")), "setup built in a copy, not in the judged tree"


def test_a_planted_venv_module_in_the_tree_is_not_run(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    (repo / "venv").mkdir(parents=True)
    marker = tmp_path / "host-marker"
    (repo / "venv" / "__main__.py").write_text(f"open({str(marker)!r}, 'w').write('pwned')\n")
    (repo / "venv" / "__init__.py").write_text("")
    (repo / "requirements.txt").write_text("")

    env = ensure_target_env(repo, tmp_path / "envs")

    assert env.python.exists()
    assert not marker.exists()
