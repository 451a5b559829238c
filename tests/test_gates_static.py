"""The scope and secrets gates on real git repositories with the real scanners.

Fake credentials are generated at run time from parts, so no key-shaped literal lives in this file.
"""

from __future__ import annotations

import secrets
import string
from collections.abc import Callable
from pathlib import Path

import pytest

from darkfactory.blobs import BlobStore
from darkfactory.gates import GateContext
from darkfactory.gates.scope import scope_gate, weakened_tests
from darkfactory.gates.secrets import detect_secrets_findings, secrets_gate
from darkfactory.policy import Limits, Policy, TaskTypeRules
from darkfactory.target_env import TargetEnv
from tests.conftest import git
from tests.gate_repos import change_context as context
from tests.gate_repos import commit

CALC = "def add(a, b):\n    return a + b\n"
TEST_CALC = """import pytest

from calc import add


def test_add():
    assert add(1, 2) == 3
    assert add(0, 0) == 0


@pytest.mark.parametrize(("a", "b", "total"), [(1, 1, 2), (2, 3, 5)])
def test_add_cases(a, b, total):
    assert add(a, b) == total


def test_negative():
    assert add(-1, -1) == -2
"""
BASE_FILES = {
    "calc.py": CALC,
    "tests/test_calc.py": TEST_CALC,
    "README.md": "# calc\n",
    "docs/guide.md": "# Guide\n",
}


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    path = tmp_path / "target"
    path.mkdir()
    git(path, "init", "-q", "-b", "main")
    commit(path, dict(BASE_FILES), "base")
    return path


def finding(feedback: str, location: str) -> str:
    """The feedback line about `location` (`path:line`); "" when there is none."""
    return next((line for line in feedback.splitlines() if line.startswith(f"- {location}: ")), "")


def random_text(length: int, alphabet: str = string.ascii_letters + string.digits) -> str:
    return "".join(secrets.choice(alphabet) for _ in range(length))


def fake_anthropic_key() -> str:
    return "-".join(["sk", "ant", "api03", random_text(93)]) + "AA"


def fake_aws_key_id() -> str:
    return "AK" + "IA" + random_text(16, string.ascii_uppercase + string.digits)


def fake_github_token() -> str:
    return "gh" + "p_" + random_text(36)


def pem_header() -> str:
    return "-----" + " ".join(["BEGIN", "RSA", "PRIVATE", "KEY"]) + "-----"


# --------------------------------------------------------------------------------------------------
# scope: paths


def test_allowed_change_passes_with_a_diffstat(repo: Path) -> None:
    ctx = context(repo, {"calc.py": CALC + "\n\ndef sub(a, b):\n    return a - b\n"})

    result = scope_gate(ctx)

    assert result.passed and not result.needs_approval
    assert result.summary == "1 file(s), +4/-0 lines, within scope"
    assert result.details_ref is not None
    assert "calc.py" in ctx.blobs.get_text(result.details_ref)


def test_docs_task_may_edit_markdown(repo: Path) -> None:
    result = scope_gate(context(repo, {"docs/guide.md": "# Guide\n\nMore.\n"}, task_type="docs"))

    assert result.passed


def test_docs_task_touching_source_fails(repo: Path) -> None:
    result = scope_gate(context(repo, {"docs/guide.md": "# Guide\n\nMore.\n", "src/x.py": "X = 1\n"}, task_type="docs"))

    assert not result.passed
    assert "src/x.py: not in the allowed paths" in result.feedback
    assert "docs/guide.md" not in result.feedback


def test_deleted_path_counts_as_touched(repo: Path) -> None:
    result = scope_gate(context(repo, {"calc.py": None}, task_type="docs"))

    assert not result.passed
    assert "calc.py" in result.feedback


def test_denied_glob_wins_over_allowed(repo: Path) -> None:
    policy = Policy(task_types={"feature": TaskTypeRules(denied=["vendor/**"])})

    result = scope_gate(context(repo, {"vendor/lib.py": "X = 1\n"}, policy=policy))

    assert not result.passed
    assert "vendor/lib.py: denied by `vendor/**`" in result.feedback


