"""Schedules on a real Temporal server, through the real `factory schedule` CLI and the `temporal` CLI.

The Java time-skipping server does not implement schedules (CreateSchedule is unimplemented there), so cron
ticks are real ones on the dev server, from a seven-field cron with seconds (`*/2 * * * * * *`). Waiting is
event-driven: the schedule's own scheduler workflow is long-polled, and the schedule described after each event.
"""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Callable
from pathlib import Path

from temporalio.client import Client, ScheduleDescription

from darkfactory.triggers.ids import run_id_of_workflow, schedule_id
from darkfactory.workflows import FactoryRunWorkflow
from tests.conftest import DEMO, TEMPORAL_BIN, factory_worker, git
from tests.test_escalation import address, cli

TRANSCRIPT = f"scripted:{DEMO / 'transcript.json'}"


def commit_spec(repo: Path, text: str) -> None:
    (repo / "specs").mkdir(exist_ok=True)
    (repo / "specs" / "weekly.md").write_text(text)
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "weekly spec")


def temporal_describe(client: Client, name: str) -> subprocess.CompletedProcess[str]:
    args = ["schedule", "describe", "--schedule-id", schedule_id(name), "--address", address(client)]
    return subprocess.run(
        [str(TEMPORAL_BIN), *args, "--output", "json"],
        capture_output=True,
        text=True,
        timeout=60,
    )


async def until_schedule(client: Client, name: str, done: Callable[[ScheduleDescription], bool]) -> ScheduleDescription:
    """Describe the schedule after each event of its scheduler workflow until `done` holds."""
    handle = client.get_schedule_handle(schedule_id(name))
    description = await handle.describe()
    if done(description):
        return description
    scheduler = client.get_workflow_handle(f"temporal-sys-scheduler:{schedule_id(name)}")
    async for _event in scheduler.fetch_history_events(wait_new_event=True):
        description = await handle.describe()
        if done(description):
            return description
    raise AssertionError(f"schedule {name} stopped before the condition held")


def tick_ids(description: ScheduleDescription) -> list[str]:
    return [result.action.workflow_id for result in description.info.recent_actions]  # type: ignore[attr-defined]


async def test_a_triggered_schedule_runs_a_normal_run_that_merges_with_the_spec_read_at_its_base(
    client: Client, factory_home: Path, demo_repo: Path
) -> None:
    name = f"weekly-{uuid.uuid4().hex[:6]}"
    queue = f"sched-{uuid.uuid4().hex}"
    commit_spec(demo_repo, (DEMO / "spec.md").read_text())
    created = cli(
        address(client), "schedule", "create", name, "--cron", "0 3 * * 1", "--tz", "Europe/Berlin",
        "--repo", str(demo_repo), "--spec-path", "specs/weekly.md", "--model", TRANSCRIPT, "--ship", "merge",
        "--task-queue", queue,
    )  # fmt: skip
    assert created.returncode == 0, created.stderr
    assert f"created schedule {name}" in created.stdout

    shown = temporal_describe(client, name)
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["schedule"]["spec"]["timezoneName"] == "Europe/Berlin"

    # The spec changes under version control after the schedule was made: the tick reads this version.
    commit_spec(demo_repo, (DEMO / "spec.md").read_text() + "\n<!-- the new version -->\n")
    assert cli(address(client), "schedule", "trigger", name).returncode == 0
    description = await until_schedule(client, name, lambda d: bool(d.info.recent_actions))
    [workflow_id] = tick_ids(description)
    async with factory_worker(client, factory_home, queue):
        summary = await client.get_workflow_handle_for(FactoryRunWorkflow.run, workflow_id).result()

    assert summary.succeeded, summary.error
    assert summary.run_id == run_id_of_workflow(workflow_id)  # name + the tick's time in digits
    assert git(demo_repo, "rev-parse", "main") == summary.shipped_sha
    assert summary.input_notes == ["specs/weekly.md: 1 HTML comment removed"]
    listed = cli(address(client), "runs", "--trigger", "schedule", "--repo", str(demo_repo), "--json")
    assert listed.returncode == 0, listed.stderr
    assert [(r["run_id"], r["trigger"], r["status"]) for r in json.loads(listed.stdout)] == [
        (summary.run_id, "schedule", "shipped")
    ]
    status = cli(address(client), "status", summary.run_id, "--json")
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["shipped_sha"] == summary.shipped_sha
    assert cli(address(client), "schedule", "delete", name).returncode == 0


