"""The `factory` CLI as a person runs it: subprocesses, the embedded server on test ports, real git repos."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from temporalio.testing import WorkflowEnvironment

from darkfactory.devserver import is_listening
from darkfactory.scripted import context_from_request
from darkfactory.testing.fake_messages_api import FakeMessagesServer, ScriptResponder
from darkfactory.workspace import list_branches
from tests.conftest import DEMO, git

FACTORY = Path(sys.executable).parent / "factory"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def cli_env(factory_home: Path) -> Iterator[dict[str, str]]:
    """Environment for CLI runs: local mode, the embedded server on free ports, no credentials inherited."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("TEMPORAL_", "ANTHROPIC_", "DARKFACTORY_", "OTEL_"))
    }
    env.update(
        DARKFACTORY_HOME=str(factory_home),
        DARKFACTORY_DEV_PORT=str(_free_port()),
        DARKFACTORY_DEV_UI_PORT=str(_free_port()),
        COLUMNS="200",
    )
    yield env
    subprocess.run([str(FACTORY), "dev", "--stop"], env=env, capture_output=True, timeout=60)


def factory(env: dict[str, str], *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(FACTORY), *args], env=env, capture_output=True, text=True, timeout=timeout)


# -- bad input: a clear error, exit 2, nothing created ---------------------------------------------


def _no_factory_branches(repo: Path) -> bool:
    return list_branches(str(repo), "factory/") == []


def test_a_repo_path_that_does_not_exist_is_refused(cli_env: dict[str, str], tmp_path: Path) -> None:
    result = factory(
        cli_env,
        "run",
        "--repo",
        str(tmp_path / "nope"),
        "--spec-text",
        "x",
        "--model",
        "scripted:" + str(DEMO / "transcript.json"),
    )
    assert result.returncode == 2
    assert f"{tmp_path / 'nope'} does not exist" in result.stderr


def test_a_directory_that_is_not_a_git_repo_is_refused(cli_env: dict[str, str], tmp_path: Path) -> None:
    result = factory(
        cli_env,
        "run",
        "--repo",
        str(tmp_path),
        "--spec-text",
        "x",
        "--model",
        "scripted:" + str(DEMO / "transcript.json"),
    )
    assert result.returncode == 2
    assert "is not a git repository" in result.stderr


def test_a_missing_base_branch_is_refused_and_creates_no_branch(cli_env: dict[str, str], demo_repo: Path) -> None:
    result = factory(
        cli_env,
        "run",
        "--repo",
        str(demo_repo),
        "--base",
        "develop",
        "--spec-text",
        "x",
        "--model",
        "scripted:" + str(DEMO / "transcript.json"),
    )
    assert result.returncode == 2
    assert "branch 'develop' does not exist" in result.stderr and "pass --base" in result.stderr
    assert _no_factory_branches(demo_repo)


@pytest.mark.parametrize("spec_args", [["--spec-text", "   "], ["--spec", "EMPTY_FILE"]])
def test_an_empty_spec_is_refused_and_creates_no_branch(
    cli_env: dict[str, str], demo_repo: Path, tmp_path: Path, spec_args: list[str]
) -> None:
    empty = tmp_path / "empty.md"
    empty.write_text("\n\n")
    args = [str(empty) if arg == "EMPTY_FILE" else arg for arg in spec_args]
    result = factory(
        cli_env, "run", "--repo", str(demo_repo), *args, "--model", "scripted:" + str(DEMO / "transcript.json")
    )
    assert result.returncode == 2
    assert "empty" in result.stderr
    assert _no_factory_branches(demo_repo)


