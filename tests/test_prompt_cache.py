"""Prompt caching, measured at the local Messages API server through the real SDK over HTTP.

The server caches as the API documents it (`darkfactory/testing/prompt_cache.py`): a read needs an earlier
write of the identical prefix, short prefixes are not cached, entries expire, four breakpoints at most. Its
clock is a counter the tests move, so expiry needs no waiting.
"""

from __future__ import annotations

import copy
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anthropic
import pytest
import pytest_asyncio
from temporalio.testing import WorkflowEnvironment

from darkfactory import prompts
from darkfactory.constants import DEFAULT_MODEL
from darkfactory.contracts import (
    AcceptanceInput,
    CallContext,
    ModelRequest,
    PlanInput,
    PlannedTask,
    ReviewInput,
    RunConfig,
    RunState,
    Usage,
)
from darkfactory.llm import MAX_CACHE_BREAKPOINTS, AnthropicClient, cache_breakpoints
from darkfactory.repo_context import read_snapshot
from darkfactory.scripted import context_from_request
from darkfactory.testing.fake_messages_api import FakeMessagesServer, FakeReply, RecordedRequest, ScriptResponder
from darkfactory.testing.prompt_cache import PromptCache
from tests.conftest import demo_transcript, make_repo, request_for, run_to_end, write_transcript

API_KEY = "sk-test-prompt-cache"
MODEL = DEFAULT_MODEL
CONTEXT = CallContext(purpose="agent", run_id="r1", task_id="t1", attempt=1, turn=1)
RULES = "".join(
    f"- Rule {n}: keep the change small, tested and in the style of the code around it.\n" for n in range(80)
)
"""A system prompt well over the 1024-token minimum (about 1600 tokens at four characters a token)."""


