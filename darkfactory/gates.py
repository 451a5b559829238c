"""The deterministic gates: scope, secrets, syntax, lint, types, tests, acceptance. Cheapest first; the first
failure stops the run.

Each gate returns a binary verdict, a one-line summary, compact feedback for the next attempt (the failing
items with a little context, bounded in size — aider's linter does the same) and the full output as a blob.
Nothing here calls a model: code that does not compile never reaches a reviewer.

A gate judges the change, not the repository. Lint findings and type errors already present on the base
commit, tests that fail there too, and tests that pass on an immediate re-run (flaky) are notes, not
failures: an agent cannot be asked to fix what it did not break.

The code under test writes the worktree and the scratch directory, so the host reads anything there without
following symlinks and only from regular files: a planted link must not pull, say, the worker's ssh key
into feedback that goes to a model.
"""

from __future__ import annotations

import configparser
import contextlib
import dataclasses
import json
import os
import re
import shutil
import stat
import sys
import tempfile
import time
import tomllib
import uuid
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Literal, TypeVar

from darkfactory.blobs import BlobStore
from darkfactory.contracts import BlobRef, GateReport, GateResult
from darkfactory.gates_scope import scope_gate
from darkfactory.gates_secrets import secrets_gate
from darkfactory.policy import GateName, Policy, TaskType
from darkfactory.sandbox import CommandResult, run_command
from darkfactory.target_env import TargetEnv, seed_distributions, site_packages

FEEDBACK_LIMIT = 4000
"""Characters of feedback per gate: enough for a few failures with context, small enough for history."""
MAX_ITEMS = 8
"""Failing items shown with context in feedback; the details blob has them all."""
MAX_NOTES = 12
DEFAULT_TEST_COMMAND = ("python", "-m", "pytest", "-q", "--tb=short", "-p", "no:cacheprovider")
PYTEST_NO_TESTS = 5
TOOL_TIMEOUT_S = 300.0
"""Cap of one ruff or mypy run (the gate run's deadline may be sooner)."""
REPORT_LIMIT = 32 << 20
"""Bytes of a JUnit report the host reads back; a bigger one counts as unreadable."""
SOURCE_LIMIT = 4 << 20
"""Bytes of a worktree file the host reads (source context, configuration, import scans)."""
MAX_RECHECK = 200
"""Failing tests re-run for flakiness and checked on the base; beyond this every failure counts."""
MAX_TEST_FILES = 5000
"""Test files scanned for imports of the changed modules."""

T = TypeVar("T")


@dataclass
class GateContext:
    """Everything the gates need about one commit checked out in a worktree."""

    worktree: Path
    sha: str
    changed: list[str]
    """Paths the change added or modified, relative to the worktree."""
    env: TargetEnv
    blobs: BlobStore
    test_command: Sequence[str] = DEFAULT_TEST_COMMAND
    timeout_s: float = 1200.0
    """Budget of the whole gate run, every command included."""
    on_tick: Callable[[], None] | None = None
    gates: Sequence[GateName] = ("syntax", "lint", "tests")
    repo_path: str = ""
    base_sha: str = ""
    """The commit the change is measured against."""
    policy: Policy = field(default_factory=Policy)
    task_type: TaskType = "feature"
    base_worktree: Path | None = None
    """`base_sha` checked out, for telling new problems from ones already there; None: every problem counts."""
    acceptance_dir: Path | None = None
    """Held-out acceptance tests, outside the worktree (the generator never sees them); None: none."""
    secret_values: Sequence[str] = ()
    """The worker's own credential values: an exact match in the change fails the secrets gate."""
    scratch: Path | None = None
    """A writable directory outside the worktree (reports the host reads back). None: a temporary one."""
    deadline: float | None = None
    """`time.monotonic()` by which every gate must be done; None: `timeout_s` after `run_gates` starts."""


def run_gates(ctx: GateContext) -> GateReport:
    """Run the configured gates in order, stopping at the first failure.

    Names without a gate here are skipped: "review" calls a model, so the workflow runs it after these.
    """
    results: list[GateResult] = []
    with contextlib.ExitStack() as stack:
        if ctx.scratch is None:
            scratch = stack.enter_context(tempfile.TemporaryDirectory(prefix="darkfactory-gates-"))
            ctx = dataclasses.replace(ctx, scratch=Path(scratch))
        if ctx.deadline is None:
            ctx = dataclasses.replace(ctx, deadline=time.monotonic() + ctx.timeout_s)
        for name in ctx.gates:
            gate = GATES.get(name)
            if gate is None:
                continue
            started = time.monotonic()
            result = gate(ctx)
            results.append(result.model_copy(update={"duration_s": round(time.monotonic() - started, 3)}))
            if not result.passed:
                break
    return GateReport(sha=ctx.sha, results=results)


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


def _inside(root: Path, relative: str) -> Path | None:
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
    path = _inside(root, relative)
    return None if path is None else read_regular_file(path, limit)


def _is_regular(root: Path, relative: str) -> bool:
    path = _inside(root, relative)
    if path is None:
        return False
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False


def _tree_text(root: Path, relative: str) -> str | None:
    data = tree_file(root, relative)
    return None if data is None else data.decode("utf-8", errors="replace")


def _python_files(ctx: GateContext, suffixes: tuple[str, ...] = (".py",)) -> list[str]:
    """Changed Python files that are regular files in the worktree (a committed symlink is not source)."""
    return [path for path in ctx.changed if path.endswith(suffixes) and _is_regular(ctx.worktree, path)]


# --------------------------------------------------------------------------------------------------
# Budget and scratch


