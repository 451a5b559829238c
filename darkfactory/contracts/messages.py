"""Model calls in the Messages API shape: requests, responses, usage, tool calls."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from darkfactory.contracts.base import Frozen


class Usage(Frozen):
    """Token usage of one or more model calls, including prompt-cache tokens."""

    input_tokens: int = 0
    output_tokens: int = 0
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0
    calls: int = 0
    """How many model calls this usage covers."""

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            input_tokens=self.input_tokens + other.input_tokens,
            output_tokens=self.output_tokens + other.output_tokens,
            cache_creation_input_tokens=self.cache_creation_input_tokens + other.cache_creation_input_tokens,
            cache_read_input_tokens=self.cache_read_input_tokens + other.cache_read_input_tokens,
            calls=self.calls + other.calls,
        )

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens + self.cache_creation_input_tokens + self.cache_read_input_tokens


CallPurpose = Literal["plan", "agent", "review", "acceptance"]


class CallContext(Frozen):
    """Where a model call sits in a run. Clients may use it for logging; the scripted client keys on it."""

    purpose: CallPurpose
    run_id: str
    task_id: str | None = None
    attempt: int = 0
    turn: int = 0

    @property
    def key(self) -> str:
        if self.purpose == "plan":
            return "plan" if self.attempt <= 1 else f"plan:{self.attempt}"
        return f"{self.purpose}:{self.task_id}:{self.attempt}:{self.turn}"


class ModelRequest(Frozen):
    """One Messages API request. `messages` and `tools` are Messages API JSON, passed through as-is."""

    model: str
    system: str
    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]] = Field(default_factory=list)
    tool_choice: dict[str, Any] | None = None
    max_tokens: int = 8192


class ModelResponse(Frozen):
    """One Messages API response, reduced to what the factory uses."""

    id: str
    model: str
    content: list[dict[str, Any]]
    """Content blocks as Messages API JSON (`text`, `tool_use`, ...)."""
    stop_reason: str | None
    usage: Usage
    scripted: bool = False
    """True when the answer came from a recorded transcript, not a model."""

    @property
    def tool_calls(self) -> list[ToolCall]:
        return [
            ToolCall(id=block["id"], name=block["name"], input=dict(block.get("input") or {}))
            for block in self.content
            if block.get("type") == "tool_use"
        ]

    @property
    def text(self) -> str:
        return "\n".join(block.get("text", "") for block in self.content if block.get("type") == "text")


class ToolCall(Frozen):
    """A tool_use block the model asked for."""

    id: str
    name: str
    input: dict[str, Any]


class ToolOutcome(Frozen):
    """What one tool call did, for the audit trail and the UI (the full text is in the transcript)."""

    tool_use_id: str
    name: str
    summary: str
    is_error: bool = False
