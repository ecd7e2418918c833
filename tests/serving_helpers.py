"""A real `dtb serve` in a thread of the test process, for what needs sockets: concurrency, connections."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from dynamic_tinybert.cli.serve import listening_socket
from dynamic_tinybert.serving import ServerSettings
from dynamic_tinybert.serving.http_server import build_server


@contextmanager
def running(app, settings: ServerSettings) -> Iterator[str]:
    """Serve `app` on a free loopback port until the block ends; yields its base URL."""
    listening = listening_socket("127.0.0.1", 0)
    port = listening.getsockname()[1]
    server = build_server(app, settings)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listening]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)


def slowed(qa, seconds: float, calls: list | None = None):
    """`qa.logits` that takes `seconds` longer per batch (and records each batch's windows in `calls`)."""
    original = qa.logits

    def logits(windows, *args, **kwargs):
        if calls is not None:
            calls.append(list(windows))
        time.sleep(seconds)
        return original(windows, *args, **kwargs)

    return logits
