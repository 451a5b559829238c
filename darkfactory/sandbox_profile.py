"""The bubblewrap profile: what a sandboxed command sees of the host (sandbox facts notes §1.2, "recommended").

Allowlisted read-only binds (never `/` wholesale: the sandbox uid maps to the worker's uid, so a root worker
would expose /etc/shadow), the working tree writable but its git metadata read-only, fresh namespaces of
every kind (the network one too: a command never shares the host's network, so the Temporal frontend and
any other loopback service stay out of reach), no capabilities, no nested user namespaces.
"""

from __future__ import annotations

import functools
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

SANDBOX_UID = 65534
"""nobody/nogroup inside the user namespace (it maps to the worker's own uid on the host)."""

SANDBOX_HOME = "/tmp/home"
"""HOME inside bwrap: on the per-command tmpfs, so it is fresh every time."""

TMP_SIZE_BYTES = 2 << 30
"""The per-command /tmp is a tmpfs of this size: a command that fills it fills its own memory-backed disk,
not the host's."""

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


def bwrap_argv(
    exe: str,
    argv: Sequence[str],
    *,
    cwd: str,
    env: Mapping[str, str],
    readonly_paths: Sequence[Path] = (),
    writable_paths: Sequence[Path] = (),
    network: bool = False,
    sync_fds: tuple[int, int] | None = None,
) -> list[str]:
    """The bubblewrap command line for one command (public so the profile can be inspected and logged).

    `network` binds the resolver files; the network itself is attached from outside (slirp4netns) through
    `sync_fds` = (info fd bwrap writes its child's pid to, fd it blocks on until the network is up)."""
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
    if sync_fds is not None:
        out += ["--info-fd", str(sync_fds[0]), "--block-fd", str(sync_fds[1])]
    out += ["--ro-bind", "/usr", "/usr"]
    for top in _SYSTEM_DIRS:
        if os.path.islink(top):
            out += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            out += ["--ro-bind", top, top]
    for etc in (*_ETC_FILES, *(_ETC_NETWORK_FILES if network else ())):
        if os.path.exists(etc):
            out += ["--ro-bind", etc, etc]
    out += ["--proc", "/proc", "--dev", "/dev", "--size", str(TMP_SIZE_BYTES), "--tmpfs", "/tmp"]
    out += ["--dir", env.get("HOME", SANDBOX_HOME)]

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
    for writable in [mount for mount, rw in mounts.items() if rw]:
        for protected in git_paths(writable):
            mounts[protected] = False
    for mount, rw in sorted(mounts.items(), key=lambda item: (_depth(item[0]), not item[1])):
        out += ["--bind" if rw else "--ro-bind", mount, mount]
    for mount in sorted(mounts):
        # The repository's config can hold a remote URL with a token in it; git inside works without it.
        config = os.path.join(mount, "config")
        if not mounts[mount] and _is_git_dir(mount) and os.path.isfile(config):
            out += ["--ro-bind", _empty_file(), config]
    for target, link in links:
        if not any(_within(link, mounted) for mounted in mounts):
            out += ["--symlink", target, link]
    out += ["--remount-ro", "/", "--chdir", cwd, "--clearenv"]
    for name, value in env.items():
        out += ["--setenv", name, value]
    out += ["--", *argv]
    return out


def git_paths(tree: str) -> list[str]:
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


@functools.cache
def _empty_file() -> str:
    """An empty regular file to mount over ones the sandbox must not read (a device node would not open)."""
    path = os.path.join(tempfile.gettempdir(), f"darkfactory-empty-{os.getuid()}")
    if not os.path.isfile(path) or os.path.getsize(path) != 0:
        fd, temp = tempfile.mkstemp(dir=os.path.dirname(path))
        os.close(fd)
        os.chmod(temp, 0o444)
        os.replace(temp, path)
    return path


def _is_git_dir(path: str) -> bool:
    return os.path.isfile(os.path.join(path, "HEAD")) and os.path.isdir(os.path.join(path, "objects"))


def _depth(path: str) -> int:
    return len(Path(path).parts)


def _within(path: str, parent: str) -> bool:
    return os.path.commonpath([path, parent]) == parent
