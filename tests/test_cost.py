"""Cost: list prices per model (overridable), each call priced where it is made, summed per task, purpose,
task type and run, and shown in the run summary; an unknown model's cost is unknown, never $0."""

from __future__ import annotations

from pathlib import Path

import pytest
from rich.console import Console
from temporalio.client import Client

from darkfactory.constants import DEFAULT_MODEL
from darkfactory.contracts import CallPurpose, RunState, TaskSummary, Usage
from darkfactory.pricing import (
    PRICES_USD_PER_MTOK,
    PricesError,
    estimate_cost_usd,
    load_prices,
    price_for,
    priced_usage,
)
from darkfactory.report import print_summary
from darkfactory.testing.fake_messages_api import FakeMessagesServer, ScriptResponder
from tests.conftest import DEMO, request_for, run_to_end

MTOK = 1_000_000
EACH_KIND = Usage(
    input_tokens=MTOK, output_tokens=MTOK, cache_creation_input_tokens=MTOK, cache_read_input_tokens=MTOK, calls=1
)


def _call(model: str, purpose: CallPurpose = "agent", tokens: int = 10_000) -> Usage:
    usage = Usage(
        input_tokens=tokens,
        output_tokens=tokens // 10,
        cache_creation_input_tokens=tokens,
        cache_read_input_tokens=tokens * 8,
        calls=1,
    )
    return priced_usage(usage, model=model, purpose=purpose)


def _state(usage: Usage, tasks: list[TaskSummary], model: str = DEFAULT_MODEL, scripted: bool = False) -> RunState:
    return RunState(
        run_id="r1",
        repo_path="/repo",
        base_branch="main",
        model=model,
        scripted=scripted,
        phase="shipped",
        tasks=tasks,
        usage=usage,
    )


def _rendered(state: RunState) -> str:
    console = Console(record=True, width=240)
    print_summary(console, state, None)
    return console.export_text()


# --------------------------------------------------------------------------------------------------
# Prices


def test_the_default_model_is_priced_including_cache_writes_and_reads() -> None:
    price = price_for(DEFAULT_MODEL)

    assert price is not None
    assert estimate_cost_usd(DEFAULT_MODEL, EACH_KIND) == pytest.approx(
        price.input + price.output + price.cache_write + price.cache_read
    )
    # claude-sonnet-5-5 at list price: $2 in, $10 out, $2.50 per 5-minute write, $0.10 per read.
    assert estimate_cost_usd("claude-sonnet-5-5", EACH_KIND) == pytest.approx(2 + 10 + 2.50 + 0.10)


def test_one_call_is_priced_token_kind_by_token_kind() -> None:
    usage = Usage(
        input_tokens=1_000, output_tokens=2_000, cache_creation_input_tokens=3_000, cache_read_input_tokens=40_000
    )

    cost = estimate_cost_usd("claude-sonnet-5-5", usage)

    assert cost == pytest.approx((1_000 * 2 + 2_000 * 10 + 3_000 * 2.50 + 40_000 * 0.10) / MTOK)


def test_a_model_takes_its_own_price_else_its_familys() -> None:
    assert price_for("claude-opus-4-5") == PRICES_USD_PER_MTOK["claude-opus-4-5"]
    assert price_for("claude-opus-4-1") == PRICES_USD_PER_MTOK["claude-opus-4"]
    assert price_for("claude-sonnet-4-5-20250929") == PRICES_USD_PER_MTOK["claude-sonnet-4"]
    assert price_for("claude-sonnet-5-5-20261001") == PRICES_USD_PER_MTOK["claude-sonnet-5-5"]
    assert price_for("claude-opus-4-10") == PRICES_USD_PER_MTOK["claude-opus-4"], "4-1 is not a prefix of 4-10"


def test_an_unknown_model_has_no_cost_rather_than_zero() -> None:
    assert price_for("claude-nonesuch-1") is None
    assert estimate_cost_usd("claude-nonesuch-1", EACH_KIND) is None
    assert estimate_cost_usd("scripted", EACH_KIND) == 0.0


