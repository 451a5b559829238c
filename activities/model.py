"""Model activities: the planner call and one agent turn. Each is exactly one model call.

The transcript lives in the blob store; an activity reads it by ref, appends the answer and writes a new
blob. A retry therefore repeats at most the one call in flight, never the conversation before it.
"""

from __future__ import annotations

import ast
import time
from collections.abc import Callable
from datetime import timedelta
from typing import TypeVar

import structlog
from opentelemetry import trace
from opentelemetry.util.types import AttributeValue
from pydantic import BaseModel, ValidationError
from temporalio import activity

from darkfactory import prompts, workspace
from darkfactory.activities import metrics
from darkfactory.activities.context import heartbeating
from darkfactory.activities.errors import INVALID_PLAN, OVER_BUDGET, business_error, model_error
from darkfactory.blobs import BlobStore
from darkfactory.budget import BudgetExceeded, check_call
from darkfactory.contracts import (
    AcceptanceInput,
    AcceptanceSuite,
    AcceptanceTests,
    AgentTurnInput,
    AgentTurnResult,
    BlobRef,
    BudgetCheck,
    CallContext,
    ModelRequest,
    ModelResponse,
    Plan,
    PlanInput,
    PlanResult,
    ReviewInput,
    ReviewResult,
    ReviewVerdict,
)
from darkfactory.model_seam import SCRIPTED_PREFIX, ModelCallError, ModelClient
from darkfactory.plan import PlanError, validate_plan
from darkfactory.pricing import PriceTable, load_prices, priced_usage
from darkfactory.repo_context import read_snapshot

log = structlog.get_logger(__name__)
TEXT_IN_HISTORY = 2000
"""Characters of the model's text kept in workflow history per turn; the full text is in the transcript."""


