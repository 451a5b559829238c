"""The target repository's own Python environment, where its tests run.

Never darkfactory's virtualenv: our pytest plugins (pytest-asyncio among them) change how other projects'
suites behave. One environment per (dependency files, setup commands, interpreter) fingerprint, created
once and reused by every task and run; a directory without its `.ready` marker is rebuilt, so a crash
mid-setup leaves nothing half-built in use.

Setup is a separate phase from testing, and it is untrusted code too: `pip install -r requirements.txt`
runs the build backends of whatever the (agent's) requirement files name, and the policy's `setup` commands
come from the repository. So every step runs under bubblewrap (`sandbox.run_command`), never on the host:
`python -I -m venv` from the environment's own directory (a planted `venv/__main__.py` in the tree is never on
its path), then each setup command in a throw-away copy of the tree, with a network of its own (the package
index is reachable, the worker's loopback services are not), pip's configuration and local indexes
read-only, and nothing else of the host: no home, no credentials, no factory home, no other repository, no
`/proc` of the worker. Only the environment's directory and the copy are writable; time, output, process
and memory caps apply, and every process setup leaves is killed.
"""

from __future__ import annotations

import compileall
import configparser
import fcntl
import functools
import hashlib
import os
import shutil
import stat
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from darkfactory import sandbox

DEPENDENCY_FILES = (
    "pyproject.toml",
    "setup.cfg",
    "setup.py",
    "requirements.txt",
    "requirements-dev.txt",
    "requirements-test.txt",
    "test-requirements.txt",
)
DEFAULT_TEST_PACKAGES = ("pytest",)
ENV_FORMAT = b"seeded+bytecode+sandboxed"
"""Part of every environment's fingerprint: changing how environments are built rebuilds them."""
# pip's own configuration (index, certificates, local wheel dirs) is infrastructure, not a secret;
# everything else in the worker's environment stays out of setup processes.
_PIP_SETTINGS = (
    "PIP_INDEX_URL",
    "PIP_EXTRA_INDEX_URL",
    "PIP_FIND_LINKS",
    "PIP_CERT",
    "PIP_DEFAULT_TIMEOUT",
    "PIP_DISABLE_PIP_VERSION_CHECK",
    "PIP_NO_INDEX",
    "PIP_TRUSTED_HOST",
    "PIP_CONSTRAINT",
)
_PIP_CONFIG_FILES = ("/etc/pip.conf", "/etc/xdg/pip/pip.conf")
"""Site-wide pip configuration, visible read-only to setup. The worker user's own (~/.config/pip) is not:
setup never sees the worker's home."""
SETUP_LIMITS = sandbox.ResourceLimits(memory_bytes=4 << 30, processes=256)


class TargetEnvError(RuntimeError):
    """The target's environment could not be set up; the message carries the failing command's output."""


@dataclass(frozen=True)
class TargetEnv:
    """A ready environment: run its `python` with `bin_dir` first on PATH."""

    root: Path
    fingerprint: str

    @property
    def bin_dir(self) -> Path:
        return self.root / "bin"

    @property
    def python(self) -> Path:
        return self.bin_dir / "python"

    @property
    def readonly_paths(self) -> list[Path]:
        """What a sandbox must bind for this environment's interpreter to run."""
        return [self.root, Path(sys.base_prefix).resolve()]


def default_setup_commands(worktree: Path) -> list[list[str]]:
    """pip installs of the repository's requirement files (argv, run with the env's bin first on PATH).

    pytest itself is seeded from this installation (see `seed_distributions`), so a repository without
    requirement files gets a working test environment with no network at all.
    """
    commands: list[list[str]] = []
    for name in ("requirements.txt", "requirements-dev.txt", "requirements-test.txt", "test-requirements.txt"):
        if (worktree / name).is_file():
            commands.append(["python", "-m", "pip", "install", "--quiet", "-r", name])
    return commands


