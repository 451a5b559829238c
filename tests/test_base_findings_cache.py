"""The lint and types gates check a base tree once: later gate runs against the same base reuse its findings.

Real git repositories, the real ruff and mypy, sandboxed as in production. Each judgement checks the change out
in a worktree of its own and the base in another (as a task's gate run does), so a reuse can only come from
the cache, keyed by the base's tree. How often the tool ran on the base is read from the gate's details, the
transcript a person opens.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import TypeAdapter

from darkfactory.blobs import BlobStore
from darkfactory.contracts import GateResult
from darkfactory.gates import GateContext
from darkfactory.gates.base_findings import base_side
from darkfactory.gates.lint import Finding, lint_gate, run_ruff
from darkfactory.gates.typecheck import types_gate
from darkfactory.sandbox import CommandResult
from darkfactory.target_env import TargetEnv, ensure_target_env
from darkfactory.workspace import changed_paths, ensure_worktree
from tests.conftest import git, make_repo
from tests.gate_repos import Content, commit, write

WORDS = (Path(__file__).parents[1] / "examples" / "demo" / "repo" / "textkit" / "words.py").read_text()
WITH_OS = "import os\n\n" + WORDS
"""words.py with a finding (F401) already on the base."""
MYPY_CONFIG = "\n[tool.mypy]\nwarn_unused_configs = true\n"
BROKEN = "\n\ndef broken() -> int:\n    return 'x'\n"
REUSED = "base findings reused from cache"


@pytest.fixture(scope="module")
def envs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Target environments (and the seeded mypy) shared by this module's types tests: built once."""
    return tmp_path_factory.mktemp("envs")


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return make_repo(tmp_path / "repo")


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    return tmp_path / "home" / "cache" / "base-findings"


def judge(
    repo: Path, base_sha: str, files: dict[str, Content], cache: Path | None, env: TargetEnv | None = None
) -> GateContext:
    """`files` committed on top of `base_sha` in a fresh worktree, judged against `base_sha` in another."""
    existing = sum(1 for path in repo.parent.glob("head-*") if "." not in path.name)
    worktree = ensure_worktree(str(repo), repo.parent / f"head-{existing}", base_sha)
    write(worktree, files)
    git(worktree, "add", "-A")
    git(worktree, "commit", "-q", "-m", "change")
    sha = git(worktree, "rev-parse", "HEAD")
    return GateContext(
        worktree=worktree,
        sha=sha,
        changed=changed_paths(str(repo), base_sha, sha),
        env=env or TargetEnv(root=repo.parent, fingerprint="x"),
        blobs=BlobStore(repo.parent / "blobs"),
        repo_path=str(repo),
        base_sha=base_sha,
        base_worktree=ensure_worktree(str(repo), repo.parent / f"head-{existing}.base", base_sha),
        findings_cache=cache,
    )


def details(ctx: GateContext, result: GateResult) -> str:
    assert result.details_ref is not None
    return ctx.blobs.get_text(result.details_ref)


def runs(ctx: GateContext, result: GateResult, tool: str) -> int:
    """How many times the gate ran `tool` (its transcripts in the details)."""
    marker = {"ruff": "ruff check ", "mypy": "-m mypy "}[tool]
    return sum(1 for line in details(ctx, result).splitlines() if line.startswith("$ ") and marker in line)


def verdict(result: GateResult) -> tuple[bool, str, str, list[str]]:
    return result.passed, result.summary, result.feedback, result.notes


# --------------------------------------------------------------------------------------------------
# lint


def test_a_second_lint_run_against_the_same_base_does_not_run_ruff_on_it(repo: Path, cache: Path) -> None:
    base = commit(repo, {"textkit/words.py": WITH_OS})
    first_ctx = judge(repo, base, {"textkit/words.py": WITH_OS + "\nLIMIT = 3\n"}, cache)
    first = lint_gate(first_ctx)
    again_ctx = judge(repo, base, {"textkit/words.py": WITH_OS + "\nLIMIT = 3\n"}, cache)
    again = lint_gate(again_ctx)

    assert runs(first_ctx, first, "ruff") == 2 and REUSED not in details(first_ctx, first)
    assert runs(again_ctx, again, "ruff") == 1 and REUSED in details(again_ctx, again)
    assert verdict(again) == verdict(first)
    assert first.passed and first.summary == "ruff: no new findings (1 already on the base commit)"
    assert REUSED not in again.summary and not any(REUSED in note for note in again.notes)


