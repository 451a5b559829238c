"""The lint gate: ruff on the changed files with the target's own configuration; only new findings fail."""

from __future__ import annotations

import difflib
import json
import re
import shutil
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pydantic import TypeAdapter

from darkfactory.contracts import GateResult
from darkfactory.gates.base_findings import base_side
from darkfactory.gates.common import (
    MAX_ITEMS,
    TOOL_TIMEOUT_S,
    bounded,
    budget,
    context_lines,
    details_blob,
    is_regular,
    listed_notes,
    new_only,
    python_files,
    transcript,
    tree_text,
)
from darkfactory.gates.context import GateContext
from darkfactory.sandbox import CommandResult, run_command


@dataclass(frozen=True)
class Finding:
    """One ruff finding. `text` (the stripped source line) is what tells it apart from one on the base:
    line numbers move when code is added above."""

    path: str
    row: int
    col: int
    code: str
    message: str
    text: str

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.path, self.code, self.text)

    def __str__(self) -> str:
        return f"{self.path}:{self.row}:{self.col}: {self.code} {self.message}"


RUFF_ARGV = ("check", "--no-cache", "--output-format=json")
_FINDINGS = TypeAdapter(list[Finding])
"""How the base's findings are kept in the cache (see base_findings)."""


def ruff_binary() -> Path:
    """ruff from darkfactory's own environment: a static binary that only reads the target's files."""
    candidate = Path(sys.executable).parent / "ruff"
    return candidate if candidate.exists() else Path("ruff")


def run_ruff(ctx: GateContext, tree: Path, files: Sequence[str]) -> tuple[CommandResult, list[Finding] | None]:
    """ruff on `files` in `tree` with that tree's configuration; findings None when ruff did not work."""
    ruff = ruff_binary()
    result = run_command(
        [str(ruff), *RUFF_ARGV, "--", *files],
        cwd=tree,
        readonly_paths=[ruff.parent] if ruff.is_absolute() else [],
        timeout_s=budget(ctx, TOOL_TIMEOUT_S),
        on_tick=ctx.on_tick,
    )
    if result.timed_out or result.returncode not in (0, 1):
        return result, None
    start = re.search(r"^\[", result.output, re.MULTILINE)
    try:
        raw = json.loads(result.output[start.start() :] if start else result.output)
    except json.JSONDecodeError:
        return result, None
    if not isinstance(raw, list):
        return result, None
    lines = _Lines(tree)
    findings: list[Finding] = []
    for item in raw:
        if not isinstance(item, dict):
            continue
        path = _relative(tree, str(item.get("filename", "?")))
        location = item.get("location")
        row = int(location.get("row", 0)) if isinstance(location, dict) else 0
        col = int(location.get("column", 0)) if isinstance(location, dict) else 0
        code = str(item.get("code") or "syntax")
        findings.append(Finding(path, row, col, code, str(item.get("message", "")), lines.get(path, row).strip()))
    return result, findings


def ruff_identity() -> list[str] | None:
    """Which ruff checks, for the base findings' cache key: its path, arguments, size and modification time (a
    stat, not a sandboxed `ruff --version`: this is darkfactory's own binary); None when it is not on disk."""
    ruff = ruff_binary()
    try:
        stat = (ruff if ruff.is_absolute() else Path(shutil.which(str(ruff)) or ruff)).stat()
    except OSError:
        return None
    return [str(ruff), *RUFF_ARGV, str(stat.st_size), str(stat.st_mtime_ns)]


