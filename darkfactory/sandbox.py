"""Running untrusted commands: the target repository's tests and linters, and the agent's commands.

Two tiers. "bwrap" (bubblewrap) gives each command fresh namespaces (no network, its own pid tree, a
read-only view of an allowlisted part of the host, the working tree writable but its `.git` read-only) and
is the real boundary. "none" runs the command directly with the same scrubbed environment and rlimits; it is
a loud fallback for machines without bubblewrap, not a boundary (a child can still read the worker's
`/proc/<pid>/environ` and memory: measured in the sandbox facts notes §1.2). `strict=True` refuses there.

Both tiers: argv exec (never a shell), stdin from /dev/null, a process group of its own killed with SIGKILL
on timeout, output interleaved and capped keeping head and tail, and an environment built from nothing so
no credential of the worker can reach the command.

`DARKFACTORY_SANDBOX=none|bwrap|auto` forces a tier (auto by default); forcing bwrap where it does not work
raises `SandboxUnavailable` instead of silently degrading.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import re
import resource
import selectors
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

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

SANDBOX_UID = 65534
"""nobody/nogroup inside the user namespace (it maps to the worker's own uid on the host)."""

SANDBOX_HOME = "/tmp/home"
"""HOME inside bwrap: on the per-command tmpfs, so it is fresh every time."""

FILE_SIZE_LIMIT = 1 << 30
OPEN_FILES_LIMIT = 4096

_TICK_S = 1.0
_EXIT_DRAIN_S = 2.0
"""After the command exits, how long to keep reading output a leftover process may still be writing."""

_SYSTEM_DIRS = ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
"""Top-level directories that are symlinks into /usr on merged-/usr systems (recreated as such) or real dirs."""

_ETC_FILES = (
    "/etc/ld.so.cache",
    "/etc/ld.so.conf",
    "/etc/ld.so.conf.d",
    "/etc/alternatives",
    "/etc/ssl/certs",
    "/etc/ssl/openssl.cnf",
    "/etc/ca-certificates.conf",
    "/etc/passwd",
    "/etc/group",
    "/etc/nsswitch.conf",
    "/etc/hosts",
    "/etc/localtime",
    "/etc/timezone",
    "/etc/mime.types",
)
"""The /etc entries a toolchain needs. Not /etc wholesale: the sandbox uid maps to the worker's uid, so a root
worker would otherwise expose /etc/shadow, /etc/ssl/private and credential helpers' configs."""

_ETC_NETWORK_FILES = ("/etc/resolv.conf", "/etc/gai.conf", "/etc/host.conf")

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
) -> CommandResult:
    """Run `argv` in `cwd` inside the best available sandbox and return what it did.

    `env` adds variables on top of the scrubbed base (credential-like names are refused); `path_prefix`
    directories go in front of PATH; `readonly_paths` are made visible read-only at the same path (a venv,
    the Python prefix it was created from); `cwd` and `writable_paths` are writable. `on_tick` is called about
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
            )
        else:
            launch = list(args)
        returncode, output, timed_out, truncated = _supervise(
            launch, cwd=workdir, env=child_env, timeout_s=timeout_s, output_limit=output_limit, on_tick=on_tick
        )
    return CommandResult(
        argv=args,
        returncode=returncode,
        output=output,
        timed_out=timed_out,
        duration_s=time.monotonic() - started,
        tier=tier,
        truncated=truncated,
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
    }
    check_env(extra)
    base.update(extra or {})
    return base


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


def bwrap_argv(
    exe: str,
    argv: Sequence[str],
    *,
    cwd: str,
    env: Mapping[str, str],
    readonly_paths: Sequence[Path] = (),
    writable_paths: Sequence[Path] = (),
    network: bool = False,
) -> list[str]:
    """The bubblewrap command line for one command (public so the profile can be inspected and logged)."""
    out = [
        exe,
        "--unshare-all",
        "--unshare-user",
        "--disable-userns",  # no nested namespaces: they would give the command its capabilities back
        "--die-with-parent",
        "--new-session",  # TIOCSTI is enabled on this kernel; a new session keeps the tty out of reach
        "--cap-drop",
        "ALL",
        "--uid",
        str(SANDBOX_UID),
        "--gid",
        str(SANDBOX_UID),
        "--hostname",
        "sandbox",
    ]
    if network:
        out.append("--share-net")
    out += ["--ro-bind", "/usr", "/usr"]
    for top in _SYSTEM_DIRS:
        if os.path.islink(top):
            out += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            out += ["--ro-bind", top, top]
    for etc in (*_ETC_FILES, *(_ETC_NETWORK_FILES if network else ())):
        if os.path.exists(etc):
            out += ["--ro-bind", etc, etc]
    out += ["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp", "--dir", env.get("HOME", SANDBOX_HOME)]

    # Deeper mounts go later so they cover shallower ones whatever their mode: a read-only venv inside the
    # writable tree stays read-only, a writable dir inside a read-only prefix stays writable. At equal
    # depth read-only is mounted last and wins.
    mounts: dict[str, bool] = {}  # real path -> writable
    links: list[tuple[str, str]] = []
    for path in readonly_paths:
        real = os.path.realpath(path)
        mounts.setdefault(real, False)
        # A symlinked path (e.g. a venv's bin/python) must also resolve inside: recreate the link.
        if os.path.abspath(path) != real:
            links.append((real, os.path.abspath(path)))
    for path in (Path(cwd), *writable_paths):
        real = os.path.realpath(path)
        mounts[real] = True
        for protected in _git_paths(real):
            mounts[protected] = False
    for mount, rw in sorted(mounts.items(), key=lambda item: (_depth(item[0]), not item[1])):
        out += ["--bind" if rw else "--ro-bind", mount, mount]
    for target, link in links:
        if not any(_within(link, mounted) for mounted in mounts):
            out += ["--symlink", target, link]
    out += ["--remount-ro", "/", "--chdir", cwd, "--clearenv"]
    for name, value in env.items():
        out += ["--setenv", name, value]
    out += ["--", *argv]
    return out


def _git_paths(tree: str) -> list[str]:
    """What must stay read-only for a tree's git metadata: `.git`, and for a worktree's `.git` file its
    `gitdir:` target and the common dir. Planted hooks or config there would run in the host's next git."""
    dot_git = os.path.join(tree, ".git")
    if os.path.isdir(dot_git) and not os.path.islink(dot_git):
        return [dot_git]
    if not os.path.isfile(dot_git) or os.path.islink(dot_git):
        return []
    paths = [dot_git]
    try:
        first = Path(dot_git).read_text(encoding="utf-8", errors="replace").splitlines()[0]
    except (OSError, IndexError):
        return paths
    if not first.startswith("gitdir:"):
        return paths
    gitdir = os.path.realpath(os.path.join(tree, first.removeprefix("gitdir:").strip()))
    if os.path.isdir(gitdir):
        paths.append(gitdir)
        try:
            common = (Path(gitdir) / "commondir").read_text(encoding="utf-8").strip()
        except OSError:
            common = ""
        if common:
            common_dir = os.path.realpath(os.path.join(gitdir, common))
            if os.path.isdir(common_dir):
                paths.append(common_dir)
    return paths


