"""Each job once (issue 12, parts 1 and 2), on a real Temporal server.

A task runs the tests its change affects; the merge queue runs the whole suite once per batch, on the exact tree
that becomes the integration head, so the run's final verification is not run again on that tree. A batch that
goes red is bisected: the task that broke it goes back with the failure, the others merge.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from temporalio.client import Client

from darkfactory.constants import run_workflow_id, task_workflow_id
from darkfactory.contracts import DecisionInput, RunState
from darkfactory.workflows import FactoryRunWorkflow
from tests.conftest import git
from tests.test_escalation import with_policy
from tests.test_parallel import (
    EDIT,
    NO_MODEL_GATES,
    done,
    module,
    module_test,
    plan,
    running,
    task,
    tool,
    turn,
    until_task_state,
)
from tests.test_replay import record_history

AFFECTED = NO_MODEL_GATES + "[merge_queue]\nfull_suite_in_tasks = false\n"
"""Tasks run only the tests their change affects (by default they would run the demo's quick suite whole)."""
SHOUT = [[turn(module("shout", "shout", "text.upper()"), module_test("shout", "shout", "hi", "HI")), done()]]


async def gate_runs(client: Client, workflow_id: str) -> int:
    """How many `run_gates` activities the workflow's history scheduled."""
    return len(await gate_reports(client, workflow_id, scheduled=True))


async def gate_reports(client: Client, workflow_id: str, scheduled: bool = False) -> list[Any]:
    """The `run_gates` activities' results in the workflow's history (their scheduled events if `scheduled`)."""
    history = await client.get_workflow_handle(workflow_id).fetch_history()
    if scheduled:
        return [
            event
            for event in history.events
            if event.HasField("activity_task_scheduled_event_attributes")
            and event.activity_task_scheduled_event_attributes.activity_type.name == "run_gates"
        ]
    gate_ids = {
        event.event_id
        for event in history.events
        if event.HasField("activity_task_scheduled_event_attributes")
        and event.activity_task_scheduled_event_attributes.activity_type.name == "run_gates"
    }
    reports = []
    for event in history.events:
        if event.HasField("activity_task_completed_event_attributes"):
            done = event.activity_task_completed_event_attributes
            if done.scheduled_event_id in gate_ids:
                reports.append(json.loads(done.result.payloads[0].data))
    return reports


async def full_suites(client: Client, summary: RunState) -> int:
    """How many times the whole suite ran, in the run's and its tasks' gates."""
    ids = [run_workflow_id(summary.run_id), *(task_workflow_id(summary.run_id, t.id) for t in summary.tasks)]
    count = 0
    for workflow_id in ids:
        for report in await gate_reports(client, workflow_id):
            count += sum(1 for r in report["results"] if r["gate"] == "tests" and r.get("full_suite"))
    return count


async def run(
    client: Client,
    home: Path,
    repo: Path,
    transcript: dict[str, Any],
    tmp_path: Path,
    mp: pytest.MonkeyPatch,
    policy: str = AFFECTED,
) -> RunState:
    with_policy(repo, policy)
    async with running(client, home, repo, transcript, tmp_path, mp, max_parallel=4) as (handle, _server, _held):
        summary = await handle.result()
    assert summary.succeeded, summary.error
    return summary


async def run_approving(
    client: Client,
    factory_home: Path,
    demo_repo: Path,
    transcript: dict[str, Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    approved: str,
) -> RunState:
    """A run with one attempt per task, in which a person approves `approved` once it escalates."""
    async with running(client, factory_home, demo_repo, transcript, tmp_path, monkeypatch, max_attempts=1) as (
        handle,
        _server,
        _held,
    ):
        await until_task_state(handle, approved, {"escalated"})
        run_id = (await handle.query(FactoryRunWorkflow.status)).run_id
        await client.get_workflow_handle(task_workflow_id(run_id, approved)).signal(
            "approve", DecisionInput(by="ana", note="known, ship it")
        )
        summary: RunState = await handle.result()
        return summary


def not_run_again(summary: RunState, where: str) -> bool:
    return bool(summary.final_gates) and all(
        g.passed and any(f"this very tree passed it in {where}" in n for n in g.notes) for g in summary.final_gates
    )


async def test_a_one_task_run_runs_the_whole_suite_once_and_ships(
    client: Client, factory_home: Path, demo_repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    transcript = {"plan": plan(task("add-shout")), "tasks": {"add-shout": SHOUT}}
    summary = await run(client, factory_home, demo_repo, transcript, tmp_path, monkeypatch)

    task_gates = await gate_reports(client, task_workflow_id(summary.run_id, "add-shout"))
    tests = next(r for r in task_gates[0]["results"] if r["gate"] == "tests")
    assert not tests["full_suite"] and "affected test file" in tests["summary"]  # the task ran its own tests
    # The merge queue ran only the suite on the merged tree (lint, types and secrets already passed on that very
    # tree in the task's gates), and the final verification was not run again on it.
    assert await gate_runs(client, run_workflow_id(summary.run_id)) == 1
    assert await full_suites(client, summary) == 1
    assert [g.gate for g in summary.final_gates] == ["secrets", "syntax", "lint", "tests"]
    assert not_run_again(summary, "the merge queue's check of batch 1 (add-shout)")


async def test_with_the_whole_suite_in_tasks_a_one_task_run_is_not_checked_again(
    client: Client, factory_home: Path, demo_repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    transcript = {"plan": plan(task("add-shout")), "tasks": {"add-shout": SHOUT}}
    policy = NO_MODEL_GATES + "[merge_queue]\nfull_suite_in_tasks = true\n"
    summary = await run(client, factory_home, demo_repo, transcript, tmp_path, monkeypatch, policy)

    assert await gate_runs(client, run_workflow_id(summary.run_id)) == 0  # the task's gates saw this very tree
    assert await full_suites(client, summary) == 1
    assert not_run_again(summary, "task add-shout's gates")


async def test_a_task_whose_edited_tests_ran_as_the_base_has_them_gets_the_suite_on_its_own_tree(
    client: Client, factory_home: Path, demo_repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The task appends a test to an existing file: its tests gate ran the base's version of that file (and the
    # change's as a copy), a tree that is not the commit's, so the merge queue runs the suite on the commit's own.
    old = (demo_repo / "tests" / "test_words.py").read_text()
    appended = old + "\n\ndef test_word_count_of_one_word():\n    assert word_count('one') == 1\n"
    edit = tool(EDIT, command="create", path="tests/test_words.py", file_text=appended)
    # A refactor may not change existing tests, and needs no witness: the edit runs beside the base's file.
    transcript = {
        "plan": plan(task("more-tests", task_type="refactor")),
        "tasks": {"more-tests": [[turn(edit), done()]]},
    }
    policy = NO_MODEL_GATES + "[merge_queue]\nfull_suite_in_tasks = true\n"
    summary = await run(client, factory_home, demo_repo, transcript, tmp_path, monkeypatch, policy)

    [check] = await gate_reports(client, run_workflow_id(summary.run_id))
    assert [r["gate"] for r in check["results"]] == ["tests"] and check["results"][0]["full_suite"]
    assert "3 passed" in check["results"][0]["summary"]  # the appended test ran as the commit has it
    assert not_run_again(summary, "the merge queue's check of batch 1")


def adds(name: str, expression: str, given: str, expected: str) -> list[list[dict[str, Any]]]:
    """A task's one round: a module `textkit/<name>.py` with `<name>(text)` and its test."""
    return [[turn(module(name, name, expression), module_test(name, name, given, expected)), done()]]


async def test_four_tasks_ready_together_merge_as_one_batch_checked_once(
    client: Client, factory_home: Path, demo_repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    transcript = {
        "plan": plan(task("add-shout"), task("add-whisper"), task("add-loud"), task("add-title")),
        "tasks": {
            "add-shout": SHOUT,
            "add-whisper": adds("whisper", "text.lower()", "HI", "hi"),
            "add-loud": adds("loud", "text.upper() + '!'", "hi", "HI!"),
            "add-title": adds("title", "text.title()", "hi there", "Hi There"),
        },
    }
    policy = AFFECTED + "wait_s = 300\n"  # the batch waits for every working task
    summary = await run(client, factory_home, demo_repo, transcript, tmp_path, monkeypatch, policy)

    # All four branched from the base and ran side by side: one batch, one check of the tree they made, no final
    # verification of that same tree.
    assert [t.state for t in summary.tasks] == ["merged"] * 4
    [check] = await gate_reports(client, run_workflow_id(summary.run_id))
    assert [r["gate"] for r in check["results"]] == ["secrets", "syntax", "lint", "tests"]
    assert await full_suites(client, summary) == 1
    assert not_run_again(summary, "the merge queue's check of batch 1")
    shas = {t.id: t.merged_sha for t in summary.tasks}
    assert len(set(shas.values())) == 4  # each task names the commit that carries it


STOPWORDS_TEST = (
    "from pathlib import Path\n\n\ndef test_the_is_a_stopword():\n"
    "    assert 'the' in (Path(__file__).parent.parent / 'textkit' / 'stopwords.txt').read_text().split()\n"
)


async def test_a_red_batch_is_bisected_the_culprit_goes_back_and_the_others_merge(
    client: Client, factory_home: Path, demo_repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A test that reads a data file: coverage cannot tie it to the file, so the task that edits the file does not
    # run it; only the merge queue's whole suite sees the break.
    (demo_repo / "textkit" / "stopwords.txt").write_text("a\nan\nthe\n")
    (demo_repo / "tests" / "test_stopwords.py").write_text(STOPWORDS_TEST)
    drop_the = tool(EDIT, command="create", path="textkit/stopwords.txt", file_text="a\nan\n")
    loud = [module("loud", "loud", "text.upper() + '!'"), module_test("loud", "loud", "hi", "HI!")]
    transcript = {
        "plan": plan(task("add-shout"), task("add-loud"), task("add-whisper"), task("add-title")),
        "tasks": {
            "add-shout": SHOUT,
            # Round 1 breaks the data file; told so by the merge queue, round 2 leaves it alone.
            "add-loud": [[turn(*loud, drop_the), done()], [turn(*loud), done()]],
            "add-whisper": adds("whisper", "text.lower()", "HI", "hi"),
            "add-title": adds("title", "text.title()", "hi there", "Hi There"),
        },
    }
    policy = AFFECTED + "wait_s = 300\n"  # all four in one batch
    summary = await run(client, factory_home, demo_repo, transcript, tmp_path, monkeypatch, policy)
    if os.environ.get("DARKFACTORY_RECORD_HISTORIES"):
        await record_history(client, summary.run_id, "bisected_batch")

    assert {t.id: (t.state, t.attempts) for t in summary.tasks} == {
        "add-shout": ("merged", 1),
        "add-loud": ("merged", 2),
        "add-whisper": ("merged", 1),
        "add-title": ("merged", 1),
    }
    checks = await gate_reports(client, run_workflow_id(summary.run_id))
    # The batch of four (red), at most two bisection steps, the two after the culprit again, its second round.
    assert 3 <= len(checks) <= 5
    assert not checks[0]["results"][-1]["passed"] and "test_the_is_a_stopword" in checks[0]["results"][-1]["feedback"]
    assert "the" in (demo_repo / "textkit" / "stopwords.txt").read_text().split()
    assert not_run_again(summary, "the merge queue's check of batch")


async def test_a_change_that_breaks_the_types_of_a_file_an_earlier_batch_changed_goes_back_from_its_check(
    client: Client, factory_home: Path, demo_repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The second batch changes a function's return type; the file that uses it was changed by the first batch. The
    # suite and lint are judged batch by batch from the head; mypy follows imports across files, so the queue's
    # checks judge it from the run's base, on every file the run changed, and the second batch's check sees it.
    pyproject = demo_repo / "pyproject.toml"
    pyproject.write_text(pyproject.read_text() + "\n[tool.mypy]\nwarn_unused_configs = true\n")
    count = "def count() -> int:\n    return 3\n"
    use = "from textkit.counter import count\n\nTOTAL: int = count() + 1\n"
    use_test = "from textkit.total import TOTAL\n\n\ndef test_total():\n    assert TOTAL == 4\n"
    first = [
        tool(EDIT, command="create", path="textkit/counter.py", file_text=count),
        tool(EDIT, command="create", path="textkit/total.py", file_text=use),
        tool(EDIT, command="create", path="tests/test_total.py", file_text=use_test),
    ]
    as_text = "def count() -> str:\n    return 3  # type: ignore[return-value]\n"  # the same at run time
    retype = tool(EDIT, command="create", path="textkit/counter.py", file_text=as_text)
    documented = 'def count() -> int:\n    """How many there are."""\n    return 3\n'
    document = tool(EDIT, command="create", path="textkit/counter.py", file_text=documented)
    transcript = {
        "plan": plan(task("add-total"), task("retype-count", ["add-total"], task_type="refactor")),
        "tasks": {
            "add-total": [[turn(*first), done()]],
            # Round 1 breaks total.py's types; told so by the merge queue, round 2 keeps the return type.
            "retype-count": [[turn(retype), done()], [turn(document), done()]],
        },
    }
    with_policy(demo_repo, 'gates = ["scope", "secrets", "syntax", "lint", "types", "tests"]\n')
    async with running(client, factory_home, demo_repo, transcript, tmp_path, monkeypatch) as (handle, _s, _h):
        summary = await handle.result()

    assert {t.id: (t.state, t.attempts) for t in summary.tasks} == {
        "add-total": ("merged", 1),
        "retype-count": ("merged", 2),
    }
    assert summary.succeeded, summary.error
    checks = await gate_reports(client, run_workflow_id(summary.run_id))
    red = [c for c in checks if not all(r["passed"] for r in c["results"])]
    assert len(red) == 1
    types = next(r for r in red[0]["results"] if r["gate"] == "types")
    assert "textkit/total.py" in types["feedback"]
    # Every head was judged whole: the final verification runs nothing again.
    assert summary.final_gates and all(any("not run again" in n for n in g.notes) for g in summary.final_gates)


async def test_after_a_change_approved_past_failing_tests_the_next_task_is_not_blamed_and_nothing_ships(
    client: Client, factory_home: Path, demo_repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # add-broken's new test fails; a person approves it anyway. add-after, which depends on it, lands on a head
    # where that test fails: its check must not count it against add-after. The final verification, judged
    # against the run's base, still stops the run before anything ships.
    broken = [module("broken", "broken", "text"), module_test("broken", "broken", "a", "A")]
    transcript = {
        "plan": plan(task("add-broken"), task("add-after", ["add-broken"])),
        "tasks": {"add-broken": [[turn(*broken), done()]], "add-after": SHOUT},
    }
    with_policy(demo_repo, AFFECTED)
    main_before = git(demo_repo, "rev-parse", "main")
    summary = await run_approving(client, factory_home, demo_repo, transcript, tmp_path, monkeypatch, "add-broken")

    states = {t.id: (t.state, t.attempts) for t in summary.tasks}
    assert states == {"add-broken": ("merged", 1), "add-after": ("merged", 1)}
    # add-broken's own gates had run lint and the others on its tree, and its tests' failure was approved: no check
    # for it. Then add-after's check, and the final verification.
    checks = await gate_reports(client, run_workflow_id(summary.run_id))
    assert len(checks) == 2
    after = checks[0]["results"][-1]
    assert after["gate"] == "tests" and after["passed"] and "pre-existing" in after["summary"]
    assert summary.phase == "failed" and "tests" in (summary.error or "")
    assert git(demo_repo, "rev-parse", "main") == main_before


async def test_after_a_change_approved_past_failing_types_the_next_task_is_not_blamed_and_nothing_ships(
    client: Client, factory_home: Path, demo_repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The queue's checks judge mypy from the run's base: once a change approved past a mypy error has merged, that
    # error is on every later tree. add-after's check must not send it back for it; the final verification stops
    # the run instead.
    pyproject = demo_repo / "pyproject.toml"
    pyproject.write_text(pyproject.read_text() + "\n[tool.mypy]\nwarn_unused_configs = true\n")
    bad = tool(EDIT, command="create", path="textkit/typebad.py", file_text='X: int = "not an int"\n')
    transcript = {
        "plan": plan(task("add-typebad"), task("add-after", ["add-typebad"])),
        "tasks": {"add-typebad": [[turn(bad), done()]], "add-after": SHOUT},
    }
    with_policy(demo_repo, 'gates = ["scope", "secrets", "syntax", "lint", "types", "tests"]\n')
    summary = await run_approving(client, factory_home, demo_repo, transcript, tmp_path, monkeypatch, "add-typebad")

    assert {t.id: (t.state, t.attempts) for t in summary.tasks} == {
        "add-typebad": ("merged", 1),
        "add-after": ("merged", 1),
    }
    assert summary.phase == "failed" and "types" in (summary.error or "")
