"""The scope gate: which paths a change touches, whether its task type may touch them, whether it weakens the
tests that already exist, and what it really adds (symlinks, binary files).

Measured between the task's base and its commit in the repository itself (deletions included, which the
worktree cannot show). These fail the gate: a path the task type may not touch, a weakened existing test
(`weakening.py`), a symlink that leaves the tree (an absolute target, `..` past the root, through another
link, into `.git`) and a binary file over `limits.max_binary_bytes`. A protected path (CI configuration,
`.factory/`) or a large diff passes but needs a person's approval.

Binary or text is decided from the content, as git itself does (a NUL byte in the first 8000 bytes), never
from git's numstat alone: a `.gitattributes` in the change could call text binary so that its lines count
nothing. A binary file counts one line per `BINARY_BYTES_PER_LINE` bytes of its new content.
"""

from __future__ import annotations

import os
import tempfile
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from darkfactory.contracts import GateResult
from darkfactory.gates.context import GateContext
from darkfactory.gates.weakening import weakened_in_change, weakened_tests
from darkfactory.policy import BINARY_BYTES_PER_LINE, TaskTypeRules, is_always_protected, matches
from darkfactory.workspace import GitRun

__all__ = ["Touched", "escaping_links", "scope_gate", "scope_violations", "touched_paths", "weakened_tests"]

FEEDBACK_LIMIT = 4000
"""Characters of feedback, the same bound as the other gates."""
MAX_LISTED = 20
"""Offending paths or weakened tests listed in the feedback; the details blob has them all."""

SYMLINK_MODE = "120000"
_REGULAR_MODES = ("100644", "100755")
_BINARY_PROBE = 8000
"""Bytes git looks at for a NUL to call content binary (`buffer_is_binary`)."""
_BATCH_BYTES = 32 << 20
"""Blob bytes read back per `git cat-file --batch` call (a bigger blob is read alone)."""
_MAX_LINK_HOPS = 40
"""Symlinks followed while resolving one target, as Linux does (MAXSYMLINKS): more is a loop."""


@dataclass(frozen=True)
class Touched:
    """One path the change adds, modifies or deletes."""

    path: str
    status: str
    """git's status letter: A(dded), M(odified), D(eleted), T(ype changed)."""
    added: int
    removed: int
    """Text lines; binary content counts none here (see `size`)."""
    binary: bool
    """The content (the new one; the old one when deleted) has a NUL byte in its first 8000 bytes."""
    size: int = 0
    """Bytes of the new content; 0 when deleted."""
    mode: str = ""
    """The new git mode: 100644, 100755, 120000 (a symlink), 160000 (a submodule); "" when deleted."""
    link_target: str | None = None
    """Where the new symlink points, as written in it; None for anything else."""

    @property
    def binary_bytes(self) -> int:
        """Bytes of binary content the change adds here (deleting a binary file adds none)."""
        return self.size if self.binary and self.mode else 0


@dataclass(frozen=True)
class _Raw:
    path: str
    status: str
    old_mode: str
    new_mode: str
    old_blob: str
    new_blob: str


@dataclass(frozen=True)
class _Blob:
    size: int
    binary: bool
    lines: int


def touched_paths(repo_path: str, base_sha: str, sha: str) -> list[Touched]:
    """Every path that differs between the two commits, with its line counts, sizes, modes and link targets."""
    run = GitRun(Path(repo_path))
    common = ("--no-renames", "--no-ext-diff", "--no-textconv", "--no-abbrev", "-z", base_sha, sha)
    # -z: paths verbatim, without git's quoting of unusual characters.
    fields = [field for field in run("diff", "--raw", *common).split("\0") if field]
    raws = [_raw(meta, path) for meta, path in zip(fields[0::2], fields[1::2], strict=True)]
    counted: dict[str, tuple[int, int] | None] = {}
    for record in run("diff", "--numstat", *common).split("\0"):
        if record:
            plus, minus, path = record.split("\t", 2)
            counted[path] = None if plus == "-" else (int(plus), int(minus))
    regular = [r.old_blob for r in raws if r.old_mode in _REGULAR_MODES]
    regular += [r.new_blob for r in raws if r.new_mode in _REGULAR_MODES]
    links = {r.new_blob for r in raws if r.new_mode == SYMLINK_MODE}
    blobs, kept = _read_blobs(run, [*regular, *links], keep=links)
    touched: list[Touched] = []
    for r in raws:
        old = blobs.get(r.old_blob) if r.old_mode in _REGULAR_MODES else None
        new = blobs.get(r.new_blob) if r.new_mode in _REGULAR_MODES else None
        added, removed = _line_counts(run, r, counted.get(r.path), old, new)
        shown = new if r.new_mode != "000000" else old
        touched.append(
            Touched(
                path=r.path,
                status=r.status,
                added=added,
                removed=removed,
                binary=shown is not None and shown.binary,
                size=new.size if new is not None else 0,
                mode="" if r.new_mode == "000000" else r.new_mode,
                link_target=os.fsdecode(kept[r.new_blob]) if r.new_mode == SYMLINK_MODE else None,
            )
        )
    return touched


