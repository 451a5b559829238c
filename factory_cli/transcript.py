"""`factory transcript RUN TASK [--attempt N] [--json]`: what the coding agent said and did in one attempt.

The conversation lives in the blob store (workflow history carries only its ref): each attempt's last
transcript ref is in the task's result (`TaskResult.attempts`) once a round has ended, and in the results of
its `agent_turn` / `run_tools` steps while it runs, so the command needs Temporal and the blobs, no worker.
A task has a child workflow per merge round, all under one workflow id; the run's history names each one.
Text shows every turn with its tool calls and their results cut short; `--json` prints all of it.
"""

from __future__ import annotations

import asyncio
import json
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import typer

from darkfactory.cli.history import decode_first
from darkfactory.cli.session import fail, find_run, open_session

if TYPE_CHECKING:
    from rich.console import Console
    from temporalio.client import Client

    from darkfactory.contracts import BlobRef, GateResult

app = typer.Typer()
RESULT_LINES = 12
"""Lines of a tool result the text shows (`--json` has all of them)."""
TEXT_LINES = 40
"""Lines of the model's own text (or of a feedback) the text shows."""
BRIEF_LINES = 16
"""Lines of the attempt's first message the text shows: the task and spec, which people know already."""
LINE_CHARS = 300
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f\x9b]")
"""Terminal control characters: the repository and the model wrote this text, not us (ANSI escapes)."""


@dataclass
class Attempt:
    """What the histories say about one attempt of a task."""

    attempt: int
    round_run_id: str
    transcript_ref: BlobRef | None = None
    feedback: str = ""
    """The feedback the attempt started with (the previous attempt's gates, a person's guidance)."""
    gates: list[GateResult] = field(default_factory=list)
    turns: int = 0
    stop: str = "running"


@app.command("transcript")
def transcript(
    run_id: str = typer.Argument(..., metavar="RUN_ID", help="The run id (with or without the run- prefix)."),
    task_id: str = typer.Argument(..., metavar="TASK_ID", help="The task id, as `factory status RUN_ID` lists it."),
    attempt: int | None = typer.Option(None, "--attempt", help="Which attempt (1, 2, ...); default: the last."),
    as_json: bool = typer.Option(False, "--json", help="Print the whole transcript as JSON, nothing cut."),
) -> None:
    """Show the coding agent's conversation in one attempt of a task: turns, tool calls, results, feedback."""
    from rich.console import Console

    from darkfactory.blobs import BlobNotFoundError, BlobStore
    from darkfactory.settings import FactorySettings

    attempts = asyncio.run(gather_attempts(run_id, task_id))
    if not attempts:
        fail(f"task {task_id} of run {run_id} has made no attempt yet; `factory status {run_id}` shows where it is")
    chosen = attempts[-1] if attempt is None else next((a for a in attempts if a.attempt == attempt), None)
    if chosen is None:
        known = ", ".join(str(a.attempt) for a in attempts)
        fail(f"task {task_id} of run {run_id} has no attempt {attempt}; its attempts are {known}")
    if chosen.transcript_ref is None:
        fail(f"attempt {chosen.attempt} of task {task_id} has no transcript: its first model call did not complete")
    store = BlobStore(FactorySettings().blobs_dir)
    try:
        conversation = store.get_json(chosen.transcript_ref)
    except BlobNotFoundError as exc:
        fail(
            f"the transcript of attempt {chosen.attempt} of task {task_id} is missing: {exc}; run this where the "
            "workers' DARKFACTORY_HOME is"
        )
    if as_json:
        print(json.dumps(_as_json(run_id, task_id, chosen, len(attempts), conversation), indent=2))
        return
    print_transcript(Console(highlight=False), run_id, task_id, chosen, len(attempts), conversation)


async def gather_attempts(run_id: str, task_id: str) -> list[Attempt]:
    """Every attempt of the task, over all its merge rounds, in order."""
    from darkfactory.constants import task_workflow_id
    from darkfactory.triggers.ids import run_id_of_workflow

    session = await open_session()
    client = session.client
    workflow_id = await find_run(client, run_id)
    if workflow_id is None:
        fail(f"no run with id {run_id} in namespace {client.namespace}; `factory runs` lists them")
    rounds: list[str] = []
    tasks: list[str] = []
    # A schedule tick's workflow id spells its time differently from the run id its tasks' ids are made of.
    prefix = task_workflow_id(run_id_of_workflow(workflow_id), "")
    child_id = prefix + task_id
    async for event in client.get_workflow_handle(workflow_id).fetch_history_events():
        if event.HasField("child_workflow_execution_started_event_attributes"):
            execution = event.child_workflow_execution_started_event_attributes.workflow_execution
            child = execution.workflow_id.removeprefix(prefix)
            tasks += [child] if child not in tasks else []
            if execution.workflow_id == child_id:
                rounds.append(execution.run_id)
    if not rounds:
        started = ", ".join(tasks) if tasks else "none yet"
        fail(f"run {run_id} has no task {task_id} (tasks started: {started}); `factory status {run_id}` lists them")
    found: dict[int, Attempt] = {}
    for round_run_id in rounds:
        for attempt in await _attempts_of_round(client, child_id, round_run_id):
            found[attempt.attempt] = attempt
    return [found[number] for number in sorted(found)]


