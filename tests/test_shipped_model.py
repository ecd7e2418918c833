"""The model that ships inside the package: a fresh install answers real questions offline, with no --model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from dynamic_tinybert import QuestionAnswerer, checkpoint
from dynamic_tinybert.frontier import load_frontier
from dynamic_tinybert.squad import exact_match_score, load_squad

from conftest import SAMPLE_V11

SHIPPED = checkpoint.DEFAULT_MODEL
# a proxy that refuses every connection: any hub download would fail, so an answer proves the model is local
OFFLINE = {**os.environ, "HF_HUB_OFFLINE": "1", "HTTPS_PROXY": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9"}


@pytest.fixture(scope="module")
def shipped_qa() -> QuestionAnswerer:
    return QuestionAnswerer.from_pretrained()


def test_the_shipped_model_is_small_fp16_safetensors_with_its_frontier_and_card():
    weights = sorted(SHIPPED.glob("*.safetensors"))
    assert weights and sum(w.stat().st_size for w in weights) <= 50 * 2**20
    with safe_open(str(weights[0]), "pt") as shard:
        assert {shard.get_tensor(name).dtype for name in shard.keys()} == {torch.float16}
    assert json.loads((SHIPPED / "config.json").read_text())["torch_dtype"] == "float16"  # what transformers sees
    assert len(load_frontier(SHIPPED).points) >= 3
    card = (SHIPPED / "README.md").read_text()
    for section in ("license", "Recipe", "Results", "Reproduce", "dtb train finetune"):
        assert section in card


def test_it_loads_as_fp32_and_answers_dev_questions(shipped_qa: QuestionAnswerer):
    """Three dev questions it gets exactly right (of the first 8 it misses two: its dev EM is 69.6)."""
    assert next(shipped_qa.model.parameters()).dtype == torch.float32
    first = load_squad(SAMPLE_V11, limit=8).questions
    questions = [first[0], first[3], first[6]]  # AFC team, the winner, the date
    answers = shipped_qa([{"question": q.question, "context": q.context} for q in questions])
    for question, answer in zip(questions, answers, strict=True):
        assert max(exact_match_score(answer["answer"], gold) for gold in question.answers), (question, answer)


def test_the_cheapest_frontier_point_still_answers_and_costs_less(shipped_qa: QuestionAnswerer):
    frontier = load_frontier(SHIPPED)
    question = load_squad(SAMPLE_V11, limit=1).questions[0]
    cheap = min(frontier.points, key=lambda p: p.macs_ratio)
    assert cheap.macs_ratio < 0.6
    answer = shipped_qa(question=question.question, context=question.context, budget=cheap.macs_ratio)
    assert answer["answer"].strip()


def test_dtb_ask_without_a_model_answers_offline_in_a_fresh_process():
    dtb = Path(sys.executable).with_name("dtb")
    context = (
        "The Amazon rainforest covers much of the Amazon basin of South America. The majority of the forest is "
        "contained within Brazil, with 60% of the rainforest, followed by Peru with 13%."
    )
    done = subprocess.run(
        [str(dtb), "ask", "Which country contains most of the Amazon rainforest?", "--context", context, "--json"],
        capture_output=True,
        text=True,
        env=OFFLINE,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["answers"][0]["answer"] == "Brazil"
