"""The lint, types, tests and acceptance gates on real git repositories, real target environments and the real
tools (ruff, mypy, pytest), sandboxed as in production."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest

from darkfactory.blobs import BlobStore
from darkfactory.gates import GateContext, read_regular_file, run_gates
from darkfactory.policy import GateName
from darkfactory.target_env import ensure_target_env
from darkfactory.workspace import changed_paths, ensure_worktree
from tests.conftest import DEMO, git, make_repo

WORDS = '"""Word-level helpers."""\n\n\ndef word_count(text: str) -> int:\n    return len(text.split())\n'
SLUG_BUGGY = 'import re\n\n\ndef slugify(text: str) -> str:\n    return re.sub(r"[^a-z0-9]+", "-", text.lower())\n'
SLUG = SLUG_BUGGY.replace("text.lower())", 'text.lower()).strip("-")')
TEST_SLUG = (
    "from textkit.slug import slugify\n\n\n"
    "def test_joins_words() -> None:\n"
    '    assert slugify("Hello World") == "hello-world"\n\n\n'
    "def test_drops_outer_punctuation() -> None:\n"
    '    assert slugify("  Hello, World!  ") == "hello-world"\n'
)
PASSING_ACCEPTANCE = 'from textkit.slug import slugify\n\n\ndef test_x():\n    assert slugify("A b") == "a-b"\n'
MYPY_CONFIG = "\n[tool.mypy]\nwarn_unused_configs = true\n"


def make_repo_pyproject() -> str:
    return (DEMO / "repo" / "pyproject.toml").read_text()


@pytest.fixture(scope="module")
def envs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Target environments (and the seeded mypy) shared by the tests of this module: built once per fingerprint."""
    return tmp_path_factory.mktemp("envs")


def commit(repo: Path, files: dict[str, str]) -> str:
    for path, content in files.items():
        (repo / path).parent.mkdir(parents=True, exist_ok=True)
        (repo / path).write_text(content)
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "change")
    return git(repo, "rev-parse", "HEAD")


def change(
    tmp_path: Path,
    envs: Path,
    files: dict[str, str],
    *,
    base: dict[str, str] | None = None,
    gates: tuple[GateName, ...] = ("syntax", "lint", "types", "tests", "acceptance"),
    acceptance: dict[str, str] | None = None,
) -> GateContext:
    """The demo repository (plus `base` files) as the base commit, `files` committed on top, both checked out."""
    repo = make_repo(tmp_path / "repo")
    base_sha = commit(repo, base) if base else git(repo, "rev-parse", "HEAD")
    sha = commit(repo, files)
    worktree = ensure_worktree(str(repo), tmp_path / "wt", sha)
    acceptance_dir = None
    if acceptance is not None:
        acceptance_dir = tmp_path / "held-out"
        acceptance_dir.mkdir()
        for name, source in acceptance.items():
            (acceptance_dir / name).write_text(source)
    return GateContext(
        worktree=worktree,
        sha=sha,
        changed=changed_paths(str(repo), base_sha, sha),
        env=ensure_target_env(worktree, envs),
        blobs=BlobStore(tmp_path / "blobs"),
        gates=gates,
        repo_path=str(repo),
        base_sha=base_sha,
        base_worktree=ensure_worktree(str(repo), tmp_path / "wt-base", base_sha),
        acceptance_dir=acceptance_dir,
    )


def gate(ctx: GateContext, name: GateName) -> tuple[bool, str, str, list[str]]:
    """(passed, summary, feedback, notes) of one gate run through run_gates."""
    report = run_gates(dataclasses.replace(ctx, gates=(name,)))
    (result,) = report.results
    return result.passed, result.summary, result.feedback, result.notes


# --------------------------------------------------------------------------------------------------
# run_gates


