"""Training actually teaches: fine-tuning, distillation and LengthDrop on the synthetic who-lives-where task.

These train tiny models for real (a minute or two in all on 2 CPU cores): a teacher from random
initialisation (shared with test_pruning: conftest's synthetic_teacher), students with and without the teacher,
and the teacher with and without LengthDrop.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
from synthetic import synthetic_dataset

from dynamic_tinybert import LengthConfig, QuestionAnswerer
from dynamic_tinybert.evaluate import evaluate
from dynamic_tinybert.training import (
    IntermediateDistillation,
    LengthDrop,
    PredictionDistillation,
    SpanLoss,
    TrainSettings,
    WindowSettings,
    label_windows,
    train,
)

from conftest import learner_model, make_tiny_tokenizer

pytestmark = pytest.mark.slow

WINDOWS = WindowSettings(max_seq_len=64, doc_stride=16)
TRAIN = synthetic_dataset(8000, seed=1, facts=2)  # the teacher's training set (conftest)
HELD_OUT = synthetic_dataset(300, seed=2, facts=2)


def held_out_f1(model, tokenizer, length_config: LengthConfig | None = None) -> float:
    qa = QuestionAnswerer(model, tokenizer, max_answer_len=30, batch_size=64)
    return evaluate(qa, HELD_OUT, length_config=length_config).metrics["f1"]


def fit(model, tokenizer, objective, output: Path, epochs: int, questions=TRAIN.questions) -> Path:
    features = label_windows(tokenizer, questions, WINDOWS)
    settings = TrainSettings(output, epochs=epochs, batch_size=32, learning_rate=1e-3, save_every=100_000, log_every=10)
    train(model, tokenizer, objective, features, settings)
    return output / "metrics.jsonl"


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return make_tiny_tokenizer()


@pytest.fixture
def teacher(synthetic_teacher):
    """conftest's tiny BERT trained from random initialisation: TRAIN's 8,000 questions, 12 epochs (3,000 steps)."""
    return synthetic_teacher


def test_a_tiny_model_trained_from_scratch_answers_held_out_synthetic_questions(teacher, tokenizer):
    assert held_out_f1(teacher, tokenizer) >= 90.0


def test_a_distilled_student_beats_the_same_student_trained_without_a_teacher_at_equal_steps(
    teacher, tokenizer, tmp_path
):
    questions = TRAIN.questions[:2000]
    alone = learner_model(seed=5)
    fit(alone, tokenizer, SpanLoss(), tmp_path / "alone", epochs=10, questions=questions)

    distilled = learner_model(seed=5)
    id_metrics = fit(
        distilled,
        tokenizer,
        IntermediateDistillation(teacher, distilled, attention="scores"),
        tmp_path / "id",
        5,
        questions,
    )
    fit(distilled, tokenizer, PredictionDistillation(teacher), tmp_path / "pd", epochs=5, questions=questions)

    losses = [entry["loss"] for entry in map(json.loads, id_metrics.read_text().splitlines()) if "loss" in entry]
    assert losses[-1] < 0.5 * losses[0]  # the student's loss against the teacher falls
    assert held_out_f1(distilled, tokenizer) >= held_out_f1(alone, tokenizer) + 10.0


def test_length_drop_makes_the_smallest_sub_model_nearly_as_good_as_the_full_model(teacher, tokenizer, tmp_path):
    bound = 0.6  # smallest sandwich sub-model: layers keep 40% then 16% of the tokens
    smallest = LengthConfig.ratios([1 - bound, (1 - bound) ** 2])
    with_length_drop, without = copy.deepcopy(teacher), copy.deepcopy(teacher)
    fit(with_length_drop, tokenizer, LengthDrop(SpanLoss(), ratio_bound=bound), tmp_path / "ld", epochs=3)
    fit(without, tokenizer, SpanLoss(), tmp_path / "plain", epochs=3)

    gap_with = held_out_f1(with_length_drop, tokenizer) - held_out_f1(with_length_drop, tokenizer, smallest)
    gap_without = held_out_f1(without, tokenizer) - held_out_f1(without, tokenizer, smallest)
    assert gap_without >= 15.0  # the config really hurts a model not trained for it
    assert gap_with <= gap_without / 3
