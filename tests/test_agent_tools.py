"""The agent's tools on real files and real git repos: editor semantics, confinement, the command allowlist."""

from __future__ import annotations

import os
import stat
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from darkfactory import sandbox
from darkfactory.agent_tools import (
    SHELL_TOOL,
    TEXT_EDITOR_TOOL,
    AgentTools,
    ToolExecution,
    tool_definitions,
)
from darkfactory.contracts import ToolCall
from tests.conftest import git

EDITOR = TEXT_EDITOR_TOOL["name"]
SECRET = "TOP-SECRET-OUTSIDE-CONTENT\n"


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "wt"
    (root / "src" / "pkg" / "deep").mkdir(parents=True)
    (root / "src" / "app.py").write_text("def main():\n    return 1\n\n\nprint(main())\n")
    (root / "src" / "pkg" / "deep" / "leaf.py").write_text("x = 1\n")
    (root / "README.md").write_text("# demo\n")
    (root / ".hidden").write_text("h\n")
    git(root, "init", "-q", "-b", "main")
    git(root, "add", ".")
    git(root, "commit", "-q", "-m", "init")
    return root


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A secret file next to the workspace, in a sibling directory whose name shares the root's prefix."""
    sibling = tmp_path / "wt2"
    sibling.mkdir()
    secret = sibling / "secret.txt"
    secret.write_text(SECRET)
    return secret


@pytest.fixture
def tools(repo: Path) -> AgentTools:
    return AgentTools(repo)


def run(tools: AgentTools, name: str, **tool_input: Any) -> ToolExecution:
    return tools.execute(ToolCall(id="toolu_1", name=name, input=tool_input))


def edit(tools: AgentTools, **tool_input: Any) -> ToolExecution:
    return run(tools, EDITOR, **tool_input)


def shell(tools: AgentTools, command: str, **extra: Any) -> ToolExecution:
    return run(tools, SHELL_TOOL["name"], command=command, **extra)


def assert_refused(result: ToolExecution, *fragments: str) -> None:
    assert result.is_error, result.content
    assert not result.wrote
    for fragment in fragments:
        assert fragment in result.content, result.content
    assert SECRET.strip() not in result.content


# --------------------------------------------------------------------------------------------------
# Definitions


def test_tool_definitions() -> None:
    editor, command = tool_definitions()
    assert editor == {"type": "text_editor_20250728", "name": "str_replace_based_edit_tool"}
    assert command["name"] == "bash"
    assert command["input_schema"]["required"] == ["command"]
    assert set(command["input_schema"]["properties"]) == {"command", "timeout_s"}
    # The model is told what persists between calls (files) and what does not (cwd, variables, processes).
    assert "fresh `bash -c`" in command["description"] and "persists" in command["description"]
    command["description"] = "changed"
    assert SHELL_TOOL["description"] != "changed"  # callers get copies


def test_unknown_tool_is_an_error(tools: AgentTools) -> None:
    result = run(tools, "run_command", command="ls")
    assert_refused(result, 'unknown tool "run_command"', '"bash"')


def test_unknown_editor_command_is_an_error(tools: AgentTools) -> None:
    assert_refused(edit(tools, command="undo_edit", path="src/app.py"), "unsupported editor command", "view")


def test_missing_path_is_an_error(tools: AgentTools) -> None:
    assert_refused(edit(tools, command="view"), "`path` is required")


# --------------------------------------------------------------------------------------------------
# Editor happy paths


def test_view_file_with_line_numbers(tools: AgentTools) -> None:
    result = edit(tools, command="view", path="src/app.py")
    assert not result.is_error
    assert not result.wrote
    assert result.content.splitlines()[1:3] == ["     1\tdef main():", "     2\t    return 1"]
    assert result.content.splitlines()[-1] == "     5\tprint(main())"
    assert result.summary == "view src/app.py"


