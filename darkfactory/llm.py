"""The model seam: a `ModelClient` protocol, the Anthropic adapter, error classification and prices.

The agent core depends only on `ModelClient`. `AnthropicClient` is the one place that knows the vendor
SDK; it never retries (`max_retries=0`) because Temporal owns retries, and `classify_error` is the one
table that says which failures are worth another attempt. Scripted transcripts (demos and tests without
a key) live in `darkfactory/scripted.py`, prices in `darkfactory/pricing.py` (re-exported here).

Prompt caching: the API caches the prompt's prefix (tools, then system, then messages) up to each block that
carries `cache_control`, and a later request reads it only if its prefix is byte-identical up to such a
breakpoint. `_request_kwargs` is the one place breakpoints are set, at most `MAX_CACHE_BREAKPOINTS`:
the instructions (tools and system), the shared context, and in a conversation that goes on, the end of
the previous turn (where the last request wrote) and the end of this one (where the next will read).
"""

from __future__ import annotations

import email.utils
import json
import re
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import anthropic
from anthropic.types import Message

from darkfactory.contracts import CallContext, ModelRequest, ModelResponse, Usage
from darkfactory.model_seam import (
    ACCEPTANCE_TOOL_NAME,
    PLAN_ATTEMPT_LINE,
    PLAN_TOOL_NAME,
    REVIEW_TOOL_NAME,
    SCRIPTED_PREFIX,
    TASK_LINE,
    ModelCallError,
    ModelClient,
)
from darkfactory.pricing import PRICES_USD_PER_MTOK, Price, estimate_cost_usd

if TYPE_CHECKING:
    import httpx2

__all__ = [
    "ACCEPTANCE_TOOL_NAME",
    "MAX_CACHE_BREAKPOINTS",
    "PLAN_ATTEMPT_LINE",
    "PLAN_TOOL_NAME",
    "PRICES_USD_PER_MTOK",
    "REVIEW_TOOL_NAME",
    "SCRIPTED_PREFIX",
    "TASK_LINE",
    "AnthropicClient",
    "ModelCallError",
    "ModelClient",
    "Price",
    "build_model_client",
    "cache_breakpoints",
    "classify_error",
    "estimate_cost_usd",
]

# --------------------------------------------------------------------------------------------------
# Errors


_STATUS_TABLE: dict[int, tuple[str, bool]] = {
    400: ("bad_request", False),
    401: ("authentication", False),
    # 402 is billing: only a person can fix it, like the 429 spend limits below.
    402: ("spend_limit", False),
    403: ("permission", False),
    404: ("not_found", False),
    # 408 and 409 are transient on the API side (request timeout, concurrent change); the SDK retries them.
    408: ("timeout", True),
    409: ("conflict", True),
    413: ("request_too_large", False),
    422: ("bad_request", False),
    429: ("rate_limited", True),
    431: ("request_too_large", False),
    529: ("overloaded", True),
}
"""HTTP status -> (kind, retryable). Other 5xx are `server_error`, retryable; other 4xx are `bad_request`."""

_SPEND_LIMIT_CODES = frozenset(
    {
        "enforced_spend_limit_reached",
        "contract_spend_limit_reached",
        "linked_organization_spend_limit_reached",
        "linked_organization_billing_unavailable",
    }
)
"""`error.details.error_code` values meaning money ran out: retrying only multiplies failed calls."""

_EXCEPTION_TABLE: tuple[tuple[type[BaseException], str, bool, str], ...] = (
    # APITimeoutError subclasses APIConnectionError, so it must come first.
    (anthropic.APITimeoutError, "timeout", True, "the request timed out"),
    (anthropic.APIConnectionError, "connection", True, "could not reach the API"),
    # The SDK lets a 200 with an invalid JSON body escape as a bare JSONDecodeError (measured, SDK 2.12).
    (json.JSONDecodeError, "malformed_response", True, "the API answered 200 with a body that is not JSON"),
    (anthropic.APIResponseValidationError, "malformed_response", True, "the API answer has the wrong shape"),
    (anthropic.CredentialsError, "authentication", False, "no usable Anthropic credentials"),
)
"""Non-HTTP failures -> (kind, retryable, safe description)."""