class ModelActivities:
    """Activities that call a model. `client_for` maps a RunConfig.model string to a client."""

    def __init__(
        self, client_for: Callable[[str], ModelClient], blobs: BlobStore, prices: PriceTable | None = None
    ) -> None:
        self._client_for = client_for
        self._blobs = blobs
        # The operator's price file is read once, when the worker builds its activities.
        self._prices = prices if prices is not None else load_prices()

    async def _call(
        self, request: ModelRequest, context: CallContext, heartbeat_s: float, budget: BudgetCheck | None
    ) -> ModelResponse:
        meter = activity.metric_meter()
        try:
            check_call(budget, request, context.purpose, self._prices)
        except BudgetExceeded as exc:
            # Refused before anything is sent: the workflow escalates the task with these figures.
            log.warning("model_call_refused", purpose=context.purpose, reason=str(exc))
            metrics.record_model_call_failed(meter, purpose=context.purpose, model=request.model, kind="over_budget")
            raise business_error(OVER_BUDGET, str(exc)) from None
        client = self._client_for(request.model)
        model = metrics.model_label(request.model)
        # A span of its own: the activity's span also covers reading and writing the transcript.
        with trace.get_tracer(__name__).start_as_current_span(
            f"chat {model}", kind=trace.SpanKind.CLIENT, attributes=_call_attributes(request, context)
        ) as span:
            started = time.monotonic()
            try:
                async with heartbeating(max(heartbeat_s / 3, 0.5)):
                    response = await client.create(request, context)
            except ModelCallError as exc:
                log.warning("model_call_failed", kind=exc.kind, retryable=exc.retryable, status=exc.status)
                metrics.record_model_call_failed(meter, purpose=context.purpose, model=request.model, kind=exc.kind)
                span.set_attribute("error.type", exc.kind)
                # `from None`: only our redacted message travels; the SDK error's text carries the response body.
                raise model_error(exc) from None
            # Priced where the call is made, with the model that answered: the workflows only add usage up.
            priced = priced_usage(response.usage, model=response.model, purpose=context.purpose, prices=self._prices)
            response = response.model_copy(update={"usage": priced})
            duration = timedelta(seconds=time.monotonic() - started)
            cost = metrics.cost_of(response.usage)
            span.set_attributes(_answer_attributes(response, cost))
            log.info(
                "model_call",
                purpose=context.purpose,
                scripted=response.scripted,
                stop_reason=response.stop_reason,
                input_tokens=response.usage.input_tokens,
                output_tokens=response.usage.output_tokens,
                cache_read=response.usage.cache_read_input_tokens,
                cache_write=response.usage.cache_creation_input_tokens,
                cost_usd=response.usage.cost,
                seconds=round(duration.total_seconds(), 3),
            )
        metrics.record_model_call(
            meter, purpose=context.purpose, model=request.model, usage=response.usage, duration=duration, cost_usd=cost
        )
        return response

    def _save_exchange(self, request: ModelRequest, response: ModelResponse) -> BlobRef:
        messages = [*request.messages, {"role": "assistant", "content": response.content}]
        return self._blobs.put_json({"system": request.system, "context": request.context, "messages": messages})

    @activity.defn
    async def plan_run(self, input: PlanInput) -> PlanResult:
        request = prompts.planner_request(input, read_snapshot(input.repo_path, input.base_sha))
        context = CallContext(purpose="plan", run_id=input.run_id, attempt=input.attempt)
        response = await self._call(request, context, input.config.timeouts.heartbeat_s, input.budget)
        transcript = self._save_exchange(request, response)
        plan = _tool_answer(response, prompts.SUBMIT_PLAN_TOOL, Plan, "the planner", INVALID_PLAN)
        try:
            validate_plan(plan)
        except PlanError as exc:
            raise business_error(INVALID_PLAN, f"the planner's plan is invalid: {exc}") from exc
        return PlanResult(plan=plan, usage=response.usage, transcript_ref=transcript, scripted=response.scripted)

    @activity.defn
    async def agent_turn(self, input: AgentTurnInput) -> AgentTurnResult:
        if input.transcript_ref is None:
            if input.brief is None:
                raise business_error("InvalidInput", "agent_turn needs a brief on an attempt's first turn")
            # The overview is kept with the transcript, so every turn of the attempt sends it byte for byte.
            repo = read_snapshot(input.brief.repo_path, input.brief.sha)
            transcript = {
                "system": prompts.agent_system(),
                "context": prompts.repository_context(repo),
                "messages": [{"role": "user", "content": prompts.agent_first_message(input.brief)}],
            }
        else:
            transcript = self._blobs.get_json(input.transcript_ref)
        request = ModelRequest(
            model=input.config.model,
            system=transcript["system"],
            # Transcripts written before the overview existed have its listing in their first message.
            context=transcript.get("context", ""),
            messages=transcript["messages"],
            tools=prompts.agent_tools(),
            max_tokens=input.config.max_tokens,
            cache_conversation=True,
        )
        context = CallContext(
            purpose="agent", run_id=input.run_id, task_id=input.task_id, attempt=input.attempt, turn=input.turn
        )
        response = await self._call(request, context, input.config.timeouts.heartbeat_s, input.budget)
        updated = {
            "system": transcript["system"],
            "context": request.context,
            "messages": [*transcript["messages"], {"role": "assistant", "content": response.content}],
        }
        return AgentTurnResult(
            transcript_ref=self._blobs.put_json(updated),
            stop_reason=response.stop_reason,
            tool_calls=response.tool_calls,
            text=response.text[:TEXT_IN_HISTORY],
            usage=response.usage,
            scripted=response.scripted,
        )

    @activity.defn
    async def review_change(self, input: ReviewInput) -> ReviewResult:
        """An AI review in a fresh context: spec, task, diff and gate results; never the generator's transcript."""
        diff = workspace.diff_text(input.repo_path, input.base_sha, input.sha)
        diff_stat = workspace.diff_stat(input.repo_path, input.base_sha, input.sha)
        request = prompts.review_request(input, diff, diff_stat, read_snapshot(input.repo_path, input.base_sha))
        context = CallContext(purpose="review", run_id=input.run_id, task_id=input.task_id, attempt=input.attempt)
        response = await self._call(request, context, input.config.timeouts.heartbeat_s, input.budget)
        transcript = self._save_exchange(request, response)
        verdict = _tool_answer(response, prompts.SUBMIT_REVIEW_TOOL, ReviewVerdict, "the reviewer")
        return ReviewResult(
            verdict=verdict, usage=response.usage, transcript_ref=transcript, scripted=response.scripted
        )

    @activity.defn
    async def write_acceptance_tests(self, input: AcceptanceInput) -> AcceptanceSuite:
        """Held-out tests from the task's acceptance criteria, written in a context the generator never sees."""
        request = prompts.acceptance_request(input, read_snapshot(input.repo_path, input.base_sha))
        context = CallContext(purpose="acceptance", run_id=input.run_id, task_id=input.task.id, attempt=input.attempt)
        response = await self._call(request, context, input.config.timeouts.heartbeat_s, input.budget)
        tests = _tool_answer(response, prompts.SUBMIT_TESTS_TOOL, AcceptanceTests, "the acceptance-test writer")
        ref = self._blobs.put_json({file.path: file.content for file in tests.files})
        names = [f"{file.path}::{name}" for file in tests.files for name in _test_names(file.content)]
        return AcceptanceSuite(files_ref=ref, names=names, usage=response.usage)


