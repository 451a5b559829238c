"""Scripted transcripts: a `ModelClient` that replays a JSON file, for demos and tests without a key.

`ScriptedClient` answers each call by its `CallContext` (plan, task/attempt/turn, review, acceptance), so it
holds no state and a killed worker changes nothing; `context_from_request` derives that context from a raw
Messages API body, so a local HTTP server can replay the same transcript through the real SDK.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, cast

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from darkfactory.contracts import CallContext, ModelRequest, ModelResponse, Usage
from darkfactory.model_seam import (
    ACCEPTANCE_TOOL_NAME,
    PLAN_ATTEMPT_LINE,
    PLAN_TOOL_NAME,
    REVIEW_TOOL_NAME,
    TASK_LINE,
    ModelCallError,
)

# --------------------------------------------------------------------------------------------------
# Scripted transcripts


class TranscriptError(ValueError):
    """A scripted transcript file cannot be read or is invalid; the message names the file."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ScriptedText(_Strict):
    type: Literal["text"]
    text: str = Field(min_length=1)
    """Non-empty: the API refuses an empty text block when the transcript is sent back."""


class ScriptedToolUse(_Strict):
    type: Literal["tool_use"]
    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    input: dict[str, Any] = Field(default_factory=dict)
    """Ids are not written in the file: they are derived from the call's key so replays match."""


ScriptedBlock = Annotated[ScriptedText | ScriptedToolUse, Field(discriminator="type")]


class ScriptedReply(_Strict):
    """One recorded model answer."""

    content: list[ScriptedBlock]
    stop_reason: Literal["end_turn", "tool_use", "max_tokens"] | None = None
    """Default: `tool_use` when the content has a tool_use block, else `end_turn`."""

    @model_validator(mode="after")
    def _tool_use_needs_a_call(self) -> ScriptedReply:
        if self.stop_reason == "tool_use" and not any(b.type == "tool_use" for b in self.content):
            raise ValueError("stop_reason is 'tool_use' but the content has no tool_use block")
        return self

    @property
    def effective_stop_reason(self) -> str:
        if self.stop_reason is not None:
            return self.stop_reason
        return "tool_use" if any(b.type == "tool_use" for b in self.content) else "end_turn"


class _TranscriptFile(_Strict):
    description: str = ""
    plan: ScriptedReply | None = None
    plan_retries: list[ScriptedReply] = Field(default_factory=list)
    """The planner's replies to planning attempts 2, 3, ... (after an invalid plan was sent back)."""
    tasks: dict[str, list[list[ScriptedReply]]] = Field(default_factory=dict)
    """task id -> attempts -> turns."""
    reviews: dict[str, list[ScriptedReply]] = Field(default_factory=dict)
    """task id -> one reply per attempt."""
    acceptance: dict[str, ScriptedReply] = Field(default_factory=dict)
    """task id -> the reply that writes its held-out acceptance tests."""
    acceptance_retries: dict[str, list[ScriptedReply]] = Field(default_factory=dict)
    """task id -> the writer's replies to attempts 2, 3, ... (after some of its tests passed on the base)."""


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _where(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(part) for part in loc) or "(top level)"


def _estimate_tokens(payload: Any) -> int:
    # About four characters a token: crude, but demo runs show plausible, non-zero usage and cost shapes.
    return len(json.dumps(payload, sort_keys=True, ensure_ascii=False)) // 4