async def _attempts_of_round(client: Client, workflow_id: str, run_id: str) -> list[Attempt]:
    from temporalio.api.enums.v1 import EventType

    closing = ("COMPLETED", "FAILED", "TIMED_OUT", "TERMINATED", "CANCELED", "CONTINUED_AS_NEW")
    closing_events = {EventType.Value(f"EVENT_TYPE_WORKFLOW_EXECUTION_{name}") for name in closing}

    from darkfactory.contracts import (
        AgentTurnInput,
        AgentTurnResult,
        GateReport,
        RunGatesInput,
        RunToolsInput,
        RunToolsResult,
        TaskResult,
    )

    attempts: dict[int, Attempt] = {}
    scheduled: dict[int, AgentTurnInput | RunToolsInput | RunGatesInput] = {}
    kinds: dict[str, type[AgentTurnInput | RunToolsInput | RunGatesInput]] = {
        "agent_turn": AgentTurnInput,
        "run_tools": RunToolsInput,
        "run_gates": RunGatesInput,
    }
    result: TaskResult | None = None
    async for event in client.get_workflow_handle(workflow_id, run_id=run_id).fetch_history_events():
        if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            attributes = event.activity_task_scheduled_event_attributes
            kind = kinds.get(attributes.activity_type.name)
            arg = await decode_first(client, attributes.input, kind) if kind is not None else None
            if arg is None:
                continue
            scheduled[event.event_id] = arg
            here = attempts.setdefault(arg.attempt, Attempt(attempt=arg.attempt, round_run_id=run_id))
            if isinstance(arg, AgentTurnInput):
                here.turns = max(here.turns, arg.turn)
                here.feedback = arg.brief.feedback if arg.brief is not None else here.feedback
        elif event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED:
            done = event.activity_task_completed_event_attributes
            arg = scheduled.get(done.scheduled_event_id)
            if isinstance(arg, AgentTurnInput) and (answer := await decode_first(client, done.result, AgentTurnResult)):
                attempts[arg.attempt].transcript_ref = answer.transcript_ref
            elif isinstance(arg, RunToolsInput) and (tools := await decode_first(client, done.result, RunToolsResult)):
                attempts[arg.attempt].transcript_ref = tools.transcript_ref
            elif isinstance(arg, RunGatesInput) and (report := await decode_first(client, done.result, GateReport)):
                attempts[arg.attempt].gates = list(report.results)
        elif event.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_COMPLETED:
            result = await decode_first(client, event.workflow_execution_completed_event_attributes.result, TaskResult)
        if event.event_type in closing_events:
            for here in attempts.values():
                here.stop = "unfinished" if here.stop == "running" else here.stop
    # The task's own record of an ended attempt is the authority: it has the reviewer's verdict as a gate too.
    for record in result.attempts if result is not None else []:
        here = attempts.setdefault(record.attempt, Attempt(attempt=record.attempt, round_run_id=run_id))
        here.transcript_ref, here.gates = record.transcript_ref, list(record.gates)
        here.turns, here.stop = record.turns, record.stop
    return list(attempts.values())


# -- output ----------------------------------------------------------------------------------------------


def _as_json(run_id: str, task_id: str, attempt: Attempt, attempts: int, conversation: Any) -> dict[str, Any]:
    return {
        "run_id": run_id,
        "task_id": task_id,
        "attempt": attempt.attempt,
        "attempts": attempts,
        "turns": attempt.turns,
        "stop": attempt.stop,
        "feedback": attempt.feedback,
        "gates": [gate.model_dump(mode="json") for gate in attempt.gates],
        "transcript_ref": attempt.transcript_ref.model_dump(mode="json") if attempt.transcript_ref else None,
        "transcript": conversation,
    }


def clean(text: str) -> str:
    return _CONTROL.sub("?", text.expandtabs(4))


def cut(text: str, lines: int) -> tuple[str, int]:
    """The first `lines` lines of `text` (each at most LINE_CHARS), and how many lines were left out."""
    all_lines = clean(text).splitlines()
    kept = [line if len(line) <= LINE_CHARS else line[:LINE_CHARS] + " …" for line in all_lines[:lines]]
    return "\n".join(kept), max(0, len(all_lines) - lines)


