"""`evaluate`: answer a SQuAD file, score it the official way, and report speed and MACs."""

from __future__ import annotations

from pathlib import Path

import pytest

from dynamic_tinybert import cost
from dynamic_tinybert.evaluate import Evaluation, evaluate
from dynamic_tinybert.features import make_windows
from dynamic_tinybert.length_config import LengthConfig
from dynamic_tinybert.pipeline import QuestionAnswerer
from dynamic_tinybert.squad import SquadDataset, load_squad, score_predictions

from conftest import SAMPLE_V11, SAMPLE_V20, make_tiny_tokenizer, tiny_model

DROPPING = LengthConfig.ratios([0.9, 0.7, 0.5])


def tiny_answerer(directory: Path) -> QuestionAnswerer:
    # the tiny model with 384 positions: SQuAD contexts, spelled out in its character-level vocabulary, take
    # a few windows of 384 tokens instead of many of 128
    return QuestionAnswerer(tiny_model(max_position_embeddings=384), make_tiny_tokenizer())


@pytest.fixture(scope="module")
def qa(tmp_path_factory: pytest.TempPathFactory) -> QuestionAnswerer:
    return tiny_answerer(tmp_path_factory.mktemp("tokenizer"))


@pytest.fixture(scope="module")
def dev_v11() -> SquadDataset:
    return load_squad(SAMPLE_V11, limit=12)  # the first 12 of dev-v1.1


@pytest.fixture(scope="module")
def dev_v20() -> SquadDataset:
    return load_squad(SAMPLE_V20, limit=20)  # the first 20 of dev-v2.0: 10 answerable, 10 unanswerable


@pytest.fixture(scope="module")
def full_length(qa: QuestionAnswerer, dev_v11: SquadDataset) -> Evaluation:
    return evaluate(qa, dev_v11)


@pytest.fixture(scope="module")
def dropping(qa: QuestionAnswerer, dev_v11: SquadDataset) -> Evaluation:
    return evaluate(qa, dev_v11, length_config=DROPPING)


def prefer_no_answer(qa: QuestionAnswerer) -> QuestionAnswerer:
    """Make the model put nearly all start and end probability on [CLS], the no-answer position."""
    forward = qa.model.forward

    def biased(*args, **kwargs):
        out = forward(*args, **kwargs)
        out.start_logits[:, 0] += 20.0
        out.end_logits[:, 0] += 20.0
        return out

    qa.model.forward = biased
    return qa


# --- SQuAD v1.1 ------------------------------------------------------------------------------------------------


def test_evaluate_gives_one_prediction_per_question(full_length: Evaluation, dev_v11: SquadDataset):
    assert list(full_length.predictions) == [q.id for q in dev_v11.questions]
    assert full_length.questions == 12


def test_evaluate_metrics_are_the_official_scores_of_its_own_predictions(
    full_length: Evaluation, dev_v11: SquadDataset
):
    assert full_length.metrics == score_predictions(dev_v11, full_length.predictions)
    assert set(full_length.metrics) >= {"exact_match", "f1", "total"}


def test_evaluate_predictions_are_the_best_answers_of_the_answerer(full_length: Evaluation, qa, dev_v11):
    run = qa.run([q.question for q in dev_v11.questions], [q.context for q in dev_v11.questions])
    assert list(full_length.predictions.values()) == [answers[0]["answer"] for answers in run.answers]


def test_evaluate_reports_a_positive_question_rate(full_length: Evaluation):
    assert full_length.seconds > 0
    assert full_length.questions_per_second == full_length.questions / full_length.seconds > 0


def test_evaluate_mean_macs_is_the_macs_of_every_window_at_its_real_length_per_question(
    dropping: Evaluation, qa: QuestionAnswerer, dev_v11: SquadDataset
):
    windows = make_windows(
        qa.tokenizer, [q.question for q in dev_v11.questions], [q.context for q in dev_v11.questions], 384, 128
    )
    config = qa.model.config
    assert dropping.windows == len(windows) > dropping.questions  # some contexts need several windows
    assert dropping.mean_macs == sum(cost.macs(config, w.length, DROPPING) for w in windows) / 12
    assert dropping.mean_full_macs == sum(cost.macs(config, w.length) for w in windows) / 12


def test_evaluate_at_full_length_has_a_macs_ratio_of_one(full_length: Evaluation):
    assert full_length.mean_macs == full_length.mean_full_macs
    assert full_length.summary()["macs_ratio_to_full_length"] == 1.0


def test_evaluate_with_a_dropping_config_has_a_macs_ratio_below_one(dropping: Evaluation, full_length: Evaluation):
    assert dropping.mean_full_macs == full_length.mean_full_macs
    assert dropping.summary()["macs_ratio_to_full_length"] < 1.0


def test_evaluate_summary_has_the_metrics_speed_and_cost_but_not_the_missing_list(full_length: Evaluation):
    summary = full_length.summary()
    assert "missing" not in summary
    assert summary["exact_match"] == full_length.metrics["exact_match"]
    assert summary["f1"] == full_length.metrics["f1"]
    assert summary["questions"] == 12
    assert summary["windows"] == full_length.windows
    assert summary["questions_per_second"] > 0
    assert summary["mean_macs"] == round(full_length.mean_macs)


def test_evaluate_tells_progress_after_every_batch_of_windows(qa: QuestionAnswerer):
    told: list[int] = []
    result = evaluate(qa, load_squad(SAMPLE_V11, limit=3), progress=told.append, batch_size=2)
    assert sum(told) == result.windows
    assert told == [2] * (result.windows // 2) + [1] * (result.windows % 2)


def test_evaluate_on_v1_does_not_let_the_empty_answer_compete(tmp_path: Path, dev_v11: SquadDataset):
    result = evaluate(prefer_no_answer(tiny_answerer(tmp_path)), dev_v11)
    assert "" not in result.predictions.values()


# --- SQuAD v2.0 ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def no_answer_v20(tmp_path_factory: pytest.TempPathFactory, dev_v20: SquadDataset) -> Evaluation:
    return evaluate(prefer_no_answer(tiny_answerer(tmp_path_factory.mktemp("tokenizer"))), dev_v20)


def test_evaluate_on_v2_lets_the_empty_answer_compete(no_answer_v20: Evaluation):
    assert set(no_answer_v20.predictions.values()) == {""}


def test_evaluate_on_v2_keeps_the_empty_answer_out_when_told_to(tmp_path: Path, dev_v20: SquadDataset):
    result = evaluate(prefer_no_answer(tiny_answerer(tmp_path)), dev_v20, handle_impossible_answer=False)
    assert "" not in result.predictions.values()


def test_evaluate_on_v2_reports_answerable_and_unanswerable_scores(no_answer_v20: Evaluation, dev_v20: SquadDataset):
    metrics = no_answer_v20.metrics
    assert metrics == score_predictions(dev_v20, no_answer_v20.predictions)
    assert (metrics["HasAns_total"], metrics["NoAns_total"]) == (10, 10)
    assert (metrics["HasAns_exact"], metrics["HasAns_f1"]) == (0.0, 0.0)
    assert (metrics["NoAns_exact"], metrics["NoAns_f1"]) == (100.0, 100.0)
    assert metrics["exact"] == pytest.approx(50.0)