_SECRET_PATTERN = re.compile(r"sk-ant-[A-Za-z0-9_\-]{8,}")


def _redact(text: str, secrets: Sequence[str]) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, "[redacted]")
    return _SECRET_PATTERN.sub("[redacted]", text)


def _retry_after_s(headers: Mapping[str, str]) -> float | None:
    """Seconds the server asked us to wait: `retry-after-ms` first (more precise), then `retry-after`."""
    raw_ms = headers.get("retry-after-ms")
    if raw_ms is not None:
        try:
            return max(0.0, float(raw_ms) / 1000.0)
        except ValueError:
            pass
    raw = headers.get("retry-after")
    if raw is None:
        return None
    try:
        return max(0.0, float(raw))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(raw)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def classify_error(exc: BaseException, *, secrets: Sequence[str] = ()) -> ModelCallError:
    """Turn any failure of a model call into a `ModelCallError` from one table.

    Unknown exceptions become kind `unexpected`, non-retryable: they are bugs on our side (a TypeError
    while building the request, say), and retrying a bug only hides it behind backoff. The message never
    carries request headers; `secrets` (and anything shaped like an Anthropic key) are redacted from it.
    """
    if isinstance(exc, ModelCallError):
        return exc
    if isinstance(exc, anthropic.APIStatusError):
        return _classify_status(exc, secrets)
    for exc_type, kind, retryable, description in _EXCEPTION_TABLE:
        if isinstance(exc, exc_type):
            cause = exc.__cause__ or exc.__context__
            detail = f" ({type(cause).__name__})" if cause is not None else ""
            if isinstance(exc, json.JSONDecodeError):
                detail = f" ({exc.msg} at position {exc.pos})"
            return ModelCallError(f"{kind}: {description}{detail}", kind=kind, retryable=retryable)
    text = _redact(str(exc), secrets)[:300]
    return ModelCallError(f"unexpected: {type(exc).__name__}: {text}", kind="unexpected", retryable=False)


def _classify_status(exc: anthropic.APIStatusError, secrets: Sequence[str]) -> ModelCallError:
    status = exc.status_code
    if exc.error_code in _SPEND_LIMIT_CODES:
        kind, retryable = "spend_limit", False
    elif status in _STATUS_TABLE:
        kind, retryable = _STATUS_TABLE[status]
    elif status >= 500:
        kind, retryable = "server_error", True
    else:
        kind, retryable = "bad_request", False
    # Built from parts rather than str(exc): the SDK's text embeds the whole body.
    parts = [f"{kind}: HTTP {status}"]
    if exc.type:
        parts.append(f" {exc.type}")
    if exc.error_code:
        parts.append(f" [{exc.error_code}]")
    api_message = exc.api_message
    if api_message is None and isinstance(exc.body, str):
        api_message = exc.body  # not JSON (a proxy's HTML page, say): show its start
    if api_message:
        parts.append(f": {api_message[:500]}")
    if exc.request_id:
        parts.append(f" (request-id {exc.request_id})")
    return ModelCallError(
        _redact("".join(parts), secrets),
        kind=kind,
        retryable=retryable,
        retry_after_s=_retry_after_s(exc.response.headers) if retryable else None,
        status=status,
    )


# --------------------------------------------------------------------------------------------------
# The Anthropic adapter