def tool_summary(name: str, args: dict[str, Any]) -> str:
    """One line on what a tool call asked for (the whole input is in `--json`)."""
    if name == "bash":
        command = str(args.get("command", "")).strip()
        first = command.splitlines()[0] if command else ""
        more = " …" if "\n" in command or len(first) > 200 else ""
        return clean(f"$ {first[:200]}{more}")
    if name == "str_replace_based_edit_tool":
        command, path = args.get("command", "?"), args.get("path", "?")
        extra = ""
        if command == "create":
            extra = f" ({len(str(args.get('file_text', '')).splitlines())} lines)"
        elif command == "str_replace":
            old, new = str(args.get("old_str", "")), str(args.get("new_str", ""))
            extra = f" (-{len(old.splitlines())}/+{len(new.splitlines())} lines)"
        elif command == "insert":
            extra = f" after line {args.get('insert_line', '?')}"
        elif command == "view" and args.get("view_range"):
            extra = f" lines {args.get('view_range')}"
        return clean(f"{command} {path}{extra}")
    compact = json.dumps(args, sort_keys=True)
    return clean(compact if len(compact) <= 200 else compact[:200] + " …")


def _blocks(content: Any) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    return [block for block in content if isinstance(block, dict)] if isinstance(content, list) else []


def _result_text(content: Any) -> str:
    return "\n".join(str(block.get("text", f"[{block.get('type')}]")) for block in _blocks(content))


def print_transcript(
    console: Console, run_id: str, task_id: str, attempt: Attempt, attempts: int, conversation: Any
) -> None:
    def say(text: str, style: str | None = None) -> None:
        console.print(text, style=style, markup=False, soft_wrap=True)

    more_hint = f"`factory transcript {run_id} {task_id} --attempt {attempt.attempt} --json` shows all"
    say(
        f"Task {task_id} of run {run_id}: attempt {attempt.attempt} of {attempts} · {attempt.turns} turn(s) · "
        f"stop: {attempt.stop}",
        "bold",
    )
    context = str(conversation.get("context", ""))
    say(f"system prompt {len(str(conversation.get('system', '')))} chars, repository overview {len(context)} chars")
    if attempt.feedback:
        text, left = cut(attempt.feedback, TEXT_LINES)
        say("\nFeedback this attempt started with:", "bold yellow")
        say(text + (f"\n… {left} more line(s); {more_hint}" if left else ""))
    names: dict[str, str] = {}
    turn = 0
    for message in conversation.get("messages", []):
        role = message.get("role", "?")
        if role == "assistant":
            turn += 1
        blocks = _blocks(message.get("content"))
        results_only = role == "user" and blocks and all(b.get("type") == "tool_result" for b in blocks)
        said = "tool results" if results_only else role
        header = f"\n── turn {turn} · {said} " if turn else f"\n── {role}: the attempt's brief "
        say(header + "─" * max(4, 60 - len(header)), "bold cyan" if role == "assistant" else "bold")
        for block in blocks:
            kind = block.get("type")
            if kind == "text":
                text, left = cut(str(block.get("text", "")), TEXT_LINES if turn else BRIEF_LINES)
                say(text + (f"\n… {left} more line(s); {more_hint}" if left else ""))
            elif kind == "tool_use":
                name = str(block.get("name", "?"))
                names[str(block.get("id"))] = name
                args = block.get("input")
                say(f"→ {clean(name)}: {tool_summary(name, args if isinstance(args, dict) else {})}", "green")
            elif kind == "tool_result":
                name = names.get(str(block.get("tool_use_id")), "tool")
                failed = bool(block.get("is_error"))
                say(f"← {clean(name)} {'ERROR' if failed else 'result'}:", "red" if failed else "dim")
                text, left = cut(_result_text(block.get("content")), RESULT_LINES)
                say("  " + text.replace("\n", "\n  ") if text else "  (empty)")
                if left:
                    say(f"  … {left} more line(s); {more_hint}", "dim")
            else:
                say(f"[{clean(str(kind))} block]", "dim")
    if attempt.gates:
        say("\nGates on this attempt's change (what the next attempt is told):", "bold")
        for gate in attempt.gates:
            say(
                f"  {'PASS' if gate.passed else 'FAIL'} {gate.gate}: {clean(gate.summary)}",
                "green" if gate.passed else "red",
            )
            if gate.feedback and not gate.passed:
                text, left = cut(gate.feedback, RESULT_LINES)
                say(
                    "    "
                    + text.replace("\n", "\n    ")
                    + (f"\n    … {left} more line(s); {more_hint}" if left else "")
                )
    elif attempt.stop == "running":
        say("\nThe attempt is still running; its gates have not run yet.", "dim")
