"""Rendering a run for people: live progress lines and the final summary (rich)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from rich.console import Console
from rich.table import Table

from darkfactory.contracts import BaselineSummary, GateResult, RunState, TaskSummary
from darkfactory.llm import PRICES_USD_PER_MTOK, estimate_cost_usd
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
    for column in ("task", "state", "attempts", "last gates", "tokens", "reason"):
        table.add_column(column)
    for task in state.tasks:
        reason = _waiting(task) if task.state == "escalated" else task.reason
        table.add_row(
            task.id, task.state, str(task.attempts), _gates(task.gates), str(task.usage.total_tokens), reason[:120]
        )
    if state.tasks:
        console.print(table)
    for task in state.tasks:
        for note in task.notes:
            console.print(f"  {task.id}: {note}", highlight=False, markup=False)
    usage = state.usage
    if state.scripted:
        cost_text = "no cost"
    elif any(state.model.startswith(prefix) for prefix in PRICES_USD_PER_MTOK):
        cost_text = f"est. ${estimate_cost_usd(state.model, usage):.4f}"
    else:
        cost_text = "cost unknown (no list price on file for this model)"
    console.print(
        f"Model {state.model if not state.scripted else 'scripted (recorded transcript, not Claude)'}: "
        f"{usage.calls} call(s), {usage.input_tokens} input + {usage.output_tokens} output tokens, "
        f"{usage.cache_read_input_tokens} cache-read, {cost_text}",
        highlight=False,
    )
    if state.final_gates:
        console.print(f"Integration gates: {_gates(state.final_gates)}", highlight=False)
        for result in state.final_gates:
            for note in result.notes:
                console.print(f"  {result.gate}: {note}", highlight=False, markup=False)
    if state.shipped_sha:
        target = state.shipped_to or state.base_branch
        console.print(f"Shipped {state.shipped_sha[:12]} to {target} ({state.ship_mode})", highlight=False)
        if state.pull_request_url:
            console.print(f"Pull request: {state.pull_request_url}", highlight=False)
    elif state.integration_branch:
        console.print(f"Nothing shipped; work so far is on {state.integration_branch}", highlight=False)
    if run_url:
        console.print(f"Web UI: {run_url}", highlight=False)
