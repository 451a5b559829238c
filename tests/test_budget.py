"""Budgets, enforced before spending: a model call that could take a task or its run past the policy's
`[budget]` is not made; the task escalates with the figures, and the run starts no new task once its budget
is spent. The runs here use the real `anthropic` SDK over HTTP against the local Messages API server, which
records every request it receives, so "the call was not made" is what the server saw."""

from __future__ import annotations

import asyncio
import os
import re
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from temporalio.client import Client, WorkflowHandle

from darkfactory.budget import BudgetExceeded, call_bound, check_call, raised, run_budget_spent
from darkfactory.constants import DEFAULT_MODEL, RUN_SPENT_SIGNAL, run_workflow_id, task_workflow_id
from darkfactory.contracts import BudgetCheck, ModelRequest, RunState, Usage
from darkfactory.policy import BudgetLimits, PolicyError, parse_policy
from darkfactory.pricing import estimate_cost_usd, priced_usage
from darkfactory.scripted import context_from_request
from darkfactory.testing.fake_messages_api import FakeMessagesServer, ScriptResponder
from darkfactory.workflows.factory_run import FactoryRunWorkflow
from tests.conftest import DEMO, demo_transcript, factory_worker, git, request_for, write_transcript

MAX_TOKENS = 1024
"""Each call's output cap in these runs: a call's bound is its input plus this."""


def _request(text: str = "x" * 4000, model: str = DEFAULT_MODEL) -> ModelRequest:
    return ModelRequest(model=model, system="s", messages=[{"role": "user", "content": text}], max_tokens=MAX_TOKENS)


def _spent(tokens: int, model: str = DEFAULT_MODEL) -> Usage:
    return priced_usage(Usage(input_tokens=tokens, calls=1), model=model, purpose="agent")


# --------------------------------------------------------------------------------------------------
# The check itself


def test_a_call_is_refused_when_its_bound_would_pass_the_task_token_budget_and_the_message_has_the_figures() -> None:
    request = _request()
    bound = call_bound(request)
    assert bound.tokens > MAX_TOKENS + 1000  # about four characters a token of input, plus all of max_tokens
    limits = BudgetLimits(task_tokens=10_000)

    check_call(BudgetCheck(limits=limits, task_spent=_spent(10_000 - bound.tokens)), request, "agent")
    with pytest.raises(BudgetExceeded) as refused:
        check_call(BudgetCheck(limits=limits, task_spent=_spent(10_001 - bound.tokens)), request, "agent")

    message = str(refused.value)
    assert f"up to {bound.tokens:,} tokens" in message
    assert f"task past its token budget: {10_001 - bound.tokens:,} of 10,000 spent" in message


def test_a_dollar_budget_counts_list_prices_and_an_unpriced_model_is_refused_rather_than_spent_blind() -> None:
    request = _request()
    bound = call_bound(request)
    assert bound.usd is not None and bound.usd > 0
    spent = _spent(50_000)
    assert spent.cost == pytest.approx(estimate_cost_usd(DEFAULT_MODEL, Usage(input_tokens=50_000)))
    assert spent.cost is not None
    enough = BudgetLimits(run_usd=spent.cost + bound.usd + 0.0001)

    check_call(BudgetCheck(limits=enough, run_spent=spent), request, "agent")
    with pytest.raises(BudgetExceeded, match=r"run past its dollar budget: \$0\.\d{4} of \$0\.\d{4} spent"):
        check_call(BudgetCheck(limits=BudgetLimits(run_usd=spent.cost + bound.usd / 2), run_spent=spent), request, "a")
    with pytest.raises(BudgetExceeded, match="cannot be priced"):
        check_call(BudgetCheck(limits=BudgetLimits(task_usd=100.0)), _request(model="claude-nonesuch-1"), "agent")
    # A scripted model costs nothing, so a dollar budget never stops the offline demo.
    check_call(BudgetCheck(limits=BudgetLimits(task_usd=0.0001)), _request(model="scripted:demo"), "agent")


def test_no_budget_refuses_nothing_and_approvals_raise_every_limit_by_its_own_size() -> None:
    check_call(None, _request("x" * 10**6), "agent")
    check_call(BudgetCheck(limits=BudgetLimits()), _request("x" * 10**6), "agent")

    twice = raised(BudgetLimits(task_tokens=1000, run_usd=2.5), grants=1)
    assert (twice.task_tokens, twice.run_usd, twice.task_usd, twice.run_tokens) == (2000, 5.0, None, None)


def test_a_run_starts_no_task_once_what_is_left_cannot_pay_for_one_calls_output() -> None:
    limits = BudgetLimits(run_tokens=10_000)
    assert run_budget_spent(_spent(10_000 - MAX_TOKENS), limits, MAX_TOKENS) == ""
    assert run_budget_spent(_spent(10_001 - MAX_TOKENS), limits, MAX_TOKENS) == (
        f"the run's token budget is spent: {10_001 - MAX_TOKENS:,} of 10,000"
    )


