"""Running untrusted commands: the target repository's tests and linters, and the agent's commands.

Two tiers. "bwrap" (bubblewrap, `sandbox_profile.py`) gives each command fresh namespaces (its own network,
its own pid tree, a read-only view of an allowlisted part of the host, the working tree writable but its
`.git` read-only) and is the real boundary. "none" runs the command directly with the same scrubbed
environment and caps; it is a loud fallback for machines without bubblewrap, not a boundary (a child can
still read the worker's `/proc/<pid>/environ` and memory: measured in the sandbox facts notes §1.2).
`strict=True` refuses there, and a run with a real model refuses to start there unless opted out.

Both tiers: argv exec (the caller may exec `bash -c`; nothing outside the sandbox interprets a command),
stdin from /dev/null, a process group and cgroups of its own (`sandbox_process.py`: pids and memory caps,
everything left killed at the end), SIGKILL on timeout, output interleaved and capped keeping head and
tail, and an environment built from nothing so no credential of the worker can reach the command.

`DARKFACTORY_SANDBOX=none|bwrap|auto` forces a tier (auto by default); forcing bwrap where it does not work
raises `SandboxUnavailable` instead of silently degrading.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from darkfactory.sandbox_process import ResourceLimits, supervise
from darkfactory.sandbox_profile import SANDBOX_HOME, SANDBOX_UID, bwrap_argv

__all__ = [
    "SANDBOX_HOME",
    "SANDBOX_UID",
    "CommandResult",
    "ResourceLimits",
    "SandboxUnavailable",
    "bwrap_argv",
    "register_worker_secret",
    "run_command",
    "sandbox_tier",
    "truncate_middle",
    "worker_secret_values",
]

log = logging.getLogger(__name__)

SANDBOX_ENV_VAR = "DARKFACTORY_SANDBOX"
"""Environment variable forcing a tier: `auto` (default), `bwrap` or `none`."""

INSTALL_HINT = "apt-get install bubblewrap"
DEGRADED_WARNING = (
    "SANDBOX DEGRADED: bubblewrap not usable (apt-get install bubblewrap); "
    "commands run with a scrubbed environment only"
)

BASE_PATH = ("/usr/local/bin", "/usr/bin", "/bin")
"""PATH entries every command gets after the caller's `path_prefix`."""

CREDENTIAL_MARKERS = ("KEY", "TOKEN", "SECRET", "PASSWORD")
"""An `env` name containing one of these is refused: credentials never enter a sandboxed process."""

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class SandboxUnavailable(RuntimeError):
    """The requested isolation cannot be provided (bubblewrap missing or unusable, or strict mode)."""


@dataclass(frozen=True)
class CommandResult:
    """What a command did. `output` is stdout and stderr interleaved, capped (see `truncated`)."""

    argv: tuple[str, ...]
    returncode: int
    output: str
    timed_out: bool
    duration_s: float
    tier: str
    """"bwrap" or "none": how the command was isolated."""
    truncated: bool
    limit: str | None = None
    """"memory_limit" or "pids_limit" when a cap stopped the command (timeouts are `timed_out`)."""
    notes: tuple[str, ...] = ()
    """What the command did not get that it asked for (no network, no cgroup caps), for its reader."""

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out


# --------------------------------------------------------------------------------------------------
# Tier selection


