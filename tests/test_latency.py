"""Measured latency: the per-question line fitted over a sample, and measuring configurations side by side."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from dynamic_tinybert import LengthConfig, QuestionAnswerer
from dynamic_tinybert.frontier import Latency, fit_latency
from dynamic_tinybert.latency import evenly_spaced, measure_latencies


def test_the_fit_recovers_a_line_and_goes_through_the_means():
    tokens = np.array([100.0, 150.0, 200.0, 300.0])
    fit = fit_latency(tokens, 2.0 + 0.01 * tokens)
    assert fit.ms_per_token == pytest.approx(0.01)
    assert (fit.ms, fit.tokens) == (pytest.approx(3.875), pytest.approx(187.5))
    assert fit.at(400) == pytest.approx(6.0) and fit.at(None) == fit.ms


def test_one_length_says_nothing_about_the_slope_and_noise_never_makes_it_negative():
    assert fit_latency(np.array([120.0, 120.0]), np.array([3.0, 5.0])) == Latency(4.0, 120.0, 0.0)
    assert fit_latency(np.array([100.0, 200.0]), np.array([5.0, 4.0])).ms_per_token == 0.0


def test_a_prediction_never_goes_below_zero():
    assert Latency(1.0, 100.0, 0.1).at(0) == 0.0


def test_measuring_gives_one_latency_per_config_at_the_samples_mean_length(tiny_checkpoint: Path):
    qa = QuestionAnswerer.from_pretrained(tiny_checkpoint)
    questions = ["where does alice live ?", "who lives in paris ?", "who lives in rome ?"]
    contexts = ["alice lives in oslo .", "carol lives in rome . bob lives in paris . " * 6, "carol lives in rome ."]
    configs = [None, LengthConfig.constant_ratio(0.5, qa.model.config.num_hidden_layers)]
    latencies = measure_latencies(qa, questions, contexts, configs, batch_size=2, repeats=2)
    tokens = [sum(w.length for w in qa.windows(questions[i : i + 2], contexts[i : i + 2])) / 2 for i in (0, 2)]
    tokens[1] *= 2  # the last chunk holds one question
    assert len(latencies) == 2
    assert all(latency.ms > 0 and latency.ms_per_token >= 0 for latency in latencies)
    assert all(latency.tokens == pytest.approx(np.mean(tokens)) for latency in latencies)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(questions=[], contexts=[]), "at least one question"),
        (dict(contexts=["a b", "c d"]), "1 questions but 2 contexts"),
        (dict(batch_size=0), "batch_size must be an integer >= 1, got 0"),
        (dict(repeats=0), "repeats must be an integer >= 1, got 0"),
    ],
    ids=["empty", "mismatched", "batch-size", "repeats"],
)
def test_bad_arguments_are_named(tiny_checkpoint: Path, kwargs: dict, message: str):
    qa = QuestionAnswerer.from_pretrained(tiny_checkpoint)
    arguments = dict(questions=["who ?"], contexts=["alice ."], length_configs=[None]) | kwargs
    with pytest.raises(ValueError, match=message):
        measure_latencies(qa, **arguments)


def test_an_evenly_spaced_sample_spans_the_whole_sequence():
    assert evenly_spaced(list(range(100)), 4) == [0, 25, 50, 75]
    assert evenly_spaced(list(range(10)), 3) == [0, 3, 6]
    assert evenly_spaced([1, 2], 5) == [1, 2]
    with pytest.raises(ValueError, match="count must be >= 1, got 0"):
        evenly_spaced([1, 2], 0)
