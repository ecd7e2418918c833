"""Dynamic batching: concurrent requests share forward passes and get the answers they would get alone."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import Future
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from serving_helpers import running, slowed
from test_frontier import FRONTIER
from test_serving import same_answers

from dynamic_tinybert import LengthConfig, QuestionAnswerer
from dynamic_tinybert.features import make_windows
from dynamic_tinybert.serving import ServerSettings, create_app
from dynamic_tinybert.serving import batcher as batcher_module
from dynamic_tinybert.serving.batcher import Job, settle, take_in_turns

NAMES = ["alice", "bob", "carol", "dave", "erin", "frank", "grace", "henry"]
CITIES = ["oslo", "paris", "rome", "berlin", "madrid", "vienna", "athens", "london"]


def pairs(n: int) -> list[dict]:
    """Varied questions and contexts of varied lengths (one to several windows each)."""
    out = []
    for i in range(n):
        facts = [f"{NAMES[(i + j) % 8]} lives in {CITIES[(i * 3 + j) % 8]} ." for j in range(2 + (i * 5) % 19)]
        out.append({"question": f"where does {NAMES[i % 8]} live ?", "context": " ".join(facts)})
    return out


@pytest.fixture
def qa(tiny_checkpoint: Path) -> QuestionAnswerer:
    FRONTIER.save(tiny_checkpoint)
    return QuestionAnswerer.from_pretrained(tiny_checkpoint, max_seq_len=48, doc_stride=16)


async def post_all(url: str, bodies: list[dict]) -> list[httpx.Response]:
    async with httpx.AsyncClient(timeout=60) as client:
        return await asyncio.gather(*[client.post(url, json=body) for body in bodies])


def batch_counts(metrics_text: str) -> tuple[float, float]:
    """(forward passes, windows through them) from /metrics."""
    values = dict(line.rsplit(" ", 1) for line in metrics_text.splitlines() if line and not line.startswith("#"))
    return float(values["dtb_batch_windows_count"]), float(values["dtb_batch_windows_sum"])


@pytest.mark.parametrize("length_config", [None, "0.8,0.6,0.4+q"])
def test_concurrent_requests_share_batches_and_get_the_answers_they_get_alone(qa, length_config):
    questions = pairs(24)
    parameters = {"top_k": 2} | ({"length_config": length_config} if length_config else {})
    settings = ServerSettings(max_batch_tokens=2048, max_wait_ms=300)
    app = create_app(qa, settings=settings)
    with running(app, settings) as url:
        responses = asyncio.run(post_all(url, [{"inputs": p, "parameters": parameters} for p in questions]))
        passes, windows = batch_counts(httpx.get(url + "/metrics").text)
    assert all(r.status_code == 200 for r in responses)
    config = None if length_config is None else LengthConfig.parse(length_config)
    for pair, response in zip(questions, responses):
        assert same_answers(response.json(), qa(pair, top_k=2, length_config=config))
    assert windows > len(questions)  # some requests had several windows ...
    assert passes < len(questions) / 2  # ... and requests shared forward passes


def test_requests_under_different_length_configs_never_share_a_batch_and_keep_their_answers(qa):
    configs = ["1.0,1.0,1.0", "0.5,0.3,0.2", "0.9,0.7,0.5+q"]
    questions = pairs(12)
    bodies = [{"inputs": p, "parameters": {"length_config": configs[i % 3]}} for i, p in enumerate(questions)]
    settings = ServerSettings(max_batch_tokens=4096, max_wait_ms=300)
    app = create_app(qa, settings=settings)
    with running(app, settings) as url:
        responses = asyncio.run(post_all(url, bodies))
    for body, response in zip(bodies, responses):
        config = LengthConfig.parse(body["parameters"]["length_config"])
        assert same_answers(response.json(), qa(body["inputs"], length_config=config))
        assert response.headers["X-Length-Config"] in ("full", str(config))


def jobs_of(qa: QuestionAnswerer, windows_per_job: list[int]) -> list[Job]:
    jobs = []
    for n in windows_per_job:
        context = " ".join(["alice lives in oslo ."] * (3 * n))
        windows = make_windows(qa.tokenizer, ["where ?"], [context], max_seq_len=48, doc_stride=16)[:n]
        jobs.append(Job(windows, None, [1.0] * len(windows)))
    return jobs


def test_a_job_with_many_windows_takes_turns_with_the_small_ones_queued_behind_it(qa):
    big, *small = jobs_of(qa, [40, 1, 1, 1])
    batch = take_in_turns([big, *small], max_tokens=48 * 8)
    taken = [job for job, _ in batch]
    assert all(job in taken for job in small)  # every small job is in the first batch
    assert taken.count(big) == 8 - len(small)  # the big one fills the rest, no more
    assert len(batch) * max(job.windows[i].length for job, i in batch) <= 48 * 8


def test_a_batch_holds_at_least_one_window_even_when_it_exceeds_the_token_budget(qa):
    (job,) = jobs_of(qa, [3])
    assert len(take_in_turns([job], max_tokens=1)) == 1


def question_of(window) -> tuple[int, ...]:
    ids = window.encoding.ids
    return tuple(ids[1 : window.encoding.type_ids.index(1) - 1])  # between [CLS] and the first [SEP]


def test_one_request_at_a_time_when_max_batch_tokens_is_0(qa):
    questions = pairs(8)
    settings = ServerSettings(max_batch_tokens=0, max_wait_ms=300)
    app = create_app(qa, settings=settings)
    calls = []
    qa.logits = slowed(qa, 0.0, calls)
    with running(app, settings) as url:
        responses = asyncio.run(post_all(url, [{"inputs": p} for p in questions]))
    assert all(r.status_code == 200 for r in responses)
    assert all(len({question_of(w) for w in windows}) == 1 for windows in calls)  # never two requests at once


def test_a_batch_of_very_different_lengths_runs_as_passes_of_similar_lengths():
    from dynamic_tinybert.serving.batcher import length_groups

    groups = length_groups([300, 290, 120, 110, 100, 105], overhead_tokens=64)
    assert sorted(map(sorted, groups)) == [[0, 1], [2, 3, 4, 5]]
    assert length_groups([150] * 8, overhead_tokens=64) == [list(range(8))]  # equal lengths: one pass
    assert sorted(i for g in length_groups([384, 7, 99, 250, 13]) for i in g) == [0, 1, 2, 3, 4]


def test_the_batching_loop_trims_the_heap_once_per_idle_spell_and_retries_a_trim_refused_as_too_soon(qa, monkeypatch):
    queued_at_trim = []
    refuse = False

    def trim_heap() -> bool:
        queued_at_trim.append(len(app.state.batcher._jobs))
        return not refuse

    monkeypatch.setattr(batcher_module, "trim_heap", trim_heap)
    monkeypatch.setattr(batcher_module, "TRIM_INTERVAL_S", 0.05)
    app = create_app(qa)
    with TestClient(app) as client:
        client.post("/", json={"inputs": pairs(1)[0]})
        time.sleep(0.3)
        trimmed = len(queued_at_trim)
        refuse = True  # as trim_heap does within TRIM_INTERVAL_S of its last trim
        client.post("/", json={"inputs": pairs(1)[0]})
        time.sleep(0.3)
    assert 1 <= trimmed <= 4  # once each time the queue went idle (three warm-up batches, a request), not more
    assert len(queued_at_trim) - trimmed >= 3  # refused: tried again each interval while the queue stays idle
    assert not any(queued_at_trim)  # never while work is queued


def test_a_future_its_request_cancelled_meanwhile_is_settled_without_raising_in_the_batching_thread():
    cancelled = Future()
    cancelled.cancel()  # the client left between the batcher's check and its answer
    settle(cancelled, ([], []))
    settle(cancelled, error=RuntimeError("the model failed"))
    assert cancelled.cancelled()
    answered = Future()
    settle(answered, ([1], [2]))
    settle(answered, error=RuntimeError("too late"))  # a second outcome is ignored, not raised
    assert answered.result() == ([1], [2])
