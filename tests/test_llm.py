"""The model seam: the real Anthropic SDK over HTTP against a local fake, the error table, scripted replay."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from darkfactory.contracts import CallContext, ModelRequest, Usage
from darkfactory.llm import AnthropicClient, ModelCallError, build_model_client, classify_error, estimate_cost_usd
from darkfactory.scripted import ScriptedClient, ScriptedTranscript, TranscriptError, context_from_request
from darkfactory.testing.fake_messages_api import FakeMessagesServer, FakeReply, ScriptResponder

# Deliberately not shaped like a real key, so only the adapter's explicit redaction can hide it.
API_KEY = "test-secret-0123456789abcdef"
MODEL = "claude-sonnet-4-6"
CONTEXT = CallContext(purpose="agent", run_id="r1", task_id="t1", attempt=1, turn=1)

TOOLS: list[dict[str, Any]] = [
    {"name": "read_file", "description": "Read a file.", "input_schema": {"type": "object"}},
    {"name": "write_file", "description": "Write a file.", "input_schema": {"type": "object"}},
]


def _request(messages: list[dict[str, Any]] | None = None) -> ModelRequest:
    return ModelRequest(
        model=MODEL,
        system="You are a careful engineer.",
        messages=messages or [{"role": "user", "content": "Task id: t1 · attempt 1 of 3\n\nAdd slugify."}],
        tools=TOOLS,
        max_tokens=1024,
    )


async def _call(server: FakeMessagesServer, *, timeout_s: float = 30.0) -> ModelCallError:
    """One call expected to fail; returns the error after checking it is safe to log."""
    client = AnthropicClient(api_key=API_KEY, base_url=server.base_url, timeout_s=timeout_s)
    try:
        with pytest.raises(ModelCallError) as caught:
            await client.create(_request(), CONTEXT)
    finally:
        await client.aclose()
    err = caught.value
    assert API_KEY not in str(err)
    assert API_KEY not in repr(err)
    return err


def _always(reply: FakeReply) -> Callable[[dict[str, Any]], FakeReply]:
    return lambda body: reply


@pytest.fixture
async def anthropic_env(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[None]:
    """Isolates credential lookup from the machine running the tests."""
    for name in ("ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN", "ANTHROPIC_BASE_URL", "ANTHROPIC_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    yield


# --------------------------------------------------------------------------------------------------
# AnthropicClient over HTTP


def _tool_loop_responder(body: dict[str, Any]) -> FakeReply:
    usage = Usage(input_tokens=120, output_tokens=30, cache_creation_input_tokens=900, cache_read_input_tokens=40)
    last = body["messages"][-1]
    if isinstance(last["content"], list) and last["content"][0].get("type") == "tool_result":
        return FakeReply.message([{"type": "text", "text": "Done."}], "end_turn", usage=usage, model=MODEL)
    block = {"type": "tool_use", "id": "toolu_01", "name": "read_file", "input": {"path": "README.md"}}
    return FakeReply.message(
        [{"type": "text", "text": "Reading."}, block], "tool_use", usage=usage, model=MODEL, id="msg_1"
    )


async def test_tool_use_loop_returns_tool_calls_then_end_turn() -> None:
    with FakeMessagesServer(_tool_loop_responder) as server:
        client = AnthropicClient(api_key=API_KEY, base_url=server.base_url)
        first = await client.create(_request(), CONTEXT)
        tool_result = {"type": "tool_result", "tool_use_id": first.tool_calls[0].id, "content": "# readme"}
        second_request = _request(
            [
                *_request().messages,
                {"role": "assistant", "content": first.content},
                {"role": "user", "content": [tool_result]},
            ]
        )
        second = await client.create(second_request, CONTEXT.model_copy(update={"turn": 2}))
        await client.aclose()

    assert first.id == "msg_1"
    assert first.model == MODEL
    assert first.stop_reason == "tool_use"
    assert first.scripted is False
    assert first.content == [
        {"type": "text", "text": "Reading."},
        {"type": "tool_use", "id": "toolu_01", "name": "read_file", "input": {"path": "README.md"}},
    ]
    assert [(c.id, c.name, c.input) for c in first.tool_calls] == [("toolu_01", "read_file", {"path": "README.md"})]
    assert first.usage == Usage(
        input_tokens=120, output_tokens=30, cache_creation_input_tokens=900, cache_read_input_tokens=40, calls=1
    )
    assert second.stop_reason == "end_turn"
    assert second.text == "Done."
    assert second.tool_calls == []


async def test_a_one_shot_request_caches_its_instructions_not_its_message() -> None:
    request = _request()
    with FakeMessagesServer(_tool_loop_responder) as server:
        client = AnthropicClient(api_key=API_KEY, base_url=server.base_url)
        await client.create(request, CONTEXT)
        await client.aclose()
        sent = server.requests[0].body

    # The system prompt comes after the tools, so its breakpoint covers both; a one-shot call's message is
    # read by no later request, so writing it to the cache would only cost more.
    assert sent["system"] == [
        {"type": "text", "text": "You are a careful engineer.", "cache_control": {"type": "ephemeral"}}
    ]
    assert [tool.get("cache_control") for tool in sent["tools"]] == [None, None]
    assert sent["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "Task id: t1 · attempt 1 of 3\n\nAdd slugify."}]}
    ]
    assert sent["model"] == MODEL
    assert sent["max_tokens"] == 1024
    assert "cache_control" not in request.tools[-1], "the caller's request must not be mutated"


async def test_configured_key_is_sent_as_the_credential() -> None:
    with FakeMessagesServer(_tool_loop_responder) as server:
        client = AnthropicClient(api_key=API_KEY, base_url=server.base_url)
        await client.create(_request(), CONTEXT)
        await client.aclose()
        headers = server.requests[0].headers

    # SDK 2.12 sends a static key as a bearer token; older SDKs used `x-api-key`. Either carries it.
    sent = headers.get("x-api-key") or headers.get("authorization", "").removeprefix("Bearer ")
    assert sent == API_KEY
    assert API_KEY not in repr(client)


async def test_key_and_base_url_default_to_the_environment(
    anthropic_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    with FakeMessagesServer(_tool_loop_responder) as server:
        monkeypatch.setenv("ANTHROPIC_API_KEY", API_KEY)
        monkeypatch.setenv("ANTHROPIC_BASE_URL", server.base_url)
        client = AnthropicClient()
        response = await client.create(_request(), CONTEXT)
        await client.aclose()
        assert server.request_count() == 1

    assert response.stop_reason == "tool_use"


async def test_error_text_never_carries_the_key_even_when_the_server_echoes_it() -> None:
    reply = FakeReply.error(401, "authentication_error", f"invalid x-api-key {API_KEY}")
    with FakeMessagesServer(_always(reply)) as server:
        err = await _call(server)

    assert err.kind == "authentication"
    assert "[redacted]" in str(err)


async def test_rate_limit_is_retryable_after_the_servers_delay_with_one_request() -> None:
    reply = FakeReply.error(429, "rate_limit_error", "slow down", headers={"retry-after": "7"})
    with FakeMessagesServer(_always(reply)) as server:
        err = await _call(server)
        assert server.request_count() == 1, "max_retries=0: Temporal owns retries"

    assert (err.kind, err.retryable, err.retry_after_s, err.status) == ("rate_limited", True, 7.0, 429)


async def test_retry_after_ms_wins_over_retry_after() -> None:
    headers = {"retry-after": "7", "retry-after-ms": "1500"}
    with FakeMessagesServer(_always(FakeReply.error(429, "rate_limit_error", "slow", headers=headers))) as server:
        err = await _call(server)

    assert err.retry_after_s == 1.5


@pytest.mark.parametrize(
    ("status", "error_type", "kind", "retryable"),
    [
        (400, "invalid_request_error", "bad_request", False),
        (401, "authentication_error", "authentication", False),
        (403, "permission_error", "permission", False),
        (404, "not_found_error", "not_found", False),
        (408, "timeout_error", "timeout", True),
        (409, "conflict_error", "conflict", True),
        (413, "request_too_large", "request_too_large", False),
        (500, "api_error", "server_error", True),
        (502, "api_error", "server_error", True),
        (503, "api_error", "server_error", True),
        (504, "api_error", "server_error", True),
        (529, "overloaded_error", "overloaded", True),
    ],
)
async def test_status_errors_follow_the_table_with_one_request(
    status: int, error_type: str, kind: str, retryable: bool
) -> None:
    with FakeMessagesServer(_always(FakeReply.error(status, error_type, "boom"))) as server:
        err = await _call(server)
        assert server.request_count() == 1

    assert (err.kind, err.retryable, err.status) == (kind, retryable, status)
    assert f"HTTP {status}" in str(err)


@pytest.mark.parametrize("code", ["enforced_spend_limit_reached", "contract_spend_limit_reached"])
async def test_spend_limit_429_is_not_retryable(code: str) -> None:
    reply = FakeReply.error(429, "rate_limit_error", "limit reached", headers={"retry-after": "60"}, error_code=code)
    with FakeMessagesServer(_always(reply)) as server:
        err = await _call(server)
        assert server.request_count() == 1

    assert (err.kind, err.retryable, err.retry_after_s) == ("spend_limit", False, None)
    assert code in str(err)


async def test_malformed_json_200_is_a_retryable_malformed_response() -> None:
    with FakeMessagesServer(_always(FakeReply(status=200, body='{"id": "msg_1", "content": ['))) as server:
        err = await _call(server)

    assert (err.kind, err.retryable) == ("malformed_response", True)
    # The SDK lets this escape as a bare JSONDecodeError, not an anthropic.APIError (measured in SDK 2.12).
    assert isinstance(err.__cause__, json.JSONDecodeError)


async def test_json_of_the_wrong_shape_is_a_retryable_malformed_response() -> None:
    with FakeMessagesServer(_always(FakeReply(status=200, body={"unexpected": True}))) as server:
        err = await _call(server)

    assert (err.kind, err.retryable) == ("malformed_response", True)


async def test_hung_server_gives_a_retryable_timeout() -> None:
    with FakeMessagesServer(_tool_loop_responder) as server:
        arrived = server.hold_when(lambda body: True)
        err = await _call(server, timeout_s=0.5)
        assert arrived.is_set()
        # Leaving the block releases the held handler; its write to the closed socket is ignored.

    assert (err.kind, err.retryable) == ("timeout", True)


async def test_refused_connection_is_retryable() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    client = AnthropicClient(api_key=API_KEY, base_url=f"http://127.0.0.1:{port}", timeout_s=5)
    with pytest.raises(ModelCallError) as caught:
        await client.create(_request(), CONTEXT)
    await client.aclose()

    assert (caught.value.kind, caught.value.retryable) == ("connection", True)


async def test_held_request_is_answered_after_release() -> None:
    with FakeMessagesServer(_tool_loop_responder) as server:
        arrived = server.hold_when(lambda body: body["model"] == MODEL)
        client = AnthropicClient(api_key=API_KEY, base_url=server.base_url)
        call = asyncio.create_task(client.create(_request(), CONTEXT))
        assert await asyncio.to_thread(arrived.wait, 10)
        assert not call.done()
        server.release()
        response = await call
        await client.aclose()

    assert response.stop_reason == "tool_use"


async def test_missing_credentials_fail_as_authentication(
    anthropic_env: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("ANTHROPIC_CONFIG_DIR", str(tmp_path))  # no profiles on disk either
    client = AnthropicClient(base_url="http://127.0.0.1:9")  # constructing it needs no key
    with pytest.raises(ModelCallError) as caught:
        await client.create(_request(), CONTEXT)

    assert (caught.value.kind, caught.value.retryable) == ("authentication", False)


def test_unknown_exceptions_are_unexpected_and_not_retryable() -> None:
    err = classify_error(RuntimeError(f"bug near {API_KEY} and sk-ant-api03-abcdefghijkl"), secrets=[API_KEY])

    assert (err.kind, err.retryable) == ("unexpected", False)
    assert API_KEY not in str(err)
    assert "sk-ant-api03" not in str(err)


# --------------------------------------------------------------------------------------------------
# Scripted transcripts


TRANSCRIPT: dict[str, Any] = {
    "description": "two turns for t1, a retry on attempt 2",
    "plan": {"content": [{"type": "tool_use", "name": "submit_plan", "input": {"summary": "s", "tasks": []}}]},
    "tasks": {
        "t1": [
            [
                {"content": [{"type": "tool_use", "name": "read_file", "input": {"path": "a.py"}}]},
                {"content": [{"type": "text", "text": "Done."}]},
            ],
            [
                {
                    "content": [
                        {"type": "text", "text": "Retrying."},
                        {"type": "tool_use", "name": "write_file", "input": {"path": "a.py", "text": "x"}},
                        {"type": "tool_use", "name": "read_file", "input": {"path": "a.py"}},
                    ]
                }
            ],
        ]
    },
    "reviews": {"t1": [{"content": [{"type": "text", "text": "LGTM"}], "stop_reason": "end_turn"}]},
}


@pytest.fixture
def transcript_path(tmp_path: Path) -> Path:
    path = tmp_path / "transcript.json"
    path.write_text(json.dumps(TRANSCRIPT))
    return path


def _ctx(purpose: str, attempt: int = 0, turn: int = 0) -> CallContext:
    task = None if purpose == "plan" else "t1"
    return CallContext.model_validate(
        {"purpose": purpose, "run_id": "r1", "task_id": task, "attempt": attempt, "turn": turn}
    )


async def test_scripted_client_plays_plan_and_agent_turns(transcript_path: Path) -> None:
    client = ScriptedClient(transcript_path)

    plan = await client.create(_request(), _ctx("plan"))
    turn1 = await client.create(_request(), _ctx("agent", 1, 1))
    turn2 = await client.create(_request(), _ctx("agent", 1, 2))
    retry = await client.create(_request(), _ctx("agent", 2, 1))
    review = await client.create(_request(), _ctx("review", 1))

    assert plan.tool_calls[0].name == "submit_plan"
    assert (turn1.stop_reason, turn1.tool_calls[0].input) == ("tool_use", {"path": "a.py"})
    assert (turn2.stop_reason, turn2.text) == ("end_turn", "Done.")
    assert [c.name for c in retry.tool_calls] == ["write_file", "read_file"]
    assert review.text == "LGTM"
    for response in (plan, turn1, turn2, retry, review):
        assert response.scripted is True
        assert response.model == "scripted"
        assert response.usage.calls == 1
        assert response.usage.input_tokens > 0
        assert response.usage.output_tokens > 0
    assert estimate_cost_usd(turn1.model, turn1.usage) == 0.0  # a scripted call costs nothing


async def test_scripted_ids_are_deterministic_across_instances(transcript_path: Path) -> None:
    first = await ScriptedClient(transcript_path).create(_request(), _ctx("agent", 2, 1))
    again = await ScriptedClient(transcript_path).create(_request(), _ctx("agent", 2, 1))
    other_turn = await ScriptedClient(transcript_path).create(_request(), _ctx("agent", 1, 1))

    assert first == again
    ids = [c.id for c in first.tool_calls]
    assert len(set(ids)) == 2
    assert all(i.startswith("toolu_") and len(i) == len("toolu_") + 20 for i in ids)
    assert other_turn.tool_calls[0].id not in ids
    assert first.id != other_turn.id


@pytest.mark.parametrize(
    ("context", "hint"),
    [
        (_ctx("agent", 1, 3), "attempt 1 of 't1' has 2 turn(s)"),
        (_ctx("agent", 3, 1), "covers 2 attempt(s)"),
        (CallContext(purpose="agent", run_id="r1", task_id="t9", attempt=1, turn=1), "no task 't9'"),
        (_ctx("agent", 0, 0), "start at 1"),
    ],
)
async def test_missing_script_entry_names_the_key_and_file(
    transcript_path: Path, context: CallContext, hint: str
) -> None:
    with pytest.raises(ModelCallError) as caught:
        await ScriptedClient(transcript_path).create(_request(), context)

    assert (caught.value.kind, caught.value.retryable) == ("script_exhausted", False)
    assert context.key in str(caught.value)
    assert str(transcript_path) in str(caught.value)
    assert hint in str(caught.value)


def test_invalid_transcript_names_the_file_and_the_problem(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"plan": {"content": [{"type": "tool_use", "id": "x", "name": "submit_plan"}]}}))

    with pytest.raises(TranscriptError) as caught:
        ScriptedTranscript.load(path)

    assert str(path) in str(caught.value)
    assert "plan.content.0.tool_use.id" in str(caught.value)


def test_transcript_that_is_not_json_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.json"
    path.write_text("{")

    with pytest.raises(TranscriptError, match=r"broken\.json is not valid JSON"):
        ScriptedTranscript.load(path)


def test_tool_use_stop_reason_without_a_tool_call_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "t.json"
    path.write_text(json.dumps({"plan": {"content": [{"type": "text", "text": "hi"}], "stop_reason": "tool_use"}}))

    with pytest.raises(TranscriptError, match="no tool_use block"):
        ScriptedTranscript.load(path)


def test_build_model_client_picks_scripted_or_anthropic(transcript_path: Path, anthropic_env: None) -> None:
    assert isinstance(build_model_client(f"scripted:{transcript_path}"), ScriptedClient)
    assert isinstance(build_model_client(MODEL), AnthropicClient)


# --------------------------------------------------------------------------------------------------
# The same transcript over HTTP


def _factory_body(turns_done: int, *, tools: list[dict[str, Any]] = TOOLS) -> dict[str, Any]:
    messages: list[dict[str, Any]] = [
        {"role": "user", "content": [{"type": "text", "text": "Task id: t1 · attempt 2 of 3\n\nAdd slugify."}]}
    ]
    for n in range(turns_done):
        tool_use = {"type": "tool_use", "id": f"toolu_{n}", "name": "read_file", "input": {}}
        messages.append({"role": "assistant", "content": [tool_use]})
        result = {"type": "tool_result", "tool_use_id": f"toolu_{n}", "content": "ok"}
        messages.append({"role": "user", "content": [result]})
    return {"model": MODEL, "max_tokens": 1024, "system": "s", "tools": tools, "messages": messages}


def test_context_from_request_reads_task_attempt_and_turn() -> None:
    assert context_from_request(_factory_body(2), run_id="r7") == CallContext(
        purpose="agent", run_id="r7", task_id="t1", attempt=2, turn=3
    )


def test_context_from_request_recognises_the_planner() -> None:
    body = _factory_body(0, tools=[{"name": "submit_plan", "input_schema": {"type": "object"}}])

    assert context_from_request(body) == CallContext(purpose="plan", run_id="http")


def test_context_from_request_without_a_task_line_is_refused() -> None:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hello"}], "tools": TOOLS}

    with pytest.raises(ValueError, match="Task id: <task> · attempt <n>"):
        context_from_request(body)


async def test_script_responder_serves_the_transcript_through_the_real_sdk(transcript_path: Path) -> None:
    request = _request(
        [{"role": "user", "content": "Task id: t1 · attempt 2 of 3\n\nAdd slugify."}],
    )
    with FakeMessagesServer(ScriptResponder(transcript_path)) as server:
        client = AnthropicClient(api_key=API_KEY, base_url=server.base_url)
        over_http = await client.create(request, CONTEXT)
        await client.aclose()
    direct = await ScriptedClient(transcript_path).create(request, _ctx("agent", 2, 1))

    assert over_http.scripted is False
    assert over_http.content == direct.content
    assert over_http.id == direct.id
    assert over_http.usage.output_tokens == direct.usage.output_tokens


async def test_script_responder_answers_a_gap_with_a_non_retryable_error(transcript_path: Path) -> None:
    request = _request([{"role": "user", "content": "Task id: t9 · attempt 1 of 3\n\nNothing scripted."}])
    with FakeMessagesServer(ScriptResponder(transcript_path)) as server:
        client = AnthropicClient(api_key=API_KEY, base_url=server.base_url)
        with pytest.raises(ModelCallError) as caught:
            await client.create(request, CONTEXT)
        await client.aclose()

    assert (caught.value.kind, caught.value.retryable) == ("bad_request", False)
    assert "agent:t9:1:1" in str(caught.value)


# --------------------------------------------------------------------------------------------------
# Cost


def test_cost_uses_the_models_list_price() -> None:
    usage = Usage(
        input_tokens=1_000_000,
        output_tokens=1_000_000,
        cache_creation_input_tokens=1_000_000,
        cache_read_input_tokens=1_000_000,
    )

    assert estimate_cost_usd("claude-sonnet-4-5", usage) == pytest.approx(3 + 15 + 3.75 + 0.30)
    assert estimate_cost_usd("claude-opus-4-1", usage) == pytest.approx(15 + 75 + 18.75 + 1.50)
    assert estimate_cost_usd("claude-haiku-4-5", usage) == pytest.approx(1 + 5 + 1.25 + 0.10)
    assert estimate_cost_usd("some-other-model", usage) is None, "unknown, never $0"