def fingerprint(worktree: Path, setup_commands: Sequence[Sequence[str]] | None) -> str:
    digest = hashlib.sha256()
    digest.update(sys.version.encode())
    digest.update(ENV_FORMAT)
    digest.update(repr(setup_commands).encode())
    for name in DEPENDENCY_FILES:
        path = worktree / name
        # lstat: a dependency file that is a symlink is not followed out of the tree (setup sees none).
        if path.exists() and stat.S_ISREG(path.lstat().st_mode):
            digest.update(name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:24]


def ensure_target_env(
    worktree: Path,
    cache_root: Path,
    setup_commands: Sequence[Sequence[str]] | None = None,
    on_tick: Callable[[], None] | None = None,
    timeout_s: float = 900.0,
) -> TargetEnv:
    """Return the environment for this worktree's dependencies, creating it on first use."""
    key = fingerprint(worktree, setup_commands)
    final = cache_root / key
    env = TargetEnv(root=final, fingerprint=key)
    if (final / ".ready").exists():
        return env
    cache_root.mkdir(parents=True, exist_ok=True)
    with open(cache_root / f"{key}.lock", "w") as lock:
        # Two workers setting up the same environment: one builds, the other waits and reuses it.
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (final / ".ready").exists():
            return env
        # A crash mid-build leaves no `.ready` marker: the next caller wipes the directory and rebuilds.
        if final.exists():
            shutil.rmtree(final)
        _build(final, worktree, setup_commands, on_tick, timeout_s)
        (final / ".ready").write_text(key)
    return env


def _build(
    root: Path,
    worktree: Path,
    setup_commands: Sequence[Sequence[str]] | None,
    on_tick: Callable[[], None] | None,
    timeout_s: float,
) -> None:
    commands = setup_commands if setup_commands is not None else default_setup_commands(worktree)
    root.mkdir(parents=True)
    # ensurepip costs seconds; an environment whose setup runs no command needs no pip. `-I`: the interpreter
    # ignores PYTHON* variables and puts neither the cwd nor a script's directory on sys.path.
    without_pip = [] if commands else ["--without-pip"]
    _run([str(base_python()), "-I", "-m", "venv", "--clear", *without_pip, str(root)],
         cwd=root, env_root=root, on_tick=on_tick, timeout_s=timeout_s)  # fmt: skip
    if setup_commands is None:
        seed_distributions(root, DEFAULT_TEST_PACKAGES)
        compile_site(site_packages(root))
    if not commands:
        return
    source = root.parent / f"{root.name}.src"
    if source.exists():
        shutil.rmtree(source)
    try:
        # A copy, so setup can build in-tree (pip does) without changing the tree the gates judge.
        shutil.copytree(worktree, source, symlinks=True, ignore=_not_copied)
        for command in commands:
            _run(list(command), cwd=source, env_root=root, on_tick=on_tick, timeout_s=timeout_s)
    finally:
        shutil.rmtree(source, ignore_errors=True)


def _not_copied(directory: str, names: list[str]) -> set[str]:
    """`.git` and anything but directories, regular files and symlinks: a FIFO the agent made would block
    the copy for ever, a device node is nobody's dependency."""
    skipped = {".git"}
    for name in names:
        mode = os.lstat(os.path.join(directory, name)).st_mode
        if not (stat.S_ISDIR(mode) or stat.S_ISREG(mode) or stat.S_ISLNK(mode)):
            skipped.add(name)
    return skipped


def base_python() -> Path:
    """The interpreter environments are made from: the base installation's, visible read-only in the sandbox
    (darkfactory's own virtualenv is not, and must not be: its packages stay out of the target's reach)."""
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    return Path(sys.base_prefix).resolve() / "bin" / version


def site_packages(env_root: Path) -> Path:
    """The environment's site-packages (it was created by this interpreter, so the version matches)."""
    return env_root / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"