def _supervise(
    launch: Sequence[str],
    *,
    cwd: str,
    env: Mapping[str, str],
    timeout_s: float,
    output_limit: int,
    on_tick: Callable[[], None] | None,
) -> tuple[int, str, bool, bool]:
    """Run, read output, tick and enforce the deadline. Returns (returncode, output, timed_out, truncated)."""
    buffer = _HeadTailBuffer(output_limit)
    proc = subprocess.Popen(
        list(launch),
        cwd=cwd,
        env=dict(env),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own group, so the whole tree can be killed at once
        close_fds=True,
        # subprocess warns that preexec_fn can deadlock in threaded programs (a lock held by another thread
        # at fork). _apply_rlimits imports nothing and logs nothing: it only calls get/setrlimit.
        preexec_fn=_apply_rlimits,
    )
    assert proc.stdout is not None
    out_fd = proc.stdout.fileno()
    # A pidfd becomes readable when the command exits but does not reap it: while the leader is an unreaped
    # zombie its group id cannot be reused, so killing the group afterwards cannot hit a stranger.
    pid_fd = os.pidfd_open(proc.pid)
    selector = selectors.DefaultSelector()
    selector.register(out_fd, selectors.EVENT_READ, "output")
    selector.register(pid_fd, selectors.EVENT_READ, "exit")
    started = time.monotonic()
    deadline = started + timeout_s
    next_tick = started + _TICK_S
    exited_at: float | None = None
    output_open = True
    timed_out = False
    try:
        while True:
            now = time.monotonic()
            if exited_at is None and now >= deadline:
                timed_out = True
                _kill_group(proc.pid)
                exited_at = now
                selector.unregister(pid_fd)
            if exited_at is not None and (not output_open or now >= exited_at + _EXIT_DRAIN_S):
                break  # done; or a process outside the group (it called setsid) still holds the pipe
            wake = min(next_tick, deadline if exited_at is None else exited_at + _EXIT_DRAIN_S)
            for key, _ in selector.select(max(0.0, wake - now)):
                if key.data == "exit":
                    _kill_group(proc.pid)  # leftovers of the tree (background jobs) die with the command
                    exited_at = time.monotonic()
                    selector.unregister(pid_fd)
                    continue
                chunk = os.read(out_fd, 65536)
                if chunk:
                    buffer.add(chunk)
                else:
                    output_open = False
                    selector.unregister(out_fd)
            if on_tick is not None and time.monotonic() >= next_tick:
                on_tick()
                next_tick = time.monotonic() + _TICK_S
    finally:
        selector.close()
        os.close(pid_fd)
        proc.stdout.close()
        if proc.poll() is None:
            _kill_group(proc.pid)
        proc.wait()
    output, truncated = buffer.render()
    return proc.returncode, output, timed_out, truncated


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def _apply_rlimits() -> None:
    """Runs in the child between fork and exec: no core dumps, bounded files and descriptors."""
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    for kind, limit in ((resource.RLIMIT_NOFILE, OPEN_FILES_LIMIT), (resource.RLIMIT_FSIZE, FILE_SIZE_LIMIT)):
        _, hard = resource.getrlimit(kind)
        # Without CAP_SYS_RESOURCE a hard limit can only be lowered, never raised.
        value = limit if hard == resource.RLIM_INFINITY else min(limit, hard)
        resource.setrlimit(kind, (value, value))


