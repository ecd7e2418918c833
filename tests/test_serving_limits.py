"""Limits, backpressure and hostile input: each refusal is its documented status, in the one error shape,
naming the limit; the server stays healthy and its memory bounded afterwards."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from pathlib import Path
from urllib.parse import urlparse

import httpx
import pytest
from fastapi.testclient import TestClient
from serving_helpers import running, slowed
from test_frontier import FRONTIER

from dynamic_tinybert import QuestionAnswerer
from dynamic_tinybert.runtime import peak_rss_mib
from dynamic_tinybert.serving import ServerSettings, create_app

PAIR = {"question": "where does alice live ?", "context": "carol lives in rome . alice lives in oslo ."}


@pytest.fixture
def qa(tiny_checkpoint: Path) -> QuestionAnswerer:
    FRONTIER.save(tiny_checkpoint)
    return QuestionAnswerer.from_pretrained(tiny_checkpoint)


def client_for(qa, **settings) -> TestClient:
    return TestClient(create_app(qa, settings=ServerSettings(**settings)))


def assert_error(response: httpx.Response, status: int, kind: str, *fragments: str) -> dict:
    assert response.status_code == status, response.text[:300]
    body = response.json()
    assert set(body) == {"detail", "type", "errors"} and body["type"] == kind
    assert all(fragment in body["detail"] for fragment in fragments), body["detail"]
    return body


@pytest.mark.parametrize(
    "body, settings, fragments",
    [
        ({"inputs": [PAIR] * 10_000}, {}, ["10000 pairs", "limit of 32", "--max-inputs"]),
        ({"inputs": [PAIR] * 3}, {"max_inputs": 2}, ["3 pairs", "--max-inputs"]),
        ({"inputs": PAIR, "parameters": {"top_k": 10**9}}, {}, ["top_k", "limit of 20", "--max-top-k"]),
        (
            {"inputs": {**PAIR, "context": "alice " * 30}},
            {"max_context_chars": 100},
            ["context", "--max-context-chars"],
        ),
        (
            {"inputs": {**PAIR, "question": "who " * 30}},
            {"max_question_chars": 50},
            ["question", "--max-question-chars"],
        ),
        (
            {
                "inputs": {**PAIR, "context": "alice lives in oslo . " * 200},
                "parameters": {"max_seq_len": 32, "doc_stride": 8},
            },
            {"max_windows": 20},
            ["windows", "--max-windows"],
        ),
    ],
)
def test_each_limit_is_a_422_naming_its_flag(qa, body, settings, fragments):
    assert_error(client_for(qa, **settings).post("/", json=body), 422, "invalid_request", *fragments)


@pytest.mark.parametrize(
    "raw, fragments",
    [
        ('{"inputs": {"question": "who \\ud800?", "context": "x"}}', ["inputs.question", "lone surrogate"]),
        ('{"inputs": [{"question": "q", "context": "a\\u0000b"}]}', ["inputs.0.context", "NUL"]),
        ('{"inputs": {"question": "q", "context": "c"}, "parameters": {"budget": NaN}}', ["budget", "finite"]),
        ('{"inputs": {"question": "q", "context": "c"}, "parameters": {"budget": Infinity}}', ["budget", "finite"]),
        ('{"inputs": {"question": "q", "context": "c"}, "parameters": {"top_k": "3"}}', ["top_k", "valid integer"]),
        ('{"inputs": {"question": "q", "context": "c"}, "parameters": {"budget": true}}', ["budget", "valid number"]),
        ('{"inputs": {"question": "q", "context": "c"}, "parameters": {"top_k": 2.0}}', ["top_k", "valid integer"]),
        ('{"inputs": {"question": 5, "context": "c"}}', ["inputs.question", "valid string"]),
    ],
)
def test_hostile_values_are_422_naming_the_field(qa, raw, fragments):
    response = client_for(qa).post("/", content=raw, headers={"Content-Type": "application/json"})
    body = assert_error(response, 422, "invalid_request", *fragments)
    assert body["errors"] and all("input" not in error for error in body["errors"])


def test_errors_never_echo_the_request_back(qa):
    context = "alice lives in oslo . " * 20_000  # 440 KB
    body = {"inputs": {"question": "q", "context": context}, "parameters": {"top_k": "3"}}
    response = client_for(qa).post("/", json=body)
    assert response.status_code == 422 and len(response.content) < 2_000


def test_a_body_nested_100000_deep_is_a_400(qa):
    response = client_for(qa).post("/", content="[" * 100_000, headers={"Content-Type": "application/json"})
    assert_error(response, 400, "bad_request", "JSON")


def test_a_body_that_is_not_json_is_a_400_and_one_of_another_type_a_415(qa):
    client = client_for(qa)
    assert_error(client.post("/", content="{", headers={"Content-Type": "application/json"}), 400, "bad_request")
    assert_error(
        client.post("/", content="inputs=x", headers={"Content-Type": "text/plain"}), 415, "unsupported_media_type"
    )
    assert_error(client.post("/", content=json.dumps({"inputs": PAIR})), 415, "unsupported_media_type")


def test_a_body_over_the_limit_is_a_413_whether_declared_or_streamed(qa):
    client = client_for(qa, max_body_bytes=10_000)
    big = json.dumps({"inputs": {"question": "q", "context": "alice " * 5_000}})
    assert_error(
        client.post("/", content=big, headers={"Content-Type": "application/json"}),
        413,
        "body_too_large",
        "--max-body-bytes",
    )
    chunks = (big[i : i + 1000].encode() for i in range(0, len(big), 1000))  # no Content-Length: chunked
    assert_error(client.post("/", content=chunks, headers={"Content-Type": "application/json"}), 413, "body_too_large")


def raw_request(url: str, head: bytes, body: bytes = b"", wait_s: float = 5.0) -> bytes:
    address = urlparse(url)
    with socket.create_connection((address.hostname, address.port), timeout=wait_s) as connection:
        connection.sendall(head + body)
        reply = b""
        while chunk := connection.recv(65536):
            reply += chunk
            if b"\r\n\r\n" in reply and b'"type"' in reply:
                break
        return reply


def test_a_declared_100_mb_body_is_refused_before_it_is_read_and_memory_stays_put(qa):
    settings = ServerSettings()
    with running(create_app(qa, settings=settings), settings) as url:
        before = peak_rss_mib()
        head = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100000000\r\n\r\n"
        reply = raw_request(url, head, b'{"inputs": ')
        assert reply.startswith(b"HTTP/1.1 413") and b"body_too_large" in reply
        assert peak_rss_mib() - before < 50
        assert httpx.get(url + "/health").status_code == 200


def test_silent_and_slow_connections_are_closed_after_the_read_timeout(qa):
    settings = ServerSettings(read_timeout_s=0.5, keep_alive_s=0.5)
    with running(create_app(qa, settings=settings), settings) as url:
        address = urlparse(url)
        silent = socket.create_connection((address.hostname, address.port))
        slow = socket.create_connection((address.hostname, address.port))
        slow.sendall(b"POST / HTTP/1.1\r\nHost: x\r\n")  # the head never ends
        stalled = socket.create_connection((address.hostname, address.port))
        stalled.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{")
        for connection in (silent, slow, stalled):
            connection.settimeout(5)
        time.sleep(1.5)
        assert silent.recv(100) == b"" and slow.recv(100) == b""  # closed by the server
        assert stalled.recv(1000).startswith(b"HTTP/1.1 408")  # a body that stalls gets its answer
        assert httpx.get(url + "/health").status_code == 200


def test_a_full_queue_is_a_503_with_retry_after(qa):
    settings = ServerSettings(max_queue=2, max_wait_ms=0)
    app = create_app(qa, settings=settings)
    qa.logits = slowed(qa, 0.5)

    async def burst(url):
        async with httpx.AsyncClient(timeout=30) as client:
            return await asyncio.gather(*[client.post(url, json={"inputs": PAIR}) for _ in range(6)])

    with running(app, settings) as url:
        responses = asyncio.run(burst(url))
        metrics = httpx.get(url + "/metrics").text
    codes = sorted(r.status_code for r in responses)
    assert codes.count(200) >= 2 and 503 in codes
    refused = next(r for r in responses if r.status_code == 503)
    assert_error(refused, 503, "overloaded", "--max-queue")
    assert refused.headers["Retry-After"] == "1"
    assert 'dtb_shed_total{reason="queue"}' in metrics


def test_a_request_past_its_time_limit_is_a_504_and_its_queued_windows_never_run(qa):
    settings = ServerSettings(request_timeout_s=0.3, max_wait_ms=0, max_batch_tokens=64)
    app = create_app(qa, settings=settings)
    calls: list = []
    long_context = " ".join(["alice lives in oslo ."] * 60)  # several windows: several batches at 64 tokens
    with running(app, settings) as url:
        qa.logits = slowed(qa, 0.2, calls)
        response = httpx.post(url, json={"inputs": {"question": "where ?", "context": long_context}}, timeout=30)
        time.sleep(0.5)
        ran = sum(len(c) for c in calls)
        metrics = httpx.get(url + "/metrics").text
    assert_error(response, 504, "timeout", "--request-timeout-s")
    assert ran < len(qa.windows(["where ?"], [long_context]))
    assert 'dtb_cancelled_total{reason="timeout"} 1.0' in metrics


def test_a_client_that_leaves_has_its_queued_work_dropped(qa):
    settings = ServerSettings(max_wait_ms=0)
    app = create_app(qa, settings=settings)
    calls: list = []
    with running(app, settings) as url:
        qa.logits = slowed(qa, 0.6, calls)

        async def leave_early():
            async with httpx.AsyncClient(timeout=30) as client:
                busy = asyncio.create_task(client.post(url, json={"inputs": PAIR}))
                await asyncio.sleep(0.1)
                with pytest.raises(httpx.TimeoutException):
                    await client.post(url, json={"inputs": {**PAIR, "question": "who lives in rome ?"}}, timeout=0.2)
                await busy

        asyncio.run(leave_early())
        time.sleep(1.0)
        metrics = httpx.get(url + "/metrics").text
    assert 'dtb_cancelled_total{reason="disconnect"} 1.0' in metrics
    assert len(calls) == 1  # only the first request's batch ran


def test_health_and_ready_answer_at_once_while_the_model_is_busy(qa):
    settings = ServerSettings(max_wait_ms=0, max_batch_tokens=64)
    app = create_app(qa, settings=settings)
    with running(app, settings) as url:
        qa.logits = slowed(qa, 0.3)

        async def busy_then_health():
            async with httpx.AsyncClient(timeout=60) as client:
                answers = [asyncio.create_task(client.post(url, json={"inputs": PAIR})) for _ in range(8)]
                await asyncio.sleep(0.2)
                health, ready = await client.get(url + "/health"), await client.get(url + "/ready")
                pending = sum(not a.done() for a in answers)
                await asyncio.gather(*answers)
                return health, ready, pending

        health, ready, pending = asyncio.run(busy_then_health())
    assert health.json() == {"status": "ok"} and ready.status_code == 200
    assert pending >= 6  # the answers were still queued when health and readiness were answered


def test_the_server_is_healthy_after_the_hostile_cases(qa):
    client = client_for(qa)
    for raw in ("[" * 100_000, '{"inputs": {"question": "\\ud800", "context": "x"}}', "{" * 10):
        client.post("/", content=raw, headers={"Content-Type": "application/json"})
    assert client.post("/", json={"inputs": PAIR}).status_code == 200


def test_an_accept_error_that_repeats_is_logged_once_per_interval_without_its_traceback():
    import logging

    from dynamic_tinybert.serving.http_server import ACCEPT_ERROR, OncePerInterval

    once = OncePerInterval(ACCEPT_ERROR, interval_s=60)

    def record(message: str) -> logging.LogRecord:
        try:
            raise OSError(24, "Too many open files")
        except OSError:
            import sys

            return logging.LogRecord("asyncio", logging.ERROR, __file__, 1, message, (), sys.exc_info())

    first = record(ACCEPT_ERROR + "\nsocket: <...>")
    assert once.filter(first) and first.exc_info is None
    assert not any(once.filter(record(ACCEPT_ERROR)) for _ in range(1000))
    assert once.filter(record("another error"))  # other messages pass untouched
    once.last -= 61
    later = record(ACCEPT_ERROR)
    assert once.filter(later) and "1000 more" in later.getMessage()


@pytest.mark.parametrize(
    "inputs, loc",
    [([], ["body", "inputs"]), ([{"question": "q"}], ["body", "inputs", 0, "context"]), ({"question": 1}, None)],
)
def test_an_invalid_inputs_field_is_reported_in_the_form_sent_without_the_unions_names(qa, inputs, loc):
    body = client_for(qa).post("/", json={"inputs": inputs}).json()
    assert "QuestionContext" not in json.dumps(body)
    if loc is not None:
        assert body["errors"][0]["loc"] == loc
