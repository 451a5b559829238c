"""Rendering a run for people: live progress lines and the final summary (rich)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from rich.console import Console
from rich.table import Table

from darkfactory.contracts import BaselineSummary, GateResult, RunState, TaskSummary, Usage
from darkfactory.pricing import price_for
from darkfactory.strict_sandbox import degraded_note

TaskProgressFetcher = Callable[[str], Awaitable[dict[str, Any] | None]]


async def print_progress(console: Console, state: RunState, seen: dict[str, str], fetch: TaskProgressFetcher) -> None:
    """Print what changed since the last call; `seen` remembers what was printed."""
    if seen.get("phase") != state.phase:
        seen["phase"] = state.phase
        console.print(f"[bold]{state.phase}[/]" + (f": {state.plan_summary}" if state.phase == "running" else ""))
    for task in state.tasks:
        line = f"{task.state}"
        if task.state == "running":
            progress = await fetch(task.id)
            if progress:
                line = (
                    f"running: attempt {progress.get('attempt')} turn {progress.get('turn')} ({progress.get('phase')})"
                )
                gates = progress.get("gates") or []
                failed = [g for g in gates if not g.get("passed")]
                if failed and progress.get("phase") == "agent":
                    line += f" after gate {failed[0]['gate']} failed: {failed[0]['summary']}"
        elif task.state == "escalated":
            line = f"escalated: {_waiting(task)}"
        elif task.reason and task.state != "pending":
            line = f"{task.state}: {task.reason}"
        if seen.get(task.id) != line:
            seen[task.id] = line
            console.print(f"  {task.id}: {line}", highlight=False)


def _waiting(task: TaskSummary) -> str:
    escalation = task.escalation
    if escalation is None:
        return task.reason
    since = escalation.since.strftime("%Y-%m-%d %H:%M UTC")
    return f"waiting for a person since {since}: {escalation.reason}"


def _baseline_lines(baseline: BaselineSummary) -> list[str]:
    how = "with per-test coverage" if baseline.coverage else "without coverage"
    if not baseline.per_test:
        exit_code = "unknown" if baseline.exit_code is None else baseline.exit_code
        lines = [f"Base {baseline.base_sha[:12]}: test command exit {exit_code} (no per-test results)"]
    else:
        lines = [
            f"Base {baseline.base_sha[:12]}: {baseline.passed} test(s) pass, {baseline.failed} fail there "
            f"(measured once, {how}{', cached' if baseline.cached else ''})"
        ]
    shown = baseline.failures[:10]
    for failure in shown:
        lines.append(f"  failing on the base: {failure.nodeid}" + (f" - {failure.message}" if failure.message else ""))
    if baseline.failed > len(shown):
        lines.append(f"  ... and {baseline.failed - len(shown)} more")
    lines.extend(f"  note: {note}" for note in baseline.notes)
    return lines


def _gates(results: list[GateResult]) -> str:
    return " ".join(f"{r.gate}:{'ok' if r.passed else 'FAIL'}" for r in results) or "-"


def print_summary(console: Console, state: RunState, run_url: str | None) -> None:
    verdict = "[bold green]shipped[/]" if state.succeeded else f"[bold red]{state.phase}[/]"
    console.print(f"\nRun [bold]{state.run_id}[/]: {verdict}", highlight=False)
    if state.error:
        console.print(f"[red]{state.error}[/]", highlight=False)
    if state.degraded_sandbox is not None:
        console.print(f"sandbox: {degraded_note(state.degraded_sandbox)}", highlight=False, markup=False)
    for note in state.input_notes:
        console.print(f"input cleaned: {note}", highlight=False, markup=False)
    if state.baseline is not None:
        for line in _baseline_lines(state.baseline):
            console.print(line, highlight=False, markup=False)
    table = Table(show_lines=False)
    for column in ("task", "type", "state", "attempts", "last gates", "tokens", "cache read", "cost", "reason"):
        table.add_column(column)
    for task in state.tasks:
        reason = _waiting(task) if task.state == "escalated" else task.reason
        table.add_row(
            task.id,
            task.type or "-",
            task.state,
            str(task.attempts),
            _gates(task.gates),
            str(task.usage.total_tokens),
            share_text(task.usage.cache_read_share),
            cost_text(state, task.usage),
            reason[:120],
        )
    if state.tasks:
        console.print(table)
    for task in state.tasks:
        if task.state == "escalated":  # the table squeezes the reason: say it whole, where people look
            line = f"  {task.id}: escalated after {task.attempts} attempt(s), {_waiting(task)}"
            console.print(line, highlight=False, markup=False)
        for note in task.notes:
            console.print(f"  {task.id}: {note}", highlight=False, markup=False)
    for line in usage_lines(state):
        console.print(line, highlight=False, markup=False)
    if state.final_gates:
        console.print(f"Integration gates: {_gates(state.final_gates)}", highlight=False)
        for result in state.final_gates:
            for note in result.notes:
                console.print(f"  {result.gate}: {note}", highlight=False, markup=False)
    if state.shipped_sha:
        target = state.shipped_to or state.base_branch
        console.print(f"Shipped {state.shipped_sha[:12]} to {target} ({state.ship_mode})", highlight=False)
        if state.pull_request_url:
            console.print(f"Pull request: {state.pull_request_url}", highlight=False, soft_wrap=True)
    elif state.integration_branch:
        console.print(f"Nothing shipped; work so far is on {state.integration_branch}", highlight=False)
    if run_url:
        console.print(f"Web UI: {run_url}", highlight=False, soft_wrap=True)  # a link must not wrap


# -- tokens, cache and cost


def share_text(share: float | None) -> str:
    return "-" if share is None else f"{share:.0%}"


def cost_of(state: RunState, usage: Usage) -> float | None:
    """What `usage` cost, as each call was priced when it was made. None: unknown, never $0 — a model with
    no price, or a summary recorded before calls were priced (which model answered each call is not known
    then: a review model may differ from the run's)."""
    return 0.0 if state.scripted else usage.cost


def cost_text(state: RunState, usage: Usage) -> str:
    """`$0.0123`, `unknown`, or `no cost` for a scripted run (a recorded transcript, not a model)."""
    if state.scripted:
        return "no cost"
    cost = cost_of(state, usage)
    return "unknown" if cost is None else f"${cost:.4f}"


def usage_lines(state: RunState) -> list[str]:
    """The run's tokens, cache-read share and cost: in all, by purpose, by task type and per merged task."""
    usage = state.usage
    model = state.model if not state.scripted else "scripted (recorded transcript, not Claude)"
    cost = cost_text(state, usage)
    if cost == "unknown":
        why = (
            f"no price on file for {state.model}"
            if price_for(state.model) is None
            else "a call was not priced: its model has no price on file, or an older worker made it"
        )
        cost = f"cost unknown ({why}; DARKFACTORY_PRICES_FILE can add prices)"
    elif not state.scripted:
        cost = f"est. {cost}"
    lines = [
        f"Model {model}: {usage.calls} call(s), {usage.input_tokens} input + {usage.output_tokens} output tokens, "
        f"{usage.cache_creation_input_tokens} cache-write, {usage.cache_read_input_tokens} cache-read "
        f"(cache-read share {share_text(usage.cache_read_share)}), {cost}"
    ]
    if usage.by_purpose:
        parts = [
            f"{purpose} {cost_text(state, part)} ({part.calls} call(s), cache-read {share_text(part.cache_read_share)})"
            for purpose, part in sorted(usage.by_purpose.items())
        ]
        lines.append("Cost by purpose: " + " · ".join(parts))
    by_type = state.usage_by_task_type()
    if by_type:
        counts = {kind: sum(1 for task in state.tasks if task.type == kind) for kind in by_type}
        parts = [f"{kind} {cost_text(state, part)} ({counts[kind]} task(s))" for kind, part in sorted(by_type.items())]
        lines.append("Cost by task type: " + " · ".join(parts))
    if state.tasks:
        merged = state.merged_tasks
        if state.scripted:
            per_merged = "no cost"
        else:
            run_cost = cost_of(state, usage)
            per_merged = "-" if not merged else "unknown" if run_cost is None else f"${run_cost / merged:.4f}"
        lines.append(f"Cost per merged task: {per_merged} ({merged} of {len(state.tasks)} task(s) merged)")
    return lines
