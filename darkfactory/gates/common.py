"""Helpers every gate shares: safe reads of what sandboxed code wrote, the run's time budget and scratch
directory, telling new problems from ones on the base, and feedback bounded for a model.

The code under test writes the worktree and the scratch directory, so the host reads anything there without
following symlinks and only from regular files: a planted link must not pull, say, the worker's ssh key
into feedback that goes to a model.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TypeVar

from darkfactory.contracts import BlobRef
from darkfactory.gates.context import GateContext
from darkfactory.sandbox import CommandResult

FEEDBACK_LIMIT = 4000
"""Characters of feedback per gate: enough for a few failures with context, small enough for history."""
MAX_ITEMS = 8
"""Failing items shown with context in feedback; the details blob has them all."""
MAX_NOTES = 12
TOOL_TIMEOUT_S = 300.0
"""Cap of one ruff or mypy run (the gate run's deadline may be sooner)."""
SOURCE_LIMIT = 4 << 20
"""Bytes of a worktree file the host reads (source context, configuration, import scans)."""


T = TypeVar("T")


# --------------------------------------------------------------------------------------------------
# Reading what sandboxed code could have written


def read_regular_file(path: Path, limit: int = SOURCE_LIMIT) -> bytes | None:
    """The bytes of `path` if it is a regular file no larger than `limit`, reached without following a
    symlink at its last component; None otherwise (missing, a link, a FIFO, a directory, too big)."""
    try:
        # O_NONBLOCK: opening a planted FIFO must not hang the worker; fstat then refuses it.
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_size > limit:
            return None
        chunks: list[bytes] = []
        total = 0
        while chunk := os.read(fd, 1 << 20):
            total += len(chunk)
            if total > limit:
                return None
            chunks.append(chunk)
        return b"".join(chunks)
    except OSError:
        return None
    finally:
        os.close(fd)


def inside(root: Path, relative: str) -> Path | None:
    """`root / relative` with its directories resolved, if they stay inside `root` (the last component is
    left alone for O_NOFOLLOW to judge)."""
    if not relative or os.path.isabs(relative) or ".." in Path(relative).parts:
        return None
    real_root = os.path.realpath(root)
    parent = os.path.realpath(os.path.dirname(os.path.join(real_root, relative)))
    if parent != real_root and not parent.startswith(real_root + os.sep):
        return None
    return Path(parent) / os.path.basename(relative)


def tree_file(root: Path, relative: str, limit: int = SOURCE_LIMIT) -> bytes | None:
    """A regular file of a worktree, never through a symlink."""
    path = inside(root, relative)
    return None if path is None else read_regular_file(path, limit)


def is_regular(root: Path, relative: str) -> bool:
    path = inside(root, relative)
    if path is None:
        return False
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False


def tree_text(root: Path, relative: str) -> str | None:
    data = tree_file(root, relative)
    return None if data is None else data.decode("utf-8", errors="replace")


def python_files(ctx: GateContext, suffixes: tuple[str, ...] = (".py",)) -> list[str]:
    """Changed Python files that are regular files in the worktree (a committed symlink is not source)."""
    return [path for path in ctx.changed if path.endswith(suffixes) and is_regular(ctx.worktree, path)]


# --------------------------------------------------------------------------------------------------
# Budget and scratch


def budget(ctx: GateContext, cap: float | None = None) -> float:
    """Seconds the next command may take: what is left of the gate run, at most `cap`."""
    left = ctx.timeout_s if ctx.deadline is None else ctx.deadline - time.monotonic()
    if cap is not None:
        left = min(left, cap)
    return max(left, 1.0)


@contextlib.contextmanager
def scratch_dir(ctx: GateContext) -> Iterator[Path]:
    """The run's scratch directory, or a temporary one when a gate is called on its own."""
    if ctx.scratch is not None:
        yield ctx.scratch
        return
    with tempfile.TemporaryDirectory(prefix="darkfactory-gates-") as scratch:
        yield Path(scratch)


# --------------------------------------------------------------------------------------------------
# Telling new problems from ones already on the base


def new_only(head: Sequence[T], base: Sequence[T], key: Callable[[T], object]) -> tuple[list[T], list[T]]:
    """Split `head` into (new, already on base), matching by `key` as multisets: the second copy of a
    finding that occurs once on the base is new."""
    remaining = Counter(key(item) for item in base)
    new: list[T] = []
    old: list[T] = []
    for item in head:
        if remaining[key(item)] > 0:
            remaining[key(item)] -= 1
            old.append(item)
        else:
            new.append(item)
    return new, old


# --------------------------------------------------------------------------------------------------
# Feedback and details


def context_lines(tree: Path, path: str, row: int, radius: int = 1) -> str:
    lines = (tree_text(tree, path) or "").splitlines()
    start, end = max(row - 1 - radius, 0), min(row + radius, len(lines))
    return "\n".join(f"  {number + 1:>4} | {lines[number]}" for number in range(start, end))


def transcript(result: CommandResult) -> str:
    return f"$ {' '.join(result.argv)}\n(exit {result.returncode}, {result.duration_s:.1f}s)\n{result.output}"


def details_blob(ctx: GateContext, outputs: Sequence[str]) -> BlobRef:
    return ctx.blobs.put_text("\n\n".join(outputs))


def listed_notes(label: str, items: Sequence[str]) -> list[str]:
    notes = [f"{label}: {item}"[:300] for item in items[:MAX_NOTES]]
    if len(items) > MAX_NOTES:
        notes.append(f"{label}: ... and {len(items) - MAX_NOTES} more")
    return notes


def tail(text: str, lines: int) -> str:
    return "\n".join(text.splitlines()[-lines:])


def bounded(text: str, limit: int = FEEDBACK_LIMIT) -> str:
    if len(text) <= limit:
        return text
    half = limit // 2
    return f"{text[:half]}\n[... {len(text) - limit} characters omitted ...]\n{text[-half:]}"
