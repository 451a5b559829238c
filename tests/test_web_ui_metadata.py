"""What the web UI shows for a run: a static summary on each workflow and a summary on each activity
(Temporal user metadata), so the timeline reads as the run."""

from __future__ import annotations

import asyncio
import os
import uuid
from pathlib import Path

from rich.console import Console
from temporalio.client import Client

from darkfactory.cli.launch import start_factory_run
from darkfactory.constants import run_workflow_id, task_workflow_id
from darkfactory.contracts import RunState
from darkfactory.report import print_summary
from darkfactory.workflows import FactoryRunWorkflow
from tests.conftest import DEMO, factory_worker, request_for
from tests.test_escalation import BIN, address


async def activity_summaries(client: Client, workflow_id: str) -> list[str]:
    history = await client.get_workflow_handle(workflow_id).fetch_history()
    summaries = []
    for event in history.events:
        if event.HasField("activity_task_scheduled_event_attributes") and event.user_metadata.HasField("summary"):
            [text] = await client.data_converter.decode([event.user_metadata.summary], [str])
            summaries.append(text)
    return summaries


async def test_runs_tasks_and_activities_carry_summaries_for_the_web_ui(
    client: Client, factory_home: Path, demo_repo: Path
) -> None:
    request = request_for(demo_repo, f"scripted:{DEMO / 'transcript.json'}")
    queue = f"meta-{uuid.uuid4().hex}"
    async with factory_worker(client, factory_home, queue):
        assert await start_factory_run(client, request, queue)
        summary = await client.get_workflow_handle_for(FactoryRunWorkflow.run, run_workflow_id(request.run_id)).result()
    assert summary.succeeded, summary.error

    run = await client.get_workflow_handle(run_workflow_id(request.run_id)).describe()
    assert await run.static_summary() == f"cli · {demo_repo} · Add URL slugs to textkit"
    task = await client.get_workflow_handle(task_workflow_id(request.run_id, "add-slugify")).describe()
    assert (await task.static_summary() or "").startswith("task add-slugify: ")

    in_run = await activity_summaries(client, run_workflow_id(request.run_id))
    assert "plan · attempt 1" in in_run
    in_task = await activity_summaries(client, task_workflow_id(request.run_id, "add-slugify"))
    # The demo's first attempt fails its tests gate; the second passes: both attempts read in the timeline.
    for expected in ("agent turn 1 · add-slugify · attempt 1", "run gates · add-slugify · attempt 1",
                     "agent turn 1 · add-slugify · attempt 2", "review change · add-slugify · attempt 2"):  # fmt: skip
        assert expected in in_task, (expected, in_task)


async def test_status_watch_follows_a_run_to_its_end_and_never_wraps_the_link(
    client: Client, factory_home: Path, demo_repo: Path
) -> None:
    request = request_for(demo_repo, f"scripted:{DEMO / 'transcript.json'}")
    queue = f"watch-{uuid.uuid4().hex}"
    ui = "http://temporal-ui.factory.example.internal:8233"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TEMPORAL_", "ANTHROPIC_"))}
    env |= {"TEMPORAL_ADDRESS": address(client), "TEMPORAL_UI_URL": ui, "COLUMNS": "60"}
    assert await start_factory_run(client, request, queue)  # nothing serves it yet: the watch waits
    watcher = await asyncio.create_subprocess_exec(
        str(BIN / "factory"), "status", request.run_id, "--watch",
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    async with factory_worker(client, factory_home, queue):
        out, err = await asyncio.wait_for(watcher.communicate(), timeout=300)
    text = out.decode()
    assert watcher.returncode == 0, text + err.decode()
    assert f"run {request.run_id}" in text and "shipped" in text
    assert text.count("merged") >= 2  # both tasks, in the last redraw
    link = f"{ui}/namespaces/default/workflows/{run_workflow_id(request.run_id)}"
    assert any(line.strip() == f"Web UI: {link}" for line in text.splitlines()), text  # whole, on one line


def test_the_run_summary_prints_its_web_ui_link_unbroken_at_80_columns() -> None:
    url = "http://127.0.0.1:8233/namespaces/default/workflows/run-add-url-slugs-to-textkit-7194c8"
    state = RunState(
        run_id="add-url-slugs-to-textkit-7194c8",
        repo_path="/repo",
        base_branch="main",
        model="scripted",
        scripted=True,
        phase="shipped",
    )
    console = Console(record=True, width=80)
    print_summary(console, state, url)
    text = console.export_text()
    assert f"Web UI: {url}\n" in text