def lint_gate(ctx: GateContext) -> GateResult:
    """ruff on the changed files, with the target repository's own configuration; only new findings fail."""
    files = python_files(ctx)
    if not files:
        return GateResult(gate="lint", passed=True, summary="no changed Python files")
    result, findings = run_ruff(ctx, ctx.worktree, files)
    outputs = [transcript(result)]
    if result.timed_out:
        return GateResult(gate="lint", passed=False, summary="ruff timed out", details_ref=details_blob(ctx, outputs))
    if findings is None:
        # A linter that crashes fails the gate: an unchecked change is not a passing change.
        return GateResult(
            gate="lint",
            passed=False,
            summary=f"ruff failed to run (exit {result.returncode})",
            feedback=bounded(result.output),
            details_ref=details_blob(ctx, outputs),
        )
    new, old, notes = findings, list[Finding](), list[str]()
    if findings and ctx.base_worktree is not None:
        base_files = [path for path in files if is_regular(ctx.base_worktree, path)]
        if base_files:
            base_tree = ctx.base_worktree
            base = base_side(
                ctx,
                "ruff",
                ruff_identity,
                base_files,
                _FINDINGS,
                lambda: run_ruff(ctx, base_tree, base_files),
            )
            outputs.append(base.transcript)
            base_findings = base.findings
            if base_findings is None:
                notes.append("ruff did not run on the base commit: every finding counts as new")
            else:
                new, old = new_only(findings, base_findings, lambda finding: finding.key)
                carried = _on_edited_lines(ctx, new, [f for f in base_findings if f not in old])
                new, old = [f for f in new if f not in carried], [*old, *carried]
    notes += listed_notes("already on the base commit", [str(finding) for finding in old])
    details = details_blob(ctx, outputs)
    already = f" ({len(old)} already on the base commit)" if old else ""
    if not new:
        summary = f"ruff: {len(files)} file(s) clean" if not old else f"ruff: no new findings{already}"
        return GateResult(gate="lint", passed=True, summary=summary, details_ref=details, notes=notes)
    lines = [f"{finding}\n{context_lines(ctx.worktree, finding.path, finding.row)}" for finding in new[:MAX_ITEMS]]
    if len(new) > MAX_ITEMS:
        lines.append(f"... and {len(new) - MAX_ITEMS} more finding(s)")
    return GateResult(
        gate="lint",
        passed=False,
        summary=f"ruff: {len(new)} new finding(s){already}",
        feedback=bounded("\n".join(lines)),
        details_ref=details,
        notes=notes,
    )


def _on_edited_lines(ctx: GateContext, new: list[Finding], base: list[Finding]) -> list[Finding]:
    """New findings that sit on a line the change edited where the base's version of that line had the same
    finding: restoring or rewording a line does not add a problem it already had (one per base finding)."""
    if not new or not base or ctx.base_worktree is None:
        return []
    carried: list[Finding] = []
    for path in sorted({finding.path for finding in new}):
        before = (tree_text(ctx.base_worktree, path) or "").splitlines()
        after = (tree_text(ctx.worktree, path) or "").splitlines()
        moved: dict[int, int] = {}
        for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(None, before, after, autojunk=False).get_opcodes():
            if tag in ("equal", "replace"):
                for offset in range(i2 - i1):
                    moved[i1 + offset + 1] = j1 + min(offset, j2 - j1 - 1) + 1
        waiting = Counter((f.code, moved.get(f.row)) for f in base if f.path == path)
        for finding in (f for f in new if f.path == path):
            if waiting[(finding.code, finding.row)] > 0:
                waiting[(finding.code, finding.row)] -= 1
                carried.append(finding)
    return carried


class _Lines:
    """Source lines of a tree's files, read once each, safely."""

    def __init__(self, tree: Path) -> None:
        self._tree = tree
        self._files: dict[str, list[str]] = {}

    def get(self, path: str, row: int) -> str:
        if path not in self._files:
            self._files[path] = (tree_text(self._tree, path) or "").splitlines()
        lines = self._files[path]
        return lines[row - 1] if 0 < row <= len(lines) else ""


def _relative(tree: Path, filename: str) -> str:
    try:
        return str(Path(filename).resolve().relative_to(tree.resolve()))
    except (ValueError, OSError):
        return filename