def seed_distributions(env_root: Path, names: Sequence[str], *, requirements: bool = True) -> list[str]:
    """Copy installed distributions (and, with `requirements`, their runtime requirements) into the
    environment; return their names.

    Only the named distributions and what they require are copied, never their plugins: pytest arrives
    without pytest-asyncio, exactly as a plain `pip install pytest` would install it, but offline. Console
    scripts are not copied (`python -m pytest` is how the factory runs it).
    """
    target = site_packages(env_root)
    seen: set[str] = set()
    pending = [canonicalize_name(name) for name in names]
    while pending:
        name = pending.pop()
        if name in seen:
            continue
        seen.add(name)
        dist = metadata.distribution(name)
        for file in dist.files or []:
            if file.parts[0] == ".." or "__pycache__" in file.parts:
                continue
            source = Path(str(dist.locate_file(file)))
            if source.is_file():
                destination = target / file
                destination.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source, destination)
        for requirement in dist.requires or [] if requirements else []:
            parsed = Requirement(requirement)
            if parsed.marker is None or parsed.marker.evaluate({"extra": ""}):
                pending.append(canonicalize_name(parsed.name))
    return sorted(seen)


def compile_site(site: Path) -> None:
    """Byte-compile copied packages once: sandboxed runs see them read-only and write no bytecode, so without
    this every pytest start would compile pytest from source again (0.6 s instead of 0.2 s, measured here)."""
    compileall.compile_dir(str(site), quiet=1)


def setup_environment(env_root: Path) -> dict[str, str]:
    """What a setup command gets on top of the sandbox's scrubbed base: the venv, and pip's own settings
    (index, certificates, local wheel dirs: infrastructure, not secrets)."""
    env = {"VIRTUAL_ENV": str(env_root), "PIP_NO_INPUT": "1"}
    env.update({name: os.environ[name] for name in _PIP_SETTINGS if name in os.environ})
    return env


@functools.cache
def pip_sources() -> tuple[Path, ...]:
    """What setup may read of the host besides the interpreter: pip's site-wide configuration files and the
    local paths (find-links, file:// indexes, constraints, certificates) named there or in PIP_* settings."""
    values: list[str] = [os.environ[name] for name in _PIP_SETTINGS if name in os.environ]
    found: list[Path] = []
    for name in _PIP_CONFIG_FILES:
        if os.path.isfile(name):
            found.append(Path(name))
            parser = configparser.ConfigParser(interpolation=None)
            try:
                parser.read(name)
            except configparser.Error:
                continue
            values.extend(value for section in parser.sections() for value in parser[section].values())
    for value in values:
        for token in value.split():
            path = token.removeprefix("file://")
            if os.path.isabs(path) and os.path.exists(path) and path != "/":
                found.append(Path(path))
    return tuple(dict.fromkeys(found))


def _run(argv: list[str], *, cwd: Path, env_root: Path, on_tick: Callable[[], None] | None, timeout_s: float) -> None:
    bin_dir = env_root / "bin"
    if argv and not os.path.isabs(argv[0]) and (bin_dir / argv[0]).exists():
        argv = [str(bin_dir / argv[0]), *argv[1:]]
    try:
        result = sandbox.run_command(
            argv,
            cwd=cwd,
            timeout_s=timeout_s,
            env=setup_environment(env_root),
            path_prefix=[bin_dir],
            readonly_paths=[Path(sys.base_prefix).resolve(), *pip_sources()],
            writable_paths=[env_root],
            network=True,
            on_tick=on_tick,
            limits=SETUP_LIMITS,
        )
    except (ValueError, sandbox.SandboxUnavailable) as exc:
        raise TargetEnvError(f"setup command {' '.join(argv)} could not start: {exc}") from exc
    notes = "".join(f"\n({note})" for note in result.notes)
    if result.timed_out:
        raise TargetEnvError(f"setup command {' '.join(argv)} timed out after {timeout_s:.0f}s{notes}")
    if result.returncode != 0:
        stopped = f" ({result.limit})" if result.limit else ""
        tail = result.output[-4000:]
        raise TargetEnvError(
            f"setup command {' '.join(argv)} failed (exit {result.returncode}{stopped}):\n{tail}{notes}"
        )