def _raw(meta: str, path: str) -> _Raw:
    old_mode, new_mode, old_blob, new_blob, status = meta.lstrip(":").split(" ")
    return _Raw(path, status[:1], old_mode, new_mode, old_blob, new_blob)


def _line_counts(
    run: GitRun, raw: _Raw, counted: tuple[int, int] | None, old: _Blob | None, new: _Blob | None
) -> tuple[int, int]:
    """Added and removed text lines. Binary content on either side counts nothing here (its bytes count
    instead), the text on the other side all of its lines."""
    if (new is not None and new.binary) or (old is not None and old.binary):
        return (new.lines if new is not None and not new.binary else 0), (
            old.lines if old is not None and not old.binary else 0
        )
    if counted is not None:
        return counted
    # git called text binary: a `.gitattributes` says so. Count the lines without it.
    if old is None or new is None:
        return (new.lines if new is not None else 0), (old.lines if old is not None else 0)
    return _text_numstat(run, raw.old_blob, raw.new_blob, fallback=(new.lines, old.lines))


def _text_numstat(run: GitRun, old_blob: str, new_blob: str, *, fallback: tuple[int, int]) -> tuple[int, int]:
    """git's line counts for two texts, diffed outside any repository (so no attributes apply)."""
    _blobs, kept = _read_blobs(run, [old_blob, new_blob], keep={old_blob, new_blob})
    with tempfile.TemporaryDirectory(prefix="factory-scope-") as scratch:
        (Path(scratch) / "old").write_bytes(kept[old_blob])
        (Path(scratch) / "new").write_bytes(kept[new_blob])
        status, out, _err = GitRun(Path(scratch)).status(
            "diff", "--no-index", "--numstat", "--no-ext-diff", "old", "new"
        )
    numbers = out.split("\t", 2)[:2]
    if status not in (0, 1) or len(numbers) != 2 or not all(number.isdigit() for number in numbers):
        return fallback  # every line of both, which is never less than the real count
    return int(numbers[0]), int(numbers[1])


def _read_blobs(
    run: GitRun, shas: Iterable[str], *, keep: Iterable[str] = ()
) -> tuple[dict[str, _Blob], dict[str, bytes]]:
    """Size, binary-or-text and line count of each blob; the whole content of those in `keep`."""
    keeping = set(keep)
    wanted = sorted(set(shas) | keeping)
    blobs: dict[str, _Blob] = {}
    kept: dict[str, bytes] = {}
    if not wanted:
        return blobs, kept
    sizes: dict[str, int] = {}
    for line in _batch(run, "--batch-check", wanted).splitlines():
        sha, _space, rest = line.decode().partition(" ")
        kind, _space, size = rest.partition(" ")
        if kind != "blob":
            raise ValueError(f"{sha} is not a blob in the repository ({kind or 'missing'})")
        sizes[sha] = int(size)
    chunks: list[list[str]] = [[]]
    total = 0
    for sha in wanted:
        if chunks[-1] and total + sizes[sha] > _BATCH_BYTES:
            chunks.append([])
            total = 0
        chunks[-1].append(sha)
        total += sizes[sha]
    for chunk in chunks:
        data = _batch(run, "--batch", chunk)
        position = 0
        for sha in chunk:
            start = data.index(b"\n", position) + 1
            content = data[start : start + sizes[sha]]
            position = start + sizes[sha] + 1
            lines = content.count(b"\n") + (1 if content and not content.endswith(b"\n") else 0)
            blobs[sha] = _Blob(size=len(content), binary=b"\0" in content[:_BINARY_PROBE], lines=lines)
            if sha in keeping:
                kept[sha] = content
    return blobs, kept


def _batch(run: GitRun, option: str, shas: list[str]) -> bytes:
    """`git cat-file <option>` for these objects, as the bytes git wrote."""
    with tempfile.TemporaryFile() as stdin:
        stdin.write("".join(f"{sha}\n" for sha in shas).encode())
        stdin.seek(0)
        out = run("cat-file", option, stdin=stdin)
    # GitRun decodes like os.fsdecode (surrogateescape) and drops the final newline: undo both, exactly.
    return os.fsencode(out) + b"\n"


