"""A `dtb serve` subprocess for the benchmarks that measure it: on a free loopback port, waited for until it
is ready, its resident memory sampled while it runs, stopped at the end whatever happens.

    with served(["--threads", "2"], model="path/to/checkpoint") as server:
        with RssSampler(server.pid, completed=lambda: done) as rss:
            ...  # requests to server.url
        rss.summary()
"""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

SERVE = [sys.executable, "-m", "dynamic_tinybert.cli", "serve"]
READY_TIMEOUT_S = 300.0  # loading and warming a model on a busy 2-core machine
STOP_TIMEOUT_S = 30.0  # after SIGTERM, before SIGKILL


class ServerError(RuntimeError):
    """`dtb serve` exited, or did not become ready in time."""


@dataclass(frozen=True)
class Server:
    """A running `dtb serve`: where it listens, its process id, and the command that started it."""

    url: str
    pid: int
    command: tuple[str, ...]

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def served(args: Sequence[str], model: str | None = None, ready_timeout_s: float = READY_TIMEOUT_S) -> Iterator[Server]:
    """`dtb serve` with `args` (and `--model`) on a free 127.0.0.1 port; yields it once ready, stops it after.

    Ready is `GET /ready` answering 200 (dtb serve listens only once it has warmed up). Raises ServerError,
    with the end of the server's stderr, if it exits or is not ready in time.
    """
    url = f"http://127.0.0.1:{free_port()}"
    command = [*SERVE, "--port", url.rsplit(":", 1)[1], *args, *([] if model is None else ["--model", model])]
    with tempfile.TemporaryFile() as stderr:  # a file, not a pipe: a chatty server never blocks on a full pipe
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr)
        try:
            wait_ready(url, process, stderr, ready_timeout_s)
            yield Server(url, process.pid, tuple(command))
        finally:
            stop(process)


def wait_ready(url: str, process: subprocess.Popen, stderr, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            urllib.request.urlopen(url + "/ready", timeout=5).close()
            return
        except OSError:
            pass  # not listening yet, or not ready (an HTTPError is an OSError)
        if process.poll() is not None:
            stderr.seek(0)
            tail = stderr.read().decode(errors="replace")[-2000:]
            raise ServerError(f"dtb serve exited with status {process.returncode}: {tail}")
        if time.monotonic() > deadline:
            raise ServerError(f"dtb serve was not ready within {timeout_s:.0f} s")
        time.sleep(0.2)


def stop(process: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL if it has not exited within STOP_TIMEOUT_S."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def rss_mib(pid: int) -> float | None:
    """Resident memory of process `pid` (VmRSS in /proc/PID/status), MiB; None where it cannot be read."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    found = re.search(r"^VmRSS:\s+(\d+)\s+kB", status, re.MULTILINE)
    return None if found is None else int(found.group(1)) / 1024


class RssSampler:
    """Samples a process's resident memory every `interval_s` on a thread, with how many requests were done.

    `completed` is called at each sample; `summary()` gives memory at the first sample, at the first sample
    after `after` requests, at its peak and at the last sample.
    """

    def __init__(self, pid: int, completed: Callable[[], int], interval_s: float = 0.5) -> None:
        self.pid, self.completed, self.interval_s = pid, completed, interval_s
        self.samples: list[tuple[float, int, float]] = []  # (seconds since start, requests done, MiB)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> RssSampler:
        self._started = time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()  # the end, whenever the last interval fell

    def _run(self) -> None:
        while True:
            self._sample()
            if self._stop.wait(self.interval_s):
                return

    def _sample(self) -> None:
        mib = rss_mib(self.pid)
        if mib is not None:
            self.samples.append((time.monotonic() - self._started, self.completed(), mib))

    def summary(self, after: int = 100) -> dict:
        """MiB at start, after `after` requests (None if fewer were done), at peak and at the end."""
        if not self.samples:
            return {
                "samples": 0,
                "start_mib": None,
                "after_requests": after,
                "after_mib": None,
                "peak_mib": None,
                "end_mib": None,
            }
        warmed = next((mib for _, done, mib in self.samples if done >= after), None)
        return {
            "samples": len(self.samples),
            "start_mib": round(self.samples[0][2], 1),
            "after_requests": after,
            "after_mib": None if warmed is None else round(warmed, 1),
            "peak_mib": round(max(mib for _, _, mib in self.samples), 1),
            "end_mib": round(self.samples[-1][2], 1),
        }
