"""Nothing broken reaches main: a real third-party package (cachetools, its own 216 tests) with a seeded bug.

The plan carries no acceptance criteria and the reviewer approves everything, so the tests gate alone
stands between a wrong fix and main, exactly as when a wrong fix was once merged and shipped. The model
answers through the real Anthropic SDK from a local Messages API server, so the feedback each retry
receives is read back from the requests themselves.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from temporalio.client import Client

from darkfactory.scripted import context_from_request
from darkfactory.testing.fake_messages_api import FakeMessagesServer, RecordedRequest, ScriptResponder
from darkfactory.workflows import FactoryRunWorkflow
from tests.conftest import escalation_of, git, request_for, run_to_end
from tests.test_escalation import address, cli, started, with_policy
from tests.third_party import (
    CACHETOOLS,
    SOURCE_FILE,
    edit_attempt,
    fix_transcript,
    right_fix_after_wrong,
    sdist_repo,
    wrong_fix,
)

TASK = "fix-typedkey"
TYPEDKEY_TEST = "tests/test_keys.py::CacheKeysTest::test_typedkey"
SPEC = """\
# typedkey ignores the types of positional arguments

`cachetools.keys.typedkey(1, 2, 3) == typedkey(1.0, 2.0, 3.0)`, so a cache keyed with typedkey returns
the result computed for `f(1)` when called as `f(1.0)`. Typed keys must differ when argument types differ.
"""
UNRELATED = edit_attempt("README.rst", "cachetools\n=====", "cachetools, with typed keys\n=====")
WRONG_FIX = wrong_fix(CACHETOOLS)
RIGHT_FIX = right_fix_after_wrong(CACHETOOLS)
FEATURE = [
    {
        "content": [
            {
                "type": "tool_use",
                "name": "str_replace_based_edit_tool",
                "input": {"command": "create", "path": path, "file_text": text},
            }
            for path, text in (
                ("src/cachetools/clamp.py", "def clamp(value, low, high):\n    return max(low, min(value, high))\n"),
                (
                    "tests/test_clamp.py",
                    "from cachetools.clamp import clamp\n\n\ndef test_clamp():\n    assert clamp(5, 0, 3) == 3\n",
                ),
            )
        ]
    },
    {"content": [{"type": "text", "text": "Done."}], "stop_reason": "end_turn"},
]
"""Unrelated work with its own witness: a new module and a test that fails without it."""
WEAKENED = edit_attempt(
    "tests/test_keys.py",
    "    def test_typedkey(self, key=cachetools.keys.typedkey):\n",
    "    def test_typedkey(self, key=cachetools.keys.typedkey):\n        return\n",
)


def transcript(tmp_path: Path, task_type: str, *attempts: list[dict[str, Any]]) -> Path:
    return fix_transcript(tmp_path, CACHETOOLS, task_type, *attempts, task_id=TASK)


async def cli_async(server: str, *args: str) -> subprocess.CompletedProcess[str]:
    """`factory ...` without blocking the event loop: the in-process worker must answer its queries meanwhile."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TEMPORAL_", "ANTHROPIC_"))}
    process = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).parent / "factory"),
        *args,
        env={**env, "TEMPORAL_ADDRESS": server, "COLUMNS": "200"},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=120)
    return subprocess.CompletedProcess(args, process.returncode or 0, out.decode(), err.decode())


def first_request(requests: list[RecordedRequest], attempt: int) -> str:
    body = next(r.body for r in requests if context_from_request(r.body).key == f"agent:{TASK}:{attempt}:1")
    return json.dumps(body["messages"][0]["content"])