class Clock:
    """The server's clock, moved by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _answer(body: dict[str, Any]) -> FakeReply:
    # No usage given: the server measures the input against its cache.
    return FakeReply.message([{"type": "text", "text": "ok"}], model=str(body["model"]))


def _request(system: str = RULES, text: str = "Task id: t1 · attempt 1 of 3\n\nAdd slugify.") -> ModelRequest:
    return ModelRequest(model=MODEL, system=system, messages=[{"role": "user", "content": text}], max_tokens=256)


async def _send(server: FakeMessagesServer, *requests: ModelRequest) -> list[Usage]:
    client = AnthropicClient(api_key=API_KEY, base_url=server.base_url)
    try:
        return [(await client.create(request, CONTEXT)).usage for request in requests]
    finally:
        await client.aclose()


# --------------------------------------------------------------------------------------------------
# The server is faithful


async def test_a_read_needs_an_earlier_write_of_the_identical_prefix() -> None:
    with FakeMessagesServer(_answer) as server:
        first, other, again = await _send(server, _request(), _request(system=RULES + "x"), _request())

    assert first.cache_read_input_tokens == 0 and first.cache_creation_input_tokens > 1024
    # One character more in the system prompt: another prefix, so nothing to read; it is written anew.
    assert other.cache_read_input_tokens == 0 and other.cache_creation_input_tokens > 1024
    assert again.cache_read_input_tokens == first.cache_creation_input_tokens
    assert again.cache_creation_input_tokens == 0
    # The message after the breakpoint is never cached: each request pays for it in full.
    assert first.input_tokens == again.input_tokens > 0


async def test_a_prefix_below_the_minimum_is_not_cached() -> None:
    short = _request(system="You are a careful engineer.")
    with FakeMessagesServer(_answer) as server:
        first, second = await _send(server, short, short)

    for usage in (first, second):
        assert (usage.cache_creation_input_tokens, usage.cache_read_input_tokens) == (0, 0)
        assert usage.input_tokens > 0
    assert server.prompt_cache.entries() == 0


async def test_the_minimum_is_configurable() -> None:
    short = _request(system="You are a careful engineer.")
    with FakeMessagesServer(_answer, prompt_cache=PromptCache(min_tokens=4)) as server:
        first, second = await _send(server, short, short)

    assert first.cache_creation_input_tokens > 0 and second.cache_read_input_tokens == first.cache_creation_input_tokens


async def test_entries_expire_after_five_minutes_and_each_read_refreshes_them() -> None:
    clock = Clock()
    with FakeMessagesServer(_answer, prompt_cache=PromptCache(clock=clock)) as server:
        (written,) = await _send(server, _request())
        clock.now += 299
        (read,) = await _send(server, _request())
        clock.now += 299  # 598 s after the write, but only 299 s after the read that refreshed it
        (refreshed,) = await _send(server, _request())
        clock.now += 301
        (expired,) = await _send(server, _request())

    assert read.cache_read_input_tokens == refreshed.cache_read_input_tokens == written.cache_creation_input_tokens
    assert expired.cache_read_input_tokens == 0
    assert expired.cache_creation_input_tokens == written.cache_creation_input_tokens


async def test_more_than_four_breakpoints_is_refused_with_a_400_like_the_api() -> None:
    marked = [
        {"type": "text", "text": f"part {n}", "cache_control": {"type": "ephemeral"}}
        for n in range(MAX_CACHE_BREAKPOINTS + 1)
    ]
    with FakeMessagesServer(_answer) as server:
        sdk = anthropic.AsyncAnthropic(api_key=API_KEY, base_url=server.base_url, max_retries=0)
        try:
            with pytest.raises(anthropic.BadRequestError) as refused:
                await sdk.messages.create(
                    model=MODEL, max_tokens=16, system=marked[:2], messages=[{"role": "user", "content": marked[2:]}]
                )
            accepted = await sdk.messages.create(
                model=MODEL, max_tokens=16, system=marked[:2], messages=[{"role": "user", "content": marked[2:4]}]
            )
        finally:
            await sdk.close()

    assert refused.value.status_code == 400
    assert "A maximum of 4 blocks with cache_control may be provided. Found 5." in str(refused.value)
    assert accepted.stop_reason == "end_turn"


# --------------------------------------------------------------------------------------------------
# The factory's requests


def _tool_turn(n: int) -> dict[str, Any]:
    return {"type": "tool_use", "id": f"toolu_{n:02d}", "name": "bash", "input": {"command": f"echo {n}"}}


def _conversation(turns: int, *, stale_marks: bool = False) -> list[dict[str, Any]]:
    """An agent transcript after `turns` tool turns; `stale_marks` leaves a breakpoint on every block, as a
    transcript saved with its request's breakpoints would carry."""
    mark = {"cache_control": {"type": "ephemeral"}} if stale_marks else {}
    messages: list[dict[str, Any]] = [
        {"role": "user", "content": [{"type": "text", "text": "Task id: t1 · attempt 1 of 3\n\nAdd slugify.", **mark}]}
    ]
    for n in range(turns):
        messages.append({"role": "assistant", "content": [{"type": "text", "text": f"Step {n}."}, _tool_turn(n)]})
        result = {"type": "tool_result", "tool_use_id": f"toolu_{n:02d}", "content": f"{n}\n" * 40, **mark}
        messages.append({"role": "user", "content": [result]})
    return messages


def _agent_request(messages: list[dict[str, Any]], context: str = "Repository overview.\n" * 60) -> ModelRequest:
    return ModelRequest(
        model=MODEL,
        system=prompts.agent_system(),
        context=context,
        messages=messages,
        tools=prompts.agent_tools(),
        max_tokens=256,
        cache_conversation=True,
    )


async def test_each_agent_turn_reads_everything_the_previous_turn_sent() -> None:
    requests = [_agent_request(_conversation(turns)) for turns in range(4)]
    with FakeMessagesServer(_answer) as server:
        usages = await _send(server, *requests)
        totals = [server.prompt_cache.prompt_tokens(r.body) for r in server.requests]

    for before, after, total_before in zip(usages, usages[1:], totals, strict=False):
        assert after.cache_read_input_tokens == total_before, "the next turn reads the whole previous request"
        assert after.input_tokens == 0 and after.cache_creation_input_tokens > 0
        assert before.all_input_tokens == total_before
    assert [cache_breakpoints(r.body) for r in server.requests] == [3, 4, 4, 4]


