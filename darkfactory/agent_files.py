"""The agent's editor's reach into one workspace: path confinement and safe file I/O.

The editor runs in the worker's own process, outside any sandbox, so the checks here are the boundary for it:
a path must resolve (symlinks included) inside the root and outside `.git`, the file must be a regular,
singly-linked, small text file, and every component is opened with O_NOFOLLOW from a directory fd so a
symlink swapped in after the check is refused rather than followed (sandbox facts §1.3 item 3).
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
from collections.abc import Iterator
from dataclasses import dataclass

MAX_FILE_BYTES = 1 << 20
"""Larger files are refused by the editor: the model should grep/head them instead."""
BINARY_SNIFF_BYTES = 8192
MAX_PATH_CHARS = 4_096

MODEL_FIXABLE_ERRNOS = frozenset(
    {errno.EACCES, errno.EPERM, errno.ENOENT, errno.ENOTDIR, errno.EISDIR, errno.ELOOP, errno.ENAMETOOLONG, errno.EROFS}
)
"""OSErrors a path the checks allowed can still meet (a name too long, a race): the model's to fix."""


@dataclass(frozen=True)
class ToolExecution:
    """What one tool call produced: the tool_result content for the model and a line for the audit trail."""

    content: str
    is_error: bool
    summary: str
    """One short line, e.g. `create src/x.py (12 lines)`."""
    wrote: bool
    """True when the workspace may have changed (the caller snapshots it)."""


class ToolError(Exception):
    """A mistake of the model's (or a refusal), reported back to it as an is_error tool result."""

    def __init__(self, message: str, summary: str) -> None:
        super().__init__(message)
        self.message = message
        self.summary = summary


@dataclass(frozen=True)
class Target:
    """A path the model named, checked: `rel` is relative to the root with every symlink resolved."""

    raw: str
    rel: str
    parts: tuple[str, ...]


