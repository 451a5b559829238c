"""Parallel tasks, the merge queue and cancellation on a real Temporal server (model over the real SDK).

Where the order of two parallel tasks matters, the test fixes it without clocks: it holds one task's model
call at the local Messages API server until the other task is merged, watching the run event by event.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from temporalio.client import Client, WorkflowHandle

from darkfactory.constants import run_workflow_id, task_workflow_id
from darkfactory.contracts import RunState
from darkfactory.scripted import context_from_request
from darkfactory.testing.fake_messages_api import FakeMessagesServer, ScriptResponder
from darkfactory.workflows import FactoryRunWorkflow
from tests.conftest import factory_worker, git, request_for, write_transcript
from tests.test_escalation import cli, with_policy

MODEL = "claude-sonnet-5-5"
EDIT = "str_replace_based_edit_tool"
NO_MODEL_GATES = 'gates = ["scope", "secrets", "syntax", "lint", "tests"]\n'
"""These tests are about merging: no held-out tests or reviewer, so transcripts stay short."""
INIT = 'from textkit.words import word_count\n\n__all__ = ["word_count"]\n'


def tool(name: str, **args: Any) -> dict[str, Any]:
    return {"type": "tool_use", "name": name, "input": args}


def done(text: str = "Done.") -> dict[str, Any]:
    return {"content": [{"type": "text", "text": text}], "stop_reason": "end_turn"}


def turn(*calls: dict[str, Any]) -> dict[str, Any]:
    return {"content": list(calls)}


def plan(*tasks: dict[str, Any]) -> dict[str, Any]:
    return turn(tool("submit_plan", summary="Parallel work.", tasks=list(tasks)))


def task(task_id: str, depends_on: list[str] | None = None, task_type: str = "feature") -> dict[str, Any]:
    return {
        "id": task_id,
        "title": f"Do {task_id}",
        "type": task_type,
        "instructions": f"Carry out {task_id}.",
        "depends_on": depends_on or [],
    }


def module(name: str, function: str, body: str) -> dict[str, Any]:
    return tool(
        EDIT,
        command="create",
        path=f"textkit/{name}.py",
        file_text=f'"""{name}."""\n\n\ndef {function}(text: str) -> str:\n    return {body}\n',
    )


def module_test(name: str, function: str, given: str, expected: str) -> dict[str, Any]:
    return tool(
        EDIT,
        command="create",
        path=f"tests/test_{name}.py",
        file_text=f"from textkit.{name} import {function}\n\n\ndef test_{function}():\n"
        f"    assert {function}({given!r}) == {expected!r}\n",
    )


@asynccontextmanager
async def running(
    client: Client,
    home: Path,
    repo: Path,
    transcript: dict[str, Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    hold: Callable[[dict[str, Any]], bool] | None = None,
    **config: Any,
) -> AsyncIterator[tuple[WorkflowHandle[Any, RunState], FakeMessagesServer, Any]]:
    path = write_transcript(tmp_path / "transcript.json", transcript)
    with FakeMessagesServer(ScriptResponder(path)) as server:
        monkeypatch.setenv("ANTHROPIC_BASE_URL", server.base_url)
        monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-test-parallel")
        held = server.hold_when(hold) if hold else None
        request = request_for(repo, MODEL, **config)
        queue = f"par-{uuid.uuid4().hex}"
        async with factory_worker(client, home, queue):
            handle = await client.start_workflow(
                FactoryRunWorkflow.run, request, id=run_workflow_id(request.run_id), task_queue=queue
            )
            try:
                yield handle, server, held
            finally:
                server.release()


async def until_task_state(handle: WorkflowHandle[Any, RunState], task_id: str, states: set[str]) -> None:
    """Follow the run's history event by event until the task reaches one of `states` (no sleeping)."""
    async for _event in handle.fetch_history_events(wait_new_event=True):
        state = await handle.query(FactoryRunWorkflow.status)
        if state and any(t.id == task_id and t.state in states for t in state.tasks):
            return
    raise AssertionError(f"the run ended before {task_id} reached {states}")


def key(body: dict[str, Any]) -> str:
    return context_from_request(body).key