def test_view_range(tools: AgentTools) -> None:
    result = edit(tools, command="view", path="src/app.py", view_range=[2, 3])
    assert result.content.splitlines()[1:] == ["     2\t    return 1", "     3\t"]
    to_end = edit(tools, command="view", path="src/app.py", view_range=[4, -1])
    assert to_end.content.splitlines()[1:] == ["     4\t", "     5\tprint(main())"]


def test_view_range_out_of_bounds_is_an_error(tools: AgentTools) -> None:
    assert_refused(edit(tools, command="view", path="src/app.py", view_range=[9, 10]), "between 1 and 5")
    assert_refused(edit(tools, command="view", path="src/app.py", view_range="1-2"), "view_range")


def test_view_directory_lists_two_levels_without_hidden(tools: AgentTools) -> None:
    result = edit(tools, command="view", path=".")
    assert not result.is_error
    listing = result.content.splitlines()[1:]
    assert listing == ["README.md", "src/", "src/app.py", "src/pkg/"]
    nested = edit(tools, command="view", path="src")
    assert "src/pkg/deep/" in nested.content
    assert "leaf.py" not in nested.content


def test_view_is_clipped_at_max_view_chars(repo: Path) -> None:
    (repo / "long.txt").write_text("".join(f"line {i}\n" for i in range(1000)))
    result = edit(AgentTools(repo, max_view_chars=500), command="view", path="long.txt")
    assert len(result.content) < 700
    assert "response clipped" in result.content


def test_create_makes_parent_directories(tools: AgentTools, repo: Path) -> None:
    result = edit(tools, command="create", path="src/new/mod.py", file_text="a = 1\nb = 2\n")
    assert not result.is_error, result.content
    assert result.wrote
    assert result.summary == "create src/new/mod.py (2 lines)"
    assert (repo / "src" / "new" / "mod.py").read_text() == "a = 1\nb = 2\n"
    assert list((repo / "src" / "new").iterdir()) == [repo / "src" / "new" / "mod.py"]  # no temp leftovers


def test_create_overwrites_and_keeps_the_mode(tools: AgentTools, repo: Path) -> None:
    script = repo / "run.sh"
    script.write_text("old\n")
    script.chmod(0o755)
    result = edit(tools, command="create", path="run.sh", file_text="#!/bin/sh\necho new\n")
    assert not result.is_error
    assert result.summary == "overwrite run.sh (2 lines)"
    assert script.read_text() == "#!/bin/sh\necho new\n"
    assert stat.S_IMODE(script.stat().st_mode) == 0o755


def test_str_replace_edits_once_and_shows_a_snippet(tools: AgentTools, repo: Path) -> None:
    result = edit(tools, command="str_replace", path="src/app.py", old_str="    return 1\n", new_str="    return 2\n")
    assert not result.is_error, result.content
    assert result.wrote
    assert (repo / "src" / "app.py").read_text() == "def main():\n    return 2\n\n\nprint(main())\n"
    assert "     2\t    return 2" in result.content
    assert "     1\tdef main():" in result.content
    assert result.summary == "str_replace src/app.py at line 2 (-1 +1 lines)"


def test_str_replace_with_no_match_is_an_error(tools: AgentTools, repo: Path) -> None:
    before = (repo / "src" / "app.py").read_text()
    result = edit(tools, command="str_replace", path="src/app.py", old_str="return 3", new_str="x")
    assert_refused(result, "did not appear verbatim", "src/app.py")
    assert (repo / "src" / "app.py").read_text() == before


def test_str_replace_with_two_matches_names_the_lines(tools: AgentTools, repo: Path) -> None:
    (repo / "dup.py").write_text("x = 1\ny = 2\nx = 1\n")
    result = edit(tools, command="str_replace", path="dup.py", old_str="x = 1", new_str="x = 3")
    assert_refused(result, "occurs 2 times", "lines 1, 3")
    assert (repo / "dup.py").read_text() == "x = 1\ny = 2\nx = 1\n"


