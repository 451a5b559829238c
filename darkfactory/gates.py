"""The deterministic gates: syntax, lint, tests. Cheapest first; the first failure stops the run.

Each gate returns a binary verdict, a one-line summary, compact feedback for the next attempt (the failing
items with a little context, bounded in size — aider's linter does the same) and the full output as a blob.
Nothing here calls a model: code that does not compile never reaches a reviewer.
"""

from __future__ import annotations

import json
import re
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from darkfactory.blobs import BlobStore
from darkfactory.contracts import GateReport, GateResult
from darkfactory.policy import GateName, Policy, TaskType
from darkfactory.sandbox import CommandResult, run_command
from darkfactory.target_env import TargetEnv

FEEDBACK_LIMIT = 4000
"""Characters of feedback per gate: enough for a few failures with context, small enough for history."""
MAX_ITEMS = 8
DEFAULT_TEST_COMMAND = ("python", "-m", "pytest", "-q", "--tb=short", "-p", "no:cacheprovider")
PYTEST_NO_TESTS = 5


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
    """A writable directory outside the worktree (reports the host reads back)."""


def run_gates(ctx: GateContext) -> GateReport:
    """Run the configured gates in order, stopping at the first failure."""
    results: list[GateResult] = []
    for name in ctx.gates:
        started = time.monotonic()
        result = GATES[name](ctx)
        results.append(result.model_copy(update={"duration_s": round(time.monotonic() - started, 3)}))
        if not result.passed:
            break
    return GateReport(sha=ctx.sha, results=results)


def _python_files(ctx: GateContext) -> list[str]:
    return [path for path in ctx.changed if path.endswith(".py") and (ctx.worktree / path).is_file()]


# --------------------------------------------------------------------------------------------------
# syntax


def syntax_gate(ctx: GateContext) -> GateResult:
    """Changed Python files compile. compile() parses without executing, so it is safe in-process."""
    problems: list[str] = []
    files = _python_files(ctx)
    for path in files:
        source = (ctx.worktree / path).read_bytes()
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


def ruff_binary() -> Path:
    """ruff from darkfactory's own environment: a static binary that only reads the target's files."""
    candidate = Path(sys.executable).parent / "ruff"
    return candidate if candidate.exists() else Path("ruff")


def lint_gate(ctx: GateContext) -> GateResult:
    """ruff on the changed files, with the target repository's own configuration."""
    files = _python_files(ctx)
    if not files:
        return GateResult(gate="lint", passed=True, summary="no changed Python files")
    ruff = ruff_binary()
    result = run_command(
        [str(ruff), "check", "--no-cache", "--output-format=json", "--", *files],
        cwd=ctx.worktree,
        readonly_paths=[ruff.parent] if ruff.is_absolute() else [],
        timeout_s=min(ctx.timeout_s, 300.0),
        on_tick=ctx.on_tick,
    )
    details = ctx.blobs.put_text(result.output)
    if result.timed_out:
        return GateResult(gate="lint", passed=False, summary="ruff timed out", details_ref=details)
    try:
        findings = json.loads(_json_part(result.output)) if result.returncode in (0, 1) else None
    except json.JSONDecodeError:
        findings = None
    if findings is None:
        # A linter that crashes fails the gate: an unchecked change is not a passing change.
        return GateResult(
            gate="lint",
            passed=False,
            summary=f"ruff failed to run (exit {result.returncode})",
            feedback=_bounded(result.output),
            details_ref=details,
        )
    if not findings:
        return GateResult(gate="lint", passed=True, summary=f"ruff: {len(files)} file(s) clean", details_ref=details)
    lines = [_format_finding(ctx.worktree, finding) for finding in findings[:MAX_ITEMS]]
    more = len(findings) - len(lines)
    if more > 0:
        lines.append(f"... and {more} more finding(s)")
    return GateResult(
        gate="lint",
        passed=False,
        summary=f"ruff: {len(findings)} finding(s)",
        feedback=_bounded("\n".join(lines)),
        details_ref=details,
    )


def _json_part(output: str) -> str:
    start = output.find("[")
    return output[start:] if start >= 0 else output


def _format_finding(worktree: Path, finding: dict[str, object]) -> str:
    filename = str(finding.get("filename", "?"))
    try:
        relative = str(Path(filename).resolve().relative_to(worktree.resolve()))
    except ValueError:
        relative = filename
    location = finding.get("location")
    row = int(location.get("row", 0)) if isinstance(location, dict) else 0
    col = int(location.get("column", 0)) if isinstance(location, dict) else 0
    head = f"{relative}:{row}:{col}: {finding.get('code')} {finding.get('message')}"
    return head + "\n" + _context(worktree / relative, row)


def _context(path: Path, row: int, radius: int = 1) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    start, end = max(row - 1 - radius, 0), min(row + radius, len(lines))
    return "\n".join(f"  {number + 1:>4} | {lines[number]}" for number in range(start, end))


# --------------------------------------------------------------------------------------------------
# tests


def tests_gate(ctx: GateContext) -> GateResult:
    """The repository's test command, in its own environment, sandboxed."""
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
        return GateResult(
            gate="tests", passed=True, summary=_pytest_tally(result.output) or "tests passed", details_ref=details
        )
    if result.returncode == PYTEST_NO_TESTS and _is_pytest(ctx.test_command):
        return GateResult(gate="tests", passed=True, summary="no tests collected", details_ref=details)
    return GateResult(
        gate="tests",
        passed=False,
        summary=_pytest_tally(result.output) or f"test command exited {result.returncode}",
        feedback=_bounded(pytest_feedback(result.output)),
        details_ref=details,
    )


def run_tests(ctx: GateContext) -> CommandResult:
    python_path = [str(ctx.worktree)]
    if (ctx.worktree / "src").is_dir():
        python_path.insert(0, str(ctx.worktree / "src"))
    return run_command(
        list(ctx.test_command),
        cwd=ctx.worktree,
        env={"PYTHONPATH": ":".join(python_path), "VIRTUAL_ENV": str(ctx.env.root)},
        path_prefix=[ctx.env.bin_dir],
        readonly_paths=ctx.env.readonly_paths,
        timeout_s=ctx.timeout_s,
        on_tick=ctx.on_tick,
    )


def _is_pytest(command: Sequence[str]) -> bool:
    return any("pytest" in part for part in command[:3])


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


def _tail(text: str, lines: int) -> str:
    return "\n".join(text.splitlines()[-lines:])


def _bounded(text: str, limit: int = FEEDBACK_LIMIT) -> str:
    if len(text) <= limit:
        return text
    half = limit // 2
    return f"{text[:half]}\n[... {len(text) - limit} characters omitted ...]\n{text[-half:]}"


GATES: dict[GateName, Callable[[GateContext], GateResult]] = {
    "syntax": syntax_gate,
    "lint": lint_gate,
    "tests": tests_gate,
}
