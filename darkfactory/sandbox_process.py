"""Supervising one sandboxed process tree: output capture, the deadline, resource caps and its network.

Caps: rlimits (no core dumps, bounded file size and descriptors) and, where the cgroup v1 controllers are
writable (root on this machine kind), a `pids` and a `memory` cgroup per command. The cgroup is also how
every process of the command is found and killed at the end, including one that left the process group
with `setsid` (only the cgroup sees it in the degraded tier). `RLIMIT_NPROC` alone would not do: the kernel
ignores it for uid 0, which the sandbox uid maps to on a root worker (sandbox facts §1.2).

Network, when asked for, is never the host's: bwrap makes a fresh network namespace and slirp4netns gives
it user-mode NAT with `--disable-host-loopback`, so the package index is reachable but the worker's
loopback services (the Temporal frontend, the web UI) are not.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import json
import logging
import os
import resource
import secrets
import selectors
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

CGROUP_ROOT = Path("/sys/fs/cgroup")
CGROUP_PARENT = "darkfactory"
_NS_GET_PARENT = 0xB702
"""ioctl on a namespace fd: the parent user namespace. bwrap's `--disable-userns` nests the command in a second
user namespace; the network namespace belongs to the first, which slirp4netns must join."""

_TICK_S = 1.0
_EXIT_DRAIN_S = 2.0
"""After the command exits, how long to keep reading output a leftover process may still be writing."""
_NETWORK_READY_S = 15.0


@dataclass(frozen=True)
class ResourceLimits:
    """Caps for one command's whole process tree."""

    memory_bytes: int = 4 << 30
    processes: int = 512
    file_bytes: int = 1 << 30
    open_files: int = 4096


@dataclass(frozen=True)
class Supervised:
    returncode: int
    output: str
    timed_out: bool
    truncated: bool
    limit: str | None
    """"memory_limit" or "pids_limit" when the cgroup stopped the command; None otherwise."""
    notes: tuple[str, ...]


class _Cage:
    """A pids and a memory cgroup (v1) for one command; absent where the controllers are not writable."""

    def __init__(self, dirs: dict[str, Path]) -> None:
        self._dirs = dirs

    @classmethod
    def create(cls, limits: ResourceLimits) -> _Cage | None:
        _sweep_once()
        name = f"cmd-{os.getpid()}-{secrets.token_hex(4)}"
        dirs: dict[str, Path] = {}
        try:
            for controller, settings in (
                ("pids", {"pids.max": str(limits.processes)}),
                ("memory", {"memory.limit_in_bytes": str(limits.memory_bytes)}),
            ):
                parent = CGROUP_ROOT / controller / CGROUP_PARENT
                if not (CGROUP_ROOT / controller / "cgroup.procs").exists():
                    raise OSError(f"no cgroup v1 {controller} controller")
                parent.mkdir(exist_ok=True)
                path = parent / name
                path.mkdir()
                dirs[controller] = path
                for file, value in settings.items():
                    (path / file).write_text(value)
        except OSError as exc:
            log.debug("no cgroup caps: %s", exc)
            cls(dirs).remove()
            return None
        return cls(dirs)

    @property
    def available(self) -> bool:
        return bool(self._dirs)

    def open_for_entry(self) -> list[int]:
        """Descriptors the child writes "0" to between fork and exec: it enters the cgroups before it can fork."""
        return [os.open(path / "cgroup.procs", os.O_WRONLY | os.O_CLOEXEC) for path in self._dirs.values()]

    def verdict(self) -> str | None:
        memory = self._dirs.get("memory")
        if memory is not None:
            with contextlib.suppress(OSError):
                control = (memory / "memory.oom_control").read_text()
                if any(line.split()[-1] != "0" for line in control.splitlines() if line.startswith("oom_kill ")):
                    return "memory_limit"
        pids = self._dirs.get("pids")
        if pids is not None:
            with contextlib.suppress(OSError):
                events = (pids / "pids.events").read_text().split()
                if len(events) >= 2 and events[1] != "0":
                    return "pids_limit"
        return None

    def kill_all(self) -> None:
        """SIGKILL every process still in the cgroup, until it is empty (a fork bomb forks while we kill)."""
        pids_dir = self._dirs.get("pids") or self._dirs.get("memory")
        if pids_dir is None:
            return
        for _ in range(100):
            try:
                pids = [int(p) for p in (pids_dir / "cgroup.procs").read_text().split()]
            except OSError:
                return
            if not pids:
                return
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.01)  # let the kernel reap them before looking again; not a synchronisation of ours

    def remove(self) -> None:
        for path in self._dirs.values():
            _remove_cgroup(path)


