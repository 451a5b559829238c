"""The types gate: mypy on the changed files when the target configures mypy; only new errors fail.

The target's own mypy when its environment has one, else a copy of ours beside the target environments.
"""

from __future__ import annotations

import dataclasses
import re
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from pydantic import TypeAdapter

from darkfactory.contracts import GateResult
from darkfactory.contracts.gates import TYPES_NOT_CONFIGURED
from darkfactory.gates.base_findings import BaseSide, base_side
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
    scratch_dir,
    tail,
    transcript,
    tree_text,
)
from darkfactory.gates.context import GateContext
from darkfactory.sandbox import CommandResult, run_command
from darkfactory.target_env import site_packages
from darkfactory.toolbox import tool_dir

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


_ERRORS = TypeAdapter(list[MypyError])
"""How the base's errors are kept in the cache (see base_findings)."""
_PROBE = """import mypy
try:
    from mypy.version import __version__
except Exception:
    __version__ = "unknown"
print(__version__)
"""
"""Whether the target's python has a mypy (and which: part of the base errors' cache key)."""


@dataclass(frozen=True)
class MypyLaunch:
    """How the target's python runs mypy: extra environment and read-only paths, and which mypy that is."""

    env: dict[str, str]
    readonly_paths: list[Path]
    identity: list[str]
    """Everything besides the tree and the files that decides mypy's output: its version, the interpreter and
    environment it runs in (whose packages it reads), the arguments."""


def mypy_configured(tree: Path) -> bool:
    """The target configures mypy at its root: `mypy.ini`, `.mypy.ini`, `[tool.mypy]` or setup.cfg's `[mypy]`."""
    if is_regular(tree, "mypy.ini") or is_regular(tree, ".mypy.ini"):
        return True
    pyproject = tree_text(tree, "pyproject.toml")
    if pyproject is not None:
        try:
            tool = tomllib.loads(pyproject).get("tool", {})
        except tomllib.TOMLDecodeError:
            tool = {}
        if isinstance(tool, dict) and "mypy" in tool:
            return True
    setup_cfg = tree_text(tree, "setup.cfg")
    return setup_cfg is not None and re.search(r"^\s*\[mypy\]", setup_cfg, re.MULTILINE) is not None


def mypy_tools(cache_root: Path) -> Path:
    """mypy and its requirements, copied from this installation once per cache root (offline, like pytest).

    Beside the target environments, not inside them: mypy's requirements (typing_extensions among them)
    must not change the environment the target's own tests run in.
    """
    return tool_dir(cache_root, "mypy", ["mypy"])


def _mypy_launch(ctx: GateContext) -> MypyLaunch:
    """How the target's python can run mypy.

    The target's own mypy when it has one (its pinned version is the one its code is written for); ours
    otherwise. `-P` keeps a `mypy.py` or `mypy/` in the worktree from standing in for the real one.
    """
    probe = run_command(
        ["python", "-P", "-c", _PROBE],
        cwd=ctx.worktree,
        env={"VIRTUAL_ENV": str(ctx.env.root)},
        path_prefix=[ctx.env.bin_dir],
        readonly_paths=ctx.env.readonly_paths,
        timeout_s=budget(ctx, 60.0),
    )
    environment = [ctx.env.fingerprint, str(ctx.env.root), *MYPY_ARGV]
    if probe.ok:
        return MypyLaunch({}, [], ["target", probe.output.strip(), *environment])
    tools = mypy_tools(ctx.env.root.parent)
    pythonpath = str(site_packages(tools))
    identity = ["darkfactory", metadata.version("mypy"), pythonpath, *environment]
    return MypyLaunch({"PYTHONPATH": pythonpath}, [tools], identity)


