"""Load on a question-answering server over HTTP, from one asyncio process that stays light on the CPU the
server needs: closed-loop clients (each sends its next request when the last is answered) and open-loop
Poisson arrivals (requests come when they come, answered or not), and what each request got.

    requests = [Request(q.id, body(q.question, q.context)) for q in questions]
    outcomes = asyncio.run(closed_loop(url, requests, clients=16, total=2000, duration_s=300, timeout_s=60))
    summarise(outcomes, seconds=wall(outcomes))

Needs an async HTTP client: httpx2 (the test and bench extras).
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import httpx2 as httpx
import numpy as np


@dataclass(frozen=True)
class Request:
    """One request to send: the id of the question it asks (to score its answer) and the JSON body."""

    key: str
    body: bytes


@dataclass(frozen=True)
class Outcome:
    """What one request got. `status` None: no HTTP answer (`error` says why). Latency runs from when the
    request was due (open loop: its arrival time, so a late client does not hide a slow server)."""

    index: int  # its place in the sequence sent
    key: str
    client: int
    due: float  # seconds since the run started
    latency_ms: float
    status: int | None
    error: str | None = None
    answer: str | None = None  # the best answer's text, for a 200
    length_config: str | None = None  # the response headers X-Length-Config, X-MACs-Ratio, X-Queue-Ms
    macs_ratio: float | None = None
    queue_ms: float | None = None
    server_ms: float | None = None  # the server's own time for it (Server-Timing), to tell its share of latency


def body(question: str, context: str, parameters: dict | None = None) -> bytes:
    """The JSON body of a request for one question about `context`."""
    return json.dumps({"inputs": {"question": question, "context": context}, "parameters": parameters or {}}).encode()


def poisson_arrivals(rate: float, count: int, seed: int = 0) -> list[float]:
    """`count` arrival times (seconds from 0) of a Poisson process of `rate` per second."""
    if rate <= 0:
        raise ValueError(f"rate must be > 0 requests/s, got {rate}")
    rng = random.Random(seed)
    times, now = [], 0.0
    for _ in range(count):
        now += rng.expovariate(rate)
        times.append(now)
    return times


def client(connections: int, timeout_s: float, transport=None) -> httpx.AsyncClient:
    """One pool of at most `connections` kept-alive connections, each request given `timeout_s`."""
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections, keepalive_expiry=4.0)
    # trust_env=False: no proxy from the environment between the load and a server on loopback
    return httpx.AsyncClient(limits=limits, timeout=httpx.Timeout(timeout_s), transport=transport, trust_env=False)


async def send(
    http: httpx.AsyncClient, url: str, request: Request, index: int, client_id: int, due: float, origin: float
) -> Outcome:
    """POST `request`, timed from `origin + due` (perf_counter seconds)."""
    sent = dict(index=index, key=request.key, client=client_id, due=due)
    try:
        response = await http.post(url, content=request.body, headers={"Content-Type": "application/json"})
    except httpx.TimeoutException:
        return Outcome(**sent, latency_ms=elapsed_ms(origin + due), status=None, error="timeout")
    except httpx.TransportError as e:
        return Outcome(**sent, latency_ms=elapsed_ms(origin + due), status=None, error=type(e).__name__)
    latency_ms = elapsed_ms(origin + due)
    headers = response.headers
    return Outcome(
        **sent,
        latency_ms=latency_ms,
        status=response.status_code,
        answer=best_answer(response.content) if response.status_code == 200 else None,
        length_config=headers.get("x-length-config"),
        macs_ratio=number(headers.get("x-macs-ratio")),
        queue_ms=number(headers.get("x-queue-ms")),
        server_ms=server_timing(headers.get("server-timing")),
    )


def elapsed_ms(since: float) -> float:
    return (time.perf_counter() - since) * 1000


def best_answer(content: bytes) -> str | None:
    """The text of the best answer to a one-question request (a list when top_k > 1)."""
    try:
        answer = json.loads(content)
    except ValueError:
        return None
    if isinstance(answer, list):
        answer = answer[0] if answer else None
    return answer.get("answer") if isinstance(answer, dict) else None


def server_timing(text: str | None) -> float | None:
    """The `dur` of a `Server-Timing: app;dur=12.3` header, in ms."""
    duration = (text or "").partition("dur=")[2].split(",")[0].split(";")[0]
    return number(duration) if duration else None


def number(text: str | None) -> float | None:
    try:
        return None if text is None else float(text)
    except ValueError:
        return None


async def closed_loop(
    url: str,
    requests: Sequence[Request],
    clients: int,
    total: int,
    duration_s: float,
    timeout_s: float,
    repeating: Request | None = None,
    on_done: Callable[[Outcome], None] | None = None,
    transport=None,
) -> list[Outcome]:
    """`clients` clients that share `total` requests (`requests` in turn, cycled), each sending its next one when
    the last is answered, until all are sent or `duration_s` has passed; with `repeating`, one more client
    (number `clients`) sends it over and over while the others run. Returns every outcome, in completion order."""
    outcomes: list[Outcome] = []
    issued = 0
    origin = time.perf_counter()
    stop_at = origin + duration_s
    finished = asyncio.Event()

    def record(outcome: Outcome) -> None:
        outcomes.append(outcome)
        if on_done is not None:
            on_done(outcome)

    async def worker(http: httpx.AsyncClient, client_id: int) -> None:
        nonlocal issued
        while issued < total and time.perf_counter() < stop_at:
            index = issued
            issued += 1
            due = time.perf_counter() - origin
            record(await send(http, url, requests[index % len(requests)], index, client_id, due, origin))

    async def repeat(http: httpx.AsyncClient) -> None:
        index = 0
        while not finished.is_set() and time.perf_counter() < stop_at:
            due = time.perf_counter() - origin
            record(await send(http, url, repeating, index, clients, due, origin))
            index += 1

    async with client(clients + (repeating is not None), timeout_s, transport) as http:
        extra = asyncio.create_task(repeat(http)) if repeating is not None else None
        await asyncio.gather(*(worker(http, c) for c in range(clients)))
        finished.set()
        if extra is not None:
            await extra  # its request in flight ends within timeout_s
    return outcomes


async def open_loop(
    url: str,
    requests: Sequence[Request],
    arrivals: Sequence[float],
    duration_s: float,
    timeout_s: float,
    connections: int,
    on_done: Callable[[Outcome], None] | None = None,
    transport=None,
) -> list[Outcome]:
    """Request i (`requests` cycled) sent at `arrivals[i]` seconds whether or not earlier ones were answered,
    up to `duration_s`; then waits for those in flight (each ends within `timeout_s`). At most `connections`
    are open: past that a request waits for one, and the wait counts in its latency."""
    outcomes: list[Outcome] = []

    async def one(http: httpx.AsyncClient, index: int, due: float) -> None:
        outcome = await send(http, url, requests[index % len(requests)], index, 0, due, origin)
        outcomes.append(outcome)
        if on_done is not None:
            on_done(outcome)

    async with client(connections, timeout_s, transport) as http:
        origin = time.perf_counter()
        tasks = []
        for index, due in enumerate(arrivals):
            if due > duration_s:
                break
            delay = origin + due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(http, index, due)))
        await asyncio.gather(*tasks)
    return outcomes


def percentiles(values: Sequence[float]) -> dict:
    """p50, p95, p99 (None for no values), rounded to 0.01."""
    if not values:
        return {"p50": None, "p95": None, "p99": None}
    found = np.percentile(np.asarray(values, dtype=float), [50, 95, 99])
    return {key: round(float(v), 2) for key, v in zip(("p50", "p95", "p99"), found)}


def summarise(outcomes: Sequence[Outcome]) -> dict:
    """Counts by kind of status, answers per second over the run's span, latency percentiles (ms) of the answered
    ones (200), and the length configs, MACs ratios and queueing the server reported."""
    ok = [o for o in outcomes if o.status == 200]
    statuses = Counter(o.status for o in outcomes if o.status is not None)
    span = max((o.due + o.latency_ms / 1000 for o in outcomes), default=0.0) - min(
        (o.due for o in outcomes), default=0.0
    )
    macs = [o.macs_ratio for o in ok if o.macs_ratio is not None]
    queue = [o.queue_ms for o in ok if o.queue_ms is not None]
    server = [o.server_ms for o in ok if o.server_ms is not None]
    return {
        "requests": len(outcomes),
        "ok": len(ok),
        "4xx": sum(n for s, n in statuses.items() if 400 <= s < 500),
        "5xx": sum(n for s, n in statuses.items() if 500 <= s < 600),
        "shed_503": statuses.get(503, 0),
        "timeout_504": statuses.get(504, 0),
        "no_response": dict(Counter(o.error for o in outcomes if o.status is None)),
        "statuses": {str(s): n for s, n in sorted(statuses.items())},
        "seconds": round(span, 3),
        "throughput_rps": round(len(ok) / span, 2) if span > 0 else None,
        "latency_ms": percentiles([o.latency_ms for o in ok]),
        "latency_max_ms": round(max((o.latency_ms for o in ok), default=0.0), 2) if ok else None,
        "length_configs": dict(Counter(o.length_config or "(not reported)" for o in ok).most_common()),
        "macs_ratio_mean": round(float(np.mean(macs)), 4) if macs else None,
        "macs_ratios": {f"{r:.3f}": n for r, n in sorted(Counter(round(m, 3) for m in macs).items())},
        "queue_ms": percentiles(queue),
        "server_ms": percentiles(server),
    }