def _budget(ctx: GateContext, cap: float | None = None) -> float:
    """Seconds the next command may take: what is left of the gate run, at most `cap`."""
    left = ctx.timeout_s if ctx.deadline is None else ctx.deadline - time.monotonic()
    if cap is not None:
        left = min(left, cap)
    return max(left, 1.0)


@contextlib.contextmanager
def _scratch(ctx: GateContext) -> Iterator[Path]:
    """The run's scratch directory, or a temporary one when a gate is called on its own."""
    if ctx.scratch is not None:
        yield ctx.scratch
        return
    with tempfile.TemporaryDirectory(prefix="darkfactory-gates-") as scratch:
        yield Path(scratch)


def _report_path(scratch: Path, label: str) -> Path:
    # A fresh, unguessable name: nothing the code under test planted earlier can sit there.
    return scratch / f"{label}-{uuid.uuid4().hex[:12]}.xml"


# --------------------------------------------------------------------------------------------------
# syntax


def syntax_gate(ctx: GateContext) -> GateResult:
    """Changed Python files compile. compile() parses without executing, so it is safe in-process."""
    problems: list[str] = []
    files = _python_files(ctx)
    for path in files:
        source = tree_file(ctx.worktree, path)
        if source is None:
            continue
        try:
            compile(source, path, "exec", dont_inherit=True)
        except SyntaxError as exc:
            line = (exc.text or "").rstrip("\n")
            pointer = " " * max((exc.offset or 1) - 1, 0) + "^"
            problems.append(f"{path}:{exc.lineno}:{exc.offset}: SyntaxError: {exc.msg}\n    {line}\n    {pointer}")
        except ValueError as exc:  # null bytes
            problems.append(f"{path}: {exc}")
    if not problems:
        return GateResult(gate="syntax", passed=True, summary=f"{len(files)} changed Python file(s) compile")
    details = ctx.blobs.put_text("\n\n".join(problems))
    return GateResult(
        gate="syntax",
        passed=False,
        summary=f"{len(problems)} file(s) do not compile",
        feedback=_bounded("\n".join(problems[:MAX_ITEMS])),
        details_ref=details,
    )


# --------------------------------------------------------------------------------------------------
# lint


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


def ruff_binary() -> Path:
    """ruff from darkfactory's own environment: a static binary that only reads the target's files."""
    candidate = Path(sys.executable).parent / "ruff"
    return candidate if candidate.exists() else Path("ruff")


