"""The Messages API's prompt cache, modelled for the local server as Anthropic documents it.

- The cacheable prefix runs tools -> system -> messages. A block carrying `cache_control` is a breakpoint:
  the prefix up to and including it is written to the cache, if it is at least `min_tokens` long.
- A request reads the longest prefix that an earlier request wrote, byte for byte, found at one of its
  breakpoints or at a block boundary up to `lookback` blocks before one (the API's automatic look-back).
  Without an earlier write of the identical prefix there is no read.
- Entries live `ttl_s` (5 minutes; `"ttl": "1h"` on a breakpoint asks for an hour) and every read refreshes
  them. The clock is injectable, so tests move time instead of sleeping.
- Usage: `cache_read_input_tokens` is the prefix read, `cache_creation_input_tokens` what was written beyond
  it (up to the last breakpoint that was long enough), `input_tokens` the rest, after the last breakpoint.
- `cache_control` itself is not part of the prefix (moving a breakpoint forward keeps earlier entries), and
  neither is `tool_choice` for tools and system: changing it invalidates only the messages' entries.
- More than `max_breakpoints` (4) blocks with `cache_control` is refused, as the API refuses it (HTTP 400).

Tokens are estimated as characters / `chars_per_token` of each block's canonical JSON: crude, but the same
text always counts the same, which is all the cache arithmetic needs.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["CacheOutcome", "CacheRequestError", "PromptCache"]

TTL_S = {"5m": 300.0, "1h": 3600.0}


class CacheRequestError(ValueError):
    """The request breaks a caching rule; the server answers 400 invalid_request_error with this message."""


@dataclass(frozen=True)
class CacheOutcome:
    """The input side of one request's usage."""

    input_tokens: int
    cache_creation_input_tokens: int
    cache_read_input_tokens: int

    @property
    def total(self) -> int:
        return self.input_tokens + self.cache_creation_input_tokens + self.cache_read_input_tokens


@dataclass
class _Entry:
    tokens: int
    ttl_s: float
    expires_at: float


@dataclass(frozen=True)
class _Block:
    key: str
    """Digest of the prefix up to and including this block."""
    tokens: int
    """Tokens of the prefix up to and including this block."""
    ttl_s: float | None
    """Set when the block is a breakpoint."""


@dataclass
class PromptCache:
    """One organisation's prompt cache. Thread-safe: the server answers requests on several threads."""

    min_tokens: int = 1024
    """Shortest prefix the cache accepts (1024 tokens for Sonnet and Opus); shorter breakpoints write nothing."""
    ttl_s: float = TTL_S["5m"]
    """Lifetime of a 5-minute entry; each read starts it again."""
    lookback: int = 20
    """Block boundaries before each breakpoint where the API also looks for an earlier write."""
    max_breakpoints: int = 4
    chars_per_token: float = 4.0
    clock: Callable[[], float] = time.monotonic
    _entries: dict[str, _Entry] = field(default_factory=dict, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def tokens(self, payload: Any) -> int:
        """The estimated token count of a JSON value."""
        text = json.dumps(payload, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
        return max(1, round(len(text) / self.chars_per_token))

    def prompt_tokens(self, body: Mapping[str, Any]) -> int:
        """All input tokens of a request (what its usage must add up to); reads and writes nothing."""
        blocks = self._blocks(body)
        return blocks[-1].tokens if blocks else 0

    def check(self, body: Mapping[str, Any]) -> None:
        """Refuse what the API refuses (`CacheRequestError`), before anything is read or written."""
        self._blocks(body)

    def apply(self, body: Mapping[str, Any]) -> CacheOutcome:
        """Read and write the cache for one answered request; returns its input usage."""
        blocks = self._blocks(body)
        if not blocks:
            return CacheOutcome(0, 0, 0)
        total = blocks[-1].tokens
        breakpoints = [i for i, block in enumerate(blocks) if block.ttl_s is not None]
        candidates = sorted(
            {i for b in breakpoints for i in range(max(0, b - self.lookback), b + 1)},
            reverse=True,
        )
        with self._lock:
            now = self.clock()
            for key in [key for key, entry in self._entries.items() if entry.expires_at <= now]:
                del self._entries[key]
            read_at = next((i for i in candidates if blocks[i].key in self._entries), None)
            read = 0
            if read_at is not None:
                entry = self._entries[blocks[read_at].key]
                entry.expires_at = now + entry.ttl_s  # a hit refreshes the entry
                read = blocks[read_at].tokens
            written = read
            for i in breakpoints:
                block = blocks[i]
                if (read_at is not None and i <= read_at) or block.tokens < self.min_tokens:
                    continue
                ttl = block.ttl_s or self.ttl_s
                self._entries[block.key] = _Entry(tokens=block.tokens, ttl_s=ttl, expires_at=now + ttl)
                written = block.tokens
        return CacheOutcome(
            input_tokens=total - written, cache_creation_input_tokens=written - read, cache_read_input_tokens=read
        )

    def entries(self) -> int:
        """Live entries now (for tests)."""
        with self._lock:
            now = self.clock()
            return sum(1 for entry in self._entries.values() if entry.expires_at > now)

    # -- the prefix, block by block

    def _blocks(self, body: Mapping[str, Any]) -> list[_Block]:
        seed = hashlib.sha256(f"model\0{body.get('model')}".encode())
        digest = seed.hexdigest()
        tokens = 0
        blocks: list[_Block] = []

        def add(kind: str, block: Any) -> None:
            nonlocal digest, tokens
            ttl: float | None = None
            if isinstance(block, Mapping) and "cache_control" in block:
                ttl = self._ttl(block["cache_control"])
                block = {k: v for k, v in block.items() if k != "cache_control"}
            canonical = json.dumps([kind, block], sort_keys=True, ensure_ascii=False, separators=(",", ":"))
            digest = hashlib.sha256(f"{digest}\0{canonical}".encode()).hexdigest()
            tokens += self.tokens(block)
            blocks.append(_Block(key=digest, tokens=tokens, ttl_s=ttl))

        for tool in _as_list(body.get("tools")):
            add("tool", tool)
        system = body.get("system")
        for block in [{"type": "text", "text": system}] if isinstance(system, str) and system else _as_list(system):
            add("system", block)
        # tool_choice is part of the messages' prefix only: changing it keeps the tools' and system's entries.
        digest = hashlib.sha256(f"{digest}\0tool_choice\0{json.dumps(body.get('tool_choice'))}".encode()).hexdigest()
        for message in _as_list(body.get("messages")):
            if not isinstance(message, Mapping):
                continue
            role = message.get("role")
            content = message.get("content")
            # A string is one text block, as the API reads it: the two forms share cache entries.
            for block in [{"type": "text", "text": content}] if isinstance(content, str) else _as_list(content):
                add(f"message:{role}", block)
        count = sum(1 for block in blocks if block.ttl_s is not None)
        if count > self.max_breakpoints:
            raise CacheRequestError(
                f"A maximum of {self.max_breakpoints} blocks with cache_control may be provided. Found {count}."
            )
        return blocks

    def _ttl(self, cache_control: Any) -> float:
        if not isinstance(cache_control, Mapping) or cache_control.get("type") != "ephemeral":
            raise CacheRequestError("cache_control.type: Input should be 'ephemeral'")
        ttl = cache_control.get("ttl", "5m")
        if ttl not in TTL_S:
            raise CacheRequestError("cache_control.ttl: Input should be '5m' or '1h'")
        return self.ttl_s if ttl == "5m" else TTL_S["1h"]


def _as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list) else []