class ScriptedTranscript:
    """A validated transcript file; answers a call by its `CallContext`."""

    def __init__(self, data: _TranscriptFile, path: Path) -> None:
        self._data = data
        self.path = path

    @property
    def description(self) -> str:
        return self._data.description

    @classmethod
    def load(cls, path: Path) -> ScriptedTranscript:
        try:
            raw = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise TranscriptError(f"cannot read scripted transcript {path}: {exc.strerror or exc}") from None
        try:
            parsed = json.loads(raw)
        except json.JSONDecodeError as exc:
            problem = f"{exc.msg} (line {exc.lineno}, column {exc.colno})"
            raise TranscriptError(f"scripted transcript {path} is not valid JSON: {problem}") from None
        try:
            data = _TranscriptFile.model_validate(parsed)
        except ValidationError as exc:
            problems = "\n".join(f"  {_where(err['loc'])}: {err['msg']}" for err in exc.errors())
            raise TranscriptError(f"scripted transcript {path} is invalid:\n{problems}") from None
        return cls(data, path)

    def _reply_for(self, context: CallContext) -> ScriptedReply:
        key = context.key
        missing = f"scripted transcript {self.path} has no reply for {key}"
        if context.purpose == "plan":
            if self._data.plan is None:
                raise ModelCallError(f"{missing}: it has no 'plan'", kind="script_exhausted")
            if context.attempt > 1:
                index = context.attempt - 2
                if index >= len(self._data.plan_retries):
                    raise ModelCallError(
                        f"{missing}: 'plan_retries' covers attempts 2..{len(self._data.plan_retries) + 1}",
                        kind="script_exhausted",
                    )
                return self._data.plan_retries[index]
            return self._data.plan
        task_id = context.task_id or ""
        # Attempts and turns count from 1; 0 would silently index the last entry.
        if context.attempt < 1 or (context.purpose == "agent" and context.turn < 1):
            raise ModelCallError(f"{missing}: attempt and turn start at 1", kind="script_exhausted")
        if context.purpose == "acceptance":
            if context.attempt > 1:
                retries = self._data.acceptance_retries.get(task_id, [])
                if context.attempt - 2 >= len(retries):
                    raise ModelCallError(
                        f"{missing}: 'acceptance_retries' covers attempts 2..{len(retries) + 1} of {task_id!r}",
                        kind="script_exhausted",
                    )
                return retries[context.attempt - 2]
            reply = self._data.acceptance.get(task_id)
            if reply is None:
                raise ModelCallError(f"{missing}: 'acceptance' has no task {task_id!r}", kind="script_exhausted")
            return reply
        if context.purpose == "review":
            reviews = self._data.reviews.get(task_id)
            if reviews is None:
                raise ModelCallError(f"{missing}: 'reviews' has no task {task_id!r}", kind="script_exhausted")
            if context.attempt > len(reviews):
                raise ModelCallError(
                    f"{missing}: reviews[{task_id!r}] covers {len(reviews)} attempt(s)",
                    kind="script_exhausted",
                )
            return reviews[context.attempt - 1]
        attempts = self._data.tasks.get(task_id)
        if attempts is None:
            known = ", ".join(sorted(self._data.tasks)) or "none"
            raise ModelCallError(
                f"{missing}: 'tasks' has no task {task_id!r} (known: {known})", kind="script_exhausted"
            )
        if context.attempt > len(attempts):
            raise ModelCallError(
                f"{missing}: tasks[{task_id!r}] covers {len(attempts)} attempt(s)", kind="script_exhausted"
            )
        turns = attempts[context.attempt - 1]
        if context.turn > len(turns):
            raise ModelCallError(
                f"{missing}: attempt {context.attempt} of {task_id!r} has {len(turns)} turn(s)",
                kind="script_exhausted",
            )
        return turns[context.turn - 1]

    def response_for(
        self,
        context: CallContext,
        model: str,
        *,
        request: ModelRequest | Mapping[str, Any] | None = None,
    ) -> ModelResponse:
        """The recorded answer for `context`, with ids derived from `context.key` so replays match.

        `model` is the model the caller asked for; the response says `scripted` so nobody mistakes it for
        a real model's answer. `request` only feeds the input token estimate.
        """
        del model  # accepted for symmetry with the real client; a script answers the same for any model
        reply = self._reply_for(context)
        key = context.key
        content: list[dict[str, Any]] = []
        for index, block in enumerate(reply.content):
            if isinstance(block, ScriptedToolUse):
                tool_id = "toolu_" + _digest(f"{key}#{index}")[:20]
                content.append({"type": "tool_use", "id": tool_id, "name": block.name, "input": block.input})
            else:
                content.append({"type": "text", "text": block.text})
        if isinstance(request, ModelRequest):
            request_payload: Any = request.model_dump(mode="json")
        else:
            request_payload = dict(request) if request is not None else None
        return ModelResponse(
            id="msg_scripted_" + _digest(f"response:{key}")[:20],
            model="scripted",
            content=content,
            stop_reason=reply.effective_stop_reason,
            usage=Usage(
                input_tokens=_estimate_tokens(request_payload) if request_payload is not None else 0,
                output_tokens=_estimate_tokens(content),
                calls=1,
            ),
            scripted=True,
        )