def run_ruff(ctx: GateContext, tree: Path, files: Sequence[str]) -> tuple[CommandResult, list[Finding] | None]:
    """ruff on `files` in `tree` with that tree's configuration; findings None when ruff did not work."""
    ruff = ruff_binary()
    result = run_command(
        [str(ruff), "check", "--no-cache", "--output-format=json", "--", *files],
        cwd=tree,
        readonly_paths=[ruff.parent] if ruff.is_absolute() else [],
        timeout_s=_budget(ctx, TOOL_TIMEOUT_S),
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


def lint_gate(ctx: GateContext) -> GateResult:
    """ruff on the changed files, with the target repository's own configuration; only new findings fail."""
    files = _python_files(ctx)
    if not files:
        return GateResult(gate="lint", passed=True, summary="no changed Python files")
    result, findings = run_ruff(ctx, ctx.worktree, files)
    outputs = [_transcript(result)]
    if result.timed_out:
        return GateResult(gate="lint", passed=False, summary="ruff timed out", details_ref=_details(ctx, outputs))
    if findings is None:
        # A linter that crashes fails the gate: an unchecked change is not a passing change.
        return GateResult(
            gate="lint",
            passed=False,
            summary=f"ruff failed to run (exit {result.returncode})",
            feedback=_bounded(result.output),
            details_ref=_details(ctx, outputs),
        )
    new, old, notes = findings, list[Finding](), list[str]()
    if findings and ctx.base_worktree is not None:
        base_files = [path for path in files if _is_regular(ctx.base_worktree, path)]
        if base_files:
            base_result, base_findings = run_ruff(ctx, ctx.base_worktree, base_files)
            outputs.append(_transcript(base_result))
            if base_findings is None:
                notes.append("ruff did not run on the base commit: every finding counts as new")
            else:
                new, old = new_only(findings, base_findings, lambda finding: finding.key)
    notes += _listed_notes("already on the base commit", [str(finding) for finding in old])
    details = _details(ctx, outputs)
    already = f" ({len(old)} already on the base commit)" if old else ""
    if not new:
        summary = f"ruff: {len(files)} file(s) clean" if not old else f"ruff: no new findings{already}"
        return GateResult(gate="lint", passed=True, summary=summary, details_ref=details, notes=notes)
    lines = [f"{finding}\n{_context(ctx.worktree, finding.path, finding.row)}" for finding in new[:MAX_ITEMS]]
    if len(new) > MAX_ITEMS:
        lines.append(f"... and {len(new) - MAX_ITEMS} more finding(s)")
    return GateResult(
        gate="lint",
        passed=False,
        summary=f"ruff: {len(new)} new finding(s){already}",
        feedback=_bounded("\n".join(lines)),
        details_ref=details,
        notes=notes,
    )


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


class _Lines:
    """Source lines of a tree's files, read once each, safely."""

    def __init__(self, tree: Path) -> None:
        self._tree = tree
        self._files: dict[str, list[str]] = {}

    def get(self, path: str, row: int) -> str:
        if path not in self._files:
            self._files[path] = (_tree_text(self._tree, path) or "").splitlines()
        lines = self._files[path]
        return lines[row - 1] if 0 < row <= len(lines) else ""


def _relative(tree: Path, filename: str) -> str:
    try:
        return str(Path(filename).resolve().relative_to(tree.resolve()))
    except (ValueError, OSError):
        return filename


def _context(tree: Path, path: str, row: int, radius: int = 1) -> str:
    lines = (_tree_text(tree, path) or "").splitlines()
    start, end = max(row - 1 - radius, 0), min(row + radius, len(lines))
    return "\n".join(f"  {number + 1:>4} | {lines[number]}" for number in range(start, end))


# --------------------------------------------------------------------------------------------------
# types


MYPY_ARGV = ("python", "-P", "-m", "mypy", "--no-error-summary", "--no-pretty", "--no-color-output")
"""`-P`: a `mypy.py` or `mypy/` in the worktree must not stand in for the real one."""
_MYPY_LINE = re.compile(r"^(?P<path>[^:\n]+):(?P<line>\d+):(?:\d+:)* (?P<severity>error|note): (?P<message>.*)$")


@dataclass(frozen=True)
class MypyError:
    """One mypy error with the notes mypy printed under it."""

    path: str
    line: int
    message: str
    notes: tuple[str, ...] = ()

    @property
    def key(self) -> tuple[str, str]:
        # Line numbers move when code is added above, also inside messages ("defined on line 12").
        return (self.path, re.sub(r"\bline \d+\b", "line N", self.message))

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: error: {self.message}"


def mypy_configured(tree: Path) -> bool:
    """The target configures mypy at its root: `mypy.ini`, `.mypy.ini`, `[tool.mypy]` or setup.cfg's `[mypy]`."""
    if _is_regular(tree, "mypy.ini") or _is_regular(tree, ".mypy.ini"):
        return True
    pyproject = _tree_text(tree, "pyproject.toml")
    if pyproject is not None:
        try:
            tool = tomllib.loads(pyproject).get("tool", {})
        except tomllib.TOMLDecodeError:
            tool = {}
        if isinstance(tool, dict) and "mypy" in tool:
            return True
    setup_cfg = _tree_text(tree, "setup.cfg")
    return setup_cfg is not None and re.search(r"^\s*\[mypy\]", setup_cfg, re.MULTILINE) is not None


def mypy_tools(cache_root: Path) -> Path:
    """mypy and its requirements, copied from this installation once per cache root (offline, like pytest).

    Beside the target environments, not inside them: mypy's requirements (typing_extensions among them)
    must not change the environment the target's own tests run in. Built in a staging directory and
    renamed into place, so a concurrent or crashed build never leaves a half-copied mypy in use.
    """
    version = metadata.version("mypy")
    final = cache_root / f"tools-mypy-{version}-py{sys.version_info.major}{sys.version_info.minor}"
    if (final / ".ready").exists():
        return final
    cache_root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".tools-", dir=cache_root))
    try:
        seed_distributions(staging, ["mypy"])
        (staging / ".ready").write_text(version)
        try:
            os.rename(staging, final)
        except OSError:
            if not (final / ".ready").exists():  # a leftover that is not ours to keep
                shutil.rmtree(final, ignore_errors=True)
                os.rename(staging, final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return final


def _mypy_launch(ctx: GateContext) -> tuple[dict[str, str], list[Path]]:
    """(extra environment, extra read-only paths) under which the target's python can run mypy.

    The target's own mypy when it has one (its pinned version is the one its code is written for); ours
    otherwise. `-P` keeps a `mypy.py` or `mypy/` in the worktree from standing in for the real one.
    """
    probe = run_command(
        ["python", "-P", "-c", "import mypy"],
        cwd=ctx.worktree,
        env={"VIRTUAL_ENV": str(ctx.env.root)},
        path_prefix=[ctx.env.bin_dir],
        readonly_paths=ctx.env.readonly_paths,
        timeout_s=_budget(ctx, 60.0),
    )
    if probe.ok:
        return {}, []
    tools = mypy_tools(ctx.env.root.parent)
    return {"PYTHONPATH": str(site_packages(tools))}, [tools]


def run_mypy(
    ctx: GateContext, tree: Path, files: Sequence[str], scratch: Path, launch: tuple[dict[str, str], list[Path]]
) -> tuple[CommandResult, list[MypyError] | None]:
    """mypy on `files` in `tree` with that tree's configuration; errors None when mypy did not work."""
    extra_env, extra_paths = launch
    cache = scratch / f"mypy-cache-{'head' if tree == ctx.worktree else 'base'}"
    result = run_command(
        [*MYPY_ARGV, f"--cache-dir={cache}", "--", *files],
        cwd=tree,
        env={"VIRTUAL_ENV": str(ctx.env.root), **extra_env},
        path_prefix=[ctx.env.bin_dir],
        readonly_paths=[*ctx.env.readonly_paths, *extra_paths],
        writable_paths=[scratch],
        timeout_s=_budget(ctx, TOOL_TIMEOUT_S),
        on_tick=ctx.on_tick,
    )
    if result.timed_out or result.returncode not in (0, 1):
        return result, None
    errors: list[MypyError] = []
    for line in result.output.splitlines():
        match = _MYPY_LINE.match(line)
        if match is None:
            continue
        if match["severity"] == "error":
            errors.append(MypyError(match["path"], int(match["line"]), match["message"].strip()))
        elif errors and len(errors[-1].notes) < 3:
            errors[-1] = dataclasses.replace(errors[-1], notes=(*errors[-1].notes, match["message"].strip()))
    if result.returncode == 1 and not errors:
        return result, None  # exit 1 without a parseable error: something we cannot read
    return result, errors


def types_gate(ctx: GateContext) -> GateResult:
    """mypy on the changed files when the target configures mypy; only new errors fail."""
    configured = mypy_configured(ctx.worktree) or (ctx.base_worktree is not None and mypy_configured(ctx.base_worktree))
    if not configured:
        return GateResult(gate="types", passed=True, summary="mypy not configured")
    files = _python_files(ctx, (".py", ".pyi"))
    if not files:
        return GateResult(gate="types", passed=True, summary="no changed Python files")
    try:
        launch = _mypy_launch(ctx)
    except (metadata.PackageNotFoundError, OSError) as exc:
        return GateResult(gate="types", passed=False, summary=f"mypy is not available: {type(exc).__name__}")
    with _scratch(ctx) as scratch:
        result, errors = run_mypy(ctx, ctx.worktree, files, scratch, launch)
        outputs = [_transcript(result)]
        base = ctx.base_worktree
        base_result: CommandResult | None = None
        base_errors: list[MypyError] | None = []  # nothing of the change exists on the base: nothing to match
        if base is not None and (errors or errors is None) and not result.timed_out:
            # Files outside the change that mypy followed and reported on are checked on the base too.
            reported = [error.path for error in errors or []]
            base_files = [path for path in dict.fromkeys([*files, *reported]) if _is_regular(base, path)]
            if base_files:
                base_result, base_errors = run_mypy(ctx, base, base_files, scratch, launch)
                outputs.append(_transcript(base_result))
    details = _details(ctx, outputs)
    if result.timed_out:
        return GateResult(gate="types", passed=False, summary="mypy timed out", details_ref=details)
    if errors is None:
        if base_result is not None and base_errors is None and base_result.returncode == result.returncode:
            # The configuration cannot run here (a plugin the environment lacks, say) and the change did
            # not cause it: a note for the people running the factory, not a task for the agent.
            return GateResult(
                gate="types",
                passed=True,
                summary=f"mypy could not run, on the base commit either (exit {result.returncode})",
                details_ref=details,
                notes=[f"mypy exits {result.returncode} on the base commit too: {_tail(result.output, 3)}"],
            )
        return GateResult(
            gate="types",
            passed=False,
            summary=f"mypy failed to run (exit {result.returncode})",
            feedback=_bounded(_tail(result.output, 40)),
            details_ref=details,
        )
    new, old = errors, list[MypyError]()
    notes: list[str] = []
    if errors and base is not None:
        if base_errors is None:
            notes.append("mypy did not run on the base commit: every error counts as new")
        else:
            new, old = new_only(errors, base_errors, lambda error: error.key)
    notes += _listed_notes("already on the base commit", [str(error) for error in old])
    already = f" ({len(old)} already on the base commit)" if old else ""
    if not new:
        summary = f"mypy: {len(files)} file(s) clean" if not old else f"mypy: no new errors{already}"
        return GateResult(gate="types", passed=True, summary=summary, details_ref=details, notes=notes)
    items = []
    for error in new[:MAX_ITEMS]:
        notes_text = "".join(f"\n    note: {note}" for note in error.notes)
        items.append(f"{error}{notes_text}\n{_context(ctx.worktree, error.path, error.line)}")
    if len(new) > MAX_ITEMS:
        items.append(f"... and {len(new) - MAX_ITEMS} more error(s)")
    return GateResult(
        gate="types",
        passed=False,
        summary=f"mypy: {len(new)} new error(s){already}",
        feedback=_bounded("\n".join(items)),
        details_ref=details,
        notes=notes,
    )


# --------------------------------------------------------------------------------------------------
# tests


Outcome = Literal["passed", "failed", "error", "skipped"]


@dataclass(frozen=True)
class JUnitCase:
    """One test's result from a JUnit report."""

    nodeid: str
    outcome: Outcome
    message: str = ""
    text: str = ""
    """The failure's traceback in the run's `--tb` style (test source included: never for held-out tests)."""

    @property
    def failed(self) -> bool:
        return self.outcome in ("failed", "error")

    @property
    def file(self) -> str:
        return self.nodeid.split("::", 1)[0]

    @property
    def headline(self) -> str:
        first = next((line for line in self.message.splitlines() if line.strip()), "")
        return f"{self.nodeid} - {first.strip()[:200]}" if first else self.nodeid


def parse_junit(data: bytes, resolve: Callable[[str, str], str]) -> list[JUnitCase] | None:
    """Test cases from a JUnit XML report; None when it is not one. `resolve(classname, name)` gives node ids."""
    if b"<!DOCTYPE" in data or b"<!ENTITY" in data:
        return None  # pytest never writes these; entity tricks are all they could be for
    try:
        root = ET.fromstring(data)
    except ET.ParseError:
        return None
    cases: list[JUnitCase] = []
    for testcase in root.iter("testcase"):
        outcome: Outcome = "passed"
        message = text = ""
        for child in testcase:
            if child.tag in ("failure", "error") and outcome not in ("failed", "error"):
                # A test can fail and then error in teardown: the first problem is the one to show.
                outcome = "failed" if child.tag == "failure" else "error"
                message, text = child.get("message", ""), child.text or ""
            elif child.tag == "skipped" and outcome == "passed":
                outcome = "skipped"
        nodeid = resolve(testcase.get("classname", ""), testcase.get("name", ""))
        cases.append(JUnitCase(nodeid, outcome, message, text))
    return cases


def nodeid_resolver(root: Path, *, drop_prefix: bool = False) -> Callable[[str, str], str]:
    """Turns JUnit (classname, name) back into a pytest node id relative to `root`.

    pytest writes `classname` as the node id's path with `/` as `.` and `.py` dropped, followed by any
    classes; the file is the longest prefix that exists. A collection error has no classname and the
    module's dotted path as its name. `drop_prefix` also tries dropping leading parts (tests outside the
    rootdir get ids relative to some other directory).
    """

    def resolve(classname: str, name: str) -> str:
        parts, tail = (classname.split("."), [name]) if classname else (name.split("."), [])
        for start in range(len(parts) if drop_prefix else 1):
            for end in range(len(parts), start, -1):
                candidate = "/".join(parts[start:end]) + ".py"
                if all(parts[start:end]) and _is_regular(root, candidate):
                    return "::".join([candidate, *parts[end:], *tail])
        return "::".join([classname, name]) if classname else name

    return resolve


@dataclass(frozen=True)
class PytestRun:
    result: CommandResult
    cases: list[JUnitCase] | None
    """None: no readable JUnit report (pytest crashed, or the file was tampered with)."""

    @property
    def failing(self) -> list[JUnitCase]:
        return [case for case in self.cases or [] if case.failed]

    def count(self, outcome: Outcome) -> int:
        return sum(1 for case in self.cases or [] if case.outcome == outcome)


def run_pytest(
    ctx: GateContext,
    tree: Path,
    argv: Sequence[str],
    scratch: Path,
    label: str,
    *,
    resolve: Callable[[str, str], str] | None = None,
    readonly: Sequence[Path] = (),
) -> PytestRun:
    """pytest in `tree`, sandboxed, in the target's environment, with a JUnit report read back safely."""
    report = _report_path(scratch, label)
    python_path = [str(tree)]
    if (tree / "src").is_dir():
        python_path.insert(0, str(tree / "src"))
    result = run_command(
        # The report's contents are ours to choose: captured output would only make it big.
        [*argv, f"--junitxml={report}", "-o", "junit_logging=no", "--continue-on-collection-errors"],
        cwd=tree,
        env={"PYTHONPATH": ":".join(python_path), "VIRTUAL_ENV": str(ctx.env.root)},
        path_prefix=[ctx.env.bin_dir],
        readonly_paths=[*ctx.env.readonly_paths, *readonly],
        writable_paths=[scratch],
        timeout_s=_budget(ctx),
        on_tick=ctx.on_tick,
    )
    data = read_regular_file(report, REPORT_LIMIT)
    cases = None if data is None else parse_junit(data, resolve or nodeid_resolver(tree))
    return PytestRun(result, cases)


_VALUE_OPTIONS = frozenset(
    {"-k", "-m", "-p", "-c", "-o", "--override-ini", "--ignore", "--ignore-glob", "--deselect", "--rootdir",
     "--confcutdir", "--basetemp", "--junitxml", "--junit-xml", "--log-file", "--cov", "--cov-config",
     "--cov-report", "--maxfail", "--tb", "-W", "--durations"}
)  # fmt: skip
"""pytest options whose value is the next argument (which may look like a path)."""


def split_test_command(command: Sequence[str], tree: Path) -> tuple[list[str], list[str]]:
    """(the command without its positional test paths, those paths). Selecting tests means replacing the
    paths: pytest given a directory and a file in it runs the directory's tests once, not the file's."""
    start = next((index + 1 for index, part in enumerate(command[:3]) if "pytest" in part), 0)
    kept, paths = list(command[:start]), list[str]()
    previous = ""
    for part in command[start:]:
        target = part.split("::", 1)[0]
        is_path = (
            bool(target)
            and not part.startswith("-")
            and previous not in _VALUE_OPTIONS
            and os.path.lexists(tree / target)
        )
        (paths if is_path else kept).append(part)
        previous = part
    return kept, paths


def _is_pytest(command: Sequence[str]) -> bool:
    return any("pytest" in part for part in command[:3])


def is_test_file(path: str) -> bool:
    name = os.path.basename(path)
    return name.endswith(".py") and (name.startswith("test_") or name.endswith("_test.py"))


def _test_roots(ctx: GateContext) -> list[str]:
    """Where the suite's tests live: the command's paths, else `testpaths` from the target's configuration."""
    _, paths = split_test_command(ctx.test_command, ctx.worktree)
    if paths:
        return [path.split("::", 1)[0] for path in paths]
    pyproject = _tree_text(ctx.worktree, "pyproject.toml")
    if pyproject is not None:
        try:
            pytest_config = tomllib.loads(pyproject).get("tool", {}).get("pytest", {})
        except (tomllib.TOMLDecodeError, AttributeError):
            pytest_config = {}
        if isinstance(pytest_config, dict):
            options = pytest_config.get("ini_options", pytest_config)
            testpaths = options.get("testpaths") if isinstance(options, dict) else None
            if isinstance(testpaths, str):
                return testpaths.split()
            if isinstance(testpaths, list):
                return [str(path) for path in testpaths]
    for name, section in (("pytest.ini", "pytest"), ("tox.ini", "pytest"), ("setup.cfg", "tool:pytest")):
        text = _tree_text(ctx.worktree, name)
        if text is None:
            continue
        parser = configparser.ConfigParser(interpolation=None)
        with contextlib.suppress(configparser.Error):
            parser.read_string(text)
            if parser.has_option(section, "testpaths"):
                return parser.get(section, "testpaths").split()
    return []


_SKIP_DIRS = frozenset({"__pycache__", "node_modules", "venv", "env", "build", "dist", "site-packages"})


def _test_files(tree: Path, roots: Sequence[str]) -> list[str]:
    """Test files under `roots` (the whole tree when empty), without following symlinks."""
    found: list[str] = []
    for root in roots or ["."]:
        start = _inside(tree, root) if root != "." else tree
        if start is None:
            continue
        if _is_regular(tree, root):
            found.append(os.path.normpath(root))
            continue
        for directory, dirs, names in os.walk(start):
            dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d not in _SKIP_DIRS)
            for name in sorted(names):
                relative = os.path.relpath(os.path.join(directory, name), tree)
                if is_test_file(relative) and _is_regular(tree, relative):
                    found.append(relative)
                if len(found) >= MAX_TEST_FILES:
                    return found
    return list(dict.fromkeys(found))