def test_an_invalid_policy_file_is_refused_naming_the_key_before_anything_starts(
    cli_env: dict[str, str], demo_repo: Path
) -> None:
    (demo_repo / ".factory").mkdir()
    (demo_repo / ".factory" / "policy.toml").write_text("[limits]\nmax_atempts = 5\n")
    git(demo_repo, "add", "-A")
    git(demo_repo, "commit", "-q", "-m", "policy with a typo")
    result = factory(
        cli_env,
        "run",
        "--repo",
        str(demo_repo),
        "--spec",
        str(DEMO / "spec.md"),
        "--model",
        f"scripted:{DEMO / 'transcript.json'}",
    )
    assert result.returncode == 2
    assert "limits.max_atempts" in result.stderr and ".factory/policy.toml" in result.stderr
    assert _no_factory_branches(demo_repo)


def test_no_api_key_and_no_transcript_says_what_to_set(cli_env: dict[str, str], demo_repo: Path) -> None:
    result = factory(cli_env, "run", "--repo", str(demo_repo), "--spec", str(DEMO / "spec.md"))
    assert result.returncode == 2
    assert "ANTHROPIC_API_KEY" in result.stderr and "scripted:" in result.stderr
    assert _no_factory_branches(demo_repo)


# -- the real Anthropic SDK against a local Messages API server --------------------------------------


def test_run_json_over_the_anthropic_sdk_merges_and_feeds_gate_failures_back(
    cli_env: dict[str, str], demo_repo: Path
) -> None:
    with FakeMessagesServer(ScriptResponder(DEMO / "transcript.json")) as server:
        env = {**cli_env, "ANTHROPIC_BASE_URL": server.base_url, "ANTHROPIC_API_KEY": "sk-test-not-a-secret-42"}
        result = factory(
            env, "run", "--repo", str(demo_repo), "--spec", str(DEMO / "spec.md"), "--ship", "merge", "--json"
        )
        requests = server.requests

    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout)
    assert summary["phase"] == "shipped" and summary["scripted"] is False
    assert [(t["id"], t["state"]) for t in summary["tasks"]] == [
        ("add-slugify", "merged"),
        ("export-slugify", "merged"),
    ]
    assert summary["shipped_sha"] == git(demo_repo, "rev-parse", "main")
    assert summary["usage"]["calls"] == len(requests) == 13  # plan, 8 agent turns, 2 test writers, 2 reviews
    # Every call went through the SDK with the configured key; the key appears in no output.
    # (SDK 2.x sends the key as `authorization`; older ones as `x-api-key`.)
    assert all(
        "sk-test-not-a-secret-42" in r.headers.get("x-api-key", "") + r.headers.get("authorization", "")
        for r in requests
    )
    assert "sk-test-not-a-secret-42" not in result.stdout + result.stderr
    # The retry's first request carries the failing test id from the tests gate, marked as data.
    retry = next(r for r in requests if context_from_request(r.body).key == "agent:add-slugify:2:1")
    first_message = retry.body["messages"][0]["content"]
    # A list of blocks since the repository overview leads the first message; the feedback is in the text.
    first_text = first_message if isinstance(first_message, str) else "\n".join(b["text"] for b in first_message)
    assert 'source="gate feedback"' in first_text and "test_slugify_drops_punctuation_and_outer_spaces" in first_text
    first_attempt = next(r for r in requests if context_from_request(r.body).key == "agent:add-slugify:1:1")
    assert "gate feedback" not in json.dumps(first_attempt.body["messages"][0]["content"])
    # The reviewer works in a fresh context: one user message with spec, task, diff and gate results — no
    # part of the generator's conversation (its words, its tool calls, its tool results).
    reviews = [r for r in requests if context_from_request(r.body).purpose == "review"]
    assert len(reviews) == 2
    generator_words = ["I'll look at the package first.", "Adding the module and its tests.", "toolu_", "tool_result"]
    for review in reviews:
        assert [m["role"] for m in review.body["messages"]] == ["user"]
        body = json.dumps(review.body)
        assert 'source=\\"diff\\"' in body and "Deterministic checks on this change" in body  # body is JSON
        assert not [words for words in generator_words if words in body]
    # The ended run's summary stays readable by id, with no worker running.
    status = factory(cli_env, "status", summary["run_id"], "--json")
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["shipped_sha"] == summary["shipped_sha"]