def test_str_replace_hints_at_copied_line_numbers(tools: AgentTools) -> None:
    result = edit(tools, command="str_replace", path="src/app.py", old_str="     2\t    return 1", new_str="")
    assert_refused(result, "line numbers")


def test_insert_after_a_line_and_at_the_top(tools: AgentTools, repo: Path) -> None:
    result = edit(tools, command="insert", path="src/app.py", insert_line=2, insert_text="    # done\n")
    assert not result.is_error, result.content
    assert result.wrote
    top = edit(tools, command="insert", path="src/app.py", insert_line=0, insert_text='"""Doc."""')
    assert not top.is_error
    assert (repo / "src" / "app.py").read_text() == (
        '"""Doc."""\ndef main():\n    return 1\n    # done\n\n\nprint(main())\n'
    )
    assert "     3\t    # done" in result.content
    assert result.summary == "insert src/app.py after line 2 (1 line)"


def test_insert_line_out_of_range_is_an_error(tools: AgentTools) -> None:
    result = edit(tools, command="insert", path="src/app.py", insert_line=9, insert_text="x")
    assert_refused(result, "has 5 lines", "from 0")


def test_absolute_path_inside_the_root_is_accepted(tools: AgentTools, repo: Path) -> None:
    result = edit(tools, command="view", path=str(repo / "README.md"))
    assert not result.is_error
    assert "# demo" in result.content


# --------------------------------------------------------------------------------------------------
# Confinement


@pytest.mark.parametrize("path", ["../x", "src/../../x", "..", "../wt2/secret.txt", "./../wt2/secret.txt"])
def test_traversal_is_refused(tools: AgentTools, outside: Path, path: str) -> None:
    for command in ("view", "create"):
        result = edit(tools, command=command, path=path, file_text="pwned\n")
        assert_refused(result, "outside the workspace", "relative to the repository root")
    assert outside.read_text() == SECRET
    assert not (outside.parent.parent / "x").exists()


@pytest.mark.parametrize("path", ["/etc/passwd", "/proc/self/environ", "//etc/passwd"])
def test_absolute_path_outside_is_refused(tools: AgentTools, path: str) -> None:
    assert_refused(edit(tools, command="view", path=path), f'path "{path}" is outside the workspace')


def test_absolute_path_to_sibling_with_shared_prefix_is_refused(tools: AgentTools, outside: Path) -> None:
    assert_refused(edit(tools, command="view", path=str(outside)), "outside the workspace")


def test_symlink_to_outside_file_is_refused(tools: AgentTools, repo: Path, outside: Path) -> None:
    (repo / "evil_abs").symlink_to(outside)
    (repo / "evil_rel").symlink_to(os.path.relpath(outside, repo))
    for name in ("evil_abs", "evil_rel"):
        assert_refused(edit(tools, command="view", path=name), "symlink", "outside the workspace")
        assert_refused(edit(tools, command="create", path=name, file_text="pwned\n"), "outside the workspace")
        assert_refused(
            edit(tools, command="str_replace", path=name, old_str="TOP", new_str="x"), "outside the workspace"
        )
    assert outside.read_text() == SECRET


def test_symlinked_directory_to_outside_is_refused(tools: AgentTools, repo: Path, outside: Path) -> None:
    (repo / "linkdir").symlink_to(outside.parent)
    assert_refused(edit(tools, command="view", path="linkdir/secret.txt"), "outside the workspace")
    assert_refused(edit(tools, command="view", path="linkdir"), "outside the workspace")
    assert_refused(edit(tools, command="create", path="linkdir/new.txt", file_text="x\n"), "outside the workspace")
    assert not (outside.parent / "new.txt").exists()


def test_dangling_symlink_to_outside_cannot_be_created_through(tools: AgentTools, repo: Path, tmp_path: Path) -> None:
    (repo / "dangling").symlink_to(tmp_path / "wt2" / "planted.txt")
    assert_refused(edit(tools, command="create", path="dangling", file_text="x\n"), "outside the workspace")
    assert not (tmp_path / "wt2" / "planted.txt").exists()


