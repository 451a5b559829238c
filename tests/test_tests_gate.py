"""The tests gate against a red base: real git, real pytest with per-test coverage, sandboxed as in production.

A small package with a seeded bug (`add` subtracts) and the bug's own test failing on the base. Each test
commits one change on top and asks the gate, with the base measured once the way a run measures it.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from darkfactory.blobs import BlobStore
from darkfactory.contracts import GateResult
from darkfactory.gates import GateContext, run_gates
from darkfactory.gates.baseline import measure_base
from darkfactory.gates.baseline_data import Baseline
from darkfactory.policy import WHOLE_SUITE_IN_TASK_S, Policy, TaskType, parse_policy
from darkfactory.target_env import ensure_target_env
from darkfactory.workspace import changed_paths, ensure_worktree
from tests.conftest import git

PYPROJECT = '[project]\nname = "calc"\nversion = "0.1.0"\n\n[tool.pytest.ini_options]\ntestpaths = ["tests"]\n'
OPS_BUGGY = "def add(a, b):\n    return a - b\n\n\ndef mul(a, b):\n    return a * b\n"
OPS_FIXED = OPS_BUGGY.replace("a - b", "a + b")
OPS_WRONG = OPS_BUGGY.replace("a - b", "a + b + 1")
TEST_OPS = (
    "from calc.ops import add, mul\n\nEXPECTED_SUM = 5\n\n\n"
    "def check(got, expected):\n"
    "    print(f'expected {expected!r}, got {got!r}')\n"
    "    assert got == expected\n\n\n"
    "def test_add():\n    check(add(2, 3), EXPECTED_SUM)\n\n\n"
    "def test_mul():\n    assert mul(2, 3) == 6\n"
)
TEXT = "def shout(text):\n    return text.upper() + '!'\n"
TEST_TEXT = "from calc.text import shout\n\n\ndef test_shout():\n    assert shout('a') == 'A!'\n"
LIMITS = "LIMIT = 3\n"
TEST_LIMITS = "from calc.limits import LIMIT\n\n\ndef test_limit_is_four():\n    assert LIMIT == 4\n"
BASE = {
    "pyproject.toml": PYPROJECT,
    "calc/__init__.py": "",
    "calc/ops.py": OPS_BUGGY,
    "calc/text.py": TEXT,
    "tests/test_ops.py": TEST_OPS,
    "tests/test_text.py": TEST_TEXT,
}


MEASURED: dict[str, Baseline] = {}
"""Base measurements by tree, for the module (most tests judge a change against the same base)."""


@pytest.fixture(scope="module")
def envs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("envs")


def commit(repo: Path, files: dict[str, str | None], message: str = "change") -> str:
    for path, content in files.items():
        target = repo / path
        if content is None:
            target.unlink()
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(content)
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "--allow-empty", "-m", message)
    return git(repo, "rev-parse", "HEAD")


class Calc:
    """The calc repository at a base commit, measured once, and changes judged against it."""

    def __init__(self, tmp_path: Path, envs: Path, base: dict[str, str | None] | None = None) -> None:
        self.tmp = tmp_path
        self.envs = envs
        self.repo = tmp_path / "calc"
        self.repo.mkdir(parents=True)
        git(self.repo, "init", "-q", "-b", "main")
        self.run_base = commit(self.repo, {**BASE, **(base or {})}, "base")
        self.blobs = BlobStore(tmp_path / "blobs")
        self.baseline = self.measure(self.run_base)
        self.last: GateResult | None = None

    def context(self, sha: str, base_sha: str, name: str) -> GateContext:
        worktree = ensure_worktree(str(self.repo), self.tmp / f"wt-{name}", sha)
        return GateContext(
            worktree=worktree,
            sha=sha,
            changed=changed_paths(str(self.repo), base_sha, sha),
            env=ensure_target_env(worktree, self.envs),
            blobs=self.blobs,
            gates=("tests",),
            repo_path=str(self.repo),
            base_sha=base_sha,
            base_worktree=ensure_worktree(str(self.repo), self.tmp / f"wt-{name}-base", base_sha),
        )

    def measure(self, sha: str) -> Baseline:
        """The base measured as a run measures it; once per tree for the module, as a run caches it."""
        tree = git(self.repo, "rev-parse", f"{sha}^{{tree}}")
        if tree not in MEASURED:
            ctx = self.context(sha, sha, f"measure-{sha[:8]}")
            scratch = self.tmp / f"scratch-{sha[:8]}"
            scratch.mkdir()
            MEASURED[tree], _ = measure_base(ctx, scratch)
        return MEASURED[tree].model_copy(update={"base_sha": sha})

    def judge(
        self,
        files: dict[str, str | None],
        task_type: TaskType = "bugfix",
        policy: Policy | None = None,
        on: str | None = None,
        whole_suite: bool | None = True,
    ) -> tuple[bool, str, str, list[str]]:
        """(passed, summary, feedback, notes) of the tests gate on `files` committed on `on` (the run's base).

        `whole_suite`: the task runs the whole suite (`[merge_queue] full_suite_in_tasks`), as most of these tests
        judge it; False: only the tests the change affects, as the merge queue runs the rest; None: the policy's
        default, which depends on how long the base's suite took."""
        base_sha = on or self.run_base
        policy = policy or Policy()
        if whole_suite is not None:
            queue = policy.merge_queue.model_copy(update={"full_suite_in_tasks": whole_suite})
            policy = policy.model_copy(update={"merge_queue": queue})
        git(self.repo, "checkout", "-q", "--detach", base_sha)
        sha = commit(self.repo, files)
        ctx = dataclasses.replace(
            self.context(sha, base_sha, sha[:8]),
            task_type=task_type,
            policy=policy,
            baseline=self.baseline,
        )
        (result,) = run_gates(ctx).results
        self.last = result
        return result.passed, result.summary, result.feedback, result.notes


@pytest.fixture
def calc(tmp_path: Path, envs: Path) -> Calc:
    return Calc(tmp_path, envs)


# --------------------------------------------------------------------------------------------------
# The base, measured once


def test_the_base_is_measured_once_with_its_failing_tests_and_per_test_coverage(calc: Calc) -> None:
    baseline = calc.baseline

    assert baseline.per_test and baseline.coverage
    assert baseline.failing == ["tests/test_ops.py::test_add"]
    assert "assert -1 == 5" in baseline.messages["tests/test_ops.py::test_add"]
    assert baseline.tests_executing({"calc/ops.py"}) == {"tests/test_ops.py::test_add", "tests/test_ops.py::test_mul"}
    assert baseline.tests_executing({"calc/text.py"}) == {"tests/test_text.py::test_shout"}
    summary = baseline.summary(None)
    assert (summary.failed, summary.passed) == (1, 2)
    assert [f.nodeid for f in summary.failures] == ["tests/test_ops.py::test_add"]


# --------------------------------------------------------------------------------------------------
# A failure is a failure


def test_a_wrong_fix_that_leaves_the_bugs_own_test_failing_is_not_passed(calc: Calc) -> None:
    passed, summary, feedback, _ = calc.judge({"calc/ops.py": OPS_WRONG})

    assert not passed
    assert summary.startswith("1 failed")
    assert "### tests/test_ops.py::test_add (failed on the base too, and your change affects code it runs)" in feedback
    # What the helper printed reaches the agent: expected versus got.
    assert "expected 5, got 6" in feedback and "captured stdout" in feedback


def test_the_right_fix_passes_with_the_bugs_test_as_its_witness(calc: Calc) -> None:
    passed, summary, _, notes = calc.judge({"calc/ops.py": OPS_FIXED})

    assert passed, summary
    assert summary == "3 passed"
    assert "witness (fails on the base, passes with the change): tests/test_ops.py::test_add" in notes


def test_a_change_to_an_unrelated_file_has_no_witness(calc: Calc) -> None:
    passed, summary, feedback, notes = calc.judge({"calc/text.py": TEXT + "\n\n# tidied\n"})

    assert not passed
    assert summary.startswith("no witness")
    assert "these tests fail on the base and still fail" in feedback and "tests/test_ops.py::test_add" in feedback
    assert any(note.startswith("pre-existing") and "test_add" in note for note in notes)


def test_a_refactor_needs_no_witness_and_an_unaffected_base_failure_is_pre_existing(calc: Calc) -> None:
    passed, summary, _, notes = calc.judge({"calc/text.py": TEXT + "\n\n# tidied\n"}, task_type="refactor")

    assert passed, summary
    assert summary == "2 passed, 1 pre-existing failure"
    assert any("tests/test_ops.py::test_add" in note for note in notes if note.startswith("pre-existing"))


def test_strict_base_counts_a_pre_existing_failure(calc: Calc) -> None:
    strict = parse_policy("[tests]\nstrict_base = true\n")

    passed, summary, feedback, _ = calc.judge({"calc/text.py": TEXT + "\n\n# tidied\n"}, "refactor", strict)

    assert not passed and summary.startswith("1 failed")
    assert "strict_base counts it" in feedback


def test_a_quarantined_test_is_ignored_and_listed_with_its_reason(calc: Calc) -> None:
    policy = parse_policy('[tests]\nquarantine = [{test = "tests/test_ops.py::test_add", reason = "see #12"}]\n')

    passed, summary, _, notes = calc.judge({"calc/ops.py": OPS_WRONG}, "refactor", policy)

    assert passed, summary
    assert summary == "2 passed, 1 quarantined"
    assert "quarantined (ignored by the policy): tests/test_ops.py::test_add: see #12 (failed in this run)" in notes


def test_a_base_failure_fixed_on_the_tasks_own_base_counts_when_it_breaks_again(calc: Calc) -> None:
    # The run's base is red; another task fixed it (the integration head); this change breaks it again
    # through a data file that coverage cannot see.
    offset = "json.loads((pathlib.Path(__file__).parent / 'offset.json').read_text())"
    data = f"import json\nimport pathlib\n\nOFFSET = {offset}\n"
    ops = data + "\n\ndef add(a, b):\n    return a + b + OFFSET\n\n\ndef mul(a, b):\n    return a * b\n"
    calc = Calc(calc.tmp / "again", calc.envs, {"calc/ops.py": ops, "calc/offset.json": "1"})
    assert calc.baseline.failing == ["tests/test_ops.py::test_add"]
    head = commit(calc.repo, {"calc/offset.json": "0"}, "another task fixes add")

    passed, summary, feedback, _ = calc.judge(
        {"calc/offset.json": "1", "calc/text.py": TEXT + "# x\n"}, "refactor", on=head
    )

    assert not passed, summary
    assert "tests/test_ops.py::test_add (passed on the commit your change started from)" in feedback


def test_a_change_to_a_module_only_imported_by_a_test_affects_it_through_the_import_graph(calc: Calc) -> None:
    calc = Calc(calc.tmp / "limits", calc.envs, {"calc/limits.py": LIMITS, "tests/test_limits.py": TEST_LIMITS})
    # Coverage sees calc/limits.py run only at import time, outside any test: the import graph decides.
    assert calc.baseline.executed_by_some_test("calc/limits.py") is False

    passed, _, feedback, _ = calc.judge({"calc/limits.py": "LIMIT = 5\n"})

    assert not passed
    assert "tests/test_limits.py::test_limit_is_four (failed on the base too, and your change affects" in feedback


def test_without_coverage_the_import_graph_finds_the_affected_tests(calc: Calc) -> None:
    calc.baseline = calc.baseline.model_copy(update={"coverage_files": None, "coverage_tests": {}})

    passed, _, feedback, _ = calc.judge({"calc/ops.py": OPS_WRONG})

    assert not passed
    assert "tests/test_ops.py::test_add (failed on the base too, and your change affects code it runs)" in feedback


# --------------------------------------------------------------------------------------------------
# Witnesses


WHISPER = TEXT + "\n\ndef whisper(text):\n    return text.lower() + '...'\n"


def test_a_feature_whose_new_test_passes_on_the_base_already_has_no_witness(calc: Calc) -> None:
    toothless = "from calc.text import shout\n\n\ndef test_shout_again():\n    assert shout('b') == 'B!'\n"

    passed, summary, feedback, _ = calc.judge({"calc/text.py": WHISPER, "tests/test_whisper.py": toothless}, "feature")

    assert not passed and summary.startswith("no witness")
    assert "your new tests pass against the code before your change as well" in feedback
    assert "tests/test_whisper.py::test_shout_again" in feedback


def test_a_feature_whose_new_test_fails_on_the_base_has_a_witness(calc: Calc) -> None:
    biting = "from calc.text import whisper\n\n\ndef test_whisper():\n    assert whisper('A') == 'a...'\n"

    passed, summary, _, notes = calc.judge({"calc/text.py": WHISPER, "tests/test_whisper.py": biting}, "feature")

    assert passed, summary
    assert summary == "3 passed, 1 pre-existing failure"
    assert "witness (fails on the base, passes with the change): tests/test_whisper.py::test_whisper" in notes


def test_a_new_test_written_into_an_existing_test_file_can_be_the_witness(calc: Calc) -> None:
    tests = TEST_TEXT.replace("import shout", "import shout, whisper") + (
        "\n\ndef test_whisper():\n    assert whisper('A') == 'a...'\n"
    )

    passed, summary, _, notes = calc.judge({"calc/text.py": WHISPER, "tests/test_text.py": tests}, "feature")

    assert passed, summary
    assert any("tests/test_text.py::test_whisper (your version of the file)" in note for note in notes), notes


# --------------------------------------------------------------------------------------------------
# Weakening is impossible: the base's tests and configuration run against the changed code


@pytest.mark.parametrize(
    ("weakening", "files"),
    [
        (
            "an early return",
            {"tests/test_ops.py": TEST_OPS.replace("def test_add():\n", "def test_add():\n    return\n")},
        ),
        (
            "an edited expected constant",
            {"tests/test_ops.py": TEST_OPS.replace("EXPECTED_SUM = 5", "EXPECTED_SUM = -1")},
        ),
        (
            "a conftest deselection hook",
            {
                "tests/conftest.py": (
                    "def pytest_collection_modifyitems(config, items):\n"
                    "    items[:] = [item for item in items if 'test_add' not in item.nodeid]\n"
                )
            },
        ),
        ("addopts = -k in pytest.ini", {"pytest.ini": "[pytest]\naddopts = -k 'not test_add'\n"}),
        (
            "a sitecustomize.py that sets PYTEST_ADDOPTS",
            {"sitecustomize.py": "import os\n\nos.environ['PYTEST_ADDOPTS'] = \"-k 'not test_add'\"\n"},
        ),
        (
            "addopts = -k in pyproject.toml",
            {"pyproject.toml": PYPROJECT + "addopts = \"-k 'not test_add'\"\n"},
        ),
    ],
)
def test_a_weakened_test_still_runs_as_the_base_has_it(calc: Calc, weakening: str, files: dict[str, str]) -> None:
    passed, summary, feedback, notes = calc.judge({"calc/text.py": TEXT + "# touched\n", **files})

    assert not passed, f"{weakening}: {summary}"
    assert "tests/test_ops.py::test_add" in feedback, weakening
    assert any("the base's versions of" in note or "not used" in note for note in notes), notes


def test_a_test_task_may_edit_tests_and_its_own_versions_run(calc: Calc) -> None:
    weakened = TEST_OPS.replace("EXPECTED_SUM = 5", "EXPECTED_SUM = -1")

    passed, summary, _, _ = calc.judge({"tests/test_ops.py": weakened}, task_type="test")

    assert passed, summary
    assert summary == "3 passed"


def test_code_that_makes_a_base_test_skip_counts_as_a_failure(calc: Calc) -> None:
    skipping = OPS_BUGGY.replace("    return a - b\n", "    import pytest\n\n    pytest.skip('not today')\n")

    passed, summary, feedback, _ = calc.judge({"calc/ops.py": skipping}, "refactor")

    assert not passed, summary
    assert "tests/test_ops.py::test_add: was skipped with your change; it ran on the base (failed there)" in feedback


def test_a_new_test_that_fails_on_the_base_only_for_want_of_its_new_helper_is_no_witness(calc: Calc) -> None:
    helper = "def expected():\n    return 'A!'\n"
    test = "from tests.helpers import expected\nfrom calc.text import shout\n\n\ndef test_shout_helper():\n"
    test += "    assert shout('a') == expected()\n"
    files = {"tests/__init__.py": "", "tests/helpers.py": helper, "tests/test_helper.py": test, "calc/text.py": WHISPER}

    passed, summary, _, _ = calc.judge(files, "feature")

    assert not passed and summary.startswith("no witness"), summary


def test_a_test_task_may_delete_a_test_and_that_test_is_not_asked_for(calc: Calc) -> None:
    passed, summary, _, _ = calc.judge({"tests/test_text.py": None}, task_type="test")

    assert passed, summary
    assert summary == "1 passed, 1 pre-existing failure"


# Generated ids that differ in every process, as a parametrization over a set of tuples holding None does in
# Python 3.11 (its hash follows the address layout): the base's ids are never the change's.
TEST_CASES_MOVING_IDS = (
    "import uuid\n\nimport pytest\n\nfrom calc.text import shout\n\n\n"
    "@pytest.mark.parametrize('word', ['a', 'b', 'c'], ids=lambda word: f'{word}-{uuid.uuid4().hex[:8]}')\n"
    "def test_shout_each(word):\n    assert shout(word) == word.upper() + '!'\n"
)


def test_parametrized_ids_that_move_between_processes_are_not_tests_that_vanished(tmp_path: Path, envs: Path) -> None:
    calc = Calc(tmp_path, envs, {"tests/test_cases.py": TEST_CASES_MOVING_IDS})

    passed, summary, feedback, _ = calc.judge({"calc/text.py": TEXT + "\n\n# tidy\n"}, "refactor")

    assert passed, f"{summary}\n{feedback}"


def test_a_parametrized_case_that_stops_running_still_counts_when_ids_move(tmp_path: Path, envs: Path) -> None:
    calc = Calc(tmp_path, envs, {"tests/test_cases.py": TEST_CASES_MOVING_IDS})
    skipping_b = TEXT.replace(
        "    return text.upper() + '!'\n",
        "    if text == 'b':\n        import pytest\n\n        pytest.skip('no')\n    return text.upper() + '!'\n",
    )

    passed, summary, feedback, _ = calc.judge({"calc/text.py": skipping_b}, "refactor")

    assert not passed, summary
    assert "did not run with your change" in feedback or "was skipped with your change" in feedback


# --------------------------------------------------------------------------------------------------
# A task runs the tests its change affects; the merge queue runs the whole suite (issue 12)


def test_a_task_runs_only_the_tests_its_change_affects(calc: Calc) -> None:
    passed, summary, _, notes = calc.judge({"calc/ops.py": OPS_FIXED}, whole_suite=False)

    assert passed, summary
    assert summary == "2 passed in 1 affected test file(s)"  # tests/test_text.py did not run
    assert calc.last is not None and not calc.last.full_suite and not calc.last.exact_tree
    assert "witness (fails on the base, passes with the change): tests/test_ops.py::test_add" in notes


def test_with_only_the_affected_tests_a_wrong_fix_still_fails(calc: Calc) -> None:
    passed, summary, feedback, _ = calc.judge({"calc/ops.py": OPS_WRONG}, whole_suite=False)

    assert not passed
    assert summary.startswith("1 failed") and "the merge queue runs the whole suite" in summary
    assert "tests/test_ops.py::test_add" in feedback


def test_with_only_the_affected_tests_code_that_skips_them_still_fails(calc: Calc) -> None:
    # The fix also makes the module skip whoever imports it: the affected tests vanish, which counts.
    skipping = "import pytest\n\npytest.skip('not today', allow_module_level=True)\n\n" + OPS_FIXED
    passed, summary, feedback, _ = calc.judge({"calc/ops.py": skipping}, whole_suite=False)

    assert not passed, summary
    assert "did not run or were skipped" in summary and "tests/test_ops.py::test_mul" in feedback


def test_with_only_the_affected_tests_a_change_that_breaks_another_test_fails_there(calc: Calc) -> None:
    # The break is in code the bug's test never runs but another test does: coverage ties that test to it.
    files = {"calc/ops.py": OPS_FIXED, "calc/text.py": TEXT.replace("+ '!'", "+ '?'")}
    passed, summary, feedback, _ = calc.judge(files, whole_suite=False)

    assert not passed and "tests/test_text.py::test_shout" in feedback, summary
    assert calc.last is not None and not calc.last.full_suite


def test_by_default_a_quick_suite_runs_whole_in_the_task_and_a_slow_one_only_its_affected_tests(calc: Calc) -> None:
    # Under WHOLE_SUITE_IN_TASK_S, finding the affected tests would cost as much as running them all, and a
    # whole-suite pass in the commit's own tree spares the merge queue's check. (The measured duration is set
    # here: on a loaded machine the calc suite's own can cross the line either way.)
    calc.baseline = calc.baseline.model_copy(update={"duration_s": WHOLE_SUITE_IN_TASK_S / 2})
    passed, summary, _, _ = calc.judge({"calc/ops.py": OPS_FIXED}, whole_suite=None)
    assert passed and summary == "3 passed"
    assert calc.last is not None and calc.last.full_suite and calc.last.exact_tree

    calc.baseline = calc.baseline.model_copy(update={"duration_s": WHOLE_SUITE_IN_TASK_S * 5})
    passed, summary, _, _ = calc.judge({"calc/ops.py": OPS_FIXED}, whole_suite=None)
    assert passed and summary == "2 passed in 1 affected test file(s)"
    assert calc.last is not None and not calc.last.full_suite