def test_a_repeated_run_id_watches_the_existing_run_instead_of_building_twice(
    cli_env: dict[str, str], demo_repo: Path
) -> None:
    args = [
        "run",
        "--repo",
        str(demo_repo),
        "--spec",
        str(DEMO / "spec.md"),
        "--run-id",
        f"once-{demo_repo.parent.name}",
        "--model",
        f"scripted:{DEMO / 'transcript.json'}",
        "--json",
    ]
    first = factory(cli_env, *args)
    assert first.returncode == 0, first.stderr[-2000:]

    second = factory(cli_env, *args)

    assert second.returncode == 0, second.stderr[-2000:]
    assert "already exists; watching it" in second.stderr
    assert json.loads(second.stdout) == json.loads(first.stdout)
    branch = json.loads(first.stdout)["integration_branch"]
    assert len(git(demo_repo, "log", "--format=%H", f"main..{branch}").splitlines()) == 2


def test_status_of_an_unknown_run_is_a_clear_error(cli_env: dict[str, str]) -> None:
    result = factory(cli_env, "status", "no-such-run")
    assert result.returncode == 2
    assert "no run with id no-such-run" in result.stderr


# -- the demo, as the README's first command runs it ------------------------------------------------


def _offline(argv: list[str]) -> list[str]:
    """Run `argv` in a network namespace with only loopback, where this machine allows it (root here)."""
    if shutil.which("unshare") and subprocess.run(["unshare", "-n", "true"], capture_output=True).returncode == 0:
        return ["unshare", "-n", "sh", "-c", 'ip link set lo up 2>/dev/null; exec "$@"', "sh", *argv]
    return argv


def test_demo_runs_offline_to_a_merged_commit_and_says_the_model_was_scripted(
    cli_env: dict[str, str], tmp_path: Path
) -> None:
    # Its own home and ports: the server it starts lives in the demo's network namespace.
    env = {
        **cli_env,
        "DARKFACTORY_HOME": str(tmp_path / "home"),
        "DARKFACTORY_DEV_PORT": str(_free_port()),
        "DARKFACTORY_DEV_UI_PORT": str(_free_port()),
    }
    try:
        result = subprocess.run(_offline([str(FACTORY), "demo"]), env=env, capture_output=True, text=True, timeout=600)
    finally:
        factory(env, "dev", "--stop")

    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    assert "shipped" in out and "add-slugify" in out and "export-slugify" in out
    gates_line = next(line for line in out.splitlines() if line.startswith("Integration gates:"))
    assert "FAIL" not in gates_line and "tests:ok" in gates_line and "secrets:ok" in gates_line
    assert "The model in this demo was scripted" in out
    assert "export-slugify: Export slugify from the package" in out
    assert f"http://127.0.0.1:{env['DARKFACTORY_DEV_UI_PORT']}/namespaces/default/workflows/run-" in out


def test_with_temporal_address_set_run_only_starts_and_watches_while_factory_worker_works(
    cli_env: dict[str, str], temporal_env: WorkflowEnvironment, demo_repo: Path, tmp_path: Path
) -> None:
    unused_port = _free_port()
    env = {
        **cli_env,
        "TEMPORAL_ADDRESS": temporal_env.client.service_client.config.target_host,
        "DARKFACTORY_DEV_PORT": str(unused_port),
    }
    log = (tmp_path / "worker.log").open("wb")
    worker = subprocess.Popen([str(FACTORY) + "-worker"], env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        result = factory(
            env,
            "run",
            "--repo",
            str(demo_repo),
            "--spec",
            str(DEMO / "spec.md"),
            "--json",
            "--model",
            f"scripted:{DEMO / 'transcript.json'}",
        )
    finally:
        worker.terminate()
        worker.wait(timeout=60)
        log.close()

    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout)["phase"] == "shipped"
    assert not is_listening("127.0.0.1", unused_port), "remote mode must not start the embedded server"
    assert '"worker_started"' in (tmp_path / "worker.log").read_text()