def test_policy_change_needs_approval(repo: Path) -> None:
    result = scope_gate(context(repo, {".factory/policy.toml": "gates = ['scope']\n"}))

    assert result.passed
    assert ".factory/policy.toml" in result.needs_approval


def test_ci_workflow_change_needs_approval(repo: Path) -> None:
    result = scope_gate(context(repo, {".github/workflows/ci.yml": "on: push\n"}))

    assert result.passed
    assert "protected" in result.needs_approval and ".github/workflows/ci.yml" in result.needs_approval


def test_big_diff_needs_approval(repo: Path) -> None:
    policy = Policy(limits=Limits(max_diff_lines=10))
    body = "".join(f"X{n} = {n}\n" for n in range(20))

    result = scope_gate(context(repo, {"big.py": body}, policy=policy))

    assert result.passed
    assert result.needs_approval == "20 changed lines exceed the limit of 10"


def test_protected_and_big_give_both_reasons(repo: Path) -> None:
    policy = Policy(limits=Limits(max_diff_lines=10))
    body = "".join(f"# line {n}\n" for n in range(20))

    result = scope_gate(context(repo, {".github/workflows/ci.yml": body}, policy=policy))

    assert result.passed
    assert "protected" in result.needs_approval and "exceed the limit" in result.needs_approval


def test_scope_check_that_cannot_diff_fails_closed(tmp_path: Path) -> None:
    not_a_repo = tmp_path / "plain"
    not_a_repo.mkdir()
    ctx = GateContext(
        worktree=not_a_repo,
        sha="0" * 40,
        changed=[],
        env=TargetEnv(root=tmp_path, fingerprint="x"),
        blobs=BlobStore(tmp_path / "blobs"),
        repo_path=str(not_a_repo),
        base_sha="1" * 40,
    )

    result = scope_gate(ctx)

    assert not result.passed and result.summary == "scope check failed: GitError"


# --------------------------------------------------------------------------------------------------
# scope: test weakening


WEAKENINGS = {
    "removed assert": (TEST_CALC.replace("    assert add(0, 0) == 0\n", ""), "test_add: 1 assert(s) fewer"),
    "new skip mark": (
        TEST_CALC.replace("def test_negative", '@pytest.mark.skip(reason="flaky")\ndef test_negative'),
        "test_negative: new `pytest.mark.skip`",
    ),
    "edited expected value": (TEST_CALC.replace("== 3", "== 4"), "test_add: assert(s) edited"),
    "edited parametrize case": (TEST_CALC.replace("(2, 3, 5)", "(2, 3, 6)"), "test_add_cases: parametrize case"),
    "deleted test file": (None, "tests/test_calc.py: test file deleted"),
    "removed test function": (
        TEST_CALC.replace("\n\ndef test_negative():\n    assert add(-1, -1) == -2\n", "\n"),
        "test_negative: test removed",
    ),
    "pytest.skip call": (
        TEST_CALC.replace("def test_add():\n", "def test_add():\n    pytest.skip()\n"),
        "test_add: new `pytest.skip`",
    ),
    "no longer parses": (TEST_CALC + "\ndef broken(:\n", "no longer parses"),
}


@pytest.mark.parametrize("name", list(WEAKENINGS))
def test_weakened_tests_fail_a_feature_task(repo: Path, name: str) -> None:
    new_source, expected = WEAKENINGS[name]

    result = scope_gate(context(repo, {"tests/test_calc.py": new_source}))

    assert not result.passed
    assert "existing test(s) weakened" in result.summary
    assert expected in result.feedback
    assert "tests/test_calc.py" in result.feedback


@pytest.mark.parametrize("name", list(WEAKENINGS))
def test_test_tasks_may_change_existing_tests(repo: Path, name: str) -> None:
    new_source, _expected = WEAKENINGS[name]

    result = scope_gate(context(repo, {"tests/test_calc.py": new_source}, task_type="test"))

    assert result.passed