def test_on_the_cached_path_a_base_finding_passes_and_a_new_one_fails(repo: Path, cache: Path) -> None:
    base = commit(repo, {"textkit/words.py": WITH_OS})
    lint_gate(judge(repo, base, {"textkit/words.py": WITH_OS + "\nLIMIT = 3\n"}, cache))

    # The finding moves down two lines and is still the one the base had.
    moved_ctx = judge(repo, base, {"textkit/words.py": '"""Words."""\n\n' + WITH_OS}, cache)
    moved = lint_gate(moved_ctx)
    new_ctx = judge(repo, base, {"textkit/words.py": WITH_OS + "\nLIMIT = undefined_name\n"}, cache)
    new = lint_gate(new_ctx)

    assert runs(moved_ctx, moved, "ruff") == 1 and runs(new_ctx, new, "ruff") == 1
    assert moved.passed and moved.summary == "ruff: no new findings (1 already on the base commit)"
    assert any("F401" in note and "already on the base commit" in note for note in moved.notes)
    assert not new.passed and new.summary == "ruff: 1 new finding(s) (1 already on the base commit)"
    assert "F821" in new.feedback and "F401" not in new.feedback


def test_a_new_base_tree_misses_the_cache_and_is_judged_on_its_own_findings(repo: Path, cache: Path) -> None:
    old_base = commit(repo, {"textkit/words.py": WITH_OS})
    assert lint_gate(judge(repo, old_base, {"textkit/words.py": WITH_OS + "\nLIMIT = 3\n"}, cache)).passed
    new_base = commit(repo, {"textkit/words.py": WORDS})  # the finding is fixed on the base

    # The same change against the new base brings the finding back: it is new there.
    ctx = judge(repo, new_base, {"textkit/words.py": WITH_OS + "\nLIMIT = 3\n"}, cache)
    result = lint_gate(ctx)

    assert runs(ctx, result, "ruff") == 2 and REUSED not in details(ctx, result)
    assert not result.passed and result.summary == "ruff: 1 new finding(s)"
    assert "F401" in result.feedback


def test_a_different_set_of_files_misses_the_cache(repo: Path, cache: Path) -> None:
    base = commit(repo, {"textkit/words.py": WITH_OS, "textkit/more.py": "import sys\n"})
    lint_gate(judge(repo, base, {"textkit/words.py": WITH_OS + "\nLIMIT = 3\n"}, cache))

    both = {"textkit/words.py": WITH_OS + "\nLIMIT = 3\n", "textkit/more.py": "import sys\n\nLIMIT = 3\n"}
    ctx = judge(repo, base, both, cache)
    result = lint_gate(ctx)

    assert runs(ctx, result, "ruff") == 2 and REUSED not in details(ctx, result)
    assert result.passed and result.summary == "ruff: no new findings (2 already on the base commit)"


def test_a_corrupt_cache_entry_is_ignored_and_overwritten(repo: Path, cache: Path) -> None:
    base = commit(repo, {"textkit/words.py": WITH_OS})
    change = {"textkit/words.py": WITH_OS + "\nLIMIT = undefined_name\n"}
    first = lint_gate(judge(repo, base, change, cache))
    (entry,) = cache.rglob("*.json")
    entry.write_text('{"key": [')

    repaired_ctx = judge(repo, base, change, cache)
    repaired = lint_gate(repaired_ctx)
    reused_ctx = judge(repo, base, change, cache)
    reused = lint_gate(reused_ctx)

    assert runs(repaired_ctx, repaired, "ruff") == 2 and verdict(repaired) == verdict(first)
    assert json.loads(entry.read_text())["findings"], "the entry was not rewritten"
    assert runs(reused_ctx, reused, "ruff") == 1 and verdict(reused) == verdict(first)


