"""The coding agent's tools, confined to one workspace root: Claude's text editor and a sandboxed shell.

`agent_files.py` is the editor's boundary (it runs in the worker's process), `agent_editor.py` the editor's
commands and refusals, `agent_shell.py` the shell (the sandbox is its boundary). Both refuse what the task
may not touch: the editor before writing, the shell by undoing the change after the command.

`execute` never raises for the model's mistakes: a bad input becomes an `is_error` result telling the model
what to do instead. Failures of the machinery itself (sandbox unavailable in strict mode, disk full)
propagate to the caller.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from darkfactory.agent_editor import TEXT_EDITOR_TOOL, Editor, SecretFinder, WriteRefusal
from darkfactory.agent_files import MODEL_FIXABLE_ERRNOS, ToolError, ToolExecution, WorkspaceFiles
from darkfactory.agent_shell import COMMAND_OUTPUT_CHARS, SHELL_TOOL, Shell
from darkfactory.contracts import ToolCall

__all__ = [
    "COMMAND_OUTPUT_CHARS",
    "SHELL_TOOL",
    "TEXT_EDITOR_TOOL",
    "AgentTools",
    "ToolExecution",
    "tool_definitions",
]


def tool_definitions() -> list[dict[str, Any]]:
    """The tool definitions to send with every agent request (copies: callers may add cache_control)."""
    return [copy.deepcopy(TEXT_EDITOR_TOOL), copy.deepcopy(SHELL_TOOL)]


class AgentTools:
    """Executes the agent's tool calls against one workspace root."""

    def __init__(
        self,
        root: Path,
        *,
        command_path_prefix: Sequence[Path] = (),
        command_readonly_paths: Sequence[Path] = (),
        command_timeout_s: float = 120.0,
        max_view_chars: int = 20_000,
        on_tick: Callable[[], None] | None = None,
        write_refusal: WriteRefusal | None = None,
        find_secrets: SecretFinder | None = None,
    ) -> None:
        real = os.path.realpath(root)
        if not os.path.isdir(real):
            raise ValueError(f"workspace root {str(root)!r} is not a directory")
        self._root = real
        self._editor = Editor(
            WorkspaceFiles(real), max_view_chars=max_view_chars, write_refusal=write_refusal, find_secrets=find_secrets
        )
        self._shell = Shell(
            real,
            path_prefix=command_path_prefix,
            readonly_paths=command_readonly_paths,
            timeout_s=command_timeout_s,
            on_tick=on_tick,
            write_refusal=write_refusal,
        )

    @property
    def root(self) -> Path:
        return Path(self._root)

    def execute(self, call: ToolCall) -> ToolExecution:
        """Run one tool call. Mistakes in the call come back as `is_error=True`; nothing is raised for them."""
        try:
            if call.name == TEXT_EDITOR_TOOL["name"]:
                return self._editor.edit(call.input)
            if call.name == SHELL_TOOL["name"]:
                return self._shell.run(call.input)
            raise ToolError(
                f'unknown tool "{call.name}"; the available tools are '
                f'"{TEXT_EDITOR_TOOL["name"]}" and "{SHELL_TOOL["name"]}"',
                f"unknown tool {call.name[:60]}",
            )
        except ToolError as exc:
            return ToolExecution(content=exc.message, is_error=True, summary=exc.summary[:200], wrote=False)
        except OSError as exc:
            # A path the checks allowed but the filesystem refuses (permissions, a name too long, a race):
            # still the model's to fix. Anything else (disk full, I/O error) is the factory's problem.
            if exc.errno not in MODEL_FIXABLE_ERRNOS:
                raise
            return ToolExecution(
                content=f"{call.name} failed: {exc.strerror}; check the path and try again",
                is_error=True,
                summary=f"{call.name}: {exc.strerror}"[:200],
                wrote=False,
            )
