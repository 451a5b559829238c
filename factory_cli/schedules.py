"""Schedules: `factory schedule create|list|describe|pause|unpause|trigger|backfill|delete`.

Recurring runs are Temporal Schedules (no cron of our own): each tick starts a normal FactoryRun on the
factory's task queue, so it shows in the web UI's Schedules page, in `temporal schedule list` and in
`factory runs --trigger schedule`. The schedule id is `factory-<name>`; each tick's run id is the name plus
the tick's time (see `darkfactory.triggers.ids`). A `--spec-path` spec is read from the repository at each
tick's base commit, so the spec can change under version control. Ticks are run by `factory-worker`.
"""

from __future__ import annotations

import asyncio
import json
import re
import zoneinfo
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from darkfactory.cli.session import UsageError, fail, open_session
from darkfactory.constants import TASK_QUEUE, run_workflow_id

if TYPE_CHECKING:
    from temporalio.client import (
        Client,
        Schedule,
        ScheduleActionResult,
        ScheduleDescription,
        ScheduleOverlapPolicy,
        ScheduleState,
        ScheduleUpdate,
        ScheduleUpdateInput,
    )

    from darkfactory.contracts import RunRequest

# The Temporal SDK and the workflows are imported where they are used, so listing the commands stays cheap.

app = typer.Typer()
group = typer.Typer(
    name="schedule",
    no_args_is_help=True,
    help="Recurring runs on Temporal Schedules (each tick is a normal run, executed by factory-worker).",
)
app.add_typer(group)

OVERLAP = ("skip", "buffer-one", "buffer-all", "allow-all")


def overlap_policies() -> dict[str, ScheduleOverlapPolicy]:
    from temporalio.client import ScheduleOverlapPolicy

    return {
        "skip": ScheduleOverlapPolicy.SKIP,
        "buffer-one": ScheduleOverlapPolicy.BUFFER_ONE,
        "buffer-all": ScheduleOverlapPolicy.BUFFER_ALL,
        "allow-all": ScheduleOverlapPolicy.ALLOW_ALL,
    }


_DURATION = re.compile(r"^(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")


def parse_duration(text: str, option: str) -> timedelta:
    """`90s`, `10m`, `1h30m`, `2d` or plain seconds."""
    value = text.strip()
    if value.isdigit():
        return timedelta(seconds=int(value))
    match = _DURATION.match(value)
    if not value or match is None:
        raise UsageError(f"{option} {text!r} is not a duration; write it like 90s, 10m, 1h30m or 2d")
    days, hours, minutes, secs = (int(part or 0) for part in match.groups())
    return timedelta(days=days, hours=hours, minutes=minutes, seconds=secs)