async def test_wrong_fixes_are_retried_with_the_bugs_failing_test_and_the_right_fix_merges_green(
    client: Client, factory_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = sdist_repo(tmp_path / "cachetools")
    seeded_main = git(repo, "rev-parse", "main")
    upstream = git(repo, "rev-parse", f"main~1:{SOURCE_FILE}")
    script = transcript(tmp_path, "bugfix", UNRELATED, WRONG_FIX, RIGHT_FIX)
    with FakeMessagesServer(ScriptResponder(script)) as server:
        monkeypatch.setenv("ANTHROPIC_BASE_URL", server.base_url)
        monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-test-seeded")
        request = request_for(repo, "claude-sonnet-5-5").model_copy(update={"spec": SPEC})
        summary = await run_to_end(client, factory_home, request)
        requests = server.requests

    assert summary.succeeded, summary.error
    # The base was measured once: the bug's own tests fail there, and the planner was told which.
    assert summary.baseline is not None and summary.baseline.coverage
    assert TYPEDKEY_TEST in [failure.nodeid for failure in summary.baseline.failures]
    plan_request = json.dumps(next(r.body for r in requests if context_from_request(r.body).purpose == "plan"))
    assert TYPEDKEY_TEST in plan_request
    # Attempt 1 changed only the README: no witness, and it was told so.
    second = first_request(requests, 2)
    assert "no witness" in second and "these tests fail on the base and still fail" in second
    # Attempt 2 left the bug's test failing: it counts, and the retry sees that test and why.
    third = first_request(requests, 3)
    assert f"{TYPEDKEY_TEST} (failed on the base too, and your change affects code it runs)" in third
    assert third.index("### tests/test_keys.py") < third.index("### tests/test_func.py")  # narrowest first
    assert "(1, 2, 3) == (1.0, 2.0, 3.0)" in third or "AssertionError" in third
    [task] = summary.tasks
    assert (task.state, task.attempts) == ("merged", 3)
    # Main holds the upstream file byte for byte, and its whole suite is green.
    assert git(repo, "rev-parse", f"main:{SOURCE_FILE}") == upstream
    assert git(repo, "rev-list", "--count", f"{seeded_main}..main") == "1"
    tests = next(gate for gate in summary.final_gates if gate.gate == "tests")
    passed = re.search(r"^(\d+) passed$", tests.summary)
    assert tests.passed and passed and int(passed.group(1)) >= 200, tests.summary


async def test_a_task_whose_every_attempt_is_wrong_escalates_and_main_does_not_move(
    client: Client, factory_home: Path, tmp_path: Path
) -> None:
    repo = sdist_repo(tmp_path / "cachetools")
    seeded_main = git(repo, "rev-parse", "main")
    # A weakened test (an early return the scope gate does not see), then a wrong fix.
    script = transcript(tmp_path, "bugfix", WEAKENED, WRONG_FIX)
    request = request_for(repo, f"scripted:{script}", max_attempts=2).model_copy(update={"spec": SPEC})
    async with started(client, factory_home, request) as handle:
        progress = await escalation_of(client, request.run_id, TASK)
        assert "attempt caps spent after 2 attempt(s)" in progress["escalation"]["reason"]
        state = await handle.query(FactoryRunWorkflow.status)
        assert state is not None
        [task] = state.tasks
        assert task.state == "escalated" and task.escalation is not None
        assert "tests" in task.escalation.reason
        status = await cli_async(address(client), "status", request.run_id)
        assert status.returncode == 0, status.stderr
        assert "escalated" in status.stdout and "waiting for a person since" in status.stdout
        shown = " ".join(status.stdout.split())
        assert "13 fail there" in shown and "failing on the base: tests/test_cached.py::" in shown, shown
        assert git(repo, "rev-parse", "main") == seeded_main
        answer = cli(address(client), "reject", request.run_id, TASK, "--by", "ana", "--note", "still broken")
        assert answer.returncode == 0, answer.stderr
        summary = await handle.result()

    assert summary.phase == "failed" and summary.shipped_sha is None
    assert summary.tasks[0].state == "rejected"
    assert git(repo, "rev-parse", "main") == seeded_main


async def test_an_unrelated_change_merges_over_pre_existing_failures_and_they_are_listed(
    client: Client, factory_home: Path, tmp_path: Path
) -> None:
    repo = sdist_repo(tmp_path / "cachetools")
    request = request_for(repo, f"scripted:{transcript(tmp_path, 'feature', FEATURE)}", ship="merge")
    summary = await run_to_end(client, factory_home, request)

    assert summary.succeeded, summary.error
    tests = next(gate for gate in summary.final_gates if gate.gate == "tests")
    assert "pre-existing failures" in tests.summary
    assert any(TYPEDKEY_TEST in note for note in tests.notes if note.startswith("pre-existing"))


async def test_with_strict_base_pre_existing_failures_count_and_nothing_merges(
    client: Client, factory_home: Path, tmp_path: Path
) -> None:
    repo = sdist_repo(tmp_path / "cachetools")
    with_policy(repo, "[tests]\nstrict_base = true\n\n[escalation]\non_caps_spent = 'fail'\n")
    before = git(repo, "rev-parse", "main")
    script = transcript(tmp_path, "feature", FEATURE)
    request = request_for(repo, f"scripted:{script}", ship="merge", max_attempts=1)
    summary = await run_to_end(client, factory_home, request)

    assert summary.phase == "failed" and summary.tasks[0].state == "failed"
    assert "strict_base" in json.dumps([g.model_dump() for g in summary.tasks[0].gates])
    assert git(repo, "rev-parse", "main") == before


async def test_quarantined_tests_are_ignored_and_listed(client: Client, factory_home: Path, tmp_path: Path) -> None:
    repo = sdist_repo(tmp_path / "cachetools")
    quarantine = ", ".join(
        f'{{ test = "{path}", reason = "seeded bug, tracked in #1" }}'
        for path in ("tests/test_keys.py", "tests/test_cached.py", "tests/test_func.py", "tests/test_cachedmethod.py")
    )
    with_policy(repo, f"[tests]\nstrict_base = true\nquarantine = [{quarantine}]\n")
    request = request_for(repo, f"scripted:{transcript(tmp_path, 'feature', FEATURE)}", ship="merge")
    summary = await run_to_end(client, factory_home, request)

    assert summary.succeeded, summary.error
    tests = next(gate for gate in summary.final_gates if gate.gate == "tests")
    assert "quarantined" in tests.summary and "pre-existing" not in tests.summary
    listed = [note for note in tests.notes if note.startswith("quarantined")]
    assert any("tests/test_keys.py: seeded bug, tracked in #1" in note for note in listed), listed