async def test_independent_tasks_run_as_overlapping_children_and_both_merge(
    client: Client, factory_home: Path, demo_repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with_policy(demo_repo, NO_MODEL_GATES)
    transcript = {
        "plan": plan(task("add-shout"), task("add-whisper")),
        "tasks": {
            "add-shout": [
                [turn(module("shout", "shout", "text.upper()"), module_test("shout", "shout", "hi", "HI")), done()]
            ],
            "add-whisper": [
                [
                    turn(module("whisper", "whisper", "text.lower()"), module_test("whisper", "whisper", "HI", "hi")),
                    done(),
                ]
            ],
        },
    }
    async with running(client, factory_home, demo_repo, transcript, tmp_path, monkeypatch, max_parallel=2) as (
        handle,
        _server,
        _held,
    ):
        summary = await handle.result()

    assert summary.succeeded, summary.error
    assert {t.id: t.state for t in summary.tasks} == {"add-shout": "merged", "add-whisper": "merged"}
    shout, whisper = [
        await client.get_workflow_handle(task_workflow_id(summary.run_id, t)).describe()
        for t in ("add-shout", "add-whisper")
    ]
    assert shout.close_time and whisper.close_time
    assert shout.start_time < whisper.close_time and whisper.start_time < shout.close_time, "children did not overlap"
    assert (demo_repo / "textkit" / "shout.py").exists() and (demo_repo / "textkit" / "whisper.py").exists()


async def test_a_dependent_task_starts_after_its_dependency_merged_and_builds_on_it(
    client: Client, factory_home: Path, demo_repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with_policy(demo_repo, NO_MODEL_GATES)
    uses_shout = tool(
        EDIT,
        command="create",
        path="tests/test_loud_count.py",
        file_text="from textkit.shout import shout\nfrom textkit.words import word_count\n\n\n"
        "def test_shouting_keeps_words():\n    assert word_count(shout('a b')) == 2\n",
    )
    transcript = {
        # loud-count only adds a test of what add-shout built: a `test` task, which needs no witness.
        "plan": plan(task("add-shout"), task("loud-count", ["add-shout"], "test")),
        "tasks": {
            "add-shout": [
                [turn(module("shout", "shout", "text.upper()"), module_test("shout", "shout", "hi", "HI")), done()]
            ],
            "loud-count": [[turn(uses_shout), done()]],
        },
    }
    async with running(client, factory_home, demo_repo, transcript, tmp_path, monkeypatch, max_parallel=4) as (
        handle,
        _server,
        _held,
    ):
        summary = await handle.result()

    assert summary.succeeded, summary.error
    first, second = [
        await client.get_workflow_handle(task_workflow_id(summary.run_id, t)).describe()
        for t in ("add-shout", "loud-count")
    ]
    assert first.close_time and second.start_time >= first.close_time
    tests = next(g for g in summary.tasks[1].gates if g.gate == "tests")
    assert tests.passed  # it imports the dependency's module: it branched from the head that has it


async def test_two_tasks_editing_the_same_lines_the_second_is_redone_on_the_new_head_and_merged(
    client: Client, factory_home: Path, demo_repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with_policy(demo_repo, NO_MODEL_GATES)
    both = (
        "from textkit.shout import shout\nfrom textkit.whisper import whisper\nfrom textkit.words import "
        'word_count\n\n__all__ = ["shout", "whisper", "word_count"]\n'
    )

    def export(name: str) -> list[list[dict[str, Any]]]:
        alone = INIT.replace("from textkit.words", f"from textkit.{name} import {name}\nfrom textkit.words").replace(
            '["word_count"]', f'["{name}", "word_count"]'
        )
        body = f"text.{'upper' if name == 'shout' else 'lower'}()"
        mine = [module(name, name, body), module_test(name, name, "Hi", "HI" if name == "shout" else "hi")]
        first = [
            turn(*mine, tool(EDIT, command="str_replace", path="textkit/__init__.py", old_str=INIT, new_str=alone)),
            done(),
        ]
        redo = [turn(*mine, tool(EDIT, command="create", path="textkit/__init__.py", file_text=both)), done()]
        return [first, redo]

    transcript = {
        "plan": plan(task("shout"), task("whisper")),
        "tasks": {"shout": export("shout"), "whisper": export("whisper")},
    }
    # whisper may only finish once shout is merged, so whisper is the one that conflicts.
    async with running(
        client,
        factory_home,
        demo_repo,
        transcript,
        tmp_path,
        monkeypatch,
        max_parallel=2,
        hold=lambda body: key(body) == "agent:whisper:1:2",
    ) as (handle, server, held):
        await until_task_state(handle, "shout", {"merged"})
        server.release()
        summary = await handle.result()
        requests = server.requests

    assert held is not None and held.is_set()
    assert summary.succeeded, [(t.id, t.reason, [g.feedback for g in t.gates]) for t in summary.tasks]
    assert [(t.id, t.state, t.attempts) for t in summary.tasks] == [("shout", "merged", 1), ("whisper", "merged", 2)]
    redo = next(r for r in requests if key(r.body) == "agent:whisper:2:1")
    assert "Merge conflict" in json.dumps(redo.body["messages"][0]) and "textkit/__init__.py" in json.dumps(redo.body)
    assert (demo_repo / "textkit" / "__init__.py").read_text() == both


async def test_a_merge_that_breaks_the_integration_suite_is_undone_and_the_task_redone(
    client: Client, factory_home: Path, demo_repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with_policy(demo_repo, NO_MODEL_GATES)
    hyphens_split = tool(
        EDIT,
        command="str_replace",
        path="textkit/words.py",
        old_str="    return len(text.split())\n",
        new_str='    return len(text.replace("-", " ").split())\n',
    )

    def hyphen_test(expected: int) -> dict[str, Any]:
        return tool(
            EDIT,
            command="create",
            path="tests/test_hyphens.py",
            file_text="from textkit.words import word_count\n\n\ndef test_hyphenated_phrase():\n"
            f"    assert word_count('state-of-the-art design') == {expected}\n",
        )

    splits = tool(
        EDIT,
        command="create",
        path="tests/test_split.py",
        file_text="from textkit.words import word_count\n\n\ndef test_a_hyphen_splits_words():\n"
        "    assert word_count('a-b') == 2\n",
    )
    transcript = {
        # hyphen-test only adds a test: a `test` task, which needs no witness.
        "plan": plan(task("split-hyphens"), task("hyphen-test", task_type="test")),
        "tasks": {
            "split-hyphens": [[turn(hyphens_split, splits), done()]],
            # Valid on the base (2 words), broken once split-hyphens is merged (5 words).
            "hyphen-test": [[turn(hyphen_test(2)), done()], [turn(hyphen_test(5)), done()]],
        },
    }
    async with running(
        client,
        factory_home,
        demo_repo,
        transcript,
        tmp_path,
        monkeypatch,
        max_parallel=2,
        hold=lambda body: key(body) == "agent:hyphen-test:1:2",
    ) as (handle, server, _held):
        await until_task_state(handle, "split-hyphens", {"merged"})
        server.release()
        summary = await handle.result()
        requests = server.requests
        history = await handle.fetch_history()

    assert summary.succeeded, summary.error
    assert [(t.id, t.attempts) for t in summary.tasks] == [("split-hyphens", 1), ("hyphen-test", 2)]
    undone = [
        e
        for e in history.events
        if e.HasField("activity_task_scheduled_event_attributes")
        and e.activity_task_scheduled_event_attributes.activity_type.name == "restore_branch"
    ]
    assert len(undone) == 1, "the breaking merge was not undone"
    redo = next(r for r in requests if key(r.body) == "agent:hyphen-test:2:1")
    assert "## Regression" in json.dumps(redo.body["messages"][0]) and "test_hyphenated_phrase" in json.dumps(redo.body)
    subjects = git(demo_repo, "log", "--format=%s", "main").splitlines()
    assert subjects[:2] == ["hyphen-test: Do hyphen-test", "split-hyphens: Do split-hyphens"]
    assert "== 5" in (demo_repo / "tests" / "test_hyphens.py").read_text()


async def test_cancel_stops_every_task_keeps_the_branches_and_leaves_no_half_done_merge(
    client: Client, factory_home: Path, demo_repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with_policy(demo_repo, NO_MODEL_GATES)
    transcript = {
        "plan": plan(task("add-shout"), task("add-whisper"), task("after", ["add-shout"])),
        "tasks": {
            "add-shout": [
                [turn(module("shout", "shout", "text.upper()"), module_test("shout", "shout", "hi", "HI")), done()]
            ],
            "add-whisper": [[turn(module("whisper", "whisper", "text.lower()")), done()]],
            "after": [[done()]],
        },
    }
    async with running(
        client,
        factory_home,
        demo_repo,
        transcript,
        tmp_path,
        monkeypatch,
        max_parallel=2,
        hold=lambda body: key(body) == "agent:add-whisper:1:2",
    ) as (handle, _server, held):
        assert held is not None
        await until_task_state(handle, "add-shout", {"merged"})
        main_before = git(demo_repo, "rev-parse", "main")
        answer = cli(client.service_client.config.target_host, "cancel", handle.id.removeprefix("run-"))
        assert answer.returncode == 0, answer.stderr
        summary = await handle.result()

    assert summary.phase == "cancelled"
    states = {t.id: (t.state, t.reason) for t in summary.tasks}
    assert states["add-shout"][0] == "merged"
    assert states["add-whisper"][0] == "cancelled" and states["after"][0] in ("cancelled", "failed")
    assert all(reason for _state, reason in states.values())
    assert git(demo_repo, "rev-parse", "main") == main_before  # nothing shipped
    branches = git(demo_repo, "for-each-ref", "--format=%(refname:short)", "refs/heads/factory/").split()
    assert f"factory/{summary.run_id}/add-whisper" in branches and f"factory/{summary.run_id}/integration" in branches
    integration = git(demo_repo, "log", "--format=%s", f"factory/{summary.run_id}/integration").splitlines()
    assert integration[0] == "add-shout: Do add-shout"  # the one merge that happened is whole
