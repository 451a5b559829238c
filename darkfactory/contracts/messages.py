"""Model calls in the Messages API shape: requests, responses, usage, tool calls."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from darkfactory.contracts.base import Frozen

CallPurpose = Literal["plan", "agent", "review", "acceptance"]


class Usage(Frozen):
    """Token usage of one or more model calls, including prompt-cache tokens, and their list-price cost.

    Usage only ever adds up (`+`), so the workflows' sums carry the cost and the split by purpose along
    without knowing about either: the model activity prices each call where it is made.
    """

    input_tokens: int = 0
    """Input tokens neither read from nor written to the prompt cache (the API's `input_tokens`)."""
    output_tokens: int = 0
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0
    calls: int = 0
    """How many model calls this usage covers."""
    cost_usd: float = 0.0
    """List-price cost of the `priced_calls` among `calls`, in USD."""
    priced_calls: int = 0
    """Calls whose cost is in `cost_usd` (a scripted call is priced at $0). A call to a model with no price on
    file is not, and makes `cost` unknown; so does usage recorded before calls were priced."""
    by_purpose: dict[CallPurpose, Usage] = Field(default_factory=dict)
    """The same usage split by what the calls were for; each part has no split of its own."""

    def __add__(self, other: Usage) -> Usage:
        parts = dict(self.by_purpose)
        for purpose, part in other.by_purpose.items():
            parts[purpose] = parts[purpose] + part if purpose in parts else part
        return Usage(
            input_tokens=self.input_tokens + other.input_tokens,
            output_tokens=self.output_tokens + other.output_tokens,
            cache_creation_input_tokens=self.cache_creation_input_tokens + other.cache_creation_input_tokens,
            cache_read_input_tokens=self.cache_read_input_tokens + other.cache_read_input_tokens,
            calls=self.calls + other.calls,
            cost_usd=self.cost_usd + other.cost_usd,
            priced_calls=self.priced_calls + other.priced_calls,
            by_purpose=parts,
        )

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens + self.cache_creation_input_tokens + self.cache_read_input_tokens

    @property
    def all_input_tokens(self) -> int:
        """Every input token: uncached, written to the cache and read from it."""
        return self.input_tokens + self.cache_creation_input_tokens + self.cache_read_input_tokens

    @property
    def cache_read_share(self) -> float | None:
        """Cache-read input tokens over all input tokens; None when there was no input."""
        total = self.all_input_tokens
        return self.cache_read_input_tokens / total if total else None

    @property
    def cost(self) -> float | None:
        """USD at list prices; None (unknown, never $0) when any call could not be priced."""
        return self.cost_usd if self.priced_calls >= self.calls else None


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
    """One Messages API request. `messages` and `tools` are Messages API JSON, passed through as-is.

    The prompt is laid out for the prompt cache, most stable first: tools, `system`, `context`, then the
    conversation. The adapter places the cache breakpoints; callers never write `cache_control`.
    """

    model: str
    system: str
    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]] = Field(default_factory=list)
    tool_choice: dict[str, Any] | None = None
    max_tokens: int = 8192
    context: str = ""
    """Reference text shared by many calls (the repository at a commit), sent as the first block of the first
    user message: after the instructions, before anything that differs between calls. Kept out of `system`
    because it quotes the repository, which is data, not instructions."""
    cache_conversation: bool = False
    """True when the conversation goes on (agent turns): the request's end is written to the cache so the
    next turn reads all of it. A one-shot call (plan, review, tests) caches only its shared prefix: writing the
    rest costs more than sending it and nobody reads it again."""


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