def run_mypy(
    ctx: GateContext, tree: Path, files: Sequence[str], scratch: Path, launch: MypyLaunch
) -> tuple[CommandResult, list[MypyError] | None]:
    """mypy on `files` in `tree` with that tree's configuration; errors None when mypy did not work."""
    cache = scratch / f"mypy-cache-{'head' if tree == ctx.worktree else 'base'}"
    result = run_command(
        [*MYPY_ARGV, f"--cache-dir={cache}", "--", *files],
        cwd=tree,
        env={"VIRTUAL_ENV": str(ctx.env.root), **launch.env},
        path_prefix=[ctx.env.bin_dir],
        readonly_paths=[*ctx.env.readonly_paths, *launch.readonly_paths],
        writable_paths=[scratch],
        timeout_s=budget(ctx, TOOL_TIMEOUT_S),
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


def _base_errors(
    ctx: GateContext, base: Path, files: Sequence[str], scratch: Path, launch: MypyLaunch
) -> BaseSide[MypyError]:
    """mypy's errors on the base for `files`, reused from the cache when this base tree was checked already."""
    return base_side(
        ctx, "mypy", lambda: launch.identity, files, _ERRORS, lambda: run_mypy(ctx, base, files, scratch, launch)
    )


def types_gate(ctx: GateContext) -> GateResult:
    """mypy on the changed files when the target configures mypy; only new errors fail."""
    configured = mypy_configured(ctx.worktree) or (ctx.base_worktree is not None and mypy_configured(ctx.base_worktree))
    if not configured:
        return GateResult(gate="types", passed=True, summary=TYPES_NOT_CONFIGURED)
    files = python_files(ctx, (".py", ".pyi"))
    if not files:
        return GateResult(gate="types", passed=True, summary="no changed Python files")
    try:
        launch = _mypy_launch(ctx)
    except (metadata.PackageNotFoundError, OSError) as exc:
        return GateResult(gate="types", passed=False, summary=f"mypy is not available: {type(exc).__name__}")
    with scratch_dir(ctx) as scratch:
        result, errors = run_mypy(ctx, ctx.worktree, files, scratch, launch)
        outputs = [transcript(result)]
        base = ctx.base_worktree
        base_result: CommandResult | None = None
        base_errors: list[MypyError] | None = []  # nothing of the change exists on the base: nothing to match
        if base is not None and (errors or errors is None) and not result.timed_out:
            # Files outside the change that mypy followed and reported on are checked on the base too.
            reported = [error.path for error in errors or []]
            base_files = [path for path in dict.fromkeys([*files, *reported]) if is_regular(base, path)]
            if base_files:
                side = _base_errors(ctx, base, base_files, scratch, launch)
                base_result, base_errors = side.result, side.findings
                outputs.append(side.transcript)
    details = details_blob(ctx, outputs)
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
                notes=[f"mypy exits {result.returncode} on the base commit too: {tail(result.output, 3)}"],
            )
        return GateResult(
            gate="types",
            passed=False,
            summary=f"mypy failed to run (exit {result.returncode})",
            feedback=bounded(tail(result.output, 40)),
            details_ref=details,
        )
    new, old = errors, list[MypyError]()
    notes: list[str] = []
    if errors and base is not None:
        if base_errors is None:
            notes.append("mypy did not run on the base commit: every error counts as new")
        else:
            new, old = new_only(errors, base_errors, lambda error: error.key)
    notes += listed_notes("already on the base commit", [str(error) for error in old])
    already = f" ({len(old)} already on the base commit)" if old else ""
    if not new:
        summary = f"mypy: {len(files)} file(s) clean" if not old else f"mypy: no new errors{already}"
        return GateResult(gate="types", passed=True, summary=summary, details_ref=details, notes=notes)
    items = []
    for error in new[:MAX_ITEMS]:
        notes_text = "".join(f"\n    note: {note}" for note in error.notes)
        items.append(f"{error}{notes_text}\n{context_lines(ctx.worktree, error.path, error.line)}")
    if len(new) > MAX_ITEMS:
        items.append(f"... and {len(new) - MAX_ITEMS} more error(s)")
    return GateResult(
        gate="types",
        passed=False,
        summary=f"mypy: {len(new)} new error(s){already}",
        feedback=bounded("\n".join(items)),
        details_ref=details,
        notes=notes,
    )