def parse_time(text: str, option: str) -> datetime:
    """An ISO 8601 time; without a zone it is UTC."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise UsageError(
            f"{option} {text!r} is not a time; write it like 2026-12-01T03:00 (UTC unless a zone is given)"
        ) from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def check_name(name: str) -> str:
    from darkfactory.triggers.ids import SCHEDULE_NAME

    if not SCHEDULE_NAME.match(name):
        raise UsageError(f"schedule name {name!r} must be lowercase letters, digits and dashes (at most 40)")
    return name


def overlap_policy(overlap: str) -> ScheduleOverlapPolicy:
    if overlap not in OVERLAP:
        raise UsageError(f"--overlap {overlap!r} is not an overlap policy; use {', '.join(OVERLAP)}")
    return overlap_policies()[overlap]


def build_schedule(
    name: str,
    request: RunRequest,
    cron: list[str],
    tz: str | None,
    jitter: timedelta | None,
    overlap: ScheduleOverlapPolicy,
    catchup: timedelta,
    task_queue: str,
) -> Schedule:
    from temporalio.client import (
        Schedule,
        ScheduleActionStartWorkflow,
        SchedulePolicy,
        ScheduleSpec,
        ScheduleState,
    )

    from darkfactory.cli.launch import run_search_attributes, run_summary
    from darkfactory.workflows import FactoryRunWorkflow

    return Schedule(
        action=ScheduleActionStartWorkflow(
            FactoryRunWorkflow.run,
            request,
            # Temporal appends each tick's time, so every tick is a run of its own (`run-<name>-<time>`).
            id=run_workflow_id(name),
            task_queue=task_queue,
            typed_search_attributes=run_search_attributes(request),
            static_summary=run_summary(request),
            memo={"schedule": name, "cron": cron, "time_zone": tz or "UTC"},
        ),
        spec=ScheduleSpec(cron_expressions=cron, time_zone_name=tz, jitter=jitter),
        policy=SchedulePolicy(overlap=overlap, catchup_window=catchup),
        state=ScheduleState(note=f"darkfactory schedule {name}"),
    )


@group.command()
def create(
    name: str = typer.Argument(
        ..., metavar="NAME", help="Lowercase letters, digits, dashes; the schedule id is factory-NAME."
    ),
    cron: list[str] = typer.Option(..., help="A cron expression (5 fields; 7 with seconds and years). Repeatable."),
    repo: Path = typer.Option(..., help="The target git repository (a path every worker can reach)."),
    spec: Path | None = typer.Option(None, help="A spec file; its text is stored in the schedule."),
    spec_text: str | None = typer.Option(None, help="The spec as text."),
    spec_path: str | None = typer.Option(
        None, help="A spec file inside the repository, read at each tick's base commit (versioned with the code)."
    ),
    base: str = typer.Option("main", help="Branch each tick builds on."),
    tz: str | None = typer.Option(None, help="IANA time zone the cron is in (default UTC), e.g. Europe/Berlin."),
    jitter: str | None = typer.Option(None, help="Delay each tick by a random 0..JITTER (e.g. 5m)."),
    overlap: str = typer.Option("skip", help="A tick while the last run still runs: skip, buffer-one or allow-all."),
    catchup_window: str = typer.Option("10m", help="Ticks missed while the server was down run if this recent."),
    ship: str = typer.Option("branch", help="branch, merge, push or pr (as for factory run)."),
    model: str | None = typer.Option(None, help="Claude model, or scripted:PATH."),
    max_attempts: int | None = typer.Option(None, help="Attempts per task before it escalates."),
    task_queue: str = typer.Option(TASK_QUEUE, help="The queue factory-worker serves."),
) -> None:
    """Create a schedule, or update the one with this name (its paused state and note are kept)."""
    from darkfactory.cli.inputs import build_request
    from darkfactory.triggers.ids import schedule_id

    try:
        check_name(name)
        if sum(given is not None for given in (spec, spec_text, spec_path)) != 1:
            raise UsageError("give exactly one of --spec FILE, --spec-text TEXT or --spec-path PATH_IN_REPO")
        if tz is not None:
            try:
                zoneinfo.ZoneInfo(tz)
            except (zoneinfo.ZoneInfoNotFoundError, ValueError):
                raise UsageError(f"--tz {tz!r} is not a time zone; use an IANA name like Europe/Berlin") from None
        request = build_request(
            repo, spec, spec_text, base, ship, model, name, max_attempts, 30,
            trigger="schedule", spec_path=spec_path, served_here=False,
        )  # fmt: skip
        schedule = build_schedule(
            name,
            request,
            cron,
            tz,
            parse_duration(jitter, "--jitter") if jitter else None,
            overlap_policy(overlap),
            parse_duration(catchup_window, "--catchup-window"),
            task_queue,
        )
        created = asyncio.run(_create_or_update(name, schedule))
    except UsageError as exc:
        fail(str(exc))
    typer.echo(f"{'created' if created else 'updated'} schedule {name} (id {schedule_id(name)}); {_WORKER_HINT}")


_WORKER_HINT = "ticks run on factory-worker; `factory runs --trigger schedule` lists them"


async def _create_or_update(name: str, schedule: Schedule) -> bool:
    from temporalio.client import ScheduleAlreadyRunningError, ScheduleUpdate
    from temporalio.service import RPCError

    from darkfactory.triggers.ids import schedule_id

    session = await open_session()
    try:
        await session.client.create_schedule(schedule_id(name), schedule)
        return True
    except ScheduleAlreadyRunningError:
        pass
    except RPCError as exc:
        raise UsageError(f"Temporal refused schedule {name}: {exc.message}") from None

    def keep_state(current: ScheduleUpdateInput) -> ScheduleUpdate:
        state = current.description.schedule.state
        return ScheduleUpdate(schedule=_with_state(schedule, state))

    try:
        await session.client.get_schedule_handle(schedule_id(name)).update(keep_state)
    except RPCError as exc:
        raise UsageError(f"Temporal refused the update of schedule {name}: {exc.message}") from None
    return False


def _with_state(schedule: Schedule, state: ScheduleState) -> Schedule:
    from temporalio.client import (
        Schedule,
    )

    return Schedule(action=schedule.action, spec=schedule.spec, policy=schedule.policy, state=state)


@group.command(name="list")
def list_schedules(as_json: bool = typer.Option(False, "--json", help="Print the schedules as JSON.")) -> None:
    """List the factory's schedules: next tick, paused or not, the latest run."""
    found, also = asyncio.run(_list())
    if as_json:
        print(json.dumps(found, indent=2))
        return
    if not found:
        typer.echo("No schedules. Create one with `factory schedule create NAME --cron ... --repo ... --spec ...`.")
    for item in found:
        state = "paused" if item["paused"] else f"next {item['next'] or 'never'}"
        typer.echo(f"{item['name']:<24} {state:<36} last run {item['last_run'] or '-'}")
    typer.echo(f"Also: {also}")


