"""The backlog on a real Temporal server, through the real `factory backlog` CLI.

Items are added while no worker runs (so they all wait in the backlog) or while the hours window is shut,
which makes the order deterministic with no sleeping. Waiting is event-driven: the backlog's history is
long-polled and its memo (what `factory backlog list` reads) checked after each event. The hours window
is tested on the time-skipping server, where the hours until it opens pass in no time; there the backlog's
`backlog` query (answered once the worker has handled what came before it) stands in for the long-poll,
which that server is slow to wake. The items run the cheapest spec that ships (one task, right the first
time): what the backlog does with a run does not depend on what the run does.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import subprocess
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.service import RPCError

from darkfactory.cli.backlog import read_backlog
from darkfactory.constants import run_workflow_id
from darkfactory.contracts import backlog_workflow_id
from darkfactory.workflows import BacklogWorkflow, FactoryRunWorkflow
from tests.conftest import DEMO, demo_transcript, factory_worker, time_skipping_server, write_transcript
from tests.test_escalation import BIN, address

TRANSCRIPT = f"scripted:{DEMO / 'transcript.json'}"
SPEC = str(DEMO / "spec.md")
FIRST_TRY_FIX = ("text.lower())\n", 'text.lower()).strip("-")\n')


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The demo's add-slugify task alone, passing on its first attempt (the demo's own run plans two tasks
    and retries one): the shortest run that plans, edits, passes its gates, is reviewed and ships."""
    transcript = demo_transcript()
    plan = transcript["plan"]["content"][0]["input"]
    plan["tasks"] = [task for task in plan["tasks"] if task["id"] == "add-slugify"]
    first = transcript["tasks"]["add-slugify"][0]
    created = first[1]["content"][1]["input"]
    assert created["path"] == "textkit/slug.py" and FIRST_TRY_FIX[0] in created["file_text"]
    created["file_text"] = created["file_text"].replace(*FIRST_TRY_FIX)
    transcript["tasks"] = {"add-slugify": [first]}
    transcript["acceptance"] = {"add-slugify": transcript["acceptance"]["add-slugify"]}
    transcript["reviews"] = {"add-slugify": transcript["reviews"]["add-slugify"][1:]}
    path = write_transcript(tmp_path_factory.mktemp("backlog") / "transcript.json", transcript)
    return f"scripted:{path}"


async def factory(server: str, *args: str) -> subprocess.CompletedProcess[str]:
    """The `factory` CLI, without blocking the event loop: an in-process worker must answer its updates."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TEMPORAL_", "ANTHROPIC_"))}
    process = await asyncio.create_subprocess_exec(
        str(BIN / "factory"), *args, env={**env, "TEMPORAL_ADDRESS": server},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=120)
    assert process.returncode is not None
    return subprocess.CompletedProcess(list(args), process.returncode, stdout.decode(), stderr.decode())


async def add(server: str, repo: Path, queue: str, model: str, *options: str) -> dict[str, str]:
    """`factory backlog add` the demo spec, played by `model`; the item's ids."""
    added = await factory(
        server, "backlog", "add", "--repo", str(repo), "--spec", SPEC, "--model", model,
        "--task-queue", queue, "--json", *options,
    )  # fmt: skip
    assert added.returncode == 0, added.stderr
    item: dict[str, str] = json.loads(added.stdout)
    return item


def shut_window(now: datetime) -> tuple[str, datetime]:
    """An hours window that opens two hours from `now` (and when it opens)."""
    start = (now.hour + 2) % 24
    opening = now.replace(minute=0, second=0, microsecond=0) + timedelta(hours=2)
    return f"{start:02d}-{(start + 1) % 24:02d}", opening


