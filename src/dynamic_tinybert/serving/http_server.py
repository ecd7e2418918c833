"""Running the app under uvicorn so that connections, not only requests, have limits.

uvicorn times out idle keep-alive connections but not a connection that never finishes sending its
request head, so a few hundred silent or slow clients could hold every file descriptor; this protocol
closes them after `read_timeout_s`. The process's descriptor limit is raised to its hard limit, and the
event loop's error for an accept() that fails (out of descriptors) is logged once a minute, not once per
attempt. SIGTERM drains: uvicorn stops accepting, finishes the requests in flight, and the process exits 0.
"""

from __future__ import annotations

import logging
import resource
import signal
import socket
import time

import uvicorn
from fastapi import FastAPI
from uvicorn.protocols.http.h11_impl import H11Protocol

from .settings import ServerSettings

ACCEPT_ERROR = "socket.accept() out of system resource"
ACCEPT_ERROR_EVERY_S = 60.0


class HeadTimeoutProtocol(H11Protocol):
    """uvicorn's h11 protocol, closing a connection whose request head does not arrive within `head_timeout_s`."""

    head_timeout_s = 10.0

    def connection_made(self, transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_head_timer()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._arm_head_timer()

    def _arm_head_timer(self) -> None:
        self.loop.call_later(self.head_timeout_s, self._close_if_no_request_since, self.cycle)

    def _close_if_no_request_since(self, cycle) -> None:
        """Close the connection if no request started since the timer was armed and none is running."""
        if self.cycle is cycle and (cycle is None or cycle.response_complete) and not self.transport.is_closing():
            self.transport.close()


class OncePerInterval(logging.Filter):
    """Let a recurring log message through once per interval, saying how many were held back."""

    def __init__(self, prefix: str, interval_s: float) -> None:
        super().__init__()
        self.prefix = prefix
        self.interval_s = interval_s
        self.last = -float("inf")
        self.held = 0

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.getMessage().startswith(self.prefix):
            return True
        now = time.monotonic()
        if now - self.last < self.interval_s:
            self.held += 1
            return False
        if self.held:
            record.msg = f"{record.getMessage()} ({self.held} more since the last report)"
            record.args = ()
        record.exc_info = None  # the same traceback every time says nothing new
        self.last, self.held = now, 0
        return True


def raise_descriptor_limit() -> int:
    """Raise this process's open-file limit to its hard limit; return the limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 65536)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return soft


def build_server(app: FastAPI, settings: ServerSettings) -> uvicorn.Server:
    """A uvicorn server for `app` with the connection limits of `settings` (not yet running)."""
    raise_descriptor_limit()
    asyncio_log = logging.getLogger("asyncio")
    if not any(isinstance(f, OncePerInterval) for f in asyncio_log.filters):  # one per process, not per server
        asyncio_log.addFilter(OncePerInterval(ACCEPT_ERROR, ACCEPT_ERROR_EVERY_S))
    protocol = type("Protocol", (HeadTimeoutProtocol,), {"head_timeout_s": settings.read_timeout_s})
    config = uvicorn.Config(
        app,
        http=protocol,
        timeout_keep_alive=settings.keep_alive_s,
        limit_concurrency=settings.max_connections,
        timeout_graceful_shutdown=settings.request_timeout_s,
        log_level="info",
    )
    return uvicorn.Server(config)


def serve(app: FastAPI, listening: socket.socket, settings: ServerSettings) -> None:
    """Serve `app` on an already bound socket until SIGTERM or SIGINT, then drain and return."""
    server = build_server(app, settings)
    # uvicorn re-raises the signal it drained on; a drained SIGTERM is a clean exit, so it is absorbed here
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: None)
    try:
        server.run(sockets=[listening])
    finally:
        signal.signal(signal.SIGTERM, previous)