def test_a_base_ruff_cannot_check_is_not_cached(repo: Path, cache: Path) -> None:
    pyproject = (repo / "pyproject.toml").read_text()
    base = commit(repo, {"pyproject.toml": pyproject + '\n[tool.ruff.format]\nquote-style = "curly"\n'})
    change: dict[str, Content] = {"pyproject.toml": pyproject, "textkit/words.py": WITH_OS}

    for _ in range(2):
        ctx = judge(repo, base, change, cache)
        result = lint_gate(ctx)

        assert runs(ctx, result, "ruff") == 2 and REUSED not in details(ctx, result)
        assert not result.passed and "ruff did not run on the base commit: every finding counts as new" in result.notes
    assert not list(cache.rglob("*.json"))


def test_without_a_cache_directory_every_run_checks_the_base(repo: Path) -> None:
    base = commit(repo, {"textkit/words.py": WITH_OS})
    for _ in range(2):
        ctx = judge(repo, base, {"textkit/words.py": WITH_OS + "\nLIMIT = 3\n"}, None)
        result = lint_gate(ctx)
        assert result.passed and runs(ctx, result, "ruff") == 2


def test_another_tool_version_misses_the_cache(repo: Path, cache: Path) -> None:
    base = commit(repo, {"textkit/words.py": WITH_OS})
    ctx = judge(repo, base, {"textkit/words.py": WITH_OS + "\nLIMIT = 3\n"}, cache)
    assert ctx.base_worktree is not None
    tree, adapter, calls = ctx.base_worktree, TypeAdapter(list[Finding]), list[str]()

    def check(version: str) -> tuple[str, int]:
        def run() -> tuple[CommandResult, list[Finding] | None]:
            calls.append(version)
            return run_ruff(ctx, tree, ["textkit/words.py"])

        side = base_side(ctx, "ruff", lambda: ["ruff", version], ["textkit/words.py"], adapter, run)
        assert side.findings is not None
        return version, len(side.findings)

    assert [check("0.1"), check("0.2"), check("0.1"), check("0.2")] == [("0.1", 1), ("0.2", 1)] * 2
    assert calls == ["0.1", "0.2"]


# --------------------------------------------------------------------------------------------------
# types


def test_a_second_types_run_against_the_same_base_reuses_its_errors(repo: Path, cache: Path, envs: Path) -> None:
    pyproject = (repo / "pyproject.toml").read_text() + MYPY_CONFIG
    base = commit(repo, {"pyproject.toml": pyproject, "textkit/words.py": WORDS + BROKEN})
    env = ensure_target_env(repo, envs)
    old_only = {"textkit/words.py": '"""Words."""\n\nLIMIT = 3\n\n' + WORDS + BROKEN}
    first_ctx = judge(repo, base, old_only, cache, env)
    first = types_gate(first_ctx)

    again_ctx = judge(repo, base, old_only, cache, env)
    again = types_gate(again_ctx)
    worse = WORDS + BROKEN + "\n\ndef worse() -> str:\n    return 1\n"
    new_ctx = judge(repo, base, {"textkit/words.py": worse}, cache, env)
    new = types_gate(new_ctx)

    assert runs(first_ctx, first, "mypy") == 2 and REUSED not in details(first_ctx, first)
    assert first.passed and first.summary == "mypy: no new errors (1 already on the base commit)"
    assert runs(again_ctx, again, "mypy") == 1 and REUSED in details(again_ctx, again)
    assert verdict(again) == verdict(first)
    assert runs(new_ctx, new, "mypy") == 1 and REUSED in details(new_ctx, new)
    assert not new.passed and new.summary == "mypy: 1 new error(s) (1 already on the base commit)"
    assert "def worse" in new.feedback and "broken" not in new.feedback


def test_types_on_a_new_base_tree_miss_the_cache(repo: Path, cache: Path, envs: Path) -> None:
    pyproject = (repo / "pyproject.toml").read_text() + MYPY_CONFIG
    old_base = commit(repo, {"pyproject.toml": pyproject, "textkit/words.py": WORDS + BROKEN})
    env = ensure_target_env(repo, envs)
    change = {"textkit/words.py": '"""Words."""\n\n' + WORDS + BROKEN}
    assert types_gate(judge(repo, old_base, change, cache, env)).passed
    new_base = commit(repo, {"textkit/words.py": WORDS})

    ctx = judge(repo, new_base, change, cache, env)
    result = types_gate(ctx)

    assert runs(ctx, result, "mypy") == 2 and REUSED not in details(ctx, result)
    assert not result.passed and result.summary == "mypy: 1 new error(s)"
    assert "Incompatible return value" in result.feedback