def _module_patterns(path: str) -> list[re.Pattern[str]]:
    """How a test would import the module at `path`: its dotted name anywhere, its own name in an import."""
    parts = path[: -len(".py")].split("/")
    if parts[0] == "src":
        parts = parts[1:]
    if parts and parts[-1] == "__init__":
        parts = parts[:-1]
    if not parts:
        return []
    dotted = re.escape(".".join(parts))
    return [re.compile(rf"(?<![\w.]){dotted}(?!\w)"), re.compile(rf"\b{re.escape(parts[-1])}\b")]


def affected_tests(ctx: GateContext) -> list[str]:
    """Test files the change touches or that import a module it changed (a cheap grep, not an import graph)."""
    roots = _test_roots(ctx)
    in_suite = set(_test_files(ctx.worktree, roots))
    changed = _python_files(ctx)
    affected = {path for path in changed if path in in_suite}
    patterns = [p for path in changed if not is_test_file(path) for p in _module_patterns(path)]
    if not patterns:
        return sorted(affected)
    for test in sorted(in_suite - affected):
        source = _tree_text(ctx.worktree, test) or ""
        imports = "\n".join(line for line in source.splitlines() if line.lstrip().startswith(("import ", "from ")))
        if any(pattern.search(imports) for pattern in patterns):
            affected.add(test)
    return sorted(affected)