async def until_backlog(client: Client, repo: Path, done: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    """Read the backlog after each event of its history (following continue-as-new) until `done` holds."""
    workflow_id = backlog_workflow_id(str(repo))
    while True:
        listing = await read_backlog(client, str(repo))
        if listing is not None and done(listing):
            return listing
        current = await client.get_workflow_handle(workflow_id).describe()
        assert current.status in (WorkflowExecutionStatus.RUNNING, WorkflowExecutionStatus.CONTINUED_AS_NEW), listing
        handle = client.get_workflow_handle(workflow_id, run_id=current.run_id)
        async for _event in handle.fetch_history_events(wait_new_event=True):
            listing = await read_backlog(client, str(repo))
            if listing is not None and done(listing):
                return listing


def seen_queued(count: int) -> Callable[[dict[str, Any]], bool]:
    """`count` items queued, each seen by a worker (not only pending in the history)."""
    return lambda backlog: [item["state"] for item in backlog["queued"]] == ["queued"] * count


async def backlog_runs(client: Client, repo: Path) -> list[tuple[str, datetime, datetime | None]]:
    """The backlog's FactoryRuns (run id, start, close), by start time, as the server recorded them."""
    query = f"WorkflowType = 'FactoryRunWorkflow' AND FactoryTrigger = 'backlog' AND FactoryRepo = '{repo}'"
    found = [
        (execution.id.removeprefix("run-"), execution.start_time, execution.close_time)
        async for execution in client.list_workflows(query)
    ]
    return sorted(found, key=lambda run: run[1])


async def record_backlog_history(client: Client, repo: Path, name: str) -> None:
    """Save the first run of the backlog (it ran the items and continued-as-new) for test_replay."""
    from tests.test_replay import HISTORIES

    workflow_id = backlog_workflow_id(str(repo))
    runs = [e async for e in client.list_workflows(f"WorkflowId = '{workflow_id}'")]
    first = min(runs, key=lambda execution: execution.start_time)
    history = await client.get_workflow_handle(workflow_id, run_id=first.run_id).fetch_history()
    (HISTORIES / f"{name}.json").write_text(json.dumps({workflow_id: json.loads(history.to_json())}, indent=1))


async def test_queued_specs_start_by_priority_then_in_the_order_they_were_added(
    client: Client, factory_home: Path, demo_repo: Path, model: str
) -> None:
    server, queue = address(client), f"backlog-{uuid.uuid4().hex}"
    # No worker yet: the three adds all wait in the backlog (one backlog: the second and third signal it).
    last = await add(server, demo_repo, queue, model, "--priority", "5")
    first = await add(server, demo_repo, queue, model, "--priority", "1")
    second = await add(server, demo_repo, queue, model, "--priority", "1")
    assert {last["workflow_id"], first["workflow_id"], second["workflow_id"]} == {backlog_workflow_id(str(demo_repo))}

    async with factory_worker(client, factory_home, queue):
        listing = await until_backlog(client, demo_repo, lambda backlog: len(backlog["done"]) == 3)

    listed = await factory(server, "runs", "--trigger", "backlog", "--repo", str(demo_repo), "--json")
    assert listed.returncode == 0, listed.stderr
    runs = json.loads(listed.stdout)  # newest first
    assert [run["run_id"] for run in reversed(runs)] == [first["run_id"], second["run_id"], last["run_id"]]
    assert [run["status"] for run in runs] == ["shipped"] * 3
    assert listing["started"] == [first["item_id"], second["item_id"], last["item_id"]]
    # One at a time: each run started after the one before it ended.
    recorded = await backlog_runs(client, demo_repo)
    for (_, _, closed), (_, started, _) in itertools.pairwise(recorded):
        assert closed is not None and started >= closed
    if os.environ.get("DARKFACTORY_RECORD_HISTORIES"):
        await record_backlog_history(client, demo_repo, "backlog_by_priority")


async def test_never_more_runs_at_once_than_the_backlogs_concurrency(
    client: Client, factory_home: Path, demo_repo: Path, model: str
) -> None:
    server, queue = address(client), f"backlog-{uuid.uuid4().hex}"
    items = [await add(server, demo_repo, queue, model, "--concurrency", "2")]
    items += [await add(server, demo_repo, queue, model) for _ in range(3)]

    async with factory_worker(client, factory_home, queue):
        listing = await until_backlog(client, demo_repo, lambda backlog: len(backlog["done"]) == 4)

    assert [item["outcome"] for item in listing["done"]] == ["shipped"] * 4
    assert listing["max_running"] == 2
    # From the server's own start and close times: at most two runs overlapped, and two did.
    recorded = await backlog_runs(client, demo_repo)
    assert sorted(run_id for run_id, _, _ in recorded) == sorted(item["run_id"] for item in items)
    edges = sorted([(started, 1) for _, started, _ in recorded] + [(closed, -1) for _, _, closed in recorded if closed])
    running, most = 0, 0
    for _, step in edges:  # at equal times an end sorts before a start
        running += step
        most = max(most, running)
    assert most == 2


async def test_a_removed_item_never_runs_and_removing_an_unknown_one_is_refused(
    client: Client, factory_home: Path, demo_repo: Path, model: str
) -> None:
    server, queue = address(client), f"backlog-{uuid.uuid4().hex}"
    window, _ = shut_window(datetime.now(UTC))
    dropped = await add(server, demo_repo, queue, model, "--priority", "1", "--hours", window)

    async with factory_worker(client, factory_home, queue):
        await until_backlog(client, demo_repo, seen_queued(1))
        removed = await factory(server, "backlog", "remove", dropped["item_id"], "--repo", str(demo_repo))
        assert removed.returncode == 0, removed.stderr
        assert f"removed item {dropped['item_id']}" in removed.stdout
        again = await factory(server, "backlog", "remove", dropped["item_id"], "--repo", str(demo_repo))
        assert again.returncode == 2
        assert f"item {dropped['item_id']} is not queued any more (it was removed)" in again.stderr
        unknown = await factory(server, "backlog", "remove", "deadbeef", "--repo", str(demo_repo))
        assert unknown.returncode == 2
        assert f"no item deadbeef in the backlog of {demo_repo}" in unknown.stderr
        malformed = await factory(server, "backlog", "remove", "item-1", "--repo", str(demo_repo))
        assert malformed.returncode == 2 and "'item-1' is not an item id" in malformed.stderr

        # Lifting the hours window lets the backlog run what it holds: only the later item (priority 100).
        later = await add(server, demo_repo, queue, model, "--hours", "any")
        listing = await until_backlog(client, demo_repo, lambda backlog: len(backlog["done"]) == 2)

    assert [(item["item_id"], item["outcome"]) for item in listing["done"]] == [
        (dropped["item_id"], "removed"),
        (later["item_id"], "shipped"),
    ]
    assert [run_id for run_id, _, _ in await backlog_runs(client, demo_repo)] == [later["run_id"]]
    with pytest.raises(RPCError):
        await client.get_workflow_handle(run_workflow_id(dropped["run_id"])).describe()


async def test_outside_its_hours_the_backlog_waits_durably_and_starts_when_the_window_opens(
    factory_home: Path, demo_repo: Path, model: str
) -> None:
    queue = f"backlog-{uuid.uuid4().hex}"
    async with time_skipping_server() as env:
        window, opening = shut_window(await env.get_current_time())
        backlog = env.client.get_workflow_handle_for(BacklogWorkflow.run, backlog_workflow_id(str(demo_repo)))
        async with factory_worker(env.client, factory_home, queue):
            item = await add(address(env.client), demo_repo, queue, model, "--hours", window)
            # The test server's history long-poll is slow to wake; a query is answered once the add is handled.
            waiting = await backlog.query(BacklogWorkflow.backlog)
            assert waiting.waiting_until == opening
            assert [queued.item_id for queued in waiting.queued] == [item["item_id"]]
            assert waiting.running == [] and waiting.started == []
            memo = await read_backlog(env.client, str(demo_repo))
            assert memo is not None and memo["waiting_until"] == opening.isoformat().replace("+00:00", "Z")

            # Two hours pass in no time; the run starts once the window opens (and may end within the minute).
            await env.sleep(opening - await env.get_current_time() + timedelta(minutes=1))
            opened = await backlog.query(BacklogWorkflow.backlog)
            assert opened.started == [item["item_id"]] and opened.waiting_until is None
            run = env.client.get_workflow_handle_for(FactoryRunWorkflow.run, run_workflow_id(item["run_id"]))
            summary = await run.result()
            started_at = (await run.describe()).start_time

    assert summary.succeeded, summary.error
    assert started_at >= opening  # not a moment before the window opened


async def test_list_needs_no_worker_and_shows_the_order_the_items_will_start_in(
    client: Client, factory_home: Path, demo_repo: Path, model: str
) -> None:
    server, queue = address(client), f"backlog-{uuid.uuid4().hex}"
    window, _ = shut_window(datetime.now(UTC))
    low = await add(server, demo_repo, queue, model, "--priority", "5", "--hours", window, "--concurrency", "3")
    high = await add(server, demo_repo, queue, model, "--priority", "1")
    async with factory_worker(client, factory_home, queue):
        await until_backlog(client, demo_repo, seen_queued(2))
    # The worker is gone: one item the backlog holds in its memo, one added since (only in its history).
    late = await add(server, demo_repo, queue, model, "--priority", "1")

    listed = await factory(server, "backlog", "list", "--repo", str(demo_repo), "--json")
    assert listed.returncode == 0, listed.stderr
    listing = json.loads(listed.stdout)
    assert [(item["item_id"], item["priority"], item["state"]) for item in listing["queued"]] == [
        (high["item_id"], 1, "queued"),
        (late["item_id"], 1, "pending"),
        (low["item_id"], 5, "queued"),
    ]
    assert listing["settings"] == {"concurrency": 3, "hours": {"start": int(window[:2]), "end": int(window[3:])}}
    shown = await factory(server, "backlog", "list", "--repo", str(demo_repo))
    assert shown.returncode == 0, shown.stderr
    assert "3 at once" in shown.stdout and "1 item(s) pending" in shown.stdout
    rows = [line for line in shown.stdout.splitlines() if any(i["item_id"] in line for i in (low, high, late))]
    assert [row.replace("│", " ").split()[:2] for row in rows] == [
        ["1", high["item_id"]],
        ["2", late["item_id"]],
        ["3", low["item_id"]],
    ]
    await client.get_workflow_handle(backlog_workflow_id(str(demo_repo))).terminate("test over")


async def test_bad_backlog_input_is_refused_before_anything_starts(client: Client, demo_repo: Path) -> None:
    server = address(client)
    base = ["backlog", "add", "--repo", str(demo_repo), "--model", TRANSCRIPT]
    cases = {
        "hours": ([*base, "--spec", SPEC, "--hours", "25-3"], "--hours '25-3' is not a window of UTC hours"),
        "priority": (
            [*base, "--spec", SPEC, "--priority", "soon"],
            "Invalid value for '--priority': Input should be a valid integer",
        ),
        "no spec": (base, "give exactly one of --spec FILE"),
        "no repo": (
            ["backlog", "add", "--repo", str(demo_repo / "missing"), "--spec", SPEC, "--model", TRANSCRIPT],
            f"repository path {demo_repo / 'missing'} does not exist",
        ),
    }
    for name, (args, message) in cases.items():
        result = await factory(server, *args)
        assert result.returncode == 2, (name, result.stdout, result.stderr)
        assert message in " ".join(result.stderr.replace("│", " ").split()), (name, result.stderr)
    listed = await factory(server, "backlog", "list", "--repo", str(demo_repo), "--json")
    assert json.loads(listed.stdout)["execution"] == "none"
