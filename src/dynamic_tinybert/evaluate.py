"""Answer a SQuAD file with a QuestionAnswerer and score it: EM/F1, questions per second, MACs."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from .cost import macs
from .length_config import LengthConfig
from .options import LENGTH_CHOICES
from .pipeline import QuestionAnswerer
from .squad import SquadDataset, score_predictions


@dataclass
class Evaluation:
    metrics: dict  # as the official SQuAD script reports them (v1.1 or v2.0 keys)
    predictions: dict[str, str]  # question id -> answer text
    questions: int
    windows: int
    seconds: float  # wall time of tokenisation (when included), model and decoding
    mean_macs: float  # per question, under the length config, inputs at their real length
    mean_full_macs: float  # per question, same inputs, full length
    length_config: LengthConfig | None = None  # what ran; None: full length

    @property
    def questions_per_second(self) -> float:
        return self.questions / self.seconds

    @property
    def f1(self) -> float:
        return self.metrics["f1"]

    @property
    def exact_match(self) -> float:
        """EM under either script's name for it (v1.1: exact_match, v2.0: exact)."""
        return self.metrics.get("exact_match", self.metrics.get("exact"))

    @property
    def macs_ratio(self) -> float:
        """MACs as a fraction of the full model's on the same inputs at their real length."""
        return self.mean_macs / self.mean_full_macs

    def summary(self) -> dict:
        return {
            **{k: v for k, v in self.metrics.items() if k != "missing"},
            "questions": self.questions,
            "windows": self.windows,
            "seconds": round(self.seconds, 3),
            "questions_per_second": round(self.questions_per_second, 2),
            "mean_macs": round(self.mean_macs),
            "macs_ratio_to_full_length": round(self.macs_ratio, 4),
        }


class Evaluator:
    """A dataset tokenised once, then answered and scored under any number of length configurations.

    Searching length configurations evaluates hundreds of them on the same questions; the windows do
    not depend on the configuration, so they are made once here. SQuAD 2.0 data lets the empty answer
    compete (`handle_impossible_answer`); other options (max_answer_len, batch_size, doc_stride, ...)
    pass through to the QuestionAnswerer.
    """

    def __init__(self, qa: QuestionAnswerer, dataset: SquadDataset, **options) -> None:
        if not dataset.questions:
            raise ValueError("the evaluation data has no questions")
        if options.keys() & set(LENGTH_CHOICES):
            raise ValueError("an Evaluator takes the length config per call, not as an option")
        options.setdefault("handle_impossible_answer", dataset.is_v2)
        self.qa, self.dataset, self.options = qa, dataset, options
        self.contexts = [q.context for q in dataset.questions]
        self.windows = qa.windows([q.question for q in dataset.questions], self.contexts, **options)
        self.tokens = [w.length for w in self.windows]
        self.mean_full_macs = self.mean_macs(None)

    def mean_macs(self, length_config: LengthConfig | None) -> float:
        """MACs per question under `length_config`, every window at its real length."""
        config = self.qa.model.config
        return sum(macs(config, n, length_config) for n in self.tokens) / len(self.dataset.questions)

    def keep_ratios(self, length_config: LengthConfig | None) -> tuple[float, ...]:
        """Mean fraction of each window's real tokens that each layer keeps."""
        num_layers = self.qa.model.config.num_hidden_layers
        if length_config is None:
            return (1.0,) * num_layers
        real = torch.tensor(self.tokens)
        kept = length_config.keep_counts(real).to(torch.float64) / real.unsqueeze(1)
        return tuple(kept.mean(dim=0).tolist())

    def __call__(
        self, length_config: LengthConfig | None = None, progress: Callable[[int], None] | None = None
    ) -> Evaluation:
        started = time.perf_counter()
        options = {**self.options, "length_config": length_config}
        answers = self.qa.answer(self.windows, self.contexts, progress, **options)
        seconds = time.perf_counter() - started
        questions = self.dataset.questions
        predictions = {q.id: best[0]["answer"] if best else "" for q, best in zip(questions, answers, strict=True)}
        return Evaluation(
            metrics=score_predictions(self.dataset, predictions),
            predictions=predictions,
            questions=len(questions),
            windows=len(self.windows),
            seconds=seconds,
            mean_macs=self.mean_macs(length_config),
            mean_full_macs=self.mean_full_macs,
            length_config=length_config,
        )


def evaluate(
    qa: QuestionAnswerer,
    dataset: SquadDataset,
    length_config: LengthConfig | None = None,
    progress: Callable[[int], None] | None = None,
    **options,
) -> Evaluation:
    """Answer every question of `dataset` and score the answers the official way.

    The reported time covers everything a user waits for: tokenisation, the model and decoding. The
    configuration is `length_config`, a `budget` or `latency_ms` option chosen from the model's frontier
    for the data's mean length (as a call chooses for its own), or else the answerer's default; the MACs
    reported are those of the configuration that ran.
    """
    given = {name: options.pop(name, None) for name in LENGTH_CHOICES} | {"length_config": length_config}
    choice = {name: value for name, value in given.items() if value is not None}  # none given: the default
    chosen = qa.options(**choice)  # two length choices at once fail before tokenising
    started = time.perf_counter()
    evaluator = Evaluator(qa, dataset, **options)
    tokens_per_question = sum(evaluator.tokens) / len(dataset.questions)
    evaluation = evaluator(qa.length_config_for(chosen, tokens_per_question), progress)
    evaluation.seconds = time.perf_counter() - started
    return evaluation
