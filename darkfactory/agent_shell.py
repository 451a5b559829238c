"""The agent's shell: one fresh `bash -c` per call, in the workspace, inside the sandbox.

A full shell is safe because the sandbox is the boundary (no network, no credentials, the tree writable and
its `.git` read-only, caps on time, output, processes and memory, every process killed at the end); an
allowlist in front of it bought no safety and cost every agent turns (mini-swe-agent reaches its SWE-bench
results with nothing but this). Nothing outside the sandbox interprets the command: it is handed to bash as
one argv element.

What the shell writes is checked after each call against what the task may touch: a change to a protected
or out-of-scope path is undone at once and reported as a tool error, as the editor refuses it up front.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from darkfactory import sandbox
from darkfactory.agent_files import ToolError, ToolExecution
from darkfactory.workspace import GitRun

COMMAND_OUTPUT_CHARS = 10_000
"""Command output shown to the model, head and tail kept."""
MAX_COMMAND_CHARS = 100_000
AGENT_LIMITS = sandbox.ResourceLimits(memory_bytes=4 << 30, processes=256)

COMMAND_ENV: Mapping[str, str] = {
    "GIT_PAGER": "cat",
    "PAGER": "cat",
    "GIT_CONFIG_NOSYSTEM": "1",
    "NO_COLOR": "1",
    "TERM": "dumb",
}
"""Variables for the agent's commands: no pagers waiting on a terminal, no colour codes in the transcript."""

SHELL_TOOL: dict[str, Any] = {
    "name": "bash",
    "description": (
        "Run a bash command in the repository root, inside a sandbox: no network, no credentials, `.git` "
        "read-only, a time limit and an output limit (about "
        f"{COMMAND_OUTPUT_CHARS} characters, head and tail kept). Pipes, `&&`, `;`, redirection, globs and "
        "subshells all work. What persists between calls: the files you write in the repository. What does "
        "not: each call is a fresh `bash -c` started in the repository root, so the working directory "
        "(`cd`), shell variables, functions, aliases and background processes are gone afterwards (every "
        "process a command starts is killed when it ends), and /tmp is emptied. The project's own Python "
        "environment is first on PATH (`python`, `python -m pytest`). Writes to files the task may not "
        "touch (CI configuration, the factory policy, paths outside the task's scope) are undone and "
        "reported as an error. The result starts with the exit code. Prefer the text editor tool to view "
        "and edit files."
    ),
    "input_schema": {
        "type": "object",
        "properties": {
            "command": {
                "type": "string",
                "description": "The bash command, e.g. `python -m pytest -q tests/test_x.py 2>&1 | tail -20`.",
            },
            "timeout_s": {
                "type": "number",
                "description": "Optional time limit in seconds (capped by the factory's own limit).",
            },
        },
        "required": ["command"],
        "additionalProperties": False,
    },
}


class Shell:
    """Runs the shell tool's commands for one workspace."""

    def __init__(
        self,
        root: str,
        *,
        path_prefix: Sequence[Path],
        readonly_paths: Sequence[Path],
        timeout_s: float,
        on_tick: Callable[[], None] | None,
        write_refusal: Callable[[str], str | None] | None,
    ) -> None:
        self._root = root
        self._path_prefix = tuple(path_prefix)
        self._readonly = tuple(readonly_paths)
        self._timeout_s = timeout_s
        self._on_tick = on_tick
        self._write_refusal = write_refusal

    def run(self, args: Mapping[str, Any]) -> ToolExecution:
        command = args.get("command")
        if not isinstance(command, str) or not command.strip():
            raise ToolError("`command` is required: a bash command, e.g. `python -m pytest -q`", "bash: no command")
        shown = " ".join(command.split())
        shown = shown if len(shown) <= 80 else shown[:77] + "..."
        if "\x00" in command:
            raise ToolError("the command contains a NUL byte; send plain text", f"bash `{shown}`: NUL in command")
        if len(command) > MAX_COMMAND_CHARS:
            raise ToolError(
                f"the command is {len(command)} characters long (limit {MAX_COMMAND_CHARS}); write long content "
                "with the text editor tool",
                f"bash `{shown}`: command too long",
            )
        timeout_s = self._timeout(args.get("timeout_s"), shown)
        result = sandbox.run_command(
            ["bash", "-c", command],
            cwd=Path(self._root),
            timeout_s=timeout_s,
            env=COMMAND_ENV,
            path_prefix=self._path_prefix,
            readonly_paths=self._readonly,
            on_tick=self._on_tick,
            limits=AGENT_LIMITS,
        )
        undone = self._undo_refused_changes()
        header = f"exit code: {result.returncode}"
        outcome = f"rc {result.returncode}"
        if result.timed_out:
            header += f" (timed out after {timeout_s:g} s; the command and everything it started were killed)"
            outcome = f"timed out after {timeout_s:g}s"
        elif result.limit:
            header += f" (stopped by the sandbox's {result.limit.replace('_', ' ')})"
            outcome += f" ({result.limit})"
        notes = "".join(f"\n({note})" for note in result.notes if not note.startswith("no cgroup"))
        body = sandbox.truncate_middle(result.output, COMMAND_OUTPUT_CHARS)
        content = f"{header}{notes}\n{body}"
        if undone:
            listed = "\n".join(f"- {line}" for line in undone[:20])
            content = (
                "refused: the command changed files this task may not touch; those changes were undone:\n"
                f"{listed}\n\n{content}"
            )
            outcome += f", {len(undone)} refused change(s) undone"
        return ToolExecution(
            content=content,
            is_error=bool(undone) or not result.ok,
            summary=f"bash `{shown}` -> {outcome} in {result.duration_s:.1f}s",
            wrote=True,
        )

    def _timeout(self, requested: object, shown: str) -> float:
        if requested is None:
            return self._timeout_s
        if isinstance(requested, bool) or not isinstance(requested, int | float) or requested <= 0:
            raise ToolError(
                f"`timeout_s` must be a positive number of seconds, got {requested!r}", f"bash `{shown}`: bad timeout_s"
            )
        return min(float(requested), self._timeout_s)

    def _undo_refused_changes(self) -> list[str]:
        """Put back every changed path the task may not touch; return what was undone and why."""
        if self._write_refusal is None:
            return []
        git = GitRun(Path(self._root))
        status, out, _ = git.status("status", "--porcelain=v1", "-z", "--untracked-files=all", "--no-renames")
        if status != 0:
            return []
        undone: list[str] = []
        for entry in out.split("\0"):
            if len(entry) < 4:
                continue
            path = entry[3:]
            reason = self._write_refusal(path)
            if reason is None:
                continue
            if git.ok("cat-file", "-e", f"HEAD:{path}"):
                git("checkout", "HEAD", "--", f":(literal){path}")
            else:
                _remove(os.path.join(self._root, path))
            undone.append(reason)
        return undone


def _remove(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        else:
            os.unlink(path)