class _PytestGate:
    """The tests gate for pytest: affected tests first, then the whole suite; failures re-run once (flaky)
    and checked on the base commit (known) before they count."""

    def __init__(self, ctx: GateContext, scratch: Path) -> None:
        self.ctx = ctx
        self.scratch = scratch
        self.selection, _ = split_test_command(ctx.test_command, ctx.worktree)
        self.outputs: list[str] = []
        self.known: dict[str, JUnitCase] = {}
        self.flaky: dict[str, JUnitCase] = {}
        self.notes: list[str] = []

    def run(self) -> GateResult:
        affected = affected_tests(self.ctx)
        if affected:
            first = self.pytest(self.ctx.worktree, [*self.selection, *affected], "affected")
            failed = self.judge(first, f"{len(affected)} affected test file(s)")
            if failed is not None:
                return failed
        full = self.pytest(self.ctx.worktree, self.ctx.test_command, "full")
        failed = self.judge(full, "")
        if failed is not None:
            return failed
        if full.result.returncode == PYTEST_NO_TESTS:
            return self.result(True, "no tests collected")
        summary = self.tally(full) if full.cases is not None else _pytest_tally(full.result.output)
        return self.result(True, summary or "tests passed")

    def pytest(self, tree: Path, argv: Sequence[str], label: str) -> PytestRun:
        run = run_pytest(self.ctx, tree, argv, self.scratch, label)
        where = "base" if tree != self.ctx.worktree else "change"
        self.outputs.append(f"## {label} ({where})\n{_transcript(run.result)}")
        return run

    def judge(self, run: PytestRun, scope: str) -> GateResult | None:
        """The failing result for this run, or None when nothing in it counts."""
        result = run.result
        suffix = f" ({scope}; the full suite was not run)" if scope else ""
        if result.timed_out:
            return self.result(
                False, f"tests timed out after {result.duration_s:.0f}s{suffix}", _tail(result.output, 40)
            )
        if result.returncode == PYTEST_NO_TESTS or (result.returncode == 0 and not run.failing):
            return None
        if not run.failing:
            # A non-zero exit with no failing test in the report: a crash, a usage error, no readable report.
            summary = _pytest_tally(result.output) or f"test command exited {result.returncode}"
            return self.result(False, summary + suffix, pytest_feedback(result.output))
        real = self.recheck(run.failing)
        if not real:
            return None
        return self.result(False, self.tally(run, len(real)) + suffix, _failures_feedback(real))

    def recheck(self, failing: list[JUnitCase]) -> list[JUnitCase]:
        """The failures that count: not flaky (they fail again when re-run alone) and not known (they do not
        fail on the base commit too)."""
        pending = [case for case in failing if case.nodeid not in self.known]
        if len(pending) > MAX_RECHECK:
            self.notes.append(f"{len(pending)} failures: too many to re-run or check on the base commit")
            return pending
        # Flaky first, in the same worktree: a test that fails only on its first run there is flaky, and
        # checking the base first would call it known.
        rerunnable = [case for case in pending if "::" in case.nodeid and _is_regular(self.ctx.worktree, case.file)]
        flaky: set[str] = set()
        if rerunnable:
            rerun = self.pytest(self.ctx.worktree, [*self.selection, *(c.nodeid for c in rerunnable)], "rerun")
            passed = {case.nodeid for case in rerun.cases or [] if case.outcome == "passed"}
            flaky = {case.nodeid for case in rerunnable if case.nodeid in passed}
            self.flaky.update({case.nodeid: case for case in rerunnable if case.nodeid in flaky})
        still = [case for case in pending if case.nodeid not in flaky]
        base = self.ctx.base_worktree
        if still and base is not None:
            # Whole files on the base: a test the change added would make a node id selection a usage error.
            files = sorted({case.file for case in still if _is_regular(base, case.file)})
            if files:
                base_run = self.pytest(base, [*self.selection, *files], "base")
                if base_run.cases is None:
                    self.notes.append("the base commit's tests did not run: no failure could be called known")
                broken = {case.nodeid for case in base_run.failing}
                for case in still:
                    if case.nodeid in broken or case.file in broken:  # a test, or its whole file, fails there
                        self.known[case.nodeid] = case
        return [case for case in still if case.nodeid not in self.known]

    def tally(self, run: PytestRun, failed: int = 0) -> str:
        # Known and flaky over the whole gate: a flaky test seen among the affected tests stays worth a mention.
        known = len(self.known)
        flaky = len(self.flaky.keys() - self.known.keys())
        parts = [f"{failed} failed"] if failed else []
        parts.append(f"{run.count('passed')} passed")
        if known:
            parts.append(f"{known} known failure{'s' if known > 1 else ''}")
        if flaky:
            parts.append(f"{flaky} flaky")
        if run.count("skipped"):
            parts.append(f"{run.count('skipped')} skipped")
        return ", ".join(parts)

    def result(self, passed: bool, summary: str, feedback: str = "") -> GateResult:
        notes = [
            *_listed_notes("known failure (fails on the base commit too)", [c.headline for c in self.known.values()]),
            *_listed_notes(
                "flaky (passed when re-run)", [c.headline for c in self.flaky.values() if c.nodeid not in self.known]
            ),
            *self.notes,
        ]
        return GateResult(
            gate="tests",
            passed=passed,
            summary=summary,
            feedback=_bounded(feedback) if not passed else "",
            details_ref=_details(self.ctx, self.outputs),
            notes=notes,
        )