def test_a_prices_file_replaces_and_adds_entries(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "prices.toml"
    path.write_text(
        '[models."claude-sonnet-5-5"]\ninput = 1.0\noutput = 5.0\ncache_write = 1.25\ncache_read = 0.05\n'
        '[models."claude-nonesuch"]\ninput = 7.0\noutput = 7.0\ncache_write = 7.0\ncache_read = 7.0\n'
    )
    monkeypatch.setenv("DARKFACTORY_PRICES_FILE", str(path))

    prices = load_prices()

    assert estimate_cost_usd("claude-sonnet-5-5", EACH_KIND, prices) == pytest.approx(1 + 5 + 1.25 + 0.05)
    assert estimate_cost_usd("claude-nonesuch-1", EACH_KIND, prices) == pytest.approx(28)
    assert prices["claude-opus-4"] == PRICES_USD_PER_MTOK["claude-opus-4"], "entries not in the file stay"


def test_an_invalid_prices_file_names_the_file_and_the_field(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "prices.toml"
    path.write_text('[models."claude-sonnet-5-5"]\ninput = 1.0\n')
    monkeypatch.setenv("DARKFACTORY_PRICES_FILE", str(path))

    with pytest.raises(PricesError, match=r"prices\.toml is invalid: models\.claude-sonnet-5-5\.output"):
        load_prices()


# --------------------------------------------------------------------------------------------------
# Adding up


def test_priced_calls_add_up_per_purpose_and_in_all() -> None:
    plan, turn, review = _call(DEFAULT_MODEL, "plan"), _call(DEFAULT_MODEL, "agent"), _call(DEFAULT_MODEL, "review")

    total = Usage() + plan + turn + turn + review

    assert total.cost == pytest.approx(plan.cost_usd + 2 * turn.cost_usd + review.cost_usd)
    assert total.by_purpose["agent"].calls == 2
    assert total.by_purpose["agent"].cost == pytest.approx(2 * turn.cost_usd)
    assert set(total.by_purpose) == {"plan", "agent", "review"}
    assert total.cache_read_share == pytest.approx(8 / 10)


def test_one_unpriced_call_makes_the_sum_unknown() -> None:
    total = _call(DEFAULT_MODEL) + _call("claude-nonesuch-1", "review")

    assert total.cost is None
    assert total.by_purpose["agent"].cost is not None and total.by_purpose["review"].cost is None


def test_cost_per_merged_task_is_the_whole_run_over_the_tasks_it_merged() -> None:
    merged = _call(DEFAULT_MODEL) + _call(DEFAULT_MODEL, "review")
    failed = _call(DEFAULT_MODEL) + _call(DEFAULT_MODEL)
    plan = _call(DEFAULT_MODEL, "plan")
    tasks = [
        TaskSummary(id="a", title="A", state="merged", type="feature", usage=merged),
        TaskSummary(id="b", title="B", state="merged", type="docs", usage=merged),
        TaskSummary(id="c", title="C", state="failed", type="feature", usage=failed),
    ]
    state = _state(plan + merged + merged + failed, tasks)

    assert state.cost_per_merged_task == pytest.approx((plan.cost_usd + 2 * merged.cost_usd + failed.cost_usd) / 2)
    by_type = state.usage_by_task_type()
    assert by_type["feature"].cost == pytest.approx(merged.cost_usd + failed.cost_usd)
    assert by_type["docs"].cost == pytest.approx(merged.cost_usd)
    text = _rendered(state)
    assert f"Cost per merged task: ${state.cost_per_merged_task:.4f} (2 of 3 task(s) merged)" in text
    assert f"feature ${merged.cost_usd + failed.cost_usd:.4f} (2 task(s))" in text
    assert f"plan ${plan.cost_usd:.4f} (1 call(s)" in text


# --------------------------------------------------------------------------------------------------
# What people see


def test_an_unknown_model_shows_unknown_in_the_summary_and_never_zero_dollars() -> None:
    usage = _call("claude-nonesuch-1", "plan") + _call("claude-nonesuch-1")
    task = TaskSummary(id="a", title="A", state="merged", usage=_call("claude-nonesuch-1"))
    state = _state(usage, [task], model="claude-nonesuch-1")

    text = _rendered(state)

    assert state.usage.cost is None and state.cost_per_merged_task is None
    assert "cost unknown (no price on file for claude-nonesuch-1" in text
    assert "Cost per merged task: unknown" in text
    assert "agent unknown" in text and "plan unknown" in text
    assert "$0.0000" not in text


def test_a_scripted_run_shows_no_cost() -> None:
    usage = priced_usage(Usage(input_tokens=100, output_tokens=10, calls=1), model="scripted", purpose="agent")
    state = _state(usage, [TaskSummary(id="a", title="A", state="merged", usage=usage)], scripted=True)

    text = _rendered(state)

    assert "no cost" in text and "Cost per merged task: no cost" in text
    assert "$" not in text and "unknown" not in text


def test_usage_recorded_before_calls_were_priced_shows_unknown() -> None:
    legacy = Usage(input_tokens=MTOK, output_tokens=0, calls=3)  # no priced_calls: an older worker's summary
    state = _state(legacy, [TaskSummary(id="a", title="A", state="merged", usage=legacy)])

    text = _rendered(state)

    assert "cost unknown" in text and "Cost per merged task: unknown" in text and "$" not in text


# --------------------------------------------------------------------------------------------------
# A run at the local server


async def _run(client: Client, home: Path, demo_repo: Path, model: str, monkeypatch: pytest.MonkeyPatch) -> RunState:
    with FakeMessagesServer(ScriptResponder(DEMO / "transcript.json")) as server:
        monkeypatch.setenv("ANTHROPIC_BASE_URL", server.base_url)
        monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-test-cost")
        return await run_to_end(client, home, request_for(demo_repo, model))


async def test_a_run_prices_every_call_and_its_summary_shows_the_cost_per_merged_task(
    client: Client, factory_home: Path, demo_repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    summary = await _run(client, factory_home, demo_repo, DEFAULT_MODEL, monkeypatch)

    assert summary.succeeded, summary.error
    usage = summary.usage
    assert usage.priced_calls == usage.calls == 13
    # One model throughout, so the sum of the calls' costs is the cost of the summed tokens.
    assert usage.cost == pytest.approx(estimate_cost_usd(DEFAULT_MODEL, usage))
    assert sum(part.cost_usd for part in usage.by_purpose.values()) == pytest.approx(usage.cost_usd)
    assert sum(task.usage.cost_usd for task in summary.tasks) + usage.by_purpose["plan"].cost_usd == pytest.approx(
        usage.cost_usd
    )
    assert summary.cost_per_merged_task == pytest.approx(usage.cost_usd / 2)
    text = _rendered(summary)
    assert f"est. ${usage.cost_usd:.4f}" in text
    assert f"Cost per merged task: ${usage.cost_usd / 2:.4f} (2 of 2 task(s) merged)" in text


async def test_a_run_on_an_unknown_model_reports_its_cost_as_unknown(
    client: Client, factory_home: Path, demo_repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    summary = await _run(client, factory_home, demo_repo, "claude-nonesuch-1", monkeypatch)

    assert summary.succeeded, summary.error
    assert summary.usage.calls == 13 and summary.usage.priced_calls == 0
    assert summary.usage.cost is None
    text = _rendered(summary)
    assert "cost unknown" in text and "Cost per merged task: unknown" in text
    assert "$" not in text
