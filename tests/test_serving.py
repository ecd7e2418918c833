"""The HTTP service: the pipeline's answers in the Hugging Face inference API's shape, and clear 422s."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from synthetic import synthetic_dataset, write_squad_file
from test_frontier import FRONTIER, MID

from dynamic_tinybert import LengthConfig, QuestionAnswerer, cli
from dynamic_tinybert.serving import create_app

QUESTION = "where does alice live ?"
CONTEXT = "carol lives in rome . alice lives in oslo . bob lives in paris ."
PAIR = {"question": QUESTION, "context": CONTEXT}


@pytest.fixture
def qa(tiny_checkpoint: Path) -> QuestionAnswerer:
    FRONTIER.save(tiny_checkpoint)
    return QuestionAnswerer.from_pretrained(tiny_checkpoint)


@pytest.fixture
def client(qa: QuestionAnswerer) -> TestClient:
    return TestClient(create_app(qa, name="tiny"))


def post(client: TestClient, inputs, **parameters):
    return client.post("/", json={"inputs": inputs, "parameters": parameters})


def same_answers(served, direct) -> bool:
    """Equal answers; scores equal to float precision (JSON round-trips them)."""
    if isinstance(direct, list):
        return len(served) == len(direct) and all(same_answers(s, d) for s, d in zip(served, direct))
    return {k: v for k, v in served.items() if k != "score"} == {
        k: v for k, v in direct.items() if k != "score"
    } and served["score"] == pytest.approx(direct["score"], rel=1e-6)


def test_one_question_gets_the_pipelines_answer_dict_at_both_paths(client, qa):
    direct = qa(question=QUESTION, context=CONTEXT)
    for path in ("/", "/answer"):
        response = client.post(path, json={"inputs": PAIR})
        assert response.status_code == 200
        assert set(response.json()) == {"answer", "score", "start", "end"}
        assert same_answers(response.json(), direct)
        assert CONTEXT[direct["start"] : direct["end"]] == response.json()["answer"]


def test_a_list_of_inputs_gets_a_list_and_top_k_a_list_per_input(client, qa):
    other = {"question": "who lives in paris ?", "context": CONTEXT}
    response = post(client, [PAIR, other], top_k=2)
    assert response.status_code == 200
    served = response.json()
    assert len(served) == 2 and all(len(answers) == 2 for answers in served)
    assert same_answers(served, qa([PAIR, other], top_k=2))
    assert isinstance(post(client, [PAIR]).json(), list)  # a list of one stays a list


@pytest.mark.parametrize(
    "parameters, direct_options",
    [
        ({"budget": 0.6}, {"length_config": MID.length_config}),  # the frontier's best within 60% of the MACs
        ({"length_config": "0.9,0.5,0.3+q"}, {"length_config": LengthConfig.parse("0.9,0.5,0.3+q")}),
        (
            {"max_answer_len": 1, "handle_impossible_answer": True},
            {"max_answer_len": 1, "handle_impossible_answer": True},
        ),
    ],
)
def test_parameters_answer_as_the_same_options_do_in_python(client, qa, parameters, direct_options):
    response = post(client, PAIR, top_k=3, **parameters)
    assert response.status_code == 200
    assert same_answers(response.json(), qa(question=QUESTION, context=CONTEXT, top_k=3, **direct_options))


def test_a_request_overrides_the_servers_default_length_choice(tiny_checkpoint: Path):
    FRONTIER.save(tiny_checkpoint)
    qa = QuestionAnswerer.from_pretrained(tiny_checkpoint, budget=0.6)
    client = TestClient(create_app(qa))
    assert client.get("/info").json()["defaults"]["budget"] == 0.6
    direct = QuestionAnswerer.from_pretrained(tiny_checkpoint)
    assert same_answers(post(client, PAIR, top_k=3).json(), direct(PAIR, top_k=3, length_config=MID.length_config))
    full = post(client, PAIR, top_k=3, length_config="1.0,1.0,1.0").json()
    assert same_answers(full, direct(PAIR, top_k=3))
    assert not same_answers(full, direct(PAIR, top_k=3, length_config=MID.length_config))


@pytest.mark.parametrize(
    "body, fragments",
    [
        ({"inputs": PAIR, "parameters": {"topk": 2}}, ["topk", "Extra inputs"]),
        ({"inputs": {"question": QUESTION}}, ["context", "Field required"]),
        ({"inputs": PAIR, "parameters": {"top_k": 0}}, ["top_k must be an integer >= 1, got 0"]),
        ({"inputs": PAIR, "parameters": {"length_config": "0.5,0.9,0.3"}}, ["must not increase"]),
        ({"inputs": PAIR, "parameters": {"length_config": "0.5,0.4"}}, ["2 entries", "3 layers"]),
        ({"inputs": PAIR, "parameters": {"budget": 0.6, "latency_ms": 5}}, ["only one of", "budget and latency_ms"]),
        ({"inputs": PAIR, "parameters": {"budget": 0.1}}, ["budget"]),
        ({"inputs": {"question": "", "context": CONTEXT}}, ["question"]),
        ({"inputs": []}, ["inputs", "at least 1 item"]),
    ],
)
def test_bad_requests_are_422_naming_the_problem(client, body, fragments):
    response = client.post("/", json=body)
    assert response.status_code == 422
    detail = json.dumps(response.json()["detail"])
    assert all(fragment in detail for fragment in fragments), detail


def test_a_budget_for_a_model_without_a_frontier_is_422_saying_to_search(tiny_checkpoint: Path):
    client = TestClient(create_app(QuestionAnswerer.from_pretrained(tiny_checkpoint)))
    response = post(client, PAIR, budget=0.5)
    assert response.status_code == 422 and "dtb search" in response.json()["detail"]
    assert client.get("/info").json()["frontier"] is None


def test_health_and_info_describe_the_model_and_its_frontier(client, qa):
    assert client.get("/health").json() == {"status": "ok"}
    info = client.get("/info").json()
    assert (info["model"], info["layers"], info["hidden_size"]) == ("tiny", 3, 32)
    assert [p["length_config"] for p in info["frontier"]] == [
        str(p.length_config) for p in [*FRONTIER.points, FRONTIER.full]
    ]
    assert [p["macs_ratio"] for p in info["frontier"]] == [0.3, 0.55, 0.8, 1.0]
    assert info["defaults"]["top_k"] == 1 and info["defaults"]["max_answer_len"] == 15


def test_serve_with_a_default_the_model_cannot_take_fails_before_listening(tiny_checkpoint: Path, capsys):
    code = cli.main(["serve", "--model", str(tiny_checkpoint), "--length-config", "0.5,0.4"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "3 layers" in err


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_dtb_serve_answers_over_real_http(tiny_checkpoint: Path, qa):
    port = free_port()
    command = [sys.executable, "-m", "dynamic_tinybert.cli", "serve", "--model", str(tiny_checkpoint)]
    server = subprocess.Popen([*command, "--port", str(port)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=5) as response:
                    assert json.load(response) == {"status": "ok"}
                break
            except OSError:
                assert server.poll() is None, server.stdout.read().decode()
                assert time.monotonic() < deadline, "dtb serve did not start within 60 s"
                time.sleep(0.2)
        body = json.dumps({"inputs": PAIR, "parameters": {"top_k": 2}}).encode()
        request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as response:
            assert same_answers(json.load(response), qa(PAIR, top_k=2))
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_serve_without_the_serve_extra_says_what_to_install(tiny_checkpoint: Path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "uvicorn", None)  # as if uvicorn were not installed
    code = cli.main(["serve", "--model", str(tiny_checkpoint)])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "uvicorn is missing" in err and "dynamic-tinybert[serve]" in err


def test_the_serve_latency_bench_times_both_paths_on_the_same_questions(tiny_checkpoint: Path, tmp_path: Path):
    data = write_squad_file(synthetic_dataset(6, seed=2), tmp_path / "dev.json")
    output = tmp_path / "serve-latency"
    command = [sys.executable, "bench/serve_latency.py", "--model", str(tiny_checkpoint), "--data", str(data)]
    command += ["--questions", "4", "--length-config", "0.9,0.5,0.3+q", "--threads", "1", "--output", str(output)]
    run = subprocess.run(command, cwd=Path(__file__).parents[1], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(output.with_suffix(".json").read_text())
    assert list(result["rows"]) == ["in process", "over HTTP"]
    assert all(row["p50_ms"] > 0 for row in result["rows"].values())
    assert result["same_answers"] == 1.0 and result["questions"] == 4
    assert "| over HTTP |" in output.with_suffix(".md").read_text()