async def test_cron_ticks_skip_while_a_run_is_going_and_pause_update_delete_show_in_temporal(
    client: Client, factory_home: Path, demo_repo: Path
) -> None:
    name = f"every-2s-{uuid.uuid4().hex[:6]}"
    queue = f"sched-{uuid.uuid4().hex}"
    spec = DEMO / "spec.md"
    create = ["schedule", "create", name, "--repo", str(demo_repo), "--spec", str(spec), "--model", TRANSCRIPT]
    created = cli(address(client), *create, "--cron", "*/2 * * * * * *", "--task-queue", queue)
    assert created.returncode == 0, created.stderr

    async with factory_worker(client, factory_home, queue):
        # A cron tick starts a run; ticks that come while it runs are skipped (the default overlap policy).
        first = await until_schedule(client, name, lambda d: bool(d.info.recent_actions))
        first_id = tick_ids(first)[0]
        summary = await client.get_workflow_handle_for(FactoryRunWorkflow.run, first_id).result()
        assert summary.succeeded, summary.error
        paused = cli(address(client), "schedule", "pause", name, "--note", "holiday freeze")
        assert paused.returncode == 0, paused.stderr
    described = await client.get_schedule_handle(schedule_id(name)).describe()
    assert described.info.num_actions_skipped_overlap >= 1
    first_run = await client.get_workflow_handle(first_id).describe()
    later = [
        execution
        async for execution in client.list_workflows(f"TemporalScheduledById = '{schedule_id(name)}'")
        if execution.id != first_id
    ]
    assert first_run.close_time is not None
    assert all(execution.start_time >= first_run.close_time for execution in later)  # never two at once

    shown = json.loads(temporal_describe(client, name).stdout)
    assert shown["schedule"]["state"]["paused"] is True
    assert shown["schedule"]["state"]["notes"] == "holiday freeze"

    # Creating it again under the same name updates it, and keeps it paused.
    updated = cli(address(client), *create, "--cron", "0 4 * * *", "--overlap", "buffer-one", "--task-queue", queue)
    assert updated.returncode == 0, updated.stderr
    assert f"updated schedule {name}" in updated.stdout
    shown = json.loads(temporal_describe(client, name).stdout)
    assert shown["schedule"]["state"]["paused"] is True
    assert shown["schedule"]["policies"]["overlapPolicy"] == "SCHEDULE_OVERLAP_POLICY_BUFFER_ONE"
    assert [c["hour"] for c in shown["schedule"]["spec"]["structuredCalendar"]] == [[{"start": 4, "end": 4, "step": 1}]]
    described_cli = json.loads(cli(address(client), "schedule", "describe", name, "--json").stdout)
    assert (described_cli["cron"], described_cli["overlap"], described_cli["paused"]) == (
        ["0 4 * * *"],
        "buffer-one",
        True,
    )

    assert cli(address(client), "schedule", "delete", name).returncode == 0
    assert temporal_describe(client, name).returncode != 0
    assert name not in cli(address(client), "schedule", "list").stdout


async def test_backfill_starts_the_ticks_the_cron_would_have_made(client: Client, demo_repo: Path) -> None:
    name = f"nightly-{uuid.uuid4().hex[:6]}"
    queue = f"unserved-{uuid.uuid4().hex}"  # nothing polls it: the runs only need to exist
    created = cli(
        address(client), "schedule", "create", name, "--cron", "0 3 * * *", "--repo", str(demo_repo),
        "--spec", str(DEMO / "spec.md"), "--model", TRANSCRIPT, "--task-queue", queue,
    )  # fmt: skip
    assert created.returncode == 0, created.stderr
    # allow-all: nothing serves the queue, so under the default buffer-all the second would wait for the first.
    window = ["2026-11-28T00:00", "2026-11-30T00:00", "--overlap", "allow-all"]
    backfilled = cli(address(client), "schedule", "backfill", name, *window)
    assert backfilled.returncode == 0, backfilled.stderr

    description = await until_schedule(client, name, lambda d: len(d.info.recent_actions) >= 2)
    assert sorted(run_id_of_workflow(w) for w in tick_ids(description)) == [
        f"{name}-20261128030000",
        f"{name}-20261129030000",
    ]
    for workflow_id in tick_ids(description):
        await client.get_workflow_handle(workflow_id).terminate("test over")
    assert cli(address(client), "schedule", "delete", name).returncode == 0


def test_bad_schedule_input_is_refused_before_anything_is_created(client: Client, demo_repo: Path) -> None:
    base = ["schedule", "create"]
    spec = ["--repo", str(demo_repo), "--spec", str(DEMO / "spec.md"), "--model", TRANSCRIPT]
    cases = {
        "Bad_Name": ([*base, "Bad_Name", "--cron", "0 3 * * *", *spec], "schedule name 'Bad_Name'"),
        "no-spec": ([*base, "no-spec", "--cron", "0 3 * * *", "--repo", str(demo_repo)], "give exactly one of"),
        "bad-tz": ([*base, "bad-tz", "--cron", "0 3 * * *", "--tz", "Mars/Olympus", *spec], "--tz 'Mars/Olympus'"),
        "bad-cron": ([*base, "bad-cron", "--cron", "every day at noon", *spec], "Temporal refused schedule bad-cron"),
        "bad-jitter": ([*base, "bad-jitter", "--cron", "0 3 * * *", "--jitter", "soon", *spec], "--jitter 'soon'"),
        "no-path": (
            [*base, "no-path", "--cron", "0 3 * * *", "--repo", str(demo_repo), "--spec-path", "specs/none.md"],
            "--spec-path specs/none.md is not a file on main",
        ),
    }
    for name, (args, message) in cases.items():
        result = (
            cli(address(client), *args, "--model", TRANSCRIPT) if "--model" not in args else cli(address(client), *args)
        )
        assert result.returncode == 2, (name, result.stdout, result.stderr)
        assert message in result.stderr, (name, result.stderr)
    listed = cli(address(client), "schedule", "list", "--json")
    assert not {item["name"] for item in json.loads(listed.stdout)} & set(cases)
    missing = cli(address(client), "schedule", "pause", "no-such-schedule")
    assert missing.returncode == 2 and "no schedule named no-such-schedule" in missing.stderr
