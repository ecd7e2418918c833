"""The load generator behind bench/serve_load.py and the `dtb serve` subprocess helpers: how many requests go
out and when, what each one's outcome records, and how the outcomes are counted. The server is a stand-in
(httpx2's MockTransport) unless a test says otherwise."""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import subprocess
import sys
import time

import httpx2
import pytest

from dynamic_tinybert.benchmark.load import (
    Request,
    body,
    closed_loop,
    open_loop,
    poisson_arrivals,
    summarise,
)
from dynamic_tinybert.benchmark.server import RssSampler, rss_mib

URL = "http://127.0.0.1:1/"
REQUESTS = [Request(f"q{i}", body(f"question {i}?", f"context {i}")) for i in range(3)]


def answering(answer: dict | list, status: int = 200, headers: dict | None = None, seconds: float = 0.0):
    """A stand-in server answering every request alike, after `seconds`."""

    async def handler(request: httpx2.Request) -> httpx2.Response:
        await asyncio.sleep(seconds)
        return httpx2.Response(status, json=answer, headers=headers or {})

    return httpx2.MockTransport(handler)


ANSWER = {"answer": "Berlin", "score": 0.9, "start": 34, "end": 40}


def test_closed_loop_sends_exactly_the_total_shared_by_every_client():
    outcomes = asyncio.run(
        closed_loop(URL, REQUESTS, clients=4, total=10, duration_s=30, timeout_s=5, transport=answering(ANSWER))
    )
    assert sorted(o.index for o in outcomes) == list(range(10))
    assert {o.client for o in outcomes} == {0, 1, 2, 3}
    assert [o.key for o in sorted(outcomes, key=lambda o: o.index)][:4] == ["q0", "q1", "q2", "q0"]  # cycled


def test_closed_loop_stops_sending_when_its_duration_is_up():
    transport = answering(ANSWER, seconds=0.02)
    outcomes = asyncio.run(closed_loop(URL, REQUESTS, 2, total=10**6, duration_s=0.2, timeout_s=5, transport=transport))
    assert 0 < len(outcomes) < 100


def test_the_repeating_client_is_numbered_after_the_others_and_leaves_their_total_alone():
    big = Request("big", body("question?", "a long context"))
    outcomes = asyncio.run(
        closed_loop(URL, REQUESTS, 2, 6, 30, 5, repeating=big, transport=answering(ANSWER, seconds=0.01))
    )
    repeated = [o for o in outcomes if o.client == 2]
    assert repeated and all(o.key == "big" for o in repeated)
    assert sorted(o.index for o in outcomes if o.client < 2) == list(range(6))


def test_open_loop_times_each_request_from_its_arrival_so_waiting_behind_others_counts():
    lock = asyncio.Lock()

    async def one_at_a_time(request: httpx2.Request) -> httpx2.Response:
        async with lock:
            await asyncio.sleep(0.05)
        return httpx2.Response(200, json=ANSWER)

    transport = httpx2.MockTransport(one_at_a_time)
    outcomes = asyncio.run(open_loop(URL, REQUESTS, [0.0, 0.0, 0.0], 30, 5, connections=8, transport=transport))
    latencies = sorted(o.latency_ms for o in outcomes)
    assert latencies[2] >= 140  # the third waited for two others: 3 x 50 ms from its arrival, not 50


def test_open_loop_sends_no_arrival_after_its_duration():
    outcomes = asyncio.run(open_loop(URL, REQUESTS, [0.0, 0.01, 5.0], 0.5, 5, 8, transport=answering(ANSWER)))
    assert sorted(o.index for o in outcomes) == [0, 1]


def test_an_outcome_reads_the_servers_length_headers_and_the_best_of_top_k_answers():
    headers = {"X-Length-Config": "0.95,0.8,0.5+q", "X-MACs-Ratio": "0.68", "X-Queue-Ms": "3.5"}
    headers["Server-Timing"] = "app;dur=12.5"
    transport = answering([ANSWER, {**ANSWER, "answer": "Paris"}], headers=headers)
    (outcome,) = asyncio.run(closed_loop(URL, REQUESTS, 1, 1, 30, 5, transport=transport))
    assert (outcome.status, outcome.answer) == (200, "Berlin")
    assert (outcome.length_config, outcome.macs_ratio, outcome.queue_ms) == ("0.95,0.8,0.5+q", 0.68, 3.5)
    assert outcome.server_ms == 12.5 and summarise([outcome])["server_ms"]["p99"] == 12.5


def test_a_request_without_an_answer_in_time_is_a_timeout_not_a_status():
    async def silent_server_run() -> list:
        async def never_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.read(65536)  # the request
            await reader.read(65536)  # nothing more until the client gives up and closes
            writer.close()

        server = await asyncio.start_server(never_answer, "127.0.0.1", 0)
        url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/"
        async with server:
            return await closed_loop(url, REQUESTS, 1, 1, 30, timeout_s=0.2)

    (outcome,) = asyncio.run(silent_server_run())
    assert (outcome.status, outcome.error) == (None, "timeout")
    assert outcome.latency_ms >= 200


def test_the_body_is_one_question_about_its_context():
    assert json.loads(body("Who?", "Alice lives here.")) == {
        "inputs": {"question": "Who?", "context": "Alice lives here."},
        "parameters": {},
    }


def test_summarise_counts_shed_and_failed_requests_and_times_only_the_answered():
    served = asyncio.run(closed_loop(URL, REQUESTS, 1, 4, 30, 5, transport=answering(ANSWER, seconds=0.01)))
    shed = asyncio.run(closed_loop(URL, REQUESTS, 1, 3, 30, 5, transport=answering({"detail": "busy"}, status=503)))
    summary = summarise(served + shed)
    assert (summary["requests"], summary["ok"], summary["5xx"], summary["shed_503"]) == (7, 4, 3, 3)
    assert summary["latency_ms"]["p50"] >= 10  # the answered took 10 ms; the instant 503s are not in it
    assert summary["length_configs"] == {"(not reported)": 4}


def test_poisson_arrivals_come_at_the_rate_asked_in_increasing_order():
    arrivals = poisson_arrivals(50.0, 5000, seed=1)
    gaps = [b - a for a, b in zip([0.0, *arrivals], arrivals)]
    assert all(gap > 0 for gap in gaps)
    assert statistics.mean(gaps) == pytest.approx(1 / 50, rel=0.05)


def test_poisson_arrivals_refuse_a_rate_that_is_not_positive():
    with pytest.raises(ValueError, match="rate must be > 0"):
        poisson_arrivals(0.0, 10)


def test_rss_sampler_records_the_memory_at_start_after_the_first_requests_peak_and_end():
    done = 0
    with RssSampler(os.getpid(), completed=lambda: done, interval_s=0.01) as sampler:
        while len(sampler.samples) < 3:
            time.sleep(0.005)
        done = 5
        while sampler.samples[-1][1] < 5:
            time.sleep(0.005)
    summary = sampler.summary(after=5)
    assert summary["after_mib"] is not None
    assert 0 < summary["start_mib"] <= summary["peak_mib"] and summary["end_mib"] <= summary["peak_mib"]
    assert summary["end_mib"] == pytest.approx(rss_mib(os.getpid()), rel=0.2)


def test_rss_of_a_process_that_has_exited_is_none():
    process = subprocess.Popen([sys.executable, "-c", ""])
    process.wait()
    assert rss_mib(process.pid) is None