def _failures_feedback(cases: Sequence[JUnitCase]) -> str:
    """Each failing test's id with the end of its short traceback, then a one-line-per-test summary."""
    parts: list[str] = []
    for case in cases[:MAX_ITEMS]:
        body = (case.text or case.message).strip()
        lines = [line[:300] for line in body.splitlines()[-15:]]
        parts.append(f"### {case.nodeid}\n" + "\n".join(lines))
    if len(cases) > MAX_ITEMS:
        parts.append(f"... and {len(cases) - MAX_ITEMS} more failing test(s)")
    parts.append("### summary\n" + "\n".join(f"FAILED {case.headline}" for case in cases[:20]))
    return "\n\n".join(parts)


def tests_gate(ctx: GateContext) -> GateResult:
    """The repository's test command, in its own environment, sandboxed."""
    if _is_pytest(ctx.test_command):
        with _scratch(ctx) as scratch:
            return _PytestGate(ctx, scratch).run()
    result = run_tests(ctx)
    details = ctx.blobs.put_text(result.output)
    if result.timed_out:
        return GateResult(
            gate="tests",
            passed=False,
            summary=f"tests timed out after {result.duration_s:.0f}s",
            feedback=_bounded(_tail(result.output, 40)),
            details_ref=details,
        )
    if result.returncode == 0:
        return GateResult(gate="tests", passed=True, summary="tests passed", details_ref=details)
    return GateResult(
        gate="tests",
        passed=False,
        summary=f"test command exited {result.returncode}",
        feedback=_bounded(_tail(result.output, 40)),
        details_ref=details,
    )


