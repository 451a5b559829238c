"""The base side of the lint and types gates, computed once per base tree and kept on the worker's disk.

A gate tells new findings from ones already on the base by running its tool on the base too. Every task
attempt, merge check and final verification judges against a base many of them share, and ruff or mypy on the
same tree, the same files and the same tool gives the same findings. So the base's parsed findings are stored
as JSON, keyed by the base commit's tree sha (the tool's configuration is part of the tree), the tool with its
version and launch, and the sorted files asked about.

A tool failure (no findings, a timeout) is never stored: the next gate run tries again. The sandbox never sees
the factory home, so code under test cannot plant an entry; an entry that does not read back is a miss and is
overwritten.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, TypeVar

from pydantic import TypeAdapter

from darkfactory.gates.common import transcript
from darkfactory.gates.context import GateContext
from darkfactory.sandbox import CommandResult
from darkfactory.workspace import GitError, GitRun

FORMAT = 1
"""Part of every key: bump it when what a finding records, or how a tool's output is parsed, changes."""
_TREE_SHA = re.compile(r"^[0-9a-f]{40}([0-9a-f]{24})?$")

T = TypeVar("T")
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BaseSide(Generic[T]):
    """What the gate learnt about the base: its findings (None: the tool did not work there) and how."""

    findings: list[T] | None
    result: CommandResult | None
    """The tool's run on the base; None when the findings were reused from the cache."""
    transcript: str
    """For the gate's details: the run's transcript, or a line saying the findings came from the cache."""


@dataclass(frozen=True)
class _Entry:
    path: Path
    key: list[str]
    tree: str


def base_side(
    ctx: GateContext,
    tool: str,
    identity: Callable[[], Sequence[str] | None],
    files: Sequence[str],
    adapter: TypeAdapter[list[T]],
    run: Callable[[], tuple[CommandResult, list[T] | None]],
) -> BaseSide[T]:
    """The base's findings for `files`: from the cache when this base tree was already checked by the same
    tool on the same files, else `run()`, stored. `identity()` names the tool for the key (its version and
    launch; None when unknown: no caching); it is asked only when there is a cache to use."""
    entry = _entry(ctx, tool, identity, files)
    if entry is not None:
        cached = _load(entry, adapter)
        if cached is not None:
            note = (
                f"base findings reused from cache: {tool} on {len(files)} file(s) of the base tree "
                f"{entry.tree[:12]}, {len(cached)} finding(s)"
            )
            return BaseSide(cached, None, note)
    result, findings = run()
    if entry is not None and findings is not None and not result.timed_out:
        _store(entry, adapter, findings)
    return BaseSide(findings, result, transcript(result))


def _entry(
    ctx: GateContext, tool: str, identity: Callable[[], Sequence[str] | None], files: Sequence[str]
) -> _Entry | None:
    """Where the base's findings for this (tree, tool, files) live; None: no caching here."""
    if ctx.findings_cache is None or not ctx.repo_path or not ctx.base_sha:
        return None
    try:
        tree = GitRun(Path(ctx.repo_path))("rev-parse", "--verify", "--quiet", f"{ctx.base_sha}^{{tree}}").strip()
    except GitError:
        return None
    if not _TREE_SHA.match(tree):
        return None
    named = identity()
    if named is None:
        return None
    key = [str(FORMAT), tool, json.dumps(list(named)), tree, json.dumps(sorted(set(files)))]
    digest = hashlib.sha256(json.dumps(key).encode()).hexdigest()
    return _Entry(ctx.findings_cache / tool / f"{digest[:40]}.json", key, tree)


def _load(entry: _Entry, adapter: TypeAdapter[list[T]]) -> list[T] | None:
    try:
        raw = json.loads(entry.path.read_bytes())
        # The full key is stored beside the findings: a truncated digest that collides is a miss, not a wrong
        # answer.
        if isinstance(raw, dict) and raw.get("key") == entry.key:
            return adapter.validate_python(raw.get("findings"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError):  # unreadable, not JSON, or findings of another shape (ValidationError)
        pass
    log.warning("base findings cache entry %s is unreadable: recomputing", entry.path)
    return None


def _store(entry: _Entry, adapter: TypeAdapter[list[T]], findings: list[T]) -> None:
    """Write the entry whole or not at all: a concurrent gate run of the same base writes the same content."""
    payload = json.dumps({"key": entry.key, "findings": adapter.dump_python(findings, mode="json")})
    staging: str | None = None
    try:
        entry.path.parent.mkdir(parents=True, exist_ok=True)
        fd, staging = tempfile.mkstemp(dir=entry.path.parent, prefix=f".{entry.path.stem}.", suffix=".tmp")
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(payload)
        os.replace(staging, entry.path)
        staging = None
    except OSError as exc:
        # A cache that cannot be written costs time, never a verdict.
        log.warning("base findings cache entry %s could not be written: %s", entry.path, exc)
    finally:
        if staging is not None:
            with contextlib.suppress(OSError):
                os.unlink(staging)