def test_new_test_function_passes(repo: Path) -> None:
    new_test = "\n\ndef test_zero():\n    assert add(0, 5) == 5\n"

    result = scope_gate(context(repo, {"tests/test_calc.py": TEST_CALC + new_test}))

    assert result.passed


def test_new_test_file_with_its_own_skip_passes(repo: Path) -> None:
    new_file = "import pytest\n\n\n@pytest.mark.skip\ndef test_later():\n    assert True\n"

    result = scope_gate(context(repo, {"tests/test_more.py": new_file}))

    assert result.passed


def test_reformatting_a_test_is_not_weakening() -> None:
    reformatted = TEST_CALC.replace("add(1, 2) == 3", "add( 1,2 )==3").replace("\n\n\n", "\n\n")

    assert weakened_tests(TEST_CALC, reformatted, "tests/test_calc.py") == []


def test_adding_asserts_and_cases_is_not_weakening() -> None:
    stronger = TEST_CALC.replace("(2, 3, 5)]", "(2, 3, 5), (0, 0, 0)]").replace(
        "assert add(-1, -1) == -2\n", "assert add(-1, -1) == -2\n    assert add(-1, 1) == 0\n"
    )

    assert weakened_tests(TEST_CALC, stronger, "tests/test_calc.py") == []


def test_module_level_and_unittest_skips_are_weakening() -> None:
    base = "import unittest\n\n\nclass TestCalc(unittest.TestCase):\n"
    base += "    def test_one(self):\n        self.assertEqual(1, 1)\n"
    class_skip = base.replace("class TestCalc", '@unittest.skip("later")\nclass TestCalc')
    module_mark = "import pytest\n\npytestmark = pytest.mark.xfail\n" + base
    skip_test = base.replace("        self.assertEqual", '        self.skipTest("later")\n        self.assertEqual')

    assert weakened_tests(base, class_skip, "t/test_u.py") == ["t/test_u.py:4 TestCalc: new `unittest.skip`"]
    assert weakened_tests(base, module_mark, "t/test_u.py") == ["t/test_u.py:3 module level: new `pytest.mark.xfail`"]
    assert weakened_tests(base, skip_test, "t/test_u.py") == ["t/test_u.py:6 TestCalc.test_one: new `self.skipTest`"]


def test_new_and_non_python_test_files_are_not_weakened() -> None:
    assert weakened_tests(None, TEST_CALC, "tests/test_new.py") == []
    assert weakened_tests("a,b\n", "a,c\n", "tests/data.csv") == []


# --------------------------------------------------------------------------------------------------
# secrets


@pytest.mark.parametrize(
    ("maker", "kind"),
    [
        (fake_anthropic_key, "Anthropic API key"),
        (fake_aws_key_id, "AWS access key id"),
        (fake_github_token, "GitHub token"),
    ],
)
def test_added_credential_fails_with_value_redacted(repo: Path, maker: Callable[[], str], kind: str) -> None:
    value = maker()
    ctx = context(repo, {"calc.py": CALC + f'\nTOKEN = "{value}"\n'})

    result = secrets_gate(ctx)

    assert not result.passed
    assert kind in finding(result.feedback, "calc.py:4") and finding(result.feedback, "calc.py:4").endswith(
        f"({value[:4]}…)"
    )
    assert result.details_ref is not None
    details = ctx.blobs.get_text(result.details_ref)
    for text in (result.feedback, result.summary, details):
        assert value not in text and value[4:] not in text


def test_private_key_header_fails(repo: Path) -> None:
    body = pem_header() + "\n" + random_text(64) + "\n"

    result = secrets_gate(context(repo, {"deploy/key.pem": body}))

    assert not result.passed
    assert "private key" in finding(result.feedback, "deploy/key.pem:1")


