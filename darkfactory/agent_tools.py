"""The coding agent's tools, confined to one workspace root: Claude's text editor and a sandboxed command.

The editor runs in the worker's own process, outside any sandbox, so the path checks here are the boundary
for it: a path must resolve (symlinks included) inside the root and outside `.git`, the file must be a
regular, singly-linked, small text file, and every component is opened with O_NOFOLLOW from a directory fd
so a symlink swapped in after the check is refused rather than followed (sandbox facts §1.3 item 3).

Commands go through `sandbox.run_command`; the allowlist in front of it is for the model's benefit (clear
errors, no shell features it would expect to work), the sandbox is the boundary (facts §1.3 item 5).

`execute` never raises for the model's mistakes: a bad input becomes an `is_error` result telling the model
what to do instead. Failures of the machinery itself (sandbox unavailable in strict mode, disk full)
propagate to the caller.
"""

from __future__ import annotations

import contextlib
import copy
import errno
import os
import secrets
import shlex
import stat
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from darkfactory import sandbox
from darkfactory.contracts import ToolCall

DEFAULT_ALLOWED_COMMANDS: tuple[str, ...] = (
    "python",
    "python3",
    "pytest",
    "ruff",
    "ls",
    "cat",
    "head",
    "tail",
    "grep",
    "find",
    "wc",
    "diff",
    "git",
)

GIT_READONLY_SUBCOMMANDS: tuple[str, ...] = ("status", "diff", "log", "show", "ls-files")

_GIT_FORBIDDEN_PREFIXES = (
    "--ext-diff",  # runs an external diff program from config
    "--textconv",  # runs textconv filters from config
    "--upload-pack",
    "--exec",
    "--output",  # writes a file
    "--config",
    "--open-files-in-pager",
)
_GIT_FORBIDDEN_EXACT = frozenset({"-c", "-o", "-O"})

_FIND_FORBIDDEN = frozenset(
    {"-exec", "-execdir", "-ok", "-okdir", "-delete", "-fprint", "-fprint0", "-fprintf", "-fls"}
)

_SHELL_OPERATOR_CHARS = frozenset(";&|<>")

_MODEL_FIXABLE_ERRNOS = frozenset(
    {errno.EACCES, errno.EPERM, errno.ENOENT, errno.ENOTDIR, errno.EISDIR, errno.ELOOP, errno.ENAMETOOLONG, errno.EROFS}
)

COMMAND_ENV: Mapping[str, str] = {
    "GIT_PAGER": "cat",
    "PAGER": "cat",
    "GIT_CONFIG_NOSYSTEM": "1",
    "NO_COLOR": "1",
    "TERM": "dumb",
}
"""Variables for the agent's commands: no pagers waiting on a terminal, no colour codes in the transcript."""

MAX_FILE_BYTES = 1 << 20
"""Larger files are refused by the editor: the model should grep/head them instead."""
BINARY_SNIFF_BYTES = 8192
COMMAND_OUTPUT_CHARS = 10_000
"""Command output shown to the model, head and tail kept."""
SNIPPET_LINES = 4
"""Context lines shown around an edit, as in the reference implementation."""
MAX_LISTING_ENTRIES = 1_000
MAX_PATH_CHARS = 4_096

TEXT_EDITOR_TOOL: dict[str, Any] = {"type": "text_editor_20250728", "name": "str_replace_based_edit_tool"}
"""Claude's trained text editor (schema built into the model). `max_characters` is optional and only hints
the view limit; the limit is enforced here by `max_view_chars`."""