async def test_a_transcript_carrying_stale_breakpoints_is_sent_with_at_most_four() -> None:
    request = _agent_request(_conversation(6, stale_marks=True))
    before = request.model_dump()
    assert cache_breakpoints(before) == 7

    with FakeMessagesServer(_answer) as server:
        (usage,) = await _send(server, request)

    assert cache_breakpoints(server.requests[0].body) == MAX_CACHE_BREAKPOINTS
    assert usage.cache_creation_input_tokens > 0, "accepted (no 400) and cached"
    assert request.model_dump() == before, "the caller's request is not mutated"


async def test_the_planner_test_writer_and_reviewer_share_their_instructions_in_the_cache(tmp_path: Path) -> None:
    repo_path = make_repo(tmp_path / "textkit")
    repo = read_snapshot(str(repo_path), "HEAD")
    config = RunConfig(model=MODEL)
    planned = PlannedTask.model_validate(demo_transcript()["plan"]["content"][0]["input"]["tasks"][0])
    spec = "Add slugify to textkit."
    plan = prompts.planner_request(
        PlanInput(run_id="r1", repo_path=str(repo_path), base_sha="HEAD", spec=spec, config=config), repo
    )
    tests = prompts.acceptance_request(
        AcceptanceInput(run_id="r1", task=planned, spec=spec, repo_path=str(repo_path), base_sha="HEAD", config=config),
        repo,
    )
    review = prompts.review_request(
        ReviewInput(
            run_id="r1",
            task_id=planned.id,
            attempt=1,
            repo_path=str(repo_path),
            base_sha="HEAD",
            sha="HEAD",
            spec=spec,
            task=planned,
            gates=[],
            model=MODEL,
            config=config,
        ),
        "",
        "",
        repo,
    )
    with FakeMessagesServer(_answer) as server:
        planned_usage, tests_usage, review_usage = await _send(server, plan, tests, review)
        bodies = [r.body for r in server.requests]

    # One tool list and one system prompt: the same prefix, each request forcing its own tool.
    assert bodies[0]["tools"] == bodies[1]["tools"] == bodies[2]["tools"]
    assert bodies[0]["system"] == bodies[1]["system"] == bodies[2]["system"]
    assert [context_from_request(body).purpose for body in bodies] == ["plan", "acceptance", "review"]
    shared = server.prompt_cache.tokens(bodies[0]["tools"]) + server.prompt_cache.tokens(bodies[0]["system"][0])
    assert shared >= 1024, "long enough to be cached on its own"
    assert planned_usage.cache_read_input_tokens == 0
    # tool_choice differs, which keeps the tools' and system's entries (the messages' are its own).
    assert tests_usage.cache_read_input_tokens >= shared * 0.95
    assert review_usage.cache_read_input_tokens >= shared * 0.95


# --------------------------------------------------------------------------------------------------
# Ten turns of a real agent loop


def _view(path: str, say: str = "") -> dict[str, Any]:
    call = {"type": "tool_use", "name": "str_replace_based_edit_tool", "input": {"command": "view", "path": path}}
    return {"content": [{"type": "text", "text": say}, call] if say else [call]}


def _bash(command: str) -> dict[str, Any]:
    return {"content": [{"type": "tool_use", "name": "bash", "input": {"command": command}}]}