def test_run_gates_skips_review_and_stops_at_the_first_failure(tmp_path: Path, envs: Path) -> None:
    ctx = change(tmp_path, envs, {"textkit/slug.py": "def slugify(:\n"}, gates=("review", "syntax", "lint", "tests"))

    report = run_gates(ctx)

    assert [(r.gate, r.passed) for r in report.results] == [("syntax", False)]
    assert "textkit/slug.py:1" in report.results[0].feedback


def test_clean_change_passes_every_gate(tmp_path: Path, envs: Path) -> None:
    ctx = change(
        tmp_path,
        envs,
        {"textkit/slug.py": SLUG, "tests/test_slug.py": TEST_SLUG},
        base={"pyproject.toml": (make_repo_pyproject() + MYPY_CONFIG)},
        acceptance={"test_accept.py": PASSING_ACCEPTANCE},
        gates=("syntax", "lint", "types", "tests", "acceptance", "review"),
    )

    report = run_gates(ctx)

    assert report.passed, report.feedback
    assert [r.gate for r in report.results] == ["syntax", "lint", "types", "tests", "acceptance"]
    assert report.results[3].summary == "4 passed"
    assert report.results[4].summary == "acceptance: 1 passed"


# --------------------------------------------------------------------------------------------------
# lint


def test_lint_fails_on_a_new_finding_with_its_line(tmp_path: Path, envs: Path) -> None:
    ctx = change(tmp_path, envs, {"textkit/slug.py": "import os\n" + SLUG})

    passed, summary, feedback, _ = gate(ctx, "lint")

    assert not passed and summary == "ruff: 1 new finding(s)"
    assert "textkit/slug.py:1:8: F401" in feedback and "import os" in feedback


def test_lint_only_notes_a_finding_already_on_the_base(tmp_path: Path, envs: Path) -> None:
    with_os = WORDS.replace('"""\n\n', '"""\n\nimport os\n\n')
    ctx = change(
        tmp_path,
        envs,
        # The change adds lines above the finding: it moves, and is still the same finding.
        {"textkit/words.py": with_os.replace("helpers.", "helpers.\n\nNow counting more.\n")},
        base={"textkit/words.py": with_os},
    )

    passed, summary, _, notes = gate(ctx, "lint")

    assert passed, summary
    assert summary == "ruff: no new findings (1 already on the base commit)"
    assert any("F401" in note and "already on the base commit" in note for note in notes)


def test_lint_keeps_a_finding_an_edited_line_already_had_and_counts_a_different_one(tmp_path: Path, envs: Path) -> None:
    with_finding = WORDS.replace('"""\n\n', '"""\n\nimport os, sys\n\nLIMIT = 1\n\n')
    # The import line is reworded (same E401 and F401 as before); LIMIT now uses a name that does not exist.
    edited = with_finding.replace("import os, sys", "import sys, os").replace("LIMIT = 1", "LIMIT = undefined_name")
    ctx = change(tmp_path, envs, {"textkit/words.py": edited}, base={"textkit/words.py": with_finding})

    passed, summary, feedback, _ = gate(ctx, "lint")

    assert not passed and summary.startswith("ruff: 1 new finding(s)"), summary
    assert "F821" in feedback and "E401" not in feedback and "F401" not in feedback


# --------------------------------------------------------------------------------------------------
# types


def test_types_pass_when_the_target_does_not_configure_mypy(tmp_path: Path, envs: Path) -> None:
    ctx = change(tmp_path, envs, {"textkit/slug.py": "def slugify(text: str) -> int:\n    return text\n"})

    assert gate(ctx, "types")[:2] == (True, "mypy not configured")


def test_types_fail_on_a_new_error_when_mypy_is_configured(tmp_path: Path, envs: Path) -> None:
    ctx = change(
        tmp_path,
        envs,
        {"textkit/slug.py": "def slugify(text: str) -> int:\n    return text\n"},
        base={"pyproject.toml": make_repo_pyproject() + MYPY_CONFIG},
    )

    passed, summary, feedback, _ = gate(ctx, "types")

    assert not passed and summary == "mypy: 1 new error(s)"
    assert "textkit/slug.py:2: error: Incompatible return value type" in feedback
    assert "return text" in feedback