async def _list() -> tuple[list[dict[str, Any]], str]:
    """The factory's schedules by name, and the `temporal schedule list` that shows them (on the server in use)."""
    from darkfactory.triggers.ids import SCHEDULE_ID_PREFIX, run_id_of_workflow

    session = await open_session()
    found = []
    async for entry in await session.client.list_schedules():
        if not entry.id.startswith(SCHEDULE_ID_PREFIX):
            continue
        info = entry.info
        recent = _workflow_id(info.recent_actions[-1]) if info and info.recent_actions else ""
        found.append(
            {
                "name": entry.id.removeprefix(SCHEDULE_ID_PREFIX),
                "schedule_id": entry.id,
                "paused": bool(entry.schedule and entry.schedule.state.paused),
                "next": _iso(info.next_action_times[0]) if info and info.next_action_times else "",
                "last_run": run_id_of_workflow(recent) if recent else "",
            }
        )
    return sorted(found, key=lambda item: str(item["name"])), session.temporal_command("schedule", "list")


def _workflow_id(result: ScheduleActionResult) -> str:
    from temporalio.client import ScheduleActionExecutionStartWorkflow

    started = result.action
    return started.workflow_id if isinstance(started, ScheduleActionExecutionStartWorkflow) else ""


def _iso(moment: datetime) -> str:
    return moment.isoformat(timespec="seconds")


@group.command()
def describe(
    name: str = typer.Argument(..., metavar="NAME"),
    as_json: bool = typer.Option(False, "--json", help="Print it as JSON."),
) -> None:
    """Show a schedule: its cron, policies, state, next ticks and recent runs."""
    details = asyncio.run(_describe(name))
    if as_json:
        print(json.dumps(details, indent=2))
        return
    from rich.console import Console

    console = Console(highlight=False)
    for key, value in details.items():
        shown = ", ".join(str(v) for v in value) if isinstance(value, list) else value
        console.print(f"{key:<22} {shown}", markup=False)


