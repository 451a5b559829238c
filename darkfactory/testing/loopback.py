"""The plumbing both local API stand-ins share: an HTTP/1.1 keep-alive server on loopback, in a daemon thread.

Subclasses answer requests in `_handle`; this class starts and stops the server, and on stop closes idle
keep-alive connections, which would otherwise park their handler threads until the client hangs up.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Self


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    owner: LoopbackServer


class _Handler(BaseHTTPRequestHandler):
    server: _HTTPServer
    # Keep-alive like the real APIs, so the clients' connection pools behave as in production.
    protocol_version = "HTTP/1.1"

    def setup(self) -> None:
        super().setup()
        self.server.owner._track(self.connection, add=True)

    def finish(self) -> None:
        try:
            with contextlib.suppress(OSError):  # the client may be gone (a killed worker)
                super().finish()
        finally:
            self.server.owner._track(self.connection, add=False)

    def log_message(self, format: str, *args: Any) -> None:
        # The default writes every request to stderr; the owner decides what to print.
        return

    def do_GET(self) -> None:
        self.server.owner._handle(self)

    def do_POST(self) -> None:
        self.server.owner._handle(self)


class LoopbackServer:
    """Start with `start()` or a `with` block; `url` is `http://127.0.0.1:<port>`."""

    thread_name = "loopback-server"

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self._host = host
        self._port = port
        self._lock = threading.Lock()
        self._connections: set[socket.socket] = set()
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None

    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        raise NotImplementedError

    def _before_stop(self) -> None:
        """Release anything a parked request waits on, so stopping never hangs."""

    def start(self) -> Self:
        httpd = _HTTPServer((self._host, self._port), _Handler)
        httpd.owner = self
        self._httpd = httpd
        # A short poll interval: shutdown() waits up to one interval, which adds up over a test suite.
        self._thread = threading.Thread(
            target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, name=self.thread_name, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._before_stop()
        if self._httpd is None:
            return
        self._httpd.shutdown()
        with self._lock:
            connections = list(self._connections)
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join()
        self._httpd = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def url(self) -> str:
        if self._httpd is None:
            raise RuntimeError(f"{type(self).__name__} is not running: call start() or use it in a with block")
        host, port = self._httpd.server_address[:2]
        return f"http://{host!s}:{port}"

    def _track(self, conn: socket.socket, *, add: bool) -> None:
        with self._lock:
            if add:
                self._connections.add(conn)
            else:
                self._connections.discard(conn)