def test_types_only_note_an_error_already_on_the_base(tmp_path: Path, envs: Path) -> None:
    bad = "\n\ndef broken() -> int:\n    return 'x'\n"
    ctx = change(
        tmp_path,
        envs,
        {"textkit/words.py": WORDS.replace('"""\n\n', '"""\n\nLIMIT = 3\n\n') + bad},
        base={"pyproject.toml": make_repo_pyproject() + MYPY_CONFIG, "textkit/words.py": WORDS + bad},
    )

    passed, summary, _, notes = gate(ctx, "types")

    assert passed, summary
    assert summary == "mypy: no new errors (1 already on the base commit)"
    assert any("textkit/words.py" in note and "Incompatible return value" in note for note in notes)


# --------------------------------------------------------------------------------------------------
# tests


def test_a_failing_affected_test_is_reported_by_id_before_the_full_suite(tmp_path: Path, envs: Path) -> None:
    ctx = change(tmp_path, envs, {"textkit/slug.py": SLUG_BUGGY, "tests/test_slug.py": TEST_SLUG})

    passed, summary, feedback, _ = gate(ctx, "tests")

    assert not passed
    # Only tests/test_slug.py ran: the demo's own two tests are not in the tally.
    assert summary == "1 failed, 1 passed (1 affected test file(s); the full suite was not run)"
    assert "### tests/test_slug.py::test_drops_outer_punctuation" in feedback
    assert "assert '-hello-world-' == 'hello-world'" in feedback
    assert "test_joins_words" not in feedback


def test_a_test_that_passes_when_re_run_is_flaky_and_does_not_count(tmp_path: Path, envs: Path) -> None:
    # Honestly flaky: its first run leaves a marker in the worktree and fails; every later run passes.
    flaky = (
        "from pathlib import Path\n\n\n"
        "def test_sometimes() -> None:\n"
        "    marker = Path(__file__).with_name('.ran-once')\n"
        "    if not marker.exists():\n"
        "        marker.write_text('x')\n"
        "        raise AssertionError('first run fails')\n"
    )
    # A `test` task: adding a test is the whole change, so no witness is asked for.
    ctx = dataclasses.replace(change(tmp_path, envs, {"tests/test_flaky.py": flaky}), task_type="test")

    passed, summary, _, notes = gate(ctx, "tests")

    assert passed, summary
    assert summary == "3 passed, 1 flaky"  # the full suite ran after the marker existed: all three passed
    assert notes == [
        "flaky (passed when re-run alone): tests/test_flaky.py::test_sometimes - AssertionError: first run fails"
    ]


def test_a_planted_symlink_report_is_not_followed(tmp_path: Path, envs: Path) -> None:
    # A report the host can read but the sandbox cannot, claiming a failure the worker must never repeat.
    planted = tmp_path / "host-only.xml"
    planted.write_text(
        '<testsuites><testsuite><testcase classname="tests.test_x" name="LEAKED_HOST_FILE">'
        '<failure message="LEAKED_HOST_FILE">LEAKED_HOST_FILE</failure></testcase></testsuite></testsuites>'
    )
    conftest = (
        "import os\n\n\n"
        "def pytest_unconfigure(config):\n"
        "    report = config.option.xmlpath\n"
        "    if report:\n"
        "        os.unlink(report)\n"
        f"        os.symlink({str(planted)!r}, report)\n"
    )
    failing = "def test_fails() -> None:\n    assert 1 == 2\n"
    ctx = change(tmp_path, envs, {"tests/conftest.py": conftest, "tests/test_new.py": failing})

    passed, summary, feedback, notes = gate(ctx, "tests")

    assert not passed
    assert "LEAKED_HOST_FILE" not in summary + feedback + "".join(notes)
    assert "test_fails" in feedback  # from pytest's own output instead