# --------------------------------------------------------------------------------------------------
# Symlinks


def escaping_links(repo_path: str, sha: str, touched: list[Touched]) -> list[str]:
    """Each symlink the change adds or edits that leaves the tree, with why; empty when all stay inside.

    Resolved the way the kernel follows them (a link met on the way is followed too) but lexically, on the
    commit's tree: an absolute target, `..` past the root, or a component named `.git` leaves it."""
    links = [item for item in touched if item.mode == SYMLINK_MODE]
    if not links:
        return []
    tree = _LinkTree(GitRun(Path(repo_path)), sha)
    problems: list[str] = []
    for item in links:
        target = item.link_target or ""
        if why := tree.escape(item.path, target):
            problems.append(f"{item.path} -> {_printable(target)}: {why}")
    return problems


class _LinkTree:
    """One commit's tree, asked entry by entry which paths are symlinks and where they point."""

    def __init__(self, run: GitRun, sha: str) -> None:
        self._run = run
        self._sha = sha
        self._links: dict[str, str | None] = {}

    def escape(self, path: str, target: str) -> str:
        """Why `target`, written in the symlink at `path`, leaves the tree; "" when it stays inside."""
        if target.startswith("/"):
            return "an absolute target, outside the repository"
        resolved = path.split("/")[:-1]
        pending = deque(target.split("/"))
        through: list[str] = []
        while pending:
            part = pending.popleft()
            if part in ("", "."):
                continue
            if part == "..":
                if not resolved:
                    return "it leaves the repository" + _via(through)
                resolved.pop()
                continue
            if part.lower() == ".git":
                return "it points into .git" + _via(through)
            resolved.append(part)
            inner = self._link_target("/".join(resolved))
            if inner is None:
                continue
            through.append(f"{'/'.join(resolved)} -> {_printable(inner)}")
            if len(through) > _MAX_LINK_HOPS:
                return "too many levels of symbolic links (a loop)"
            if inner.startswith("/"):
                return "it leads to an absolute target, outside the repository" + _via(through)
            resolved.pop()
            pending.extendleft(reversed(inner.split("/")))
        return ""

    def _link_target(self, path: str) -> str | None:
        """Where the symlink at `path` points; None when `path` is not a symlink in the tree."""
        if path not in self._links:
            self._links[path] = None
            out = self._run("--literal-pathspecs", "ls-tree", "--full-tree", "-z", self._sha, "--", path)
            meta, _tab, name = out.split("\0", 1)[0].partition("\t")
            if name == path and meta.startswith(f"{SYMLINK_MODE} blob "):
                blob = meta.split(" ")[2]
                self._links[path] = os.fsdecode(_read_blobs(self._run, [blob], keep=[blob])[1][blob])
        return self._links[path]


def _via(through: list[str]) -> str:
    return f" (through {', '.join(through)})" if through else ""


def _printable(text: str) -> str:
    return text if text.isprintable() else repr(text)


# --------------------------------------------------------------------------------------------------
# The gate


def scope_violations(paths: list[str], rules: TaskTypeRules) -> list[str]:
    """Why each path is out of bounds for the task type; empty when all are in scope."""
    problems: list[str] = []
    for path in paths:
        if ".git" in (part.lower() for part in path.split("/")):
            problems.append(f"{path}: inside a .git directory")
        elif denied := [glob for glob in rules.denied if matches(path, [glob])]:
            problems.append(f"{path}: denied by `{denied[0]}`")
        elif not matches(path, rules.allowed):
            problems.append(f"{path}: not in the allowed paths {rules.allowed}")
    return problems


def scope_gate(ctx: GateContext) -> GateResult:
    """Paths within the task type's rules, existing tests intact, symlinks inside the tree, binary files small;
    protected paths or a big diff need approval."""
    try:
        return _scope(ctx)
    except Exception as exc:
        # An unchecked change is not a passing one: any failure to measure the change fails the gate, and
        # what it touches is unknown, so it may touch the always-protected paths.
        return GateResult(
            gate="scope",
            passed=False,
            summary=f"scope check failed: {type(exc).__name__}",
            feedback=_bounded(f"The scope of the change could not be measured: {exc}"),
            touches_always_protected=True,
        )


