"""Claude's trained text editor (`text_editor_20250728`: view, create, str_replace, insert) over one workspace.

Besides confinement (`agent_files.py`), the editor refuses what the task may not touch before anything is
written: protected paths (CI configuration, the factory's policy) and paths outside the task type's allowed
globs, unless the policy lets that type propose them (the change then waits for a person, as the scope gate
decides again on the commit), and content holding a credential-shaped string. A refusal is a tool error the
model reads, so an attack on CI fails at once instead of becoming a person's approval request.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from darkfactory.agent_files import Target, ToolError, ToolExecution, WorkspaceFiles

TEXT_EDITOR_TOOL: dict[str, Any] = {"type": "text_editor_20250728", "name": "str_replace_based_edit_tool"}
"""Claude's trained text editor (schema built into the model). `max_characters` is optional and only hints
the view limit; the limit is enforced here by `max_view_chars`."""

EDITOR_COMMANDS = ("view", "create", "str_replace", "insert")
SNIPPET_LINES = 4
"""Context lines shown around an edit, as in the reference implementation."""
MAX_LISTING_ENTRIES = 1_000

WriteRefusal = Callable[[str], "str | None"]
"""Why a repo-relative path may not be written by this task, or None (see `Policy.write_refusal`)."""
SecretFinder = Callable[[str], "list[str]"]
"""The kinds of credential-shaped strings in a text (empty: none)."""


class Editor:
    """Executes the editor tool's commands against one workspace."""

    def __init__(
        self,
        files: WorkspaceFiles,
        *,
        max_view_chars: int,
        write_refusal: WriteRefusal | None = None,
        find_secrets: SecretFinder | None = None,
    ) -> None:
        self._files = files
        self._max_view_chars = max_view_chars
        self._write_refusal = write_refusal
        self._find_secrets = find_secrets

    def _check_write(self, target: Target, text: object, op: str) -> None:
        """Refuse a write the task may not make, before touching the file."""
        if self._write_refusal is not None:
            reason = self._write_refusal(target.rel)
            if reason is not None:
                raise ToolError(
                    f'refused: {reason}. Nothing was written to "{target.rel}"; change only files your task '
                    "may touch (if the task truly needs this file, say so in your final answer)",
                    f"{op} {target.rel}: refused (not allowed for this task)",
                )
        if self._find_secrets is not None and isinstance(text, str):
            kinds = self._find_secrets(text)
            if kinds:
                raise ToolError(
                    f'refused: the text for "{target.rel}" holds a credential-shaped string ({", ".join(kinds)}). '
                    "Never write credentials into the repository: read them from the environment at run time, "
                    "and use an obvious placeholder such as <API_KEY> in examples and tests",
                    f"{op} {target.rel}: refused (credential-shaped content)",
                )

    def edit(self, args: Mapping[str, Any]) -> ToolExecution:
        command = args.get("command")
        if command not in EDITOR_COMMANDS:
            raise ToolError(
                f"unsupported editor command {command!r}; use one of: {', '.join(EDITOR_COMMANDS)}",
                f"editor: bad command {str(command)[:40]}",
            )
        raw = args.get("path")
        if command == "view":
            return self._view(raw, args.get("view_range"))
        if command == "create":
            return self._create(raw, args.get("file_text"))
        if command == "str_replace":
            return self._str_replace(raw, args.get("old_str"), args.get("new_str", ""))
        return self._insert(raw, args.get("insert_line"), args.get("insert_text", args.get("new_str")))

    def _view(self, raw: object, view_range: object) -> ToolExecution:
        target = self._files.resolve(raw, "view")
        if self._files.is_dir(target):
            if view_range is not None:
                raise ToolError(
                    f'"{target.rel}" is a directory; `view_range` only applies to files',
                    f"view {target.rel}: view_range on a directory",
                )
            listing = self._listing(target)
            return self._viewed(
                f"Here are the files and directories up to 2 levels deep in {target.rel}, "
                f"excluding hidden items:\n{listing}",
                f"view {target.rel}/",
            )
        text = self._files.read_text(target, "view")
        lines = _split_lines(text)
        first, last = 1, len(lines)
        if view_range is not None:
            first, last = self._check_range(target, view_range, len(lines))
        numbered = _number(lines[first - 1 : last], first)
        where = target.rel if view_range is None else f"{target.rel} (lines {first}-{last})"
        return self._viewed(f"Here's the result of running `cat -n` on {where}:\n{numbered}", f"view {where}")

    def _viewed(self, content: str, summary: str) -> ToolExecution:
        if len(content) > self._max_view_chars:
            content = (
                content[: self._max_view_chars]
                + f"\n<response clipped: {len(content) - self._max_view_chars} more characters not shown; "
                "view a smaller `view_range`, or search with the bash tool (`grep -n`)>"
            )
        return ToolExecution(content=content, is_error=False, summary=summary, wrote=False)

    def _check_range(self, target: Target, view_range: object, n_lines: int) -> tuple[int, int]:
        if (
            not isinstance(view_range, list)
            or len(view_range) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in view_range)
        ):
            raise ToolError(
                f"invalid `view_range` {view_range!r}: give two line numbers [start, end], end -1 for the end",
                f"view {target.rel}: bad view_range",
            )
        first, last = view_range
        if n_lines == 0:
            raise ToolError(f'"{target.rel}" is empty', f"view {target.rel}: empty file")
        if not 1 <= first <= n_lines:
            raise ToolError(
                f"invalid `view_range` {view_range}: start {first} must be between 1 and {n_lines}, "
                f'the number of lines in "{target.rel}"',
                f"view {target.rel}: view_range out of range",
            )
        if last == -1 or last > n_lines:
            # Past the end is harmless: show to the end rather than spend a turn on an error.
            last = n_lines
        if last < first:
            raise ToolError(
                f"invalid `view_range` {view_range}: end {last} is before start {first}; use -1 for the end",
                f"view {target.rel}: view_range reversed",
            )
        return first, last

    def _listing(self, target: Target) -> str:
        entries: list[str] = []
        base = os.path.join(self._files.root, *target.parts)

        def walk(directory: str, rel: str, depth: int) -> None:
            try:
                with os.scandir(directory) as it:
                    children = sorted(it, key=lambda e: e.name)
            except OSError:
                return
            for entry in children:
                if entry.name.startswith("."):
                    continue  # hidden files and .git, as the reference tool does
                path = f"{rel}/{entry.name}" if rel else entry.name
                is_dir = entry.is_dir(follow_symlinks=False)
                entries.append(path + ("/" if is_dir else ""))
                if is_dir and depth < 2:
                    walk(entry.path, path, depth + 1)

        walk(base, "" if target.rel == "." else target.rel, 1)
        if not entries:
            return "(empty directory)"
        shown = entries[:MAX_LISTING_ENTRIES]
        more = len(entries) - len(shown)
        return "\n".join(shown) + (f"\n... and {more} more entries" if more else "")

    def _create(self, raw: object, file_text: object) -> ToolExecution:
        target = self._files.resolve(raw, "create")
        if not isinstance(file_text, str):
            raise ToolError(
                f'`file_text` is required for create (the full content of "{target.rel}")',
                f"create {target.rel}: no file_text",
            )
        self._check_write(target, file_text, "create")
        existed = self._files.write_text(target, file_text, "create")
        n = len(_split_lines(file_text))
        verb = "overwritten" if existed else "created"
        return ToolExecution(
            content=f"File {verb} successfully at: {target.rel} ({_lines_word(n)})",
            is_error=False,
            summary=f"{'overwrite' if existed else 'create'} {target.rel} ({_lines_word(n)})",
            wrote=True,
        )

    def _str_replace(self, raw: object, old_str: object, new_str: object) -> ToolExecution:
        target = self._files.resolve(raw, "str_replace")
        if not isinstance(old_str, str) or not old_str:
            raise ToolError(
                "`old_str` is required for str_replace: the exact text to replace, copied from the file",
                f"str_replace {target.rel}: no old_str",
            )
        if new_str is None:
            new_str = ""
        if not isinstance(new_str, str):
            raise ToolError("`new_str` must be a string", f"str_replace {target.rel}: bad new_str")
        self._check_write(target, new_str, "str_replace")
        text = self._files.read_text(target, "str_replace")
        starts = _occurrences(text, old_str)
        if not starts:
            hint = ""
            if _looks_line_numbered(old_str):
                hint = " It looks like `old_str` includes line numbers from `view`; leave them out."
            elif old_str.strip() and old_str.strip() in text:
                hint = " The text exists with different surrounding whitespace; copy it exactly."
            raise ToolError(
                f'No replacement was performed: `old_str` did not appear verbatim in "{target.rel}". '
                f"View the file and copy the exact text, including whitespace and indentation.{hint}",
                f"str_replace {target.rel}: old_str not found",
            )
        if len(starts) > 1:
            lines = ", ".join(str(text.count("\n", 0, s) + 1) for s in starts[:20])
            raise ToolError(
                f"No replacement was performed: `old_str` occurs {len(starts)} times in "
                f'"{target.rel}" (starting at lines {lines}). Include more surrounding lines to make it unique.',
                f"str_replace {target.rel}: old_str found {len(starts)} times",
            )
        start = starts[0]
        new_text = text[:start] + new_str + text[start + len(old_str) :]
        self._files.write_text(target, new_text, "str_replace")
        first_line = text.count("\n", 0, start)  # 0-based line of the edit
        snippet = _snippet(new_text, first_line, first_line + new_str.count("\n"))
        removed, added = len(_split_lines(old_str)), len(_split_lines(new_str))
        return ToolExecution(
            content=(
                f"The file {target.rel} has been edited. Here's the result of running `cat -n` on a snippet "
                f"of {target.rel}:\n{snippet}\nReview the changes and make sure they are as expected. "
                "Edit the file again if necessary."
            ),
            is_error=False,
            summary=f"str_replace {target.rel} at line {first_line + 1} (-{removed} +{added} lines)",
            wrote=True,
        )

    def _insert(self, raw: object, insert_line: object, insert_text: object) -> ToolExecution:
        target = self._files.resolve(raw, "insert")
        if not isinstance(insert_text, str):
            raise ToolError(
                "`insert_text` is required for insert: the lines to add", f"insert {target.rel}: no insert_text"
            )
        if not isinstance(insert_line, int) or isinstance(insert_line, bool):
            raise ToolError(
                "`insert_line` is required for insert: the line number to insert after (0 for the top)",
                f"insert {target.rel}: no insert_line",
            )
        self._check_write(target, insert_text, "insert")
        text = self._files.read_text(target, "insert")
        lines = _split_lines(text)
        if not 0 <= insert_line <= len(lines):
            raise ToolError(
                f'invalid `insert_line` {insert_line}: "{target.rel}" has {len(lines)} lines; use a number '
                f"from 0 (insert at the top) to {len(lines)} (append at the end)",
                f"insert {target.rel}: insert_line out of range",
            )
        new_lines = _split_lines(insert_text) or [""]
        result = lines[:insert_line] + new_lines + lines[insert_line:]
        ends_with_newline = text.endswith("\n") or text == ""
        new_text = "\n".join(result) + ("\n" if ends_with_newline else "")
        self._files.write_text(target, new_text, "insert")
        snippet = _snippet(new_text, insert_line, insert_line + len(new_lines) - 1)
        return ToolExecution(
            content=(
                f"The file {target.rel} has been edited. Here's the result of running `cat -n` on a snippet "
                f"of the edited file:\n{snippet}\nReview the changes and make sure they are as expected "
                "(correct indentation, no duplicate lines, etc). Edit the file again if necessary."
            ),
            is_error=False,
            summary=f"insert {target.rel} after line {insert_line} ({_lines_word(len(new_lines))})",
            wrote=True,
        )


# --------------------------------------------------------------------------------------------------
# Text helpers


def _split_lines(text: str) -> list[str]:
    """Lines without terminators; a final newline does not start another line ("" has none)."""
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    return lines


def _lines_word(n: int) -> str:
    return "1 line" if n == 1 else f"{n} lines"


def _number(lines: Sequence[str], first: int) -> str:
    return "\n".join(f"{n:6}\t{line}" for n, line in enumerate(lines, start=first))


def _snippet(text: str, first_line: int, last_line: int) -> str:
    """Numbered lines around the 0-based range [first_line, last_line], SNIPPET_LINES either side."""
    lines = _split_lines(text)
    start = max(0, first_line - SNIPPET_LINES)
    end = min(len(lines), last_line + SNIPPET_LINES + 1)
    return _number(lines[start:end], start + 1)


def _occurrences(text: str, needle: str) -> list[int]:
    found: list[int] = []
    at = text.find(needle)
    while at != -1:
        found.append(at)
        at = text.find(needle, at + len(needle))
    return found


def _looks_line_numbered(text: str) -> bool:
    first = text.lstrip("\n").split("\n", 1)[0]
    head, sep, _ = first.partition("\t")
    return bool(sep) and head.strip().isdigit()
