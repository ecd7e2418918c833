"""`dtb answer --ray` (scale_out.py) on a local Ray instance: the same output as one process, and an actor
killed mid-run costs no id and doubles none. Ray is the optional `[ray]` extra; each test starts actors that
load a model, so they are slow (a local Ray instance takes seconds to start on a busy 2-core machine)."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest
from test_batch_job import question_lines, read_output, write_jsonl

from dynamic_tinybert import QuestionAnswerer, checkpoint
from dynamic_tinybert.batch_job import JobInputError, run_job

from conftest import make_tiny_tokenizer, tiny_model

ray = pytest.importorskip("ray")
scale_out = pytest.importorskip("dynamic_tinybert.scale_out")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def local_ray():
    scale_out.start_ray()
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("tiny384")
    checkpoint.save_checkpoint(tiny_model(max_position_embeddings=384), make_tiny_tokenizer(), directory)
    return directory


def by_id(path: Path) -> dict:
    lines = read_output(path)
    answers = {line["id"]: line["answers"] for line in lines}
    assert len(answers) == len(lines), "an id was written twice"
    return answers


def actor_pids() -> list[int]:
    """The processes of this Ray instance's ChunkAnswerer actors, found by the title Ray gives them."""
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            title = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if entry.name.isdigit() and title.startswith(b"ray::") and b"ChunkAnswerer" in title:
            pids.append(int(entry.name))
    return pids


def test_ray_job_writes_the_ids_and_answers_of_the_single_process_job(local_ray, model_dir: Path, tmp_path: Path):
    source = write_jsonl(tmp_path / "in.jsonl", question_lines(40))
    run_job(QuestionAnswerer.from_pretrained(model_dir), source, tmp_path / "one.jsonl", chunk_size=8, top_k=2)
    summary = scale_out.run_job_on_ray(str(model_dir), source, tmp_path / "ray.jsonl", actors=2, chunk_size=8, top_k=2)
    assert by_id(tmp_path / "ray.jsonl") == by_id(tmp_path / "one.jsonl")
    assert (summary.answered, summary.extra["actors"]) == (40, 2)


def test_ray_job_finishes_with_every_id_once_when_an_actor_is_killed_mid_run(
    local_ray, model_dir: Path, tmp_path: Path
):
    source = write_jsonl(tmp_path / "in.jsonl", question_lines(400))
    output = tmp_path / "ray.jsonl"
    written, errors = [], []

    def job() -> None:
        try:
            scale_out.run_job_on_ray(str(model_dir), source, output, actors=2, chunk_size=4, progress=written.append)
        except Exception as e:  # the assertions below report it
            errors.append(e)

    runner = threading.Thread(target=job)
    runner.start()
    deadline = time.monotonic() + 120
    while not written and time.monotonic() < deadline:
        time.sleep(0.05)
    victims = actor_pids()
    assert written and victims, "the job never got going"
    os.kill(victims[0], signal.SIGKILL)
    assert sum(written) < 400, "the job ended before the kill"
    runner.join(timeout=300)
    assert not runner.is_alive() and not errors
    assert sorted(by_id(output)) == sorted(f"q{i}" for i in range(400))


def test_a_question_the_model_cannot_take_is_the_same_error_naming_its_line_on_ray(
    local_ray, model_dir: Path, tmp_path: Path
):
    items = question_lines(3)
    items[1]["question"] = "where " * 300
    source = write_jsonl(tmp_path / "in.jsonl", items)
    with pytest.raises(JobInputError, match=r"in.jsonl:2: has \d+ tokens") as raised:
        scale_out.run_job_on_ray(str(model_dir), source, tmp_path / "ray.jsonl", actors=1)
    assert "\n" not in str(raised.value)