async def _describe(name: str) -> dict[str, Any]:
    from temporalio.client import ScheduleActionStartWorkflow

    from darkfactory.contracts import RunRequest
    from darkfactory.triggers.ids import run_id_of_workflow, schedule_id

    session = await open_session()
    description = await _description(session.client, name)
    schedule, info = description.schedule, description.info
    action = schedule.action
    assert isinstance(action, ScheduleActionStartWorkflow)
    memo = {key: (await session.client.data_converter.decode([value]))[0] for key, value in (action.memo or {}).items()}
    [request] = await session.client.data_converter.decode(list(action.args), [RunRequest])
    return {
        "name": name,
        "schedule_id": schedule_id(name),
        "cron": memo.get("cron", []),
        "time_zone": memo.get("time_zone", "UTC"),
        "jitter": str(schedule.spec.jitter or timedelta()),
        "overlap": next(
            (k for k, v in overlap_policies().items() if v == schedule.policy.overlap), str(schedule.policy.overlap)
        ),
        "catchup_window": str(schedule.policy.catchup_window),
        "paused": schedule.state.paused,
        "note": schedule.state.note or "",
        "repo": request.repo_path,
        "base": request.base_branch,
        "spec": f"{request.spec_path} in the repository (read at each tick)" if request.spec_path else "stored text",
        "ship": request.config.ship,
        "model": request.config.model,
        "task_queue": action.task_queue,
        "runs": info.num_actions,
        "skipped_overlap": info.num_actions_skipped_overlap,
        "next_ticks": [_iso(moment) for moment in info.next_action_times[:3]],
        "recent_runs": [run_id_of_workflow(_workflow_id(result)) for result in info.recent_actions],
    }


async def _description(client: Client, name: str) -> ScheduleDescription:
    from temporalio.service import RPCError, RPCStatusCode

    from darkfactory.triggers.ids import schedule_id

    try:
        return await client.get_schedule_handle(schedule_id(check_name(name))).describe()
    except RPCError as exc:
        if exc.status == RPCStatusCode.NOT_FOUND:
            fail(f"no schedule named {name}; `factory schedule list` shows them")
        raise
    except UsageError as exc:
        fail(str(exc))


def _act(name: str, what: str, action: Any) -> None:
    from darkfactory.triggers.ids import schedule_id

    async def go() -> None:
        session = await open_session()
        await _description(session.client, name)  # a clear error for an unknown name
        await action(session.client.get_schedule_handle(schedule_id(name)))

    asyncio.run(go())
    typer.echo(f"{what} schedule {name}")


@group.command()
def pause(
    name: str = typer.Argument(..., metavar="NAME"),
    note: str = typer.Option("paused with factory schedule pause", help="Why (shown by describe and the web UI)."),
) -> None:
    """Stop ticking until unpaused (runs already started go on)."""
    _act(name, "paused", lambda handle: handle.pause(note=note))


@group.command()
def unpause(
    name: str = typer.Argument(..., metavar="NAME"),
    note: str = typer.Option("unpaused with factory schedule unpause", help="Why."),
) -> None:
    """Tick again."""
    _act(name, "unpaused", lambda handle: handle.unpause(note=note))


@group.command()
def trigger(name: str = typer.Argument(..., metavar="NAME")) -> None:
    """Start a tick now (the schedule's overlap policy applies)."""
    _act(name, "triggered", lambda handle: handle.trigger())
    typer.echo(_WORKER_HINT)


@group.command()
def backfill(
    name: str = typer.Argument(..., metavar="NAME"),
    start: str = typer.Argument(..., metavar="START", help="ISO time, e.g. 2026-12-01T00:00 (UTC unless zoned)."),
    end: str = typer.Argument(..., metavar="END"),
    overlap: str = typer.Option("buffer-all", help="buffer-all runs the missed ticks one after another."),
) -> None:
    """Run the ticks the cron would have made between START and END."""
    try:
        start_at, end_at = parse_time(start, "START"), parse_time(end, "END")
        if end_at <= start_at:
            raise UsageError(f"END {end} is not after START {start}")
        policy = overlap_policy(overlap)
    except UsageError as exc:
        fail(str(exc))
    from temporalio.client import ScheduleBackfill

    backfill_range = ScheduleBackfill(start_at=start_at, end_at=end_at, overlap=policy)
    _act(
        name, f"backfilled {start_at:%Y-%m-%dT%H:%M}..{end_at:%Y-%m-%dT%H:%M} for", lambda h: h.backfill(backfill_range)
    )


@group.command()
def delete(name: str = typer.Argument(..., metavar="NAME")) -> None:
    """Delete the schedule (its runs, finished or not, are kept)."""
    _act(name, "deleted", lambda handle: handle.delete())
