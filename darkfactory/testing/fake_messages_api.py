"""A local HTTP server speaking the Anthropic Messages API, so tests run the real SDK end to end.

Tests hand it a responder (request body -> `FakeReply`) and read back what arrived: bodies, headers and
times. It keeps a prompt cache as the API does (`prompt_cache.py`): a reply's input usage — uncached tokens,
cache writes and cache reads — is measured from the request against that cache unless the responder pins
it, and a request with more than four cache breakpoints is refused with the API's 400.

`hold_when` parks a matching request until released, which is how kill and timeout tests catch a call in
flight. `ScriptResponder` answers from a scripted transcript, so a worker pointed at
`ANTHROPIC_BASE_URL` plays the same script as `ScriptedClient` — but through the real adapter.

Run it by hand:  python -m darkfactory.testing.fake_messages_api --script FILE [--port N] [--delay-s X]
                 [--min-cache-tokens N] [--cache-ttl-s S]
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

from darkfactory.contracts import Usage
from darkfactory.llm import ModelCallError
from darkfactory.scripted import ScriptedTranscript, context_from_request
from darkfactory.testing.loopback import LoopbackServer
from darkfactory.testing.prompt_cache import CacheRequestError, PromptCache

__all__ = [
    "FakeMessagesServer",
    "FakeReply",
    "PromptCache",
    "RecordedRequest",
    "Responder",
    "ScriptResponder",
    "main",
]

MESSAGES_PATH = "/v1/messages"


@dataclass
class FakeReply:
    """What the server answers: status, body (dict = JSON; str = raw text such as broken JSON), headers."""

    status: int = 200
    body: dict[str, Any] | str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    measure_input: bool = False
    """Fill the input side of the body's `usage` from the server's prompt cache before sending."""

    @classmethod
    def message(
        cls,
        content: list[dict[str, Any]],
        stop_reason: str | None = "end_turn",
        *,
        usage: Usage | None = None,
        output_tokens: int | None = None,
        model: str = "claude-fake",
        id: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> FakeReply:
        """A valid Messages API response. `tool_use` blocks must carry their own `id`.

        Without `usage`, the server measures the input tokens against its prompt cache; output tokens are
        `output_tokens`, else estimated from `content`.
        """
        measure = usage is None
        if usage is None:
            estimated = max(1, len(json.dumps(content, sort_keys=True, ensure_ascii=False)) // 4)
            usage = Usage(output_tokens=estimated if output_tokens is None else output_tokens)
        body = {
            "id": id or f"msg_fake_{uuid.uuid4().hex[:20]}",
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": content,
            "stop_reason": stop_reason,
            "stop_sequence": None,
            "usage": {
                "input_tokens": usage.input_tokens,
                "output_tokens": usage.output_tokens,
                "cache_creation_input_tokens": usage.cache_creation_input_tokens,
                "cache_read_input_tokens": usage.cache_read_input_tokens,
            },
        }
        return cls(status=200, body=body, headers=dict(headers or {}), measure_input=measure)

    @classmethod
    def error(
        cls,
        status: int,
        type: str,
        message: str,
        *,
        headers: dict[str, str] | None = None,
        error_code: str | None = None,
    ) -> FakeReply:
        """An API error body; the SDK reads `error.details.error_code` to pick e.g. the spend-limit class."""
        error: dict[str, Any] = {"type": type, "message": message}
        if error_code is not None:
            error["details"] = {"error_code": error_code}
        return cls(status=status, body={"type": "error", "error": error}, headers=dict(headers or {}))


Responder = Callable[[dict[str, Any]], FakeReply]
"""Request body -> reply. Called on a server thread, one call per request."""

Predicate = Callable[[dict[str, Any]], bool]
"""Tests a request body."""


@dataclass(frozen=True)
class RecordedRequest:
    """One request as it arrived."""

    body: dict[str, Any]
    headers: dict[str, str]
    """Header names lower-cased."""
    at: float
    """`time.monotonic()` on arrival."""
    path: str = MESSAGES_PATH


@dataclass
class _Hold:
    predicate: Predicate
    arrived: threading.Event = field(default_factory=threading.Event)
    released: threading.Event = field(default_factory=threading.Event)
    taken: bool = False


class FakeMessagesServer(LoopbackServer):
    """`POST /v1/messages` on 127.0.0.1, served from a daemon thread. Use as a context manager."""

    def __init__(
        self,
        responder: Responder,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        delay_s: float = 0.0,
        log: Callable[[str], None] | None = None,
        prompt_cache: PromptCache | None = None,
    ) -> None:
        super().__init__(host=host, port=port)
        self.responder = responder
        self.delay_s = delay_s
        self.prompt_cache = prompt_cache if prompt_cache is not None else PromptCache()
        """Shared by every request to this server, as one organisation's cache is."""
        self._log = log
        self._requests: list[RecordedRequest] = []
        self._holds: list[_Hold] = []
        self._stopping = threading.Event()
        self._ids = itertools.count(1)

    # -- lifecycle

    thread_name = "fake-messages-api"

    def _before_stop(self) -> None:
        self._stopping.set()
        self.release()

    @property
    def base_url(self) -> str:
        return self.url

    # -- what tests read and steer

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._requests)

    def request_count(self, predicate: Predicate | None = None) -> int:
        """How many requests arrived (whose body matches `predicate`, when given)."""
        return sum(1 for r in self.requests if predicate is None or predicate(r.body))

    def hold_when(self, predicate: Predicate) -> threading.Event:
        """Park the first request whose body matches until `release()`; the returned Event says it arrived.

        After release the request is answered normally; if its client gave up meanwhile, the write fails
        quietly.
        """
        hold = _Hold(predicate)
        with self._lock:
            self._holds.append(hold)
        return hold.arrived

    def release(self) -> None:
        """Release every hold registered so far: parked requests go on, unmatched holds will not park."""
        with self._lock:
            holds = list(self._holds)
        for hold in holds:
            hold.released.set()

    # -- serving

    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        started = time.monotonic()
        length = int(handler.headers.get("content-length") or 0)
        raw = handler.rfile.read(length) if length else b""
        path = handler.path.split("?", 1)[0]
        try:
            body = json.loads(raw) if raw else {}
            if not isinstance(body, dict):
                raise ValueError("the body is not a JSON object")
        except ValueError as exc:
            self._send(handler, FakeReply.error(400, "invalid_request_error", f"invalid JSON body: {exc}"))
            return
        record = RecordedRequest(
            body=body, headers={k.lower(): v for k, v in handler.headers.items()}, at=started, path=path
        )
        with self._lock:
            self._requests.append(record)
        if handler.command != "POST" or path != MESSAGES_PATH:
            self._send(handler, FakeReply.error(404, "not_found_error", f"no route {handler.command} {path}"))
            return
        try:
            self.prompt_cache.check(body)
        except CacheRequestError as exc:
            self._send(handler, FakeReply.error(400, "invalid_request_error", str(exc)))
            return
        try:
            self._wait_if_held(body)
            if self.delay_s > 0:
                # Simulated model latency, cut short when the server stops.
                self._stopping.wait(self.delay_s)
            reply = self.responder(body)
        except Exception as exc:
            traceback.print_exc(file=sys.stderr)
            reply = FakeReply.error(500, "api_error", f"fake server responder failed: {type(exc).__name__}")
        if reply.status == 200 and isinstance(reply.body, dict) and reply.body.get("type") == "message":
            # Only an answered request reads and writes the cache; a refused or failed one leaves it as it was.
            outcome = self.prompt_cache.apply(body)
            if reply.measure_input:
                # A copy: a responder may hand the same reply to many requests.
                usage = {
                    **(reply.body.get("usage") or {}),
                    "input_tokens": outcome.input_tokens,
                    "cache_creation_input_tokens": outcome.cache_creation_input_tokens,
                    "cache_read_input_tokens": outcome.cache_read_input_tokens,
                }
                reply = FakeReply(status=reply.status, body={**reply.body, "usage": usage}, headers=reply.headers)
        self._send(handler, reply)
        if self._log is not None:
            elapsed_ms = (time.monotonic() - started) * 1000
            model = body.get("model")
            self._log(f"{handler.command} {path} model={model} -> {reply.status} ({elapsed_ms:.0f} ms)")

    def _wait_if_held(self, body: dict[str, Any]) -> None:
        with self._lock:
            hold = next((h for h in self._holds if not h.taken and h.predicate(body)), None)
            if hold is not None:
                hold.taken = True
        if hold is not None:
            hold.arrived.set()
            hold.released.wait()

    def _send(self, handler: BaseHTTPRequestHandler, reply: FakeReply) -> None:
        if isinstance(reply.body, dict):
            payload = json.dumps(reply.body).encode("utf-8")
        elif isinstance(reply.body, str):
            payload = reply.body.encode("utf-8")
        else:
            payload = b""
        headers = {"content-type": "application/json", "request-id": f"req_fake_{next(self._ids)}"}
        headers.update({k.lower(): v for k, v in reply.headers.items()})
        headers["content-length"] = str(len(payload))
        try:
            handler.send_response(reply.status)
            for name, value in headers.items():
                handler.send_header(name, value)
            handler.end_headers()
            handler.wfile.write(payload)
            handler.wfile.flush()
        except (BrokenPipeError, ConnectionResetError, OSError):
            # The client gave up (timeout, killed worker): nobody is left to answer.
            handler.close_connection = True


