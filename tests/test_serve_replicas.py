"""`dtb serve --ray-replicas N` (serve_replicas.py): 2 Ray Serve replicas on a local Ray instance answer, and
refuse, exactly as the app of `dtb serve` does. Slow: Ray Serve's controller, proxy and two model-holding
replicas take tens of seconds to start on a busy 2-core machine."""

from __future__ import annotations

import json
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from dynamic_tinybert import QuestionAnswerer, checkpoint
from dynamic_tinybert.serving import create_app

from conftest import make_tiny_tokenizer, one_torch_thread, tiny_model

ray = pytest.importorskip("ray")
pytest.importorskip("ray.serve")
serve_replicas = pytest.importorskip("dynamic_tinybert.serve_replicas")

pytestmark = pytest.mark.slow

CONTEXT = "the denver broncos won the super bowl in the year of the game, and the panthers lost it in london."
REQUESTS = [
    {"inputs": {"question": "who won the super bowl?", "context": CONTEXT}},
    {"inputs": [{"question": "who lost?", "context": CONTEXT}] * 3, "parameters": {"top_k": 2}},
    {"inputs": {"question": "who won?", "context": CONTEXT}, "parameters": {"length_config": "0.9,0.7,0.5"}},
]
BAD_REQUESTS = [
    {"inputs": {"question": "who won?"}},
    {"inputs": {"question": "who won?", "context": CONTEXT}, "parameters": {"top_kk": 2}},
    {"inputs": {"question": "who won?", "context": CONTEXT}, "parameters": {"length_config": "1.5"}},
]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("tiny384")
    checkpoint.save_checkpoint(tiny_model(max_position_embeddings=384), make_tiny_tokenizer(), directory)
    return directory


def post(url: str, body: dict) -> tuple[int, object]:
    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def get(url: str) -> tuple[int, object]:
    with urllib.request.urlopen(url, timeout=60) as response:
        return response.status, json.loads(response.read())


@pytest.fixture(scope="module")
def replicas(model_dir: Path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    serve_replicas.start_replicas(str(model_dir), 2, port=port, name="tiny")
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while serve_replicas.running_replicas() < 2 and time.monotonic() < deadline:
        time.sleep(1)
    yield url
    serve_replicas.stop_replicas()
    ray.shutdown()


@pytest.fixture(scope="module")
def one_process(model_dir: Path):
    """The app `dtb serve` runs, in this process: what the replicas must answer like (on one thread as each
    replica, so that even the scores' last bits agree)."""
    with one_torch_thread():
        yield TestClient(create_app(QuestionAnswerer.from_pretrained(model_dir), name="tiny"))


def test_two_replicas_are_running(replicas):
    assert serve_replicas.running_replicas() == 2


def test_replicas_answer_as_the_app_of_dtb_serve(replicas, one_process: TestClient):
    for body in REQUESTS:
        expected = one_process.post("/", json=body)
        assert post(replicas + "/", body) == (expected.status_code, expected.json())


def test_replicas_refuse_bad_requests_as_the_app_of_dtb_serve(replicas, one_process: TestClient):
    for body in BAD_REQUESTS:
        expected = one_process.post("/", json=body)
        assert expected.status_code == 422
        assert post(replicas + "/", body) == (422, expected.json())


def test_replicas_serve_health_and_info_as_the_app_of_dtb_serve(replicas, one_process: TestClient):
    for path in ("/health", "/info"):
        expected = one_process.get(path)
        assert get(replicas + path) == (expected.status_code, expected.json())
