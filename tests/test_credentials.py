"""Credentials from files: `ANTHROPIC_API_KEY_FILE` and `GITHUB_TOKEN_FILE` hold the secret, so it is in no
process's initial environment; a variable and its `_FILE` both set is an error naming both; secrets never
show in reprs, dumps, errors or output."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from temporalio.testing import WorkflowEnvironment

from darkfactory.settings import CredentialsError, load_credentials
from darkfactory.testing.fake_messages_api import FakeMessagesServer, ScriptResponder
from tests.conftest import DEMO
from tests.local_cli import branches, factory, local_env

SECRET = "sk-test-from-a-file-7d1c"
PAIRS = [("ANTHROPIC_API_KEY", "anthropic_api_key"), ("GITHUB_TOKEN", "github_token")]


@pytest.fixture(autouse=True)
def _no_inherited_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    for var, _ in PAIRS:
        monkeypatch.delenv(var, raising=False)
        monkeypatch.delenv(f"{var}_FILE", raising=False)


def _secret_file(tmp_path: Path, text: str = f"{SECRET}\n") -> Path:
    path = tmp_path / "secret"
    path.write_text(text)
    path.chmod(0o600)
    return path


@pytest.mark.parametrize(("var", "field"), PAIRS)
def test_the_file_holds_the_secret_when_the_variable_is_unset(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, var: str, field: str
) -> None:
    monkeypatch.setenv(f"{var}_FILE", str(_secret_file(tmp_path, f"  {SECRET}\n\n")))

    credentials = load_credentials()

    assert getattr(credentials, field).get_secret_value() == SECRET
    for shown in (repr(credentials), str(credentials), credentials.model_dump_json()):
        assert SECRET not in shown


@pytest.mark.parametrize(("var", "field"), PAIRS)
def test_the_variable_alone_still_works(monkeypatch: pytest.MonkeyPatch, var: str, field: str) -> None:
    monkeypatch.setenv(var, SECRET)

    assert getattr(load_credentials(), field).get_secret_value() == SECRET


@pytest.mark.parametrize(("var", "field"), PAIRS)
def test_both_set_is_an_error_naming_both_and_not_the_secret(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, var: str, field: str
) -> None:
    monkeypatch.setenv(var, "sk-test-in-the-environment-99")
    monkeypatch.setenv(f"{var}_FILE", str(_secret_file(tmp_path)))

    with pytest.raises(CredentialsError) as caught:
        load_credentials()

    message = str(caught.value)
    assert f"{var} and {var}_FILE" in message
    assert SECRET not in message and "sk-test-in-the-environment-99" not in message


def test_a_missing_or_empty_file_is_an_error_naming_the_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY_FILE", str(tmp_path / "nope"))
    with pytest.raises(CredentialsError, match=f"ANTHROPIC_API_KEY_FILE={tmp_path / 'nope'}: cannot read it"):
        load_credentials()

    monkeypatch.setenv("ANTHROPIC_API_KEY_FILE", str(_secret_file(tmp_path, "\n")))
    with pytest.raises(CredentialsError, match="is empty"):
        load_credentials()


# -- as a person runs it ----------------------------------------------------------------------------


def test_run_calls_the_model_with_the_key_from_the_file_and_prints_it_nowhere(
    temporal_env: WorkflowEnvironment, factory_home: Path, demo_repo: Path, tmp_path: Path
) -> None:
    with FakeMessagesServer(ScriptResponder(DEMO / "transcript.json")) as server:
        env = local_env(
            temporal_env,
            factory_home,
            ANTHROPIC_BASE_URL=server.base_url,
            ANTHROPIC_API_KEY_FILE=str(_secret_file(tmp_path)),
        )
        assert SECRET not in json.dumps(env)  # the key is in no process's initial environment
        result = factory(env, "run", "--repo", str(demo_repo), "--spec", str(DEMO / "spec.md"), "--json")
        requests = server.requests

    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout)["phase"] == "shipped"
    assert requests and all(
        SECRET in r.headers.get("x-api-key", "") + r.headers.get("authorization", "") for r in requests
    )
    assert SECRET not in result.stdout + result.stderr


def test_run_with_both_the_key_and_its_file_is_refused_before_anything_starts(
    temporal_env: WorkflowEnvironment, factory_home: Path, demo_repo: Path, tmp_path: Path
) -> None:
    with FakeMessagesServer(ScriptResponder(DEMO / "transcript.json")) as server:
        env = local_env(
            temporal_env,
            factory_home,
            ANTHROPIC_BASE_URL=server.base_url,
            ANTHROPIC_API_KEY="sk-test-in-the-environment-99",
            ANTHROPIC_API_KEY_FILE=str(_secret_file(tmp_path)),
        )
        result = factory(env, "run", "--repo", str(demo_repo), "--spec", str(DEMO / "spec.md"))
        requests = server.requests

    assert result.returncode == 2
    assert "ANTHROPIC_API_KEY and ANTHROPIC_API_KEY_FILE" in result.stderr
    assert SECRET not in result.stderr and "sk-test-in-the-environment-99" not in result.stderr
    assert requests == [] and branches(demo_repo) == ["main"]
