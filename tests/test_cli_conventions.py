"""The `factory` CLI keeps its ecosystem's conventions: `--address`/`--namespace` as the `temporal` CLI spells
them, `--version`, help that shows flags as flags and positionals as RUN_ID-style names, bad values reported
as `error: NAME: what is wrong; what to do` (exit 2), and a start that loads no worker, workflows or model SDK.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from darkfactory import starter
from tests.conftest import DEMO

FACTORY = Path(sys.executable).parent / "factory"
HEAVY = ("temporalio.worker", "darkfactory.workflows", "darkfactory.activities", "anthropic")
"""What starting the CLI must not import: the SDK's worker, our workflows and activities, the model SDK."""


def _env(home: Path, **extra: str) -> dict[str, str]:
    """No TEMPORAL_/DARKFACTORY_/ANTHROPIC_/OTEL_ settings inherited; a home of the test's own."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("TEMPORAL_", "ANTHROPIC_", "DARKFACTORY_", "OTEL_"))
    }
    return {**env, "DARKFACTORY_HOME": str(home), "COLUMNS": "200", **extra}


def factory(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(FACTORY), *args], env=env, capture_output=True, text=True, timeout=120)


def _commands(command: Any, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every command's path under the root (`("schedule", "create")`), groups included."""
    found = [path]
    for name, sub in sorted(getattr(command, "commands", {}).items()):
        found += _commands(sub, (*path, name))
    return found


COMMANDS = _commands(typer.main.get_command(starter.app))


def test_version_prints_the_installed_version(tmp_path: Path) -> None:
    result = factory(_env(tmp_path), "--version")
    assert result.returncode == 0, result.stderr
    assert version("darkfactory") in result.stdout


def test_every_command_is_listed_for_the_help_checks() -> None:
    assert {("queue",), ("status",), ("schedule", "create"), ("backlog", "remove"), ("dev",)} <= set(COMMANDS)


@pytest.mark.parametrize("path", COMMANDS, ids=lambda path: " ".join(path) or "factory")
def test_help_shows_flags_without_values_and_positionals_as_metavars(path: tuple[str, ...]) -> None:
    result = CliRunner().invoke(starter.app, [*path, "--help"], prog_name="factory")
    assert result.exit_code == 0, result.output
    assert "<bool>" not in result.output
    usage = next(line for line in result.output.splitlines() if line.startswith("Usage:"))
    positionals = re.findall(r"[{\[]?([\w:]+)[}\]]?(?:\.\.\.)?", usage.split("[OPTIONS]", 1)[-1])
    assert all(name.isupper() for name in positionals), usage


def test_run_id_arguments_are_named_run_id() -> None:
    for path in (("status",), ("cancel",), ("approve",), ("audit",), ("report",)):
        usage = CliRunner().invoke(starter.app, [*path, "--help"], prog_name="factory").output
        assert "RUN_ID" in usage, (path, usage)


def test_dev_help_shows_the_ports_in_force(tmp_path: Path) -> None:
    result = factory(_env(tmp_path, DARKFACTORY_DEV_PORT="7301", DARKFACTORY_DEV_UI_PORT="8301"), "dev", "--help")
    assert "127.0.0.1:7301" in result.stdout and "127.0.0.1:8301" in result.stdout
    assert "8233" not in result.stdout


def test_an_address_nothing_listens_on_fails_fast_naming_it(tmp_path: Path) -> None:
    result = factory(_env(tmp_path), "--address", "127.0.0.1:1", "queue")
    assert result.returncode == 2
    assert "error: cannot reach Temporal at 127.0.0.1:1" in result.stderr
    assert "Traceback" not in result.stderr


def test_the_address_flag_also_follows_the_command_and_wins_over_the_variable(tmp_path: Path) -> None:
    result = factory(_env(tmp_path, TEMPORAL_ADDRESS="127.0.0.1:2"), "queue", "--address", "127.0.0.1:1")
    assert result.returncode == 2
    assert "127.0.0.1:1" in result.stderr and "127.0.0.1:2" not in result.stderr


BAD_SETTINGS = [
    ({}, ["--address", "nonsense", "queue"], "--address: 'nonsense' is not host:port"),
    ({"TEMPORAL_ADDRESS": "no-port"}, ["queue"], "TEMPORAL_ADDRESS: 'no-port' is not host:port"),
    ({"TEMPORAL_TLS": "maybe"}, ["--address", "127.0.0.1:1", "queue"], "TEMPORAL_TLS: is not true or false"),
    ({"DARKFACTORY_HOME": ""}, ["queue"], "DARKFACTORY_HOME: is set but empty"),
    ({"DARKFACTORY_MODEL_CONCURRENCY": "abc"}, ["queue"], "DARKFACTORY_MODEL_CONCURRENCY: is not a whole number"),
    ({"DARKFACTORY_DEV_PORT": "x"}, ["queue"], "DARKFACTORY_DEV_PORT: 'x' is not a port number"),
]


@pytest.mark.parametrize(("env", "args", "message"), BAD_SETTINGS, ids=[case[2].split(":")[0] for case in BAD_SETTINGS])
def test_a_bad_setting_is_an_error_line_naming_it(
    tmp_path: Path, env: dict[str, str], args: list[str], message: str
) -> None:
    result = factory(_env(tmp_path / "home", **env), *args)
    assert result.returncode == 2, result.stderr
    assert f"error: {message}" in result.stderr
    _no_pydantic_report(result.stderr)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--max-parallel", "0"], "error: --max-parallel: must be at least 1 (got 0); use 1 or more"),
        (["--max-turns", "9999"], "error: --max-turns: must be at most 500 (got 9999); use 500 or less"),
        (["--ship", "nonsense"], "error: --ship: 'nonsense' is not a ship mode; use branch, merge, push, pr"),
    ],
)
def test_a_bad_run_option_is_an_error_line_naming_the_option(
    tmp_path: Path, demo_repo: Path, args: list[str], message: str
) -> None:
    transcript = f"scripted:{DEMO / 'transcript.json'}"
    result = factory(
        _env(tmp_path / "home"), "run", "--repo", str(demo_repo), "--spec-text", "x", "--model", transcript, *args
    )
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    _no_pydantic_report(result.stderr)


def _no_pydantic_report(stderr: str) -> None:
    assert "errors.pydantic.dev" not in stderr
    assert "validation error" not in stderr
    assert "Traceback" not in stderr


def _imported(argv: list[str], env: dict[str, str]) -> set[str]:
    """The modules a `factory` invocation imports, from `python -X importtime`."""
    result = subprocess.run(
        [sys.executable, "-X", "importtime", str(FACTORY), *argv], env=env, capture_output=True, text=True, timeout=120
    )
    return {line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines() if line.startswith("import time:")}


def _heavy(modules: set[str]) -> list[str]:
    return sorted(m for m in modules if any(m == name or m.startswith(name + ".") for name in HEAVY))


def test_help_imports_no_worker_workflows_activities_or_model_sdk(tmp_path: Path) -> None:
    modules = _imported(["--help"], _env(tmp_path))
    assert "typer" in modules  # the measurement worked
    assert _heavy(modules) == []


def test_queue_imports_no_worker_workflows_activities_or_model_sdk(tmp_path: Path) -> None:
    modules = _imported(["--address", "127.0.0.1:1", "queue"], _env(tmp_path))
    assert "temporalio.client" in modules  # it got as far as connecting
    assert _heavy(modules) == []