class AnthropicClient:
    """`ModelClient` over the Anthropic Messages API, with prompt caching on the stable prefix."""

    def __init__(
        self,
        *,
        api_key: str | None = None,
        base_url: str | None = None,
        timeout_s: float = 600.0,
        http_client: httpx2.AsyncClient | None = None,
    ) -> None:
        # None lets the SDK read ANTHROPIC_API_KEY / ANTHROPIC_BASE_URL itself, at first use.
        self._api_key = api_key
        self._base_url = base_url
        self._timeout_s = timeout_s
        self._http_client = http_client
        self._client: anthropic.AsyncAnthropic | None = None

    def __repr__(self) -> str:
        # Never the key, not even masked: reprs end up in logs and tracebacks.
        return f"AnthropicClient(base_url={self._base_url!r}, timeout_s={self._timeout_s})"

    def _sdk(self) -> anthropic.AsyncAnthropic:
        if self._client is None:
            import httpx2  # the SDK's own HTTP library; only needed once a client exists

            client = anthropic.AsyncAnthropic(
                api_key=self._api_key,
                base_url=self._base_url,
                # A short connect timeout turns a dead endpoint into a quick, retryable failure.
                timeout=httpx2.Timeout(self._timeout_s, connect=min(10.0, self._timeout_s)),
                # Temporal owns retries: SDK retries would multiply with Temporal's (SDK 3 x Temporal N).
                max_retries=0,
                http_client=self._http_client,
            )
            if client.api_key is None and client.auth_token is None and client.credentials is None:
                raise ModelCallError(
                    "authentication: no Anthropic credentials; set ANTHROPIC_API_KEY",
                    kind="authentication",
                    retryable=False,
                )
            self._client = client
        return self._client

    async def aclose(self) -> None:
        """Close the SDK client's connections (a worker calls this on shutdown)."""
        if self._client is not None:
            await self._client.close()
            self._client = None

    async def create(self, request: ModelRequest, context: CallContext) -> ModelResponse:
        secrets = [self._api_key] if self._api_key else []
        try:
            sdk = self._sdk()
            secrets = [s for s in (sdk.api_key, sdk.auth_token) if s]
            message = await sdk.messages.create(**cast(Any, _request_kwargs(request)))
        except Exception as exc:  # CancelledError is a BaseException and passes through untouched
            raise classify_error(exc, secrets=secrets) from exc
        try:
            return _to_response(message)
        except Exception as exc:
            # The SDK validates leniently, so a body of the wrong shape surfaces only here.
            raise ModelCallError(
                f"malformed_response: the API answer has the wrong shape ({type(exc).__name__})",
                kind="malformed_response",
                retryable=True,
            ) from exc


MAX_CACHE_BREAKPOINTS = 4
"""The API refuses a request with more blocks carrying `cache_control` (HTTP 400)."""
_EPHEMERAL: dict[str, str] = {"type": "ephemeral"}
_CACHEABLE_BLOCKS = frozenset({"text", "image", "document", "tool_use", "tool_result", "search_result"})
"""Block types that may carry `cache_control` (thinking blocks may not)."""