@functools.cache
def _usable_bwrap() -> str | None:
    """The bwrap executable if it can build the namespaces we need here, probed once per process."""
    exe = shutil.which("bwrap")
    if exe is None:
        return None
    probe = [exe, "--unshare-all", "--unshare-user", "--disable-userns", "--ro-bind", "/", "/", "true"]
    try:
        proc = subprocess.run(
            probe,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            env={"PATH": ":".join(BASE_PATH), "LANG": "C.UTF-8"},
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        log.debug("bwrap probe failed: %s", exc)
        return None
    if proc.returncode != 0:
        # Typical: user namespaces disabled (sysctl, container seccomp profile).
        log.debug("bwrap probe exited %d: %s", proc.returncode, proc.stderr.decode(errors="replace").strip())
        return None
    return exe


def sandbox_tier() -> str:
    """The tier `run_command` will use: the cached bwrap probe, overridden by DARKFACTORY_SANDBOX."""
    mode = os.environ.get(SANDBOX_ENV_VAR, "auto").strip().lower() or "auto"
    if mode not in ("auto", "bwrap", "none"):
        raise ValueError(f"{SANDBOX_ENV_VAR}={mode!r}: expected auto, bwrap or none")
    if mode == "none":
        return "none"
    if _usable_bwrap() is not None:
        return "bwrap"
    if mode == "bwrap":
        raise SandboxUnavailable(
            f"{SANDBOX_ENV_VAR}=bwrap but bubblewrap is missing or cannot create user namespaces ({INSTALL_HINT})"
        )
    return "none"


@functools.cache
def _warn_degraded() -> None:
    # functools.cache makes this fire once per process: one loud line, not one per test run.
    log.warning(DEGRADED_WARNING)


# --------------------------------------------------------------------------------------------------
# Running


def run_command(
    argv: Sequence[str],
    *,
    cwd: Path,
    timeout_s: float = 600.0,
    env: Mapping[str, str] | None = None,
    path_prefix: Sequence[Path] = (),
    readonly_paths: Sequence[Path] = (),
    writable_paths: Sequence[Path] = (),
    network: bool = False,
    output_limit: int = 200_000,
    on_tick: Callable[[], None] | None = None,
    strict: bool = False,
    limits: ResourceLimits | None = None,
) -> CommandResult:
    """Run `argv` in `cwd` inside the best available sandbox and return what it did.

        `env` adds variables on top of the scrubbed base (credential-like names are refused); `path_prefix`
        directories go in front of PATH; `readonly_paths` are made visible read-only at the same path (a venv,
        the Python prefix it was created from); `cwd` and `writable_paths` are writable. `network` gives the command
    a network of its own with NAT to the outside (slirp4netns), never the host's: loopback services of the
    worker stay unreachable; without slirp4netns it gets none (see `notes`). `on_tick` is called about
        once a second while the command runs (activity heartbeats). Raises `SandboxUnavailable` when `strict` and
        only the degraded tier is available, `ValueError` for bad arguments; a missing program is a result with
        return code 127, not an exception.
    """
    args = tuple(argv)
    if not args or not all(isinstance(a, str) for a in args):
        raise ValueError(f"argv must be a non-empty sequence of strings, got {argv!r}")
    if any("\x00" in a for a in args):
        raise ValueError("argv contains a NUL byte")
    if timeout_s <= 0:
        raise ValueError(f"timeout_s must be positive, got {timeout_s}")
    if output_limit <= 0:
        raise ValueError(f"output_limit must be positive, got {output_limit}")
    workdir = _existing_dir(cwd, "cwd")
    if workdir == "/":
        raise ValueError("cwd must not be the filesystem root: it is bound writable inside the sandbox")
    writable = [_existing_path(p, "writable path") for p in writable_paths]
    if "/" in writable:
        raise ValueError("writable_paths must not contain the filesystem root")
    readonly = [Path(p) for p in readonly_paths]
    for ro in readonly:
        _existing_path(ro, "readonly path")
    prefix = [str(p) for p in path_prefix]
    for entry in prefix:
        if not os.path.isabs(entry) or ":" in entry:
            raise ValueError(f"path_prefix entries must be absolute and contain no ':', got {entry!r}")
    check_env(env)

    tier = sandbox_tier()
    if tier == "none":
        if strict:
            raise SandboxUnavailable(
                f"strict mode: refusing to run {args[0]!r} without a sandbox; bubblewrap is not usable ({INSTALL_HINT})"
            )
        _warn_degraded()

    started = time.monotonic()
    # bwrap gives HOME and /tmp on a per-command tmpfs; the degraded tier needs fresh host directories.
    scratch_dir: contextlib.AbstractContextManager[str | None] = (
        tempfile.TemporaryDirectory(prefix="darkfactory-sbx-", ignore_cleanup_errors=True)
        if tier == "none"
        else contextlib.nullcontext()
    )
    with scratch_dir as scratch:
        if scratch is None:
            home, tmpdir = SANDBOX_HOME, "/tmp"
        else:
            home, tmpdir = os.path.join(scratch, "home"), os.path.join(scratch, "tmp")
            os.mkdir(home, 0o700)
            os.mkdir(tmpdir, 0o700)
        child_env = scrubbed_env(env, path_prefix=prefix, home=home, tmpdir=tmpdir)

        if not _program_exists(args[0], child_env["PATH"], workdir):
            return CommandResult(
                argv=args,
                returncode=127,
                output=f"command not found: {args[0]} (PATH={child_env['PATH']})\n",
                timed_out=False,
                duration_s=time.monotonic() - started,
                tier=tier,
                truncated=False,
            )

        sync: tuple[int, int, int, int] | None = None
        if tier == "bwrap" and network:
            sync = (*os.pipe(), *os.pipe())  # (info r, info w, block r, block w)
        if tier == "bwrap":
            exe = _usable_bwrap()
            assert exe is not None  # sandbox_tier() returned "bwrap" only because the probe found it
            launch = bwrap_argv(
                exe,
                args,
                cwd=workdir,
                env=child_env,
                readonly_paths=readonly,
                writable_paths=[Path(p) for p in writable],
                network=network,
                sync_fds=(sync[1], sync[2]) if sync else None,
            )
        else:
            launch = list(args)
        done = supervise(  # it owns (and closes) the `sync` pipes
            launch,
            cwd=workdir,
            env=child_env,
            timeout_s=timeout_s,
            output_limit=output_limit,
            on_tick=on_tick,
            limits=limits or ResourceLimits(),
            network_sync=sync,
        )
    return CommandResult(
        argv=args,
        returncode=done.returncode,
        output=done.output,
        timed_out=done.timed_out,
        duration_s=time.monotonic() - started,
        tier=tier,
        truncated=done.truncated,
        limit=done.limit,
        notes=done.notes,
    )


def scrubbed_env(
    extra: Mapping[str, str] | None, *, path_prefix: Sequence[str], home: str, tmpdir: str
) -> dict[str, str]:
    """The whole environment of a sandboxed command: built from nothing, never from os.environ."""
    base = {
        "PATH": ":".join([*path_prefix, *BASE_PATH]),
        "HOME": home,
        "LANG": "C.UTF-8",
        "TMPDIR": tmpdir,
        "PYTHONDONTWRITEBYTECODE": "1",
        # Fixed, so a suite that parametrizes over a set gets the same test ids in every run: the base is
        # measured in one process and the change judged in another, and a test id that moved would count as
        # a base test that "did not run" (isodate's test_format ids did, measured here).
        "PYTHONHASHSEED": "0",
    }
    check_env(extra)
    base.update(extra or {})
    return base


MIN_SECRET_LENGTH = 8
_REGISTERED_SECRETS: set[str] = set()


def register_worker_secret(value: str) -> None:
    """Make a credential this process holds outside its environment (read from a `*_FILE`) known to the
    secret checks, which otherwise find credentials by their variables' names."""
    if len(value) >= MIN_SECRET_LENGTH:
        _REGISTERED_SECRETS.add(value)


def worker_secret_values() -> list[str]:
    """This worker's credentials (credential-like environment variables and registered ones): they must
    never reach a prompt, a change or a sandboxed process; found in a change (verbatim or encoded) they fail it."""
    from_env = {
        value
        for name, value in os.environ.items()
        if any(marker in name.upper() for marker in CREDENTIAL_MARKERS) and len(value) >= MIN_SECRET_LENGTH
    }
    return sorted(from_env | _REGISTERED_SECRETS)


def check_env(extra: Mapping[str, str] | None) -> None:
    """Refuse malformed or credential-like variables: credentials never enter a sandboxed process."""
    for name, value in (extra or {}).items():
        if not isinstance(name, str) or not _ENV_NAME.match(name):
            raise ValueError(f"invalid environment variable name {name!r}")
        if any(marker in name.upper() for marker in CREDENTIAL_MARKERS):
            raise ValueError(
                f"environment variable {name!r} looks like a credential; credentials never enter a sandbox"
            )
        if not isinstance(value, str) or "\x00" in value:
            raise ValueError(f"environment variable {name!r} must be a string without NUL bytes")


def truncate_middle(text: str, limit: int, *, unit: str = "characters") -> str:
    """`text` cut to about `limit` characters, keeping head and tail around a visible marker."""
    if len(text) <= limit:
        return text
    head = limit // 2
    tail = limit - head
    dropped = len(text) - head - tail
    return f"{text[:head]}\n[... {dropped} {unit} truncated ...]\n{text[len(text) - tail :]}"


# --------------------------------------------------------------------------------------------------
# Small helpers


def _existing_dir(path: Path, what: str) -> str:
    real = os.path.realpath(path)
    if not os.path.isdir(real):
        raise ValueError(f"{what} {str(path)!r} is not an existing directory")
    return real


def _existing_path(path: Path, what: str) -> str:
    real = os.path.realpath(path)
    if not os.path.exists(real):
        raise ValueError(f"{what} {str(path)!r} does not exist")
    return real


def _program_exists(program: str, path: str, cwd: str) -> bool:
    if "/" in program:
        candidate = os.path.join(cwd, program)
        return os.path.isfile(candidate) and os.access(candidate, os.X_OK)
    return shutil.which(program, path=path) is not None
