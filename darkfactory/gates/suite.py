"""Running the repository's test command: is it pytest, the opaque-command run, and reading pytest's console.

Shared by the base measurement and the tests gate.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from darkfactory.gates.common import MAX_ITEMS, budget, tail
from darkfactory.gates.context import GateContext
from darkfactory.gates.junit import source_roots
from darkfactory.sandbox import CommandResult, run_command

MAX_RECHECK = 200
"""Failing tests re-run (for flakiness) or looked up on the base; beyond this every failure counts."""


def is_pytest(command: Sequence[str]) -> bool:
    return any("pytest" in part for part in command[:3])


def run_tests(ctx: GateContext, tree: Path | None = None) -> CommandResult:
    """The test command as given, in `tree` (the worktree by default): for a command other than pytest,
    its exit code is all there is to judge."""
    tree = tree or ctx.worktree
    return run_command(
        list(ctx.test_command),
        cwd=tree,
        env={"PYTHONPATH": ":".join(source_roots(tree)), "VIRTUAL_ENV": str(ctx.env.root)},
        path_prefix=[ctx.env.bin_dir],
        readonly_paths=ctx.env.readonly_paths,
        timeout_s=budget(ctx),
        on_tick=ctx.on_tick,
    )


_TALLY = re.compile(r"^=*\s*((?:\d+ \w+(?:, )?)+)\s+in [\d.]+s", re.MULTILINE)


def pytest_tally(output: str) -> str:
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
        return tail(output, 40)
    return "\n\n".join(parts)


def _is_failure_line(line: str) -> bool:
    stripped = line.strip()
    return bool(
        stripped.startswith(("E ", ">", "assert "))
        or re.match(r"^[\w./-]+\.py:\d+: ", stripped)
        or stripped.startswith(("Error", "Exception"))
    )