class ScriptResponder:
    """Answers from a scripted transcript, deriving each call's context from the request body."""

    def __init__(self, path: Path, *, run_id: str = "http") -> None:
        self.transcript = ScriptedTranscript.load(path)
        self.run_id = run_id

    def __call__(self, body: dict[str, Any]) -> FakeReply:
        try:
            context = context_from_request(body, self.run_id)
            response = self.transcript.response_for(context, str(body.get("model")), request=body)
        except (ValueError, ModelCallError) as exc:
            # A 400 is non-retryable, so a script gap fails the call at once with its explanation.
            return FakeReply.error(400, "invalid_request_error", str(exc))
        return FakeReply.message(
            response.content,
            response.stop_reason,
            output_tokens=response.usage.output_tokens,
            model=str(body.get("model") or "claude-fake"),
            id=response.id,
        )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m darkfactory.testing.fake_messages_api",
        description="Serve a scripted transcript as the Anthropic Messages API on 127.0.0.1.",
    )
    parser.add_argument("--script", type=Path, required=True, help="scripted transcript JSON file")
    parser.add_argument("--port", type=int, default=0, help="port (default: any free port)")
    parser.add_argument("--delay-s", type=float, default=0.0, help="answer each request after this delay")
    parser.add_argument(
        "--min-cache-tokens", type=int, default=1024, help="shortest cacheable prefix, in tokens (default: 1024)"
    )
    parser.add_argument("--cache-ttl-s", type=float, default=300.0, help="prompt-cache entry lifetime (default: 300)")
    args = parser.parse_args(argv)
    responder = ScriptResponder(args.script)
    cache = PromptCache(min_tokens=args.min_cache_tokens, ttl_s=args.cache_ttl_s)
    with (
        FakeMessagesServer(
            responder,
            port=args.port,
            delay_s=args.delay_s,
            log=lambda line: print(line, flush=True),
            prompt_cache=cache,
        ) as server,
        contextlib.suppress(KeyboardInterrupt),
    ):
        print(f"ANTHROPIC_BASE_URL={server.base_url}", flush=True)
        threading.Event().wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