def run_tests(ctx: GateContext) -> CommandResult:
    """The test command as given, in the worktree (a non-pytest command: its exit code is the verdict)."""
    python_path = [str(ctx.worktree)]
    if (ctx.worktree / "src").is_dir():
        python_path.insert(0, str(ctx.worktree / "src"))
    return run_command(
        list(ctx.test_command),
        cwd=ctx.worktree,
        env={"PYTHONPATH": ":".join(python_path), "VIRTUAL_ENV": str(ctx.env.root)},
        path_prefix=[ctx.env.bin_dir],
        readonly_paths=ctx.env.readonly_paths,
        timeout_s=_budget(ctx),
        on_tick=ctx.on_tick,
    )


_TALLY = re.compile(r"^=*\s*((?:\d+ \w+(?:, )?)+)\s+in [\d.]+s", re.MULTILINE)


def _pytest_tally(output: str) -> str:
    found = _TALLY.findall(output)
    return found[-1].strip() if found else ""


def pytest_feedback(output: str) -> str:
    """Failing test ids with their assertion messages and a few lines of context, from `--tb=short` output."""
    sections = re.split(r"^_{3,} (.+?) _{3,}$", output, flags=re.MULTILINE)
    parts: list[str] = []
    # re.split with one group yields [preamble, title1, body1, title2, body2, ...]
    for title, body in zip(sections[1::2], sections[2::2], strict=False):
        keep = [line for line in body.splitlines() if _is_failure_line(line)]
        parts.append(f"### {title.strip()}\n" + "\n".join(keep[-12:]))
        if len(parts) >= MAX_ITEMS:
            break
    summary = re.search(r"^=+ short test summary info =+$(.*?)(?=^=+|\Z)", output, re.MULTILINE | re.DOTALL)
    if summary:
        parts.append("### summary\n" + summary.group(1).strip())
    if not parts:
        return _tail(output, 40)
    return "\n\n".join(parts)


def _is_failure_line(line: str) -> bool:
    stripped = line.strip()
    return bool(
        stripped.startswith(("E ", ">", "assert "))
        or re.match(r"^[\w./-]+\.py:\d+: ", stripped)
        or stripped.startswith(("Error", "Exception"))
    )


# --------------------------------------------------------------------------------------------------
# acceptance


ACCEPTANCE_LABEL = "acceptance"
"""How held-out tests are named in feedback, instead of the directory they live in."""


def _has_test_files(directory: Path) -> bool:
    return directory.is_dir() and any(is_test_file(path.name) for path in directory.rglob("*.py"))