class WorkspaceFiles:
    """Checked reads and writes of text files under one root."""

    def __init__(self, root: str) -> None:
        self.root = root

    def resolve(self, raw: object, op: str) -> Target:
        """Check a model-supplied path; the result names a location inside the root, outside `.git`."""
        if not isinstance(raw, str) or not raw.strip():
            raise ToolError(
                f"`path` is required for {op}: a path relative to the repository root, e.g. src/app.py",
                f"{op}: no path",
            )
        shown = raw if len(raw) <= 200 else raw[:200] + "..."
        if "\x00" in raw:
            raise ToolError(f"path {shown!r} contains a NUL byte; send a plain path", f"{op}: NUL in path")
        if len(raw) > MAX_PATH_CHARS:
            raise ToolError(f"path is {len(raw)} characters long; send a shorter path", f"{op}: path too long")
        lexical = os.path.normpath(raw if os.path.isabs(raw) else os.path.join(self.root, raw))
        try:
            real = os.path.realpath(lexical)
        except OSError:
            # A component changed kind while being resolved (a directory swapped for a symlink).
            raise ToolError(f'"{shown}" changed while being checked; try again', f"{op} {shown[:80]}: raced") from None
        if not within(real, self.root):
            if within(lexical, self.root):
                reason = f'path "{shown}" resolves through a symlink to outside the workspace'
            else:
                reason = f'path "{shown}" is outside the workspace'
            raise ToolError(
                f"{reason}; use a path relative to the repository root ({self.root})",
                f"{op} {shown[:80]}: outside workspace",
            )
        rel = os.path.relpath(real, self.root)
        parts = () if rel == "." else tuple(rel.split(os.sep))
        lexical_parts = os.path.relpath(lexical, self.root).split(os.sep) if within(lexical, self.root) else []
        if ".git" in parts or ".git" in lexical_parts:
            raise ToolError(
                f'path "{shown}" is inside .git, which the agent may not read or change; '
                "use the bash tool with `git status`, `git diff` or `git log` instead",
                f"{op} {shown[:80]}: .git is off limits",
            )
        if not parts and op != "view":
            raise ToolError(
                f'path "{shown}" is the repository root directory; {op} needs a file path',
                f"{op} {shown[:80]}: root is a directory",
            )
        return Target(raw=raw, rel=rel, parts=parts)

    def is_dir(self, target: Target) -> bool:
        if not target.parts:
            return True
        with self.parent_fd(target, create=False, op="view") as parent:
            try:
                st = os.stat(target.parts[-1], dir_fd=parent, follow_symlinks=False)
            except FileNotFoundError:
                raise ToolError(
                    f'"{target.rel}" does not exist; view "." to list the repository, or use create to make it',
                    f"view {target.rel}: not found",
                ) from None
        return stat.S_ISDIR(st.st_mode)

    @contextlib.contextmanager
    def parent_fd(self, target: Target, *, create: bool, op: str) -> Iterator[int]:
        """A directory fd for the target's parent, reached one component at a time without following
        symlinks: the realpath check could be raced, this walk cannot be redirected."""
        fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            for i, part in enumerate(target.parts[:-1]):
                try:
                    nxt = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
                except FileNotFoundError:
                    if not create:
                        raise ToolError(
                            f'"{target.rel}" does not exist (no directory "{"/".join(target.parts[: i + 1])}")',
                            f"{op} {target.rel}: not found",
                        ) from None
                    os.mkdir(part, 0o755, dir_fd=fd)
                    nxt = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
                except OSError as exc:
                    if exc.errno in (errno.ENOTDIR, errno.ELOOP):
                        raise ToolError(
                            f'"{"/".join(target.parts[: i + 1])}" is not a directory (or changed while being '
                            f'opened), so "{target.rel}" cannot be used',
                            f"{op} {target.rel}: parent is not a directory",
                        ) from None
                    raise
                os.close(fd)
                fd = nxt
            yield fd
        finally:
            os.close(fd)

    def read_text(self, target: Target, op: str) -> str:
        with self.parent_fd(target, create=False, op=op) as parent:
            name = target.parts[-1]
            try:
                st = os.stat(name, dir_fd=parent, follow_symlinks=False)
            except FileNotFoundError:
                raise ToolError(
                    f'file "{target.rel}" does not exist; check the path with `view` on its directory, '
                    "or use create to make it",
                    f"{op} {target.rel}: not found",
                ) from None
            self.check_file(target, st, op)
            try:
                # O_NONBLOCK: should a FIFO be swapped in after the stat, opening it must not hang.
                fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=parent)
            except OSError as exc:
                if exc.errno == errno.ELOOP:
                    raise ToolError(
                        f'"{target.rel}" changed while being opened; try again', f"{op} {target.rel}: raced"
                    ) from None
                raise
            try:
                self.check_file(target, os.fstat(fd), op)
                with os.fdopen(fd, "rb", closefd=False) as handle:
                    data = handle.read(MAX_FILE_BYTES + 1)
            finally:
                os.close(fd)
        if len(data) > MAX_FILE_BYTES:
            raise self.too_large(target, op, len(data))
        if b"\x00" in data[:BINARY_SNIFF_BYTES]:
            raise ToolError(
                f'"{target.rel}" is a binary file; the editor only handles text',
                f"{op} {target.rel}: binary file",
            )
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ToolError(
                f'"{target.rel}" is not UTF-8 text (byte {exc.start}); the editor only handles UTF-8 files',
                f"{op} {target.rel}: not UTF-8",
            ) from None

    def write_text(self, target: Target, text: str, op: str) -> bool:
        """Replace the file's content atomically; returns whether it existed before.

        A new inode is written and renamed over the name, so even an undetected alias of the old inode
        (a hard link made after the check) never receives the content."""
        data = text.encode("utf-8")
        if len(data) > MAX_FILE_BYTES:
            raise self.too_large(target, op, len(data))
        if b"\x00" in data:
            raise ToolError(
                f'the new content of "{target.rel}" contains NUL bytes; the editor only writes text',
                f"{op} {target.rel}: NUL in content",
            )
        with self.parent_fd(target, create=(op == "create"), op=op) as parent:
            name = target.parts[-1]
            try:
                st: os.stat_result | None = os.stat(name, dir_fd=parent, follow_symlinks=False)
            except FileNotFoundError:
                st = None
            if st is not None:
                self.check_file(target, st, op)
            mode = stat.S_IMODE(st.st_mode) if st is not None else 0o644
            temp = f".df-edit-{secrets.token_hex(6)}.tmp"
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=parent)
            try:
                with os.fdopen(fd, "wb", closefd=False) as handle:
                    handle.write(data)
                if st is not None:
                    os.fchmod(fd, mode)  # keep an executable bit; the umask applied at creation
                os.rename(temp, name, src_dir_fd=parent, dst_dir_fd=parent)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(temp, dir_fd=parent)
                raise
            finally:
                os.close(fd)
        return st is not None

    def check_file(self, target: Target, st: os.stat_result, op: str) -> None:
        if stat.S_ISDIR(st.st_mode):
            raise ToolError(
                f'"{target.rel}" is a directory; {op} needs a file (use view to list a directory)',
                f"{op} {target.rel}: is a directory",
            )
        if stat.S_ISLNK(st.st_mode):
            raise ToolError(
                f'"{target.rel}" changed into a symlink while being checked; try again',
                f"{op} {target.rel}: raced",
            )
        if not stat.S_ISREG(st.st_mode):
            raise ToolError(
                f'"{target.rel}" is not a regular file (a FIFO, socket or device); the editor only handles '
                "regular files",
                f"{op} {target.rel}: not a regular file",
            )
        if st.st_nlink > 1:
            # A hard link can alias a file outside the workspace; no path check can tell.
            raise ToolError(
                f'"{target.rel}" has {st.st_nlink} hard links, so it may alias a file outside the workspace; '
                "the editor refuses it",
                f"{op} {target.rel}: hard-linked file",
            )
        if op != "create" and st.st_size > MAX_FILE_BYTES:
            raise self.too_large(target, op, st.st_size)

    def too_large(self, target: Target, op: str, size: int) -> ToolError:
        return ToolError(
            f'"{target.rel}" is {size} bytes, over the editor\'s {MAX_FILE_BYTES}-byte limit; inspect it with '
            "the bash tool (`head`, `tail`, `grep -n`) instead",
            f"{op} {target.rel}: too large",
        )


def within(path: str, root: str) -> bool:
    return os.path.commonpath([path, root]) == root
