"""The syntax gate: changed Python files compile."""

from __future__ import annotations

from darkfactory.contracts import GateResult
from darkfactory.gates.common import MAX_ITEMS, bounded, python_files, tree_file
from darkfactory.gates.context import GateContext


def syntax_gate(ctx: GateContext) -> GateResult:
    """Changed Python files compile. compile() parses without executing, so it is safe in-process."""
    problems: list[str] = []
    files = python_files(ctx)
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
        feedback=bounded("\n".join(problems[:MAX_ITEMS])),
        details_ref=details,
    )