def test_a_budget_in_the_policy_file_is_checked_when_it_is_read() -> None:
    policy = parse_policy("[budget]\ntask_tokens = 50000\nrun_usd = 3.0\n")
    assert (policy.budget.task_tokens, policy.budget.run_usd) == (50_000, 3.0)
    with pytest.raises(PolicyError, match=r"budget\.task_tokens"):
        parse_policy("[budget]\ntask_tokens = 0\n")
    with pytest.raises(PolicyError, match=r"budget\.run_dollars"):
        parse_policy("[budget]\nrun_dollars = 3\n")


# --------------------------------------------------------------------------------------------------
# Runs at the local server


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeMessagesServer]:
    with FakeMessagesServer(ScriptResponder(DEMO / "transcript.json")) as fake:
        monkeypatch.setenv("ANTHROPIC_BASE_URL", fake.base_url)
        monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-test-budget")
        yield fake


def _budgeted(repo: Path, budget: str) -> None:
    (repo / ".factory").mkdir(exist_ok=True)
    (repo / ".factory" / "policy.toml").write_text(f"[budget]\n{budget}\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "a budget")


@asynccontextmanager
async def _started(client: Client, home: Path, repo: Path) -> AsyncIterator[WorkflowHandle[Any, RunState]]:
    request = request_for(repo, DEFAULT_MODEL, max_tokens=MAX_TOKENS)
    task_queue = f"budget-{uuid.uuid4().hex}"
    async with factory_worker(client, home, task_queue):
        yield await client.start_workflow(
            FactoryRunWorkflow.run, request, id=run_workflow_id(request.run_id), task_queue=task_queue
        )


async def _answer_escalations(
    client: Client, server: FakeMessagesServer, handle: WorkflowHandle[Any, RunState], action: str
) -> list[dict[str, Any]]:
    """Follow the run's history (long-polling, no sleeping); answer each task that waits for a person with
    `action`, counting the requests the server had received by then. Returns the escalations seen."""
    seen: list[dict[str, Any]] = []
    answered: set[tuple[str, str]] = set()
    async for _event in handle.fetch_history_events(wait_new_event=True):
        state: RunState | None = await handle.query(FactoryRunWorkflow.status)
        for task in state.tasks if state else []:
            if task.state != "escalated" or task.escalation is None:
                continue
            key = (task.id, task.escalation.since.isoformat())
            if key in answered:
                continue
            answered.add(key)
            seen.append({"task": task.id, "reason": task.escalation.reason, "requests": server.request_count()})
            child = client.get_workflow_handle(task_workflow_id(state.run_id if state else "", task.id))
            await child.signal(action, {"by": "ana", "note": f"{action} from the budget test"})
    return seen


def _agent_turns(server: FakeMessagesServer, task_id: str) -> int:
    return sum(
        1
        for recorded in server.requests
        if (context := context_from_request(recorded.body)).purpose == "agent" and context.task_id == task_id
    )


def _figures(reason: str) -> tuple[int, int, int]:
    """(bound, spent, limit) from `... (up to 3,456 tokens, $0.0123) ... 7,890 of 10,000 spent`."""
    bound = re.search(r"up to ([\d,]+) tokens", reason)
    spent = re.search(r"([\d,]+) of ([\d,]+) spent", reason)
    assert bound and spent, reason
    number = lambda text: int(text.replace(",", ""))  # noqa: E731
    return number(bound.group(1)), number(spent.group(1)), number(spent.group(2))


async def test_a_task_past_its_token_budget_escalates_with_the_figures_and_the_refused_call_is_never_sent(
    client: Client, factory_home: Path, demo_repo: Path, server: FakeMessagesServer
) -> None:
    _budgeted(demo_repo, "task_tokens = 8000")
    async with _started(client, factory_home, demo_repo) as handle:
        [escalation] = await _answer_escalations(client, server, handle, "reject")
        summary = await handle.result()

    reason = escalation["reason"]
    assert reason.startswith("budget: the next ") and "would take the task past its token budget" in reason
    assert "reject to end the task" in reason
    bound, spent, limit = _figures(reason)
    assert limit == 8000 and spent <= limit < spent + bound
    slug = next(task for task in summary.tasks if task.id == "add-slugify")
    assert slug.state == "rejected" and "rejected by ana" in slug.reason and f"{spent:,} of 8,000" in slug.reason
    # What the escalation says was spent is what the task spent; not one request more reached the server.
    assert slug.usage.total_tokens == spent
    assert server.request_count() == escalation["requests"] == summary.usage.calls
    assert not summary.succeeded and "nothing shipped" in (summary.error or "")
    assert next(task for task in summary.tasks if task.id == "export-slugify").state == "failed"


async def test_approving_a_budget_escalation_makes_the_refused_call_and_the_run_merges(
    client: Client, factory_home: Path, demo_repo: Path, server: FakeMessagesServer
) -> None:
    _budgeted(demo_repo, "task_tokens = 12000")
    async with _started(client, factory_home, demo_repo) as handle:
        escalations = await _answer_escalations(client, server, handle, "approve")
        summary = await handle.result()

    assert summary.succeeded, summary.error
    assert [e["task"] for e in escalations] == ["add-slugify"]
    slug = next(task for task in summary.tasks if task.id == "add-slugify")
    assert slug.usage.total_tokens > 12000  # the person's approval let it spend a second budget
    [decision] = slug.decisions
    assert decision.action == "approve" and decision.reason.startswith("budget: ")
    assert server.request_count() == summary.usage.calls == 13  # the refused call was made once, after approval


async def test_a_run_past_its_budget_starts_no_new_task_and_says_why(
    client: Client, factory_home: Path, demo_repo: Path, server: FakeMessagesServer
) -> None:
    _budgeted(demo_repo, "run_tokens = 15000")
    async with _started(client, factory_home, demo_repo) as handle:
        escalations = await _answer_escalations(client, server, handle, "approve")
        summary = await handle.result()
    if os.environ.get("DARKFACTORY_RECORD_HISTORIES"):
        from tests.test_replay import record_history

        await record_history(client, summary.run_id, "run_budget_spent")

    # add-slugify ran into the run's budget, a person let it finish; then no new task started.
    [escalation] = escalations
    assert escalation["task"] == "add-slugify" and "take the run past its token budget" in escalation["reason"]
    slug, export = summary.tasks
    assert slug.state == "merged"
    assert export.state == "failed" and export.attempts == 0
    assert export.reason == f"not started: the run's token budget is spent: {summary.usage.total_tokens:,} of 15,000"
    assert _agent_turns(server, "export-slugify") == 0
    assert not summary.succeeded and "export-slugify" in (summary.error or "")


async def test_a_run_whose_budget_cannot_pay_for_its_plan_makes_no_call_at_all(
    client: Client, factory_home: Path, demo_repo: Path, server: FakeMessagesServer
) -> None:
    _budgeted(demo_repo, "run_tokens = 2000")
    async with _started(client, factory_home, demo_repo) as handle:
        summary = await handle.result()

    assert summary.phase == "failed" and server.request_count() == 0
    assert "budget: the next plan call" in (summary.error or "")
    assert "would take the run past its token budget: 0 of 2,000 spent" in (summary.error or "")


async def test_a_task_running_beside_another_is_told_what_the_run_spent_when_the_other_ends(
    client: Client, factory_home: Path, demo_repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Both tasks at once: export-slugify no longer waits for add-slugify.
    transcript = demo_transcript()
    for task in transcript["plan"]["content"][0]["input"]["tasks"]:
        task["depends_on"] = []
    script = write_transcript(tmp_path / "transcript.json", transcript)
    _budgeted(demo_repo, "run_tokens = 24000")

    def export_turn(turn: int) -> Callable[[dict[str, Any]], bool]:
        def matches(body: dict[str, Any]) -> bool:
            context = context_from_request(body)
            return (context.purpose, context.task_id, context.turn) == ("agent", "export-slugify", turn)

        return matches

    with FakeMessagesServer(ScriptResponder(script)) as server:
        monkeypatch.setenv("ANTHROPIC_BASE_URL", server.base_url)
        monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-test-budget")
        # export-slugify's first turn waits at the server until add-slugify has ended and the run has told
        # export-slugify its new total; its second turn is then checked against it.
        arrived = server.hold_when(export_turn(1))
        async with _started(client, factory_home, demo_repo) as handle:
            assert await asyncio.to_thread(arrived.wait, 120)
            export = client.get_workflow_handle(task_workflow_id(handle.id.removeprefix("run-"), "export-slugify"))
            async for event in export.fetch_history_events(wait_new_event=True):
                if event.workflow_execution_signaled_event_attributes.signal_name == RUN_SPENT_SIGNAL:
                    break
            server.release()
            [escalation] = await _answer_escalations(client, server, handle, "reject")
            summary = await handle.result()

    assert escalation["task"] == "export-slugify"
    assert "would take the run past its token budget" in escalation["reason"]
    slug, exported = summary.tasks
    assert slug.state == "merged" and exported.state == "rejected"
    # The figure counts the plan, all of add-slugify (heard by signal) and export-slugify's own calls.
    _bound, spent, limit = _figures(escalation["reason"])
    assert limit == 24000 and spent == summary.usage.total_tokens
    assert (
        spent == summary.usage.by_purpose["plan"].total_tokens + slug.usage.total_tokens + exported.usage.total_tokens
    )
    assert server.request_count(export_turn(2)) == 0