def _remove_cgroup(path: Path) -> None:
    # rmdir fails with EBUSY until the last killed task has been reaped by the kernel: try for a moment.
    for _ in range(50):
        try:
            path.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError:
            time.sleep(0.01)
    log.debug("cgroup %s left behind", path)


def sweep_stale_cgroups() -> None:
    """Remove the empty cgroups of commands whose worker died (SIGKILL leaves them behind)."""
    for controller in ("pids", "memory"):
        parent = CGROUP_ROOT / controller / CGROUP_PARENT
        with contextlib.suppress(OSError):
            for path in parent.glob("cmd-*"):
                owner = path.name.split("-")[1]
                if owner.isdigit() and not Path(f"/proc/{owner}").exists():
                    with contextlib.suppress(OSError):
                        path.rmdir()


@functools.cache
def _sweep_once() -> None:
    sweep_stale_cgroups()


def supervise(
    launch: Sequence[str],
    *,
    cwd: str,
    env: Mapping[str, str],
    timeout_s: float,
    output_limit: int,
    on_tick: Callable[[], None] | None,
    limits: ResourceLimits,
    network_sync: tuple[int, int, int, int] | None = None,
) -> Supervised:
    """Run, read output, tick and enforce the deadline and caps.

    `network_sync` = (info read end, info write end, block read end, block write end) of the pipes bwrap was
    told about (`--info-fd`, `--block-fd`): the network is attached once bwrap reports its child's pid. This
    function closes all four."""
    buffer = _HeadTailBuffer(output_limit)
    cage = _Cage.create(limits)
    entry_fds = cage.open_for_entry() if cage is not None else []
    pass_fds = (network_sync[1], network_sync[2]) if network_sync is not None else ()
    notes: list[str] = []
    if cage is None:
        notes.append("no cgroup caps: processes and memory are bounded by rlimits only")
    try:
        proc = _spawn(launch, cwd, env, pass_fds, _enter_caps(entry_fds, limits, cgroups=cage is not None))
    except BaseException:
        for fd in [*entry_fds, *(network_sync or ())]:
            os.close(fd)
        if cage is not None:
            cage.remove()
        raise
    for fd in entry_fds:
        os.close(fd)
    slirp: subprocess.Popen[bytes] | None = None
    if network_sync is not None:
        os.close(network_sync[1])
        os.close(network_sync[2])
        slirp, note = _attach_network(network_sync[0], network_sync[3])
        if note:
            notes.append(note)
    try:
        returncode, timed_out = _pump(proc, buffer, timeout_s, on_tick)
    finally:
        if cage is not None:
            cage.kill_all()
        if slirp is not None:
            slirp.kill()
            slirp.wait()
    limit = cage.verdict() if cage is not None else None
    if cage is not None:
        cage.remove()
    output, truncated = buffer.render()
    return Supervised(returncode, output, timed_out, truncated, limit, tuple(notes))


def _spawn(
    launch: Sequence[str], cwd: str, env: Mapping[str, str], pass_fds: Sequence[int], preexec: Callable[[], None]
) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        list(launch),
        cwd=cwd,
        env=dict(env),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own group, so the whole tree can be killed at once
        close_fds=True,
        pass_fds=tuple(pass_fds),
        # subprocess warns that preexec_fn can deadlock in threaded programs (a lock held by another thread
        # at fork). _enter_caps imports nothing and logs nothing: it only writes to fds and sets rlimits.
        preexec_fn=preexec,
    )


def _pump(
    proc: subprocess.Popen[bytes], buffer: _HeadTailBuffer, timeout_s: float, on_tick: Callable[[], None] | None
) -> tuple[int, bool]:
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
                kill_group(proc.pid)
                exited_at = now
                selector.unregister(pid_fd)
            if exited_at is not None and (not output_open or now >= exited_at + _EXIT_DRAIN_S):
                break  # done; or a process outside the group (it called setsid) still holds the pipe
            wake = min(next_tick, deadline if exited_at is None else exited_at + _EXIT_DRAIN_S)
            for key, _ in selector.select(max(0.0, wake - now)):
                if key.data == "exit":
                    kill_group(proc.pid)  # leftovers of the tree (background jobs) die with the command
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
            kill_group(proc.pid)
        proc.wait()
    return proc.returncode, timed_out