def test_symlink_inside_the_workspace_works(tools: AgentTools, repo: Path) -> None:
    (repo / "inner").symlink_to("src")
    result = edit(tools, command="view", path="inner/app.py")
    assert not result.is_error, result.content
    assert "def main" in result.content


def test_hard_link_to_outside_file_is_refused(tools: AgentTools, repo: Path, outside: Path) -> None:
    os.link(outside, repo / "hard.txt")
    assert_refused(edit(tools, command="view", path="hard.txt"), "hard links")
    assert_refused(edit(tools, command="str_replace", path="hard.txt", old_str="TOP", new_str="x"), "hard links")
    assert_refused(edit(tools, command="create", path="hard.txt", file_text="x\n"), "hard links")
    assert outside.read_text() == SECRET


@pytest.mark.parametrize("path", [".git/config", ".git/hooks/pre-commit", "src/../.git/HEAD", ".git"])
def test_git_dir_is_off_limits(tools: AgentTools, repo: Path, path: str) -> None:
    before = (repo / ".git" / "config").read_text()
    assert_refused(edit(tools, command="create", path=path, file_text="[core]\n\tfsmonitor = x\n"), ".git")
    assert_refused(edit(tools, command="view", path=path), ".git")
    assert (repo / ".git" / "config").read_text() == before
    assert not (repo / ".git" / "hooks" / "pre-commit").exists()


def test_symlink_into_git_dir_is_off_limits(tools: AgentTools, repo: Path) -> None:
    (repo / "cfg").symlink_to(".git/config")
    assert_refused(edit(tools, command="create", path="cfg", file_text="x\n"), ".git")


def test_worktree_git_file_is_off_limits(repo: Path, tmp_path: Path) -> None:
    worktree = tmp_path / "task-wt"
    git(repo, "worktree", "add", "-q", "-b", "task", str(worktree))
    tools = AgentTools(worktree)
    before = (worktree / ".git").read_text()
    assert_refused(edit(tools, command="create", path=".git", file_text="gitdir: /tmp\n"), ".git")
    assert_refused(edit(tools, command="view", path=".git"), ".git")
    assert (worktree / ".git").read_text() == before
    assert not edit(tools, command="view", path="src/app.py").is_error


def test_nul_byte_in_path_is_refused(tools: AgentTools) -> None:
    assert_refused(edit(tools, command="view", path="src/app.py\x00.png"), "NUL byte")


def test_fifo_is_refused_without_hanging(tools: AgentTools, repo: Path) -> None:
    os.mkfifo(repo / "pipe")
    results: list[ToolExecution] = []
    worker = threading.Thread(
        target=lambda: results.append(edit(tools, command="view", path="pipe")),
        daemon=True,
    )
    worker.start()
    worker.join(timeout=10)
    assert not worker.is_alive(), "viewing a FIFO blocked"
    assert_refused(results[0], "not a regular file")


def test_binary_file_is_refused(tools: AgentTools, repo: Path) -> None:
    (repo / "blob.bin").write_bytes(b"PK\x03\x04\x00\x00binary")
    assert_refused(edit(tools, command="view", path="blob.bin"), "binary")
    assert_refused(edit(tools, command="str_replace", path="blob.bin", old_str="PK", new_str="x"), "binary")


def test_large_file_is_refused(tools: AgentTools, repo: Path) -> None:
    (repo / "big.txt").write_text("x" * (2 << 20))
    assert_refused(edit(tools, command="view", path="big.txt"), "limit")


def test_overlong_file_name_is_an_error_not_an_exception(tools: AgentTools) -> None:
    assert_refused(edit(tools, command="view", path="x" * 300), "File name too long")
    assert_refused(edit(tools, command="create", path="d/" + "x" * 300, file_text="x\n"), "File name too long")


