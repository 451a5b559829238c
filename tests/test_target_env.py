"""The target repository's own environment: built offline, without darkfactory's pytest plugins."""

from __future__ import annotations

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