def _request_kwargs(request: ModelRequest) -> dict[str, Any]:
    """`messages.create` arguments, laid out for the prompt cache with at most four breakpoints.

    1. the instructions: the last system block (tools come before it, so it covers them; the last tool
       when there is no system prompt);
    2. `request.context`, the first block of the first user message;
    3. and 4. with `cache_conversation`: the end of the previous turn (the last user message before the last
       assistant message: where the previous request ended and wrote) and the end of this request.

    Every block is sent as a fresh copy without `cache_control` from the caller: the request is frozen and
    may be reused, and a transcript that kept old breakpoints would soon carry more than the API allows.
    String contents become one text block, so a message reads the same whether or not it carries a breakpoint.
    """
    tools = [_clean(tool) for tool in request.tools]
    messages = [{**message, "content": _blocks(message.get("content"))} for message in request.messages]
    if request.context:
        if not messages or messages[0].get("role") != "user":
            raise ValueError("a request with context must start with a user message")
        context_block: dict[str, Any] = {"type": "text", "text": request.context}
        messages[0] = {**messages[0], "content": [context_block, *messages[0]["content"]]}
    # The API refuses empty text blocks, so an empty system prompt is left out altogether.
    system = [{"type": "text", "text": request.system}] if request.system else []

    if system:
        _mark(system[-1])
    elif tools:
        _mark(tools[-1])
    if request.context:
        _mark(messages[0]["content"][0])
    if request.cache_conversation and messages:
        last_assistant = max((i for i, m in enumerate(messages) if m.get("role") == "assistant"), default=None)
        if last_assistant is not None:
            previous = max((i for i in range(last_assistant) if messages[i].get("role") == "user"), default=None)
            if previous is not None:
                _mark_last(messages[previous])
        _mark_last(messages[-1])

    kwargs: dict[str, Any] = {"model": request.model, "max_tokens": request.max_tokens, "messages": messages}
    if system:
        kwargs["system"] = system
    if tools:
        kwargs["tools"] = tools
    if request.tool_choice is not None:
        kwargs["tool_choice"] = request.tool_choice
    count = cache_breakpoints(kwargs)
    if count > MAX_CACHE_BREAKPOINTS:  # not `assert`: it must hold under `python -O` too
        raise ModelCallError(
            f"unexpected: the request would carry {count} cache breakpoints; the API allows {MAX_CACHE_BREAKPOINTS}",
            kind="unexpected",
            retryable=False,
        )
    return kwargs


def cache_breakpoints(body: Mapping[str, Any]) -> int:
    """How many blocks of a Messages API request body carry `cache_control`."""
    blocks: list[Any] = list(body.get("tools") or [])
    system = body.get("system")
    if isinstance(system, list):
        blocks.extend(system)
    for message in body.get("messages") or []:
        content = message.get("content") if isinstance(message, Mapping) else None
        if isinstance(content, list):
            blocks.extend(content)
    return sum(1 for block in blocks if isinstance(block, Mapping) and "cache_control" in block)


def _clean(block: Mapping[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in block.items() if key != "cache_control"}


def _blocks(content: Any) -> Any:
    if isinstance(content, str):
        # An empty string cannot become a text block (the API refuses those); it stays as it was.
        return [{"type": "text", "text": content}] if content else content
    if isinstance(content, list):
        return [_clean(block) if isinstance(block, Mapping) else block for block in content]
    return content


def _mark(block: dict[str, Any]) -> None:
    block["cache_control"] = dict(_EPHEMERAL)


def _mark_last(message: dict[str, Any]) -> None:
    """Put a breakpoint on the message's last block that may carry one (its copy, never the caller's)."""
    content = message.get("content")
    if not isinstance(content, list):
        return
    for index in range(len(content) - 1, -1, -1):
        block = content[index]
        if isinstance(block, dict) and block.get("type") in _CACHEABLE_BLOCKS:
            if "cache_control" not in block:
                content[index] = {**block, "cache_control": dict(_EPHEMERAL)}
            return


def _to_response(message: Message) -> ModelResponse:
    usage = message.usage
    return ModelResponse(
        id=message.id,
        model=str(message.model),
        content=[block.model_dump(mode="json", exclude_none=True) for block in message.content],
        stop_reason=message.stop_reason,
        usage=Usage(
            input_tokens=usage.input_tokens,
            output_tokens=usage.output_tokens,
            cache_creation_input_tokens=usage.cache_creation_input_tokens or 0,
            cache_read_input_tokens=usage.cache_read_input_tokens or 0,
            calls=1,
        ),
        scripted=False,
    )


def build_model_client(model: str) -> ModelClient:
    """`scripted:/path/to/transcript.json` replays a file; anything else is a Claude model via the API."""
    if model.startswith(SCRIPTED_PREFIX):
        from darkfactory.scripted import ScriptedClient  # here: scripted.py builds on this module

        return ScriptedClient(Path(model[len(SCRIPTED_PREFIX) :]))
    return AnthropicClient()