def test_read_regular_file_refuses_symlinks_and_fifos(tmp_path: Path) -> None:
    target = tmp_path / "secret"
    target.write_text("s3cr3t")
    (tmp_path / "link").symlink_to(target)
    os.mkfifo(tmp_path / "fifo")

    assert read_regular_file(target) == b"s3cr3t"
    assert read_regular_file(tmp_path / "link") is None
    assert read_regular_file(tmp_path / "fifo") is None  # and does not block
    assert read_regular_file(target, limit=3) is None


def test_a_committed_symlink_is_not_read_as_source(tmp_path: Path, envs: Path) -> None:
    secret = tmp_path / "host-secret.py"
    secret.write_text("def oops(:  # HOST_SECRET_TEXT\n")
    repo_file = {"textkit/slug.py": SLUG}
    ctx = change(tmp_path, envs, repo_file)
    (ctx.worktree / "leak.py").symlink_to(secret)
    ctx.changed.append("leak.py")

    report = run_gates(dataclasses.replace(ctx, gates=("syntax", "lint")))

    assert report.passed
    assert "HOST_SECRET_TEXT" not in report.feedback + "".join(r.summary for r in report.results)


# --------------------------------------------------------------------------------------------------
# acceptance


ACCEPTANCE = (
    "from textkit.slug import slugify\n\n"
    "HIDDEN_SOURCE_MARKER = 'the generator must never see this line'\n\n\n"
    "def test_joins_with_dashes():\n"
    '    assert slugify("Dark Factory") == "dark-factory"\n\n\n'
    "def test_underscores():\n"
    '    assert slugify("a b") == "a_b", "words are joined with underscores"\n'
)


def test_acceptance_passes_when_there_are_no_held_out_tests(tmp_path: Path, envs: Path) -> None:
    ctx = change(tmp_path, envs, {"textkit/slug.py": SLUG})

    assert gate(ctx, "acceptance")[:2] == (True, "no held-out acceptance tests")


def test_acceptance_passes_when_the_held_out_tests_pass(tmp_path: Path, envs: Path) -> None:
    held_out = PASSING_ACCEPTANCE
    ctx = change(tmp_path, envs, {"textkit/slug.py": SLUG}, acceptance={"test_accept.py": held_out})

    assert gate(ctx, "acceptance")[:2] == (True, "acceptance: 1 passed")


def test_acceptance_feedback_names_the_test_and_message_but_never_its_source(tmp_path: Path, envs: Path) -> None:
    ctx = change(tmp_path, envs, {"textkit/slug.py": SLUG}, acceptance={"test_accept.py": ACCEPTANCE})

    passed, summary, feedback, _ = gate(ctx, "acceptance")

    assert not passed and summary == "acceptance: 1 of 2 held-out test(s) failed"
    assert "acceptance/test_accept.py::test_underscores: AssertionError: words are joined with underscores" in feedback
    assert "HIDDEN_SOURCE_MARKER" not in feedback and "def test_" not in feedback
    assert str(ctx.acceptance_dir) not in feedback
    assert "test_joins_with_dashes" not in feedback


def test_acceptance_import_error_shows_the_exception_not_the_import_line(tmp_path: Path, envs: Path) -> None:
    held_out = (
        "from textkit.slug import titlecase  # HIDDEN_IMPORT_MARKER\n\n\ndef test_t():\n    assert titlecase('a')\n"
    )
    ctx = change(tmp_path, envs, {"textkit/slug.py": SLUG}, acceptance={"test_accept.py": held_out})

    passed, _, feedback, _ = gate(ctx, "acceptance")

    assert not passed
    assert "ImportError: cannot import name 'titlecase'" in feedback
    assert "HIDDEN_IMPORT_MARKER" not in feedback and str(ctx.acceptance_dir) not in feedback