class ScriptedClient:
    """`ModelClient` that replays a transcript file, loaded once."""

    def __init__(self, path: Path) -> None:
        self.transcript = ScriptedTranscript.load(path)

    def __repr__(self) -> str:
        return f"ScriptedClient({self.transcript.path})"

    async def create(self, request: ModelRequest, context: CallContext) -> ModelResponse:
        return self.transcript.response_for(context, request.model, request=request)


def _texts(content: Any) -> list[str]:
    """The text blocks of a message's content, in order (a string is one)."""
    if isinstance(content, str):
        return [content]
    if isinstance(content, list):
        return [
            cast(str, block["text"])
            for block in content
            if isinstance(block, dict) and block.get("type") == "text" and isinstance(block.get("text"), str)
        ]
    return []


def _search(pattern: re.Pattern[str], content: Any) -> re.Match[str] | None:
    # The first block may be the shared repository context (which quotes the repository); the line is in the
    # block the role wrote after it, so the search runs from the last block back.
    return next((m for m in (pattern.search(text) for text in reversed(_texts(content))) if m is not None), None)


def context_from_request(body: Mapping[str, Any], run_id: str = "http") -> CallContext:
    """The `CallContext` of a raw Messages API request body, so an HTTP fake can replay a transcript.

    The tool the request forces (`tool_choice`) names the role: `submit_plan` the planner, `submit_review` a
    review, `submit_tests` the writer of held-out acceptance tests. Those roles share one tool list, so only
    when nothing is forced does an offered tool decide. Otherwise it is an agent turn: task and attempt come
    from the `Task id: <id> · attempt <n> of <m>` line of the first user message, and the turn is one more
    than the assistant messages so far.
    """
    tools = body.get("tools") or []
    choice = body.get("tool_choice")
    forced = choice.get("name") if isinstance(choice, Mapping) and choice.get("type") == "tool" else None
    tool_names = {forced} if forced else {tool.get("name") for tool in tools if isinstance(tool, dict)}
    if PLAN_TOOL_NAME in tool_names:
        planning = _search(PLAN_ATTEMPT_LINE, (body.get("messages") or [{}])[0].get("content"))
        return CallContext(purpose="plan", run_id=run_id, attempt=int(planning.group(1)) if planning else 0)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ValueError("cannot derive the call context: the request has no messages")
    first_user = next((m for m in messages if isinstance(m, dict) and m.get("role") == "user"), None)
    if first_user is None:
        raise ValueError("cannot derive the call context: the request has no user message")
    match = _search(TASK_LINE, first_user.get("content"))
    if match is None:
        raise ValueError(
            "cannot derive the call context: the first user message has no line like "
            "'Task id: <task> · attempt <n> of <m>' and no submit_plan tool is offered"
        )
    task_id, attempt = match.group(1), int(match.group(2))
    if REVIEW_TOOL_NAME in tool_names:
        return CallContext(purpose="review", run_id=run_id, task_id=task_id, attempt=attempt)
    if ACCEPTANCE_TOOL_NAME in tool_names:
        return CallContext(purpose="acceptance", run_id=run_id, task_id=task_id, attempt=attempt)
    turn = 1 + sum(1 for m in messages if isinstance(m, dict) and m.get("role") == "assistant")
    return CallContext(purpose="agent", run_id=run_id, task_id=task_id, attempt=attempt, turn=turn)