def _call_attributes(request: ModelRequest, context: CallContext) -> dict[str, AttributeValue]:
    """OpenTelemetry's GenAI names where they exist, so tracing UIs show model calls as such."""
    attributes: dict[str, AttributeValue] = {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "scripted" if request.model.startswith(SCRIPTED_PREFIX) else "anthropic",
        "gen_ai.request.model": metrics.model_label(request.model),
        "gen_ai.request.max_tokens": request.max_tokens,
        "darkfactory.purpose": context.purpose,
        "darkfactory.run_id": context.run_id,
        "darkfactory.attempt": context.attempt,
    }
    if context.task_id is not None:
        attributes["darkfactory.task_id"] = context.task_id
    if context.turn:
        attributes["darkfactory.turn"] = context.turn
    return attributes


def _answer_attributes(response: ModelResponse, cost_usd: float | None) -> dict[str, AttributeValue]:
    usage = response.usage
    attributes: dict[str, AttributeValue] = {
        "gen_ai.response.id": response.id,
        "gen_ai.response.model": metrics.model_label(response.model),
        "gen_ai.response.finish_reasons": [response.stop_reason or ""],
        "gen_ai.usage.input_tokens": usage.input_tokens,
        "gen_ai.usage.output_tokens": usage.output_tokens,
        "gen_ai.usage.cache_read.input_tokens": usage.cache_read_input_tokens,
        "gen_ai.usage.cache_creation.input_tokens": usage.cache_creation_input_tokens,
        "darkfactory.scripted": response.scripted,
    }
    if cost_usd is not None:
        attributes["darkfactory.cost_usd"] = cost_usd
    return attributes


ToolAnswer = TypeVar("ToolAnswer", bound=BaseModel)


def _tool_answer(
    response: ModelResponse, tool: str, model: type[ToolAnswer], who: str, kind: str = "InvalidModelAnswer"
) -> ToolAnswer:
    """A structured answer from the model: the tool call's input, validated by its contract."""
    calls = [call for call in response.tool_calls if call.name == tool]
    if not calls:
        raise business_error(kind, f"{who} answered without calling {tool}")
    try:
        return model.model_validate(calls[0].input)
    except ValidationError as exc:
        noun = "plan" if model is Plan else "answer"
        raise business_error(kind, f"{who}'s {noun} is invalid: {_pydantic_problems(exc)}") from exc


def _test_names(source: str) -> list[str]:
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return []
    return [node.name for node in ast.walk(tree) if isinstance(node, ast.FunctionDef) and node.name.startswith("test")]


def _pydantic_problems(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(part) for part in error['loc']) or 'plan'}: {error['msg']}" for error in exc.errors()[:5]
    )