RUN_COMMAND_TOOL: dict[str, Any] = {
    "name": "run_command",
    "description": (
        "Run one program in the repository root, inside a sandbox with no network access. The command "
        "line is split into words like a POSIX shell would (quotes work), but there is NO shell: no pipes, "
        "redirection, `;`, `&&`, `||`, backticks, `$(...)`, globbing or variable expansion. Run one command "
        "at a time. Allowed programs (by default): "
        + ", ".join(DEFAULT_ALLOWED_COMMANDS)
        + "; git only with the read-only subcommands "
        + ", ".join(GIT_READONLY_SUBCOMMANDS)
        + ". Use the text editor tool to create and edit files. The result starts with the exit code; "
        f"long output is cut to about {COMMAND_OUTPUT_CHARS} characters keeping its head and tail."
    ),
    "input_schema": {
        "type": "object",
        "properties": {
            "command": {
                "type": "string",
                "description": "The command line, e.g. `pytest -q tests/test_x.py` or `git diff`.",
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

_EDITOR_COMMANDS = ("view", "create", "str_replace", "insert")


def tool_definitions() -> list[dict[str, Any]]:
    """The tool definitions to send with every agent request (copies: callers may add cache_control)."""
    return [copy.deepcopy(TEXT_EDITOR_TOOL), copy.deepcopy(RUN_COMMAND_TOOL)]


@dataclass(frozen=True)
class ToolExecution:
    """What one tool call produced: the tool_result content for the model and a line for the audit trail."""

    content: str
    is_error: bool
    summary: str
    """One short line, e.g. `create src/x.py (12 lines)`."""
    wrote: bool
    """True when the workspace may have changed (the caller snapshots it)."""


class _ToolError(Exception):
    """A mistake of the model's, reported back to it as an is_error tool result."""

    def __init__(self, message: str, summary: str) -> None:
        super().__init__(message)
        self.message = message
        self.summary = summary


@dataclass(frozen=True)
class _Target:
    """A path the model named, checked: `rel` is relative to the root with every symlink resolved."""

    raw: str
    rel: str
    parts: tuple[str, ...]


class AgentTools:
    """Executes the agent's tool calls against one workspace root."""

    def __init__(
        self,
        root: Path,
        *,
        allowed_commands: Sequence[str] = DEFAULT_ALLOWED_COMMANDS,
        command_path_prefix: Sequence[Path] = (),
        command_readonly_paths: Sequence[Path] = (),
        command_timeout_s: float = 120.0,
        max_view_chars: int = 20_000,
        on_tick: Callable[[], None] | None = None,
    ) -> None:
        real = os.path.realpath(root)
        if not os.path.isdir(real):
            raise ValueError(f"workspace root {str(root)!r} is not a directory")
        self._root = real
        self._allowed = tuple(allowed_commands)
        self._path_prefix = tuple(command_path_prefix)
        self._readonly = tuple(command_readonly_paths)
        self._timeout_s = command_timeout_s
        self._max_view_chars = max_view_chars
        self._on_tick = on_tick

    @property
    def root(self) -> Path:
        return Path(self._root)

    def execute(self, call: ToolCall) -> ToolExecution:
        """Run one tool call. Mistakes in the call come back as `is_error=True`; nothing is raised for them."""
        try:
            if call.name == TEXT_EDITOR_TOOL["name"]:
                return self._edit(call.input)
            if call.name == RUN_COMMAND_TOOL["name"]:
                return self._command(call.input)
            raise _ToolError(
                f'unknown tool "{call.name}"; the available tools are '
                f'"{TEXT_EDITOR_TOOL["name"]}" and "{RUN_COMMAND_TOOL["name"]}"',
                f"unknown tool {call.name[:60]}",
            )
        except _ToolError as exc:
            return ToolExecution(content=exc.message, is_error=True, summary=exc.summary[:200], wrote=False)
        except OSError as exc:
            # A path the checks allowed but the filesystem refuses (permissions, a name too long, a race):
            # still the model's to fix. Anything else (disk full, I/O error) is the factory's problem.
            if exc.errno not in _MODEL_FIXABLE_ERRNOS:
                raise
            return ToolExecution(
                content=f"{call.name} failed: {exc.strerror}; check the path and try again",
                is_error=True,
                summary=f"{call.name}: {exc.strerror}"[:200],
                wrote=False,
            )

    # ----------------------------------------------------------------------------------------------
    # Text editor

    def _edit(self, args: Mapping[str, Any]) -> ToolExecution:
        command = args.get("command")
        if command not in _EDITOR_COMMANDS:
            raise _ToolError(
                f"unsupported editor command {command!r}; use one of: {', '.join(_EDITOR_COMMANDS)}",
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
        target = self._resolve(raw, "view")
        if self._is_dir(target):
            if view_range is not None:
                raise _ToolError(
                    f'"{target.rel}" is a directory; `view_range` only applies to files',
                    f"view {target.rel}: view_range on a directory",
                )
            listing = self._listing(target)
            return self._viewed(
                f"Here are the files and directories up to 2 levels deep in {target.rel}, "
                f"excluding hidden items:\n{listing}",
                f"view {target.rel}/",
            )
        text = self._read_text(target, "view")
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
                "view a smaller `view_range`, or search with run_command `grep -n`>"
            )
        return ToolExecution(content=content, is_error=False, summary=summary, wrote=False)

    def _check_range(self, target: _Target, view_range: object, n_lines: int) -> tuple[int, int]:
        if (
            not isinstance(view_range, list)
            or len(view_range) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in view_range)
        ):
            raise _ToolError(
                f"invalid `view_range` {view_range!r}: give two line numbers [start, end], end -1 for the end",
                f"view {target.rel}: bad view_range",
            )
        first, last = view_range
        if n_lines == 0:
            raise _ToolError(f'"{target.rel}" is empty', f"view {target.rel}: empty file")
        if not 1 <= first <= n_lines:
            raise _ToolError(
                f"invalid `view_range` {view_range}: start {first} must be between 1 and {n_lines}, "
                f'the number of lines in "{target.rel}"',
                f"view {target.rel}: view_range out of range",
            )
        if last == -1 or last > n_lines:
            # Past the end is harmless: show to the end rather than spend a turn on an error.
            last = n_lines
        if last < first:
            raise _ToolError(
                f"invalid `view_range` {view_range}: end {last} is before start {first}; use -1 for the end",
                f"view {target.rel}: view_range reversed",
            )
        return first, last

    def _listing(self, target: _Target) -> str:
        entries: list[str] = []
        base = os.path.join(self._root, *target.parts)

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
        target = self._resolve(raw, "create")
        if not isinstance(file_text, str):
            raise _ToolError(
                f'`file_text` is required for create (the full content of "{target.rel}")',
                f"create {target.rel}: no file_text",
            )
        existed = self._write_text(target, file_text, "create")
        n = len(_split_lines(file_text))
        verb = "overwritten" if existed else "created"
        return ToolExecution(
            content=f"File {verb} successfully at: {target.rel} ({_lines_word(n)})",
            is_error=False,
            summary=f"{'overwrite' if existed else 'create'} {target.rel} ({_lines_word(n)})",
            wrote=True,
        )

    def _str_replace(self, raw: object, old_str: object, new_str: object) -> ToolExecution:
        target = self._resolve(raw, "str_replace")
        if not isinstance(old_str, str) or not old_str:
            raise _ToolError(
                "`old_str` is required for str_replace: the exact text to replace, copied from the file",
                f"str_replace {target.rel}: no old_str",
            )
        if new_str is None:
            new_str = ""
        if not isinstance(new_str, str):
            raise _ToolError("`new_str` must be a string", f"str_replace {target.rel}: bad new_str")
        text = self._read_text(target, "str_replace")
        starts = _occurrences(text, old_str)
        if not starts:
            hint = ""
            if _looks_line_numbered(old_str):
                hint = " It looks like `old_str` includes line numbers from `view`; leave them out."
            elif old_str.strip() and old_str.strip() in text:
                hint = " The text exists with different surrounding whitespace; copy it exactly."
            raise _ToolError(
                f'No replacement was performed: `old_str` did not appear verbatim in "{target.rel}". '
                f"View the file and copy the exact text, including whitespace and indentation.{hint}",
                f"str_replace {target.rel}: old_str not found",
            )
        if len(starts) > 1:
            lines = ", ".join(str(text.count("\n", 0, s) + 1) for s in starts[:20])
            raise _ToolError(
                f"No replacement was performed: `old_str` occurs {len(starts)} times in "
                f'"{target.rel}" (starting at lines {lines}). Include more surrounding lines to make it unique.',
                f"str_replace {target.rel}: old_str found {len(starts)} times",
            )
        start = starts[0]
        new_text = text[:start] + new_str + text[start + len(old_str) :]
        self._write_text(target, new_text, "str_replace")
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
        target = self._resolve(raw, "insert")
        if not isinstance(insert_text, str):
            raise _ToolError(
                "`insert_text` is required for insert: the lines to add", f"insert {target.rel}: no insert_text"
            )
        if not isinstance(insert_line, int) or isinstance(insert_line, bool):
            raise _ToolError(
                "`insert_line` is required for insert: the line number to insert after (0 for the top)",
                f"insert {target.rel}: no insert_line",
            )
        text = self._read_text(target, "insert")
        lines = _split_lines(text)
        if not 0 <= insert_line <= len(lines):
            raise _ToolError(
                f'invalid `insert_line` {insert_line}: "{target.rel}" has {len(lines)} lines; use a number '
                f"from 0 (insert at the top) to {len(lines)} (append at the end)",
                f"insert {target.rel}: insert_line out of range",
            )
        new_lines = _split_lines(insert_text) or [""]
        result = lines[:insert_line] + new_lines + lines[insert_line:]
        ends_with_newline = text.endswith("\n") or text == ""
        new_text = "\n".join(result) + ("\n" if ends_with_newline else "")
        self._write_text(target, new_text, "insert")
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

    # ----------------------------------------------------------------------------------------------
    # Confinement

    def _resolve(self, raw: object, op: str) -> _Target:
        """Check a model-supplied path; the result names a location inside the root, outside `.git`."""
        if not isinstance(raw, str) or not raw.strip():
            raise _ToolError(
                f"`path` is required for {op}: a path relative to the repository root, e.g. src/app.py",
                f"{op}: no path",
            )
        shown = raw if len(raw) <= 200 else raw[:200] + "..."
        if "\x00" in raw:
            raise _ToolError(f"path {shown!r} contains a NUL byte; send a plain path", f"{op}: NUL in path")
        if len(raw) > MAX_PATH_CHARS:
            raise _ToolError(f"path is {len(raw)} characters long; send a shorter path", f"{op}: path too long")
        lexical = os.path.normpath(raw if os.path.isabs(raw) else os.path.join(self._root, raw))
        real = os.path.realpath(lexical)
        if not _within(real, self._root):
            if _within(lexical, self._root):
                reason = f'path "{shown}" resolves through a symlink to outside the workspace'
            else:
                reason = f'path "{shown}" is outside the workspace'
            raise _ToolError(
                f"{reason}; use a path relative to the repository root ({self._root})",
                f"{op} {shown[:80]}: outside workspace",
            )
        rel = os.path.relpath(real, self._root)
        parts = () if rel == "." else tuple(rel.split(os.sep))
        lexical_parts = os.path.relpath(lexical, self._root).split(os.sep) if _within(lexical, self._root) else []
        if ".git" in parts or ".git" in lexical_parts:
            raise _ToolError(
                f'path "{shown}" is inside .git, which the agent may not read or change; '
                "use run_command with `git status`, `git diff` or `git log` instead",
                f"{op} {shown[:80]}: .git is off limits",
            )
        if not parts and op != "view":
            raise _ToolError(
                f'path "{shown}" is the repository root directory; {op} needs a file path',
                f"{op} {shown[:80]}: root is a directory",
            )
        return _Target(raw=raw, rel=rel, parts=parts)

    def _is_dir(self, target: _Target) -> bool:
        if not target.parts:
            return True
        with self._parent_fd(target, create=False, op="view") as parent:
            try:
                st = os.stat(target.parts[-1], dir_fd=parent, follow_symlinks=False)
            except FileNotFoundError:
                raise _ToolError(
                    f'"{target.rel}" does not exist; view "." to list the repository, or use create to make it',
                    f"view {target.rel}: not found",
                ) from None
        return stat.S_ISDIR(st.st_mode)

    @contextlib.contextmanager
    def _parent_fd(self, target: _Target, *, create: bool, op: str) -> Iterator[int]:
        """A directory fd for the target's parent, reached one component at a time without following
        symlinks: the realpath check could be raced, this walk cannot be redirected."""
        fd = os.open(self._root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            for i, part in enumerate(target.parts[:-1]):
                try:
                    nxt = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
                except FileNotFoundError:
                    if not create:
                        raise _ToolError(
                            f'"{target.rel}" does not exist (no directory "{"/".join(target.parts[: i + 1])}")',
                            f"{op} {target.rel}: not found",
                        ) from None
                    os.mkdir(part, 0o755, dir_fd=fd)
                    nxt = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
                except OSError as exc:
                    if exc.errno in (errno.ENOTDIR, errno.ELOOP):
                        raise _ToolError(
                            f'"{"/".join(target.parts[: i + 1])}" is not a directory (or changed while being '
                            f'opened), so "{target.rel}" cannot be used',
                            f"{op} {target.rel}: parent is not a directory",
                        ) from None
                    raise
                os.close(fd)
                fd = nxt
            yield fd
        finally:
            os.close(fd)

    def _read_text(self, target: _Target, op: str) -> str:
        with self._parent_fd(target, create=False, op=op) as parent:
            name = target.parts[-1]
            try:
                st = os.stat(name, dir_fd=parent, follow_symlinks=False)
            except FileNotFoundError:
                raise _ToolError(
                    f'file "{target.rel}" does not exist; check the path with `view` on its directory, '
                    "or use create to make it",
                    f"{op} {target.rel}: not found",
                ) from None
            self._check_file(target, st, op)
            try:
                # O_NONBLOCK: should a FIFO be swapped in after the stat, opening it must not hang.
                fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=parent)
            except OSError as exc:
                if exc.errno == errno.ELOOP:
                    raise _ToolError(
                        f'"{target.rel}" changed while being opened; try again', f"{op} {target.rel}: raced"
                    ) from None
                raise
            try:
                self._check_file(target, os.fstat(fd), op)
                with os.fdopen(fd, "rb", closefd=False) as handle:
                    data = handle.read(MAX_FILE_BYTES + 1)
            finally:
                os.close(fd)
        if len(data) > MAX_FILE_BYTES:
            raise self._too_large(target, op, len(data))
        if b"\x00" in data[:BINARY_SNIFF_BYTES]:
            raise _ToolError(
                f'"{target.rel}" is a binary file; the editor only handles text',
                f"{op} {target.rel}: binary file",
            )
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise _ToolError(
                f'"{target.rel}" is not UTF-8 text (byte {exc.start}); the editor only handles UTF-8 files',
                f"{op} {target.rel}: not UTF-8",
            ) from None

    def _write_text(self, target: _Target, text: str, op: str) -> bool:
        """Replace the file's content atomically; returns whether it existed before.

        A new inode is written and renamed over the name, so even an undetected alias of the old inode
        (a hard link made after the check) never receives the content."""
        data = text.encode("utf-8")
        if len(data) > MAX_FILE_BYTES:
            raise self._too_large(target, op, len(data))
        if b"\x00" in data:
            raise _ToolError(
                f'the new content of "{target.rel}" contains NUL bytes; the editor only writes text',
                f"{op} {target.rel}: NUL in content",
            )
        with self._parent_fd(target, create=(op == "create"), op=op) as parent:
            name = target.parts[-1]
            try:
                st: os.stat_result | None = os.stat(name, dir_fd=parent, follow_symlinks=False)
            except FileNotFoundError:
                st = None
            if st is not None:
                self._check_file(target, st, op)
            mode = stat.S_IMODE(st.st_mode) if st is not None else 0o644
            temp = f".df-edit-{secrets.token_hex(6)}.tmp"
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=parent)
            try:
                with os.fdopen(fd, "wb", closefd=False) as handle:
                    handle.write(data)
                if st is not None:
                    os.fchmod(fd, mode)  # keep an executable bit; the umask applied at creation
                os.rename(temp, name, src_dir_fd=parent, dst_dir_fd=parent)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(temp, dir_fd=parent)
                raise
            finally:
                os.close(fd)
        return st is not None

    def _check_file(self, target: _Target, st: os.stat_result, op: str) -> None:
        if stat.S_ISDIR(st.st_mode):
            raise _ToolError(
                f'"{target.rel}" is a directory; {op} needs a file (use view to list a directory)',
                f"{op} {target.rel}: is a directory",
            )
        if stat.S_ISLNK(st.st_mode):
            raise _ToolError(
                f'"{target.rel}" changed into a symlink while being checked; try again',
                f"{op} {target.rel}: raced",
            )
        if not stat.S_ISREG(st.st_mode):
            raise _ToolError(
                f'"{target.rel}" is not a regular file (a FIFO, socket or device); the editor only handles '
                "regular files",
                f"{op} {target.rel}: not a regular file",
            )
        if st.st_nlink > 1:
            # A hard link can alias a file outside the workspace; no path check can tell.
            raise _ToolError(
                f'"{target.rel}" has {st.st_nlink} hard links, so it may alias a file outside the workspace; '
                "the editor refuses it",
                f"{op} {target.rel}: hard-linked file",
            )
        if op != "create" and st.st_size > MAX_FILE_BYTES:
            raise self._too_large(target, op, st.st_size)

    def _too_large(self, target: _Target, op: str, size: int) -> _ToolError:
        return _ToolError(
            f'"{target.rel}" is {size} bytes, over the editor\'s {MAX_FILE_BYTES}-byte limit; inspect it with '
            "run_command (`head`, `tail`, `grep -n`) instead",
            f"{op} {target.rel}: too large",
        )

    # ----------------------------------------------------------------------------------------------
    # Commands

    def _command(self, args: Mapping[str, Any]) -> ToolExecution:
        command = args.get("command")
        if not isinstance(command, str) or not command.strip():
            raise _ToolError("`command` is required: one command line, e.g. `pytest -q`", "run_command: no command")
        shown = command if len(command) <= 80 else command[:77] + "..."
        timeout_s = self._timeout_s
        requested = args.get("timeout_s")
        if requested is not None:
            if isinstance(requested, bool) or not isinstance(requested, int | float) or requested <= 0:
                raise _ToolError(
                    f"`timeout_s` must be a positive number of seconds, got {requested!r}",
                    f"run_command {shown}: bad timeout_s",
                )
            timeout_s = min(float(requested), self._timeout_s)
        argv = self._parse_command(command, shown)
        result = sandbox.run_command(
            argv,
            cwd=Path(self._root),
            timeout_s=timeout_s,
            env=COMMAND_ENV,
            path_prefix=self._path_prefix,
            readonly_paths=self._readonly,
            on_tick=self._on_tick,
        )
        if result.timed_out:
            header = f"exit code: {result.returncode} (timed out after {timeout_s:g} s; the command was killed)"
            outcome = f"timed out after {timeout_s:g}s"
        else:
            header = f"exit code: {result.returncode}"
            outcome = f"rc {result.returncode}"
        body = sandbox.truncate_middle(result.output, COMMAND_OUTPUT_CHARS)
        return ToolExecution(
            content=f"{header}\n{body}",
            is_error=not result.ok,
            summary=f"run_command `{shown}` -> {outcome} in {result.duration_s:.1f}s",
            wrote=True,
        )

    def _parse_command(self, command: str, shown: str) -> list[str]:
        summary = f"run_command `{shown}`: refused"
        if "\x00" in command:
            raise _ToolError("the command contains a NUL byte", summary)
        try:
            argv = shlex.split(command)
            lexer = shlex.shlex(command, posix=True, punctuation_chars=True)
            lexer.whitespace_split = True
            tokens = list(lexer)
        except ValueError as exc:
            raise _ToolError(f"cannot parse the command ({exc}); check its quotes", summary) from None
        if not argv:
            raise _ToolError("the command is empty", summary)
        # Only unquoted operator characters come out of the punctuation-aware lexer as tokens of their own,
        # so `python -c 'a; b'` passes and `ls; rm x` does not.
        operators = [t for t in tokens if t and set(t) <= set("();<>|&") and set(t) & _SHELL_OPERATOR_CHARS]
        substitutions = [t for t in argv if "`" in t or "$(" in t]
        if operators or substitutions:
            bad = (operators or substitutions)[0]
            raise _ToolError(
                f"no shell: run one command at a time. {bad!r} is shell syntax (pipes, redirection, `;`, "
                "`&&`, `||`, `&`, backticks and `$(...)` are not supported); split the work into separate "
                "run_command calls and use the text editor to write files",
                summary,
            )
        program = argv[0]
        if program not in self._allowed:
            raise _ToolError(
                f'command "{program}" is not allowed. Allowed commands: {", ".join(self._allowed)}'
                + (f" (git only with {', '.join(GIT_READONLY_SUBCOMMANDS)})" if "git" in self._allowed else "")
                + ". Use the text editor tool to create, edit or delete content.",
                summary,
            )
        if program == "git":
            _check_git(argv, summary)
        elif program == "find":
            for token in argv[1:]:
                if token in _FIND_FORBIDDEN:
                    raise _ToolError(
                        f'find option "{token}" is not allowed (it runs commands or changes files); '
                        "use find to list paths only",
                        summary,
                    )
        return argv


def _check_git(argv: list[str], summary: str) -> None:
    allowed = ", ".join(GIT_READONLY_SUBCOMMANDS)
    if len(argv) < 2:
        raise _ToolError(f"git needs a subcommand; allowed: {allowed}", summary)
    sub = argv[1]
    if sub.startswith("-"):
        raise _ToolError(
            f'git option "{sub}" is not allowed before the subcommand; write e.g. `git log --oneline -5` '
            f"(allowed subcommands: {allowed})",
            summary,
        )
    if sub not in GIT_READONLY_SUBCOMMANDS:
        raise _ToolError(f'git subcommand "{sub}" is not allowed; allowed (read-only): {allowed}', summary)
    for token in argv[2:]:
        if token == "--":
            break  # everything after is a path
        if (
            token in _GIT_FORBIDDEN_EXACT
            or token.startswith(_GIT_FORBIDDEN_PREFIXES)
            or (token.startswith("-c") and not token.startswith("--"))
        ):
            raise _ToolError(
                f'git option "{token}" is not allowed (it can run programs or write files); '
                f"use plain `git {sub}` options",
                summary,
            )


# --------------------------------------------------------------------------------------------------
# Text helpers


def _within(path: str, root: str) -> bool:
    return os.path.commonpath([path, root]) == root


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