class _HeadTailBuffer:
    """Keeps the first and last `limit // 2` bytes of a stream: the command line and first error at the top,
    the summary and traceback at the bottom are what a reader needs."""

    def __init__(self, limit: int) -> None:
        self._head_limit = limit // 2
        self._tail_limit = limit - self._head_limit
        self._head = bytearray()
        self._tail = bytearray()
        self._total = 0

    def add(self, chunk: bytes) -> None:
        self._total += len(chunk)
        room = self._head_limit - len(self._head)
        if room > 0:
            self._head += chunk[:room]
            chunk = chunk[room:]
        self._tail += chunk
        if len(self._tail) > 2 * self._tail_limit:
            del self._tail[: len(self._tail) - self._tail_limit]

    def render(self) -> tuple[str, bool]:
        if len(self._tail) > self._tail_limit:
            del self._tail[: len(self._tail) - self._tail_limit]
        dropped = self._total - len(self._head) - len(self._tail)
        head = self._head.decode("utf-8", errors="replace")
        tail = self._tail.decode("utf-8", errors="replace")
        if dropped <= 0:
            return head + tail, False
        return f"{head}\n[... {dropped} bytes truncated ...]\n{tail}", True


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


def _depth(path: str) -> int:
    return len(Path(path).parts)


def _within(path: str, parent: str) -> bool:
    return os.path.commonpath([path, parent]) == parent