def ten_turn_transcript() -> dict[str, Any]:
    """The demo's first task done in ten turns: read, write, test, fix, test again, stop."""
    demo = demo_transcript()
    plan = copy.deepcopy(demo["plan"])
    plan["content"][0]["input"]["tasks"] = plan["content"][0]["input"]["tasks"][:1]
    first, retry = demo["tasks"]["add-slugify"]
    create_module, create_tests = first[1]["content"][1], first[1]["content"][2]
    turns = [
        _view("textkit/words.py", "I'll read the existing helpers first."),
        _view("tests/test_words.py"),
        _view("textkit/__init__.py"),
        _bash("python -m pytest -q"),
        {"content": [{"type": "text", "text": "Adding the module."}, create_module]},
        {"content": [{"type": "text", "text": "And its tests."}, create_tests]},
        _bash("python -m pytest -q tests/test_slug.py"),
        retry[0],  # strip the outer dashes the failing test showed
        _bash("python -m pytest -q"),
        {"content": [{"type": "text", "text": "Added textkit/slug.py with slugify; all tests pass."}]},
    ]
    return {
        "description": "one task in ten agent turns",
        "plan": plan,
        "tasks": {"add-slugify": [turns]},
        "acceptance": {"add-slugify": demo["acceptance"]["add-slugify"]},
        "reviews": {"add-slugify": [demo["reviews"]["add-slugify"][1]]},
    }


@dataclass
class TenTurnRun:
    summary: RunState
    requests: list[RecordedRequest]


@pytest_asyncio.fixture(scope="module")
async def ten_turn_run(
    temporal_env: WorkflowEnvironment, factory_home: Path, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[TenTurnRun]:
    """One factory run over HTTP whose only task takes ten agent turns, at a server with a faithful cache."""
    tmp = tmp_path_factory.mktemp("ten-turns")
    repo = make_repo(tmp / "textkit")
    script = write_transcript(tmp / "transcript.json", ten_turn_transcript())
    with FakeMessagesServer(ScriptResponder(script)) as server, pytest.MonkeyPatch.context() as env:
        env.setenv("ANTHROPIC_BASE_URL", server.base_url)
        env.setenv("ANTHROPIC_API_KEY", API_KEY)
        summary = await run_to_end(temporal_env.client, factory_home, request_for(repo, MODEL))
        yield TenTurnRun(summary, server.requests)


async def test_a_ten_turn_agent_task_reads_at_least_85_percent_of_its_input_from_the_cache(
    ten_turn_run: TenTurnRun,
) -> None:
    summary = ten_turn_run.summary
    assert summary.succeeded, summary.error
    agent = summary.usage.by_purpose["agent"]
    assert agent.calls == 10
    share = agent.cache_read_share
    assert share is not None
    print(
        f"\nten-turn agent task: {share:.1%} of {agent.all_input_tokens} input tokens read from the cache "
        f"({agent.cache_read_input_tokens} read, {agent.cache_creation_input_tokens} written, "
        f"{agent.input_tokens} uncached); whole run {summary.cache_read_share:.1%}"
    )
    assert share >= 0.85


async def test_the_factory_never_sends_more_than_four_breakpoints(ten_turn_run: TenTurnRun) -> None:
    counts = {context_from_request(r.body).key: cache_breakpoints(r.body) for r in ten_turn_run.requests}

    assert len(counts) == 13  # plan, test writer, ten agent turns, review
    assert max(counts.values()) <= MAX_CACHE_BREAKPOINTS
    # Turn 2 on: instructions, repository overview, the previous turn's end and this one's.
    assert [counts[f"agent:add-slugify:1:{turn}"] for turn in range(1, 11)] == [3] + [4] * 9
    assert counts["plan"] == counts["review:add-slugify:1:0"] == 2


async def test_the_run_summary_gives_the_cache_read_share(ten_turn_run: TenTurnRun) -> None:
    summary = ten_turn_run.summary
    usage = summary.usage

    assert summary.cache_read_share == usage.cache_read_input_tokens / usage.all_input_tokens
    assert summary.cache_read_share is not None and summary.cache_read_share > 0.5
    for purpose in ("plan", "acceptance", "agent", "review"):
        assert usage.by_purpose[purpose].calls >= 1
    assert sum(part.calls for part in usage.by_purpose.values()) == usage.calls == 13