def _scope(ctx: GateContext) -> GateResult:
    rules = ctx.policy.rules_for(ctx.task_type)
    touched = touched_paths(ctx.repo_path, ctx.base_sha, ctx.sha)
    always_protected = any(is_always_protected(item.path) for item in touched)
    out_of_scope = scope_violations([item.path for item in touched], rules)
    changes = [(item.path, item.status) for item in touched]
    weakened = [] if rules.allow_test_edits else weakened_in_change(ctx.repo_path, ctx.base_sha, ctx.sha, changes)
    links = escaping_links(ctx.repo_path, ctx.sha, touched)
    cap = ctx.policy.limits.max_binary_bytes
    oversized = [
        f"{item.path}: a binary file of {_bytes(item.binary_bytes)}, over the limit of {_bytes(cap)}"
        for item in touched
        if item.binary_bytes > cap
    ]
    added = sum(item.added for item in touched)
    removed = sum(item.removed for item in touched)
    binary_bytes = sum(item.binary_bytes for item in touched)
    binary_lines = sum(-(-item.binary_bytes // BINARY_BYTES_PER_LINE) for item in touched)
    stat = f"{len(touched)} file(s), +{added}/-{removed} lines" + (
        f", {_bytes(binary_bytes)} of binary" if binary_bytes else ""
    )

    sections = [f"task type: {ctx.task_type}\n{stat}", "\n".join(_listing(item) for item in touched)]
    failures = [
        (out_of_scope, f"{len(out_of_scope)} path(s) outside the scope of a {ctx.task_type} task",
         f"Paths a `{ctx.task_type}` task may not touch (revert these changes):"),
        (weakened, f"{len(weakened)} existing test(s) weakened",
         f"A `{ctx.task_type}` task may not delete, skip or weaken existing tests; restore them and fix the code "
         "instead (new tests are welcome):"),
        (links, f"{len(links)} symlink(s) leaving the repository",
         "Symlinks must stay inside the repository (relative, not through `..` past the root or into `.git`); "
         "remove these links or point them at files in the tree:"),
        (oversized, f"{len(oversized)} binary file(s) over {_bytes(cap)}",
         "Binary files this large may not be added; remove them (generate them at build time, or keep them "
         "outside the repository):"),
    ]  # fmt: skip
    for items, title, _ask in failures:
        if items:
            sections.append(f"{title}:\n" + "\n".join(items))
    details = ctx.blobs.put_text("\n\n".join(sections) + "\n")

    if any(items for items, _title, _ask in failures):
        return GateResult(
            gate="scope",
            passed=False,
            summary="; ".join(title for items, title, _ask in failures if items),
            feedback=_bounded("\n\n".join(f"{ask}\n{_listed(items)}" for items, _title, ask in failures if items)),
            details_ref=details,
            touches_always_protected=always_protected,
        )

    reasons: list[str] = []
    protected = [item.path for item in touched if ctx.policy.is_protected(item.path)]
    if protected:
        shown = ", ".join(protected[:5]) + (f" and {len(protected) - 5} more" if len(protected) > 5 else "")
        reasons.append(f"touches protected path(s): {shown}")
    limit = ctx.policy.limits.max_diff_lines
    if added + removed + binary_lines > limit:
        of_binary = f" ({binary_lines} of them for {_bytes(binary_bytes)} of binary)" if binary_lines else ""
        reasons.append(f"{added + removed + binary_lines} changed lines{of_binary} exceed the limit of {limit}")
    return GateResult(
        gate="scope",
        passed=True,
        summary=f"{stat}, within scope" + ("; needs approval" if reasons else ""),
        details_ref=details,
        needs_approval="; ".join(reasons),
        touches_always_protected=always_protected,
    )


def _listing(item: Touched) -> str:
    counts = f"+{item.added} -{item.removed}"
    if item.binary:
        counts = f"bin {item.size}B" if item.mode else "bin"
    link = f" -> {_printable(item.link_target)}" if item.link_target is not None else ""
    return f"{item.status} {counts}\t{item.path}{link}"


def _bytes(count: int) -> str:
    """`2,097,152 bytes (2.0 MiB)`: exact, and readable."""
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if count >= size:
            return f"{count:,} bytes ({count / size:.1f} {unit})"
    return f"{count:,} bytes"


def _listed(items: list[str]) -> str:
    lines = [f"- {item}" for item in items[:MAX_LISTED]]
    if len(items) > MAX_LISTED:
        lines.append(f"- ... and {len(items) - MAX_LISTED} more")
    return "\n".join(lines)


def _bounded(text: str, limit: int = FEEDBACK_LIMIT) -> str:
    return text if len(text) <= limit else text[: limit - 40] + "\n[... feedback truncated ...]"