def test_worker_secret_value_fails_by_exact_match(repo: Path) -> None:
    value = "wrk" + random_text(29, string.ascii_lowercase)

    result = secrets_gate(context(repo, {"README.md": f"# calc\n\nsee {value}\n"}, secret_values=(value, "short")))

    assert not result.passed
    assert finding(result.feedback, "README.md:3") == f"- README.md:3: worker secret value ({value[:4]}…)"
    assert value not in result.feedback


def test_allowlist_pragma_does_not_hide_a_secret(repo: Path) -> None:
    password = random_text(24)
    line = f'DB_PASSWORD = "{password}"  # pragma: ' + "allowlist secret\n"

    result = secrets_gate(context(repo, {"settings.py": line}))

    assert not result.passed
    assert "suppression marker" in finding(result.feedback, "settings.py:1")
    assert "Secret Keyword" in finding(result.feedback, "settings.py:1")
    assert password not in result.feedback


def test_detect_secrets_ignores_the_inline_allowlist() -> None:
    line = f'password = "{random_text(24)}"  # pragma: ' + "allowlist secret"

    findings = detect_secrets_findings({"app/settings.py": [(42, line)]})

    assert ("app/settings.py", 42, "Secret Keyword") in [(f.path, f.line, f.kind) for f in findings]


def test_clean_change_passes(repo: Path) -> None:
    ctx = context(repo, {"calc.py": CALC + "\n\ndef sub(a, b):\n    return a - b\n"}, secret_values=("x" * 40,))

    result = secrets_gate(ctx)

    assert result.passed, result.feedback
    assert result.summary == "no secrets in 4 added line(s) across 1 file(s)"


def test_secret_already_on_the_base_is_not_this_changes_finding(repo: Path) -> None:
    key = fake_aws_key_id()
    commit(repo, {"config.py": f'KEY_ID = "{key}"\nREGION = "eu-west-1"\n'}, "legacy config")

    result = secrets_gate(context(repo, {"config.py": f'KEY_ID = "{key}"\nREGION = "eu-central-1"\n'}))

    assert result.passed, result.feedback


def test_line_numbers_are_those_of_the_new_file(repo: Path) -> None:
    lines = [f"X{n} = {n}\n" for n in range(30)]
    commit(repo, {"many.py": "".join(lines)}, "many")
    lines[19] = f'TOKEN = "{fake_github_token()}"\n'

    result = secrets_gate(context(repo, {"many.py": "".join(lines)}))

    assert "GitHub token" in finding(result.feedback, "many.py:20")


def test_diff_attribute_does_not_hide_a_text_file(repo: Path) -> None:
    (repo / ".git" / "info" / "attributes").write_text("*.py -diff\n")

    result = secrets_gate(context(repo, {"calc.py": CALC + f'KEY = "{fake_aws_key_id()}"\n'}))

    assert not result.passed
    assert "AWS access key id" in finding(result.feedback, "calc.py:3")


def test_binary_file_is_searched_for_worker_secrets_only(repo: Path) -> None:
    value = "wrk" + random_text(29, string.ascii_lowercase)
    (repo / "blob.bin").write_bytes(b"\x00\x01" + value.encode() + b"\xff" + fake_aws_key_id().encode())
    ctx = context(repo, {}, secret_values=(value,))

    result = secrets_gate(ctx)

    assert not result.passed
    assert finding(result.feedback, "blob.bin:1") == f"- blob.bin:1: worker secret value ({value[:4]}…)"
    assert result.summary == "1 finding(s) in added lines"


def test_scanner_that_cannot_run_fails_closed(tmp_path: Path) -> None:
    not_a_repo = tmp_path / "plain"
    not_a_repo.mkdir()
    ctx = GateContext(
        worktree=not_a_repo,
        sha="0" * 40,
        changed=["calc.py"],
        env=TargetEnv(root=tmp_path, fingerprint="x"),
        blobs=BlobStore(tmp_path / "blobs"),
        repo_path=str(not_a_repo),
        base_sha="1" * 40,
    )

    result = secrets_gate(ctx)

    assert not result.passed
    assert result.summary == "secret scanner failed: GitError"