def acceptance_gate(ctx: GateContext) -> GateResult:
    """The held-out acceptance tests against the change. Feedback names each failing test and its failure
    message, never the tests' source: the generator must meet the criteria, not copy the tests."""
    directory = ctx.acceptance_dir
    if directory is None or not _has_test_files(directory):
        return GateResult(gate="acceptance", passed=True, summary="no held-out acceptance tests")
    with _scratch(ctx) as scratch:
        # Our own empty configuration: the worktree's (which the generator writes) must not be able to
        # deselect, skip or reconfigure the held-out tests.
        config = scratch / f"acceptance-{uuid.uuid4().hex[:12]}.ini"
        config.write_text("[pytest]\n")
        argv = ["python", "-m", "pytest", "-q", "--tb=no", "-p", "no:cacheprovider", "-c", str(config),
                "--rootdir", str(ctx.worktree), str(directory)]  # fmt: skip
        run = run_pytest(
            ctx,
            ctx.worktree,
            argv,
            scratch,
            "acceptance",
            resolve=_acceptance_resolver(directory),
            readonly=[directory],
        )
    hide = _hider(directory)
    details = ctx.blobs.put_text(hide(_transcript(run.result)))
    result = run.result
    if result.timed_out:
        return GateResult(
            gate="acceptance",
            passed=False,
            summary=f"acceptance tests timed out after {result.duration_s:.0f}s",
            details_ref=details,
        )
    if result.returncode == PYTEST_NO_TESTS or run.cases == []:
        return GateResult(
            gate="acceptance", passed=False, summary="no acceptance test was collected", details_ref=details
        )
    if run.cases is None or (result.returncode != 0 and not run.failing):
        # Only pytest's own status lines: anything more could quote the tests.
        status = [hide(line) for line in result.output.splitlines() if line.startswith(("ERROR", "FAILED"))]
        return GateResult(
            gate="acceptance",
            passed=False,
            summary=f"acceptance tests did not run (exit {result.returncode})",
            feedback=_bounded("\n".join(status[:20])),
            details_ref=details,
        )
    failing = run.failing
    if not failing:
        return GateResult(
            gate="acceptance", passed=True, summary=f"acceptance: {len(run.cases)} passed", details_ref=details
        )
    items = [f"- {case.nodeid}: {hide(_acceptance_message(case))}" for case in failing[:20]]
    if len(failing) > 20:
        items.append(f"- ... and {len(failing) - 20} more")
    return GateResult(
        gate="acceptance",
        passed=False,
        summary=f"acceptance: {len(failing)} of {len(run.cases)} held-out test(s) failed",
        feedback=_bounded(
            "Held-out acceptance tests failed (their code is not shown; meet the task's acceptance criteria):\n"
            + "\n".join(items)
        ),
        details_ref=details,
    )


def _acceptance_resolver(directory: Path) -> Callable[[str, str], str]:
    resolve = nodeid_resolver(directory, drop_prefix=True)

    def shown(classname: str, name: str) -> str:
        nodeid = resolve(classname, name)
        if _is_regular(directory, nodeid.split("::", 1)[0]):
            return f"{ACCEPTANCE_LABEL}/{nodeid}"
        return f"{ACCEPTANCE_LABEL}::{name.rsplit('.', 1)[-1]}"

    return shown


def _acceptance_message(case: JUnitCase) -> str:
    """The failure message; for a collection error (whose message is only "collection failure") the
    exception line, never the traceback's source lines."""
    message = case.message.strip()
    if case.outcome == "error" or not message:
        raised = [line[1:].strip() for line in case.text.splitlines() if line.startswith("E ")]
        if raised:
            message = f"{message}: {raised[-1]}" if message else raised[-1]
    lines = message.splitlines()
    shown = "\n  ".join(line[:300] for line in lines[:10])
    return shown + ("\n  ..." if len(lines) > 10 else "")


def _hider(directory: Path) -> Callable[[str], str]:
    paths = sorted({str(directory), os.path.realpath(directory)}, key=len, reverse=True)

    def hide(text: str) -> str:
        for path in paths:
            text = text.replace(path, ACCEPTANCE_LABEL)
        return text

    return hide


# --------------------------------------------------------------------------------------------------
# Shared


def _transcript(result: CommandResult) -> str:
    return f"$ {' '.join(result.argv)}\n(exit {result.returncode}, {result.duration_s:.1f}s)\n{result.output}"


def _details(ctx: GateContext, outputs: Sequence[str]) -> BlobRef:
    return ctx.blobs.put_text("\n\n".join(outputs))


def _listed_notes(label: str, items: Sequence[str]) -> list[str]:
    notes = [f"{label}: {item}"[:300] for item in items[:MAX_NOTES]]
    if len(items) > MAX_NOTES:
        notes.append(f"{label}: ... and {len(items) - MAX_NOTES} more")
    return notes


def _tail(text: str, lines: int) -> str:
    return "\n".join(text.splitlines()[-lines:])


def _bounded(text: str, limit: int = FEEDBACK_LIMIT) -> str:
    if len(text) <= limit:
        return text
    half = limit // 2
    return f"{text[:half]}\n[... {len(text) - limit} characters omitted ...]\n{text[-half:]}"


GATES: dict[GateName, Callable[[GateContext], GateResult]] = {
    "scope": scope_gate,
    "secrets": secrets_gate,
    "syntax": syntax_gate,
    "lint": lint_gate,
    "types": types_gate,
    "tests": tests_gate,
    "acceptance": acceptance_gate,
}
"""The deterministic gates by name. "review" is not here: it calls a model, so the workflow runs it."""