def _attach_network(info_fd: int, block_fd: int) -> tuple[subprocess.Popen[bytes] | None, str]:
    """Give the sandbox's fresh network namespace user-mode NAT, then let bwrap go on.

    Whatever happens, bwrap is released (an unreleased bwrap would wait for ever): without slirp4netns or when
    attaching fails, the command runs with no network and the returned note says why."""
    slirp: subprocess.Popen[bytes] | None = None
    note = ""
    try:
        exe = shutil.which("slirp4netns")
        if exe is None:
            return None, "no network: slirp4netns is not installed (apt-get install -y slirp4netns)"
        child = _read_child_pid(info_fd)
        _wait_for_loopback(child)
        with _parent_userns(child) as userns_fd:
            ready_r, ready_w = os.pipe()
            try:
                slirp = subprocess.Popen(
                    [
                        exe,
                        "--configure",
                        "--mtu=65520",
                        "--disable-host-loopback",
                        "--ready-fd",
                        str(ready_w),
                        "--userns-path",
                        f"/proc/self/fd/{userns_fd}",
                        str(child),
                        "tap0",
                    ],
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    pass_fds=(ready_w, userns_fd),
                    start_new_session=True,
                )
                os.close(ready_w)
                ready_w = -1
                if not _readable(ready_r, _NETWORK_READY_S) or os.read(ready_r, 1) != b"1":
                    note = "no network: slirp4netns did not come up"
            finally:
                os.close(ready_r)
                if ready_w >= 0:
                    os.close(ready_w)
    except (OSError, ValueError, KeyError) as exc:
        note = f"no network: {exc}"
    finally:
        os.close(info_fd)
        with contextlib.suppress(OSError):
            os.write(block_fd, b"1")
        os.close(block_fd)
    return slirp, note


def _wait_for_loopback(pid: int) -> None:
    """Until bwrap's child has brought up `lo` in the new network namespace.

    bwrap reports its child before the child configures loopback; slirp4netns configuring tap0 in the same
    namespace at that moment makes bwrap's own netlink request fail ("Failed RTM_NEWADDR", measured: 33 of
    300 launches). The namespace's routing table shows 127.0.0.1 as a host route once lo is up."""
    deadline = time.monotonic() + _NETWORK_READY_S
    fib = f"/proc/{pid}/net/fib_trie"
    while time.monotonic() < deadline:
        try:
            with open(fib, encoding="ascii", errors="replace") as table:
                if "127.0.0.1" in table.read():
                    return
        except OSError as exc:
            raise ValueError(f"the sandbox went away before its network was attached ({exc.strerror})") from None
        time.sleep(0.002)  # polling the kernel's table: there is no event to wait on
    raise ValueError("the sandbox's loopback did not come up")


def _read_child_pid(info_fd: int) -> int:
    data = b""
    while b"}" not in data:
        if not _readable(info_fd, _NETWORK_READY_S):
            raise ValueError("bubblewrap did not report its child")
        chunk = os.read(info_fd, 4096)
        if not chunk:
            raise ValueError("bubblewrap exited before reporting its child")
        data += chunk
    return int(json.loads(data[: data.index(b"}") + 1])["child-pid"])


@contextlib.contextmanager
def _parent_userns(pid: int) -> Iterator[int]:
    own = os.open(f"/proc/{pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
    try:
        parent = fcntl.ioctl(own, _NS_GET_PARENT)
    finally:
        os.close(own)
    try:
        yield parent
    finally:
        os.close(parent)


def _readable(fd: int, timeout_s: float) -> bool:
    with selectors.DefaultSelector() as selector:
        selector.register(fd, selectors.EVENT_READ)
        return bool(selector.select(timeout_s))


def kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def _enter_caps(entry_fds: list[int], limits: ResourceLimits, *, cgroups: bool) -> Callable[[], None]:
    def enter() -> None:
        # Runs in the child between fork and exec: into the cgroups first, so nothing it forks escapes them.
        for fd in entry_fds:
            os.write(fd, b"0")
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        capped = [(resource.RLIMIT_NOFILE, limits.open_files), (resource.RLIMIT_FSIZE, limits.file_bytes)]
        if not cgroups:
            # Weaker stand-ins: NPROC counts the whole uid (and is ignored for root), AS counts mappings.
            capped += [(resource.RLIMIT_NPROC, limits.processes), (resource.RLIMIT_AS, limits.memory_bytes)]
        for kind, limit in capped:
            _, hard = resource.getrlimit(kind)
            # Without CAP_SYS_RESOURCE a hard limit can only be lowered, never raised.
            value = limit if hard == resource.RLIM_INFINITY else min(limit, hard)
            resource.setrlimit(kind, (value, value))

    return enter


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
