"""The final verification runs only where it adds something (issue 12, part 1), on a real Temporal server.

A run whose last merge lands the very tree its task's gates passed in (nothing merged since the task branched,
the whole suite run in that tree) does not run the integration gates again. Where the trees differ (a task
whose existing tests ran in the base's version, a merge that combined work), the verification still runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from temporalio.client import Client

from darkfactory.constants import run_workflow_id, task_workflow_id
from darkfactory.contracts import RunState
from tests.test_escalation import with_policy
from tests.test_parallel import EDIT, NO_MODEL_GATES, done, module, module_test, plan, running, task, tool, turn

SHOUT = [[turn(module("shout", "shout", "text.upper()"), module_test("shout", "shout", "hi", "HI")), done()]]


async def gate_runs(client: Client, workflow_id: str) -> int:
    """How many `run_gates` activities the workflow's history scheduled."""
    history = await client.get_workflow_handle(workflow_id).fetch_history()
    return sum(
        event.activity_task_scheduled_event_attributes.activity_type.name == "run_gates"
        for event in history.events
        if event.HasField("activity_task_scheduled_event_attributes")
    )


async def run(
    client: Client, home: Path, repo: Path, transcript: dict[str, Any], tmp_path: Path, mp: pytest.MonkeyPatch
) -> RunState:
    with_policy(repo, NO_MODEL_GATES)
    async with running(client, home, repo, transcript, tmp_path, mp, max_parallel=2) as (handle, _server, _held):
        summary = await handle.result()
    assert summary.succeeded, summary.error
    return summary


async def test_a_one_task_run_runs_its_gates_once_and_ships(
    client: Client, factory_home: Path, demo_repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    transcript = {"plan": plan(task("add-shout")), "tasks": {"add-shout": SHOUT}}
    summary = await run(client, factory_home, demo_repo, transcript, tmp_path, monkeypatch)

    assert await gate_runs(client, run_workflow_id(summary.run_id)) == 0  # no verification of the same tree
    assert await gate_runs(client, task_workflow_id(summary.run_id, "add-shout")) == 1
    assert [g.gate for g in summary.final_gates] == ["secrets", "syntax", "lint", "tests"]
    assert all(
        g.passed and any("this very tree passed it in task add-shout" in n for n in g.notes)
        for g in summary.final_gates
    )


async def test_a_task_whose_edited_tests_ran_as_the_base_has_them_is_verified_again(
    client: Client, factory_home: Path, demo_repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The task appends a test to an existing file: its tests gate ran the base's version of that file (and the
    # change's as a copy), a tree that is not the commit's, so the commit's own tree must be verified.
    old = (demo_repo / "tests" / "test_words.py").read_text()
    appended = old + "\n\ndef test_word_count_of_one_word():\n    assert word_count('one') == 1\n"
    edit = tool(EDIT, command="create", path="tests/test_words.py", file_text=appended)
    # A refactor may not change existing tests, and needs no witness: the edit runs beside the base's file.
    transcript = {
        "plan": plan(task("more-tests", task_type="refactor")),
        "tasks": {"more-tests": [[turn(edit), done()]]},
    }
    summary = await run(client, factory_home, demo_repo, transcript, tmp_path, monkeypatch)

    assert await gate_runs(client, run_workflow_id(summary.run_id)) == 1
    assert not any("this very tree" in note for g in summary.final_gates for note in g.notes)


async def test_two_merges_that_combined_work_are_verified(
    client: Client, factory_home: Path, demo_repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    whisper = [
        [turn(module("whisper", "whisper", "text.lower()"), module_test("whisper", "whisper", "HI", "hi")), done()]
    ]
    transcript = {
        "plan": plan(task("add-shout"), task("add-whisper")),
        "tasks": {"add-shout": SHOUT, "add-whisper": whisper},
    }
    summary = await run(client, factory_home, demo_repo, transcript, tmp_path, monkeypatch)

    # Both branched from the base and ran side by side: the second merge made a tree no task's gates saw.
    run_history_gates = await gate_runs(client, run_workflow_id(summary.run_id))
    assert run_history_gates == 2  # the second merge's regression suite, and the final verification