def test_missing_file_is_an_actionable_error(tools: AgentTools) -> None:
    assert_refused(edit(tools, command="view", path="src/nope.py"), "does not exist")
    assert_refused(edit(tools, command="str_replace", path="nope/x.py", old_str="a", new_str="b"), "does not exist")


# --------------------------------------------------------------------------------------------------
# Commands


def test_shell_features_work(tools: AgentTools, repo: Path) -> None:
    result = shell(tools, "ls src | wc -l && echo one > made.txt; echo two >> made.txt; echo src/*.py")
    assert not result.is_error, result.content
    assert result.content == "exit code: 0\n2\nsrc/app.py\n"
    assert (repo / "made.txt").read_text() == "one\ntwo\n"


def test_each_call_is_a_fresh_shell(tools: AgentTools) -> None:
    shell(tools, "cd src && export X=1 && touch /tmp/left-behind")
    result = shell(tools, "pwd; echo X=${X:-unset}; test -e /tmp/left-behind && echo left || echo gone")
    assert result.content.endswith("/wt\nX=unset\ngone\n")  # cwd and variables reset, /tmp emptied


def test_python_inside_quotes_is_one_argument(tools: AgentTools) -> None:
    result = shell(tools, "python3 -c 'print(1); print(2)'")
    assert not result.is_error, result.content
    assert result.content == "exit code: 0\n1\n2\n"


def test_nul_in_a_command_is_refused(tools: AgentTools) -> None:
    assert_refused(shell(tools, "echo a\x00b"), "NUL")


def venv_tools(root: Path, **kwargs: Any) -> AgentTools:
    """Tools whose commands see this test run's venv (`python`), as the factory will configure them."""
    return AgentTools(
        root,
        command_path_prefix=[Path(sys.prefix) / "bin"],
        command_readonly_paths=[Path(sys.prefix), Path(sys.base_prefix)],
        **kwargs,
    )


def test_allowed_command_runs_in_the_sandbox(repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(sandbox.SANDBOX_ENV_VAR, raising=False)
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-api03-CANARY")
    tools = venv_tools(repo)
    result = shell(tools, "python -c 'print(40+2)'")
    assert not result.is_error, result.content
    assert result.wrote
    assert result.content == "exit code: 0\n42\n"
    assert result.summary.startswith("bash `python -c 'print(40+2)'` -> rc 0 in ")
    if sandbox.sandbox_tier() == "bwrap":
        probe = shell(tools, "python -c 'import os; print(os.getuid(), sorted(os.environ))'")
        assert probe.content.startswith("exit code: 0\n65534 ")
        assert "ANTHROPIC" not in probe.content


def test_failing_command_is_an_error_with_its_exit_code(tools: AgentTools) -> None:
    result = shell(tools, "python3 -c 'import sys; print(\"boom\"); sys.exit(3)'")
    assert result.is_error
    assert result.wrote
    assert result.content == "exit code: 3\nboom\n"


def test_command_timeout_is_reported(repo: Path) -> None:
    tools = AgentTools(repo, command_timeout_s=60)
    result = shell(tools, "python3 -c 'import threading; threading.Event().wait(120)'", timeout_s=1)
    assert result.is_error
    assert "timed out after 1 s" in result.content
    assert "timed out" in result.summary


def test_bad_timeout_is_an_error(tools: AgentTools) -> None:
    assert_refused(shell(tools, "ls", timeout_s="soon"), "timeout_s")


def test_command_output_is_capped_for_the_model(tools: AgentTools) -> None:
    result = shell(tools, 'python3 -c \'print("a" * 50000); print("END")\'')
    assert not result.is_error
    assert len(result.content) < 10_200
    assert "characters truncated" in result.content
    assert result.content.endswith("END\n")


def test_read_only_git_commands_run(tools: AgentTools, repo: Path) -> None:
    (repo / "README.md").write_text("# changed\n")
    status = shell(tools, "git status --porcelain")
    assert status.content == "exit code: 0\n M README.md\n"
    log = shell(tools, "git log --oneline")
    assert not log.is_error
    assert "init" in log.content
